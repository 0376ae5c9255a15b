//! The host operations of DESIGN §11 for real: through the `npanel-agent`
//! binary over its Unix socket on a temp `host.root`, and in-process through
//! `LocalHost` (the embedded default). Each operation twice (idempotency),
//! bad input, symlinks, backups read back entry by entry, and — as root —
//! real system users under a unique `npt…` name that a guard always deletes.

mod common;

use std::hash::{BuildHasher, Hasher};
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// A random lowercase suffix (no rand crate: the std hasher's random keys).
fn random_suffix(n: usize) -> String {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
    );
    h.write_u32(std::process::id());
    let mut x = h.finish();
    let alphabet = b"abcdefghijklmnopqrstuvwxyz0123456789";
    (0..n)
        .map(|_| {
            let c = alphabet[(x % 36) as usize] as char;
            x /= 36;
            c
        })
        .collect()
}

#[test]
fn pseudo_users_over_the_socket() {
    let sb = host_sandbox(false);
    let agent = AgentProc::start(&sb);
    let a = ok(&send(
        &agent,
        json!({"op": "create_user", "account": "alice"}),
    ))
    .clone();
    assert_eq!(a["type"], "user_created");
    assert_eq!(a["created"], true);
    assert_eq!(a["system_user"], false);
    let uid = a["uid"].as_u64().unwrap();
    assert!(uid >= 1000, "{a}");
    assert_eq!(a["gid"], a["uid"]);
    // twice: the same ids, created false
    let again = ok(&send(
        &agent,
        json!({"op": "create_user", "account": "alice"}),
    ))
    .clone();
    assert_eq!(
        (again["created"].clone(), again["uid"].clone()),
        (json!(false), json!(uid))
    );
    let b = ok(&send(
        &agent,
        json!({"op": "create_user", "account": "bob", "home_layout": true}),
    ))
    .clone();
    assert_ne!(b["uid"], a["uid"]);
    assert_eq!(
        b["home"]["path"],
        sb.home().join("bob").display().to_string()
    );
    assert!(sb.home().join("bob/public_html").is_dir(), "{b}");
    assert!(sb.home().join("bob/logs").is_dir());

    let reg = |sb: &Sandbox| -> Value {
        serde_json::from_str(
            &std::fs::read_to_string(sb.path().join("etc/npanel/pseudo-users.json")).unwrap(),
        )
        .unwrap()
    };
    for _ in 0..2 {
        let v = send(&agent, json!({"op": "lock_user", "account": "alice"}));
        assert_eq!(ok(&v)["type"], "user_locked");
        assert_eq!(reg(&sb)["users"]["alice"]["locked"], true);
    }
    for _ in 0..2 {
        ok(&send(
            &agent,
            json!({"op": "unlock_user", "account": "alice"}),
        ));
        assert_eq!(reg(&sb)["users"]["alice"]["locked"], false);
    }
    for _ in 0..2 {
        let v = send(
            &agent,
            json!({"op": "set_password", "account": "alice", "password": "Sup3r-Secret-Pw"}),
        );
        assert_eq!(ok(&v)["type"], "password_set");
    }
    let text = std::fs::read_to_string(sb.path().join("etc/npanel/pseudo-users.json")).unwrap();
    assert!(!text.contains("Sup3r-Secret-Pw"), "the password was stored");
    assert!(reg(&sb)["users"]["alice"]["password_set_at"].is_string());
    // bad passwords: refused, and the refusal does not echo them
    for bad in ["with:colon-XYZ", "with\nnewline-XYZ", "with\rcr-XYZ", ""] {
        let v = send(
            &agent,
            json!({"op": "set_password", "account": "alice", "password": bad}),
        );
        assert_eq!(error_code(&v), "invalid_request", "{v}");
        if !bad.is_empty() {
            assert!(!v.to_string().contains("XYZ"), "echoed: {v}");
        }
    }
    // unknown user
    let v = send(&agent, json!({"op": "lock_user", "account": "nobodyhere"}));
    assert_eq!(error_code(&v), "not_found");
    // delete twice; a new account never gets a deleted one's id
    let v = send(&agent, json!({"op": "delete_user", "account": "alice"}));
    assert_eq!(ok(&v)["existed"], true);
    let v = send(&agent, json!({"op": "delete_user", "account": "alice"}));
    assert_eq!(ok(&v)["existed"], false);
    let c = ok(&send(
        &agent,
        json!({"op": "create_user", "account": "alice"}),
    ))
    .clone();
    assert!(
        c["uid"].as_u64().unwrap() > b["uid"].as_u64().unwrap(),
        "{c}"
    );

    // the password never reaches the agent's log
    agent.signal(nix::sys::signal::Signal::SIGTERM);
    let (_, stderr) = agent.wait_exit(Duration::from_secs(5));
    assert!(!stderr.contains("Sup3r-Secret-Pw"), "{stderr}");
    assert!(!stderr.contains("XYZ"), "{stderr}");
}

#[test]
fn pseudo_ids_are_unique_under_concurrency() {
    let sb = host_sandbox(false);
    let agent = AgentProc::start(&sb);
    let handles: Vec<_> = (0..12)
        .map(|i| {
            let socket = agent.socket.clone();
            std::thread::spawn(move || {
                let v = request(
                    &socket,
                    &format!(r#"{{"v":1,"op":"create_user","account":"par{i}"}}"#),
                );
                ok(&v)["uid"].as_u64().unwrap()
            })
        })
        .collect();
    let mut ids: Vec<u64> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 12, "{ids:?}");
}

