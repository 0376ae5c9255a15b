//! Mail accounts (DESIGN §11, cPanel's layout): `create_mailbox`,
//! `delete_mailbox` and `list_mailboxes` for real, through the
//! `npanel-agent` binary over its socket on a temp `host.root` and through
//! the typed `Host` (the socket client and the in-process `LocalHost`):
//! the exact `passwd` / `shadow` lines, a `$6$` hash that verifies, each
//! operation twice, bad names, and symlinks and hard links refused.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap()
}

fn today() -> i64 {
    chrono::Utc::now().timestamp() / 86_400
}

/// The shadow line of `name` split into its fields.
fn shadow_fields(shadow: &str, name: &str) -> Vec<String> {
    let lines: Vec<&str> = shadow
        .lines()
        .filter(|l| l.split(':').next() == Some(name))
        .collect();
    assert_eq!(lines.len(), 1, "{name} in\n{shadow}");
    lines[0].split(':').map(str::to_string).collect()
}

/// Checks a `$6$` hash against the password with the crate, and with
/// `openssl passwd -6` (libc's SHA-crypt, what Dovecot checks with) where
/// it is installed.
fn assert_hash_verifies(hash: &str, password: &str) {
    assert!(hash.starts_with("$6$"), "{hash}");
    assert!(
        sha_crypt::sha512_check(password, hash).is_ok(),
        "{hash} does not verify"
    );
    assert!(sha_crypt::sha512_check("not-the-password", hash).is_err());
    let salt = hash.split('$').nth(2).unwrap();
    if let Ok(out) = std::process::Command::new("openssl")
        .args(["passwd", "-6", "-salt", salt, password])
        .output()
    {
        if out.status.success() {
            assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), hash);
        }
    }
}

fn create(agent: &AgentProc, acct: &str, domain: &str, mailbox: &str, pw: &str) -> Value {
    send(
        agent,
        json!({"op": "create_mailbox", "account": acct, "domain": domain, "mailbox": mailbox, "password": pw}),
    )
}

fn delete(agent: &AgentProc, acct: &str, domain: &str, mailbox: &str) -> Value {
    send(
        agent,
        json!({"op": "delete_mailbox", "account": acct, "domain": domain, "mailbox": mailbox}),
    )
}

fn list(agent: &AgentProc, acct: &str, domain: &str) -> Value {
    send(
        agent,
        json!({"op": "list_mailboxes", "account": acct, "domain": domain}),
    )
}

