//! The fixture generator's variants through a real restore and its health check (issue 14):
//! each archive `npanel-cpmove-fixture` writes (one variant or defect at a time) is restored
//! by a real `npanel serve` (real Redis, the embedded host on real files, the real MariaDB when
//! `NPANEL_TEST_MYSQL_URL` is set) into an account the restore creates from the archive's
//! `cp/USER`, and the health check it queues must pass every check the variant does not
//! explain, and fail exactly the one a defect breaks.
//!
//! Why here, in `loadtests`: the generator is this package's binary, so cargo builds it for
//! this test and names it (`CARGO_BIN_EXE_npanel-cpmove-fixture`); the root package has no
//! way to name or build another package's binary, nor `loadtests` as a dev-dependency.
//! `npanel` is the other way round: this package cannot name the root package's binary, so
//! the test runs the workspace's own debug build beside its `deps/` directory
//! (`target/debug/npanel`, which `cargo test --workspace`, the README's and CI's test command,
//! builds before any test runs), or `NPANEL_BIN`. Running only this test:
//! `cargo build --bin npanel && cargo test -p loadtests --test fixture_variants`.
//!
//! `an_mdbox_mailbox_that_lost_a_storage_file_fails_its_message_count` then takes one mdbox
//! storage file away from a restored account: the health check's message count, which reads
//! the messages inside the files on both sides, must see it.

use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const FIXTURE: &str = env!("CARGO_BIN_EXE_npanel-cpmove-fixture");

/// The `npanel` binary: `NPANEL_BIN`, else the workspace's debug build beside `deps/`.
fn npanel() -> PathBuf {
    if let Ok(p) = std::env::var("NPANEL_BIN") {
        return p.into();
    }
    let exe = std::env::current_exe().unwrap();
    let p = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("npanel"))
        .unwrap();
    assert!(
        p.is_file(),
        "{} is missing: build it first (`cargo build --bin npanel`; `cargo test --workspace` does) or set NPANEL_BIN",
        p.display()
    );
    p
}

/// `npanel serve`, killed on drop.
struct Serve(Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `npanel serve` on 127.0.0.1:0 with its data (and the embedded host) in `data`; its URL.
fn serve(data: &Path, extra: &[(&str, &str)]) -> (Serve, String) {
    let cfg = queue::testing::config("fxvariants");
    let mut cmd = Command::new(npanel());
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut env: Vec<(String, String)> = vec![
        ("REDIS_URL".into(), cfg.redis_url.clone()),
        ("NPANEL_QUEUE__NAME".into(), cfg.name.clone()),
        ("NPANEL_SCHEDULER__ENABLED".into(), "false".into()),
        // The machine's cgroup tree is left alone.
        ("NPANEL_HOST__CGROUPS".into(), "false".into()),
        ("NPANEL_LOG".into(), "info".into()),
        // The health check runs as soon as the restore is done, not 30 s after.
        (
            "NPANEL_API__HEALTH_CHECK_AFTER_RESTORE_SECS".into(),
            "0".into(),
        ),
    ];
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    loadtests::serve::clean_env(&mut cmd, &env);
    let mut child = cmd.spawn().expect("start npanel serve");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(i) = line.find("API listening on ") {
                let url = line[i + 17..]
                    .split_whitespace()
                    .next()
                    .unwrap()
                    .to_string();
                let _ = tx.send(url);
            }
        }
    });
    let url = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("serve logged its address");
    (Serve(child), url)
}

fn admin_token(data: &Path) -> String {
    let o = Command::new(npanel())
        .args(["token", "--role", "admin", "--ttl", "2h", "--data-dir"])
        .arg(data)
        .env_remove("NPANEL_API__JWT_SECRET")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap().trim().to_string()
}

/// One request to `url` (`http://host:port`): the status and the JSON body (`null` when not).
fn http(url: &str, method: &str, path: &str, token: &str, body: Option<&Value>) -> (u16, Value) {
    let r = ws::client::blocking::HttpClient::new(url, Some(token.to_string()))
        .unwrap()
        .with_timeout(Duration::from_secs(60))
        .json(method, path, body)
        .unwrap();
    let json = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
    (r.status.as_u16(), json)
}

