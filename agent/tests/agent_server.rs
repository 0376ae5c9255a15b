//! The `npanel-agent` binary over its real Unix socket, on a temp-dir cgroup
//! tree: protocol errors, peer credentials, limits, home, reload, shutdown,
//! systemd notification.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::Signal;

#[test]
fn ping_reports_capabilities_of_the_tree() {
    let sb = Sandbox::new();
    sb.write_config("");
    let agent = AgentProc::start(&sb);
    let v = request(&agent.socket, r#"{"v":1,"id":42,"op":"ping"}"#);
    assert_eq!(v["v"], 1);
    assert_eq!(v["id"], 42);
    let pong = ok(&v);
    assert_eq!(pong["type"], "pong");
    assert_eq!(pong["pid"], agent.pid());
    let caps = &pong["capabilities"];
    assert_eq!(caps["cgroup_usable"], true);
    assert_eq!(caps["cgroup2_mount"], serde_json::Value::Null);
    assert_eq!(
        caps["controllers"],
        serde_json::json!(["cpu", "memory", "io", "pids"])
    );
    for l in caps["limits"].as_array().unwrap() {
        assert_eq!(l["enforcement"], "cgroup", "{l}");
    }
    assert!(caps["notes"][0]
        .as_str()
        .unwrap()
        .contains("plain directory tree"));
}

#[test]
fn bad_lines_get_typed_errors_and_the_connection_keeps_working() {
    let sb = Sandbox::new();
    sb.write_config("");
    let agent = AgentProc::start(&sb);
    let mut c = Conn::open(&agent.socket);
    let cases = [
        ("this is not json", "malformed"),
        ("[1,2,3]", "malformed"),
        (r#"{"v":1,"id":"x","op":"ping"}"#, "malformed"),
        (r#"{"op":"ping"}"#, "unsupported_version"),
        (r#"{"v":99,"op":"ping"}"#, "unsupported_version"),
        (
            r#"{"v":1,"id":5,"op":"shell","cmd":"rm -rf /"}"#,
            "unknown_request",
        ),
        (
            r#"{"v":1,"op":"freeze","account":"../../etc"}"#,
            "invalid_account",
        ),
        (
            r#"{"v":1,"op":"freeze","account":"Root"}"#,
            "invalid_account",
        ),
        (r#"{"v":1,"op":"freeze","account":""}"#, "invalid_account"),
        (r#"{"v":1,"op":"freeze"}"#, "invalid_request"),
        (
            r#"{"v":1,"op":"prepare_home","account":"a","uid":"x","gid":1}"#,
            "invalid_request",
        ),
        (
            r#"{"v":1,"op":"apply_limits","account":"a","limits":{"pids_max":0}}"#,
            "invalid_request",
        ),
        (
            r#"{"v":1,"op":"freeze","account":"nobody-here"}"#,
            "not_found",
        ),
    ];
    for (line, code) in cases {
        let v = c.send(line).unwrap();
        assert_eq!(error_code(&v), code, "line {line} -> {v}");
        assert!(!v["error"]["message"].as_str().unwrap().is_empty());
        // the same connection still serves a valid request
        let p = c.send(r#"{"v":1,"op":"ping"}"#).unwrap();
        assert_eq!(ok(&p)["type"], "pong");
    }
    // the id survives into an error answer when it could be read
    let v = c.send(r#"{"v":1,"id":5,"op":"shell"}"#).unwrap();
    assert_eq!(v["id"], 5);
    // nothing was created for the bad names
    assert!(!sb.path().join("etc").exists());
    assert_eq!(
        std::fs::read_dir(sb.cgroot())
            .unwrap()
            .filter(|e| e.as_ref().unwrap().path().is_dir())
            .count(),
        0
    );
    // an over-long line is refused and the connection closed
    let long = format!(r#"{{"v":1,"op":"ping","pad":"{}"}}"#, "x".repeat(70_000));
    // The agent answers after 64 KiB and closes, possibly while we are still writing the rest
    // (EPIPE): the answer is in our receive buffer either way.
    let _ = c.send_only(&long);
    let v = c.read().unwrap();
    assert_eq!(error_code(&v), "malformed");
    assert!(
        c.read().is_err(),
        "connection should be closed after an over-long line"
    );
}

#[test]
fn apply_limits_writes_and_reads_back_the_cgroup_files() {
    let sb = Sandbox::new();
    sb.write_config("");
    let agent = AgentProc::start(&sb);
    let v = request(
        &agent.socket,
        r#"{"v":1,"op":"apply_limits","account":"alice"}"#,
    );
    let r = ok(&v);
    assert_eq!(r["type"], "limits_applied");
    let dir = sb.cgroot().join("alice");
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
    assert_eq!(read("cpu.max"), "50000 100000");
    assert_eq!(read("memory.max"), "536870912");
    assert_eq!(read("io.max"), "8:0 rbps=52428800 wbps=52428800");
    assert_eq!(read("pids.max"), "256");
    for a in r["applied"].as_array().unwrap() {
        assert_eq!(a["read_back"], a["value"], "{a}");
    }
    // overrides, field by field
    let v = request(
        &agent.socket,
        r#"{"v":1,"op":"apply_limits","account":"alice","limits":{"pids_max":20,"cpu_max":"max 100000"}}"#,
    );
    ok(&v);
    assert_eq!(read("pids.max"), "20");
    assert_eq!(read("cpu.max"), "max 100000");
    assert_eq!(read("memory.max"), "536870912");

    // a "kernel" that does not keep the value is caught by the read-back
    std::fs::remove_file(dir.join("pids.max")).unwrap();
    std::os::unix::fs::symlink("/dev/null", dir.join("pids.max")).unwrap();
    let v = request(
        &agent.socket,
        r#"{"v":1,"op":"apply_limits","account":"alice"}"#,
    );
    assert_eq!(error_code(&v), "verify_mismatch", "{v}");
}

#[test]
fn usage_freeze_kill_remove_through_the_socket() {
    let sb = Sandbox::new();
    sb.write_config("freeze_timeout_ms = 300");
    let agent = AgentProc::start(&sb);
    let dir = sb.cgroot().join("bob");
    fake_account_cgroup(&dir, false, true);
    std::fs::write(dir.join("cpu.stat"), "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\nnr_periods 7\nnr_throttled 2\nthrottled_usec 99\n").unwrap();
    std::fs::write(dir.join("memory.current"), "4096\n").unwrap();
    std::fs::write(
        dir.join("memory.events"),
        "low 0\nhigh 0\nmax 3\noom 2\noom_kill 1\n",
    )
    .unwrap();
    std::fs::write(dir.join("pids.current"), "3\n").unwrap();
    std::fs::write(dir.join("pids.events"), "max 4\n").unwrap();
    std::fs::write(
        dir.join("io.stat"),
        "8:0 rbytes=100 wbytes=200 rios=1 wios=2 dbytes=0 dios=0\n",
    )
    .unwrap();
    let v = request(&agent.socket, r#"{"v":1,"op":"usage","account":"bob"}"#);
    let u = ok(&v);
    assert_eq!(u["type"], "usage");
    assert_eq!(u["cpu"]["usage_usec"], 1500);
    assert_eq!(u["cpu"]["nr_throttled"], 2);
    assert_eq!(u["memory_current"], 4096);
    assert_eq!(u["memory_oom_kill"], 1);
    assert_eq!(u["pids_current"], 3);
    assert_eq!(u["pids_max_events"], 4);
    assert_eq!(u["io"][0]["wbytes"], 200);
    assert_eq!(u["populated"], false);

    // freeze: nobody flips `frozen 1`, so it times out and thaws again
    let t0 = Instant::now();
    let v = request(&agent.socket, r#"{"v":1,"op":"freeze","account":"bob"}"#);
    assert_eq!(error_code(&v), "timeout", "{v}");
    assert!(t0.elapsed() >= Duration::from_millis(300));
    assert_eq!(
        std::fs::read_to_string(dir.join("cgroup.freeze")).unwrap(),
        "0"
    );

    let v = request(&agent.socket, r#"{"v":1,"op":"kill","account":"bob"}"#);
    let k = ok(&v);
    assert_eq!(k["method"], "cgroup_kill");
    assert_eq!(
        std::fs::read_to_string(dir.join("cgroup.kill")).unwrap(),
        "1"
    );

    let v = request(&agent.socket, r#"{"v":1,"op":"remove","account":"bob"}"#);
    assert_eq!(ok(&v)["existed"], true);
    assert!(!dir.exists());
    let v = request(&agent.socket, r#"{"v":1,"op":"remove","account":"bob"}"#);
    assert_eq!(ok(&v)["existed"], false);
}

#[test]
fn request_timeout_answers_timeout() {
    let sb = Sandbox::new();
    // freeze may wait 5 s, but no request may take more than 200 ms
    sb.write_config("request_timeout_ms = 200\nfreeze_timeout_ms = 5000");
    let agent = AgentProc::start(&sb);
    fake_account_cgroup(&sb.cgroot().join("slow"), true, true);
    let t0 = Instant::now();
    let v = request(
        &agent.socket,
        r#"{"v":1,"id":1,"op":"freeze","account":"slow"}"#,
    );
    let took = t0.elapsed();
    assert_eq!(error_code(&v), "timeout", "{v}");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("request timeout"));
    assert!(took < Duration::from_secs(2), "took {took:?}");
}

#[test]
fn concurrent_requests_are_served_in_parallel() {
    let sb = Sandbox::new();
    sb.write_config("freeze_timeout_ms = 8000");
    let agent = AgentProc::start(&sb);
    // a freeze that completes only once the quick requests below are answered (the test plays
    // the kernel): a server that served one request at a time could not answer them first
    let dir = sb.cgroot().join("carol");
    fake_account_cgroup(&dir, true, true);
    let socket = agent.socket.clone();
    let slow = std::thread::spawn(move || {
        let t0 = Instant::now();
        let v = request(&socket, r#"{"v":1,"op":"freeze","account":"carol"}"#);
        (v, t0.elapsed())
    });
    // the freeze is in flight once the agent has asked for it
    wait_freeze_asked(&dir);
    // meanwhile 16 parallel clients get quick answers
    let t0 = Instant::now();
    let handles: Vec<_> = (0..16)
        .map(|i| {
            let socket = agent.socket.clone();
            std::thread::spawn(move || {
                let name = format!("user{i}");
                let v = request(
                    &socket,
                    &format!(r#"{{"v":1,"op":"apply_limits","account":"{name}"}}"#),
                );
                ok(&v);
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let quick = t0.elapsed();
    assert!(
        !slow.is_finished(),
        "the freeze ended before the kernel said frozen"
    );
    std::fs::write(dir.join("cgroup.events"), "populated 1\nfrozen 1\n").unwrap();
    let (v, slow_took) = slow.join().unwrap();
    assert_eq!(ok(&v)["type"], "frozen", "{v}");
    assert!(
        quick < slow_took,
        "quick requests ({quick:?}) waited for the slow one ({slow_took:?})"
    );
    for i in 0..16 {
        assert!(sb.cgroot().join(format!("user{i}/pids.max")).exists());
    }
}

#[test]
fn prepare_home_and_disk_usage() {
    let sb = Sandbox::new();
    sb.write_config("");
    let agent = AgentProc::start(&sb);
    let v = request(
        &agent.socket,
        r#"{"v":1,"op":"prepare_home","account":"dave","uid":4242,"gid":4343}"#,
    );
    let r = ok(&v);
    assert_eq!(r["type"], "home_prepared");
    let home = sb.home().join("dave");
    let m = std::fs::metadata(&home).unwrap();
    assert!(m.is_dir());
    if is_root() {
        assert_eq!((m.uid(), m.gid()), (4242, 4343));
    }
    assert_eq!(m.permissions().mode() & 0o7777, 0o750);
    // root-owned homes are refused
    let v = request(
        &agent.socket,
        r#"{"v":1,"op":"prepare_home","account":"eve","uid":0,"gid":0}"#,
    );
    assert_eq!(error_code(&v), "invalid_request");
    assert!(!sb.home().join("eve").exists());
    // a symlink planted as a home is not followed (its target keeps its owner)
    let target_uid = std::fs::metadata(sb.path()).unwrap().uid();
    std::os::unix::fs::symlink(sb.path(), sb.home().join("mallory")).unwrap();
    let v = request(
        &agent.socket,
        r#"{"v":1,"op":"prepare_home","account":"mallory","uid":4242,"gid":4242}"#,
    );
    assert_eq!(error_code(&v), "io", "{v}");
    assert_eq!(std::fs::metadata(sb.path()).unwrap().uid(), target_uid);
    if is_root() {
        // someone else's existing home is never handed over (an account named like a user)
        let ubuntu = sb.home().join("ubuntu");
        std::fs::create_dir(&ubuntu).unwrap();
        std::fs::write(ubuntu.join(".profile"), "x").unwrap();
        std::os::unix::fs::chown(&ubuntu, Some(1000), Some(1000)).unwrap();
        let v = request(
            &agent.socket,
            r#"{"v":1,"op":"prepare_home","account":"ubuntu","uid":4242,"gid":4242}"#,
        );
        assert_eq!(error_code(&v), "busy", "{v}");
        assert_eq!(std::fs::metadata(&ubuntu).unwrap().uid(), 1000);
        // preparing dave's home again is fine (already his)
        let v = request(
            &agent.socket,
            r#"{"v":1,"op":"prepare_home","account":"dave","uid":4242,"gid":4343}"#,
        );
        assert_eq!(ok(&v)["type"], "home_prepared");
    }
    // -1 means "unchanged" to chown: refused
    let v = request(
        &agent.socket,
        r#"{"v":1,"op":"prepare_home","account":"maxu","uid":4294967295,"gid":4294967295}"#,
    );
    assert_eq!(error_code(&v), "invalid_request", "{v}");

    std::fs::write(home.join("a"), vec![1u8; 10_000]).unwrap();
    std::fs::create_dir(home.join("sub")).unwrap();
    std::fs::write(home.join("sub/b"), vec![2u8; 5_000]).unwrap();
    std::os::unix::fs::symlink("/etc", home.join("link")).unwrap();
    let v = request(
        &agent.socket,
        r#"{"v":1,"op":"disk_usage","account":"dave"}"#,
    );
    let d = ok(&v);
    assert_eq!(d["type"], "disk_usage");
    assert_eq!(d["files"], 3, "{d}"); // a, sub/b and the symlink itself
    assert_eq!(d["dirs"], 2);
    let apparent = d["apparent_bytes"].as_u64().unwrap();
    assert!((15_000..15_100).contains(&apparent), "{apparent}");
    assert!(d["allocated_bytes"].as_u64().unwrap() >= 12_288);
    let v = request(
        &agent.socket,
        r#"{"v":1,"op":"disk_usage","account":"nohome"}"#,
    );
    assert_eq!(error_code(&v), "not_found");
}

/// Runs `npanel-agent ping` as another uid/gid, so SO_PEERCRED sees it.
fn ping_as(sb: &Sandbox, uid: u32, gid: u32) -> (i32, String) {
    let out = Command::new(AGENT_BIN)
        .args(["ping", "--socket"])
        .arg(sb.socket())
        .uid(uid)
        .gid(gid)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn peer_credentials_decide_who_may_talk() {
    if !is_root() {
        skip(
            "peer_credentials_decide_who_may_talk",
            "needs root to run clients as other uids",
        );
        return;
    }
    let sb = Sandbox::new();
    let gid = 54_321;
    sb.write_config(&format!(
        "socket_gid = {gid}\nallowed_uids = [54000]\nallowed_gids = []"
    ));
    let agent = AgentProc::start(&sb);
    let m = std::fs::metadata(&agent.socket).unwrap();
    assert_eq!(m.permissions().mode() & 0o777, 0o660);
    assert_eq!(m.gid(), gid);

    // uid 54001 in the socket's group can connect, but is not on the allow list
    let (code, out) = ping_as(&sb, 54_001, gid);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("not_permitted"), "{out}");
    // uid 54000 is on the allow list
    let (code, out) = ping_as(&sb, 54_000, gid);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("pong"));
    // another group cannot even open the socket (mode 0660)
    let (code, out) = ping_as(&sb, 54_002, 54_002);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("ermission denied"), "{out}");

    // reload with the group allowed: 54001 gets in; root is allowed by default
    sb.write_config(&format!(
        "socket_gid = {gid}\nallowed_uids = []\nallowed_gids = [{gid}]"
    ));
    agent.signal(Signal::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(5);
    while ping_as(&sb, 54_001, gid).0 != 0 {
        assert!(Instant::now() < deadline, "reload did not allow gid {gid}");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        ok(&request(&agent.socket, r#"{"v":1,"op":"ping"}"#))["type"],
        "pong"
    );

    // allow_root = false refuses root too
    sb.write_config(&format!(
        "socket_gid = {gid}\nallow_root = false\nallowed_gids = [{gid}]"
    ));
    agent.signal(Signal::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let v = request(&agent.socket, r#"{"v":1,"op":"ping"}"#);
        if v.get("error").is_some() {
            assert_eq!(error_code(&v), "not_permitted");
            break;
        }
        assert!(Instant::now() < deadline, "root still allowed after reload");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sighup_reloads_and_refuses_a_bad_config_while_requests_finish() {
    let sb = Sandbox::new();
    sb.write_config("freeze_timeout_ms = 8000\n[limits]\npids_max = 100");
    let mut agent = AgentProc::start(&sb);
    let log = agent.tap_stderr();
    let pids =
        |acct: &str| std::fs::read_to_string(sb.cgroot().join(acct).join("pids.max")).unwrap();
    ok(&request(
        &agent.socket,
        r#"{"v":1,"op":"apply_limits","account":"a1"}"#,
    ));
    assert_eq!(pids("a1"), "100");

    // an in-flight freeze that completes only after a reload
    let dir = sb.cgroot().join("slowfreeze");
    fake_account_cgroup(&dir, true, true);
    let socket = agent.socket.clone();
    let inflight = std::thread::spawn(move || {
        request(&socket, r#"{"v":1,"op":"freeze","account":"slowfreeze"}"#)
    });
    wait_freeze_asked(&dir);

    sb.write_config("freeze_timeout_ms = 8000\n[limits]\npids_max = 77");
    agent.signal(Signal::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        ok(&request(
            &agent.socket,
            r#"{"v":1,"op":"apply_limits","account":"a2"}"#,
        ));
        if pids("a2") == "77" {
            break;
        }
        assert!(Instant::now() < deadline, "config not reloaded");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        !inflight.is_finished(),
        "the freeze ended before the kernel said frozen"
    );
    std::fs::write(dir.join("cgroup.events"), "populated 1\nfrozen 1\n").unwrap();
    let v = inflight.join().unwrap();
    assert_eq!(
        ok(&v)["type"],
        "frozen",
        "in-flight request across reload: {v}"
    );

    // an invalid config is refused; the old one keeps running (checked once the agent has
    // said it refused, not after some time)
    let refused = |n: usize| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while log.text().matches("config reload refused").count() < n {
            assert!(
                Instant::now() < deadline,
                "no refusal logged: {}",
                log.text()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    std::fs::write(sb.config_path(), "[limits]\npids_max = \"lots\"\n").unwrap();
    agent.signal(Signal::SIGHUP);
    refused(1);
    ok(&request(
        &agent.socket,
        r#"{"v":1,"op":"apply_limits","account":"a3"}"#,
    ));
    assert_eq!(pids("a3"), "77");
    // so is a valid one that moves the socket
    let moved = sb.path().join("other.sock");
    std::fs::write(
        sb.config_path(),
        format!(
            "socket_path = {moved:?}\ncgroup_root = {:?}\n[limits]\npids_max = 5",
            sb.cgroot()
        ),
    )
    .unwrap();
    agent.signal(Signal::SIGHUP);
    refused(2);
    ok(&request(
        &agent.socket,
        r#"{"v":1,"op":"apply_limits","account":"a4"}"#,
    ));
    assert_eq!(pids("a4"), "77");
    assert!(!moved.exists());

    agent.signal(Signal::SIGTERM);
    let (status, stderr) = agent.wait_exit(Duration::from_secs(5));
    assert!(stderr.contains("config reload refused"), "{stderr}");
    assert!(status.success());
}

#[test]
fn sigterm_shuts_down_cleanly_and_removes_the_socket() {
    let sb = Sandbox::new();
    sb.write_config("");
    let agent = AgentProc::start(&sb);
    let socket = agent.socket.clone();
    assert!(agent::server::is_socket(&socket));
    agent.signal(Signal::SIGTERM);
    let (status, stderr) = agent.wait_exit(Duration::from_secs(5));
    assert!(status.success(), "{status:?} {stderr}");
    assert!(!socket.exists(), "socket left behind");
    assert!(stderr.contains("shutting down"));
}

#[test]
fn stale_socket_is_replaced_but_a_live_agent_is_not() {
    let sb = Sandbox::new();
    sb.write_config("");
    // stale: a socket file nobody listens on
    drop(std::os::unix::net::UnixListener::bind(sb.socket()).unwrap());
    assert!(sb.socket().exists());
    let agent = AgentProc::start(&sb);
    // a second agent on the same socket refuses to start
    let out = Command::new(AGENT_BIN)
        .arg("--config")
        .arg(sb.config_path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("another process is listening"));
    ok(&request(&agent.socket, r#"{"v":1,"op":"ping"}"#));
}

#[test]
fn notifies_systemd_ready_and_watchdog() {
    let sb = Sandbox::new();
    sb.write_config("");
    let notify = sb.path().join("notify.sock");
    let dgram = UnixDatagram::bind(&notify).unwrap();
    dgram
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let agent = AgentProc::start_with_env(
        &sb,
        &[
            ("NOTIFY_SOCKET", notify.to_str().unwrap()),
            ("WATCHDOG_USEC", "200000"),
        ],
    );
    let mut seen = Vec::new();
    let mut buf = [0u8; 512];
    let deadline = Instant::now() + Duration::from_secs(5);
    while seen
        .iter()
        .filter(|m: &&String| m.contains("WATCHDOG=1"))
        .count()
        < 3
    {
        assert!(Instant::now() < deadline, "got only {seen:?}");
        let n = dgram.recv(&mut buf).unwrap();
        seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    assert!(seen[0].contains("READY=1"), "{seen:?}");
    drop(agent);
}

#[test]
fn typed_client_talks_to_the_binary() {
    let sb = Sandbox::new();
    sb.write_config("");
    let agent = AgentProc::start(&sb);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = agent::AgentClient::new(&agent.socket, Duration::from_secs(5));
        let pong = client.ping().await.unwrap();
        assert_eq!(pong.pid, agent.pid() as u32);
        let acct = agent::AccountName::parse("frank").unwrap();
        let rep = client
            .apply_limits(
                &acct,
                agent::protocol::LimitsPatch {
                    memory_max: Some(1 << 20),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(rep.requested.memory_max, 1 << 20);
        let err = client
            .freeze(&agent::AccountName::parse("ghost").unwrap())
            .await
            .unwrap_err();
        assert_eq!(err.code(), agent::ErrorCode::NotFound);
        let home = client.prepare_home(&acct, 5000, 5000).await.unwrap();
        assert!(home.is_dir());
        let du = client.disk_usage(&acct).await.unwrap();
        assert_eq!(du.files, 0);
        // a client against a missing socket fails fast with a connect error
        let none =
            agent::AgentClient::new(sb.path().join("missing.sock"), Duration::from_millis(300));
        assert!(matches!(
            none.ping().await.unwrap_err(),
            agent::AgentError::Connect { .. }
        ));
    });
    // a client whose agent never answers gets a timeout
    let silent = sb.path().join("silent.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&silent).unwrap();
    rt.block_on(async {
        let c = agent::AgentClient::new(&silent, Duration::from_millis(200));
        let t0 = Instant::now();
        assert!(matches!(
            c.ping().await.unwrap_err(),
            agent::AgentError::Timeout(_)
        ));
        assert!(t0.elapsed() < Duration::from_secs(2));
    });
}

/// Waits (10 s at most) until the agent has asked the cgroup in `dir` to freeze: a freeze
/// request is then in flight.
fn wait_freeze_asked(dir: &std::path::Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(dir.join("cgroup.freeze"))
        .unwrap()
        .trim()
        != "1"
    {
        assert!(Instant::now() < deadline, "the freeze never started");
        std::thread::sleep(Duration::from_millis(5));
    }
}
