//! Per-account email policy overrides (schema 9) on SQLite, and on PostgreSQL when
//! `NPANEL_TEST_POSTGRES_URL` is set: stored, merged over the package, replaced, cleared.

use store::{
    testing, EmailPolicyOverride, Limits, NewAccount, NewPackage, PackageStatus, PolicySource,
};

#[tokio::test]
async fn overrides_are_stored_merged_and_cleared() {
    for ts in testing::all().await {
        let s = &ts.store;
        eprintln!("backend {:?}", s.backend());
        s.create_package(NewPackage {
            id: "mailer".into(),
            limits: Limits {
                email_per_hour: Some(1000),
                email_burst_per_15min: Some(300),
                email_mb_per_hour: Some(100),
                ..Limits::default()
            },
            ..NewPackage::default()
        })
        .await
        .unwrap();
        s.set_package_status("mailer", PackageStatus::Active)
            .await
            .unwrap();
        s.create_account(&NewAccount {
            id: "alice".into(),
            package: Some("mailer".into()),
            ..NewAccount::default()
        })
        .await
        .unwrap();
        let alice = s.account("alice").await.unwrap();

        // No override: the package, then the defaults.
        assert_eq!(
            s.email_policy_override("alice").await.unwrap(),
            EmailPolicyOverride::default()
        );
        let e = s.effective_email_policy(&alice).await.unwrap();
        assert_eq!(e.policy.per_hour, 1000);
        assert_eq!(e.policy.max_connections, 10);
        assert_eq!(e.sources["per_hour"], PolicySource::Package);
        assert_eq!(e.sources["max_connections"], PolicySource::Default);

        // An override wins field by field, and is replaced as a whole.
        let ov = EmailPolicyOverride {
            per_hour: Some(200),
            max_connections: Some(3),
            ..Default::default()
        };
        s.set_email_policy_override("alice", &ov).await.unwrap();
        assert_eq!(s.email_policy_override("alice").await.unwrap(), ov);
        let e = s.effective_email_policy(&alice).await.unwrap();
        assert_eq!(
            (
                e.policy.per_hour,
                e.policy.burst_per_15min,
                e.policy.max_connections
            ),
            (200, 200, 3),
            "the package's burst of 300 is capped at the account's hour"
        );
        assert_eq!(e.sources["per_hour"], PolicySource::Account);
        assert_eq!(e.sources["mb_per_hour"], PolicySource::Package);
        let ov2 = EmailPolicyOverride {
            mb_per_hour: Some(5),
            ..Default::default()
        };
        s.set_email_policy_override("alice", &ov2).await.unwrap();
        assert_eq!(s.email_policy_override("alice").await.unwrap(), ov2);

        // Empty: the row goes.
        s.set_email_policy_override("alice", &EmailPolicyOverride::default())
            .await
            .unwrap();
        assert!(s.email_policy_override("alice").await.unwrap().is_empty());
        assert_eq!(
            s.execute_for_tests("DELETE FROM email_policies")
                .await
                .unwrap(),
            0
        );

        // A package with email limits out of range is refused when created.
        let e = s
            .create_package(NewPackage {
                id: "spammy".into(),
                limits: Limits {
                    email_per_hour: Some(0),
                    email_burst_per_15min: Some(10),
                    ..Limits::default()
                },
                ..NewPackage::default()
            })
            .await;
        let msg = format!("{e:?}");
        assert!(msg.contains("email_per_hour must be between 1"), "{msg}");
    }
}