/// The job once it is final (succeeded, failed or cancelled).
fn wait_final(url: &str, tok: &str, id: &str) -> Value {
    let t0 = Instant::now();
    loop {
        let (_, j) = http(url, "GET", &format!("/api/jobs/{id}"), tok, None);
        if matches!(
            j["status"].as_str(),
            Some("succeeded" | "failed" | "cancelled")
        ) {
            return j;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(180),
            "job {id} never finished: {j}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The generator's archive of `user` with `variants` and `defects` in `dir`, and its summary.
fn fixture(
    dir: &Path,
    user: &str,
    format: &str,
    variants: &[&str],
    defects: &[&str],
) -> (PathBuf, Value) {
    let mut c = Command::new(FIXTURE);
    c.arg("--out")
        .arg(dir)
        .args(["--format", format])
        .args(["--user", user, "--domain", &format!("{user}.example")])
        .args(["--size", "1M", "--seed", "3"]);
    for v in variants {
        c.args(["--variant", v]);
    }
    for d in defects {
        c.args(["--defect", d]);
    }
    let o = c.output().expect("run npanel-cpmove-fixture");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8(o.stdout).unwrap();
    let mut lines = out.lines();
    let path = PathBuf::from(lines.next().unwrap());
    let summary: Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    assert_eq!(summary["variants"], json!(variants));
    assert_eq!(summary["defects"], json!(defects));
    (path, summary)
}

fn check<'a>(report: &'a Value, id: &str) -> &'a Value {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["check"] == id)
        .unwrap_or_else(|| panic!("no check {id}: {report}"))
}

/// The checks that did not pass (failed or partial).
fn failing(report: &Value) -> BTreeSet<String> {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["status"] == "fail" || c["status"] == "partial")
        .map(|c| c["check"].as_str().unwrap().to_string())
        .collect()
}

/// A `mariadb` (or `mysql`) client command for `url` (`mysql://user[:pass]@host[:port]`).
fn sql_client(url: &str) -> Command {
    let rest = url.trim_start_matches("mysql://").trim_end_matches('/');
    let (cred, host) = rest.rsplit_once('@').unwrap_or(("root", rest));
    let (user, pass) = cred.split_once(':').unwrap_or((cred, ""));
    let (host, port) = host.split_once(':').unwrap_or((host, "3306"));
    let bin = if Command::new("mariadb").arg("--version").output().is_ok() {
        "mariadb"
    } else {
        "mysql"
    };
    let mut c = Command::new(bin);
    c.args(["-u", user, "-h", host, "-P", port, "-N", "-B"]);
    if !pass.is_empty() {
        c.arg(format!("-p{pass}"));
    }
    c
}

/// Runs `sql` on the test MariaDB; its output.
fn sql(url: &str, sql: &str) -> String {
    let o = sql_client(url)
        .args(["-e", sql])
        .output()
        .expect("a mariadb client");
    assert!(
        o.status.success(),
        "{sql}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Drops the databases and database users the restores made (`<account>_…`), however the
/// test ends.
struct DropDbs {
    url: String,
    accounts: Vec<String>,
}

impl Drop for DropDbs {
    fn drop(&mut self) {
        for a in &self.accounts {
            let like = format!("{a}\\_%");
            let Ok(o) = sql_client(&self.url)
                .args([
                    "-e",
                    &format!(
                        "SELECT schema_name FROM information_schema.schemata WHERE schema_name LIKE '{like}';\
                         SELECT CONCAT(user, '@', host) FROM mysql.user WHERE user LIKE '{like}'"
                    ),
                ])
                .output()
            else {
                continue;
            };
            for line in String::from_utf8_lossy(&o.stdout).lines() {
                let stmt = match line.split_once('@') {
                    Some((u, h)) => format!("DROP USER IF EXISTS '{u}'@'{h}'"),
                    None => format!("DROP DATABASE IF EXISTS `{line}`"),
                };
                let _ = sql_client(&self.url).args(["-e", &stmt]).output();
            }
        }
    }
}

/// One archive: its variants and defects, and what its health report must say.
struct Case {
    tag: &'static str,
    /// `tar.gz`, `tar` or `homedir-tar` (the home as a `homedir.tar` inside).
    format: &'static str,
    variants: &'static [&'static str],
    defects: &'static [&'static str],
    /// The checks that fail (or pass only in part), whatever the database server.
    fails: &'static [&'static str],
    /// The checks that also fail when the databases are restored and checked.
    fails_with_db: &'static [&'static str],
}

