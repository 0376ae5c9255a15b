//! The cgroup manager on a plain directory tree shaped like cgroupfs, the
//! stand-in for controllers this host lacks. A thread plays the kernel where
//! a file has to change on its own (`frozen 1`); the kill fallback signals
//! real processes.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use agent::cgroup::{parse_mounts, CgroupManager};
use agent::config::Fallback;
use agent::protocol::{Enforcement, KillMethod, LimitKind, Limits};
use agent::{AccountName, AgentError};
use common::*;

fn acct(s: &str) -> AccountName {
    AccountName::parse(s).unwrap()
}

fn manager(root: &Path) -> CgroupManager {
    CgroupManager::open_with_mounts(root, &[], Ok((8, 0)), Fallback::default())
}

/// A temp dir holding a fake cgroup root `cg` with every controller, and its
/// manager. Keep the `TempDir` alive for the test.
fn fake_tree() -> (tempfile::TempDir, PathBuf, CgroupManager) {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("cg");
    fake_cgroup_root(&root);
    let m = manager(&root);
    (tmp, root, m)
}

#[test]
fn detects_controllers_and_falls_back_per_limit() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("npanel.slice");
    std::fs::create_dir(&root).unwrap();
    // only cpu and pids handed down; no freezer, no cgroup.kill
    std::fs::write(root.join("cgroup.controllers"), "cpu pids\n").unwrap();
    std::fs::write(root.join("cgroup.subtree_control"), "cpu pids\n").unwrap();
    let m = CgroupManager::open_with_mounts(
        &root,
        &[],
        Err("no disk".into()),
        Fallback { cpu_seconds: 7 },
    );
    let caps = m.capabilities();
    assert_eq!(caps.controllers, vec!["cpu", "pids"]);
    assert_eq!(caps.enforcement(LimitKind::Cpu), Enforcement::Cgroup);
    assert_eq!(caps.enforcement(LimitKind::Pids), Enforcement::Cgroup);
    assert_eq!(caps.enforcement(LimitKind::Memory), Enforcement::Rlimit);
    assert_eq!(caps.enforcement(LimitKind::Io), Enforcement::None);
    assert!(!caps.freeze && !caps.cgroup_kill);
    assert!(
        caps.notes
            .iter()
            .any(|n| n.contains("controller memory is not available")),
        "{:?}",
        caps.notes
    );
    assert!(caps
        .notes
        .iter()
        .any(|n| n.contains("io.max cannot be applied: no disk")));

    let report = m.apply_limits(&acct("alice"), &Limits::default()).unwrap();
    let by = |k| report.applied.iter().find(|a| a.kind == k).unwrap();
    assert_eq!(by(LimitKind::Memory).value, "RLIMIT_AS=536870912");
    assert_eq!(by(LimitKind::Memory).enforcement, Enforcement::Rlimit);
    assert_eq!(by(LimitKind::Io).enforcement, Enforcement::None);
    assert_eq!(by(LimitKind::Pids).read_back.as_deref(), Some("256"));
    let dir = root.join("alice");
    assert!(dir.join("cpu.max").exists() && dir.join("pids.max").exists());
    assert!(
        !dir.join("memory.max").exists(),
        "memory.max written without the controller"
    );
    assert!(!dir.join("io.max").exists());
    let plan = m.rlimit_plan(&Limits::default());
    assert_eq!(plan.address_space, Some(536_870_912));
    assert_eq!(plan.nproc, None);
    assert_eq!(plan.cpu_seconds, None);

    // freeze needs cgroup.freeze
    let e = m
        .freeze(&acct("alice"), Duration::from_millis(50))
        .unwrap_err();
    assert!(matches!(e, AgentError::Unsupported(_)), "{e}");
}

#[test]
fn a_root_on_a_cgroup2_mount_is_reported_as_such() {
    let tmp = tempfile::tempdir().unwrap();
    let mount = tmp.path().join("unified");
    let root = mount.join("npanel.slice");
    std::fs::create_dir_all(&root).unwrap();
    let mounts = parse_mounts(&format!("cgroup2 {} cgroup2 rw 0 0\n", mount.display()));
    let m = CgroupManager::open_with_mounts(&root, &mounts, Ok((8, 0)), Fallback::default());
    assert_eq!(
        m.capabilities().cgroup2_mount.as_deref(),
        Some(mount.to_str().unwrap())
    );
    assert!(!m.is_plain_tree());
    // no controllers in the (empty) files: everything falls back
    assert!(m.capabilities().controllers.is_empty());
    assert_eq!(
        m.capabilities().enforcement(LimitKind::Pids),
        Enforcement::Rlimit
    );
}

#[test]
fn unusable_root_is_reported_and_limits_fall_back() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("missing-parent/npanel.slice");
    let m = manager(&root);
    assert!(!m.capabilities().cgroup_usable);
    assert!(m
        .capabilities()
        .notes
        .iter()
        .any(|n| n.contains("cannot create cgroup root")));
    let r = m.apply_limits(&acct("a"), &Limits::default()).unwrap();
    assert!(r
        .applied
        .iter()
        .all(|a| a.enforcement != Enforcement::Cgroup));
    assert!(!root.exists());
}

