//! A restart through a socket that outlives the process (issue 10), without systemd: the test
//! binds the listener and starts `npanel serve` on it as systemd does (fd 3, `LISTEN_FDS=1`,
//! `LISTEN_PID`), while HTTP clients loop requests and a WebSocket watcher follows a job's live
//! stream. The first server gets SIGTERM and a second one starts on the same socket at once.
//! No request may fail, and the watcher — reconnecting with `?since=` when the first server
//! closes its socket — must see exactly the job's events as the Redis event stream holds them.

mod reload_support;

use futures::StreamExt;
use nix::sys::signal::Signal;
use reload_support::*;
use serde_json::Value;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use ws::client::tungstenite::Message;

const LONG: Duration = Duration::from_secs(90);

/// Connections waiting in the accept queue of the listening socket on `addr`: the `rx_queue`
/// of its LISTEN row in /proc/net/tcp.
fn backlog(addr: SocketAddr) -> usize {
    let port = format!(":{:04X}", addr.port());
    std::fs::read_to_string("/proc/net/tcp")
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|f| f.len() > 4 && f[1].ends_with(&port) && f[3] == "0A")
        .filter_map(|f| usize::from_str_radix(f[4].split(':').nth(1)?, 16).ok())
        .sum()
}

#[derive(Default)]
struct Load {
    ok: AtomicUsize,
    failed: AtomicUsize,
    errors: Mutex<Vec<String>>,
    stop: AtomicBool,
}

fn http_loop(addr: SocketAddr, token: String, job: String, load: Arc<Load>) {
    let mut i = 0u64;
    while !load.stop.load(Ordering::Acquire) {
        i += 1;
        let r = if i.is_multiple_of(2) {
            http(addr, "GET", "/healthz", None, None)
        } else {
            http(addr, "GET", &format!("/api/jobs/{job}"), Some(&token), None)
        };
        match r {
            Ok((200, _)) => {
                load.ok.fetch_add(1, Ordering::AcqRel);
            }
            Ok((st, body)) => {
                load.failed.fetch_add(1, Ordering::AcqRel);
                load.errors.lock().unwrap().push(format!("{st}: {body}"));
            }
            Err(e) => {
                load.failed.fetch_add(1, Ordering::AcqRel);
                load.errors.lock().unwrap().push(e.to_string());
            }
        }
    }
}

/// Follow `/api/jobs/{id}/live` until `complete`, reconnecting with `?since=` (as `npanel
/// watch` does). Returns the (seq, type) of every message but snapshots, the first snapshot's
/// seq, and how many times it reconnected.
async fn watch(
    addr: SocketAddr,
    token: String,
    id: String,
    seen: Arc<AtomicUsize>,
) -> (Vec<(String, String)>, String, usize) {
    let api = ws::client::HttpClient::new(&format!("http://{addr}"), Some(token)).unwrap();
    let mut since: Option<String> = None;
    let mut first_snapshot = None;
    let mut events = Vec::new();
    let mut reconnects = 0;
    let t = Instant::now();
    loop {
        assert!(t.elapsed() < LONG, "watcher gave up; got {events:?}");
        let mut ws = match api
            .connect_ws(&format!("/api/jobs/{id}/live"), since.as_deref())
            .await
        {
            Ok(ws) => ws,
            Err(e) => panic!("WebSocket connect failed (it must wait in the backlog): {e}"),
        };
        while let Some(m) = ws.next().await {
            let Ok(Message::Text(t)) = m else {
                break;
            };
            let v: Value = serde_json::from_str(&t).unwrap();
            let seq = v["seq"].as_str().unwrap_or_default().to_string();
            let kind = v["type"].as_str().unwrap_or_default().to_string();
            if kind == "snapshot" {
                first_snapshot.get_or_insert(seq.clone());
            } else {
                events.push((seq.clone(), kind.clone()));
                seen.fetch_add(1, Ordering::AcqRel);
            }
            since = Some(seq);
            if kind == "complete" {
                return (events, first_snapshot.unwrap_or_default(), reconnects);
            }
        }
        reconnects += 1;
    }
}

