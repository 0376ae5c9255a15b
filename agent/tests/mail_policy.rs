//! Per-account mail limits (`write_mail_policy`, `remove_mail_policy`) on a temp `host.root`:
//! the files and their content, idempotency, symlinks never followed, the atomic swap, a
//! config Exim rejects refused with the old files kept, the graceful reload, and — with Exim
//! installed — `exim -bV` accepting the generated ACL and an `exim -bh` session as the account
//! answered `452` once it is over its hourly limit.
//!
//! The tests that need Exim print a SKIP line without it, except as root or with `CI` set
//! (CI runs as root and `.ci/run` installs `exim4-daemon-light`), where they fail.

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use agent::mailpolicy::{self, MailPolicy};
use agent::{AccountName, AgentConfig, Domain, ErrorCode, LocalHost};

fn acct(s: &str) -> AccountName {
    AccountName::parse(s).unwrap()
}

fn dom(s: &str) -> Domain {
    Domain::parse(s).unwrap()
}

fn tiny() -> MailPolicy {
    MailPolicy {
        per_hour: 2,
        burst_per_15min: 2,
        mb_per_hour: 5,
        max_connections: 3,
    }
}

/// A host root with a fake cgroup root beside it, and `exim` as the `[mail] exim` setting.
fn host(dir: &Path, exim: &str) -> LocalHost {
    host_with(dir, |c| c.mail.exim = exim.into())
}

fn host_with(dir: &Path, f: impl FnOnce(&mut AgentConfig)) -> LocalHost {
    common::fake_cgroup_root(&dir.join("cg"));
    let mut c = AgentConfig::embedded(dir.join("root"));
    c.cgroup_root = dir.join("cg");
    std::fs::create_dir_all(&c.host.root).unwrap();
    f(&mut c);
    LocalHost::with_config(c).unwrap()
}