#[test]
fn mailboxes_over_the_socket() {
    let sb = host_sandbox(false);
    let agent = AgentProc::start(&sb);
    ok(&send(
        &agent,
        json!({"op": "build_home", "account": "alice", "uid": 4242, "gid": 4343, "domain": "example.com"}),
    ));
    let home = sb.home().join("alice");
    let hm = std::fs::metadata(&home).unwrap();
    let (uid, gid) = (hm.uid(), hm.gid());
    if is_root() {
        assert_eq!((uid, gid), (4242, 4343));
    }
    let etc = home.join("etc/example.com");
    let maildir = home.join("mail/example.com/info");

    // create
    let r = ok(&create(
        &agent,
        "alice",
        "example.com",
        "info",
        "First-Pw-123",
    ))
    .clone();
    assert_eq!(r["type"], "mailbox_created", "{r}");
    assert_eq!(r["created"], true);
    assert_eq!(r["mailbox"], "info");
    assert_eq!(r["path"], maildir.display().to_string());
    for rel in ["", "cur", "new", "tmp"] {
        let p = maildir.join(rel);
        assert!(p.is_dir(), "{}", p.display());
        assert_eq!(mode(&p), 0o700, "{}", p.display());
        let m = std::fs::metadata(&p).unwrap();
        assert_eq!((m.uid(), m.gid()), (uid, gid), "{}", p.display());
    }
    let passwd_line = format!(
        "info:x:{uid}:{gid}::{}:{}\n",
        maildir.display(),
        home.display()
    );
    assert_eq!(read(&etc.join("passwd")), passwd_line);
    let shadow = read(&etc.join("shadow"));
    assert_eq!(shadow.lines().count(), 1);
    assert!(shadow.ends_with("::::::\n"), "{shadow:?}");
    let f = shadow_fields(&shadow, "info");
    assert_eq!(f.len(), 9, "{shadow}");
    let days: i64 = f[2].parse().unwrap();
    assert!((days - today()).abs() <= 1, "{days}");
    assert!(f[3..].iter().all(String::is_empty), "{shadow}");
    assert_hash_verifies(&f[1], "First-Pw-123");
    assert_eq!(
        shadow,
        format!("info:{}:{days}::::::\n", f[1]),
        "the exact shadow line"
    );
    assert!(!shadow.contains("First-Pw-123"));
    for file in ["passwd", "shadow"] {
        let p = etc.join(file);
        assert_eq!(mode(&p), 0o640, "{file}");
        let m = std::fs::metadata(&p).unwrap();
        assert_eq!((m.uid(), m.gid(), m.nlink()), (uid, gid, 1), "{file}");
    }
    // no temp files left behind
    let names: Vec<String> = std::fs::read_dir(&etc)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.starts_with('.')), "{names:?}");

    // twice: a new password (a new hash), the Maildir and its mail kept
    std::fs::write(maildir.join("new/1681274990.M1P2.host,S=5"), "hello").unwrap();
    let r = ok(&create(
        &agent,
        "alice",
        "example.com",
        "info",
        "Second-Pw-456",
    ))
    .clone();
    assert_eq!(r["created"], false, "{r}");
    assert_eq!(read(&etc.join("passwd")), passwd_line);
    let f2 = shadow_fields(&read(&etc.join("shadow")), "info");
    assert_ne!(f2[1], f[1]);
    assert_hash_verifies(&f2[1], "Second-Pw-456");
    assert!(sha_crypt::sha512_check("First-Pw-123", &f2[1]).is_err());
    assert_eq!(read(&maildir.join("new/1681274990.M1P2.host,S=5")), "hello");
    // the same password again still makes a new salt
    ok(&create(
        &agent,
        "alice",
        "example.com",
        "info",
        "Second-Pw-456",
    ));
    let f3 = shadow_fields(&read(&etc.join("shadow")), "info");
    assert_ne!(f3[1], f2[1]);
    assert_hash_verifies(&f3[1], "Second-Pw-456");

    // other lines are kept byte for byte, in place
    let foreign = "# kept as it is\nlegacy:x:4242:4242::/elsewhere:/home/alice\n";
    std::fs::write(etc.join("passwd"), format!("{passwd_line}{foreign}")).unwrap();
    let r = ok(&create(
        &agent,
        "alice",
        "Example.COM",
        "Sales",
        "Third-Pw-789",
    ))
    .clone();
    assert_eq!(
        (r["created"].clone(), r["mailbox"].clone()),
        (json!(true), json!("sales"))
    );
    let sales_line = format!(
        "sales:x:{uid}:{gid}::{}:{}\n",
        home.join("mail/example.com/sales").display(),
        home.display()
    );
    assert_eq!(
        read(&etc.join("passwd")),
        format!("{passwd_line}{foreign}{sales_line}")
    );
    assert_eq!(read(&etc.join("shadow")).lines().count(), 2);

    // list: the names of passwd, sorted (the comment is no mailbox)
    let l = ok(&list(&agent, "alice", "example.com")).clone();
    assert_eq!(l["type"], "mailboxes");
    assert_eq!(l["mailboxes"], json!(["info", "legacy", "sales"]));
    // a domain without mail files: none
    assert_eq!(
        ok(&list(&agent, "alice", "other.example"))["mailboxes"],
        json!([])
    );

    // delete: the lines (passwd, shadow and quota) and the Maildir go
    std::fs::write(etc.join("quota"), "info:1048576\nsales:2048\n").unwrap();
    let outside = sb.path().join("outside-file");
    std::fs::write(&outside, "keep").unwrap();
    std::os::unix::fs::symlink(&outside, maildir.join("cur/link")).unwrap();
    std::fs::create_dir_all(maildir.join(".Sent/cur")).unwrap();
    std::fs::write(maildir.join(".Sent/cur/1.M2.host:2,S"), "sent").unwrap();
    let r = ok(&delete(&agent, "alice", "example.com", "info")).clone();
    assert_eq!(r["type"], "mailbox_deleted", "{r}");
    assert_eq!(r["existed"], true);
    assert_eq!(r["path"], maildir.display().to_string());
    assert!(!maildir.exists());
    assert_eq!(read(&outside), "keep", "a symlink inside was followed");
    assert_eq!(read(&etc.join("passwd")), format!("{foreign}{sales_line}"));
    let shadow = read(&etc.join("shadow"));
    assert!(shadow.starts_with("sales:$6$"), "{shadow}");
    assert_eq!(shadow.lines().count(), 1);
    assert_eq!(read(&etc.join("quota")), "sales:2048\n");
    assert_eq!(mode(&etc.join("passwd")), 0o640);
    // twice: nothing there any more
    let r = ok(&delete(&agent, "alice", "example.com", "info")).clone();
    assert_eq!(r["existed"], false, "{r}");
    assert_eq!(
        ok(&list(&agent, "alice", "example.com"))["mailboxes"],
        json!(["legacy", "sales"])
    );
    // only the lines, or only the Maildir, count as existing too
    std::fs::create_dir_all(home.join("mail/example.com/orphan/new")).unwrap();
    assert_eq!(
        ok(&delete(&agent, "alice", "example.com", "orphan"))["existed"],
        true
    );
    assert!(!home.join("mail/example.com/orphan").exists());
    assert_eq!(
        ok(&delete(&agent, "alice", "example.com", "legacy"))["existed"],
        true
    );
    assert_eq!(
        read(&etc.join("passwd")),
        format!("# kept as it is\n{sales_line}")
    );

    // bad names: refused before anything is touched
    let long = "a".repeat(65);
    for bad in [
        "",
        ".hidden",
        "dot.",
        "a..b",
        "..",
        "a/b",
        "../../etc",
        "a b",
        "a:b",
        "a@b",
        "ümlaut",
        long.as_str(),
    ] {
        let v = create(&agent, "alice", "example.com", bad, "Good-Pw-123");
        assert_eq!(error_code(&v), "invalid_request", "{bad:?}: {v}");
        assert_eq!(
            error_code(&delete(&agent, "alice", "example.com", bad)),
            "invalid_request"
        );
    }
    let entries: Vec<String> = std::fs::read_dir(home.join("mail/example.com"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(entries, vec!["sales".to_string()]);
    for (domain, pw, acct, code) in [
        (
            "not_a_domain.com",
            "Good-Pw-123",
            "alice",
            "invalid_request",
        ),
        ("a/../b.com", "Good-Pw-123", "alice", "invalid_request"),
        ("example.com", "bad:pw-XYZ", "alice", "invalid_request"),
        ("example.com", "bad\npw-XYZ", "alice", "invalid_request"),
        ("example.com", "", "alice", "invalid_request"),
        ("example.com", "Good-Pw-123", "../x", "invalid_account"),
    ] {
        let v = create(&agent, acct, domain, "box", pw);
        assert_eq!(error_code(&v), code, "{domain} {acct}: {v}");
        assert!(!v.to_string().contains("XYZ"), "password echoed: {v}");
    }
    let v = send(
        &agent,
        json!({"op": "create_mailbox", "account": "alice", "domain": "example.com", "mailbox": "box"}),
    );
    assert_eq!(error_code(&v), "invalid_request", "{v}");

    // no home: create and list say so, delete has nothing to do
    assert_eq!(
        error_code(&create(
            &agent,
            "nobodyhere",
            "example.com",
            "info",
            "Good-Pw-123"
        )),
        "not_found"
    );
    assert_eq!(
        error_code(&list(&agent, "nobodyhere", "example.com")),
        "not_found"
    );
    assert_eq!(
        ok(&delete(&agent, "nobodyhere", "example.com", "info"))["existed"],
        false
    );
}

#[test]
fn symlinks_and_hard_links_are_refused() {
    let sb = host_sandbox(false);
    let agent = AgentProc::start(&sb);
    let build = |acct: &str| {
        ok(&send(
            &agent,
            json!({"op": "build_home", "account": acct, "uid": 4545, "gid": 4545, "domain": "example.com"}),
        ));
        sb.home().join(acct)
    };
    let outside = sb.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::set_permissions(&outside, std::fs::Permissions::from_mode(0o755)).unwrap();
    let before = std::fs::metadata(&outside).unwrap();
    let untouched = |what: &str| {
        assert_eq!(
            std::fs::read_dir(&outside).unwrap().count(),
            0,
            "{what}: something was written outside"
        );
        let now = std::fs::metadata(&outside).unwrap();
        assert_eq!(
            (now.uid(), now.mode()),
            (before.uid(), before.mode()),
            "{what}"
        );
    };

    // a symlinked etc/<domain>
    let home = build("bob");
    std::fs::remove_dir_all(home.join("etc/example.com")).unwrap();
    std::os::unix::fs::symlink(&outside, home.join("etc/example.com")).unwrap();
    let v = create(&agent, "bob", "example.com", "info", "Good-Pw-123");
    assert_eq!(error_code(&v), "unsafe_path", "{v}");
    assert!(
        !home.join("mail/example.com/info").exists(),
        "Maildir made anyway"
    );
    untouched("create through etc/<domain>");
    assert_eq!(
        error_code(&list(&agent, "bob", "example.com")),
        "unsafe_path"
    );
    assert_eq!(
        error_code(&delete(&agent, "bob", "example.com", "info")),
        "unsafe_path"
    );
    untouched("list / delete through etc/<domain>");

    // a symlinked mail/<domain>
    let home = build("carl");
    std::fs::remove_dir_all(home.join("mail/example.com")).unwrap();
    std::os::unix::fs::symlink(&outside, home.join("mail/example.com")).unwrap();
    let v = create(&agent, "carl", "example.com", "info", "Good-Pw-123");
    assert_eq!(error_code(&v), "unsafe_path", "{v}");
    untouched("create through mail/<domain>");
    assert_eq!(read(&home.join("etc/example.com/passwd")), "");

    // a symlinked home
    std::os::unix::fs::symlink(&outside, sb.home().join("mallory")).unwrap();
    for v in [
        create(&agent, "mallory", "example.com", "info", "Good-Pw-123"),
        delete(&agent, "mallory", "example.com", "info"),
        list(&agent, "mallory", "example.com"),
    ] {
        assert_eq!(error_code(&v), "unsafe_path", "{v}");
    }
    untouched("through the home");

    // passwd as a symlink to a file outside; shadow as a hard link to one
    let home = build("dora");
    let secret = sb.path().join("secret");
    std::fs::write(&secret, "root:$6$secret-hash:1::::::\n").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let etc = home.join("etc/example.com");
    std::fs::remove_file(etc.join("passwd")).unwrap();
    std::os::unix::fs::symlink(&secret, etc.join("passwd")).unwrap();
    let v = create(&agent, "dora", "example.com", "info", "Good-Pw-123");
    assert_eq!(error_code(&v), "unsafe_path", "{v}");
    assert_eq!(
        error_code(&list(&agent, "dora", "example.com")),
        "unsafe_path"
    );
    assert!(!home.join("mail/example.com/info").exists());
    std::fs::remove_file(etc.join("passwd")).unwrap();
    std::fs::remove_file(etc.join("shadow")).unwrap();
    std::fs::hard_link(&secret, etc.join("shadow")).unwrap();
    let v = create(&agent, "dora", "example.com", "info", "Good-Pw-123");
    assert_eq!(error_code(&v), "unsafe_path", "{v}");
    let v = delete(&agent, "dora", "example.com", "info");
    assert_eq!(error_code(&v), "unsafe_path", "{v}");
    assert_eq!(read(&secret), "root:$6$secret-hash:1::::::\n");
    assert_eq!(mode(&secret), 0o600);
    assert!(
        !etc.join("passwd").exists(),
        "passwd written after a refusal"
    );

    // delete: a symlink in the Maildir's place is refused, lines kept
    let home = build("erin");
    ok(&create(
        &agent,
        "erin",
        "example.com",
        "info",
        "Good-Pw-123",
    ));
    let maildir = home.join("mail/example.com/info");
    std::fs::remove_dir_all(&maildir).unwrap();
    std::os::unix::fs::symlink(&outside, &maildir).unwrap();
    std::fs::write(outside.join("keep"), "x").unwrap();
    let v = delete(&agent, "erin", "example.com", "info");
    assert_eq!(error_code(&v), "unsafe_path", "{v}");
    assert!(read(&home.join("etc/example.com/passwd")).starts_with("info:x:"));
    assert_eq!(read(&outside.join("keep")), "x");
    // ... and create does not write through it either
    let v = create(&agent, "erin", "example.com", "info", "Good-Pw-123");
    assert_eq!(error_code(&v), "unsafe_path", "{v}");
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 1);
}

