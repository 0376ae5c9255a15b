//! `workers.kinds`: a worker process claims only the kinds it is given (on several hosts, the
//! kinds that work on accounts stay on the host that holds them), and a kind it cannot run is
//! refused at start with a sentence that says why.

use queue::testing::wait_for_status;
use queue::{testing, Diagnostic, JobKind, JobStatus, NewJob, Queue, QueueConfig};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

struct Worker(Child);

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `npanel worker` on `cfg`'s queue, sharing the SQLite store `db` (so it has the handlers that
/// need a store), with `kinds` as `NPANEL_WORKERS__KINDS` when given.
fn worker(cfg: &QueueConfig, data: &Path, db: &Path, kinds: Option<&str>) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_npanel"));
    c.arg("worker")
        .arg("--data-dir")
        .arg(data)
        .env("REDIS_URL", &cfg.redis_url)
        .env("NPANEL_QUEUE__NAME", &cfg.name)
        .env(
            "DATABASE_URL",
            format!("sqlite://{}?mode=rwc", db.display()),
        )
        .env("NPANEL_HOST__CGROUPS", "false")
        .env("NPANEL_LOG", "warn")
        .stdout(Stdio::null());
    if let Some(k) = kinds {
        c.env("NPANEL_WORKERS__KINDS", k);
    }
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_claims_only_its_kinds() {
    let cfg = testing::config("kinds");
    let q = Queue::new(cfg.clone()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("store.db");
    // First in line: a retention job, which a worker with a store can run.
    let retention = q
        .enqueue(NewJob::new(JobKind::Retention, serde_json::json!({})))
        .await
        .unwrap()
        .id;
    let diag = q
        .enqueue(NewJob::typed(&Diagnostic {
            duration_ms: 10,
            steps: 1,
            ..Default::default()
        }))
        .await
        .unwrap()
        .id;
    let _only_diag = Worker(
        worker(&cfg, &dir.path().join("a"), &db, Some(r#"["diagnostic"]"#))
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for_status(&q, &diag, JobStatus::Succeeded, Duration::from_secs(30)).await;
    // It took the diagnostic job behind the retention job, and left that one alone.
    assert_eq!(q.get(&retention).await.unwrap().status, JobStatus::Queued);
    // A worker for every kind takes it.
    let _all = Worker(
        worker(&cfg, &dir.path().join("b"), &db, None)
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for_status(
        &q,
        &retention,
        JobStatus::Succeeded,
        Duration::from_secs(30),
    )
    .await;
}

#[test]
fn a_kind_the_worker_cannot_run_is_refused_at_start() {
    let cfg = testing::config("kinds-bad");
    let dir = tempfile::tempdir().unwrap();
    let mut c = worker(
        &cfg,
        &dir.path().join("a"),
        &dir.path().join("store.db"),
        Some(r#"["diagnostic", "provision"]"#),
    );
    // Without a store, `provision` has no handler in a worker.
    c.env_remove("DATABASE_URL");
    let out = c.output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("workers.kinds names provision") && err.contains("DATABASE_URL"),
        "{err}"
    );
    // An unknown kind is a configuration error, named.
    let out = worker(
        &cfg,
        &dir.path().join("a"),
        &dir.path().join("store.db"),
        Some(r#"["teleport"]"#),
    )
    .output()
    .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("teleport"), "{err}");
}