#[test]
fn build_home_layout_is_idempotent_and_refuses_symlinks() {
    let sb = host_sandbox(false);
    let agent = AgentProc::start(&sb);
    let build = |acct: &str, uid: u32, domain: &str| {
        send(
            &agent,
            json!({"op": "build_home", "account": acct, "uid": uid, "gid": uid, "domain": domain}),
        )
    };
    let v = build("carol", 4242, "Example.COM");
    let r = ok(&v).clone();
    assert_eq!(r["type"], "home_built");
    assert_eq!(r["owner_applied"], is_root());
    let created: Vec<String> = serde_json::from_value(r["created"].clone()).unwrap();
    let home = sb.home().join("carol");
    for (rel, m) in [
        (".", 0o750),
        ("public_html", 0o750),
        ("mail", 0o750),
        ("mail/example.com", 0o750),
        ("etc", 0o750),
        ("etc/example.com", 0o750),
        ("etc/example.com/passwd", 0o640),
        ("etc/example.com/shadow", 0o640),
        ("etc/example.com/quota", 0o640),
        ("tmp", 0o700),
        ("logs", 0o700),
    ] {
        let p = home.join(rel);
        assert_eq!(mode(&p), m, "{rel}");
        assert!(
            created.contains(&rel.to_string()),
            "{rel} not in {created:?}"
        );
        if is_root() {
            let md = std::fs::metadata(&p).unwrap();
            assert_eq!((md.uid(), md.gid()), (4242, 4242), "{rel}");
        }
    }
    assert!(
        home.join("etc/example.com/passwd")
            .metadata()
            .unwrap()
            .len()
            == 0
    );
    // twice: nothing created, content kept, modes restored
    std::fs::write(
        home.join("etc/example.com/passwd"),
        "info:x:4242:4242::/home/carol/mail/example.com/info:/usr/sbin/nologin\n",
    )
    .unwrap();
    std::fs::set_permissions(
        home.join("public_html"),
        std::fs::Permissions::from_mode(0o777),
    )
    .unwrap();
    let r = ok(&build("carol", 4242, "example.com")).clone();
    assert_eq!(r["created"], json!([]), "{r}");
    assert!(std::fs::read_to_string(home.join("etc/example.com/passwd"))
        .unwrap()
        .starts_with("info:"));
    assert_eq!(mode(&home.join("public_html")), 0o750);
    // a second domain adds its part only
    let r = ok(&build("carol", 4242, "second.example.org")).clone();
    assert_eq!(r["created"].as_array().unwrap().len(), 5, "{r}");

    // bad input
    for (acct, uid, domain, code) in [
        ("carol", 4242, "not_a_domain.com", "invalid_request"),
        ("carol", 4242, "..", "invalid_request"),
        ("carol", 4242, "a.b/../../etc", "invalid_request"),
        ("carol", 0, "example.com", "invalid_request"),
        ("carol", 999, "example.com", "invalid_request"),
        ("../x", 4242, "example.com", "invalid_account"),
    ] {
        let v = build(acct, uid, domain);
        assert_eq!(error_code(&v), code, "{acct} {uid} {domain}: {v}");
    }

    // a symlinked home is refused and its target untouched
    let outside = sb.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::set_permissions(&outside, std::fs::Permissions::from_mode(0o755)).unwrap();
    let before = std::fs::metadata(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, sb.home().join("mallory")).unwrap();
    let v = build("mallory", 4242, "example.com");
    assert_eq!(error_code(&v), "unsafe_path", "{v}");
    let after = std::fs::metadata(&outside).unwrap();
    assert_eq!((after.uid(), after.mode()), (before.uid(), before.mode()));
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);

    // a symlink inside the home (etc -> outside) is refused, not followed
    let dave = sb.home().join("dave");
    ok(&build("dave", 4343, "example.com"));
    std::fs::remove_dir_all(dave.join("mail")).unwrap();
    std::os::unix::fs::symlink(&outside, dave.join("mail")).unwrap();
    let v = build("dave", 4343, "example.com");
    assert_eq!(error_code(&v), "unsafe_path", "{v}");
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
    assert_eq!(std::fs::metadata(&outside).unwrap().uid(), before.uid());
    // a file planted as a symlink to a file outside
    std::fs::remove_file(dave.join("mail")).unwrap();
    std::fs::create_dir(dave.join("mail")).unwrap();
    let secret = sb.path().join("secret");
    std::fs::write(&secret, "s").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let shadow = dave.join("etc/example.com/shadow");
    std::fs::remove_file(&shadow).unwrap();
    std::os::unix::fs::symlink(&secret, &shadow).unwrap();
    let v = build("dave", 4343, "example.com");
    assert_eq!(error_code(&v), "unsafe_path", "{v}");
    assert_eq!(mode(&secret), 0o600);
    // ... or as a hard link
    std::fs::remove_file(&shadow).unwrap();
    std::fs::hard_link(&secret, &shadow).unwrap();
    let v = build("dave", 4343, "example.com");
    assert_eq!(error_code(&v), "unsafe_path", "{v}");
    assert_eq!(mode(&secret), 0o600);
    assert_eq!(std::fs::metadata(&secret).unwrap().uid(), before.uid());
    if is_root() {
        // someone else's home is never handed over
        let v = build("carol", 5555, "example.com");
        assert_eq!(error_code(&v), "busy", "{v}");
    }
}

