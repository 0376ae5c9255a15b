//! Files and the store: the backup, the release's unpacking, checksums, migrations, pruning.

use super::Upgrader;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::Connection;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The migrations this binary carries: the store's own directories, embedded again here so
/// `npanel store pending` can list them without running them (the store runs its migrator on
/// every open). Same directories, so the same list by construction.
static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../store/migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator =
    sqlx::migrate!("../store/migrations/postgres");

/// One migration.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Migration {
    /// Its version (the file's number).
    pub version: i64,
    /// Its description (the file's name).
    pub description: String,
}

/// A backed-up file.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct BackedUp {
    /// Name inside the backup directory.
    pub name: String,
    /// Size.
    pub bytes: u64,
    /// sha256, hex.
    pub sha256: String,
}

/// What the backup stage made.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Backup {
    /// The backup directory.
    pub dir: PathBuf,
    /// Its files.
    pub files: Vec<BackedUp>,
    /// What could not be backed up, and why.
    pub skipped: Vec<String>,
    /// The store's copy.
    pub store_file: Option<PathBuf>,
    /// The store's schema fingerprint at backup time.
    pub schema: String,
}

/// The path of an SQLite URL (`sqlite://PATH?…`).
pub fn sqlite_path(url: &str) -> Option<PathBuf> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let p = rest.split('?').next().unwrap_or(rest);
    (!p.is_empty()).then(|| PathBuf::from(p))
}

fn is_postgres(url: &str) -> bool {
    url.starts_with("postgres:") || url.starts_with("postgresql:")
}

async fn connect(url: &str) -> Result<sqlx::AnyConnection, String> {
    sqlx::any::install_default_drivers();
    let url = if url.starts_with("sqlite:") && !url.contains('?') {
        format!("{url}?mode=rwc")
    } else {
        url.to_string()
    };
    tokio::time::timeout(Duration::from_secs(5), sqlx::AnyConnection::connect(&url))
        .await
        .map_err(|_| "the store did not answer within 5 s".to_string())?
        .map_err(|e| format!("cannot open the store: {e}"))
}

async fn applied(c: &mut sqlx::AnyConnection) -> Result<Vec<i64>, String> {
    match sqlx::query_scalar::<_, i64>(
        "SELECT version FROM _sqlx_migrations WHERE success = TRUE ORDER BY version",
    )
    .fetch_all(&mut *c)
    .await
    {
        Ok(v) => Ok(v),
        Err(e) => {
            let m = e.to_string();
            if m.contains("no such table") || m.contains("does not exist") {
                Ok(Vec::new())
            } else {
                Err(format!("cannot read the applied migrations: {m}"))
            }
        }
    }
}

/// The migrations this binary carries that the store at `url` has not applied.
pub async fn pending_migrations(url: &str) -> Result<Vec<Migration>, String> {
    let migrator = if is_postgres(url) {
        &POSTGRES_MIGRATIONS
    } else {
        &SQLITE_MIGRATIONS
    };
    let mut c = connect(url).await?;
    let done = applied(&mut c).await?;
    let _ = c.close().await;
    Ok(migrator
        .iter()
        .filter(|m| !m.migration_type.is_down_migration() && !done.contains(&m.version))
        .map(|m| Migration {
            version: m.version,
            description: m.description.to_string(),
        })
        .collect())
}

/// A fingerprint of the store's schema and applied migrations (sha256): what rollback
/// compares to decide whether the store must be restored.
pub async fn schema_fingerprint(url: &str) -> Result<String, String> {
    let mut c = connect(url).await?;
    let sql = if is_postgres(url) {
        "SELECT CAST(table_name AS TEXT) || '.' || CAST(column_name AS TEXT) || ' ' || CAST(data_type AS TEXT) \
         FROM information_schema.columns WHERE table_schema = current_schema() ORDER BY 1"
    } else {
        "SELECT type || ' ' || name || ' ' || coalesce(sql, '') FROM sqlite_master \
         WHERE name NOT LIKE 'sqlite_%' ORDER BY type, name"
    };
    let rows = sqlx::query_scalar::<_, String>(sql)
        .fetch_all(&mut c)
        .await
        .map_err(|e| format!("cannot read the store's schema: {e}"))?;
    let versions = applied(&mut c).await?;
    let _ = c.close().await;
    let mut h = Sha256::new();
    for r in rows {
        h.update(r.as_bytes());
        h.update(b"\n");
    }
    for v in versions {
        h.update(v.to_string().as_bytes());
        h.update(b",");
    }
    Ok(hex::encode(h.finalize()))
}