const CASES: &[Case] = &[
    Case {
        format: "tar.gz",
        tag: "cl",
        variants: &[],
        defects: &[],
        fails: &[],
        fails_with_db: &[],
    },
    Case {
        format: "tar.gz",
        tag: "md",
        variants: &["mdbox"],
        defects: &[],
        // The mdbox mailbox's `storage/` counts as its store; its messages are counted inside
        // its `m.N` files on both sides (as the mail account's total).
        fails: &[],
        fails_with_db: &[],
    },
    Case {
        format: "tar.gz",
        tag: "gz",
        variants: &["gzip-message"],
        defects: &[],
        fails: &[],
        fails_with_db: &[],
    },
    Case {
        format: "tar.gz",
        tag: "u8",
        variants: &["utf8-folder"],
        defects: &[],
        fails: &[],
        fails_with_db: &[],
    },
    Case {
        format: "tar.gz",
        tag: "np",
        variants: &["no-prefix-db"],
        defects: &[],
        fails: &[],
        // The restore imports the archive's `blog` as `<account>_blog`; the health check
        // follows the restore's `database_imports` to find it.
        fails_with_db: &[],
    },
    Case {
        format: "tar.gz",
        tag: "my",
        variants: &["mysql8-collation"],
        defects: &[],
        fails: &[],
        fails_with_db: &[],
    },
    Case {
        format: "tar.gz",
        tag: "tl",
        variants: &["tls"],
        defects: &[],
        fails: &[],
        fails_with_db: &[],
    },
    Case {
        format: "tar.gz",
        tag: "bc",
        variants: &[],
        defects: &["bad-cert"],
        fails: &["tls"],
        fails_with_db: &[],
    },
    Case {
        format: "tar.gz",
        tag: "sc",
        variants: &["sslcerts"],
        defects: &[],
        fails: &[],
        fails_with_db: &[],
    },
    Case {
        format: "tar.gz",
        tag: "sb",
        variants: &["sslcerts"],
        defects: &["bad-cert"],
        // The key in `sslkeys/` is not the certificate's: neither can be used.
        fails: &["tls"],
        fails_with_db: &[],
    },
    Case {
        format: "tar.gz",
        tag: "wp",
        variants: &[],
        defects: &["wrong-password"],
        fails: &[],
        fails_with_db: &["app_credentials"],
    },
    // Every variant at once, the home as a `homedir.tar` inside the `.tar.gz`: the same two
    // known gaps, nothing else.
    Case {
        format: "homedir-tar",
        tag: "al",
        variants: &[
            "mdbox",
            "gzip-message",
            "utf8-folder",
            "no-prefix-db",
            "mysql8-collation",
            "tls",
            "sslcerts",
        ],
        defects: &[],
        fails: &[],
        fails_with_db: &[],
    },
];

