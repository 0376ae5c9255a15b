//! The cgroup manager on this host's real cgroup v2 hierarchy, wherever it
//! offers one. Each test probes (root? cgroup2 mounted? can we mkdir under
//! it? which controllers? cgroup.freeze / cgroup.kill?) and uses what exists,
//! printing a SKIP line with the reason for what does not. Every test cleans
//! up its cgroups (kill + rmdir), also when it fails.

mod common;

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use agent::cgroup::{read_event, CgroupManager};
use agent::config::Fallback;
use agent::protocol::{Enforcement, KillMethod, LimitKind, Limits, LimitsPatch};
use agent::AccountName;
use common::cgroups::RealRoot;
use common::*;

fn acct(s: &str) -> AccountName {
    AccountName::parse(s).unwrap()
}

fn open(root: &Path) -> CgroupManager {
    let m = CgroupManager::open(
        root,
        agent::cgroup::resolve_io_device(None, Path::new("/")),
        Fallback::default(),
    );
    let c = m.capabilities();
    eprintln!(
        "probe: mount={:?} controllers={:?} freeze={} cgroup.kill={} limits={:?}",
        c.cgroup2_mount,
        c.controllers,
        c.freeze,
        c.cgroup_kill,
        c.limits
            .iter()
            .map(|l| (l.kind, l.enforcement))
            .collect::<Vec<_>>()
    );
    for n in &c.notes {
        eprintln!("probe note: {n}");
    }
    m
}

#[test]
fn real_cgroup_limits_freeze_kill_remove() {
    let Some(rr) = RealRoot::probe("lifecycle") else {
        return;
    };
    let m = open(&rr.root);
    let caps = m.capabilities().clone();
    assert!(caps.cgroup2_mount.is_some());
    assert!(!m.is_plain_tree());
    let a = acct("alice");

    // limits: enforced where the controller is there, reported otherwise
    let report = m.apply_limits(&a, &Limits::default()).unwrap();
    let dir = m.account_dir(&a);
    assert!(
        dir.join("cgroup.procs").exists(),
        "the kernel created the control files"
    );
    for ap in &report.applied {
        let has = caps.controllers.iter().any(|c| c == ap.kind.controller());
        if has && caps.enforcement(ap.kind) == Enforcement::Cgroup {
            let on_disk = std::fs::read_to_string(dir.join(ap.kind.file())).unwrap();
            assert_eq!(ap.read_back.as_deref(), Some(on_disk.trim()));
        } else {
            assert_ne!(ap.enforcement, Enforcement::Cgroup, "{ap:?}");
            assert!(
                !dir.join(ap.kind.file()).exists(),
                "{} exists without its controller",
                ap.kind.file()
            );
            eprintln!(
                "not enforced by cgroup here: {:?} -> {} ({:?})",
                ap.kind, ap.value, ap.note
            );
        }
    }

    // a real process in the cgroup
    let mut child = Command::new("sleep")
        .arg("30")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    m.add_process(&a, child.id()).unwrap();
    assert_eq!(m.procs(&a).unwrap(), vec![child.id() as i32]);
    let u = m.usage(&a).unwrap();
    assert_eq!(u.populated, Some(true));
    assert!(u.cpu.is_some(), "cpu.stat is always there on cgroup v2");

    if caps.freeze {
        m.freeze(&a, Duration::from_secs(2)).unwrap();
        assert_eq!(
            read_event(&dir, "frozen"),
            Some(true),
            "kernel reports frozen 1"
        );
        assert_eq!(m.usage(&a).unwrap().frozen, Some(true));
        m.thaw(&a, Duration::from_secs(2)).unwrap();
        assert_eq!(read_event(&dir, "frozen"), Some(false));
    } else {
        eprintln!("SKIP freeze: cgroup.freeze missing on this kernel");
    }

    // remove refuses while populated
    assert!(matches!(
        m.remove(&a, Duration::from_millis(50)),
        Err(agent::AgentError::Busy(_))
    ));

    let (method, _, emptied) = m.kill(&a, Duration::from_secs(3)).unwrap();
    if caps.cgroup_kill {
        assert_eq!(method, KillMethod::CgroupKill);
    } else {
        assert_eq!(method, KillMethod::Sigkill);
    }
    let st = child.wait().unwrap();
    assert_eq!(st.signal(), Some(9), "{st:?}");
    assert!(emptied, "populated 0 after kill");

    assert!(m.remove(&a, Duration::from_secs(2)).unwrap());
    assert!(!dir.exists());
}