fn npanel(dir: &Path) -> PathBuf {
    dir.join("root").join(mailpolicy::NPANEL_DIR)
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Every name in the directory (candidates left behind would show up here).
fn names(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

/// Exim's binary, or `None` after a SKIP line; a failure as root or in CI.
fn exim_or_skip(test: &str) -> Option<PathBuf> {
    let cfg = AgentConfig::default();
    match mailpolicy::find_exim(&cfg) {
        Ok(p) => Some(p),
        Err(why) => {
            let required = nix::unistd::geteuid().is_root()
                || std::env::var("CI").is_ok_and(|v| !v.is_empty());
            assert!(
                !required,
                "{test}: Exim is required here (root or CI): {why}; install exim4-daemon-light (.ci/run does)"
            );
            eprintln!("SKIP {test}: {why}");
            None
        }
    }
}

#[tokio::test]
async fn files_content_idempotency_and_removal() {
    let tmp = tempfile::tempdir().unwrap();
    let h = host(tmp.path(), "none");
    let alice = acct("alice");
    let r = h
        .write_mail_policy(
            &alice,
            tiny(),
            vec![dom("alice.example"), dom("shop.example")],
        )
        .await
        .unwrap();
    assert!(r.changed);
    assert!(!r.validated);
    assert!(r.validation.contains("none"), "{}", r.validation);
    assert!(!r.reloaded);
    assert!(r.reload.contains("no Exim daemon"), "{}", r.reload);
    assert_eq!(r.policy, Some(tiny()));
    assert_eq!(r.accounts, 1);
    let dir = npanel(tmp.path());
    let policy = read(&dir.join("policies/alice.conf"));
    assert_eq!(
        policy,
        "# npanel mail policy, written by npanel-agent: edits here are overwritten\n\
         account = alice\nper_hour = 2\nburst_per_15min = 2\nmb_per_hour = 5\nmax_connections = 3\n\
         domains = alice.example shop.example\n"
    );
    assert_eq!(
        r.path,
        dir.join("policies/alice.conf").display().to_string()
    );
    let acl = read(&dir.join(mailpolicy::ACL_FILE));
    assert_eq!(
        r.acl_path,
        dir.join(mailpolicy::ACL_FILE).display().to_string()
    );
    for want in [
        "npanel_ratelimit_rcpt:",
        "npanel_ratelimit_data:",
        "set acl_m_npanel_sender = ${lc:$authenticated_id}",
        "{eq{$acl_m_npanel_sender}{alice}}",
        "{alice.example : shop.example}",
        "set acl_m_npanel_account = alice",
        "set acl_m_npanel_per_hour = 2\n",
        "set acl_m_npanel_burst = 2\n",
        "set acl_m_npanel_mb = 5\n",
        "ratelimit = $acl_m_npanel_per_hour / 1h / per_rcpt / npanel_$acl_m_npanel_account",
        "ratelimit = $acl_m_npanel_burst / 15m / per_rcpt / npanel_$acl_m_npanel_account",
        "ratelimit = ${acl_m_npanel_mb}M / 1h / per_byte / npanel_$acl_m_npanel_account",
        "message = 452 4.5.3 Hourly sending limit of account $acl_m_npanel_account",
    ] {
        assert!(acl.contains(want), "{want:?} missing in\n{acl}");
    }
    assert_eq!(
        std::fs::metadata(dir.join(mailpolicy::ACL_FILE))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777,
        0o644
    );

    // The same again: nothing written, nothing reloaded.
    let again = h
        .write_mail_policy(
            &alice,
            tiny(),
            vec![dom("shop.example"), dom("alice.example")],
        )
        .await
        .unwrap();
    assert!(!again.changed, "{again:?}");
    assert_eq!(again.reload, "not needed: nothing changed");

    // A second account with the defaults: both in the one ACL, alice first.
    let bob = acct("bob");
    let r = h
        .write_mail_policy(&bob, MailPolicy::default(), vec![])
        .await
        .unwrap();
    assert_eq!(r.accounts, 2);
    let acl = read(&dir.join(mailpolicy::ACL_FILE));
    let (a, b) = (
        acl.find("npanel_account = alice").unwrap(),
        acl.find("npanel_account = bob").unwrap(),
    );
    assert!(a < b);
    assert!(acl.contains("set acl_m_npanel_per_hour = 500\n"));
    assert_eq!(
        names(&dir),
        [".lock", "acl_ratelimit.conf", "policies"]
            .map(String::from)
            .into()
    );

    // Remove bob: his file and stanza go, alice's stay; removing again is fine.
    let r = h.remove_mail_policy(&bob).await.unwrap();
    assert!(r.changed);
    assert_eq!(r.policy, None);
    assert_eq!(r.accounts, 1);
    assert!(!dir.join("policies/bob.conf").exists());
    let acl = read(&dir.join(mailpolicy::ACL_FILE));
    assert!(!acl.contains("bob"), "{acl}");
    assert!(acl.contains("npanel_account = alice"));
    let r = h.remove_mail_policy(&bob).await.unwrap();
    assert!(!r.changed);

    // The last one removed: the ACL stays valid and names nobody.
    h.remove_mail_policy(&alice).await.unwrap();
    let acl = read(&dir.join(mailpolicy::ACL_FILE));
    assert!(!acl.contains("set acl_m_npanel_account"), "{acl}");
    assert!(acl.contains("npanel_ratelimit_rcpt:"));
    assert_eq!(names(&dir.join("policies")), BTreeSet::new());
}

#[tokio::test]
async fn bad_values_are_refused_with_the_field_named() {
    let tmp = tempfile::tempdir().unwrap();
    let h = host(tmp.path(), "none");
    let mut p = tiny();
    p.per_hour = 0;
    let e = h
        .write_mail_policy(&acct("alice"), p, vec![])
        .await
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::InvalidRequest);
    assert!(e.to_string().contains("per_hour is 0"), "{e}");
    p = tiny();
    p.burst_per_15min = 3;
    let e = h
        .write_mail_policy(&acct("alice"), p, vec![])
        .await
        .unwrap_err();
    assert!(e.to_string().contains("must not exceed per_hour"), "{e}");
    assert!(!npanel(tmp.path()).join("policies/alice.conf").exists());

    // A hand-edited policy file stops the next write with a message naming it.
    let h2 = host(tmp.path(), "none");
    h2.write_mail_policy(&acct("alice"), tiny(), vec![])
        .await
        .unwrap();
    let f = npanel(tmp.path()).join("policies/alice.conf");
    std::fs::write(&f, read(&f).replace("per_hour = 2", "per_hour = lots")).unwrap();
    let e = h2
        .write_mail_policy(&acct("bob"), tiny(), vec![])
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("alice.conf: per_hour is not a number"),
        "{e}"
    );
}

