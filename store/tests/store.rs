//! The store's behaviour, on SQLite always and on PostgreSQL when `NPANEL_TEST_POSTGRES_URL`
//! is set: every test body runs once per backend.

use serde_json::json;
use store::testing::{self, TestStore};
use store::*;

async fn active_package(s: &Store, id: &str, disk: Option<u64>, owner: Option<&str>) {
    s.create_package(NewPackage {
        id: id.into(),
        limits: Limits {
            disk_mb: disk,
            bandwidth_mb: disk.map(|d| d * 10),
            ..Limits::default()
        },
        features: vec!["ssh".into(), "cron".into()],
        disabled_features: vec!["cron".into()],
        owner: owner.map(Into::into),
        ..NewPackage::default()
    })
    .await
    .unwrap();
    s.set_package_status(id, PackageStatus::Active)
        .await
        .unwrap();
}

fn customer(id: &str, parent: Option<&str>, package: &str) -> NewAccount {
    NewAccount {
        id: id.into(),
        kind: Some(AccountType::Customer),
        parent: parent.map(Into::into),
        package: Some(package.into()),
        domain: Some(format!("{id}.example")),
        ..NewAccount::default()
    }
}

fn reseller(id: &str, max: u32, disk: Option<u64>) -> NewAccount {
    NewAccount {
        id: id.into(),
        kind: Some(AccountType::Reseller),
        allowance: Some(Allowance {
            max_accounts: max,
            disk_mb: disk,
            bandwidth_mb: None,
        }),
        ..NewAccount::default()
    }
}

async fn each(f: impl AsyncFn(&TestStore)) {
    for s in testing::all().await {
        eprintln!("backend {:?}", s.backend());
        f(&s).await;
    }
}

#[tokio::test]
async fn hierarchy_rules_and_allowance() {
    each(async |s| {
        active_package(s, "basic", Some(1000), None).await;
        active_package(s, "huge", None, None).await;
        s.create_account(&reseller("r1", 2, Some(2500)))
            .await
            .unwrap();
        let a = s
            .create_account(&customer("c1", Some("r1"), "basic"))
            .await
            .unwrap();
        assert_eq!(a.reseller.as_deref(), Some("r1"));
        assert_eq!(a.status, AccountStatus::Pending);
        assert_eq!(
            a.features,
            vec!["ssh".to_string()],
            "disabled features are removed"
        );
        assert_eq!(a.limits.as_ref().unwrap().disk_mb, Some(1000));
        // Duplicates, reserved and invalid names.
        assert!(matches!(
            s.create_account(&customer("c1", None, "basic")).await,
            Err(StoreError::Conflict(_))
        ));
        assert!(matches!(
            s.create_account(&customer("root", None, "basic")).await,
            Err(StoreError::Invalid(_))
        ));
        assert!(matches!(
            s.create_account(&customer("Bad-Name", None, "basic")).await,
            Err(StoreError::Invalid(_))
        ));
        // A fourth level and a reseller under a reseller.
        let e = s
            .create_account(&customer("c9", Some("c1"), "basic"))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("at most"), "{e}");
        let mut rr = reseller("r9", 1, None);
        rr.parent = Some("r1".into());
        assert!(matches!(
            s.create_account(&rr).await,
            Err(StoreError::Invalid(_))
        ));
        // An unlimited package does not fit a finite disk allowance.
        let e = s
            .create_account(&customer("c2", Some("r1"), "huge"))
            .await
            .unwrap_err();
        assert!(matches!(e, StoreError::AllowanceExceeded(_)), "{e}");
        s.create_account(&customer("c2", Some("r1"), "basic"))
            .await
            .unwrap();
        // The third customer is over max_accounts; nothing is written.
        let e = s
            .create_account(&customer("c3", Some("r1"), "basic"))
            .await
            .unwrap_err();
        assert!(matches!(e, StoreError::AllowanceExceeded(_)), "{e}");
        assert!(matches!(
            s.account("c3").await,
            Err(StoreError::NotFound(_))
        ));
        let sum = s.reseller_summary("r1").await.unwrap();
        assert_eq!(
            (sum.accounts, sum.pending, sum.disk_mb_allocated),
            (2, 2, Some(2000))
        );
        // Allowance cannot go below use; a customer under the root admin is fine.
        assert!(s
            .set_allowance(
                "r1",
                &Allowance {
                    max_accounts: 1,
                    disk_mb: None,
                    bandwidth_mb: None
                }
            )
            .await
            .is_err());
        assert!(s
            .set_allowance(
                "r1",
                &Allowance {
                    max_accounts: 1001,
                    disk_mb: None,
                    bandwidth_mb: None
                }
            )
            .await
            .is_err());
        s.create_account(&customer("solo", None, "huge"))
            .await
            .unwrap();
        // Lists: a reseller's customers only, keyset.
        let page = s.list_accounts(Some("r1"), None, None, 1).await.unwrap();
        assert_eq!(page.len(), 1);
        let next = s
            .list_accounts(Some("r1"), None, Some(&page[0].id), 10)
            .await
            .unwrap();
        assert_eq!(
            next.iter().map(|a| a.id.as_str()).collect::<Vec<_>>(),
            vec!["c2"]
        );
        // Terminated names are not reused within 30 days.
        s.set_account_status("c2", AccountStatus::Terminated, Some("gone"))
            .await
            .unwrap();
        let e = s
            .create_account(&customer("c2", Some("r1"), "basic"))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("30 days"), "{e}");
        // Suspend and back.
        let a = s
            .set_account_status("c1", AccountStatus::Suspended, Some("abuse"))
            .await
            .unwrap();
        assert!(a.suspended_at.is_some());
        let a = s
            .set_account_status("c1", AccountStatus::Active, None)
            .await
            .unwrap();
        assert!(a.suspended_at.is_none() && a.suspend_reason.is_none());
    })
    .await;
}