#[test]
fn zones_are_written_atomically_and_only_when_changed() {
    let sb = host_sandbox(false);
    let agent = AgentProc::start(&sb);
    let write = |acct: &str, domain: &str, ip: &str| {
        send(
            &agent,
            json!({"op": "write_zone", "account": acct, "domain": domain, "ipv4": ip}),
        )
    };
    let r = ok(&write("erin", "erin-site.com", "192.0.2.10")).clone();
    assert_eq!(r["type"], "zone_written");
    assert_eq!(r["changed"], true);
    let path = sb.path().join("var/named/erin-site.com.db");
    assert_eq!(r["path"], path.display().to_string());
    let serial = r["serial"].as_u64().unwrap();
    let today: u64 = chrono::Utc::now()
        .format("%Y%m%d")
        .to_string()
        .parse()
        .unwrap();
    assert_eq!(serial, today * 100);
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(mode(&path), 0o644);
    for want in [
        "SOA\tns1.erin-site.com. hostmaster.erin-site.com.",
        &format!("{serial}\t; serial"),
        "IN\tNS\tns1.erin-site.com.",
        "@\t\tIN\tA\t192.0.2.10",
        "www\t\tIN\tA\t192.0.2.10",
        "mail\t\tIN\tA\t192.0.2.10",
        "IN\tMX\t10\tmail.erin-site.com.",
    ] {
        assert!(text.contains(want), "{want:?} not in\n{text}");
    }
    // twice: unchanged, same serial, no temp files left
    let r = ok(&write("erin", "erin-site.com", "192.0.2.10")).clone();
    assert_eq!(
        (r["changed"].clone(), r["serial"].clone()),
        (json!(false), json!(serial))
    );
    // a new address bumps the serial
    let r = ok(&write("erin", "erin-site.com", "192.0.2.11")).clone();
    assert_eq!(r["changed"], true);
    assert_eq!(r["serial"].as_u64().unwrap(), serial + 1);
    let names: Vec<_> = std::fs::read_dir(sb.path().join("var/named"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, vec!["erin-site.com.db".to_string()]);
    // named-checkzone agrees, where installed
    match Command::new("named-checkzone")
        .args(["erin-site.com"])
        .arg(&path)
        .output()
    {
        Ok(out) => assert!(
            out.status.success(),
            "named-checkzone: {}",
            String::from_utf8_lossy(&out.stdout)
        ),
        Err(_) => eprintln!("SKIP named-checkzone check: named-checkzone is not installed"),
    }
    // another account cannot take the domain, nor remove it
    let v = write("frank", "erin-site.com", "192.0.2.99");
    assert_eq!(error_code(&v), "busy", "{v}");
    let v = send(
        &agent,
        json!({"op": "remove_zone", "domain": "erin-site.com", "account": "frank"}),
    );
    assert_eq!(error_code(&v), "busy", "{v}");
    // a symlink in the zone's place is replaced, its target untouched
    let target = sb.path().join("target.txt");
    std::fs::write(&target, "keep").unwrap();
    std::os::unix::fs::symlink(&target, sb.path().join("var/named/linked.com.db")).unwrap();
    ok(&write("erin", "linked.com", "192.0.2.10"));
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");
    assert!(
        !std::fs::symlink_metadata(sb.path().join("var/named/linked.com.db"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    // bad domains
    for bad in [
        "erin",
        "-x.com",
        "x..com",
        "x.com.",
        "a_b.com",
        "1.2.3.4",
        "../../etc/passwd",
    ] {
        let v = write("erin", bad, "192.0.2.10");
        assert_eq!(error_code(&v), "invalid_request", "{bad}: {v}");
    }
    let v = write("erin", "ok.com", "999.1.1.1");
    assert_eq!(error_code(&v), "invalid_request", "{v}");
    let long = format!("{}.com", vec!["a".repeat(60); 5].join("."));
    assert!(long.len() > 253);
    assert_eq!(
        error_code(&write("erin", &long, "192.0.2.1")),
        "invalid_request"
    );
    // remove twice
    let v = send(
        &agent,
        json!({"op": "remove_zone", "domain": "erin-site.com", "account": "erin"}),
    );
    assert_eq!(ok(&v)["existed"], true);
    assert!(!path.exists());
    let v = send(
        &agent,
        json!({"op": "remove_zone", "domain": "erin-site.com"}),
    );
    assert_eq!(ok(&v)["existed"], false);
}

#[test]
fn security_fragments_and_suspended_flag() {
    let sb = host_sandbox(false);
    let agent = AgentProc::start(&sb);
    let dir = sb.path().join("etc/npanel/accounts/gina");
    let sec = |profile: &str, cron: Option<bool>| {
        let mut v = json!({"op": "write_security", "account": "gina", "profile": profile});
        if let Some(c) = cron {
            v["cron"] = json!(c);
        }
        send(&agent, v)
    };
    let r = ok(&sec("strict", None)).clone();
    assert_eq!(r["type"], "security_written");
    assert_eq!(r["changed"], true);
    assert_eq!(r["files"].as_array().unwrap().len(), 5);
    let policy = std::fs::read_to_string(dir.join("policy.conf")).unwrap();
    assert!(
        policy.contains("db_drop_privilege = no\n") && policy.contains("mail_open_relay = no\n"),
        "{policy}"
    );
    let php = std::fs::read_to_string(dir.join("php.ini")).unwrap();
    assert!(
        php.contains("disable_functions = \"exec,passthru,shell_exec,system,proc_open,popen"),
        "{php}"
    );
    assert!(php.contains("allow_url_fopen = Off"));
    assert!(php.contains(&format!(
        "open_basedir = \"{}/\"",
        sb.home().join("gina").display()
    )));
    let ssh = std::fs::read_to_string(dir.join("ssh.conf")).unwrap();
    assert!(ssh.contains("Match User gina\n"), "{ssh}");
    assert!(ssh.contains("PasswordAuthentication no"));
    assert_eq!(
        std::fs::read_to_string(dir.join("cron.allow")).unwrap(),
        "gina\n"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("profile")).unwrap(),
        "strict\n"
    );
    assert_eq!(mode(&dir.join("php.ini")), 0o644);
    // twice: nothing changes
    assert_eq!(ok(&sec("strict", None))["changed"], false);
    // another profile, no cron
    let r = ok(&sec("legacy", Some(false))).clone();
    assert_eq!(r["changed"], true);
    assert!(!dir.join("cron.allow").exists());
    let php = std::fs::read_to_string(dir.join("php.ini")).unwrap();
    assert!(php.contains("disable_functions = \"dl\""), "{php}");
    assert!(!php.contains("open_basedir"));
    assert!(std::fs::read_to_string(dir.join("ssh.conf"))
        .unwrap()
        .contains("PasswordAuthentication yes"));
    assert_eq!(ok(&sec("legacy", Some(false)))["changed"], false);
    ok(&sec("moderate", None));
    assert!(std::fs::read_to_string(dir.join("php.ini"))
        .unwrap()
        .contains("open_basedir = \""));
    let v = sec("paranoid", None);
    assert_eq!(error_code(&v), "invalid_request");
    // effective settings replace the template's values field by field, idempotently
    std::fs::create_dir_all(sb.home().join("gina")).unwrap();
    let with = |settings: serde_json::Value| {
        send(
            &agent,
            json!({"op": "write_security", "account": "gina", "profile": "strict", "settings": settings}),
        )
    };
    let custom = json!({"php_disable_functions": ["exec", "system"], "ssh_password_auth": true,
        "home_mode": "0711", "db_drop_privilege": true, "php_open_basedir": "off"});
    assert_eq!(ok(&with(custom.clone()))["changed"], true);
    let php = std::fs::read_to_string(dir.join("php.ini")).unwrap();
    assert!(
        php.contains("disable_functions = \"exec,system\"\n"),
        "{php}"
    );
    assert!(
        php.contains("allow_url_fopen = Off") && !php.contains("open_basedir"),
        "{php}"
    );
    assert!(std::fs::read_to_string(dir.join("ssh.conf"))
        .unwrap()
        .contains("PasswordAuthentication yes"));
    assert!(std::fs::read_to_string(dir.join("policy.conf"))
        .unwrap()
        .contains("db_drop_privilege = yes"));
    assert_eq!(mode(&sb.home().join("gina")), 0o711);
    assert_eq!(ok(&with(custom))["changed"], false);
    // a value that cannot go into a file safely, or an unknown setting, is refused
    let v = with(json!({"php_disable_functions": ["exec\"\nauto_prepend_file=/x"]}));
    assert_eq!(error_code(&v), "invalid_request", "{v}");
    let v = with(json!({"home_mode": "0777"}));
    assert_eq!(error_code(&v), "invalid_request", "{v}");
    let v = with(json!({"password_min_length": 8}));
    assert_eq!(error_code(&v), "invalid_request", "{v}");
    assert!(std::fs::read_to_string(dir.join("php.ini"))
        .unwrap()
        .contains("\"exec,system\""));
    // while the quota sweep holds the home read-only, its mode is the sweep's
    std::fs::write(dir.join("readonly.list"), "").unwrap();
    ok(&with(json!({})));
    assert_eq!(mode(&sb.home().join("gina")), 0o711);
    std::fs::remove_file(dir.join("readonly.list")).unwrap();
    assert_eq!(ok(&with(json!({})))["changed"], true);
    assert_eq!(mode(&sb.home().join("gina")), 0o750);
    // a symlinked account directory is refused
    let outside = sb.path().join("elsewhere");
    std::fs::create_dir(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, sb.path().join("etc/npanel/accounts/hank")).unwrap();
    let v = send(
        &agent,
        json!({"op": "write_security", "account": "hank", "profile": "strict"}),
    );
    assert_eq!(error_code(&v), "unsafe_path", "{v}");
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);

    // suspended flag: on twice, off twice
    let flag = dir.join("suspended");
    let s = |on: bool| {
        send(
            &agent,
            json!({"op": "set_suspended", "account": "gina", "suspended": on}),
        )
    };
    let r = ok(&s(true)).clone();
    assert_eq!(
        (r["type"].clone(), r["changed"].clone()),
        (json!("suspension_set"), json!(true))
    );
    assert_eq!(r["path"], flag.display().to_string());
    let first = std::fs::read_to_string(&flag).unwrap();
    assert!(first.starts_with("suspended_at="), "{first}");
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(ok(&s(true))["changed"], false);
    assert_eq!(
        std::fs::read_to_string(&flag).unwrap(),
        first,
        "the time was rewritten"
    );
    assert_eq!(ok(&s(false))["changed"], true);
    assert!(!flag.exists());
    assert_eq!(ok(&s(false))["changed"], false);
}

#[test]
fn quota_is_skipped_with_a_reason_without_system_users() {
    let sb = host_sandbox(false);
    let agent = AgentProc::start(&sb);
    for disk in [json!(1024), Value::Null] {
        let v = send(
            &agent,
            json!({"op": "set_quota", "account": "ivan", "disk_mb": disk}),
        );
        let r = ok(&v);
        assert_eq!(r["type"], "quota");
        assert_eq!(r["status"], "skipped");
        assert!(
            r["reason"]
                .as_str()
                .unwrap()
                .contains("system users are off"),
            "{r}"
        );
    }
}

/// The entries of a `.tar.zst`: (path, type, link target, content).
fn archive_entries(path: &Path) -> Vec<(String, tar::EntryType, Option<String>, Vec<u8>)> {
    let dec = zstd::stream::read::Decoder::new(std::fs::File::open(path).unwrap()).unwrap();
    let mut ar = tar::Archive::new(dec);
    ar.entries()
        .unwrap()
        .map(|e| {
            let mut e = e.unwrap();
            let p = e.path().unwrap().display().to_string();
            let t = e.header().entry_type();
            let l = e.link_name().unwrap().map(|l| l.display().to_string());
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            (p, t, l, data)
        })
        .collect()
}

#[test]
fn backup_keeps_symlinks_as_symlinks_and_remove_home_refuses_escapes() {
    let sb = host_sandbox(false);
    let agent = AgentProc::start(&sb);
    ok(&send(
        &agent,
        json!({"op": "build_home", "account": "jane", "uid": 4242, "gid": 4242, "domain": "jane.example"}),
    ));
    let home = sb.home().join("jane");
    std::fs::write(home.join("public_html/index.html"), "<h1>jane</h1>").unwrap();
    std::fs::create_dir_all(home.join("public_html/deep/er")).unwrap();
    std::fs::write(home.join("public_html/deep/er/big.bin"), vec![7u8; 300_000]).unwrap();
    // symlinks out of the home: a file and a directory
    let outside = sb.path().join("outside-secret");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("secret.txt"), "TOP-SECRET-OUTSIDE").unwrap();
    std::os::unix::fs::symlink(
        outside.join("secret.txt"),
        home.join("public_html/leak.txt"),
    )
    .unwrap();
    std::os::unix::fs::symlink(&outside, home.join("leakdir")).unwrap();
    std::os::unix::fs::symlink("index.html", home.join("public_html/alias.html")).unwrap();
    nix::unistd::mkfifo(
        &home.join("tmp/fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();

    let manifest = json!({"account": "jane", "files": 3});
    let r = ok(&send(
        &agent,
        json!({"op": "backup_home", "account": "jane", "manifest": manifest}),
    ))
    .clone();
    assert_eq!(r["type"], "home_backed_up");
    let path = PathBuf::from(r["path"].as_str().unwrap());
    assert!(path.starts_with(sb.path().join("backups")));
    let name = path.file_name().unwrap().to_str().unwrap().to_string();
    assert!(
        name.starts_with("jane-") && name.ends_with("Z.tar.zst"),
        "{name}"
    );
    assert_eq!(r["bytes"], std::fs::metadata(&path).unwrap().len());
    assert_eq!(mode(&path), 0o600);
    assert_eq!(r["symlinks"], 3);
    assert_eq!(r["files"], 5, "{r}"); // index.html, big.bin, passwd, shadow, quota
    assert_eq!(r["source_bytes"], 13 + 300_000);
    assert_eq!(r["skipped"], json!(["tmp/fifo (fifo)"]));

    let entries = archive_entries(&path);
    assert_eq!(entries[0].0, "manifest.json");
    let m: Value = serde_json::from_slice(&entries[0].3).unwrap();
    assert_eq!(m, manifest);
    let find = |p: &str| {
        entries
            .iter()
            .find(|e| e.0.trim_end_matches('/') == p)
            .unwrap_or_else(|| {
                panic!(
                    "{p} not in {:?}",
                    entries.iter().map(|e| &e.0).collect::<Vec<_>>()
                )
            })
    };
    let idx = find("homedir/public_html/index.html");
    assert_eq!(idx.1, tar::EntryType::Regular);
    assert_eq!(idx.3, b"<h1>jane</h1>");
    assert_eq!(find("homedir/public_html/deep/er/big.bin").3.len(), 300_000);
    let leak = find("homedir/public_html/leak.txt");
    assert_eq!(leak.1, tar::EntryType::Symlink);
    assert_eq!(
        leak.2.as_deref(),
        Some(outside.join("secret.txt").to_str().unwrap())
    );
    assert!(leak.3.is_empty());
    let leakdir = find("homedir/leakdir");
    assert_eq!(leakdir.1, tar::EntryType::Symlink);
    assert_eq!(
        find("homedir/public_html/alias.html").2.as_deref(),
        Some("index.html")
    );
    assert_eq!(find("homedir").1, tar::EntryType::Directory);
    for e in &entries {
        assert!(
            !e.0.contains("secret.txt") || e.1 == tar::EntryType::Symlink,
            "{}",
            e.0
        );
        assert!(
            !String::from_utf8_lossy(&e.3).contains("TOP-SECRET-OUTSIDE"),
            "{} leaked",
            e.0
        );
        assert!(!e.0.contains("fifo"));
    }
    if is_root() {
        // owners are in the headers
        let dec = zstd::stream::read::Decoder::new(std::fs::File::open(&path).unwrap()).unwrap();
        let mut ar = tar::Archive::new(dec);
        for e in ar.entries().unwrap() {
            let e = e.unwrap();
            let p = e.path().unwrap().display().to_string();
            let p = p.trim_end_matches('/');
            // the layout is the account's; what this test (root) wrote is root's
            let want = match p {
                "homedir" | "homedir/public_html" | "homedir/etc/jane.example/shadow" => 4242,
                "homedir/public_html/index.html" => 0,
                _ => continue,
            };
            assert_eq!(e.header().uid().unwrap(), want, "{p}");
            assert_eq!(e.header().gid().unwrap(), want, "{p}");
        }
    }
    // twice: a second, distinct archive (the first is never replaced)
    let r2 = ok(&send(
        &agent,
        json!({"op": "backup_home", "account": "jane"}),
    ))
    .clone();
    assert_ne!(r2["path"], r["path"]);
    assert!(path.exists());
    assert_eq!(
        archive_entries(Path::new(r2["path"].as_str().unwrap()))[0]
            .0
            .trim_end_matches('/'),
        "homedir"
    );
    let left: Vec<_> = std::fs::read_dir(sb.path().join("backups"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(left.len(), 2, "temp files left: {left:?}");
    // no home
    let v = send(&agent, json!({"op": "backup_home", "account": "nohome"}));
    assert_eq!(error_code(&v), "not_found");
    // a symlinked home is not archived
    std::os::unix::fs::symlink(&outside, sb.home().join("kate")).unwrap();
    let v = send(&agent, json!({"op": "backup_home", "account": "kate"}));
    assert_eq!(error_code(&v), "unsafe_path", "{v}");

    // remove_home: a symlink or a file in the home's place is refused
    let v = send(&agent, json!({"op": "remove_home", "account": "kate"}));
    assert_eq!(error_code(&v), "unsafe_path", "{v}");
    assert!(outside.join("secret.txt").exists());
    std::fs::write(sb.home().join("leo"), "a file").unwrap();
    let v = send(&agent, json!({"op": "remove_home", "account": "leo"}));
    assert_eq!(error_code(&v), "unsafe_path", "{v}");
    let v = send(&agent, json!({"op": "remove_home", "account": "../etc"}));
    assert_eq!(error_code(&v), "invalid_account", "{v}");
    // twice: removed (symlinks inside are removed, not followed), then absent
    let v = send(&agent, json!({"op": "remove_home", "account": "jane"}));
    assert_eq!(ok(&v)["existed"], true);
    assert!(!home.exists());
    assert_eq!(
        std::fs::read_to_string(outside.join("secret.txt")).unwrap(),
        "TOP-SECRET-OUTSIDE"
    );
    let v = send(&agent, json!({"op": "remove_home", "account": "jane"}));
    assert_eq!(ok(&v)["existed"], false);
    assert!(path.exists(), "remove_home removed a backup");
}

#[test]
fn typed_client_and_host_give_the_same_answers() {
    let _slice = REAL_SLICE.lock().unwrap_or_else(|p| p.into_inner());
    let sb = host_sandbox(false);
    let agent = AgentProc::start(&sb);
    let local_root = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let remote = agent::Host::from(agent::AgentClient::new(
            &agent.socket,
            Duration::from_secs(10),
        ));
        let local = agent::Host::from(agent::LocalHost::new(local_root.path()).unwrap());
        assert!(local.is_local() && !remote.is_local());
        let acct = agent::AccountName::parse("mona").unwrap();
        let domain = agent::Domain::parse("mona.example").unwrap();
        for host in [&remote, &local] {
            let u = host.create_user(&acct, false).await.unwrap();
            assert!(u.created && !u.system_user && u.uid >= 1000);
            let h = host.build_home(&acct, u.uid, u.gid, &domain).await.unwrap();
            assert!(Path::new(&h.path).join("etc/mona.example/quota").is_file());
            let z = host
                .write_zone(&acct, &domain, "192.0.2.5".parse().unwrap())
                .await
                .unwrap();
            assert!(z.changed);
            let s = host
                .write_security(&acct, agent::SecurityProfile::Strict, None)
                .await
                .unwrap();
            assert!(s.changed);
            assert!(host.set_suspended(&acct, true).await.unwrap());
            host.lock_user(&acct).await.unwrap();
            let pw = agent::Password::parse("An0ther-Secret").unwrap();
            host.set_password(&acct, &pw).await.unwrap();
            let q = host.set_quota(&acct, Some(100)).await.unwrap();
            assert_eq!(q.status, agent::protocol::QuotaStatus::Skipped);
            let b = host.backup_home(&acct, None).await.unwrap();
            assert!(b.bytes > 0 && b.files == 3);
            assert!(host.remove_home(&acct).await.unwrap());
            assert!(host.remove_zone(&domain, Some(&acct)).await.unwrap());
            assert!(host.delete_user(&acct).await.unwrap());
            // typed errors are the same on both sides
            let e = host.lock_user(&acct).await.unwrap_err();
            assert_eq!(e.code(), agent::ErrorCode::NotFound);
        }
        // the same request gives the same reply shape on both
        let req = agent::Request::WriteZone {
            account: acct.clone(),
            domain: domain.clone(),
            ipv4: "192.0.2.6".parse().unwrap(),
        };
        let a = serde_json::to_value(remote.call(req.clone()).await.unwrap()).unwrap();
        let b = serde_json::to_value(local.call(req).await.unwrap()).unwrap();
        assert_eq!(a["type"], b["type"]);
        assert_eq!(a["serial"], b["serial"]);
        // the embedded default's pseudo users live under its own root
        assert!(local_root
            .path()
            .join("etc/npanel/pseudo-users.json")
            .is_file());
        if let agent::Host::Local(l) = &local {
            remove_empty_slice(l);
        }
    });
}

/// The unprivileged half of `local_host_works_unprivileged`: runs in a child
/// process as `nobody` (it does nothing when started by the test runner).
#[test]
fn local_host_unprivileged_child() {
    let Ok(root) = std::env::var("NPANEL_TEST_UNPRIV_ROOT") else {
        return;
    };
    assert_ne!(nix::unistd::geteuid().as_raw(), 0, "must run unprivileged");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let host = agent::LocalHost::new(PathBuf::from(&root)).unwrap();
        println!("summary: {}", host.summary());
        let acct = agent::AccountName::parse("nora").unwrap();
        // cgroups: not writable as nobody -> skipped with a reason, limits report rlimits
        let f = host.freeze(&acct).await.unwrap();
        assert!(f.skipped().unwrap().contains("not writable"), "{f:?}");
        assert!(host.kill(&acct).await.unwrap().skipped().is_some());
        assert!(host.thaw(&acct).await.unwrap().skipped().is_some());
        assert!(host.remove(&acct).await.unwrap().skipped().is_some());
        assert!(host.usage(&acct).await.unwrap().skipped().is_some());
        let l = host.apply_limits(&acct, Default::default()).await.unwrap();
        assert!(l
            .applied
            .iter()
            .all(|a| a.enforcement != agent::protocol::Enforcement::Cgroup));
        // users and homes: pseudo ids, ownership left alone and said so
        let u = host.create_user(&acct, true).await.unwrap();
        let home = u.home.unwrap();
        assert!(!home.owner_applied);
        assert!(home.note.unwrap().contains("not running as root"));
        let d = agent::Domain::parse("nora.example").unwrap();
        let h = host.build_home(&acct, u.uid, u.gid, &d).await.unwrap();
        assert!(Path::new(&h.path).join("etc/nora.example/passwd").is_file());
        let h2 = host.build_home(&acct, u.uid, u.gid, &d).await.unwrap();
        assert!(h2.created.is_empty());
        host.write_zone(&acct, &d, "192.0.2.1".parse().unwrap())
            .await
            .unwrap();
        host.write_security(&acct, agent::SecurityProfile::Moderate, None)
            .await
            .unwrap();
        assert!(host.set_suspended(&acct, true).await.unwrap());
        host.lock_user(&acct).await.unwrap();
        let b = host.backup_home(&acct, None).await.unwrap();
        assert!(Path::new(&b.path).is_file());
        assert!(host.remove_home(&acct).await.unwrap());
        assert!(host.delete_user(&acct).await.unwrap());
        println!("UNPRIVILEGED-OK");
    });
}

#[test]
fn local_host_works_unprivileged() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("host");
    std::fs::create_dir(&root).unwrap();
    if !is_root() {
        // already unprivileged: run the scenario here
        std::env::set_var("NPANEL_TEST_UNPRIV_ROOT", &root);
        local_host_unprivileged_child();
        return;
    }
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::chown(&root, Some(65534), Some(65534)).unwrap();
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "local_host_unprivileged_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("NPANEL_TEST_UNPRIV_ROOT", &root)
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("UNPRIVILEGED-OK"), "{text}");
    assert!(text.contains("system users off"), "{text}");
}