#[tokio::test]
async fn symlinks_are_never_followed() {
    let tmp = tempfile::tempdir().unwrap();
    let h = host(tmp.path(), "none");
    let outside = tmp.path().join("outside.txt");
    std::fs::write(&outside, "precious\n").unwrap();
    let dir = npanel(tmp.path());
    std::fs::create_dir_all(dir.join("policies")).unwrap();
    // The live ACL as a symlink: replaced by a file, its target untouched.
    std::os::unix::fs::symlink(&outside, dir.join(mailpolicy::ACL_FILE)).unwrap();
    h.write_mail_policy(&acct("alice"), tiny(), vec![])
        .await
        .unwrap();
    let m = std::fs::symlink_metadata(dir.join(mailpolicy::ACL_FILE)).unwrap();
    assert!(m.file_type().is_file());
    assert_eq!(read(&outside), "precious\n");
    // A policy file as a symlink: refused, not read, not written through.
    std::os::unix::fs::symlink(&outside, dir.join("policies/bob.conf")).unwrap();
    let e = h
        .write_mail_policy(&acct("bob"), tiny(), vec![])
        .await
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::UnsafePath, "{e}");
    assert_eq!(read(&outside), "precious\n");
    // The policies directory as a symlink: refused.
    std::fs::remove_file(dir.join("policies/bob.conf")).unwrap();
    std::fs::remove_dir_all(dir.join("policies")).unwrap();
    std::fs::create_dir(tmp.path().join("elsewhere")).unwrap();
    std::os::unix::fs::symlink(tmp.path().join("elsewhere"), dir.join("policies")).unwrap();
    let e = h
        .write_mail_policy(&acct("alice"), tiny(), vec![])
        .await
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::UnsafePath, "{e}");
    assert_eq!(names(&tmp.path().join("elsewhere")), BTreeSet::new());
}

/// A stand-in `exim` that records its arguments and the ACL its config includes, and exits
/// with `code` (printing a complaint like Exim's when it fails).
fn fake_exim(dir: &Path, code: i32) -> PathBuf {
    let p = dir.join(format!("fake-exim-{code}"));
    let log = dir.join("fake-exim.log");
    std::fs::write(
        &p,
        format!(
            "#!/bin/sh\n\
             echo \"args: $*\" >> {log}\n\
             acl=$(sed -n 's/^\\.include //p' \"$3\")\n\
             cat \"$acl\" >> {log}\n\
             if [ {code} -ne 0 ]; then\n\
               echo 'Exim configuration error in line 7 of candidate:' >&2\n\
               echo '  error in ACL: unknown ACL condition/modifier' >&2\n\
             fi\n\
             exit {code}\n",
            log = log.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

#[tokio::test]
async fn a_config_exim_rejects_is_refused_and_the_old_files_stay() {
    let tmp = tempfile::tempdir().unwrap();
    let ok = fake_exim(tmp.path(), 0);
    let bad = fake_exim(tmp.path(), 1);
    let good = host(tmp.path(), ok.to_str().unwrap());
    let r = good
        .write_mail_policy(&acct("alice"), tiny(), vec![])
        .await
        .unwrap();
    assert!(r.validated, "{r:?}");
    assert!(r.validation.contains("accepted"), "{}", r.validation);
    // Exim was asked about the candidate, which already held the new values.
    let log = read(&tmp.path().join("fake-exim.log"));
    assert!(log.contains("args: -bV -C "), "{log}");
    assert!(log.contains("set acl_m_npanel_per_hour = 2"), "{log}");
    let dir = npanel(tmp.path());
    let (policy_before, acl_before) = (
        read(&dir.join("policies/alice.conf")),
        read(&dir.join(mailpolicy::ACL_FILE)),
    );

    let refusing = host(tmp.path(), bad.to_str().unwrap());
    let mut p = tiny();
    p.per_hour = 3;
    let e = refusing
        .write_mail_policy(&acct("alice"), p, vec![])
        .await
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::ConfigRejected, "{e}");
    let msg = e.to_string();
    assert!(msg.contains("refused the config (exit 1)"), "{msg}");
    assert!(msg.contains("unknown ACL condition/modifier"), "{msg}");
    assert!(msg.contains("nothing was changed"), "{msg}");
    // Old files as they were, no candidate left behind; a new account is refused the same way.
    assert_eq!(read(&dir.join("policies/alice.conf")), policy_before);
    assert_eq!(read(&dir.join(mailpolicy::ACL_FILE)), acl_before);
    let e = refusing
        .write_mail_policy(&acct("bob"), tiny(), vec![])
        .await
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::ConfigRejected);
    assert!(!dir.join("policies/bob.conf").exists());
    assert_eq!(
        names(&dir),
        [".lock", "acl_ratelimit.conf", "policies"]
            .map(String::from)
            .into()
    );
    // Accepted again: the change lands.
    let r = good
        .write_mail_policy(&acct("alice"), p, vec![])
        .await
        .unwrap();
    assert!(r.changed && r.validated);
    assert!(read(&dir.join(mailpolicy::ACL_FILE)).contains("npanel_per_hour = 3\n"));
}

/// Starts `argv[0]`-named copies of `sleep` (so `/proc/<pid>/comm` says `name`).
fn spawn_named(dir: &Path, name: &str) -> std::process::Child {
    let bin = dir.join(name);
    std::fs::copy("/bin/sleep", &bin).unwrap();
    // another test's fork may hold the copy open for writing until it execs: retry for
    // seconds, not a fixed count of short sleeps
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        match Command::new(&bin).arg("30").stdin(Stdio::null()).spawn() {
            Ok(c) => return c,
            Err(e) if e.raw_os_error() == Some(nix::libc::ETXTBSY) => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(e) => panic!("{e}"),
        }
    }
    panic!("{} stayed busy", bin.display());
}

