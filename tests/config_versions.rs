//! Configuration versions through the CLI, as an operator uses them (issue 10): `serve` records
//! the file it starts and reloads with; `npanel config rollback` writes the previous one back
//! (current file kept as a backup, secrets restored from it — they are never stored) and sends
//! SIGHUP, after which the service runs the old values again; `config diff` warns about
//! defaults that changed since the binary that wrote the newest version.

mod reload_support;

use nix::sys::signal::Signal;
use reload_support::*;
use std::time::{Duration, Instant};

const LONG: Duration = Duration::from_secs(60);
const SECRET: &str = "s3cret-0123456789-abcdef";

fn wait_for_version(d: &Dirs, n: usize) -> String {
    let t = Instant::now();
    loop {
        let o = run(&d.config, &["config", "versions"]);
        let out = text(&o);
        if o.status.success() && out.lines().count() > n {
            return out;
        }
        assert!(t.elapsed() < LONG, "version {n} never recorded: {out}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn versions_diff_and_rollback_round_trip() {
    let d = Dirs::new();
    let q = queue::testing::config("cfgver");
    let v1 = config_text(
        &d.data,
        &q,
        "# version one\nlog = \"info\"",
        &format!("max_pending = 50\n\n[api]\njwt_secret = \"{SECRET}\"\n"),
    );
    std::fs::write(&d.config, &v1).unwrap();
    let mut s = Serve::start(&d.config, None);
    let out = wait_for_version(&d, 1);
    assert!(out.contains("start"), "{out}");

    // Version 2: a reload with another max_pending.
    let v2 = v1.replace("max_pending = 50", "max_pending = 70");
    std::fs::write(&d.config, &v2).unwrap();
    let from = s.lines();
    s.signal(Signal::SIGHUP);
    s.wait_line(from, "Configuration recorded as version 2", LONG);
    let out = wait_for_version(&d, 2);
    assert!(out.contains("reload"), "{out}");

    let o = run(&d.config, &["config", "diff"]);
    let diff = text(&o);
    assert!(o.status.success(), "{diff}");
    assert!(
        diff.contains("queue.max_pending = 70    # default: 100"),
        "{diff}"
    );
    assert!(!diff.contains(SECRET), "the secret is hidden: {diff}");
    assert!(
        !diff.contains("WARNING"),
        "same binary, same defaults: {diff}"
    );

    // Roll back to the previous version (1).
    let o = run(&d.config, &["config", "rollback"]);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(out.contains("Wrote configuration version 1"), "{out}");
    assert!(out.contains("Sent SIGHUP"), "{out}");
    let now = std::fs::read_to_string(&d.config).unwrap();
    assert!(now.contains("max_pending = 50"), "{now}");
    assert!(
        now.contains(SECRET),
        "the secret is back in the file: {now}"
    );
    let backups: Vec<_> = std::fs::read_dir(d.tmp.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains("npanel.toml.bak-"))
        .collect();
    assert_eq!(backups.len(), 1, "{backups:?}");
    assert_eq!(std::fs::read_to_string(&backups[0]).unwrap(), v2);
    // The service reloaded it: a third version, whose text is the first one's.
    s.wait_line(from, "Configuration recorded as version 3", LONG);
    let o = run(&d.config, &["config", "diff"]);
    assert!(text(&o).contains("queue.max_pending = 50"), "{}", text(&o));

    // No version holds the secret in clear; the file text is stored (redacted).
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let url = format!("sqlite://{}", d.data.join("npanel.db").display());
        let st = store::Store::connect(&url).await.unwrap();
        let all = st.config_versions(10).await.unwrap();
        assert_eq!(all.len(), 3);
        for v in &all {
            let text = v.file_text.clone().unwrap();
            assert!(!text.contains(SECRET) && !v.effective.contains(SECRET));
            assert!(text.contains("**REDACTED**"), "{text}");
        }
        assert_eq!(all[0].digest, all[2].digest, "version 3 is version 1 again");

        // An older binary wrote a version with other defaults: diff says what changed since.
        let mut old = all[0].clone();
        old.defaults.insert("ws.buffer".into(), "512".into());
        old.defaults.insert("queue.max_pending".into(), "80".into());
        let n = st
            .record_config_version(&store::NewConfigVersion {
                binary_version: "0.0.9".into(),
                actor: "test".into(),
                reason: "start".into(),
                file_path: old.file_path.clone(),
                file_text: old.file_text.clone(),
                effective: format!("{}\n# older", old.effective),
                defaults: old.defaults.clone(),
            })
            .await
            .unwrap();
        assert_eq!(n, Some(4));
    });
    let o = run(&d.config, &["config", "diff"]);
    let diff = text(&o);
    assert!(
        diff.contains("WARNING: the default of ws.buffer changed from 512 to 1024 since npanel 0.0.9 wrote configuration version 4 (left at its default: it is now 1024)"),
        "{diff}"
    );
    assert!(
        diff.contains("the default of queue.max_pending changed from 80 to 100")
            && diff.contains("(set explicitly here: no effect)"),
        "{diff}"
    );

    // Rolling back to a version that does not exist, or checking a broken file, fails clearly.
    let o = run(
        &d.config,
        &["config", "rollback", "--to", "99", "--no-signal"],
    );
    assert!(!o.status.success());
    assert!(
        text(&o).contains("no configuration version 99"),
        "{}",
        text(&o)
    );
    let bad = d.tmp.path().join("bad.toml");
    std::fs::write(&bad, "[queue]\nmax_pendin = 5\n").unwrap();
    let o = run(&bad, &["config", "check"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("max_pendin"), "{}", text(&o));
}

#[test]
fn config_env_sits_between_the_file_and_the_environment() {
    let d = Dirs::new();
    let q = queue::testing::config("cfgenv");
    std::fs::write(
        &d.config,
        config_text(&d.data, &q, "", "max_pending = 50\nlease_ms = 5000\n"),
    )
    .unwrap();
    std::fs::write(
        d.tmp.path().join("config.env"),
        "# secrets and overrides\nexport NPANEL_QUEUE__MAX_PENDING=60\nNPANEL_WORKERS__CONCURRENCY='12'\nNPANEL_API__JWT_SECRET=\"from-config-env-0123456789\"\n",
    )
    .unwrap();
    let o = npanel()
        .arg("--config")
        .arg(&d.config)
        .args(["config"])
        .env("NPANEL_WORKERS__CONCURRENCY", "14")
        .output()
        .unwrap();
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(out.contains("max_pending = 60"), "config.env > file: {out}");
    assert!(out.contains("lease_ms = 5000"), "file > default: {out}");
    assert!(
        out.contains("concurrency = 14"),
        "environment > config.env: {out}"
    );
    assert!(!out.contains("from-config-env"), "secret hidden: {out}");
    let o = run(&d.config, &["config", "check"]);
    assert!(text(&o).contains("config.env"), "{}", text(&o));

    std::fs::write(d.tmp.path().join("config.env"), "PATH=/tmp\n").unwrap();
    let o = run(&d.config, &["config", "check"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o).contains("config.env:1: PATH is not an nPanel setting"),
        "{}",
        text(&o)
    );
}
