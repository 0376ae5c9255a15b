//! The `upgrade` job end to end (DESIGN §14), as an operator runs it: a fake install root
//! (`releases/<v>/`, `current`, `shared/config.toml`, a control script that stops and starts
//! `current/bin/npanel serve`), a private Redis, the real SQLite store, two releases signed
//! here as `minisign -S` does (prehashed Ed25519, a key made for the run), and the real
//! `npanel` serving on both sides. A release's `bin/npanel` is a small wrapper that execs the
//! compiled binary with `NPANEL_BUILD_VERSION` set (and, for the failure cases, breaks one
//! thing: its migration, its start, its reported version, its diagnostic jobs, its config
//! check), so "the new version" really serves.
//!
//! Asserted: the whole job succeeds and the new version serves; a failure injected at every
//! stage ends with the previous release serving, the store's schema and migrations as they
//! were, and an audit record of the failing stage; a tampered tarball, a wrong key, a rewritten
//! trusted comment and a downgrade are refused before anything in the install root changes.

use base64::Engine;
use ed25519_dalek::{Signer, SigningKey};
use queue::testing::PrivateRedis;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_npanel");
const OLD: &str = "0.9.0";
const NEW: &str = "1.0.0";
/// The stages' audit actions (the API adds `upgrade_requested`, the job's end `upgrade_<status>`).
const STAGES: [&str; 7] = [
    "upgrade_verify",
    "upgrade_preflight",
    "upgrade_backup",
    "upgrade_deploy",
    "upgrade_validate",
    "upgrade_rollback",
    "upgrade_cleanup",
];

fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut b)
        .unwrap();
    b
}

/// A minisign key pair made for the run.
struct Key {
    sk: SigningKey,
    id: [u8; 8],
}

impl Key {
    fn new() -> Key {
        Key {
            sk: SigningKey::from_bytes(&random::<32>()),
            id: random::<8>(),
        }
    }

    /// The public key as `minisign.pub`'s second line: base64("Ed" ‖ key id ‖ key).
    fn public(&self) -> String {
        let mut b = b"Ed".to_vec();
        b.extend_from_slice(&self.id);
        b.extend_from_slice(self.sk.verifying_key().as_bytes());
        base64::engine::general_purpose::STANDARD.encode(b)
    }

    /// A `.minisig` as `minisign -S -t COMMENT` writes it: "ED" over BLAKE2b-512 of the file,
    /// then the global signature over signature ‖ trusted comment.
    fn sign(&self, data: &[u8], comment: &str) -> String {
        use blake2::Digest;
        let hash = blake2::Blake2b512::digest(data);
        let sig = self.sk.sign(&hash).to_bytes();
        let mut line = b"ED".to_vec();
        line.extend_from_slice(&self.id);
        line.extend_from_slice(&sig);
        let mut global_msg = sig.to_vec();
        global_msg.extend_from_slice(comment.as_bytes());
        let global = self.sk.sign(&global_msg).to_bytes();
        let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        format!(
            "untrusted comment: signature from the test key\n{}\ntrusted comment: {comment}\n{}\n",
            b64(&line),
            b64(&global)
        )
    }
}

/// What a release's wrapper breaks.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Break {
    Nothing,
    /// Its migration changes the store's schema (a new table), then succeeds.
    MigrationChangesSchema,
    /// Its migration changes the schema, then fails.
    MigrationFails,
    /// `serve` exits at once.
    DoesNotStart,
    /// `serve` reports another version.
    WrongVersion,
    /// `serve` never runs diagnostic jobs (limit 0).
    NoDiagnostics,
    /// `config check` refuses the live config.
    ConfigCheckFails,
}

struct Fixture {
    _redis: PrivateRedis,
    _tmp: tempfile::TempDir,
    root: PathBuf,
    _cfg: PathBuf,
    db: PathBuf,
    port: u16,
    key: Key,
    token: String,
}