#[tokio::test]
async fn a_change_sighups_the_running_exim_only() {
    use std::os::unix::process::ExitStatusExt;
    let tmp = tempfile::tempdir().unwrap();
    let pid_file = tmp.path().join("exim.pid");
    let h = host_with(tmp.path(), |c| {
        c.mail.exim = "none".into();
        c.mail.exim_pid_file = Some(pid_file.clone());
    });
    // Not Exim: left alone.
    let mut other = spawn_named(tmp.path(), "sleep");
    std::fs::write(&pid_file, format!("{}\n", other.id())).unwrap();
    let r = h
        .write_mail_policy(&acct("alice"), tiny(), vec![])
        .await
        .unwrap();
    assert!(!r.reloaded);
    assert!(r.reload.contains("not Exim; not signalled"), "{}", r.reload);
    assert!(
        other.try_wait().unwrap().is_none(),
        "the other process was signalled"
    );
    other.kill().unwrap();
    other.wait().unwrap();

    // An Exim daemon: SIGHUP (a `sleep` dies of it, which shows it arrived).
    let mut exim = spawn_named(tmp.path(), "exim4");
    std::fs::write(&pid_file, format!("{}\n", exim.id())).unwrap();
    let mut p = tiny();
    p.per_hour = 4;
    let r = h
        .write_mail_policy(&acct("alice"), p, vec![])
        .await
        .unwrap();
    assert!(r.reloaded, "{r:?}");
    assert!(r.reload.contains("SIGHUP sent to Exim"), "{}", r.reload);
    let st = exim.wait().unwrap();
    assert_eq!(st.signal(), Some(nix::libc::SIGHUP), "{st:?}");

    // Nothing changed: no signal. A stale pid file: skipped with the reason.
    let r = h
        .write_mail_policy(&acct("alice"), p, vec![])
        .await
        .unwrap();
    assert!(!r.reloaded && !r.changed);
    p.per_hour = 5;
    let r = h
        .write_mail_policy(&acct("alice"), p, vec![])
        .await
        .unwrap();
    assert!(r.reload.contains("stale pid file"), "{}", r.reload);
}

