//! The WHMCS server module (PHP, `api/whmcs/`) against a live `npanel serve`: the php-cli
//! harness (`api/whmcs/tests/run.php`) drives every module function end to end (single sign-on
//! included: the harness exchanges the link's code at `/api/auth/login` and checks no log entry
//! shows it), and the accounts it makes are real under the embedded host root
//! (`<data_dir>/host`).
//!
//! Needs `php` with the curl extension on PATH (`.ci/run` installs php-cli and php-curl); without
//! them the test says it was skipped and passes.

mod common;

use common::*;
use std::path::Path;
use std::process::{Command, Output};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `npanel <args> --data-dir <data>` (commands that read the data dir, not the API).
fn local(data: &Path, args: &[&str]) -> Output {
    let o = Command::new(BIN)
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .env_remove("NPANEL_API__JWT_SECRET")
        .env_remove("DATABASE_URL")
        .env("NPANEL_LOG", "warn")
        .output()
        .unwrap();
    assert!(o.status.success(), "npanel {args:?}: {}", text(&o));
    o
}

/// Why the PHP side cannot run here, if it cannot.
fn php_missing() -> Option<&'static str> {
    match Command::new("php")
        .args(["-r", "exit(function_exists('curl_init') ? 0 : 3);"])
        .output()
    {
        Err(_) => Some("php is not on PATH"),
        Ok(o) if o.status.code() == Some(3) => Some("php has no curl extension (php-curl)"),
        Ok(o) if !o.status.success() => Some("php does not run"),
        Ok(_) => None,
    }
}

#[test]
fn whmcs_module_drives_a_live_server_end_to_end() {
    if let Some(why) = php_missing() {
        println!("whmcs_php: skipped: {why} (.ci/run installs php-cli and php-curl)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (_srv, url) = serve(&data, "whmcs-php");

    // The example packages (basic, pro, ...), active.
    let o = local(&data, &["token", "--role", "admin", "--ttl", "10m"]);
    let admin = String::from_utf8(o.stdout).unwrap().trim().to_string();
    let o = Command::new(BIN)
        .args([
            "packages",
            "import",
            &format!("{ROOT}/packages"),
            "--activate",
        ])
        .env("NPANEL_URL", &url)
        .env("NPANEL_TOKEN", &admin)
        .env("NPANEL_LOG", "warn")
        .output()
        .unwrap();
    assert!(o.status.success(), "packages import: {}", text(&o));

    // An admin-scope WHMCS key: `key_id: ...` and `secret: ...` on stdout.
    let o = local(
        &data,
        &["whmcs", "key", "create", "--note", "whmcs_php test"],
    );
    let out = String::from_utf8(o.stdout).unwrap();
    let field = |name: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|| panic!("no {name} in: {out}"))
    };
    let (key, secret) = (field("key_id:"), field("secret:"));

    let user = format!(
        "wp{}",
        &ulid::Ulid::new().to_string().to_ascii_lowercase()[16..]
    );
    let host_root = data.join("host");
    let o = Command::new("php")
        .arg(format!("{ROOT}/api/whmcs/tests/run.php"))
        .current_dir(ROOT)
        .env("NPANEL_URL", &url)
        .env("NPANEL_WHMCS_KEY", &key)
        .env("NPANEL_WHMCS_SECRET", &secret)
        .env("NPANEL_TEST_USERNAME", &user)
        .env("NPANEL_TEST_PACKAGE", "basic")
        .env("NPANEL_TEST_PACKAGE2", "pro")
        .env("NPANEL_HOST_ROOT", &host_root)
        .output()
        .unwrap();
    println!("{}", text(&o));
    assert!(o.status.success(), "run.php failed: {}", text(&o));
    assert!(text(&o).contains("PASS:"), "{}", text(&o));
    // The harness printed how many checks passed; the main ones are all there.
    for check in [
        "CreateAccount -> success",
        "CreateAccount again -> success",
        "UsageUpdate -> success",
        "ListAccounts lists the account",
        "ServiceSingleSignOn -> a login link",
        "ServiceSingleSignOn after terminate",
        "TerminateAccount -> success",
    ] {
        assert!(text(&o).contains(check), "no '{check}' in: {}", text(&o));
    }

    // On disk: the account was real. Its home is gone after terminate, and the backup taken
    // before it went is there.
    assert!(
        !host_root.join("home").join(&user).exists(),
        "home of {user} left behind"
    );
    let backups: Vec<_> = std::fs::read_dir(host_root.join("backups"))
        .expect("a backups dir under the host root")
        .map_while(Result::ok)
        .filter(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.starts_with(&format!("{user}-")) && n.ends_with(".tar.zst")
        })
        .collect();
    assert_eq!(
        backups.len(),
        1,
        "one backup of {user} in {}",
        host_root.display()
    );
    assert!(backups[0].metadata().unwrap().len() > 0);
    let line = text(&o)
        .lines()
        .find(|l| l.starts_with("account="))
        .map(str::to_string)
        .unwrap_or_default();
    assert!(
        line.contains(&backups[0].path().display().to_string()),
        "terminate's backup_location ({line}) is the file on disk"
    );
}
