//! WHMCS keys, on SQLite always and on PostgreSQL when `NPANEL_TEST_POSTGRES_URL` is set.

use std::time::Duration;
use store::testing::{self, TestStore};
use store::*;

async fn each(f: impl AsyncFn(&TestStore)) {
    for s in testing::all().await {
        eprintln!("backend {:?}", s.backend());
        f(&s).await;
    }
}

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
    s.create_account(&NewAccount {
        id: "r1".into(),
        kind: Some(AccountType::Reseller),
        allowance: Some(Allowance {
            max_accounts: 5,
            ..Allowance::default()
        }),
        ..NewAccount::default()
    })
    .await
    .unwrap();
    for (id, parent, sid) in [
        ("c1", Some("r1"), "100"),
        ("c2", None, "100"),
        ("c3", Some("r1"), "101"),
    ] {
        s.create_account(&NewAccount {
            id: id.into(),
            kind: Some(AccountType::Customer),
            parent: parent.map(Into::into),
            package: Some("basic".into()),
            whmcs_service_id: Some(sid.into()),
            ..NewAccount::default()
        })
        .await
        .unwrap();
    }
}

#[tokio::test]
async fn create_list_lookup_revoke() {
    each(async |s| {
        seed(s).await;
        let (k, secret) = s
            .create_whmcs_key(Some("r1"), Some("billing"))
            .await
            .unwrap();
        assert!(k.id.starts_with("wk_") && k.id.len() == 29, "{}", k.id);
        assert_eq!(k.id, k.id.to_lowercase());
        assert_eq!(secret.len(), 64);
        assert!(secret.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(k.reseller.as_deref(), Some("r1"));
        assert_eq!(k.active_secrets, 1);
        let (admin, admin_secret) = s.create_whmcs_key(None, None).await.unwrap();
        assert_ne!(secret, admin_secret);
        assert!(admin.reseller.is_none());

        // Scope must be an existing reseller.
        for bad in ["nobody", "c1"] {
            assert!(
                matches!(
                    s.create_whmcs_key(Some(bad), None).await,
                    Err(StoreError::Invalid(_))
                ),
                "{bad}"
            );
        }

        // Listing never shows a secret.
        let list = s.list_whmcs_keys().await.unwrap();
        assert_eq!(list.len(), 2);
        let text = serde_json::to_string(&list).unwrap();
        assert!(!text.contains(&secret) && !text.contains(&admin_secret));

        let active = s.whmcs_key_secrets(&k.id).await.unwrap().unwrap();
        assert_eq!(active.secrets, vec![secret.clone()]);
        assert_eq!(active.reseller.as_deref(), Some("r1"));
        assert!(!format!("{active:?}").contains(&secret));
        assert!(s.whmcs_key_secrets("wk_missing").await.unwrap().is_none());

        let r = s.revoke_whmcs_key(&k.id).await.unwrap();
        assert!(r.revoked_at.is_some());
        assert_eq!(r.active_secrets, 0);
        assert!(s.whmcs_key_secrets(&k.id).await.unwrap().is_none());
        // Again: unchanged.
        assert_eq!(
            s.revoke_whmcs_key(&k.id).await.unwrap().revoked_at,
            r.revoked_at
        );
        assert!(matches!(
            s.rotate_whmcs_key(&k.id, Duration::from_secs(60)).await,
            Err(StoreError::Conflict(_))
        ));
        assert!(matches!(
            s.revoke_whmcs_key("wk_missing").await,
            Err(StoreError::NotFound(_))
        ));
    })
    .await;
}

#[tokio::test]
async fn rotation_keeps_the_old_secret_for_its_grace_only() {
    each(async |s| {
        let (k, first) = s.create_whmcs_key(None, None).await.unwrap();
        let (k2, second) = s
            .rotate_whmcs_key(&k.id, Duration::from_secs(3600))
            .await
            .unwrap();
        assert_eq!(k2.active_secrets, 2);
        assert!(k2.grace_until.is_some());
        let active = s.whmcs_key_secrets(&k.id).await.unwrap().unwrap();
        assert_eq!(active.secrets, vec![second.clone(), first.clone()]);

        // A rotation with no grace drops every older secret at once.
        let (k3, third) = s.rotate_whmcs_key(&k.id, Duration::ZERO).await.unwrap();
        assert_eq!(k3.active_secrets, 1);
        let active = s.whmcs_key_secrets(&k.id).await.unwrap().unwrap();
        assert_eq!(active.secrets, vec![third]);

        // A short grace runs out by itself: the old secret is there right after the rotation
        // (a grace over a second, so that a slow machine does not see it run out first), and
        // goes without anything else being done, not before the grace has passed.
        let grace = Duration::from_millis(1200);
        let rotated = std::time::Instant::now();
        let (_, fourth) = s.rotate_whmcs_key(&k.id, grace).await.unwrap();
        assert_eq!(
            s.whmcs_key_secrets(&k.id)
                .await
                .unwrap()
                .unwrap()
                .secrets
                .len(),
            2
        );
        loop {
            let secrets = s.whmcs_key_secrets(&k.id).await.unwrap().unwrap().secrets;
            if secrets.len() == 1 {
                assert_eq!(secrets, vec![fourth]);
                break;
            }
            assert_eq!(secrets.len(), 2, "{secrets:?}");
            assert!(
                rotated.elapsed() < grace + Duration::from_secs(10),
                "the grace never ran out"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // (stored times are whole milliseconds of the wall clock: a few ms of allowance)
        assert!(
            rotated.elapsed() + Duration::from_millis(5) >= grace,
            "the old secret went {:?} after a rotation with a grace of {grace:?}",
            rotated.elapsed()
        );
        assert!(matches!(
            s.rotate_whmcs_key("wk_missing", Duration::ZERO).await,
            Err(StoreError::NotFound(_))
        ));
    })
    .await;
}

#[tokio::test]
async fn service_ids_are_looked_up_within_a_scope() {
    each(async |s| {
        seed(s).await;
        let a = s.whmcs_account("100", Some("r1")).await.unwrap().unwrap();
        assert_eq!(a.id, "c1");
        let a = s.whmcs_account("100", None).await.unwrap().unwrap();
        assert_eq!(a.id, "c2");
        assert!(s.whmcs_account("101", None).await.unwrap().is_none());
        assert!(s.whmcs_account("999", Some("r1")).await.unwrap().is_none());
    })
    .await;
}
