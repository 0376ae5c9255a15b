//! Per-account security policies (schema 10) on SQLite, and on PostgreSQL when
//! `NPANEL_TEST_POSTGRES_URL` is set: stored, read back with their sources, changed field by
//! field without losing concurrent changes, refused whole, and forgotten with their account.

use serde_json::{json, Map, Value};
use store::{
    testing, AccountSecurity, NewAccount, NewPackage, PackageStatus, SecurityPolicy, StoreError,
    SECURITY_SETTINGS,
};

fn patch(v: Value) -> Map<String, Value> {
    v.as_object().unwrap().clone()
}

#[tokio::test]
async fn policies_are_stored_changed_and_forgotten() {
    for ts in testing::all().await {
        let s = &ts.store;
        eprintln!("backend {:?}", s.backend());
        // No row: the host default, nothing pinned.
        assert_eq!(
            s.account_security("nobody").await.unwrap(),
            AccountSecurity::default()
        );
        let missing = s
            .update_account_security("nobody", |c| Ok(c.clone()))
            .await
            .unwrap_err();
        assert!(matches!(missing, StoreError::NotFound(_)), "{missing}");
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
            id: "alice".into(),
            package: Some("basic".into()),
            ..NewAccount::default()
        })
        .await
        .unwrap();

        // A template and two overrides, read back as stored, each with its source.
        let (before, after) = s
            .update_account_security("alice", |c| {
                let mut n = c.clone();
                n.policy = Some(SecurityPolicy::Moderate);
                n.overrides = c.overrides.patched(&patch(
                    json!({"cron": false, "php_disable_functions": ["exec", "EXEC", "system"]}),
                ))?;
                Ok(n)
            })
            .await
            .unwrap();
        assert_eq!(before, AccountSecurity::default());
        let stored = s.account_security("alice").await.unwrap();
        assert_eq!(stored, after);
        let e = stored.effective(SecurityPolicy::Strict);
        assert_eq!(
            (e.policy, e.policy_source),
            (SecurityPolicy::Moderate, "account")
        );
        assert!(!e.settings.cron);
        assert_eq!(e.settings.php_disable_functions, ["exec", "system"]);
        assert_eq!(e.settings.password_min_length, 10);
        let view = e.settings_view();
        assert_eq!(view.len(), SECURITY_SETTINGS.len());
        assert_eq!(view["cron"], json!({"value": false, "source": "override"}));
        assert_eq!(
            view["password_min_length"],
            json!({"value": 10, "source": "template:moderate"})
        );

        // Concurrent changes of different fields both stay.
        let (a, b) = tokio::join!(
            s.update_account_security("alice", |c| {
                let mut n = c.clone();
                n.overrides = c.overrides.patched(&patch(json!({"home_mode": "0700"})))?;
                Ok(n)
            }),
            s.update_account_security("alice", |c| {
                let mut n = c.clone();
                n.overrides = c
                    .overrides
                    .patched(&patch(json!({"password_min_length": 20})))?;
                Ok(n)
            })
        );
        a.unwrap();
        b.unwrap();
        let o = s.account_security("alice").await.unwrap().overrides;
        assert_eq!(o.0["home_mode"], "0700");
        assert_eq!(o.0["password_min_length"], 20);
        assert_eq!(o.0.len(), 4, "{o:?}");

        // A refused patch (one good key, one bad) writes nothing.
        let err = s
            .update_account_security("alice", |c| {
                let mut n = c.clone();
                n.overrides = c
                    .overrides
                    .patched(&patch(json!({"cron": true, "ssh_tcp_forwarding": "all"})))?;
                Ok(n)
            })
            .await
            .unwrap_err();
        assert!(
            matches!(&err, StoreError::Invalid(m) if m.contains("ssh_tcp_forwarding")),
            "{err}"
        );
        assert_eq!(s.account_security("alice").await.unwrap().overrides, o);

        // A pending account that is forgotten takes its policy with it: a new account under
        // the name starts from the host default.
        s.create_account(&NewAccount {
            id: "bob".into(),
            package: Some("basic".into()),
            ..NewAccount::default()
        })
        .await
        .unwrap();
        s.update_account_security("bob", |_| {
            Ok(AccountSecurity {
                policy: Some(SecurityPolicy::Legacy),
                ..AccountSecurity::default()
            })
        })
        .await
        .unwrap();
        assert!(s.forget_pending_account("bob").await.unwrap());
        assert_eq!(
            s.account_security("bob").await.unwrap(),
            AccountSecurity::default()
        );
    }
}