/// Held by the tests that build a `LocalHost` as this user: as root that
/// opens the real `<cgroup2 mount>/npanel.slice`, which they remove when
/// empty, so they must not overlap.
static REAL_SLICE: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// As root, `LocalHost::new` opens (creating) `<cgroup2 mount>/npanel.slice`;
/// a test leaves no empty one behind (one with account cgroups stays).
fn remove_empty_slice(host: &agent::LocalHost) {
    let caps = host.state().cgroups.capabilities().clone();
    if caps.cgroup2_mount.is_some() {
        let _ = std::fs::remove_dir(&caps.cgroup_root);
    }
}

#[test]
fn local_host_as_this_user() {
    let _slice = REAL_SLICE.lock().unwrap_or_else(|p| p.into_inner());
    // whatever this process is: the embedded default never fails on cgroups
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let host = agent::LocalHost::new(dir.path()).unwrap();
        let acct = agent::AccountName::parse(&format!("npl{}", random_suffix(6))).unwrap();
        let l = host.apply_limits(&acct, Default::default()).await.unwrap();
        assert_eq!(l.applied.len(), 4);
        match host.freeze(&acct).await {
            Ok(agent::Outcome::Skipped(_)) => {}
            Ok(agent::Outcome::Done(())) => {
                host.thaw(&acct).await.unwrap();
            }
            // a real cgroup v2 without a freezer, or one that did not settle
            Err(e) => assert!(
                matches!(
                    e.code(),
                    agent::ErrorCode::Unsupported | agent::ErrorCode::Timeout
                ),
                "{e}"
            ),
        }
        // clean up a real cgroup if one was made (and the slice, if empty)
        let _ = host.remove(&acct).await;
        remove_empty_slice(&host);
        let pong = host.ping().await.unwrap();
        assert_eq!(pong.pid, std::process::id());
    });
}