/// Runs one `exim -bh` SMTP session as `auth_id` against `config`; returns the server's lines.
fn smtp_session(exim: &Path, config: &Path, auth_id: Option<&str>, dialog: &[String]) -> String {
    let mut cmd = Command::new(exim);
    cmd.arg("-C").arg(config);
    if let Some(id) = auth_id {
        cmd.args(["-oMai", id]);
    }
    let mut child = cmd
        .args(["-bh", "203.0.113.5"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = String::new();
    for l in dialog {
        input.push_str(l);
        input.push_str("\r\n");
    }
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `n` messages with one recipient each.
fn messages(from: &str, n: usize) -> Vec<String> {
    let mut d = vec!["EHLO client.example".to_string()];
    for i in 0..n {
        d.push(format!("MAIL FROM:<{from}>"));
        d.push(format!("RCPT TO:<rcpt{i}@remote.example>"));
        d.push("RSET".into());
    }
    d.push("QUIT".into());
    d
}

/// The answers to the RCPT commands and to DATA's end (in order), a multi-line reply
/// (Exim wraps long ones: `452-…` then `452 …`) joined into one.
fn rcpt_answers(out: &str) -> Vec<String> {
    let mut answers = Vec::new();
    let mut pending = String::new();
    for l in out.lines() {
        if l.starts_with("452-") || l.starts_with("550-") {
            pending.push_str(&l[4..]);
            pending.push(' ');
        } else if l.starts_with("250 Accepted") || l.starts_with("452 ") || l.starts_with("550 ") {
            if pending.is_empty() {
                answers.push(l.to_string());
            } else {
                let rest = l[4..].trim_start_matches("4.5.3 ");
                answers.push(format!("{} {pending}{rest}", &l[..3]));
            }
            pending.clear();
        }
    }
    answers
}

#[tokio::test]
async fn with_exim_the_acl_validates_and_defers_the_account_over_its_limit_with_452() {
    let Some(exim) = exim_or_skip("with_exim_the_acl_validates_and_defers") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let h = host(tmp.path(), "auto");
    let r = h
        .write_mail_policy(&acct("alice"), tiny(), vec![dom("alice.example")])
        .await
        .unwrap();
    assert!(r.validated, "{r:?}");
    assert!(r.validation.contains("-bV accepted"), "{}", r.validation);
    h.write_mail_policy(&acct("bob"), MailPolicy::default(), vec![])
        .await
        .unwrap();

    // A main config like a real one: the live include, called from the RCPT and DATA ACLs.
    // -C makes Exim drop privileges, so its spool (hints database) must be open to it.
    let spool = tmp.path().join("spool");
    std::fs::create_dir(&spool).unwrap();
    std::fs::set_permissions(&spool, std::fs::Permissions::from_mode(0o777)).unwrap();
    let config = tmp.path().join("exim.conf");
    std::fs::write(
        &config,
        mailpolicy::harness_config(
            &mailpolicy::acl_path(&tmp.path().join("root")),
            Some(&spool),
        ),
    )
    .unwrap();

    // alice (2 per hour) sends three messages: the third is deferred with 452.
    let out = smtp_session(
        &exim,
        &config,
        Some("alice"),
        &messages("alice@alice.example", 3),
    );
    let answers = rcpt_answers(&out);
    assert_eq!(answers.len(), 3, "{out}");
    assert!(answers[0].starts_with("250 Accepted"), "{out}");
    assert!(answers[1].starts_with("250 Accepted"), "{out}");
    assert!(
        answers[2].starts_with("452 4.5.3 Hourly sending limit of account alice reached"),
        "{out}"
    );
    assert!(answers[2].contains("max 2"), "{out}");

    // A later session, logged in as one of alice's mailboxes: the same budget, still over.
    let out = smtp_session(
        &exim,
        &config,
        Some("info@alice.example"),
        &messages("info@alice.example", 1),
    );
    assert_eq!(rcpt_answers(&out).len(), 1, "{out}");
    assert!(rcpt_answers(&out)[0].starts_with("452 4.5.3"), "{out}");

    // carol may send 1 MB an hour: a 1.5 MB message is deferred after DATA.
    h.write_mail_policy(
        &acct("carol"),
        MailPolicy {
            mb_per_hour: 1,
            ..MailPolicy::default()
        },
        vec![],
    )
    .await
    .unwrap();
    let body = "x".repeat(75);
    let mut dialog = vec![
        "EHLO client.example".to_string(),
        "MAIL FROM:<carol@carol.example>".into(),
        "RCPT TO:<big@remote.example>".into(),
        "DATA".into(),
        "Subject: big".into(),
        String::new(),
    ];
    dialog.extend(std::iter::repeat_n(body, 20_000)); // 1.5 MB
    dialog.extend([".".to_string(), "QUIT".into()]);
    let out = smtp_session(&exim, &config, Some("carol"), &dialog);
    let answers = rcpt_answers(&out);
    assert_eq!(answers.len(), 2, "{out}");
    assert!(answers[0].starts_with("250 Accepted"), "{out}");
    assert!(
        answers[1].starts_with("452 4.5.3 Hourly volume limit of account carol reached"),
        "{out}"
    );
    assert!(answers[1].contains("max 1M"), "{out}");

    // bob (500 per hour) and a sender without a policy are not held back.
    let out = smtp_session(&exim, &config, Some("bob"), &messages("bob@bob.example", 3));
    assert!(
        rcpt_answers(&out).iter().all(|a| a.starts_with("250")),
        "{out}"
    );
    let out = smtp_session(&exim, &config, None, &messages("x@y.example", 3));
    assert!(
        rcpt_answers(&out).iter().all(|a| a.starts_with("250")),
        "{out}"
    );

    // Mail handed over without SMTP (`sendmail -t`, PHP's mail()) as dora (2 per hour): the
    // third message is refused by the non-SMTP ACL. (`-oMai` names the caller as a PHP
    // process running as dora would be named: Exim sets `$authenticated_id` to the caller.)
    h.write_mail_policy(&acct("dora"), tiny(), vec![dom("dora.example")])
        .await
        .unwrap();
    let mut codes = Vec::new();
    let mut last_err = String::new();
    for _ in 0..3 {
        let mut child = std::process::Command::new(&exim)
            .arg("-C")
            .arg(&config)
            .args([
                "-oMai",
                "dora",
                "-oep",
                "-odq",
                "-bm",
                "someone@remote.example",
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(b"Subject: from php\n\nhello\n")
            .unwrap();
        let out = child.wait_with_output().unwrap();
        codes.push(out.status.success());
        last_err = String::from_utf8_lossy(&out.stderr).into_owned()
            + &String::from_utf8_lossy(&out.stdout);
    }
    assert_eq!(codes, [true, true, false], "{last_err}");
    assert!(
        last_err.contains("Hourly sending limit of account dora"),
        "{last_err}"
    );
}

#[tokio::test]
async fn with_exim_a_main_config_exim_rejects_keeps_the_old_files() {
    let Some(_) = exim_or_skip("with_exim_a_main_config_exim_rejects_keeps_the_old_files") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let main = tmp.path().join("exim4.conf");
    // The real main config includes the live ACL; the agent checks it with the candidate.
    std::fs::write(
        &main,
        mailpolicy::harness_config(&mailpolicy::acl_path(&root), None),
    )
    .unwrap();
    let h = host_with(tmp.path(), |c| c.mail.exim_config = Some(main.clone()));
    let r = h
        .write_mail_policy(&acct("alice"), tiny(), vec![])
        .await
        .unwrap();
    assert!(r.validated, "{r:?}");
    assert!(
        r.validation.contains(&main.display().to_string()),
        "{}",
        r.validation
    );
    let dir = npanel(tmp.path());
    let acl_before = read(&dir.join(mailpolicy::ACL_FILE));

    // A main config that does not include the ACL would check nothing of it: the harness is.
    let other = tmp.path().join("other.conf");
    std::fs::write(&other, "primary_hostname = x.invalid\n").unwrap();
    let h2 = host_with(tmp.path(), |c| c.mail.exim_config = Some(other.clone()));
    let r = h2
        .write_mail_policy(&acct("alice"), tiny(), vec![])
        .await
        .unwrap();
    assert!(
        r.validation.contains("a harness config"),
        "{}",
        r.validation
    );
    assert!(
        r.validation.contains("does not include"),
        "{}",
        r.validation
    );

    // Someone breaks the main config: every change is refused until it is fixed.
    std::fs::write(&main, read(&main) + "  accept  frobnicate = yes\n").unwrap();
    let e = h
        .write_mail_policy(&acct("bob"), tiny(), vec![])
        .await
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::ConfigRejected, "{e}");
    assert!(e.to_string().contains("frobnicate"), "{e}");
    assert_eq!(read(&dir.join(mailpolicy::ACL_FILE)), acl_before);
    assert!(!dir.join("policies/bob.conf").exists());
    assert_eq!(
        names(&dir),
        [".lock", "acl_ratelimit.conf", "policies"]
            .map(String::from)
            .into()
    );
}

#[test]
fn the_agent_binary_serves_the_ops_over_its_socket() {
    let sb = common::Sandbox::new();
    let root = sb.path().join("root");
    std::fs::create_dir(&root).unwrap();
    sb.write_config(&format!(
        "[host]\nroot = {root:?}\nsystem_users = false\n[mail]\nexim = \"none\"\n"
    ));
    let _agent = common::AgentProc::start(&sb);
    let v = common::request(
        &sb.socket(),
        r#"{"v":1,"id":1,"op":"write_mail_policy","account":"alice","policy":{"per_hour":2,"burst_per_15min":1},"domains":["alice.example"]}"#,
    );
    assert_eq!(v["ok"]["type"], "mail_policy_written", "{v}");
    assert_eq!(v["ok"]["policy"]["per_hour"], 2);
    assert_eq!(
        v["ok"]["policy"]["mb_per_hour"], 50,
        "unset fields get the defaults"
    );
    assert_eq!(v["ok"]["validated"], false);
    assert!(root.join("etc/exim4/npanel/policies/alice.conf").is_file());
    for (line, code) in [
        (
            r#"{"v":1,"op":"write_mail_policy","account":"alice","policy":{"per_hour":0}}"#,
            "invalid_request",
        ),
        (
            r#"{"v":1,"op":"write_mail_policy","account":"alice","policy":{"per_day":9}}"#,
            "invalid_request",
        ),
        (
            r#"{"v":1,"op":"write_mail_policy","account":"../x","policy":{}}"#,
            "invalid_account",
        ),
    ] {
        let v = common::request(&sb.socket(), line);
        assert_eq!(v["error"]["code"], code, "{line}: {v}");
    }
    let v = common::request(
        &sb.socket(),
        r#"{"v":1,"op":"remove_mail_policy","account":"alice"}"#,
    );
    assert_eq!(v["ok"]["type"], "mail_policy_removed", "{v}");
    assert_eq!(v["ok"]["changed"], true);
    assert!(!root.join("etc/exim4/npanel/policies/alice.conf").exists());
}

/// An `exim -bh` session kept open: the test writes lines and reads answers one at a time.
struct OpenSession {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    lines: std::sync::mpsc::Receiver<String>,
}

impl OpenSession {
    fn start(exim: &Path, config: &Path, auth_id: &str) -> Self {
        let mut child = Command::new(exim)
            .arg("-C")
            .arg(config)
            .args(["-oMai", auth_id, "-bh", "203.0.113.9"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for l in std::io::BufReader::new(stdout).lines() {
                let Ok(l) = l else { return };
                if tx.send(l).is_err() {
                    return;
                }
            }
        });
        Self {
            child,
            stdin,
            lines,
        }
    }

    /// Sends `line` and returns the final line of its answer (`NNN ` …).
    fn say(&mut self, line: &str) -> String {
        self.stdin
            .write_all(format!("{line}\r\n").as_bytes())
            .unwrap();
        self.stdin.flush().unwrap();
        loop {
            let l = self
                .lines
                .recv_timeout(Duration::from_secs(20))
                .unwrap_or_else(|e| panic!("no answer to {line}: {e}"));
            if l.len() >= 4 && l.as_bytes()[3] == b' ' && l[..3].parse::<u16>().is_ok() {
                return l;
            }
        }
    }

    fn quit(mut self) {
        let _ = self.stdin.write_all(b"QUIT\r\n");
        drop(self.stdin);
        let _ = self.child.wait();
    }
}

// Multi-threaded: the test blocks on Exim while the counter answers it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_exim_connections_over_the_maximum_and_held_or_suspended_accounts_are_refused() {
    let Some(exim) = exim_or_skip("with_exim_connections_over_the_maximum") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let h = host(tmp.path(), "auto");
    let one_conn = MailPolicy {
        max_connections: 1,
        ..MailPolicy::default()
    };
    let r = h
        .write_mail_policy(&acct("erin"), one_conn, vec![dom("erin.example")])
        .await
        .unwrap();
    assert!(r.validated, "{r:?}");

    // The agent's connection counter, on the socket the ACL names.
    let cfg = h.state().config.clone();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let counter = agent::smtpconns::spawn(&cfg, shutdown.clone()).expect("counter bound");
    assert!(cfg.conn_socket().starts_with(tmp.path()));

    let spool = tmp.path().join("spool");
    std::fs::create_dir(&spool).unwrap();
    std::fs::set_permissions(&spool, std::fs::Permissions::from_mode(0o777)).unwrap();
    let config = tmp.path().join("exim.conf");
    std::fs::write(
        &config,
        mailpolicy::harness_config(
            &mailpolicy::acl_path(&tmp.path().join("root")),
            Some(&spool),
        ),
    )
    .unwrap();

    // Connection A, logged in as one of erin's mailboxes, holds erin's only slot.
    let mut a = OpenSession::start(&exim, &config, "info@erin.example");
    a.say("EHLO a.example");
    a.say("MAIL FROM:<info@erin.example>");
    let first = a.say("RCPT TO:<one@remote.example>");
    assert!(first.starts_with("250"), "{first}");
    // While A is open, connection B as erin is deferred at RCPT…
    let out = smtp_session(
        &exim,
        &config,
        Some("erin"),
        &messages("erin@erin.example", 1),
    );
    let answers = rcpt_answers(&out);
    assert_eq!(answers.len(), 1, "{out}");
    assert!(
        answers[0].starts_with("452 4.5.3 Too many simultaneous connections of account erin"),
        "{out}"
    );
    // …A itself goes on…
    let again = a.say("RCPT TO:<two@remote.example>");
    assert!(again.starts_with("250"), "{again}");
    // …and once A has gone, B's retry is accepted: nothing had to release the slot.
    a.quit();
    let out = smtp_session(
        &exim,
        &config,
        Some("erin"),
        &messages("erin@erin.example", 1),
    );
    assert!(rcpt_answers(&out)[0].starts_with("250"), "{out}");

    // The quota sweep held erin's mail (over its hourly limit for a whole hour): deferred.
    let held = h
        .call(agent::Request::SetMailHeld {
            account: acct("erin"),
            held: true,
        })
        .await
        .unwrap();
    assert!(
        matches!(held, agent::Reply::MailHeldSet { changed: true, .. }),
        "{held:?}"
    );
    let out = smtp_session(
        &exim,
        &config,
        Some("erin"),
        &messages("erin@erin.example", 1),
    );
    let answers = rcpt_answers(&out);
    assert!(
        answers[0].starts_with("452 4.5.3 Outgoing mail of account erin is paused"),
        "{out}"
    );
    h.call(agent::Request::SetMailHeld {
        account: acct("erin"),
        held: false,
    })
    .await
    .unwrap();
    let out = smtp_session(
        &exim,
        &config,
        Some("erin"),
        &messages("erin@erin.example", 1),
    );
    assert!(rcpt_answers(&out)[0].starts_with("250"), "lifted: {out}");

    // A suspended account's outgoing mail is refused outright.
    h.call(agent::Request::SetSuspended {
        account: acct("erin"),
        suspended: true,
    })
    .await
    .unwrap();
    let out = smtp_session(
        &exim,
        &config,
        Some("erin"),
        &messages("erin@erin.example", 1),
    );
    assert!(
        rcpt_answers(&out)[0].starts_with("550 5.7.1 Account erin is suspended"),
        "{out}"
    );

    // Without the counter, mail goes on (fail open).
    shutdown.cancel();
    counter.await.unwrap();
    h.call(agent::Request::SetSuspended {
        account: acct("erin"),
        suspended: false,
    })
    .await
    .unwrap();
    std::fs::remove_file(cfg.conn_socket()).ok();
    let mut a = OpenSession::start(&exim, &config, "erin");
    a.say("EHLO a.example");
    a.say("MAIL FROM:<erin@erin.example>");
    assert!(a.say("RCPT TO:<x@remote.example>").starts_with("250"));
    let out = smtp_session(
        &exim,
        &config,
        Some("erin"),
        &messages("erin@erin.example", 1),
    );
    assert!(rcpt_answers(&out)[0].starts_with("250"), "{out}");
    a.quit();
}
