//! The CLI against a live `npanel serve` process (real Redis, real workers, real sockets, the
//! real store): `token`, `jobs`, `admin`, `watch` with its exit status, and `accounts`,
//! `packages`, `audit`.

mod common;

use common::*;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn npanel(args: &[&str], url: &str, token: &str) -> Output {
    Command::new(BIN)
        .args(args)
        .env("NPANEL_URL", url)
        .env("NPANEL_TOKEN", token)
        .env("NPANEL_LOG", "warn")
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn token(data: &Path, args: &[&str]) -> String {
    let o = Command::new(BIN)
        .arg("token")
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .env_remove("NPANEL_API__JWT_SECRET")
        .env("NPANEL_LOG", "warn")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    String::from_utf8(o.stdout).unwrap().trim().to_string()
}

/// Customer accounts `ids` on package `package` (created and activated when missing), written
/// straight to a running server's store: provisioning has no handler in this build.
fn seed_customers(data: &Path, package: &str, ids: &[&str]) {
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let st = store::Store::open_sqlite(&data.join("npanel.db"))
            .await
            .unwrap();
        if st.package(package).await.is_err() {
            st.create_package(store::NewPackage {
                id: package.into(),
                ..Default::default()
            })
            .await
            .unwrap();
            st.set_package_status(package, store::PackageStatus::Active)
                .await
                .unwrap();
        }
        for id in ids {
            st.create_account(&store::NewAccount {
                id: id.to_string(),
                package: Some(package.into()),
                domain: Some(format!("{id}.example")),
                ..Default::default()
            })
            .await
            .unwrap();
        }
        st.close().await;
    });
}

fn enqueue(url: &str, tok: &str, payload: &str, extra: &[&str]) -> String {
    let mut args = vec!["jobs", "enqueue", "diagnostic", "--payload", payload];
    args.extend_from_slice(extra);
    let o = npanel(&args, url, tok);
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    v["id"].as_str().unwrap().to_string()
}

