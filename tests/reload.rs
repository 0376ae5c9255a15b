//! SIGHUP on a real `npanel serve` (issue 10): a good file is applied live where it can be —
//! per-kind queue limits (in Redis, as every worker reads them), API rate limits, WebSocket caps,
//! the log level — and the rest is reported as needing a restart; a bad file is refused, the
//! running configuration kept, the reason logged and audited.

mod reload_support;

use nix::sys::signal::Signal;
use reload_support::*;
use serde_json::Value;
use std::time::{Duration, Instant};

const LONG: Duration = Duration::from_secs(60);

fn queue_limit(s: &Serve, token: &str, kind: &str) -> u64 {
    let (st, body) = http(s.addr, "GET", "/api/admin/queue", Some(token), None).unwrap();
    assert_eq!(st, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    v["kinds"][kind]["limit"]
        .as_u64()
        .unwrap_or_else(|| panic!("no limit for {kind}: {v}"))
}

/// Statuses of `n` requests without a token (limited per client IP).
fn anonymous(s: &Serve, n: usize) -> Vec<u16> {
    (0..n)
        .map(|_| http(s.addr, "GET", "/api/jobs", None, None).unwrap().0)
        .collect()
}

#[test]
fn sighup_applies_a_good_file_and_refuses_a_bad_one() {
    let d = Dirs::new();
    let q = queue::testing::config("reload");
    let write = |top: &str, extra: &str| {
        std::fs::write(&d.config, config_text(&d.data, &q, top, extra)).unwrap();
    };
    write(
        "log = \"info\"",
        "[queue.limits]\ndiagnostic = 2\n\n[api.rate_limit]\nper_ip_per_minute = 1000\n",
    );
    let mut s = Serve::start(&d.config, None);
    let token = admin_token(&d.config);
    assert_eq!(queue_limit(&s, &token, "diagnostic"), 2);
    assert!(!anonymous(&s, 8).contains(&429));
    let (st, _ws1) = ws_upgrade(s.addr, "/api/events/live", &token);
    assert_eq!(st, 101);
    let (st, _ws2) = ws_upgrade(s.addr, "/api/events/live", &token);
    assert_eq!(st, 101, "two sockets under the default cap");

    // A good file: three live changes and one that needs a restart.
    write(
        "log = \"info\"",
        "[queue.limits]\ndiagnostic = 7\n\n[api.rate_limit]\nper_ip_per_minute = 3\n\n[ws]\nmax_connections = 2\n\n[workers]\nconcurrency = 8\n",
    );
    let from = s.lines();
    s.signal(Signal::SIGHUP);
    let i = s.wait_line(from, "Configuration reloaded.", LONG);
    let line = s.log.lock().unwrap()[i].clone();
    for k in [
        "queue.limits.diagnostic",
        "api.rate_limit.per_ip_per_minute",
        "ws.max_connections",
    ] {
        assert!(line.contains(k), "{k} not applied live: {line}");
    }
    assert!(
        s.logged_since(from, "needs a restart") && s.logged_since(from, "workers.concurrency"),
        "the restart-only change is reported"
    );
    assert_eq!(queue_limit(&s, &token, "diagnostic"), 7);
    let statuses = anonymous(&s, 6);
    assert!(
        statuses.contains(&429),
        "3 a minute per IP now: {statuses:?}"
    );
    let (st, _) = ws_upgrade(s.addr, "/api/events/live", &token);
    assert_eq!(st, 503, "the third socket is over the new cap of 2");

    // A bad file: refused, everything above still in force.
    // (`extra` lands in the file's [queue] table.)
    const WHY: &str = "queue.max_pending must be at least 1.";
    write("log = \"info\"", "max_pending = 0\n");
    let from = s.lines();
    s.signal(Signal::SIGHUP);
    let i = s.wait_line(from, "Configuration reload refused", LONG);
    let line = s.log.lock().unwrap()[i].clone();
    assert!(line.contains(WHY), "the reason is logged: {line}");
    assert_eq!(queue_limit(&s, &token, "diagnostic"), 7);
    assert!(anonymous(&s, 2).contains(&429));
    // ... and audited.
    let t = Instant::now();
    let rec = loop {
        let (st, body) = http(
            s.addr,
            "GET",
            "/api/audit?action=config_reload&limit=10",
            Some(&token),
            None,
        )
        .unwrap();
        assert_eq!(st, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        let recs = v["records"].as_array().cloned().unwrap_or_default();
        if let Some(r) = recs.iter().find(|r| r["action"] == "config_reload_refused") {
            assert!(
                recs.iter().any(|r| r["action"] == "config_reloaded"),
                "the applied reload is audited too: {v}"
            );
            break r.clone();
        }
        assert!(t.elapsed() < LONG, "no audit record: {v}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(rec["result"], "failure", "{rec}");
    assert!(rec.to_string().contains(WHY), "{rec}");

    // A good file again, at log level warn: applied (the limit moves), and the "reloaded"
    // line, at info, is no longer written while the restart warning still is.
    write(
        "log = \"warn\"",
        "[queue.limits]\ndiagnostic = 5\n\n[workers]\nconcurrency = 8\n",
    );
    let from = s.lines();
    s.signal(Signal::SIGHUP);
    let t = Instant::now();
    while queue_limit(&s, &token, "diagnostic") != 5 {
        assert!(t.elapsed() < LONG, "the third reload was not applied");
        std::thread::sleep(Duration::from_millis(50));
    }
    s.wait_line(from, "needs a restart", LONG);
    assert!(
        !s.logged_since(from, "Configuration reloaded."),
        "info lines are filtered out at log = warn"
    );
    // The rate limit went back to its default (100 a minute): the limiter starts afresh.
    assert!(!anonymous(&s, 5).contains(&429));
}