fn wrapper(version: &str, brk: Break, db: &Path) -> String {
    let probe = format!(
        "sqlite3 '{}' 'CREATE TABLE upgrade_probe (x INTEGER); INSERT INTO upgrade_probe VALUES (1);'",
        db.display()
    );
    let (migrate, serve, check) = match brk {
        Break::Nothing => (String::new(), String::new(), String::new()),
        Break::MigrationChangesSchema => (
            format!("\"{BIN}\" \"$@\" || exit 1; {probe} || exit 1; exit 0"),
            String::new(),
            String::new(),
        ),
        Break::MigrationFails => (
            format!("\"{BIN}\" \"$@\"; {probe}; echo 'migration 13 failed: injected' >&2; exit 1"),
            String::new(),
            String::new(),
        ),
        Break::DoesNotStart => (
            String::new(),
            "echo 'injected: cannot start' >&2; exit 1".into(),
            String::new(),
        ),
        Break::WrongVersion => (
            String::new(),
            "export NPANEL_BUILD_VERSION=9.9.9".into(),
            String::new(),
        ),
        Break::NoDiagnostics => (
            String::new(),
            "export NPANEL_QUEUE__LIMITS__DIAGNOSTIC=0".into(),
            String::new(),
        ),
        Break::ConfigCheckFails => (
            String::new(),
            String::new(),
            "echo 'invalid configuration: injected' >&2; exit 1".into(),
        ),
    };
    format!(
        "#!/bin/sh\nexport NPANEL_BUILD_VERSION={version}\ncase \" $* \" in\n  *' store migrate '*) {m} ;;\n  *' serve '*) {s} ;;\n  *' config check '*) {c} ;;\nesac\nexec \"{BIN}\" \"$@\"\n",
        m = if migrate.is_empty() { ":".to_string() } else { migrate },
        s = if serve.is_empty() { ":".to_string() } else { serve },
        c = if check.is_empty() { ":".to_string() } else { check },
    )
}

fn write_exec(p: &Path, text: &str) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// A release directory's contents: `bin/npanel` (the wrapper) and `VERSION`.
fn release_dir(dir: &Path, version: &str, brk: Break, db: &Path) {
    write_exec(&dir.join("bin/npanel"), &wrapper(version, brk, db));
    std::fs::write(dir.join("VERSION"), format!("{version}\n")).unwrap();
}

/// One request to the service on `port` (a fresh connection: it restarts under the test);
/// `None` when nothing answered.
fn http(
    port: u16,
    method: &str,
    path: &str,
    token: &str,
    body: Option<&Value>,
) -> Option<(u16, Value)> {
    let r = ws::client::blocking::HttpClient::new(
        &format!("http://127.0.0.1:{port}"),
        Some(token.to_string()),
    )
    .ok()?
    .with_timeout(Duration::from_secs(60))
    .json(method, path, body)
    .ok()?;
    Some((
        r.status.as_u16(),
        serde_json::from_slice(&r.body).unwrap_or(Value::Null),
    ))
}