#[test]
fn freeze_waits_for_frozen_1_and_thaw_for_frozen_0() {
    let (_tmp, root, m) = fake_tree();
    let dir = root.join("alice");
    fake_account_cgroup(&dir, true, true);
    // the "kernel": reflect cgroup.freeze into cgroup.events after 150 ms
    let d = dir.clone();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let kernel = std::thread::spawn(move || {
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
            let want = std::fs::read_to_string(d.join("cgroup.freeze")).unwrap_or_default();
            let want = want.trim() == "1";
            let events = std::fs::read_to_string(d.join("cgroup.events")).unwrap_or_default();
            let is = events.contains("frozen 1");
            if want != is {
                std::thread::sleep(Duration::from_millis(150));
                std::fs::write(
                    d.join("cgroup.events"),
                    format!("populated 1\nfrozen {}\n", u8::from(want)),
                )
                .unwrap();
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    });
    let t0 = Instant::now();
    m.freeze(&acct("alice"), Duration::from_secs(3)).unwrap();
    assert!(
        t0.elapsed() >= Duration::from_millis(140),
        "freeze returned before frozen 1"
    );
    assert_eq!(m.usage(&acct("alice")).unwrap().frozen, Some(true));
    m.thaw(&acct("alice"), Duration::from_secs(3)).unwrap();
    assert_eq!(m.usage(&acct("alice")).unwrap().frozen, Some(false));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    kernel.join().unwrap();

    // no kernel: the deadline passes, it thaws again and says so
    let t0 = Instant::now();
    let e = m
        .freeze(&acct("alice"), Duration::from_millis(200))
        .unwrap_err();
    assert!(matches!(e, AgentError::Timeout(_)), "{e}");
    assert!(t0.elapsed() >= Duration::from_millis(200));
    assert_eq!(
        std::fs::read_to_string(dir.join("cgroup.freeze")).unwrap(),
        "0"
    );
    // unknown account
    assert!(matches!(
        m.freeze(&acct("bob"), Duration::from_millis(10)),
        Err(AgentError::NotFound { .. })
    ));
}

#[test]
fn kill_falls_back_to_sigkill_of_every_pid_in_cgroup_procs() {
    let (_tmp, root, m) = fake_tree();
    let dir = root.join("alice");
    fake_account_cgroup(&dir, true, false); // no cgroup.kill
    std::fs::create_dir(dir.join("job1")).unwrap();
    let mut kids: Vec<_> = (0..3)
        .map(|_| {
            Command::new("sleep")
                .arg("30")
                .stdout(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    std::fs::write(
        dir.join("cgroup.procs"),
        format!("{}\n{}\n", kids[0].id(), kids[1].id()),
    )
    .unwrap();
    std::fs::write(dir.join("job1/cgroup.procs"), format!("{}\n", kids[2].id())).unwrap();
    let (method, n, _) = m.kill(&acct("alice"), Duration::from_secs(2)).unwrap();
    assert_eq!(method, KillMethod::Sigkill);
    assert_eq!(n, 3);
    for k in kids.iter_mut() {
        let st = k.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(st.signal(), Some(9), "{st:?}");
    }
}

#[test]
fn kill_uses_cgroup_kill_where_present() {
    let (_tmp, root, m) = fake_tree();
    let dir = root.join("alice");
    fake_account_cgroup(&dir, false, true);
    let (method, n, emptied) = m.kill(&acct("alice"), Duration::from_millis(200)).unwrap();
    assert_eq!((method, n, emptied), (KillMethod::CgroupKill, 0, true));
    assert_eq!(
        std::fs::read_to_string(dir.join("cgroup.kill")).unwrap(),
        "1"
    );
}

#[test]
fn remove_waits_for_populated_0() {
    let (_tmp, root, m) = fake_tree();
    let dir = root.join("alice");
    fake_account_cgroup(&dir, true, true);
    std::fs::create_dir(dir.join("child")).unwrap();
    let e = m
        .remove(&acct("alice"), Duration::from_millis(100))
        .unwrap_err();
    assert!(matches!(e, AgentError::Busy(_)), "{e}");
    assert!(dir.exists());
    // processes exit 100 ms into the wait
    let d = dir.clone();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        std::fs::write(d.join("cgroup.events"), "populated 0\nfrozen 0\n").unwrap();
    });
    assert!(m.remove(&acct("alice"), Duration::from_secs(2)).unwrap());
    t.join().unwrap();
    assert!(!dir.exists());
    assert!(!m.remove(&acct("alice"), Duration::from_millis(10)).unwrap());
    assert!(root.exists(), "the root itself must stay");
}

#[test]
fn memory_read_back_allows_kernel_page_rounding_but_not_other_values() {
    let (_tmp, root, m) = fake_tree();
    // 1 MiB + 100 bytes: a plain file keeps it exactly; accepted
    let l = Limits {
        memory_max: (1 << 20) + 100,
        ..Limits::default()
    };
    m.apply_limits(&acct("a"), &l).unwrap();
    // a file that reads back something else is a mismatch
    let dir = root.join("a");
    std::fs::remove_file(dir.join("cpu.max")).unwrap();
    std::os::unix::fs::symlink("/dev/null", dir.join("cpu.max")).unwrap();
    match m.apply_limits(&acct("a"), &l) {
        Err(AgentError::VerifyMismatch { file, wrote, read }) => {
            assert!(file.ends_with("cpu.max"));
            assert_eq!(wrote, "50000 100000");
            assert_eq!(read, "");
        }
        other => panic!("expected a mismatch, got {other:?}"),
    }
}
