//! Applied configuration versions (schema 14) on SQLite, and on PostgreSQL when
//! `NPANEL_TEST_POSTGRES_URL` is set: numbered from 1, an unchanged configuration adds nothing,
//! who/why/defaults come back as written, newest first.

use store::{testing, NewConfigVersion};

fn version(text: &str, reason: &str) -> NewConfigVersion {
    NewConfigVersion {
        binary_version: "0.1.0".into(),
        actor: "serve pid 1 (user test)".into(),
        reason: reason.into(),
        file_path: Some("/etc/npanel/npanel.toml".into()),
        file_text: Some(text.into()),
        effective: format!("# effective\n{text}"),
        defaults: [("queue.max_pending".to_string(), "100".to_string())]
            .into_iter()
            .collect(),
    }
}

#[tokio::test]
async fn versions_are_numbered_deduplicated_and_listed() {
    for ts in testing::all().await {
        let s = &ts.store;
        eprintln!("backend {:?}", s.backend());
        assert!(s.latest_config_version().await.unwrap().is_none());
        let a = version("[queue]\nmax_pending = 50\n", "start");
        assert_eq!(s.record_config_version(&a).await.unwrap(), Some(1));
        // The same configuration again (another start, another actor): nothing new.
        let mut again = a.clone();
        again.reason = "reload".into();
        again.actor = "someone else".into();
        assert_eq!(s.record_config_version(&again).await.unwrap(), None);
        let b = version("[queue]\nmax_pending = 70\n", "reload");
        assert_eq!(s.record_config_version(&b).await.unwrap(), Some(2));
        // Back to the first text: a new version (3), not a no-op, since the newest is 2.
        assert_eq!(s.record_config_version(&a).await.unwrap(), Some(3));

        let all = s.config_versions(10).await.unwrap();
        assert_eq!(
            all.iter().map(|v| v.version).collect::<Vec<_>>(),
            vec![3, 2, 1]
        );
        let two = s.config_version(2).await.unwrap().unwrap();
        assert_eq!(two.reason, "reload");
        assert_eq!(
            two.file_text.as_deref(),
            Some("[queue]\nmax_pending = 70\n")
        );
        assert_eq!(two.defaults["queue.max_pending"], "100");
        assert_eq!(two.digest, b.digest());
        assert_ne!(two.digest, a.digest());
        assert_eq!(s.latest_config_version().await.unwrap().unwrap().version, 3);
        assert!(s.config_version(9).await.unwrap().is_none());
        assert_eq!(s.config_versions(1).await.unwrap().len(), 1);
    }
}
