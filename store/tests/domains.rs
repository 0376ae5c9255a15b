//! Accounts' extra domains (schema 12) on SQLite, and on PostgreSQL when
//! `NPANEL_TEST_POSTGRES_URL` is set: unique across accounts and primaries, the package's limit
//! held when the row is written, idempotent adds, counts for the quota sweep.

use store::{
    testing, DomainError, DomainKind, Limits, NewAccount, NewPackage, PackageStatus, Store,
    StoreError,
};

async fn seed(s: &Store) {
    s.create_package(NewPackage {
        id: "two".into(),
        limits: Limits {
            addon_domains: Some(2),
            ..Limits::default()
        },
        ..NewPackage::default()
    })
    .await
    .unwrap();
    s.set_package_status("two", PackageStatus::Active)
        .await
        .unwrap();
    for id in ["alice", "bob"] {
        s.create_account(&NewAccount {
            id: id.into(),
            package: Some("two".into()),
            domain: Some(format!("{id}.example")),
            ..NewAccount::default()
        })
        .await
        .unwrap();
    }
}

#[tokio::test]
async fn addon_domains_are_unique_limited_and_counted() {
    for ts in testing::all().await {
        let s = &ts.store;
        eprintln!("backend {:?}", s.backend());
        seed(s).await;
        let limit = s
            .account("alice")
            .await
            .unwrap()
            .limits
            .unwrap()
            .addon_domains;
        assert_eq!(limit, Some(2));

        // Added (lower case), and again: the same row, nothing new (a retried job).
        let d = s
            .add_addon_domain("alice", "Shop.Example", limit)
            .await
            .unwrap();
        assert_eq!(
            (d.domain.as_str(), d.kind),
            ("shop.example", DomainKind::Addon)
        );
        let again = s
            .add_addon_domain("alice", "shop.example", limit)
            .await
            .unwrap();
        assert_eq!(again, d);
        // The check a new request goes through refuses it, naming it as the account's own.
        let e = s
            .check_addon_domain("alice", "shop.example", limit)
            .await
            .unwrap_err();
        assert!(
            matches!(
                e,
                DomainError::Taken {
                    same_account: true,
                    ..
                }
            ),
            "{e}"
        );

        // Another account cannot have it, nor anyone's primary domain, nor an invalid name.
        for (acct, dom) in [
            ("bob", "shop.example"),
            ("bob", "alice.example"),
            ("alice", "alice.example"),
            ("bob", "SHOP.example"),
        ] {
            let e = s.add_addon_domain(acct, dom, None).await.unwrap_err();
            assert!(matches!(e, DomainError::Taken { .. }), "{acct} {dom}: {e}");
            let e = s.check_addon_domain(acct, dom, None).await.unwrap_err();
            assert!(matches!(e, DomainError::Taken { .. }), "{acct} {dom}: {e}");
        }
        let e = s
            .add_addon_domain("bob", "not a domain", None)
            .await
            .unwrap_err();
        assert!(
            matches!(e, DomainError::Store(StoreError::Invalid(_))),
            "{e}"
        );

        // The limit: a second fits, a third is refused and nothing is written.
        s.add_addon_domain("alice", "blog.example", limit)
            .await
            .unwrap();
        let e = s
            .check_addon_domain("alice", "third.example", limit)
            .await
            .unwrap_err();
        assert!(
            matches!(
                e,
                DomainError::LimitReached {
                    used: 2,
                    limit: 2,
                    ..
                }
            ),
            "{e}"
        );
        let e = s
            .add_addon_domain("alice", "third.example", limit)
            .await
            .unwrap_err();
        assert!(matches!(e, DomainError::LimitReached { .. }), "{e}");
        assert_eq!(s.account_domains("alice").await.unwrap().len(), 2);
        // 0 allows none; None is unlimited.
        let e = s
            .add_addon_domain("bob", "b1.example", Some(0))
            .await
            .unwrap_err();
        assert!(
            matches!(e, DomainError::LimitReached { used: 0, .. }),
            "{e}"
        );
        s.add_addon_domain("bob", "b1.example", None).await.unwrap();

        // What the sweep and the mail policy read.
        let counts = s.addon_domain_counts().await.unwrap();
        assert_eq!(counts.get("alice"), Some(&2));
        assert_eq!(counts.get("bob"), Some(&1));
        assert_eq!(
            s.all_domains("alice").await.unwrap(),
            ["alice.example", "blog.example", "shop.example"]
        );
        let listed: Vec<String> = s
            .account_domains("alice")
            .await
            .unwrap()
            .into_iter()
            .map(|d| d.domain)
            .collect();
        assert_eq!(listed, ["blog.example", "shop.example"]);

        // Removed: the slot and the name are free again; a second remove is a no-op.
        assert!(s
            .remove_account_domain("alice", "Shop.example")
            .await
            .unwrap());
        assert!(!s
            .remove_account_domain("alice", "shop.example")
            .await
            .unwrap());
        assert!(!s
            .remove_account_domain("bob", "blog.example")
            .await
            .unwrap());
        s.add_addon_domain("bob", "shop.example", None)
            .await
            .unwrap();
        s.add_addon_domain("alice", "third.example", limit)
            .await
            .unwrap();
        let counts = s.addon_domain_counts().await.unwrap();
        assert_eq!((counts["alice"], counts["bob"]), (2, 2));
    }
}