/// sha256 of a file, hex.
pub fn sha256_file(p: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(p)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// Write `v` as JSON to `path` whole: a temp file renamed over it (mode 0600: a plan names
/// the store's URL).
pub fn write_json<T: Serialize>(path: &Path, v: &T) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d)?;
    }
    let tmp = path.with_extension("json.tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(&serde_json::to_vec_pretty(v).map_err(std::io::Error::other)?)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Total bytes of the files under `p`.
pub fn tree_bytes(p: &Path) -> u64 {
    let Ok(md) = std::fs::symlink_metadata(p) else {
        return 0;
    };
    if md.is_dir() {
        std::fs::read_dir(p)
            .map(|rd| rd.flatten().map(|e| tree_bytes(&e.path())).sum())
            .unwrap_or(0)
    } else {
        md.len()
    }
}

/// Unpack the release tarball (gzip'd tar: `bin/npanel`, `VERSION`, …) into `dest`, fresh.
/// The tar crate refuses entries that would land outside `dest`.
///
/// The file is read once into memory and unpacked only if its sha256 is `sha256`, the digest of
/// the bytes verify checked: a tarball replaced on disk between verify and here (anyone who can
/// write where it sits) is refused, never run or deployed.
pub fn unpack(tarball: &Path, sha256: &str, dest: &Path) -> Result<(), String> {
    let bytes = std::fs::read(tarball).map_err(|e| format!("cannot read the tarball: {e}"))?;
    let got = hex::encode(Sha256::digest(&bytes));
    if got != sha256 {
        return Err(format!(
            "the tarball changed after it was verified (sha256 {got}, verified {sha256}): refused"
        ));
    }
    let _ = std::fs::remove_dir_all(dest);
    std::fs::create_dir_all(dest).map_err(|e| format!("cannot create {}: {e}", dest.display()))?;
    let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(std::io::Cursor::new(bytes)));
    ar.set_preserve_permissions(true);
    ar.unpack(dest)
        .map_err(|e| format!("cannot unpack the tarball: {e}"))
}

/// A redis-cli invocation for `url`, the password in `REDISCLI_AUTH` rather than argv.
fn redis_cli(url: &str) -> Option<tokio::process::Command> {
    let mut c = tokio::process::Command::new("redis-cli");
    if let Some(p) = url
        .strip_prefix("redis+unix://")
        .or_else(|| url.strip_prefix("unix://"))
    {
        c.arg("-s").arg(p.split('?').next().unwrap_or(p));
        return Some(c);
    }
    let rest = url
        .strip_prefix("redis://")
        .or_else(|| url.strip_prefix("rediss://"))?;
    let (creds, host) = match rest.rsplit_once('@') {
        Some((c, h)) => (Some(c), h),
        None => (None, rest),
    };
    let scheme = if url.starts_with("rediss://") {
        "rediss"
    } else {
        "redis"
    };
    if let Some(creds) = creds {
        if let Some((_, pw)) = creds.split_once(':') {
            c.env("REDISCLI_AUTH", pw);
        }
    }
    c.arg("-u").arg(format!("{scheme}://{host}"));
    Some(c)
}

/// Whether `prog` is on the PATH.
pub fn on_path(prog: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| {
        std::env::split_paths(&p).any(|d| {
            let f = d.join(prog);
            f.is_file()
        })
    })
}

/// Whether a Redis snapshot can be taken, or why not.
pub fn redis_snapshot_possible(url: &str) -> Result<(), String> {
    if matches!(
        queue::RedisTarget::parse(url),
        Ok(queue::RedisTarget::Cluster(_))
    ) {
        // `redis-cli --rdb` reads one server; a cluster's masters are snapshotted (and restored)
        // by the cluster's own tooling, not one file here.
        return Err(
            "the queue is on a Redis Cluster: snapshot its masters with the cluster's own tooling"
                .into(),
        );
    }
    if !on_path("redis-cli") {
        return Err("redis-cli is not installed".into());
    }
    redis_cli(url)
        .map(|_| ())
        .ok_or_else(|| "the Redis URL is not redis://, rediss:// or a Unix socket".into())
}