#[test]
fn each_variant_restores_and_its_health_check_explains_every_failure() {
    let t0 = Instant::now();
    let db_url = std::env::var("NPANEL_TEST_MYSQL_URL").ok();
    if db_url.is_none() {
        assert!(
            std::env::var("CI").is_err(),
            "CI sets NPANEL_TEST_MYSQL_URL (.ci/run)"
        );
        eprintln!("NPANEL_TEST_MYSQL_URL is not set: the database checks are skipped");
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut extra = Vec::new();
    if let Some(u) = &db_url {
        extra.push(("NPANEL_DATABASES__URL", u.as_str()));
    }
    let (_srv, url) = serve(&data, &extra);
    let tok = admin_token(&data);
    // The archives' PLAN=basic, as an active package: the restore creates each account with it.
    let (s, r) = http(
        &url,
        "POST",
        "/api/packages",
        &tok,
        Some(&json!({"id": "basic"})),
    );
    assert_eq!(s, 201, "{r}");
    let (s, r) = http(&url, "POST", "/api/packages/basic/activate", &tok, None);
    assert_eq!(s, 200, "{r}");

    // Account names unique to this run: the database server outlives it.
    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        % 1_000_000;
    let users: Vec<String> = CASES
        .iter()
        .map(|c| format!("fx{}{run:06}", c.tag))
        .collect();
    let _cleanup = db_url.as_ref().map(|u| DropDbs {
        url: u.clone(),
        accounts: users.clone(),
    });

    let mut problems = Vec::new();
    for (case, user) in CASES.iter().zip(&users) {
        let (archive, summary) =
            fixture(dir.path(), user, case.format, case.variants, case.defects);
        let (s, r) = http(
            &url,
            "POST",
            "/api/restore",
            &tok,
            Some(&json!({"archive": archive, "account": user})),
        );
        assert_eq!(s, 202, "{r}");
        let id = r["id"].as_str().unwrap().to_string();
        let hc = r["health_check"]["id"]
            .as_str()
            .unwrap_or_else(|| panic!("the restore queued its health check: {r}"))
            .to_string();
        let restore = wait_final(&url, &tok, &id);
        assert_eq!(restore["status"], "succeeded", "{user}: {restore}");
        let result = &restore["result"];
        let job = wait_final(&url, &tok, &hc);
        assert_eq!(job["status"], "succeeded", "{user}: {job}");
        let (s, r) = http(
            &url,
            "GET",
            &format!("/api/migration/{id}/health"),
            &tok,
            None,
        );
        assert_eq!(s, 200, "{r}");
        let report = &r["report"];
        let got = failing(report);
        let mut want: BTreeSet<String> = case.fails.iter().map(|s| s.to_string()).collect();
        if db_url.is_some() {
            want.extend(case.fails_with_db.iter().map(|s| s.to_string()));
        }
        eprintln!(
            "{user} variants {:?} defects {:?}: score {} ({}), failing {got:?}, restore skipped {}",
            case.variants, case.defects, report["score"], report["grade"], result["skipped"]
        );
        if !result["database_imports"].is_null() {
            eprintln!("    database imports: {}", result["database_imports"]);
        }
        for c in report["checks"].as_array().unwrap() {
            if c["status"] != "pass" {
                eprintln!("    {} {}: {}", c["check"], c["status"], c["message"]);
            }
        }
        if got != want {
            problems.push(format!(
                "{user} {:?}{:?}: failing {got:?}, expected {want:?}: {report}",
                case.variants, case.defects
            ));
        }
        if want.is_empty() && report["score"] != 100 {
            problems.push(format!("{user}: score {} not 100", report["score"]));
        }

        // The restore's summary counts what the generator wrote.
        assert_eq!(result["files"], summary["home_files"], "{user}: {result}");
        assert_eq!(
            result["data_restored"], summary["home_bytes"],
            "{user}: {result}"
        );
        assert_eq!(
            result["mailboxes"], summary["mail_accounts"],
            "{user}: {result}"
        );
        let legacy = case.variants.contains(&"sslcerts");
        let bundle = case.variants.contains(&"tls") || case.defects.contains(&"bad-cert") || legacy;
        // With both kinds (`al`), the `apache_tls/` bundle serves the domain and the
        // `sslcerts/` pair of the same domain is not installed twice.
        let installed =
            (case.variants.contains(&"tls") || legacy) && !case.defects.contains(&"bad-cert");
        assert_eq!(
            result["tls_certificates"],
            u64::from(installed),
            "{user}: {result}"
        );
        // What the restore did not restore: the bad certificate, and the dumps when there is
        // no database server.
        let skipped: BTreeSet<String> = result["skipped"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| format!("{}: {}", x["what"].as_str().unwrap(), x["reason"]))
            .collect();
        let mut want_skipped = Vec::new();
        if case.defects.contains(&"bad-cert") && legacy {
            want_skipped.push("tls certificate: \"no key in sslkeys/ matches this certificate\"");
            want_skipped.push(
                "tls certificate: \"no certificate in sslcerts/ carries this key's public key\"",
            );
        } else if case.defects.contains(&"bad-cert") {
            want_skipped
                .push("tls certificate: \"the certificate does not match the private key\"");
        }
        if db_url.is_none() {
            want_skipped.push("databases: \"no database server is configured (databases.url): the dumps are kept in the archive\"");
        }
        assert_eq!(
            skipped,
            want_skipped.iter().map(|x| x.to_string()).collect(),
            "{user}: {result}"
        );
        if db_url.is_some() {
            let dbs = summary["databases"].as_object().unwrap().len();
            assert_eq!(result["databases"], dbs, "{user}: {result}");
        }

        // The health check's side of the archive is the generator's.
        let files = &check(report, "files")["expected"];
        assert_eq!(files["files"], summary["home_files"], "{user}: {report}");
        assert_eq!(files["bytes"], summary["home_bytes"], "{user}: {report}");
        let home = data.join("host/home").join(user);
        let messages = &check(report, "messages")["expected"];
        for (mailbox, n) in summary["mailbox_messages"].as_object().unwrap() {
            // Maildir files, and for the mdbox `sales` the messages inside its storage files.
            assert_eq!(&messages[mailbox], n, "{user} {mailbox}: {report}");
            if case.variants.contains(&"mdbox") && mailbox.starts_with("sales@") {
                let storage = home.join(format!("mail/{user}.example/sales/storage/m.1"));
                assert!(storage.is_file(), "{}", storage.display());
            }
        }
        if case.variants.contains(&"gzip-message") {
            // The gzipped message is restored as it is (still gzip: Dovecot's zlib plugin
            // reads it; nothing here gunzips it).
            let cur = home.join(format!("mail/{user}.example/info/cur"));
            let gz: Vec<_> = std::fs::read_dir(&cur)
                .unwrap()
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(":2,SZ"))
                .collect();
            assert_eq!(gz.len(), 1, "{}", cur.display());
            let head = std::fs::read(gz[0].path()).unwrap();
            assert_eq!(&head[..2], &[0x1f, 0x8b], "still gzip");
        }
        if case.variants.contains(&"utf8-folder") {
            let folder = home.join(format!("mail/{user}.example/info/.Entwürfe/cur"));
            assert_eq!(std::fs::read_dir(&folder).unwrap().count(), 3);
        }
        if bundle {
            let tls = check(report, "tls");
            assert_ne!(tls["status"], "skipped", "{user}: {tls}");
        }
        if installed {
            // Where and how `apache_tls/` bundles go, whichever kind brought it.
            use std::os::unix::fs::PermissionsExt;
            let pem = data.join(format!("host/etc/ssl/npanel/{user}.example.pem"));
            let meta = std::fs::metadata(&pem).unwrap();
            assert_eq!(
                meta.permissions().mode() & 0o777,
                0o600,
                "{}",
                pem.display()
            );
            let text = std::fs::read_to_string(&pem).unwrap();
            assert!(text.contains("PRIVATE KEY") && text.contains("CERTIFICATE"));
        }
        if let Some(u) = &db_url {
            for (db, facts) in summary["databases"].as_object().unwrap() {
                let target = match db.strip_prefix(&format!("{user}_")) {
                    Some(rest) => format!("{user}_{rest}"),
                    None => format!("{user}_{db}"),
                };
                let tables = sql(
                    u,
                    &format!(
                        "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = '{target}' AND table_name NOT LIKE '\\_npanel%'"
                    ),
                );
                let want = if case.defects.contains(&"dropped-table") {
                    facts["tables"].as_u64().unwrap() - 1
                } else {
                    facts["tables"].as_u64().unwrap()
                };
                assert_eq!(
                    tables.trim(),
                    want.to_string(),
                    "{user}: {db} restored as {target}"
                );
            }
        } else {
            for c in ["databases", "tables", "rows", "app_credentials"] {
                assert_eq!(check(report, c)["status"], "skipped", "{c}: {report}");
            }
        }
    }
    eprintln!(
        "{} archives restored and checked in {:.1} s",
        CASES.len(),
        t0.elapsed().as_secs_f64()
    );
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
}