fn shadow(user: &str) -> Vec<String> {
    std::fs::read_to_string("/etc/shadow")
        .unwrap()
        .lines()
        .find(|l| l.split(':').next() == Some(user))
        .unwrap_or_else(|| panic!("{user} not in /etc/shadow"))
        .split(':')
        .map(str::to_string)
        .collect()
}

fn passwd(user: &str) -> Option<String> {
    std::fs::read_to_string("/etc/passwd")
        .unwrap()
        .lines()
        .find(|l| l.split(':').next() == Some(user))
        .map(str::to_string)
}

#[test]
fn real_system_users_as_root() {
    if !is_root() {
        skip(
            "real_system_users_as_root",
            "needs root (useradd, /etc/shadow)",
        );
        return;
    }
    let name = format!("npt{}", random_suffix(6));
    let _guard = UserGuard(name.clone());
    let foreign = format!("{name}x");
    let _guard2 = UserGuard(foreign.clone());
    let sb = host_sandbox(true);
    let agent = AgentProc::start(&sb);

    let r = ok(&send(
        &agent,
        json!({"op": "create_user", "account": name, "home_layout": true}),
    ))
    .clone();
    assert_eq!(
        (r["created"].clone(), r["system_user"].clone()),
        (json!(true), json!(true)),
        "{r}"
    );
    let uid = r["uid"].as_u64().unwrap() as u32;
    let gid = r["gid"].as_u64().unwrap() as u32;
    assert!(uid >= 1000 && gid >= 1000);
    let line = passwd(&name).unwrap();
    let home = sb.home().join(&name);
    assert_eq!(
        line,
        format!(
            "{name}:x:{uid}:{gid}:nPanel account:{}:/usr/sbin/nologin",
            home.display()
        )
    );
    let m = std::fs::metadata(&home).unwrap();
    assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (uid, gid, 0o750));
    assert_eq!(
        std::fs::metadata(home.join("public_html")).unwrap().uid(),
        uid
    );
    // twice
    let r2 = ok(&send(&agent, json!({"op": "create_user", "account": name}))).clone();
    assert_eq!(
        (r2["created"].clone(), r2["uid"].clone()),
        (json!(false), json!(uid))
    );

    // password: the hash changes each time
    let h0 = shadow(&name)[1].clone();
    let pw = |p: &str| {
        send(
            &agent,
            json!({"op": "set_password", "account": name, "password": p}),
        )
    };
    ok(&pw("First-Passw0rd-1"));
    let h1 = shadow(&name)[1].clone();
    assert!(h1.starts_with('$') && h1 != h0, "{h0} -> {h1}");
    ok(&pw("Second-Passw0rd-2"));
    let h2 = shadow(&name)[1].clone();
    assert!(h2.starts_with('$') && h2 != h1);
    assert_eq!(error_code(&pw("bad:colon")), "invalid_request");
    assert_eq!(shadow(&name)[1], h2);

    // lock twice: '!' before the hash and the account expired
    for _ in 0..2 {
        let v = send(&agent, json!({"op": "lock_user", "account": name}));
        assert_eq!(ok(&v)["system_user"], true);
        let s = shadow(&name);
        assert_eq!(s[1], format!("!{h2}"));
        assert_eq!(s[7], "1");
    }
    // a new password while locked keeps the lock
    ok(&pw("Third-Passw0rd-3"));
    let s = shadow(&name);
    assert!(s[1].starts_with("!$") && s[1] != format!("!{h2}"), "{s:?}");
    assert_eq!(s[7], "1");
    let h3 = s[1].trim_start_matches('!').to_string();
    // unlock twice
    for _ in 0..2 {
        ok(&send(&agent, json!({"op": "unlock_user", "account": name})));
        let s = shadow(&name);
        assert_eq!(s[1], h3);
        assert_eq!(s[7], "");
    }
    // quota: applied where the host has quotas, else skipped with the reason
    let q = ok(&send(
        &agent,
        json!({"op": "set_quota", "account": name, "disk_mb": 50}),
    ))
    .clone();
    match q["status"].as_str().unwrap() {
        "applied" => {}
        "skipped" => eprintln!("set_quota skipped here: {}", q["reason"]),
        other => panic!("{other}"),
    }

    // users nPanel did not make are never touched
    let daemon_before = shadow("daemon");
    for op in ["lock_user", "unlock_user", "delete_user"] {
        let v = send(&agent, json!({"op": op, "account": "daemon"}));
        assert_eq!(error_code(&v), "busy", "{op}: {v}");
    }
    let v = send(
        &agent,
        json!({"op": "set_password", "account": "root", "password": "Pwned-123456"}),
    );
    assert_eq!(error_code(&v), "busy", "{v}");
    assert_eq!(shadow("daemon"), daemon_before);
    let st = Command::new("useradd")
        .args(["--no-create-home", "--shell", "/usr/sbin/nologin", &foreign])
        .status()
        .unwrap();
    assert!(st.success());
    for op in ["create_user", "lock_user", "delete_user"] {
        let v = send(&agent, json!({"op": op, "account": foreign}));
        assert_eq!(error_code(&v), "busy", "{op}: {v}");
    }
    assert!(passwd(&foreign).is_some());

    // delete twice
    let v = send(&agent, json!({"op": "delete_user", "account": name}));
    assert_eq!(ok(&v)["existed"], true);
    assert!(passwd(&name).is_none());
    assert!(!std::fs::read_to_string("/etc/group")
        .unwrap()
        .lines()
        .any(|l| l.starts_with(&format!("{name}:"))));
    let v = send(&agent, json!({"op": "delete_user", "account": name}));
    assert_eq!(ok(&v)["existed"], false);
    let v = send(&agent, json!({"op": "lock_user", "account": name}));
    assert_eq!(error_code(&v), "not_found");

    // no password in the agent's log
    agent.signal(nix::sys::signal::Signal::SIGTERM);
    let (_, stderr) = agent.wait_exit(Duration::from_secs(5));
    for p in [
        "First-Passw0rd-1",
        "Second-Passw0rd-2",
        "Third-Passw0rd-3",
        "Pwned-123456",
    ] {
        assert!(!stderr.contains(p), "{p} in the log");
    }
}