#[tokio::test]
async fn package_lifecycle() {
    each(async |s| {
        let p = s
            .create_package(parse_package_yaml(include_str!("../../packages/basic.yaml")).unwrap())
            .await
            .unwrap();
        assert_eq!((p.status, p.version), (PackageStatus::Draft, 1));
        assert!(
            s.create_account(&customer("c1", None, "basic"))
                .await
                .is_err(),
            "draft takes no accounts"
        );
        s.set_package_status("basic", PackageStatus::Active)
            .await
            .unwrap();
        s.create_account(&customer("c1", None, "basic"))
            .await
            .unwrap();
        let (before, after) = s
            .update_package(
                "basic",
                &PackageUpdate {
                    name: Some("Basic 2".into()),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert_eq!((before.version, after.version), (1, 2));
        // In use: deleting deprecates instead.
        let kept = s.delete_package("basic").await.unwrap().expect("kept");
        assert_eq!(kept.status, PackageStatus::Deprecated);
        assert!(s
            .create_account(&customer("c2", None, "basic"))
            .await
            .is_err());
        // Unused: deleted.
        s.create_package(NewPackage {
            id: "tmp".into(),
            ..Default::default()
        })
        .await
        .unwrap();
        assert!(s.delete_package("tmp").await.unwrap().is_none());
        assert!(matches!(
            s.package("tmp").await,
            Err(StoreError::NotFound(_))
        ));
        // Bad input.
        let dup = s
            .create_package(NewPackage {
                id: "basic".into(),
                ..Default::default()
            })
            .await;
        assert!(matches!(dup, Err(StoreError::Conflict(_))));
        let unknown = s
            .create_package(NewPackage {
                id: "x".into(),
                features: vec!["teleport".into()],
                ..Default::default()
            })
            .await;
        assert!(matches!(unknown, Err(StoreError::Invalid(_))));
        let big = s
            .create_package(NewPackage {
                id: "big".into(),
                pricing: Some(json!("x".repeat(60_000))),
                ..Default::default()
            })
            .await;
        assert!(
            matches!(big, Err(StoreError::Invalid(ref m)) if m.contains("50 KiB")),
            "{big:?}"
        );
        // A name is 1 to 200 characters, counted as characters (not bytes), on create and
        // on update alike.
        for (name, ok) in [
            ("é".repeat(200), true),
            ("é".repeat(201), false),
            (" ".into(), false),
        ] {
            let r = s
                .create_package(NewPackage {
                    id: "named".into(),
                    name: Some(name.clone()),
                    ..Default::default()
                })
                .await;
            assert_eq!(
                r.is_ok(),
                ok,
                "create {} chars: {r:?}",
                name.chars().count()
            );
            if ok {
                assert!(s.delete_package("named").await.unwrap().is_none());
            }
            let r = s
                .update_package(
                    "basic",
                    &PackageUpdate {
                        name: Some(name.clone()),
                        ..Default::default()
                    },
                )
                .await;
            assert_eq!(
                r.is_ok(),
                ok,
                "update {} chars: {r:?}",
                name.chars().count()
            );
        }
    })
    .await;
}

#[tokio::test]
async fn audit_chain_search_and_tamper() {
    each(async |s| {
        let mut recs = Vec::new();
        for i in 0..30 {
            let mut r = NewAudit::new(
                if i % 2 == 0 { "account_created" } else { "package_changed" },
                Actor { kind: "admin".into(), id: format!("u{}", i % 3), ..Default::default() },
                "success",
            );
            r.account = Some(format!("acct{}", i % 5));
            r.changes = json!({"before": null, "after": {"n": i}});
            recs.push(r);
        }
        assert_eq!(s.append_audit(&recs).await.unwrap(), 30);
        // Re-delivery writes nothing twice.
        assert_eq!(s.append_audit(&recs[..10]).await.unwrap(), 0);
        let v = s.verify_audit().await.unwrap();
        assert!(v.ok, "{v:?}");
        assert_eq!(v.checked, 30);
        let page = s
            .search_audit(&AuditFilter { action: Some("account_".into()), limit: 5, ..Default::default() })
            .await
            .unwrap();
        assert_eq!(page.len(), 5);
        assert!(page.windows(2).all(|w| w[0].seq > w[1].seq));
        let rest = s
            .search_audit(&AuditFilter {
                action: Some("account_".into()),
                before_seq: Some(page[4].seq),
                limit: 100,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(page.len() + rest.len(), 15);
        let text = s
            .search_audit(&AuditFilter { text: Some("\"N\":7".into()), limit: 100, ..Default::default() })
            .await
            .unwrap();
        assert_eq!(text.len(), 1);
        let by = s
            .search_audit(&AuditFilter { account: Some("acct1".into()), actor: Some("u0".into()), limit: 100, ..Default::default() })
            .await
            .unwrap();
        assert!(by.iter().all(|r| r.record.account.as_deref() == Some("acct1") && r.record.actor.id == "u0"));
        // Edit a record's content: verify names it.
        let victim = &page[2];
        sqlx_update(s, &format!(
            "UPDATE audit SET doc = REPLACE(doc, 'account_created', 'account_deleted') WHERE seq = {}",
            victim.seq
        ))
        .await;
        let v = s.verify_audit().await.unwrap();
        assert!(!v.ok);
        assert_eq!(v.broken_at, Some(victim.seq));
    })
    .await;
}

async fn sqlx_update(s: &Store, sql: &str) {
    s.execute_for_tests(sql).await.unwrap();
}

#[tokio::test]
async fn history_archive_is_atomic_and_idempotent() {
    each(async |s| {
        let row = |id: &str, status: &str| HistoryRow {
            id: id.into(),
            kind: "diagnostic".into(),
            status: status.into(),
            account: Some("a1".into()),
            reseller: None,
            finished_at: 10,
            doc: json!({"id": id, "status": status}),
        };
        assert_eq!(s.archive_mark("jobs").await.unwrap(), (0, String::new()));
        s.archive_jobs(
            "jobs",
            &[row("01A", "failed"), row("01B", "succeeded")],
            (10, "01B"),
        )
        .await
        .unwrap();
        // The same job archived again (re-run and finished again) is still one row.
        s.archive_jobs("jobs", &[row("01A", "succeeded")], (11, "01A"))
            .await
            .unwrap();
        let all = s
            .list_history(&HistoryFilter {
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(
            all.iter()
                .map(|r| (r.id.as_str(), r.status.as_str()))
                .collect::<Vec<_>>(),
            vec![("01B", "succeeded"), ("01A", "succeeded")]
        );
        assert_eq!(
            s.archive_mark("jobs").await.unwrap(),
            (11, "01A".to_string())
        );
        let older = s
            .list_history(&HistoryFilter {
                before: Some("01B".into()),
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(older.len(), 1);
        assert!(s.history_job("01A").await.unwrap().is_some());
        assert_eq!(s.purge_history(10).await.unwrap(), 0);
        assert_eq!(s.purge_history(11).await.unwrap(), 2);
    })
    .await;
}

#[tokio::test]
async fn a_closed_store_is_unavailable() {
    let s = testing::sqlite().await;
    s.close().await;
    assert!(matches!(s.ping().await, Err(StoreError::Unavailable(_))));
    assert!(matches!(
        s.account("x").await,
        Err(StoreError::Unavailable(_))
    ));
}

/// Many writers at once (creates with their allowance checks, status changes, audit appends):
/// every one succeeds. A transaction that asked the pool for a second connection while holding
/// SQLite's write lock used to stall them all until the busy timeout and fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_do_not_stall_each_other() {
    each(async |s| {
        active_package(s, "basic", Some(10), None).await;
        s.create_account(&reseller("r1", 1000, None)).await.unwrap();
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..40 {
            let st = s.store.clone();
            tasks.spawn(async move {
                st.create_account(&customer(&format!("c{i}"), Some("r1"), "basic"))
                    .await
                    .map(|_| ())
            });
            let st = s.store.clone();
            tasks.spawn(async move {
                st.set_account_status("r1", AccountStatus::Active, None)
                    .await
                    .map(|_| ())
            });
            let st = s.store.clone();
            tasks.spawn(async move {
                let r = NewAudit::new("x", Actor::default(), "success");
                st.append_audit(&[r]).await.map(|_| ())
            });
        }
        while let Some(r) = tasks.join_next().await {
            r.unwrap().unwrap();
        }
        assert_eq!(s.reseller_summary("r1").await.unwrap().accounts, 40);
        assert!(s.verify_audit().await.unwrap().ok);
    })
    .await;
}

/// Verification walks only what is new since the last one, and still catches a rewrite of the
/// record it last vouched for; a full walk catches everything.
#[tokio::test]
async fn incremental_verification_uses_checkpoints() {
    each(async |s| {
        let batch = |n: usize| {
            (0..n)
                .map(|_| NewAudit::new("account_created", Actor::default(), "success"))
                .collect::<Vec<_>>()
        };
        s.append_audit(&batch(10)).await.unwrap();
        let v = s.verify_audit_incremental().await.unwrap();
        assert!(v.ok && v.checked == 10 && v.from_checkpoint.is_none(), "{v:?}");
        s.append_audit(&batch(5)).await.unwrap();
        let v = s.verify_audit_incremental().await.unwrap();
        assert!(v.ok, "{v:?}");
        assert_eq!((v.checked, v.from_checkpoint, v.last_seq), (5, Some(10), Some(15)));
        let v = s.verify_audit_incremental().await.unwrap();
        assert_eq!((v.ok, v.checked, v.last_seq), (true, 0, Some(15)));
        // An edit behind the checkpoint: only a full walk sees it.
        s.execute_for_tests("UPDATE audit SET doc = REPLACE(doc, 'account_created', 'account_deleted') WHERE seq = 3")
            .await
            .unwrap();
        assert!(s.verify_audit_incremental().await.unwrap().ok);
        let full = s.verify_audit().await.unwrap();
        assert_eq!((full.ok, full.broken_at), (false, Some(3)));
        // A rewrite of the checkpointed record itself is caught incrementally.
        s.execute_for_tests("UPDATE audit SET hash = 'ff' WHERE seq = 15")
            .await
            .unwrap();
        let v = s.verify_audit_incremental().await.unwrap();
        assert_eq!((v.ok, v.broken_at), (false, Some(15)));
    })
    .await;
}

/// With a time range, pages are ordered by time (the (ts, seq) index serves range and order)
/// and a `(ts, seq)` position continues exactly where the last page ended.
#[tokio::test]
async fn time_ranged_pages_follow_time() {
    each(async |s| {
        let base = 1_800_000_000_000i64;
        // Written out of time order, as several writers might.
        let recs: Vec<NewAudit> = [5, 1, 4, 2, 3, 9, 0]
            .iter()
            .map(|m| {
                let mut r = NewAudit::new("account_created", Actor::default(), "success");
                r.timestamp = ms_time(base + m * 60_000);
                r
            })
            .collect();
        s.append_audit(&recs).await.unwrap();
        let range = |before: Option<&AuditRecord>| AuditFilter {
            from: Some(base + 60_000),
            to: Some(base + 6 * 60_000),
            before_seq: before.map(|r| r.seq),
            before_ts: before.map(|r| r.record.timestamp.timestamp_millis()),
            limit: 2,
            ..Default::default()
        };
        let mut minutes = Vec::new();
        let mut last: Option<AuditRecord> = None;
        loop {
            let page = s.search_audit(&range(last.as_ref())).await.unwrap();
            for r in &page {
                minutes.push((r.record.timestamp.timestamp_millis() - base) / 60_000);
            }
            if page.len() < 2 {
                break;
            }
            last = page.last().cloned();
        }
        assert_eq!(minutes, vec![5, 4, 3, 2, 1]);
    })
    .await;
}

/// Every search plan (free text through the trigram index, an action prefix walked name by
/// name, one statement) returns exactly what a scan would, page by page, alone and combined
/// with the other filters; retention removes records from the text index too.
#[tokio::test]
async fn search_plans_return_what_a_scan_would() {
    each(async |s| {
        let actions = [
            "account_created",
            "account_suspended",
            "package_changed",
            "restore_started",
        ];
        let mut recs = Vec::new();
        for i in 0..900usize {
            let action = if i % 97 == 5 {
                "queue_paused"
            } else {
                actions[i % 4]
            };
            let mut r = NewAudit::new(
                action,
                Actor {
                    kind: "customer".into(),
                    id: format!("c{}", i % 20),
                    ip: Some(format!("10.0.{}.{}", i % 7, i % 13)),
                    user_agent: Some("Mozilla/5.0".into()),
                },
                if i % 11 == 0 { "failure" } else { "success" },
            );
            r.timestamp = ms_time(1_800_000_000_000 + i as i64 * 1000);
            r.account = Some(format!("c{}", i % 20));
            r.reseller = (i % 20 < 8).then(|| format!("res{}", i % 2));
            let who = if i % 50 == 0 {
                "Müller-Lüdenscheidt"
            } else {
                "Smith"
            };
            r.changes =
                json!({"after": {"note": format!("Note-{i}"), "odd": "50%_off", "who": who}});
            recs.push(r);
        }
        assert_eq!(s.append_audit(&recs).await.unwrap(), 900);
        // seq = position + 1 in a fresh store.
        let matching = |f: &AuditFilter| -> Vec<i64> {
            let mut v: Vec<i64> = recs
                .iter()
                .enumerate()
                .filter(|(_, r)| {
                    f.action
                        .as_ref()
                        .is_none_or(|a| r.action.starts_with(a.as_str()))
                        && f.reseller
                            .as_ref()
                            .is_none_or(|x| r.reseller.as_ref() == Some(x))
                        && f.account
                            .as_ref()
                            .is_none_or(|x| r.account.as_ref() == Some(x))
                        && f.result.as_ref().is_none_or(|x| &r.result == x)
                        && f.from.is_none_or(|t| r.timestamp.timestamp_millis() >= t)
                        && f.to.is_none_or(|t| r.timestamp.timestamp_millis() < t)
                        && f.text.as_ref().is_none_or(|q| {
                            // At the start of a word (or anywhere when it starts with punctuation).
                            let (doc, q) = (
                                serde_json::to_string(r).unwrap().to_lowercase(),
                                q.to_lowercase(),
                            );
                            doc.match_indices(&q).any(|(i, _)| {
                                !q.starts_with(char::is_alphanumeric)
                                    || !doc[..i].ends_with(char::is_alphanumeric)
                            })
                        })
                })
                .map(|(i, _)| i as i64 + 1)
                .collect();
            v.reverse();
            v
        };
        let paged = async |f: &AuditFilter, limit: i64| -> Vec<i64> {
            let mut seqs = Vec::new();
            let mut before: Option<&AuditRecord> = None;
            let mut page;
            loop {
                page = s
                    .search_audit(&AuditFilter {
                        before_seq: before.map(|r| r.seq),
                        before_ts: before.map(|r| r.record.timestamp.timestamp_millis()),
                        limit,
                        ..f.clone()
                    })
                    .await
                    .unwrap();
                seqs.extend(page.iter().map(|r| r.seq));
                if (page.len() as i64) < limit {
                    return seqs;
                }
                before = page.last();
            }
        };
        let text = |q: &str| Some(q.to_string());
        let filters = [
            AuditFilter {
                text: text("note-1"),
                ..Default::default()
            },
            AuditFilter {
                text: text("NOTE-77"),
                ..Default::default()
            },
            AuditFilter {
                text: text("10.0.3.1"),
                ..Default::default()
            },
            AuditFilter {
                text: text("10.0.3.1"),
                reseller: text("res1"),
                ..Default::default()
            },
            AuditFilter {
                text: text("mozilla"),
                result: text("failure"),
                ..Default::default()
            },
            AuditFilter {
                text: text("mozilla"),
                account: text("c3"),
                action: text("account_"),
                ..Default::default()
            },
            AuditFilter {
                text: text("50%_off"),
                account: text("c4"),
                ..Default::default()
            },
            AuditFilter {
                text: text("\"odd\""),
                account: text("c5"),
                ..Default::default()
            },
            AuditFilter {
                text: text("-7"),
                ..Default::default()
            },
            AuditFilter {
                text: text("no such text"),
                ..Default::default()
            },
            AuditFilter {
                text: text("ozilla"),
                ..Default::default()
            },
            AuditFilter {
                text: text("ote-1"),
                ..Default::default()
            },
            AuditFilter {
                text: text("0.3.1"),
                ..Default::default()
            },
            AuditFilter {
                text: text(".3.1"),
                ..Default::default()
            },
            AuditFilter {
                text: text("note-1"),
                from: Some(1_800_000_100_000),
                to: Some(1_800_000_700_000),
                ..Default::default()
            },
            AuditFilter {
                text: text("ote-1"),
                from: Some(1_800_000_100_000),
                to: Some(1_800_000_700_000),
                ..Default::default()
            },
            AuditFilter {
                text: text("müller"),
                ..Default::default()
            },
            AuditFilter {
                text: text("lüden"),
                ..Default::default()
            },
            AuditFilter {
                text: text("üller"),
                ..Default::default()
            },
            AuditFilter {
                action: text("queue_"),
                ..Default::default()
            },
            AuditFilter {
                action: text("account_"),
                ..Default::default()
            },
            AuditFilter {
                action: text("account_s"),
                reseller: text("res0"),
                ..Default::default()
            },
            AuditFilter {
                action: text("pack"),
                result: text("failure"),
                ..Default::default()
            },
            AuditFilter {
                action: text("nothing_"),
                ..Default::default()
            },
            // Short words only: PostgreSQL looks them up as adjacent pairs.
            AuditFilter {
                text: text("10.0.3"),
                ..Default::default()
            },
            AuditFilter {
                text: text("MOZILLA/5.0"),
                ..Default::default()
            },
            AuditFilter {
                text: text("müller-lü"),
                ..Default::default()
            },
        ];
        for f in &filters {
            let want = matching(f);
            for limit in [7, 100, 1000] {
                assert_eq!(paged(f, limit).await, want, "{f:?} limit {limit}");
            }
        }
        // "mozilla" is in all 900 records, more than the first text chunk (256): the failures
        // among them take several chunks to find.
        assert_eq!(
            matching(&AuditFilter {
                text: text("mozilla"),
                ..Default::default()
            })
            .len(),
            900
        );
        assert!(matching(&filters[9]).is_empty());
        assert!(matching(&filters[10]).is_empty(), "inside a word: no match");
        assert!(matching(&filters[11]).is_empty(), "inside a word: no match");
        assert!(
            !matching(&filters[12]).is_empty(),
            "\"0\" of \"10.0.3.1\" starts a word"
        );
        assert!(!matching(&filters[13]).is_empty());
        assert!(!matching(&filters[14]).is_empty());
        assert!(matching(&filters[15]).is_empty(), "inside a word: no match");
        assert_eq!(matching(&filters[16]).len(), 18);
        assert_eq!(matching(&filters[17]).len(), 18);
        assert!(matching(&filters[18]).is_empty(), "inside a word: no match");
        assert_eq!(matching(&filters[19]).len(), 10);
        // Retention: the purged records are gone from every plan.
        let cutoff = recs[450].timestamp.timestamp_millis();
        assert!(s.purge_audit(cutoff).await.unwrap() > 0);
        let left = s
            .search_audit(&AuditFilter {
                limit: 1000,
                ..Default::default()
            })
            .await
            .unwrap();
        let oldest = left.last().unwrap().seq;
        for f in &filters {
            let want: Vec<i64> = matching(f).into_iter().filter(|&q| q >= oldest).collect();
            assert_eq!(paged(f, 50).await, want, "after purge: {f:?}");
        }
    })
    .await;
}

/// A record with a word longer than any index takes (a 3000-letter user agent) is still
/// written, and found by its other words: one odd request must not stop the audit log.
#[tokio::test]
async fn a_huge_word_does_not_stop_the_audit_log() {
    each(async |s| {
        let mut r = NewAudit::new(
            "account_created",
            Actor {
                kind: "customer".into(),
                id: "hugeagent".into(),
                ip: Some("192.0.2.77".into()),
                user_agent: Some("a".repeat(3000)),
            },
            "success",
        );
        r.account = Some("hugeagent".into());
        assert_eq!(s.append_audit(&[r]).await.unwrap(), 1);
        let found = s
            .search_audit(&AuditFilter {
                text: Some("192.0.2.77".into()),
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(found.len(), 1);
        assert!(s.verify_audit().await.unwrap().ok);
    })
    .await;
}

/// A PostgreSQL store from before schema 6 (records indexed by the words of migration 4) is
/// upgraded in place: migration 6 fills `terms` for the records already there from their
/// documents, as the store fills it when it appends, so they are found by the new index.
#[tokio::test]
async fn an_upgraded_postgres_store_finds_its_old_records() {
    let Some(s) = testing::postgres().await else {
        return;
    };
    let ips = ["198.51.3.105", "198.51.30.7", "203.0.113.9"];
    let recs: Vec<NewAudit> = ips
        .iter()
        .enumerate()
        .map(|(i, ip)| {
            let mut r = NewAudit::new(
                "account_created",
                Actor {
                    kind: "customer".into(),
                    id: format!("cust00{i}"),
                    ip: Some((*ip).into()),
                    user_agent: Some("Mozilla/5.0".into()),
                },
                "success",
            );
            r.account = Some(format!("cust00{i}"));
            r
        })
        .collect();
    s.append_audit(&recs).await.unwrap();
    let search = async |s: &Store, text: &str| -> Vec<i64> {
        s.search_audit(&AuditFilter {
            text: Some(text.into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap()
        .iter()
        .map(|r| r.seq)
        .collect()
    };
    let expect = [
        ("198.51.3.105", vec![1]),
        ("198.51.3", vec![2, 1]),
        ("203.0.113", vec![3]),
        ("cust001", vec![2]),
        ("mozilla/5.0", vec![3, 2, 1]),
        ("51.30", vec![2]),
        ("ustomer", vec![]),
    ];
    for (text, seqs) in &expect {
        assert_eq!(&search(&s, text).await, seqs, "{text} before the upgrade");
    }
    // Back to schema 5: no `terms`, migration 4's index, migrations 6 and 7 not applied.
    for sql in [
        "DROP INDEX audit_terms",
        "ALTER TABLE audit DROP COLUMN terms",
        "CREATE INDEX audit_words ON audit USING gin (to_tsvector('simple'::regconfig, regexp_replace(LOWER(doc), '[^a-z0-9]+', ' ', 'g')))",
        "DELETE FROM _sqlx_migrations WHERE version IN (6, 7)",
    ] {
        s.execute_for_tests(sql).await.unwrap();
    }
    let upgraded = Store::connect(&s.postgres_url().unwrap()).await.unwrap();
    for (text, seqs) in &expect {
        assert_eq!(
            &search(&upgraded, text).await,
            seqs,
            "{text} after the upgrade"
        );
    }
    assert!(upgraded.verify_audit().await.unwrap().ok);
    upgraded.close().await;
}

fn sample(account: &str, at: i64, disk: i64, bw: i64) -> UsageSample {
    UsageSample {
        account: account.into(),
        at,
        disk_bytes: disk,
        disk_files: disk / 100,
        bandwidth_bytes: bw,
        mail_sent: 1,
        db_bytes: None,
        addon_domains: 0,
        measured_at: at + 60_000,
    }
}

#[tokio::test]
async fn usage_series_roll_up_and_cursors() {
    each(async |t: &TestStore| {
        let s = &t.store;
        let now = now_ms();
        let hour = now - now.rem_euclid(HOUR_MS);
        // 40 days of hourly samples of alice: disk grows by 1000 an hour, 10 bytes served.
        let hours = 40 * 24;
        let samples: Vec<UsageSample> = (0..hours)
            .map(|i| {
                sample(
                    "alice",
                    hour - (hours - 1 - i) * HOUR_MS,
                    1000 * (i + 1),
                    10,
                )
            })
            .collect();
        s.record_usage(&samples).await.unwrap();
        s.record_usage(&[sample("bob", hour, 5, 7)]).await.unwrap();
        // Writing an hour again replaces it.
        s.record_usage(&[sample("bob", hour + 5, 6, 8)])
            .await
            .unwrap();
        let done = s.usage_measured_at(hour + 1234).await.unwrap();
        assert_eq!(done.len(), 2, "{done:?}");

        // As of `now`, not the clock: a month may turn while the test runs.
        let now_u = s.usage_at(None, now).await.unwrap();
        assert_eq!(now_u["alice"].disk_bytes, 1000 * hours);
        assert_eq!(now_u["bob"].disk_bytes, 6);
        assert_eq!(now_u["bob"].bandwidth_month_bytes, 8);
        let month_hours = (hour - month_start_ms(now)) / HOUR_MS + 1;
        assert_eq!(now_u["alice"].bandwidth_month_bytes, 10 * month_hours);
        let only = s.usage_now(Some(&["bob".to_string()])).await.unwrap();
        assert_eq!(only.keys().collect::<Vec<_>>(), vec!["bob"]);
        assert!(s.usage_now(Some(&[])).await.unwrap().is_empty());

        // Hourly: the last 24 hours are 24 points; daily: sums and maxima per day.
        let day = s
            .usage_series("alice", hour - 23 * HOUR_MS, hour + HOUR_MS, HOUR_MS)
            .await
            .unwrap();
        assert_eq!(day.len(), 24);
        assert_eq!(day.last().unwrap().disk_bytes, 1000 * hours);
        let days = s
            .usage_series("alice", 0, hour + HOUR_MS, DAY_MS)
            .await
            .unwrap();
        let total: i64 = days.iter().map(|p| p.bandwidth_bytes).sum();
        assert_eq!(total, 10 * hours);
        assert!(days.len() >= 40 && days.len() <= 41, "{}", days.len());

        // Roll-up: days older than 30 days become one row each; the series reads the same.
        let (rolled, dropped) = s.roll_up_usage(now).await.unwrap();
        assert!(rolled >= 9 * 24, "{rolled}");
        assert_eq!(dropped, 0);
        let after = s
            .usage_series("alice", 0, hour + HOUR_MS, DAY_MS)
            .await
            .unwrap();
        assert_eq!(
            after, days,
            "the daily series is the same after the roll-up"
        );
        let (again, _) = s.roll_up_usage(now).await.unwrap();
        assert_eq!(again, 0, "nothing left to roll up");
        // Two years on, everything is gone.
        let (_, dropped) = s
            .roll_up_usage(now + USAGE_KEEP_MS + DAY_MS * 2)
            .await
            .unwrap();
        assert!(dropped > 0);
        assert!(s.usage_now(None).await.unwrap().is_empty());

        // Traffic counted from the logs waits for the account's next sample, which takes it
        // once; the logs' cursor moved with it.
        s.add_pending_usage(&[("carl".into(), 700, 3)], &[("access:p".into(), 9, 90)])
            .await
            .unwrap();
        let mut c = sample("carl", hour, 10, 0);
        c.mail_sent = 0;
        s.record_usage_taking_pending(&[c.clone()]).await.unwrap();
        s.record_usage_taking_pending(&[c]).await.unwrap();
        let carl = s.usage_at(Some(&["carl".to_string()]), now).await.unwrap();
        assert_eq!(
            (carl["carl"].bandwidth_month_bytes, carl["carl"].mail_month),
            (700, 3),
            "taken once"
        );
        assert_eq!(s.usage_cursor("access:p").await.unwrap(), Some((9, 90)));

        // Cursors.
        assert_eq!(s.usage_cursor("access:x").await.unwrap(), None);
        s.set_usage_cursors(&[("access:x".into(), 7, 100)])
            .await
            .unwrap();
        s.set_usage_cursors(&[("access:x".into(), 7, 250)])
            .await
            .unwrap();
        assert_eq!(s.usage_cursor("access:x").await.unwrap(), Some((7, 250)));
        s.set_usage_cursors(&[
            ("access:/l/a_b%/one".into(), 1, 10),
            ("access:/l/a_b%/two".into(), 2, 20),
            ("access:/l/aXbY/three".into(), 3, 30),
        ])
        .await
        .unwrap();
        let under = s.usage_cursors_under("access:/l/a_b%/").await.unwrap();
        assert_eq!(under.len(), 2, "{under:?}");
        assert_eq!(under["access:/l/a_b%/two"], (2, 20));
    })
    .await;
}