#[test]
fn restart_through_the_inherited_socket_drops_nothing() {
    let d = Dirs::new();
    let q = queue::testing::config("socket");
    std::fs::write(&d.config, config_text(&d.data, &q, "", "")).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let mut a = Serve::start(&d.config, Some(&listener));
    assert_eq!(a.addr, addr, "serve uses the socket it was given");
    assert!(a.logged_since(0, "Using the listening socket passed by systemd"));
    let token = admin_token(&d.config);

    let (st, body) = http(
        addr,
        "POST",
        "/api/jobs",
        Some(&token),
        Some(r#"{"kind":"diagnostic","payload":{"duration_ms":8000,"steps":16}}"#),
    )
    .unwrap();
    assert_eq!(st, 202, "{body}");
    let id = serde_json::from_str::<Value>(&body).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();

    let load = Arc::new(Load::default());
    let clients: Vec<_> = (0..2)
        .map(|_| {
            let (l, t, j) = (load.clone(), token.clone(), id.clone());
            std::thread::spawn(move || http_loop(addr, t, j, l))
        })
        .collect();
    let seen = Arc::new(AtomicUsize::new(0));
    let watcher = {
        let (t, j, s) = (token.clone(), id.clone(), seen.clone());
        std::thread::spawn(move || {
            tokio::runtime::Runtime::new()
                .unwrap()
                .block_on(watch(addr, t, j, s))
        })
    };

    // Restart once the job is under way and the clients are busy.
    let t = Instant::now();
    while seen.load(Ordering::Acquire) < 3 || load.ok.load(Ordering::Acquire) < 20 {
        assert!(t.elapsed() < LONG, "no progress before the restart");
        std::thread::sleep(Duration::from_millis(20));
    }
    let before = load.ok.load(Ordering::Acquire);
    a.signal(Signal::SIGTERM);
    let mut b = Serve::start(&d.config, Some(&listener));
    assert_eq!(b.addr, addr);
    let t = Instant::now();
    while a.child.try_wait().unwrap().is_none() {
        assert!(t.elapsed() < LONG, "the first server did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
    let (events, first_seq, reconnects) = watcher.join().unwrap();
    // Some requests served by the second process only.
    let after_a = load.ok.load(Ordering::Acquire);
    while load.ok.load(Ordering::Acquire) < after_a + 50 {
        assert!(t.elapsed() < LONG, "the second server does not answer");
        std::thread::sleep(Duration::from_millis(20));
    }
    load.stop.store(true, Ordering::Release);
    for c in clients {
        c.join().unwrap();
    }
    let (ok, failed) = (
        load.ok.load(Ordering::Acquire),
        load.failed.load(Ordering::Acquire),
    );
    eprintln!(
        "requests: {ok} ok ({before} before the restart), {failed} failed; watcher: {} events, {reconnects} reconnects",
        events.len()
    );
    assert_eq!(failed, 0, "{:?}", load.errors.lock().unwrap());
    assert!(a.child.wait().unwrap().success(), "a clean exit on SIGTERM");
    assert!(
        reconnects >= 1,
        "the first server closed the watcher's socket"
    );

    // Exactly the job's events after the first snapshot, as Redis holds them, once each.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let want: Vec<(String, String)> = rt.block_on(async {
        let q = queue::Queue::new(q.clone()).unwrap();
        let all = q.events_since("0", 100_000).await.unwrap();
        all.into_iter()
            .filter(|e| e.job_id == id)
            .filter(|e| {
                let p = |s: &str| {
                    let (x, y) = s.split_once('-').unwrap_or((s, "0"));
                    (x.parse::<u64>().unwrap(), y.parse::<u64>().unwrap())
                };
                p(&e.seq) > p(&first_seq)
            })
            .map(|e| (e.seq, e.kind))
            .collect()
    });
    assert_eq!(events, want, "the watcher saw every event exactly once");
    // Progress is sent at most once a second: an 8 s job gives several, on both sides of the
    // restart (3 seen before it; its `complete` came after).
    assert!(
        events.iter().filter(|e| e.1 == "progress").count() >= 5,
        "{events:?}"
    );
    assert_eq!(events.last().map(|e| e.1.as_str()), Some("complete"));
    b.signal(Signal::SIGTERM);
    assert!(b.child.wait().unwrap().success());
}

/// A start during an upgrade's deploy window (socket activation starts one on any connection):
/// `serve` waits while the apply process holds `upgrade.hold`, answers nothing meanwhile (the
/// connection waits in the socket's backlog), then starts over from the installed binary on the
/// same socket and answers the request that waited.
#[test]
fn a_start_during_the_deploy_window_waits_for_the_hold_then_starts_over() {
    let d = Dirs::new();
    std::fs::create_dir_all(&d.data).unwrap();
    let q = queue::testing::config("hold");
    std::fs::write(&d.config, config_text(&d.data, &q, "", "")).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    // The apply process: a live process whose arguments name `upgrade-apply` (a hold whose pid
    // runs anything else is stale).
    let mut apply = std::process::Command::new("sh")
        .args(["-c", "sleep 120; :", "upgrade-apply"])
        .spawn()
        .unwrap();
    let hold = d.data.join("upgrade.hold");
    std::fs::write(&hold, apply.id().to_string()).unwrap();
    // A holder once it has exec'd (until then its arguments are this test binary's).
    while workers::upgrade::holder(&d.data).is_none() {
        std::thread::sleep(Duration::from_millis(10));
    }

    let mut s = Serve::spawn(&d.config, Some(&listener));
    let pid = s.child.id();
    s.wait_line(0, "waiting for it before starting", LONG);
    assert!(!s.logged_since(0, "API listening on"));
    let waiting = Arc::new(AtomicBool::new(true));
    let client = {
        let w = waiting.clone();
        std::thread::spawn(move || {
            let r = http(addr, "GET", "/healthz", None, None);
            w.store(false, Ordering::Release);
            r
        })
    };
    // Nothing may answer while the hold is there. The request is known to wait once the
    // kernel holds its connection in the socket's backlog; that nothing would answer it leaves
    // no trace to wait on, so from then on it is given 1 s to be answered before the check.
    let t = Instant::now();
    while backlog(addr) == 0 && waiting.load(Ordering::Acquire) {
        assert!(t.elapsed() < LONG, "the client never connected");
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_secs(1));
    let i = s.lines();
    assert!(!s.logged_since(0, "API listening on"));
    assert!(
        waiting.load(Ordering::Acquire),
        "answered during the deploy window"
    );
    std::fs::remove_file(&hold).unwrap();
    s.wait_line(i, "deploy window ended; starting over", LONG);
    s.wait_listening();
    assert_eq!(
        s.addr, addr,
        "the new image accepts on the socket it was given"
    );
    assert_eq!(s.child.id(), pid, "started over in the same process (exec)");
    let (st, body) = client.join().unwrap().unwrap();
    assert_eq!(st, 200, "{body}");
    let _ = apply.kill();
    let _ = apply.wait();
}