/// Held while a `LocalHost` exists: as root it opens the real
/// `<cgroup2 mount>/npanel.slice`, removed afterwards when empty.
static REAL_SLICE: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn typed_client_and_local_host_give_the_same_answers() {
    let _slice = REAL_SLICE.lock().unwrap_or_else(|p| p.into_inner());
    let sb = host_sandbox(false);
    let agent = AgentProc::start(&sb);
    let local_root = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let local_host = agent::LocalHost::new(local_root.path()).unwrap();
        let remote = agent::Host::from(agent::AgentClient::new(
            &agent.socket,
            Duration::from_secs(10),
        ));
        let local = agent::Host::from(local_host.clone());
        let acct = agent::AccountName::parse("mona").unwrap();
        let domain = agent::Domain::parse("mona.example").unwrap();
        let info = agent::Mailbox::parse("info").unwrap();
        let pw1 = agent::Password::parse("Typed-Pw-111").unwrap();
        let pw2 = agent::Password::parse("Typed-Pw-222").unwrap();
        for host in [&remote, &local] {
            // no home yet
            let e = host
                .create_mailbox(&acct, &domain, &info, &pw1)
                .await
                .unwrap_err();
            assert_eq!(e.code(), agent::ErrorCode::NotFound, "{e}");
            // a home without the domain's part: create_mailbox makes it
            let u = host.create_user(&acct, true).await.unwrap();
            let home = Path::new(&u.home.unwrap().path).to_path_buf();
            let m = host
                .create_mailbox(&acct, &domain, &info, &pw1)
                .await
                .unwrap();
            assert!(m.created);
            assert_eq!(Path::new(&m.path), home.join("mail/mona.example/info"));
            assert!(home.join("mail/mona.example/info/tmp").is_dir());
            let hm = std::fs::metadata(&home).unwrap();
            assert_eq!(
                read(&home.join("etc/mona.example/passwd")),
                format!(
                    "info:x:{}:{}::{}:{}\n",
                    hm.uid(),
                    hm.gid(),
                    home.join("mail/mona.example/info").display(),
                    home.display()
                )
            );
            let hash1 =
                shadow_fields(&read(&home.join("etc/mona.example/shadow")), "info")[1].clone();
            assert_hash_verifies(&hash1, "Typed-Pw-111");
            let again = host
                .create_mailbox(&acct, &domain, &info, &pw2)
                .await
                .unwrap();
            assert!(!again.created);
            let hash2 =
                shadow_fields(&read(&home.join("etc/mona.example/shadow")), "info")[1].clone();
            assert_ne!(hash1, hash2);
            assert_hash_verifies(&hash2, "Typed-Pw-222");
            let sales = agent::Mailbox::parse("sales").unwrap();
            host.create_mailbox(&acct, &domain, &sales, &pw1)
                .await
                .unwrap();
            assert_eq!(
                host.list_mailboxes(&acct, &domain).await.unwrap(),
                vec![info.clone(), sales.clone()]
            );
            assert!(host.delete_mailbox(&acct, &domain, &info).await.unwrap());
            assert!(!host.delete_mailbox(&acct, &domain, &info).await.unwrap());
            assert_eq!(
                host.list_mailboxes(&acct, &domain).await.unwrap(),
                vec![sales.clone()]
            );
            assert!(host.remove_home(&acct).await.unwrap());
            assert!(!host.delete_mailbox(&acct, &domain, &sales).await.unwrap());
            assert!(host.delete_user(&acct).await.unwrap());
        }
        // the same request gives the same reply shape on both
        let req = agent::Request::ListMailboxes {
            account: acct.clone(),
            domain: domain.clone(),
        };
        let a = remote.call(req.clone()).await.unwrap_err();
        let b = local.call(req).await.unwrap_err();
        assert_eq!(a.code(), b.code());
        assert_eq!(a.code(), agent::ErrorCode::NotFound);
        // as root, LocalHost::new opened the real slice: leave no empty one
        let caps = local_host.state().cgroups.capabilities().clone();
        if caps.cgroup2_mount.is_some() {
            let _ = std::fs::remove_dir(&caps.cgroup_root);
        }
    });
}