async fn run_tool(
    mut c: tokio::process::Command,
    what: &str,
    limit: Duration,
) -> Result<(), String> {
    c.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let out = tokio::time::timeout(limit, c.output())
        .await
        .map_err(|_| format!("{what} took longer than {limit:?}"))?
        .map_err(|e| format!("{what} did not start: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// `postgres://user:pw@host/db` → (URL without the password, the password).
fn pg_split(url: &str) -> (String, Option<String>) {
    if let (Some(s), Some(at)) = (url.find("://"), url.rfind('@')) {
        if at > s + 3 {
            if let Some((user, pw)) = url[s + 3..at].split_once(':') {
                return (
                    format!("{}{user}{}", &url[..s + 3], &url[at..]),
                    Some(pw.to_string()),
                );
            }
        }
    }
    (url.to_string(), None)
}

fn pg_tool(prog: &str, url: &str) -> tokio::process::Command {
    let (url, pw) = pg_split(url);
    let mut c = tokio::process::Command::new(prog);
    if let Some(pw) = pw {
        c.env("PGPASSWORD", pw);
    }
    c.arg(format!("--dbname={url}"));
    c
}

/// Copy the store to `dest` consistently while the service runs.
pub async fn backup_store(url: &str, dest: &Path) -> Result<(), String> {
    if is_postgres(url) {
        let mut c = pg_tool("pg_dump", url);
        c.arg("-Fc").arg("-f").arg(dest);
        return run_tool(c, "pg_dump", Duration::from_secs(3600)).await;
    }
    let mut conn = connect(url).await?;
    let target = dest.display().to_string().replace('\'', "''");
    let sql = format!("VACUUM INTO '{target}'");
    sqlx::query(&sql)
        .execute(&mut conn)
        .await
        .map_err(|e| format!("VACUUM INTO {}: {e}", dest.display()))?;
    let _ = conn.close().await;
    Ok(())
}

/// PostgreSQL: the store's schema (`current_schema()`, where the migrations put the tables)
/// dropped and the dump replayed in **one transaction** (`psql --single-transaction`), so a
/// restore that fails half way leaves the store as it was, not empty.
async fn restore_postgres(url: &str, copy: &Path) -> Result<(), String> {
    let mut c = connect(url).await?;
    let schema: String = sqlx::query_scalar("SELECT CAST(current_schema() AS TEXT)")
        .fetch_one(&mut c)
        .await
        .map_err(|e| format!("cannot read the store's schema name: {e}"))?;
    let _ = c.close().await;
    // The dump as SQL (pg_restore without a database writes the script).
    let script = copy.with_extension("restore.sql");
    let mut r = tokio::process::Command::new("pg_restore");
    r.arg("--no-owner").arg("-f").arg(&script).arg(copy);
    run_tool(r, "pg_restore", Duration::from_secs(3600)).await?;
    let text = std::fs::read_to_string(&script)
        .map_err(|e| format!("cannot read {}: {e}", script.display()))?;
    let ident = format!("\"{}\"", schema.replace('"', "\"\""));
    // pg_dump creates every schema but `public` itself.
    let (bare, quoted) = (
        format!("CREATE SCHEMA {schema};"),
        format!("CREATE SCHEMA {ident};"),
    );
    let creates = text.lines().any(|l| l == bare || l == quoted);
    let mut preamble = format!("DROP SCHEMA {ident} CASCADE;");
    if !creates {
        preamble.push_str(&format!(" CREATE SCHEMA {ident};"));
    }
    let mut p = pg_tool("psql", url);
    p.args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "--single-transaction"])
        .arg("-c")
        .arg(&preamble)
        .arg("-f")
        .arg(&script);
    let done = run_tool(
        p,
        "psql (restore in one transaction)",
        Duration::from_secs(3600),
    )
    .await;
    let _ = std::fs::remove_file(&script);
    done
}

/// Put the store back from `copy` (the service is stopped).
pub async fn restore_store(url: &str, copy: &Path) -> Result<(), String> {
    if is_postgres(url) {
        return restore_postgres(url, copy).await;
    }
    let db = sqlite_path(url).ok_or("the store URL names no SQLite file")?;
    let tmp = db.with_extension("db.restoring");
    std::fs::copy(copy, &tmp).map_err(|e| format!("cannot copy the backup: {e}"))?;
    for ext in ["-wal", "-shm"] {
        let mut p = db.clone().into_os_string();
        p.push(ext);
        let _ = std::fs::remove_file(PathBuf::from(p));
    }
    std::fs::rename(&tmp, &db).map_err(|e| format!("cannot put the store back: {e}"))?;
    Ok(())
}

/// The backup stage: `<root>/backups/<UTC>-<from>-to-<to>/`.
pub async fn backup(up: &Upgrader, from: &str, to: &str) -> Result<Backup, String> {
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ");
    let dir = up
        .cfg
        .install_root
        .join("backups")
        .join(format!("{stamp}-{from}-to-{to}"));
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let mut skipped = Vec::new();
    let schema = schema_fingerprint(&up.store_url).await?;
    let store_name = if is_postgres(&up.store_url) {
        "store.pgdump"
    } else {
        "store.db"
    };
    let store_file = dir.join(store_name);
    backup_store(&up.store_url, &store_file).await?;
    let cfg = up.cfg.config_path();
    if cfg.exists() {
        std::fs::copy(&cfg, dir.join("config.toml"))
            .map_err(|e| format!("cannot copy {}: {e}", cfg.display()))?;
    } else {
        skipped.push(format!("config: no file at {}", cfg.display()));
    }
    match redis_snapshot_possible(&up.redis_url) {
        Ok(()) => {
            let mut c = redis_cli(&up.redis_url).expect("checked above");
            c.arg("--rdb").arg(dir.join("redis.rdb"));
            if let Err(e) = run_tool(c, "redis-cli --rdb", Duration::from_secs(600)).await {
                let _ = std::fs::remove_file(dir.join("redis.rdb"));
                skipped.push(format!("redis snapshot: {e}"));
            }
        }
        Err(e) => skipped.push(format!("redis snapshot: {e}")),
    }
    let mut files = Vec::new();
    let mut sums = String::new();
    for name in [store_name, "config.toml", "redis.rdb"] {
        let p = dir.join(name);
        if !p.exists() {
            continue;
        }
        let sha = sha256_file(&p).map_err(|e| format!("cannot checksum {name}: {e}"))?;
        sums.push_str(&format!("{sha}  {name}\n"));
        files.push(BackedUp {
            name: name.to_string(),
            bytes: std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0),
            sha256: sha,
        });
    }
    std::fs::write(dir.join("SHA256SUMS"), sums).map_err(|e| format!("SHA256SUMS: {e}"))?;
    let b = Backup {
        dir: dir.clone(),
        files,
        skipped,
        store_file: Some(store_file),
        schema,
    };
    write_json(
        &dir.join("backup.json"),
        &serde_json::json!({"from_version": from, "to_version": to, "backup": b,
            "store": store::redact_url(&up.store_url)}),
    )
    .map_err(|e| format!("backup.json: {e}"))?;
    Ok(b)
}

