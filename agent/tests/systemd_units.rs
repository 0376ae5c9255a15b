//! `systemd-analyze verify` on the shipped units. ExecStart paths point at
//! /usr/local/bin, which does not exist on a build machine, so the test
//! verifies copies whose binaries are rewritten to the ones just built
//! (`npanel` itself, from another crate, to /bin/true). `systemd-analyze
//! verify` exits 0 even for unknown keys or broken lines, so any complaint
//! naming one of our units fails the test; a deliberately broken copy checks
//! that such complaints are indeed seen.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

const UNITS: [&str; 4] = [
    "npanel-agent.service",
    "npanel-watchdog.service",
    "npanel.service",
    "npanel.socket",
];

fn units_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd")
}

fn systemd_analyze() -> Option<PathBuf> {
    ["/usr/bin/systemd-analyze", "/bin/systemd-analyze"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

fn copy_rewritten(dir: &Path, break_it: bool) -> Vec<PathBuf> {
    UNITS
        .iter()
        .map(|u| {
            let text = std::fs::read_to_string(units_dir().join(u)).unwrap();
            let mut text = text
                .replace("/usr/local/bin/npanel-agent", AGENT_BIN)
                .replace("/usr/local/bin/npanel-watchdog", WATCHDOG_BIN)
                .replace("/usr/local/bin/npanel ", "/bin/true ");
            if break_it {
                text = text.replace("Restart=on-failure", "Restart=sometimes\nNoSuchKey=1");
            }
            let p = dir.join(u);
            std::fs::write(&p, text).unwrap();
            p
        })
        .collect()
}

/// Runs verify; returns the output lines that mention one of our units.
fn verify(files: &[PathBuf]) -> Option<Vec<String>> {
    let tool = systemd_analyze()?;
    let out = Command::new(tool)
        .arg("verify")
        .args(files)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let ours: Vec<String> = text
        .lines()
        .filter(|l| UNITS.iter().any(|u| l.contains(u)))
        .map(str::to_owned)
        .collect();
    if !out.status.success() && ours.is_empty() {
        eprintln!("systemd-analyze verify failed without naming our units (environment?): {text}");
    }
    Some(if out.status.success() || !ours.is_empty() {
        ours
    } else {
        vec![text]
    })
}

#[test]
fn units_pass_systemd_analyze_verify() {
    if systemd_analyze().is_none() {
        eprintln!("SKIP units_pass_systemd_analyze_verify: systemd-analyze is not installed");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let files = copy_rewritten(tmp.path(), false);
    let complaints = verify(&files).unwrap();
    assert!(
        complaints.is_empty(),
        "systemd-analyze verify complained:\n{}",
        complaints.join("\n")
    );

    // the check can fail: a broken copy is caught
    let bad = tempfile::tempdir().unwrap();
    let files = copy_rewritten(bad.path(), true);
    let complaints = verify(&files).unwrap();
    assert!(
        complaints
            .iter()
            .any(|l| l.contains("NoSuchKey") || l.contains("Restart")),
        "broken units were not reported: {complaints:?}"
    );
}

#[test]
fn units_have_the_required_settings() {
    let read = |u: &str| std::fs::read_to_string(units_dir().join(u)).unwrap();
    let agent = read("npanel-agent.service");
    let section = |text: &str, name: &str| -> String {
        let start = text.find(&format!("[{name}]")).unwrap();
        let rest = &text[start + name.len() + 2..];
        rest[..rest.find("\n[").unwrap_or(rest.len())].to_string()
    };
    let unit = section(&agent, "Unit");
    let service = section(&agent, "Service");
    assert!(unit.contains("StartLimitIntervalSec=") && unit.contains("StartLimitBurst="));
    for k in [
        "Type=notify",
        "WatchdogSec=",
        "Restart=on-failure",
        "ExecStart=/usr/local/bin/npanel-agent",
    ] {
        assert!(service.contains(k), "npanel-agent.service lacks {k}");
    }
    let wd = read("npanel-watchdog.service");
    assert!(wd.contains("ExecStart=/usr/local/bin/npanel-watchdog"));
    assert!(wd.contains("RestartPreventExitStatus=1"));
    assert!(read("npanel.service").contains("ExecStart=/usr/local/bin/npanel serve"));
}
