//! `npanel config check` and `npanel config diff` on real files, as an operator runs them
//! before a restart: a good file passes and its differences from the defaults are listed (the
//! secret hidden); a mistyped key or a bad value is refused with the reason, exit 1.

mod common;

use common::BIN;
use std::process::{Command, Output};

fn npanel(config: &std::path::Path, args: &[&str]) -> Output {
    let mut c = Command::new(BIN);
    c.arg("--config").arg(config).args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("NPANEL_") || k == "REDIS_URL" || k == "DATABASE_URL" || k == "RUST_LOG" {
            c.env_remove(k);
        }
    }
    c.output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn config_check_and_diff() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        "listen = \"127.0.0.1:9999\"\n[queue]\nmax_pending = 200\n[api]\njwt_secret = \"0123456789abcdefXYZ\"\n",
    )
    .unwrap();
    let o = npanel(&good, &["config", "check"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("configuration OK"), "{}", text(&o));

    let o = npanel(&good, &["config", "diff"]);
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "only what differs: {out}");
    assert!(
        out.contains("listen = \"127.0.0.1:9999\"    # default: \"127.0.0.1:8080\""),
        "{out}"
    );
    assert!(
        out.contains("queue.max_pending = 200    # default: 100"),
        "{out}"
    );
    assert!(out.contains("api.jwt_secret = \"**REDACTED**\""), "{out}");
    assert!(
        !out.contains("0123456789abcdef"),
        "the secret never shows: {out}"
    );

    // A mistyped key, a bad value: refused with the reason.
    let typo = dir.path().join("typo.toml");
    std::fs::write(&typo, "[queue]\nmax_pendin = 3\n").unwrap();
    let o = npanel(&typo, &["config", "check"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("max_pendin"), "{}", text(&o));
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "listen = \"nope\"\n").unwrap();
    let o = npanel(&bad, &["config", "check"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("listen \"nope\" is not an address"),
        "{}",
        text(&o)
    );
    // Nothing set: nothing differs.
    let empty = dir.path().join("empty.toml");
    std::fs::write(&empty, "").unwrap();
    let o = npanel(&empty, &["config", "diff"]);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("every setting is at its built-in default"),
        "{}",
        text(&o)
    );
}
