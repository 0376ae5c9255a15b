//! `Store::delete_restored_account` on SQLite, and on PostgreSQL when
//! `NPANEL_TEST_POSTGRES_URL` is set: the row a failed restore created goes with its
//! per-account rows, so the name is free again; an account that is not exactly that row, or
//! that something else now depends on, is kept.

use store::{testing, EmailPolicyOverride, NewAccount, NewPackage, PackageStatus, Store};

async fn seed(s: &Store) {
    s.create_package(NewPackage {
        id: "basic".into(),
        ..NewPackage::default()
    })
    .await
    .unwrap();
    s.set_package_status("basic", PackageStatus::Active)
        .await
        .unwrap();
}

async fn create(s: &Store, id: &str) -> i64 {
    let a = s
        .create_account(&NewAccount {
            id: id.into(),
            package: Some("basic".into()),
            domain: Some(format!("{id}.example")),
            ..NewAccount::default()
        })
        .await
        .unwrap();
    a.created_at.unwrap().timestamp_millis()
}

#[tokio::test]
async fn a_restored_account_is_deleted_only_when_it_is_safe() {
    for ts in testing::all().await {
        let s = &ts.store;
        eprintln!("backend {:?}", s.backend());
        seed(s).await;

        // Deleted with its per-account rows; the name is free; a second call finds nothing.
        let at = create(s, "alice").await;
        s.set_email_policy_override(
            "alice",
            &EmailPolicyOverride {
                per_hour: Some(50),
                ..EmailPolicyOverride::default()
            },
        )
        .await
        .unwrap();
        s.add_notification("alice", "restore", None, None, "restoring")
            .await
            .unwrap();
        assert!(!s.email_policy_override("alice").await.unwrap().is_empty());
        assert!(s.delete_restored_account("alice", at).await.unwrap());
        assert!(matches!(
            s.account("alice").await,
            Err(store::StoreError::NotFound(_))
        ));
        assert!(!s.delete_restored_account("alice", at).await.unwrap());
        // The name again: it starts without the old row's overrides and notifications.
        let again = create(s, "alice").await;
        assert!(s.email_policy_override("alice").await.unwrap().is_empty());
        assert!(s.notifications(Some("alice"), 10).await.unwrap().is_empty());

        // Another row under the same name (its own creation time) is kept.
        let e = s
            .delete_restored_account("alice", again - 1)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("another account"), "{e}");
        assert!(s.account("alice").await.is_ok());

        // Suspended, terminated: somebody acted on it.
        s.set_account_status("alice", store::AccountStatus::Suspended, Some("abuse"))
            .await
            .unwrap();
        let e = s.delete_restored_account("alice", again).await.unwrap_err();
        assert!(e.to_string().contains("suspended"), "{e}");

        // A finished restore (a migration) into it.
        let bob = create(s, "bob").await;
        s.record_migration(
            "r1",
            "bob",
            "/tmp/cpmove-bob.tar.gz",
            &serde_json::json!({}),
        )
        .await
        .unwrap();
        let e = s.delete_restored_account("bob", bob).await.unwrap_err();
        assert!(
            e.to_string().contains("restore into it has finished"),
            "{e}"
        );
        assert!(s.account("bob").await.is_ok());

        // Addon domains.
        let carol = create(s, "carol").await;
        s.add_addon_domain("carol", "shop.example", None)
            .await
            .unwrap();
        let e = s.delete_restored_account("carol", carol).await.unwrap_err();
        assert!(e.to_string().contains("addon domains"), "{e}");
        assert!(s.account("carol").await.is_ok());
    }
}