impl Fixture {
    fn new(tag: &str) -> Fixture {
        let redis = PrivateRedis::start();
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("opt-npanel");
        let shared = root.join("shared");
        let data = shared.join("data");
        std::fs::create_dir_all(&data).unwrap();
        let db = data.join("npanel.db");
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let key = Key::new();
        release_dir(&root.join("releases").join(OLD), OLD, Break::Nothing, &db);
        std::os::unix::fs::symlink(format!("releases/{OLD}"), root.join("current")).unwrap();
        let ctl = shared.join("npanelctl");
        write_exec(
            &ctl,
            &format!(
                r#"#!/bin/sh
# stop | start the service, as an init script would.
ROOT='{root}'
PIDF="$ROOT/shared/serve.pid"
alive() {{ [ -e "/proc/$1" ] && [ "$(awk '{{print $3}}' /proc/$1/stat 2>/dev/null)" != Z ]; }}
# Whether the deploy window's hold was there when we were asked (checked by the test).
if [ -f "$ROOT/shared/data/upgrade.hold" ]; then echo "$1 held" ; else echo "$1 free"; fi >>"$ROOT/shared/ctl.log"
case "$1" in
stop)
  [ -f "$PIDF" ] || exit 0
  pid=$(cat "$PIDF")
  kill "$pid" 2>/dev/null
  i=0
  while alive "$pid"; do
    i=$((i+1))
    [ $i -eq 300 ] && kill -9 "$pid" 2>/dev/null
    [ $i -gt 400 ] && exit 1
    sleep 0.1
  done
  rm -f "$PIDF" ;;
start)
  nohup "$ROOT/current/bin/npanel" --config "$ROOT/shared/config.toml" serve >>"$ROOT/shared/serve.log" 2>&1 </dev/null &
  echo $! >"$PIDF" ;;
*) echo "usage: $0 stop|start" >&2; exit 2 ;;
esac
"#,
                root = root.display()
            ),
        );
        let cfg = shared.join("config.toml");
        std::fs::write(
            &cfg,
            format!(
                r#"listen = "127.0.0.1:{port}"
data_dir = "{data}"
log = "info,npanel=debug"

[queue]
redis_url = "{redis}"
name = "upg-{tag}"

[workers]
shutdown_grace_secs = 2

[scheduler]
enabled = false

[host]
cgroups = false

[upgrade]
install_root = "{root}"
public_key = "{pk}"
control_command = "{ctl}"
validate_timeout_secs = 15
min_free_bytes = 1048576
"#,
                data = data.display(),
                redis = redis.url(),
                root = root.display(),
                pk = key.public(),
                ctl = ctl.display(),
            ),
        )
        .unwrap();
        let out = Command::new(BIN)
            .args([
                "--config",
                cfg.to_str().unwrap(),
                "token",
                "--role",
                "admin",
                "--ttl",
                "2h",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
        let f = Fixture {
            _redis: redis,
            _tmp: tmp,
            root,
            _cfg: cfg,
            db,
            port,
            key,
            token,
        };
        f.ctl("start");
        f.wait_version(OLD);
        f
    }

    fn ctl(&self, action: &str) {
        let st = Command::new(self.root.join("shared/npanelctl"))
            .arg(action)
            .status()
            .unwrap();
        assert!(st.success(), "npanelctl {action}");
    }

    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Option<(u16, Value)> {
        http(self.port, method, path, &self.token, body)
    }

    /// Wait until the service answers with `version`.
    fn wait_version(&self, version: &str) -> Value {
        let t = Instant::now();
        loop {
            if let Some((200, v)) = self.call("GET", "/api/admin/upgrade", None) {
                if v["version"] == version {
                    return v;
                }
            }
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "the service did not answer as {version}; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn log(&self) -> String {
        let s = std::fs::read_to_string(self.root.join("shared/serve.log")).unwrap_or_default();
        s.lines()
            .rev()
            .take(60)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// A signed release tarball `npanel-<v>.tar.gz` (+ `.minisig`) outside the root.
    fn release(&self, version: &str, brk: Break, name: &str) -> PathBuf {
        let dir = self._tmp.path().join("build").join(name);
        release_dir(&dir, version, brk, &self.db);
        let out = self._tmp.path().join("dist").join(name);
        std::fs::create_dir_all(&out).unwrap();
        let tarball = out.join(format!("npanel-{version}.tar.gz"));
        {
            let f = std::fs::File::create(&tarball).unwrap();
            let gz = flate2::write::GzEncoder::new(f, flate2::Compression::fast());
            let mut t = tar::Builder::new(gz);
            t.append_dir_all(".", &dir).unwrap();
            t.into_inner().unwrap().finish().unwrap();
        }
        let data = std::fs::read(&tarball).unwrap();
        let comment =
            format!("timestamp:1764547200\tversion:{version}\tfile:npanel-{version}.tar.gz");
        std::fs::write(
            format!("{}.minisig", tarball.display()),
            self.key.sign(&data, &comment),
        )
        .unwrap();
        tarball
    }

    /// Start an upgrade through the API; its id.
    fn start(&self, tarball: &Path, force: bool) -> String {
        let (st, v) = self
            .call(
                "POST",
                "/api/admin/upgrade",
                Some(&json!({"tarball": tarball, "force": force})),
            )
            .expect("the API answers");
        assert_eq!(st, 202, "{v}");
        v["id"].as_str().unwrap().to_string()
    }

    /// Poll the job until it ends (the service restarts meanwhile).
    fn finish(&self, id: &str) -> Value {
        let t = Instant::now();
        loop {
            if let Some((200, j)) = self.call("GET", &format!("/api/jobs/{id}"), None) {
                if ["succeeded", "failed", "cancelled"]
                    .contains(&j["status"].as_str().unwrap_or(""))
                {
                    return j;
                }
            }
            assert!(
                t.elapsed() < Duration::from_secs(180),
                "upgrade job {id} did not end; log:\n{}\napply logs: {}",
                self.log(),
                self.apply_logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn apply_logs(&self) -> String {
        let mut s = String::new();
        for e in std::fs::read_dir(self.root.join("upgrades"))
            .into_iter()
            .flatten()
            .flatten()
        {
            s.push_str(&std::fs::read_to_string(e.path().join("apply.log")).unwrap_or_default());
        }
        s
    }

    /// The install root but `shared/` (logs, the store): paths, sizes, link targets.
    fn tree(&self) -> BTreeMap<String, String> {
        fn walk(base: &Path, p: &Path, out: &mut BTreeMap<String, String>) {
            for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
                let path = e.path();
                let rel = path.strip_prefix(base).unwrap().display().to_string();
                if rel == "shared" {
                    continue;
                }
                let md = std::fs::symlink_metadata(&path).unwrap();
                if md.file_type().is_symlink() {
                    out.insert(
                        rel,
                        format!("-> {}", std::fs::read_link(&path).unwrap().display()),
                    );
                } else if md.is_dir() {
                    out.insert(rel.clone(), "dir".into());
                    walk(base, &path, out);
                } else {
                    out.insert(rel, format!("{} bytes", md.len()));
                }
            }
        }
        let mut out = BTreeMap::new();
        walk(&self.root, &self.root, &mut out);
        out
    }

    /// The store's schema and applied migrations.
    fn schema(&self) -> String {
        let out = Command::new("sqlite3")
            .arg(&self.db)
            .arg("SELECT type, name, sql FROM sqlite_master ORDER BY type, name; SELECT version, hex(checksum) FROM _sqlx_migrations ORDER BY version;")
            .output()
            .expect("sqlite3");
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap()
    }

    fn serving_pid(&self) -> u64 {
        self.wait_version(OLD)["pid"].as_u64().unwrap()
    }

    /// Audit records of this job, oldest first: (action, result, related_logs).
    fn audits(&self, job: &str) -> Vec<(String, String, String)> {
        let (st, v) = self
            .call("GET", "/api/audit?action=upgrade_&limit=500", None)
            .unwrap();
        assert_eq!(st, 200, "{v}");
        let mut out: Vec<_> = v["records"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["job_id"] == job && STAGES.contains(&r["action"].as_str().unwrap_or("")))
            .map(|r| {
                (
                    r["action"].as_str().unwrap().to_string(),
                    r["result"].as_str().unwrap().to_string(),
                    r["related_logs"].to_string(),
                )
            })
            .collect();
        out.reverse();
        out
    }

    /// Wait until the job's audit records include `action` with `result` (the handler may
    /// append the last ones a moment after the job's result).
    fn audited(&self, job: &str, action: &str, result: &str) -> Vec<(String, String, String)> {
        let t = Instant::now();
        loop {
            let a = self.audits(job);
            if a.iter().any(|(x, r, _)| x == action && r == result) {
                return a;
            }
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "no {action} {result} audit for {job}: {a:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = Command::new(self.root.join("shared/npanelctl"))
            .arg("stop")
            .status();
    }
}

#[test]
fn refused_before_anything_changes() {
    let f = Fixture::new(&format!("refuse-{}", ulid::Ulid::new()));
    let pid = f.serving_pid();
    let before = f.tree();
    let schema = f.schema();
    let good = f.release(NEW, Break::Nothing, "good");

    // A tampered tarball (one byte flipped after signing).
    let tampered = f.release(NEW, Break::Nothing, "tampered");
    let mut bytes = std::fs::read(&tampered).unwrap();
    let n = bytes.len() - 10;
    bytes[n] ^= 0x55;
    std::fs::write(&tampered, bytes).unwrap();
    // Signed with another key.
    let wrong = f.release(NEW, Break::Nothing, "wrong-key");
    let other = Key::new();
    std::fs::write(
        format!("{}.minisig", wrong.display()),
        other.sign(
            &std::fs::read(&wrong).unwrap(),
            &format!("version:{NEW}\tfile:npanel-{NEW}.tar.gz"),
        ),
    )
    .unwrap();
    // The trusted comment rewritten (its global signature no longer matches).
    let rewritten = f.release(NEW, Break::Nothing, "rewritten");
    let sig = std::fs::read_to_string(format!("{}.minisig", rewritten.display())).unwrap();
    std::fs::write(
        format!("{}.minisig", rewritten.display()),
        sig.replace(&format!("version:{NEW}"), "version:2.0.0"),
    )
    .unwrap();
    // No signature at all.
    let unsigned = f.release(NEW, Break::Nothing, "unsigned");
    std::fs::remove_file(format!("{}.minisig", unsigned.display())).unwrap();
    // A downgrade.
    let older = f.release("0.8.0", Break::Nothing, "older");

    for (tarball, want) in [
        (&tampered, "does not verify"),
        (&wrong, "does not verify"),
        (&rewritten, "does not verify"),
        (&unsigned, "cannot read"),
        (&older, "downgrade needs force"),
    ] {
        let id = f.start(tarball, false);
        let j = f.finish(&id);
        assert_eq!(j["status"], "failed", "{j}");
        let err = j["error"].as_str().unwrap();
        assert!(
            err.starts_with("verify: ") && err.contains(want),
            "{tarball:?}: {err}"
        );
        let a = f.audited(&id, "upgrade_verify", "failure");
        assert_eq!(a.len(), 1, "only verify ran: {a:?}");
        assert_eq!(
            f.tree(),
            before,
            "the install root changed after {tarball:?}"
        );
    }
    // The downgrade passes verify with force (dry run: nothing changes either).
    let (st, r) = f
        .call(
            "GET",
            &format!(
                "/api/admin/upgrade/preflight?tarball={}&force=true",
                older.display()
            ),
            None,
        )
        .unwrap();
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["to_version"], "0.8.0");
    assert_eq!(r["ok"], true, "{r:#}");
    // The dry run of the good release: a full report, counted.
    let t = Instant::now();
    let (st, r) = f
        .call(
            "GET",
            &format!("/api/admin/upgrade/preflight?tarball={}", good.display()),
            None,
        )
        .unwrap();
    let took = t.elapsed();
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["ok"], true, "{r:#}");
    assert_eq!(r["counts"]["fail"], 0);
    let names: Vec<&str> = r["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    for want in [
        "release_layout",
        "current_release",
        "free_space",
        "new_binary_version",
        "config_check",
        "pending_migrations",
        "queue",
        "redis",
        "store",
        "store_backup",
        "redis_snapshot",
        "service_control",
        "other_upgrade",
    ] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    // Measured, not asserted (DESIGN §8): the issue's target is < 5 s.
    let mut times = vec![took];
    for _ in 0..6 {
        let t = Instant::now();
        let (st, r) = f
            .call(
                "GET",
                &format!("/api/admin/upgrade/preflight?tarball={}", good.display()),
                None,
            )
            .unwrap();
        assert_eq!(st, 200, "{r}");
        times.push(t.elapsed());
    }
    times.sort();
    eprintln!(
        "preflight of a healthy host (GET /api/admin/upgrade/preflight, {} runs): median {:?}, worst {:?}",
        times.len(),
        times[times.len() / 2],
        times[times.len() - 1]
    );
    // The CLI's dry run prints the same report and exits 0.
    let out = Command::new(BIN)
        .args(["upgrade", good.to_str().unwrap(), "--dry-run"])
        .env("NPANEL_URL", format!("http://127.0.0.1:{}", f.port))
        .env("NPANEL_TOKEN", &f.token)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("PASS: new_binary_version: npanel 1.0.0"),
        "{text}"
    );
    assert!(text.contains("FAILURES: 0"), "{text}");

    // Preflight FAIL: the new binary refuses the live config.
    let bad_cfg = f.release(NEW, Break::ConfigCheckFails, "bad-config");
    let id = f.start(&bad_cfg, false);
    let j = f.finish(&id);
    assert_eq!(j["status"], "failed", "{j}");
    let err = j["error"].as_str().unwrap();
    assert!(
        err.contains("preflight failed") && err.contains("config_check"),
        "{err}"
    );
    let a = f.audited(&id, "upgrade_preflight", "failure");
    assert!(
        a.iter()
            .any(|(x, _, logs)| x == "upgrade_preflight" && logs.contains("config_check")),
        "{a:?}"
    );
    assert!(!a.iter().any(|(x, _, _)| x == "upgrade_backup"), "{a:?}");
    // Backup failure: `backups` is a file, so the backup cannot be made.
    std::fs::write(f.root.join("backups"), "in the way").unwrap();
    let id = f.start(&good, false);
    let j = f.finish(&id);
    assert_eq!(j["status"], "failed", "{j}");
    assert!(j["error"].as_str().unwrap().starts_with("backup: "), "{j}");
    f.audited(&id, "upgrade_backup", "failure");
    std::fs::remove_file(f.root.join("backups")).unwrap();

    // None of it touched the release, the store or the service.
    let mut after = f.tree();
    after.remove("upgrades");
    assert!(
        std::fs::read_dir(f.root.join("upgrades"))
            .map(|d| d.count())
            .unwrap_or(0)
            == 0,
        "job directories left behind"
    );
    assert_eq!(after, before);
    assert_eq!(f.schema(), schema);
    assert_eq!(f.serving_pid(), pid, "the service was restarted");
}

#[test]
fn upgrade_succeeds_then_failures_at_deploy_and_validate_roll_back() {
    let f = Fixture::new(&format!("e2e-{}", ulid::Ulid::new()));
    let schema = f.schema();

    // deploy: the migration changes the schema, then fails.
    let cases = [
        (Break::MigrationFails, "deploy.migrate", true),
        (Break::DoesNotStart, "validate.health", false),
        (Break::WrongVersion, "validate.version", false),
        (Break::NoDiagnostics, "validate.diagnostic", false),
        (Break::MigrationChangesSchema, "deploy.swap", true),
    ];
    for (i, (brk, check, schema_changes)) in cases.into_iter().enumerate() {
        let tarball = f.release(NEW, brk, &format!("case-{i}"));
        if check == "deploy.swap" {
            // The swap fails: something is in the way of `current.new`.
            std::fs::create_dir_all(f.root.join("current.new/in-the-way")).unwrap();
        }
        let id = f.start(&tarball, false);
        let j = f.finish(&id);
        assert_eq!(j["status"], "failed", "{brk:?}: {j}");
        let err = j["error"].as_str().unwrap();
        assert!(
            err.starts_with(check) && err.contains("rolled back to 0.9.0"),
            "{brk:?}: {err}\n{}",
            f.apply_logs()
        );
        assert_eq!(j["result"], Value::Null);
        // The previous release serves, from `current` pointing back at it.
        f.wait_version(OLD);
        assert_eq!(
            std::fs::read_link(f.root.join("current")).unwrap(),
            PathBuf::from(format!("releases/{OLD}"))
        );
        assert!(
            !f.root.join("releases").join(NEW).exists(),
            "{brk:?}: the failed release stays"
        );
        // The store as it was (the injected migration's table gone).
        assert_eq!(f.schema(), schema, "{brk:?}: the store's schema differs");
        let a = f.audited(&id, "upgrade_rollback", "success");
        let stage = check.split('.').next().unwrap();
        assert!(
            a.iter().any(|(x, r, logs)| x == &format!("upgrade_{stage}")
                && r == "failure"
                && logs.contains(check.split('.').nth(1).unwrap())),
            "{brk:?}: {a:?}"
        );
        for s in [
            "upgrade_verify",
            "upgrade_preflight",
            "upgrade_backup",
            "upgrade_deploy",
        ] {
            assert!(a.iter().any(|(x, _, _)| x == s), "{brk:?}: no {s} in {a:?}");
        }
        let rollback = a.iter().find(|(x, _, _)| x == "upgrade_rollback").unwrap();
        assert!(
            rollback.2.contains(check.split('.').nth(1).unwrap()),
            "{rollback:?}"
        );
        let _ = schema_changes;
        let _ = std::fs::remove_dir_all(f.root.join("current.new"));
    }

    // The whole job: verify → preflight → backup → deploy → validate → cleanup.
    let tarball = f.release(NEW, Break::MigrationChangesSchema, "good");
    let out = Command::new(BIN)
        .args(["upgrade", tarball.to_str().unwrap()])
        .env("NPANEL_URL", format!("http://127.0.0.1:{}", f.port))
        .env("NPANEL_TOKEN", &f.token)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "npanel upgrade failed: {stdout}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        f.apply_logs()
    );
    f.wait_version(NEW);
    assert_eq!(
        std::fs::read_link(f.root.join("current")).unwrap(),
        PathBuf::from(format!("releases/{NEW}"))
    );
    assert!(
        f.root.join(format!("releases/{OLD}/bin/npanel")).exists(),
        "the previous release is kept"
    );
    assert!(
        f.schema().contains("upgrade_probe"),
        "the new release's migration ran"
    );
    // Watch's log lines, then the job's result as JSON.
    let at = if stdout.starts_with("{\n") {
        0
    } else {
        stdout.find("\n{\n").expect("a result") + 1
    };
    let result: Value =
        serde_json::from_str(stdout[at..].trim()).expect("the CLI prints the result");
    assert!(stdout.contains("verify PASS"), "{stdout}");
    assert_eq!(result["to_version"], NEW);
    assert_eq!(result["validate"]["diagnostic"]["status"], "succeeded");
    // The backup: store, config, Redis snapshot, and their checksums.
    let backup = PathBuf::from(result["backup_dir"].as_str().unwrap());
    let sums = std::fs::read_to_string(backup.join("SHA256SUMS")).unwrap();
    for name in ["store.db", "config.toml", "redis.rdb"] {
        assert!(
            sums.contains(&format!("  {name}\n")),
            "{name} not in {sums}"
        );
    }
    let ok = Command::new("sha256sum")
        .arg("-c")
        .arg("SHA256SUMS")
        .current_dir(&backup)
        .status()
        .unwrap();
    assert!(ok.success(), "the checksums do not match the backup");
    // Every stage audited, in order.
    let (_, jobs) = f
        .call("GET", "/api/jobs?kind=upgrade&limit=1", None)
        .unwrap();
    let id = jobs["jobs"][0]["id"]
        .as_str()
        .or_else(|| jobs[0]["id"].as_str())
        .expect("the upgrade job")
        .to_string();
    let a = f.audited(&id, "upgrade_cleanup", "success");
    let actions: Vec<&str> = a.iter().map(|(x, _, _)| x.as_str()).collect();
    assert_eq!(
        actions,
        [
            "upgrade_verify",
            "upgrade_preflight",
            "upgrade_backup",
            "upgrade_deploy",
            "upgrade_validate",
            "upgrade_cleanup"
        ],
        "{a:?}"
    );
    assert!(a.iter().all(|(_, r, _)| r == "success"), "{a:?}");

    // Every stop of the service came with the deploy window's hold, every start without it
    // (a socket-activated start in between waits: tests/reload_socket.rs).
    let ctl = std::fs::read_to_string(f.root.join("shared/ctl.log")).unwrap();
    assert!(ctl.lines().any(|l| l == "stop held"), "{ctl}");
    for l in ctl.lines() {
        assert!(l == "stop held" || l == "start free", "{l} in\n{ctl}");
    }
    assert!(!f.root.join("shared/data/upgrade.hold").exists());

    // A forced downgrade to the kept 0.9.0 that fails validate: the kept release is moved
    // aside, not deleted, and comes back whole.
    let marker = f.root.join(format!("releases/{OLD}/operator-note"));
    std::fs::write(&marker, "kept").unwrap();
    let tarball = f.release(OLD, Break::WrongVersion, "downgrade");
    let id = f.start(&tarball, true);
    let j = f.finish(&id);
    assert_eq!(j["status"], "failed", "{j}\n{}", f.apply_logs());
    assert!(
        j["error"]
            .as_str()
            .unwrap()
            .contains("rolled back to 1.0.0"),
        "{j}"
    );
    f.wait_version(NEW);
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "kept");
    assert!(
        !std::fs::read_to_string(f.root.join(format!("releases/{OLD}/bin/npanel")))
            .unwrap()
            .contains("9.9.9"),
        "the kept release's binary is the kept one"
    );

    // A forced reinstall of the serving 1.0.0: deployed over it, the old copy gone once the
    // new one serves.
    let note = f.root.join(format!("releases/{NEW}/operator-note"));
    std::fs::write(&note, "old copy").unwrap();
    let tarball = f.release(NEW, Break::Nothing, "reinstall");
    let id = f.start(&tarball, true);
    let j = f.finish(&id);
    assert_eq!(j["status"], "succeeded", "{j}\n{}", f.apply_logs());
    f.wait_version(NEW);
    assert!(!note.exists(), "the reinstalled release is the new copy");
    assert_eq!(
        std::fs::read_link(f.root.join("current")).unwrap(),
        PathBuf::from(format!("releases/{NEW}"))
    );
    let leftovers: Vec<_> = std::fs::read_dir(f.root.join("releases"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("aside"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}