/// The mdbox variant restored, then one of `sales`' two storage files taken from the account:
/// the health check run again counts the messages inside the files on both sides and sees
/// half of them gone. Removed, the file is also one file fewer (`files`); put back as zeros of
/// the same size (same files, same bytes, no messages in it), exactly `messages` fails.
#[test]
fn an_mdbox_mailbox_that_lost_a_storage_file_fails_its_message_count() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (_srv, url) = serve(&data, &[]);
    let tok = admin_token(&data);
    let (s, r) = http(
        &url,
        "POST",
        "/api/packages",
        &tok,
        Some(&json!({"id": "basic"})),
    );
    assert_eq!(s, 201, "{r}");
    let (s, r) = http(&url, "POST", "/api/packages/basic/activate", &tok, None);
    assert_eq!(s, 200, "{r}");
    let user = "fxmdloss";
    let (archive, summary) = fixture(dir.path(), user, "tar.gz", &["mdbox"], &[]);
    let (s, r) = http(
        &url,
        "POST",
        "/api/restore",
        &tok,
        Some(&json!({"archive": archive, "account": user})),
    );
    assert_eq!(s, 202, "{r}");
    let id = r["id"].as_str().unwrap().to_string();
    let hc = r["health_check"]["id"].as_str().unwrap().to_string();
    assert_eq!(wait_final(&url, &tok, &id)["status"], "succeeded");
    let first = wait_final(&url, &tok, &hc);
    assert_eq!(first["status"], "succeeded", "{first}");
    assert!(failing(&first["result"]).is_empty(), "{}", first["result"]);
    let sales = format!("sales@{user}.example");
    let all = summary["mailbox_messages"][&sales].as_u64().unwrap();
    assert_eq!(check(&first["result"], "messages")["actual"][&sales], all);

    let again = || -> Value {
        let (s, r) = http(
            &url,
            "POST",
            &format!("/api/migration/{id}/health"),
            &tok,
            None,
        );
        assert_eq!(s, 202, "{r}");
        let job = wait_final(&url, &tok, r["id"].as_str().unwrap());
        assert_eq!(job["status"], "succeeded", "{job}");
        job["result"].clone()
    };
    let m2 = data.join(format!(
        "host/home/{user}/mail/{user}.example/sales/storage/m.2"
    ));
    let len = std::fs::metadata(&m2).unwrap().len();
    std::fs::remove_file(&m2).unwrap();
    let report = again();
    let got = failing(&report);
    let want: BTreeSet<String> = ["files", "messages"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(got, want, "{report}");
    let messages = check(&report, "messages");
    // The generator puts half of the messages (rounded down) in m.1.
    assert_eq!(messages["expected"][&sales], all, "{messages}");
    assert_eq!(messages["actual"][&sales], all / 2, "{messages}");
    assert!(
        messages["message"].as_str().unwrap().contains(&sales),
        "{messages}"
    );

    std::fs::write(&m2, vec![0u8; len as usize]).unwrap();
    let report = again();
    let got = failing(&report);
    assert_eq!(
        got,
        ["messages".to_string()]
            .into_iter()
            .collect::<BTreeSet<_>>(),
        "{report}"
    );
    let messages = check(&report, "messages");
    assert!(
        messages["message"]
            .as_str()
            .unwrap()
            .contains("do not read as dbox"),
        "{messages}"
    );
}