/// Check a backed-up file against `SHA256SUMS` before it is used.
pub fn check_sum(dir: &Path, name: &str) -> Result<(), String> {
    let sums = std::fs::read_to_string(dir.join("SHA256SUMS"))
        .map_err(|e| format!("cannot read SHA256SUMS: {e}"))?;
    let want = sums
        .lines()
        .find_map(|l| {
            l.split_once("  ")
                .filter(|(_, n)| *n == name)
                .map(|(s, _)| s.to_string())
        })
        .ok_or_else(|| format!("{name} is not in SHA256SUMS"))?;
    let got = sha256_file(&dir.join(name)).map_err(|e| format!("cannot read {name}: {e}"))?;
    if got == want {
        Ok(())
    } else {
        Err(format!(
            "{name} does not match its checksum: the backup is damaged"
        ))
    }
}

/// The entries of `dir`, newest first (by modification time).
pub fn newest_first(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
                .collect()
        })
        .unwrap_or_default();
    v.sort_by_key(|e| std::cmp::Reverse(e.0));
    v.into_iter().map(|(_, p)| p).collect()
}

/// Remove all but the newest `keep` entries of `dir` (never `protect`). Returns what went.
pub fn prune(dir: &Path, keep: usize, protect: &[PathBuf]) -> Vec<PathBuf> {
    let mut gone = Vec::new();
    for p in newest_first(dir).into_iter().skip(keep) {
        if protect.iter().any(|k| k == &p) {
            continue;
        }
        if std::fs::remove_dir_all(&p).is_ok() {
            gone.push(p);
        }
    }
    gone
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The backup says why it takes no Redis snapshot of a cluster, and still takes one of a
    /// single server whatever the URL form.
    #[test]
    fn a_cluster_is_not_snapshotted_and_says_why() {
        let e =
            redis_snapshot_possible("redis+cluster://127.0.0.1:7000,127.0.0.1:7001").unwrap_err();
        assert!(e.contains("Redis Cluster"), "{e}");
        assert!(redis_cli("redis+cluster://127.0.0.1:7000").is_none());
        assert!(redis_cli("redis://127.0.0.1:6379/0").is_some());
        assert!(redis_cli("redis+unix:///run/redis.sock").is_some());
    }

    /// A tarball replaced after verify (its digest no longer the verified one) is not unpacked.
    #[test]
    fn unpack_refuses_bytes_other_than_the_verified_ones() {
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path().join("npanel-1.0.0.tar.gz");
        {
            let gz = flate2::write::GzEncoder::new(
                std::fs::File::create(&t).unwrap(),
                flate2::Compression::fast(),
            );
            let mut b = tar::Builder::new(gz);
            let mut h = tar::Header::new_gnu();
            h.set_size(6);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, "VERSION", &b"1.0.0\n"[..]).unwrap();
            b.into_inner().unwrap().finish().unwrap();
        }
        let good = hex::encode(Sha256::digest(std::fs::read(&t).unwrap()));
        let dest = dir.path().join("release");
        let err = unpack(&t, &"0".repeat(64), &dest).unwrap_err();
        assert!(err.contains("changed after it was verified"), "{err}");
        assert!(!dest.exists(), "nothing unpacked");
        unpack(&t, &good, &dest).unwrap();
        assert_eq!(
            std::fs::read_to_string(dest.join("VERSION")).unwrap(),
            "1.0.0\n"
        );
    }

    #[test]
    fn urls_split() {
        assert_eq!(
            sqlite_path("sqlite:///var/lib/npanel/npanel.db?mode=rwc"),
            Some(PathBuf::from("/var/lib/npanel/npanel.db"))
        );
        assert_eq!(
            pg_split("postgres://u:pw@h:5432/db"),
            ("postgres://u@h:5432/db".into(), Some("pw".into()))
        );
        assert_eq!(
            pg_split("postgres://h/db"),
            ("postgres://h/db".into(), None)
        );
        assert!(redis_cli("redis+unix:///tmp/r.sock").is_some());
        assert!(redis_cli("redis://:pw@127.0.0.1:6379/0").is_some());
        assert!(redis_cli("http://x").is_none());
    }

    #[test]
    fn prune_keeps_the_newest_and_the_protected() {
        let d = tempfile::tempdir().unwrap();
        let now = std::time::SystemTime::now();
        let mut dirs = Vec::new();
        for i in 0..7u64 {
            let p = d.path().join(format!("r{i}"));
            std::fs::create_dir(&p).unwrap();
            std::fs::write(p.join("f"), "x").unwrap();
            std::fs::File::open(&p)
                .unwrap()
                .set_modified(now - Duration::from_secs(100 - i))
                .unwrap();
            dirs.push(p);
        }
        // r6 is the newest; r0 (the oldest) is protected, as the current release is.
        let gone = prune(d.path(), 5, std::slice::from_ref(&dirs[0]));
        assert_eq!(gone, vec![dirs[1].clone()]);
        let left: Vec<PathBuf> = newest_first(d.path());
        assert_eq!(left.len(), 6);
        assert_eq!(left[0], dirs[6]);
        assert!(dirs[0].exists());
    }

    /// The PostgreSQL path: `pg_dump -Fc`, then the schema recreated and the dump replayed in
    /// one transaction; a replay that fails half way leaves the store as it was.
    #[tokio::test]
    async fn postgres_backup_and_restore() {
        let Ok(base) = std::env::var("NPANEL_TEST_POSTGRES_URL") else {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must set NPANEL_TEST_POSTGRES_URL"
            );
            eprintln!("skipped: NPANEL_TEST_POSTGRES_URL is not set");
            return;
        };
        let role = format!("npanel_upg_r{}", std::process::id());
        let name = format!(
            "npanel_upg_{}",
            ulid::Ulid::new().to_string().to_lowercase()
        );
        let mut admin = connect(&base).await.unwrap();
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .unwrap();
        let url = store::with_database(&base, &name);
        let result = async {
            assert!(!pending_migrations(&url).await?.is_empty());
            let s = store::Store::connect(&url)
                .await
                .map_err(|e| e.to_string())?;
            s.close().await;
            assert!(pending_migrations(&url).await?.is_empty());
            let fp = schema_fingerprint(&url).await?;
            let d = tempfile::tempdir().unwrap();
            let copy = d.path().join("store.pgdump");
            backup_store(&url, &copy).await?;
            let mut c = connect(&url).await?;
            sqlx::query("CREATE TABLE probe (x BIGINT)")
                .execute(&mut c)
                .await
                .map_err(|e| e.to_string())?;
            let _ = c.close().await;
            assert_ne!(schema_fingerprint(&url).await?, fp);
            restore_store(&url, &copy).await?;
            assert_eq!(schema_fingerprint(&url).await?, fp);

            // A dump whose replay fails late: a grant to a role that is gone by then.
            let mut c = connect(&url).await?;
            for q in [
                format!("CREATE ROLE {role}"),
                "CREATE TABLE probe (x BIGINT)".to_string(),
                "INSERT INTO probe VALUES (7)".to_string(),
                format!("GRANT SELECT ON probe TO {role}"),
            ] {
                sqlx::query(&q)
                    .execute(&mut c)
                    .await
                    .map_err(|e| format!("{q}: {e}"))?;
            }
            let broken = d.path().join("broken.pgdump");
            backup_store(&url, &broken).await?;
            for q in [
                format!("DROP OWNED BY {role}"),
                format!("DROP ROLE {role}"),
                "CREATE TABLE written_after (y BIGINT)".to_string(),
            ] {
                sqlx::query(&q)
                    .execute(&mut c)
                    .await
                    .map_err(|e| format!("{q}: {e}"))?;
            }
            let before = schema_fingerprint(&url).await?;
            let err = restore_store(&url, &broken)
                .await
                .expect_err("a replay that fails must say so");
            assert!(err.contains(&role), "{err}");
            // Nothing of it happened: the schema was not dropped, the later table is there.
            assert_eq!(schema_fingerprint(&url).await?, before);
            let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM written_after")
                .fetch_one(&mut c)
                .await
                .map_err(|e| e.to_string())?;
            assert_eq!(n, 0);
            let _ = c.close().await;
            Ok::<_, String>(())
        }
        .await;
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .execute(&mut admin)
            .await;
        let _ = sqlx::query(&format!("DROP ROLE IF EXISTS {role}"))
            .execute(&mut admin)
            .await;
        result.unwrap();
    }

    #[tokio::test]
    async fn sqlite_backup_restore_and_pending() {
        let d = tempfile::tempdir().unwrap();
        let db = d.path().join("s.db");
        let url = format!("sqlite://{}?mode=rwc", db.display());
        let before = pending_migrations(&url).await.unwrap();
        assert!(
            !before.is_empty(),
            "a new store has every migration pending"
        );
        let s = store::Store::connect(&url).await.unwrap();
        assert!(pending_migrations(&url).await.unwrap().is_empty());
        let fp = schema_fingerprint(&url).await.unwrap();
        let copy = d.path().join("copy.db");
        backup_store(&url, &copy).await.unwrap();
        s.close().await;
        let mut c = connect(&url).await.unwrap();
        sqlx::query("CREATE TABLE probe (x INTEGER)")
            .execute(&mut c)
            .await
            .unwrap();
        c.close().await.unwrap();
        assert_ne!(schema_fingerprint(&url).await.unwrap(), fp);
        restore_store(&url, &copy).await.unwrap();
        assert_eq!(schema_fingerprint(&url).await.unwrap(), fp);
    }
}