#[test]
fn real_cgroup_freeze_stops_a_busy_process() {
    let Some(rr) = RealRoot::probe("freezer") else {
        return;
    };
    let m = open(&rr.root);
    if !m.capabilities().freeze {
        eprintln!("SKIP freezer: no cgroup.freeze");
        return;
    }
    let a = acct("busy");
    m.apply_limits(&a, &Limits::default()).unwrap();
    // a process that burns CPU; its CPU time (utime+stime) shows whether it runs
    let mut child = Command::new("sh")
        .arg("-c")
        .arg("while :; do :; done")
        .spawn()
        .unwrap();
    m.add_process(&a, child.id()).unwrap();
    let pid = child.id();
    let cpu_ticks = || {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        let f: Vec<&str> = after.split_whitespace().collect();
        // fields 14 and 15 of stat; `after` starts at field 3
        f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
    };
    std::thread::sleep(Duration::from_millis(100));
    m.freeze(&a, Duration::from_secs(2)).unwrap();
    let before = cpu_ticks();
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(cpu_ticks(), before, "the frozen process kept running");
    m.thaw(&a, Duration::from_secs(2)).unwrap();
    // it runs again: its CPU time moves (polled, however busy the machine)
    let deadline = Instant::now() + Duration::from_secs(10);
    while cpu_ticks() == before {
        assert!(
            Instant::now() < deadline,
            "the thawed process did not resume"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    m.kill(&a, Duration::from_secs(2)).unwrap();
    assert_eq!(child.wait().unwrap().signal(), Some(9));
}

/// Samples the number of processes in `dir` (recursively through
/// cgroup.procs) and pids.current, for `dur`; returns the maxima.
fn sample_max(dir: &Path, dur: Duration) -> (usize, u64) {
    let (mut procs_max, mut current_max) = (0, 0);
    let end = Instant::now() + dur;
    while Instant::now() < end {
        let n = std::fs::read_to_string(dir.join("cgroup.procs"))
            .map(|t| t.lines().count())
            .unwrap_or(0);
        procs_max = procs_max.max(n);
        if let Ok(c) = std::fs::read_to_string(dir.join("pids.current")) {
            current_max = current_max.max(c.trim().parse().unwrap_or(0));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    (procs_max, current_max)
}

const FORK_BOMB: &str = "while :; do sleep 30 & done";

#[test]
fn real_fork_bomb_is_contained_and_killed() {
    let Some(rr) = RealRoot::probe("forkbomb") else {
        return;
    };
    let m = open(&rr.root);
    let a = acct("bomber");
    let limits = Limits::default().patched(&LimitsPatch {
        pids_max: Some(20),
        ..Default::default()
    });
    m.apply_limits(&a, &limits).unwrap();
    let dir = m.account_dir(&a);
    let pids_by_cgroup = m.capabilities().enforcement(LimitKind::Pids) == Enforcement::Cgroup;

    let mut cmd = Command::new(AGENT_BIN);
    cmd.arg("exec").arg("--cgroup").arg(&dir);
    if pids_by_cgroup {
        eprintln!("fork bomb: contained by the pids controller (pids.max=20)");
    } else {
        // No pids controller in cgroup v2 here: the rlimit fallback, which
        // only binds a non-root uid. An unused uid, so nothing else counts.
        let uid = 61_000 + std::process::id() % 4_000;
        eprintln!(
            "SKIP pids-controller fork bomb: pids controller not available for cgroup v2 on this host; \
             running the RLIMIT_NPROC fallback instead (uid {uid}, nproc 20) inside the real cgroup"
        );
        let plan = m.rlimit_plan(&limits);
        assert_eq!(plan.nproc, Some(20));
        cmd.args([
            "--nproc",
            "20",
            "--uid",
            &uid.to_string(),
            "--gid",
            &uid.to_string(),
        ]);
    }
    let mut bomb = cmd
        .args(["--", "sh", "-c", FORK_BOMB])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // 1.5 s at least, and on (up to 10 s) until the bomb has got going on a slow machine
    let (mut procs_max, mut current_max) = sample_max(&dir, Duration::from_millis(1500));
    let t0 = Instant::now();
    while procs_max < 10 && t0.elapsed() < Duration::from_secs(10) {
        let (p, c) = sample_max(&dir, Duration::from_millis(100));
        (procs_max, current_max) = (procs_max.max(p), current_max.max(c));
    }
    eprintln!(
        "fork bomb: max processes seen in the cgroup {procs_max}, max pids.current {current_max}"
    );
    assert!(
        procs_max >= 10,
        "the bomb did not get going ({procs_max} processes)"
    );
    assert!(procs_max <= 20, "{procs_max} processes > limit 20");
    if pids_by_cgroup {
        assert!(current_max <= 20);
        let u = m.usage(&a).unwrap();
        assert!(
            u.pids_max_events.unwrap_or(0) > 0,
            "pids.events max should count refused forks"
        );
    }
    let (method, _, emptied) = m.kill(&a, Duration::from_secs(5)).unwrap();
    eprintln!("fork bomb: killed via {method:?}, emptied={emptied}");
    let st = bomb.wait().unwrap();
    assert!(st.signal() == Some(9) || !st.success(), "{st:?}");
    assert!(emptied, "cgroup still populated after kill");
    assert!(m.procs(&a).unwrap().is_empty());
    assert!(m.remove(&a, Duration::from_secs(2)).unwrap());
}

#[test]
fn real_exec_applies_rlimits() {
    // Not cgroup-specific, but the fallback's real effect: the exec'd command
    // runs with the limits (its /proc/self/limits).
    let out = Command::new(AGENT_BIN)
        .args([
            "exec",
            "--nproc",
            "33",
            "--as",
            "1073741824",
            "--cpu",
            "9",
            "--",
            "cat",
            "/proc/self/limits",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let limit = |name: &str| -> Vec<String> {
        let line = text.lines().find(|l| l.starts_with(name)).unwrap();
        line[name.len()..]
            .split_whitespace()
            .take(2)
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(limit("Max processes"), ["33", "33"], "{text}");
    assert_eq!(
        limit("Max address space"),
        ["1073741824", "1073741824"],
        "{text}"
    );
    assert_eq!(limit("Max cpu time"), ["9", "9"], "{text}");
    // a bad exec spec is refused with a clear error
    let out = Command::new(AGENT_BIN)
        .args(["exec", "--nproc", "x", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--nproc needs a number"));
    // --uid alone (would keep gid 0), root and truncating ids are refused
    for args in [
        vec!["exec", "--uid", "60001", "--", "id"],
        vec!["exec", "--uid", "0", "--gid", "0", "--", "id"],
        vec![
            "exec",
            "--uid",
            "4294967296",
            "--gid",
            "4294967296",
            "--",
            "id",
        ],
    ] {
        let out = Command::new(AGENT_BIN).args(&args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
    }
    // the account's command gets a clean environment and its own ids
    if is_root() {
        let out = Command::new(AGENT_BIN)
            .args([
                "exec",
                "--uid",
                "60001",
                "--gid",
                "60001",
                "--",
                "sh",
                "-c",
                "id -u; id -G; echo ${SECRET:-none}",
            ])
            .env("SECRET", "hunter2")
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            text.lines().collect::<Vec<_>>(),
            ["60001", "60001", "none"],
            "{text}"
        );
    }
}

#[test]
fn real_cgroup_through_the_agent_socket() {
    let Some(rr) = RealRoot::probe("socket") else {
        return;
    };
    let sb = Sandbox::new();
    let root = rr.root.join("npanel.slice");
    std::fs::write(
        sb.config_path(),
        format!(
            "socket_path = {:?}\ncgroup_root = {:?}\nhome_root = {:?}\n",
            sb.socket(),
            root,
            sb.home()
        ),
    )
    .unwrap();
    let agent = AgentProc::start(&sb);
    let v = request(&agent.socket, r#"{"v":1,"op":"ping"}"#);
    let caps = &ok(&v)["capabilities"];
    eprintln!("real capabilities via ping: {caps}");
    assert!(caps["cgroup2_mount"].is_string());
    assert_eq!(caps["cgroup_usable"], true);
    assert!(root.is_dir(), "the agent created its cgroup root");
    ok(&request(
        &agent.socket,
        r#"{"v":1,"op":"apply_limits","account":"web1"}"#,
    ));
    let dir = root.join("web1");
    assert!(dir.join("cgroup.procs").exists());
    let mut child = Command::new("sleep").arg("30").spawn().unwrap();
    std::fs::write(dir.join("cgroup.procs"), child.id().to_string()).unwrap();
    if caps["freeze"] == true {
        ok(&request(
            &agent.socket,
            r#"{"v":1,"op":"freeze","account":"web1"}"#,
        ));
        assert_eq!(read_event(&dir, "frozen"), Some(true));
        ok(&request(
            &agent.socket,
            r#"{"v":1,"op":"thaw","account":"web1"}"#,
        ));
    }
    let v = request(&agent.socket, r#"{"v":1,"op":"remove","account":"web1"}"#);
    assert_eq!(error_code(&v), "busy");
    let v = request(&agent.socket, r#"{"v":1,"op":"kill","account":"web1"}"#);
    assert_eq!(ok(&v)["emptied"], true);
    assert_eq!(child.wait().unwrap().signal(), Some(9));
    let v = request(&agent.socket, r#"{"v":1,"op":"usage","account":"web1"}"#);
    assert_eq!(ok(&v)["populated"], false);
    ok(&request(
        &agent.socket,
        r#"{"v":1,"op":"remove","account":"web1"}"#,
    ));
    assert!(!dir.exists());
}
