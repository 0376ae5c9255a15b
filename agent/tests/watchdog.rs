//! `npanel-watchdog` driving a real `npanel-agent`: SIGKILL, SIGSTOP (hang),
//! and an agent that keeps dying until the restart cap.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use agent::watchdog::{
    read_records, FailureAction, FailureReason, FailureRecord, FAILURES_FILE, METRICS_FILE,
};
use common::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Fast intervals so the suite stays quick; but a ping may take well over a second to be
/// answered before it counts as failed, so a slow machine does not look like a hung agent.
const PING_TIMEOUT_MS: u64 = 1500;
const CONFIRM_MS: u64 = 300;
const FAST: &[&str] = &[
    "--interval-ms",
    "200",
    "--timeout-ms",
    "1500",
    "--confirm-ms",
    "300",
    "--startup-ms",
    "5000",
    "--restart-delay-ms",
    "0",
    "--quiet",
];

struct Watchdog {
    child: Child,
    /// Its stderr (its own log; the agent's output is not copied, `--quiet`).
    log: StderrTap,
}

impl Watchdog {
    fn start(sb: &Sandbox, extra: &[&str], agent_cmd: &[&str]) -> Self {
        let mut child = Command::new(WATCHDOG_BIN)
            .args(FAST)
            .args(extra)
            .arg("--socket")
            .arg(sb.socket())
            .arg("--data-dir")
            .arg(data_dir(sb))
            .arg("--")
            .args(agent_cmd)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .env("NPANEL_LOG", "info")
            .spawn()
            .unwrap();
        let log = StderrTap::new(child.stderr.take().unwrap());
        Self { child, log }
    }
    /// Waits until the watchdog has logged `what` `n` times.
    fn wait_logged(&self, what: &str, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.log.text().matches(what).count() < n {
            assert!(
                Instant::now() < deadline,
                "{what:?} not logged {n} times: {}",
                self.log.text()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    /// Writes the sandbox config with `config`, supervises the real agent and
    /// waits until it answers; returns its pid too.
    fn start_agent(sb: &Sandbox, config: &str) -> (Self, i64) {
        sb.write_config(config);
        let config_path = sb.config_path().display().to_string();
        let wd = Self::start(sb, &[], &[AGENT_BIN, "--config", config_path.as_str()]);
        let pid = wait_new_pid(&sb.socket(), None, Duration::from_secs(10));
        (wd, pid)
    }
    fn stop(mut self) -> std::process::ExitStatus {
        kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM).unwrap();
        wait_for(&mut self.child, Duration::from_secs(10))
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        // SIGTERM first so the agent child is stopped too
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_for(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        assert!(
            Instant::now() < deadline,
            "process did not exit within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The watchdog's data dir.
fn data_dir(sb: &Sandbox) -> PathBuf {
    sb.path().join("wd")
}

fn failure_records(sb: &Sandbox) -> Vec<FailureRecord> {
    read_records(&data_dir(sb).join(FAILURES_FILE)).unwrap()
}

fn ping_pid(socket: &Path, timeout: Duration) -> Option<i64> {
    let v = try_request(socket, r#"{"v":1,"op":"ping"}"#, timeout).ok()?;
    v["ok"]["pid"].as_i64()
}

/// Waits until the agent answers with a pid other than `old`.
fn wait_new_pid(socket: &Path, old: Option<i64>, limit: Duration) -> i64 {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(p) = ping_pid(socket, Duration::from_millis(100)) {
            if Some(p) != old {
                return p;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no (new) agent answering within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn alive(pid: i64) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

#[test]
fn sigkilled_agent_is_restarted_and_answers_again() {
    let sb = Sandbox::new();
    let (wd, pid1) = Watchdog::start_agent(&sb, "");

    let t0 = Instant::now();
    kill(Pid::from_raw(pid1 as i32), Signal::SIGKILL).unwrap();
    let pid2 = wait_new_pid(&sb.socket(), Some(pid1), Duration::from_secs(5));
    let took = t0.elapsed();
    eprintln!(
        "SIGKILL -> agent answering again: {:.1} ms",
        took.as_secs_f64() * 1000.0
    );
    assert_ne!(pid1, pid2);
    assert!(took < Duration::from_secs(3), "restart took {took:?}");

    let recs = failure_records(&sb);
    assert_eq!(recs.len(), 1, "{recs:?}");
    let r = &recs[0];
    assert_eq!(r.reason, FailureReason::Exited);
    assert_eq!(r.signal, Some(9));
    assert_eq!(r.agent_pid, Some(pid1 as u32));
    assert_eq!(r.action, FailureAction::Restart);
    assert!(
        r.log_tail
            .iter()
            .any(|l| l.contains("npanel-agent listening")),
        "{:?}",
        r.log_tail
    );
    assert!(r.time.ends_with('Z'));

    // SIGTERM to the watchdog stops the agent cleanly (socket removed) and exits 0
    let st = wd.stop();
    assert!(st.success(), "{st:?}");
    assert!(
        !alive(pid2)
            || std::fs::read_to_string(format!("/proc/{pid2}/stat"))
                .map(|s| s.contains(") Z"))
                .unwrap_or(true)
    );
    assert!(!sb.socket().exists(), "agent did not shut down cleanly");
}

#[test]
fn hung_agent_is_killed_and_replaced() {
    let sb = Sandbox::new();
    let (wd, pid1) = Watchdog::start_agent(&sb, "");
    // the watchdog has finished its startup check, so the hang is caught by the
    // periodic ping, not by the startup timeout
    wd.wait_logged("agent answers", 1);

    let t0 = Instant::now();
    kill(Pid::from_raw(pid1 as i32), Signal::SIGSTOP).unwrap();
    let pid2 = wait_new_pid(&sb.socket(), Some(pid1), Duration::from_secs(20));
    let took = t0.elapsed();
    eprintln!(
        "SIGSTOP -> replaced after {:.1} ms",
        took.as_secs_f64() * 1000.0
    );
    // a ping in flight at the stop may fail at once; then the confirm delay and a
    // second ping's whole timeout at least
    assert!(
        took >= Duration::from_millis(CONFIRM_MS + PING_TIMEOUT_MS),
        "replaced too early: {took:?}"
    );
    assert!(!alive(pid1), "the hung agent was not killed");
    assert_ne!(pid1, pid2);

    let recs = failure_records(&sb);
    assert_eq!(recs.len(), 1, "{recs:?}");
    assert_eq!(recs[0].reason, FailureReason::Unresponsive);
    assert_eq!(recs[0].signal, Some(9));
    assert!(recs[0].detail.contains("again"), "{}", recs[0].detail);
    assert!(!recs[0].log_tail.is_empty());
}

#[test]
fn gives_up_after_the_restart_cap() {
    let sb = Sandbox::new();
    let mut wd = Watchdog::start(
        &sb,
        &[
            "--max-restarts",
            "5",
            "--window-secs",
            "3600",
            "--restart-delay-ms",
            "10",
        ],
        &[
            "sh",
            "-c",
            "for i in $(seq 1 150); do echo line-$i; done; echo boom >&2; exit 3",
        ],
    );
    let t0 = Instant::now();
    let st = wait_for(&mut wd.child, Duration::from_secs(20));
    eprintln!("watchdog gave up after {:?}", t0.elapsed());
    assert_eq!(st.code(), Some(1), "{st:?}");
    wd.log.wait_closed();
    let stderr = wd.log.text();
    assert!(
        stderr.contains("ERROR") && stderr.contains("giving up"),
        "{stderr}"
    );

    let recs = failure_records(&sb);
    assert_eq!(
        recs.len(),
        6,
        "5 restarts + the failure that gave up: {recs:?}"
    );
    let prom = std::fs::read_to_string(data_dir(&sb).join(METRICS_FILE)).unwrap();
    assert!(
        prom.contains("npanel_agent_failures_total{reason=\"exited\"} 6\n"),
        "{prom}"
    );
    assert!(prom.contains("npanel_agent_restarts_total 5\n"), "{prom}");
    assert!(
        prom.contains("npanel_agent_watchdog_gave_up_total 1\n"),
        "{prom}"
    );
    assert!(prom.contains("# TYPE npanel_agent_restarts_total counter"));
    for (i, r) in recs.iter().enumerate() {
        assert_eq!(r.reason, FailureReason::Exited);
        assert_eq!(r.exit_code, Some(3));
        assert_eq!(r.restarts_in_window, i);
        assert_eq!(
            r.log_tail.len(),
            100,
            "ring buffer keeps the last 100 lines"
        );
        assert_eq!(r.log_tail.last().map(String::as_str), Some("boom"));
        assert!(
            !r.log_tail.iter().any(|l| l == "line-50"),
            "old lines should have been dropped"
        );
    }
    assert!(recs[..5].iter().all(|r| r.action == FailureAction::Restart));
    assert_eq!(recs[5].action, FailureAction::GiveUp);
}

#[test]
fn window_slides_so_old_restarts_do_not_count() {
    // window of 1 s, cap 2, restarts 0.6 s apart: never more than 2 in a window
    let sb = Sandbox::new();
    let mut wd = Watchdog::start(
        &sb,
        &[
            "--max-restarts",
            "2",
            "--window-secs",
            "1",
            "--restart-delay-ms",
            "600",
        ],
        &["sh", "-c", "exit 4"],
    );
    // at least 4 failures (3 restarts over well more than the window), however long that takes
    let deadline = Instant::now() + Duration::from_secs(30);
    let recs = loop {
        assert!(
            wd.child.try_wait().unwrap().is_none(),
            "gave up although restarts were spread out: {:?}",
            failure_records(&sb)
        );
        // whole lines only: the watchdog may be appending one right now
        let text = std::fs::read_to_string(data_dir(&sb).join(FAILURES_FILE)).unwrap_or_default();
        let whole = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
        let recs: Vec<FailureRecord> = whole
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        if recs.len() >= 4 {
            break recs;
        }
        assert!(Instant::now() < deadline, "{recs:?}");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(recs
        .iter()
        .all(|r| r.action == FailureAction::Restart && r.restarts_in_window <= 2));
}

#[test]
fn bad_usage_exits_2() {
    let out = Command::new(WATCHDOG_BIN)
        .args(["--interval-ms", "soon"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a number"));
}

#[test]
fn sighup_to_the_watchdog_reloads_the_agent() {
    let sb = Sandbox::new();
    let (wd, pid1) = Watchdog::start_agent(&sb, "[limits]\npids_max = 100");
    std::thread::sleep(Duration::from_millis(100));
    sb.write_config("[limits]\npids_max = 42");
    kill(Pid::from_raw(wd.child.id() as i32), Signal::SIGHUP).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        ok(&request(
            &sb.socket(),
            r#"{"v":1,"op":"apply_limits","account":"hup"}"#,
        ));
        if std::fs::read_to_string(sb.cgroot().join("hup/pids.max")).unwrap() == "42" {
            break;
        }
        assert!(Instant::now() < deadline, "SIGHUP was not forwarded");
        std::thread::sleep(Duration::from_millis(20));
    }
    // reloaded in place, not restarted
    assert_eq!(ping_pid(&sb.socket(), Duration::from_secs(1)), Some(pid1));
    assert!(!data_dir(&sb).join(FAILURES_FILE).exists());
    assert!(wd.stop().success());
}