#[test]
fn cli_against_a_live_server() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (_srv, url) = serve(&data, "cli");
    // The secret was generated at first start, private to its owner.
    let secret = data.join("jwt.secret");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&secret).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    let admin = token(&data, &["--role", "admin", "--ttl", "10m"]);
    assert!(!text(&npanel(&["config"], &url, &admin))
        .contains(&std::fs::read_to_string(&secret).unwrap()));

    // watch: a job that succeeds exits 0 and shows progress lines.
    let ok = enqueue(&url, &admin, r#"{"duration_ms": 1200, "steps": 4}"#, &[]);
    let o = npanel(&["watch", &ok], &url, &admin);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains(&format!("{ok} succeeded")),
        "{}",
        text(&o)
    );

    // watch: a job that fails for good exits non-zero.
    let bad = enqueue(
        &url,
        &admin,
        r#"{"duration_ms": 100, "steps": 1, "fail_attempts": 5}"#,
        &["--max-attempts", "1"],
    );
    let o = npanel(&["watch", &bad], &url, &admin);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(text(&o).contains(&format!("{bad} failed")), "{}", text(&o));

    // watch: a cancelled job exits non-zero too.
    let long = enqueue(&url, &admin, r#"{"duration_ms": 20000, "steps": 20}"#, &[]);
    let snapshots = snapshots_sent(&url);
    let watcher = Command::new(BIN)
        .args(["watch", &long])
        .env("NPANEL_URL", &url)
        .env("NPANEL_TOKEN", &admin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Cancelled once the watcher follows the job (the server sent it its snapshot), so it sees
    // the cancel arrive rather than a job already over.
    let t = Instant::now();
    while snapshots_sent(&url) <= snapshots {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "the watcher never connected"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let o = npanel(&["jobs", "cancel", &long], &url, &admin);
    assert!(o.status.success(), "{}", text(&o));
    let o = watcher.wait_with_output().unwrap();
    assert!(!o.status.success(), "{}", text(&o));

    // jobs list / show.
    let o = npanel(&["jobs", "list", "--kind", "diagnostic"], &url, &admin);
    assert!(o.status.success());
    for id in [&ok, &bad, &long] {
        assert!(text(&o).contains(id.as_str()));
    }
    let o = npanel(&["jobs", "show", &ok], &url, &admin);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["status"], "succeeded");
    assert_eq!(v["progress_percent"], 100.0);

    // jobs retry: the failed one runs again.
    let o = npanel(&["jobs", "retry", &bad], &url, &admin);
    assert!(o.status.success(), "{}", text(&o));

    // admin: concurrency set/show, pause/resume, queue view.
    let o = npanel(
        &["admin", "concurrency", "set", "diagnostic", "4"],
        &url,
        &admin,
    );
    assert!(o.status.success(), "{}", text(&o));
    let o = npanel(&["admin", "concurrency"], &url, &admin);
    let line = text(&o)
        .lines()
        .find(|l| l.starts_with("diagnostic"))
        .unwrap()
        .to_string();
    assert_eq!(line.split_whitespace().nth(1), Some("4"), "{line}");
    assert!(npanel(&["admin", "pause"], &url, &admin).status.success());
    assert!(text(&npanel(&["admin", "queue"], &url, &admin)).contains("(PAUSED)"));
    assert!(npanel(&["admin", "resume"], &url, &admin).status.success());

    // A customer may not enqueue or administer, and may not watch another account's job.
    // (The API checks a customer token's account against the store: it must exist.)
    seed_customers(&data, "t", &["acme"]);
    let cust = token(&data, &["--role", "customer", "--account", "acme"]);
    let o = npanel(&["jobs", "enqueue", "diagnostic"], &url, &cust);
    assert!(!o.status.success());
    assert!(text(&o).contains("forbidden"), "{}", text(&o));
    let o = npanel(&["watch", &ok], &url, &cust);
    assert!(!o.status.success());
    assert!(text(&o).contains("not_found"), "{}", text(&o));
    // No token: one clear sentence.
    let o = npanel(&["admin", "queue"], &url, "");
    assert!(text(&o).contains("unauthorized"), "{}", text(&o));
    // Bad token options are refused before anything is signed.
    let o = Command::new(BIN)
        .args(["token", "--role", "customer"])
        .arg("--data-dir")
        .arg(&data)
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(text(&o).contains("--account"), "{}", text(&o));
}

/// Snapshots the server has sent to WebSockets (`/metrics`): one per socket that started
/// following something.
fn snapshots_sent(url: &str) -> u64 {
    let r = ws::client::blocking::HttpClient::new(url, None)
        .unwrap()
        .request("GET", "/metrics", &[], None)
        .unwrap();
    String::from_utf8_lossy(&r.body)
        .lines()
        .filter(|l| {
            l.starts_with("npanel_ws_messages_sent_total{") && l.contains("type=\"snapshot\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Table rows of a list command (its stdout without the header line).
fn rows(o: &Output) -> Vec<String> {
    stdout(o).lines().skip(1).map(str::to_string).collect()
}

/// Run `args` until `done` accepts the output (the audit outbox drains within about a second).
fn poll(args: &[&str], url: &str, tok: &str, done: impl Fn(&Output) -> bool) -> Output {
    let t = Instant::now();
    loop {
        let o = npanel(args, url, tok);
        if done(&o) {
            return o;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "{args:?} never matched: {}",
            text(&o)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

const SEED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/packages");

#[test]
fn accounts_packages_and_audit_against_a_live_server() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (_srv, url) = serve(&data, "cli");
    let admin = token(&data, &["--role", "admin", "--ttl", "10m"]);

    // A fresh server has no accounts: a header and nothing else, no error.
    let o = npanel(&["accounts", "list"], &url, &admin);
    assert!(o.status.success(), "{}", text(&o));
    assert!(stdout(&o).starts_with("id "), "{}", text(&o));
    assert!(rows(&o).is_empty(), "{}", text(&o));
    assert!(o.stderr.is_empty(), "{}", text(&o));

    // Import the seed packages and activate them; the list shows the three as active.
    let o = npanel(&["packages", "import", SEED, "--activate"], &url, &admin);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        stdout(&o).contains("3 created, 0 existing, 0 failed"),
        "{}",
        text(&o)
    );
    let o = npanel(&["packages", "list"], &url, &admin);
    assert!(o.status.success(), "{}", text(&o));
    let listed = rows(&o);
    assert_eq!(listed.len(), 3, "{}", text(&o));
    for id in ["basic", "enterprise", "pro"] {
        let row = listed
            .iter()
            .find(|l| l.split_whitespace().next() == Some(id))
            .unwrap_or_else(|| panic!("{id} not listed: {}", text(&o)));
        assert!(row.contains(" active "), "{row}");
    }
    // A second import reports them as existing and succeeds.
    let o = npanel(&["packages", "import", SEED, "--activate"], &url, &admin);
    assert!(o.status.success(), "{}", text(&o));
    for id in ["basic", "enterprise", "pro"] {
        assert!(
            stdout(&o).contains(&format!("{id} exists (active), skipped")),
            "{}",
            text(&o)
        );
    }
    assert!(
        stdout(&o).contains("0 created, 3 existing, 0 failed"),
        "{}",
        text(&o)
    );
    let o = npanel(&["packages", "show", "pro"], &url, &admin);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["limits"]["disk_mb"], 50 * 1024);

    // Accounts (written to the store): one page with a hint, every page with --all, and one.
    seed_customers(&data, "basic", &["ann", "bob", "cat"]);
    let o = npanel(&["accounts", "list", "--limit", "2"], &url, &admin);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(rows(&o).len(), 2, "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("--all"),
        "{}",
        text(&o)
    );
    let o = npanel(
        &[
            "accounts", "list", "--limit", "2", "--all", "--status", "pending",
        ],
        &url,
        &admin,
    );
    assert!(o.status.success(), "{}", text(&o));
    let ids: Vec<String> = rows(&o)
        .iter()
        .map(|l| l.split_whitespace().next().unwrap().to_string())
        .collect();
    assert_eq!(ids, ["ann", "bob", "cat"], "{}", text(&o));
    let o = npanel(&["accounts", "show", "bob"], &url, &admin);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["domain"], "bob.example");
    let o = npanel(&["accounts", "show", "nobody"], &url, &admin);
    assert!(!o.status.success());
    assert!(text(&o).contains("not_found"), "{}", text(&o));

    // Audit: the package records arrive through the outbox; the chain verifies; exports.
    let o = poll(
        &["audit", "search", "--action", "package_"],
        &url,
        &admin,
        |o| {
            ["basic", "enterprise", "pro"].iter().all(|id| {
                rows(o).iter().any(|l| {
                    l.contains("package_created")
                        && l.contains(" success ")
                        && l.contains(&format!("package/{id} "))
                })
            })
        },
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        rows(&o).iter().all(|l| l.contains(" package_")),
        "{}",
        text(&o)
    );
    let o = npanel(&["audit", "verify"], &url, &admin);
    assert!(o.status.success(), "{}", text(&o));
    assert!(stdout(&o).contains("audit log OK"), "{}", text(&o));
    let o = npanel(&["audit", "export", "--format", "csv"], &url, &admin);
    assert!(o.status.success(), "{}", text(&o));
    assert!(stdout(&o).starts_with("seq,id,timestamp"), "{}", text(&o));
    assert!(stdout(&o).contains("package_activated"), "{}", text(&o));
    let file = dir.path().join("audit.json");
    let o = npanel(
        &["audit", "export", "--action", "package_activated", "-o"],
        &url,
        &admin,
    );
    assert!(!o.status.success(), "-o needs a file: {}", text(&o));
    let o = npanel(
        &[
            "audit",
            "export",
            "--action",
            "package_activated",
            "--from",
            "1h",
            "-o",
            file.to_str().unwrap(),
        ],
        &url,
        &admin,
    );
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(v.as_array().map(Vec::len), Some(3), "{v}");
    // A failed export leaves an existing file as it was.
    let o = npanel(
        &[
            "audit",
            "export",
            "--result",
            "bogus",
            "-o",
            file.to_str().unwrap(),
        ],
        &url,
        &admin,
    );
    assert!(!o.status.success());
    assert!(text(&o).contains("invalid_request"), "{}", text(&o));
    assert!(
        serde_json::from_str::<serde_json::Value>(&std::fs::read_to_string(&file).unwrap()).is_ok()
    );
    assert!(!dir.path().join("audit.json.part").exists());

    // A customer may not verify the chain.
    let cust = token(&data, &["--role", "customer", "--account", "ann"]);
    let o = npanel(&["audit", "verify"], &url, &cust);
    assert!(!o.status.success());
    assert!(text(&o).contains("forbidden"), "{}", text(&o));
}

#[test]
fn packages_import_reports_broken_yaml_and_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (_srv, url) = serve(&data, "cli");
    let admin = token(&data, &["--role", "admin", "--ttl", "10m"]);
    let pkgs = dir.path().join("pkgs");
    std::fs::create_dir(&pkgs).unwrap();
    std::fs::write(
        pkgs.join("a-broken.yaml"),
        "id: broken\nlimits:\n  disk_quota: [1\nfeatures: [php]\n",
    )
    .unwrap();
    std::fs::write(
        pkgs.join("b-starter.yml"),
        "id: starter\nname: Starter\nlimits:\n  disk_quota: \"1 GB\"\n",
    )
    .unwrap();
    std::fs::write(pkgs.join("notes.txt"), "not a package").unwrap();
    let o = npanel(
        &["packages", "import", pkgs.to_str().unwrap()],
        &url,
        &admin,
    );
    assert!(!o.status.success(), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    let line = err
        .lines()
        .find(|l| l.contains("a-broken.yaml"))
        .unwrap_or_else(|| panic!("{}", text(&o)));
    assert!(line.contains("line 4"), "{line}");
    assert!(
        stdout(&o).contains("starter created (draft)"),
        "{}",
        text(&o)
    );
    assert!(
        stdout(&o).contains("1 created, 0 existing, 1 failed"),
        "{}",
        text(&o)
    );
    let o = npanel(&["packages", "activate", "starter"], &url, &admin);
    assert!(o.status.success(), "{}", text(&o));
    assert!(stdout(&o).contains("starter: active"), "{}", text(&o));
    // A directory without package files is an error, not a silent success.
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let o = npanel(
        &["packages", "import", empty.to_str().unwrap()],
        &url,
        &admin,
    );
    assert!(!o.status.success());
    assert!(text(&o).contains("no *.yaml"), "{}", text(&o));
}

/// `npanel token --login-link`'s library half (`npanel::cli::login`) against a live server: the
/// code goes into the server's Redis, and its link exchanges once for a token of that account.
#[test]
fn login_links_exchange_once_against_a_live_server() {
    use npanel::cli::client::Api;
    use npanel::cli::login::{base_url, login_link, LinkRequest};
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (_srv, url, qc) = serve_queue(&data, "cli-login");
    seed_customers(&data, "basic", &["linked", "other"]);
    let mut cfg = npanel::Config {
        data_dir: data.clone(),
        queue: qc,
        ..npanel::Config::default()
    };
    cfg.api.public_url = Some(format!("{url}/"));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let req = LinkRequest {
        role: api::Role::Customer,
        account: Some("linked".into()),
        reseller: None,
        subject: "ops".into(),
        token_ttl: Duration::from_secs(3600),
    };
    let link = rt.block_on(login_link(&cfg, req.clone())).unwrap();
    let code = link
        .strip_prefix(&format!("{url}/login#code="))
        .unwrap_or_else(|| panic!("{link} is not {url}/login#code=..."))
        .to_string();
    assert_eq!(code.len(), 43, "{code}");

    let anon = Api::new(&url, None).unwrap();
    let body = serde_json::json!({ "code": code });
    let v = rt
        .block_on(anon.call("POST", "/api/auth/login", Some(body.clone())))
        .unwrap();
    assert_eq!(v["account"], "linked", "{v}");
    assert_eq!(v["role"], "customer");
    assert_eq!(v["expires_in"], 3600, "--ttl is the token's lifetime");
    let tok = v["token"].as_str().unwrap();
    let o = npanel(&["accounts", "show", "linked"], &url, tok);
    assert!(o.status.success(), "{}", text(&o));
    let o = npanel(&["accounts", "show", "other"], &url, tok);
    assert!(!o.status.success(), "{}", text(&o));
    // Once only.
    let e = rt
        .block_on(anon.call("POST", "/api/auth/login", Some(body)))
        .unwrap_err();
    let e = e
        .downcast_ref::<npanel::cli::client::ApiError>()
        .expect("an API error");
    assert_eq!((e.status, e.code.as_str()), (401, "unauthorized"));

    // A customer link needs an account, said before Redis is looked for.
    let e = rt
        .block_on(login_link(
            &cfg,
            LinkRequest {
                account: None,
                ..req
            },
        ))
        .unwrap_err();
    assert!(e.to_string().contains("--account"), "{e}");
    // Without api.public_url the link points at `listen` (loopback for an unspecified one).
    cfg.api.public_url = None;
    cfg.listen = "0.0.0.0:8080".into();
    assert_eq!(base_url(&cfg), "http://127.0.0.1:8080");
}