#[tokio::test]
async fn concurrent_adds_never_pass_the_limit() {
    for ts in testing::all().await {
        let s = &ts.store;
        eprintln!("backend {:?}", s.backend());
        seed(s).await;
        let tasks: Vec<_> = (0..8)
            .map(|i| {
                let s = s.clone();
                tokio::spawn(async move {
                    s.add_addon_domain("alice", &format!("d{i}.example"), Some(2))
                        .await
                })
            })
            .collect();
        let mut ok = 0;
        for t in tasks {
            match t.await.unwrap() {
                Ok(_) => ok += 1,
                Err(DomainError::LimitReached { .. }) => {}
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(ok, 2);
        assert_eq!(s.addon_domain_counts().await.unwrap()["alice"], 2);
    }
}

#[tokio::test]
async fn a_new_account_cannot_take_another_accounts_addon_domain() {
    for ts in testing::all().await {
        let s = &ts.store;
        seed(s).await;
        s.add_addon_domain("alice", "shop.example", Some(2))
            .await
            .unwrap();
        let e = s
            .create_account(&NewAccount {
                id: "carol".into(),
                package: Some("two".into()),
                domain: Some("Shop.example".into()),
                ..NewAccount::default()
            })
            .await
            .unwrap_err();
        assert!(
            matches!(&e, StoreError::Conflict(m) if m.contains("addon domain of another account")),
            "{e}"
        );
        assert!(s.account("carol").await.is_err(), "nothing created");
    }
}

#[tokio::test]
async fn a_subdomain_or_parent_of_another_accounts_domain_is_refused() {
    for ts in testing::all().await {
        let s = &ts.store;
        seed(s).await;
        // alice may not claim names under bob's domain, nor its parent's other names.
        for d in ["www.bob.example", "mail.www.bob.example"] {
            let e = s.add_addon_domain("alice", d, Some(2)).await.unwrap_err();
            assert!(
                matches!(
                    e,
                    DomainError::Taken {
                        same_account: false,
                        ..
                    }
                ),
                "{d}: {e}"
            );
            let e = s.check_addon_domain("alice", d, Some(2)).await.unwrap_err();
            assert!(
                matches!(
                    e,
                    DomainError::Taken {
                        same_account: false,
                        ..
                    }
                ),
                "{d}"
            );
        }
        // Her own domain's names are hers to add.
        s.add_addon_domain("alice", "shop.alice.example", Some(2))
            .await
            .unwrap();
        // bob may not then claim a parent that covers alice's addon domain.
        s.add_addon_domain("bob", "shop2.example", Some(2))
            .await
            .unwrap();
        let e = s
            .create_account(&NewAccount {
                id: "carol".into(),
                package: Some("two".into()),
                domain: Some("mail.bob.example".into()),
                ..NewAccount::default()
            })
            .await
            .unwrap_err();
        assert!(
            matches!(&e, StoreError::Conflict(m) if m.contains("related to bob.example")),
            "{e}"
        );
        let e = s
            .create_account(&NewAccount {
                id: "dave".into(),
                package: Some("two".into()),
                domain: Some("x.shop.alice.example".into()),
                ..NewAccount::default()
            })
            .await
            .unwrap_err();
        assert!(matches!(&e, StoreError::Conflict(_)), "{e}");
    }
}
