//! `npanel-cpmove-fixture`: writes a realistic cPanel `cpmove` archive of a chosen size and
//! shape, clean or with chosen defects, for restore tests and benchmarks (issue 14).
//!
//! The layout is the one `pkgacct` writes (`../shared/research/wave2-anchors.md` §1.10): a
//! `cpmove-USER/` wrapper holding `version`, `shadow`, `cp/USER`, `userdata/`, `mysql/`,
//! `dnszones/`, `va/`, `cron/`, `proftpdpasswd` and `homedir/` with a WordPress-like site,
//! uploads, two mailboxes with messages and their `etc/DOMAIN/{passwd,shadow,quota}`. File
//! contents are generated from a seeded PRNG: text that compresses like text, uploads that do
//! not compress (like JPEGs), so gzip behaves as it does on real homes.
//!
//! ```text
//! npanel-cpmove-fixture --out DIR [--user alice] [--domain example.com] [--size 100M]
//!     [--format tar.gz|tar|homedir-tar] [--variant NAME]... [--defect NAME]... [--seed N]
//! ```
//!
//! Variants (shapes real archives have, §1.5–§1.7 of the research; a clean archive stays
//! clean with any of them):
//! - `mdbox`: the mailbox `sales` is Dovecot mdbox, as cPanel stores it after a conversion
//!   (`mail/<domain>/sales/storage/m.1` and `m.2` holding its messages in dbox v2, as Dovecot
//!   writes them: a `2 M1e C<time>` file header; per message a 30-byte header `0x01 0x02 N`,
//!   8 hex digits of the (unused) v1 UID, 16 of the message's size, LF; the message; the
//!   metadata block `LF 0x01 0x03 LF`, `G`/`R`/`Z` lines and an empty line;
//!   `storage/dovecot.map.index` and `.log`, `mailboxes/INBOX/dbox-Mails/dovecot.index` and `.log`; no `cur/`/`new/`), and
//!   `mail/mailbox_format.cpanel` and `MAILBOX_FORMAT` say `mdbox`; `info` is still Maildir,
//!   as while cPanel converts an account.
//! - `gzip-message`: the first message of `info` is gzipped (Dovecot's zlib plugin reads it by
//!   its magic; the name carries the `Z` flag, `…:2,SZ`, as the Dovecot wiki's compression
//!   procedure marks compressed files; `S=` stays the uncompressed size).
//! - `utf8-folder`: `info` has a Maildir++ folder with a UTF-8 name, `.Entwürfe/{cur,new,tmp}`,
//!   holding 3 messages, listed in `info/subscriptions` (`UTF8MAILBOX=1` in `cp/USER`).
//! - `no-prefix-db`: a second database, `blog` (no `<user>_` prefix: `mysql/blog.{create,sql}`,
//!   2 tables, 70 rows), granted to `<user>_wp`.
//! - `mysql8-collation`: the dumps' columns use MySQL 8's `utf8mb4_0900_ai_ci` (MariaDB has
//!   no such collation); without it they use `utf8mb4_unicode_ci`.
//! - `tls`: `apache_tls/<domain>`, cPanel's bundle: a P-256 key, then a self-signed
//!   certificate for `<domain>` and `www.<domain>` valid 30 days, made with the `openssl` CLI.
//! - `sslcerts`: the same kind of certificate the older way, `sslcerts/<name>.crt` and its key
//!   `sslkeys/<name>.key`, named as cPanel names them (the domain, key and certificate ids,
//!   the expiry, a hash), so only the public key tells which key is the certificate's. With
//!   `bad-cert`, the key there is another key.
//!
//! Defects (each breaks exactly one thing a health check looks at): `missing-mailbox` (`sales`
//! is in `etc/<domain>/passwd` but has no mail directory), `dropped-table` (a `CREATE TABLE`
//! the server refuses), `truncated-rows` (the dump ends inside its last `INSERT`), `777-tree`
//! (world-writable site files), `broken-symlink`, `bad-zone` (an SOA never closed, no NS),
//! `suspended` (`SUSPENDED=1`), `hostile` (a `../../etc/cron.d/…` entry), `bad-cert` (the TLS
//! bundle's key is another key than the certificate's; implies the bundle, or with `sslcerts`
//! the key in `sslkeys/`), `wrong-password`
//! (`wp-config.php` holds another password than the one `mysql.sql-auth.json` hashes).
//!
//! The database user's hash in `mysql.sql-auth.json`, `*2470C0C06DEE42FD1618BB99005ADCA2EC9D1E19`,
//! is `mysql_native_password` of `password`, and `wp-config.php` says `password`: a restored
//! site logs in to its database.
//!
//! Prints the archive's path, then a JSON summary on stdout: `variants`, `defects`, and what a
//! restore should find: `home_files` and `home_bytes` (regular files and their bytes under
//! `homedir/`, as stored: the gzipped message counts its compressed size), `mail_accounts`,
//! `mailboxes` (mail accounts with their mail in the archive), `messages` (all messages),
//! `maildir_messages` (message files in `cur/`/`new/`, folders included), `mdbox_messages`
//! (inside `storage/m.*`), `mailbox_messages` (per `box@domain`), `databases` (per database:
//! the `CREATE TABLE`s and rows generated; `dropped-table` keeps its broken `CREATE`, and
//! `truncated-rows` cuts the last `INSERT` after counting), and their sums `tables` and `rows`.
//! `loadtests/tests/fixture_variants.rs` restores each variant through `npanel serve` and
//! checks its health report (`loadtests/RESTORE.md`).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use loadtests::Rng;
use tar::{EntryType, Header};

const USAGE: &str = "npanel-cpmove-fixture --out DIR [--user alice] [--domain example.com] \
[--size 100M] [--format tar.gz|tar|homedir-tar] [--variant NAME]... [--defect NAME]... [--seed N]
variants: mdbox gzip-message utf8-folder no-prefix-db mysql8-collation tls sslcerts
defects: missing-mailbox dropped-table truncated-rows 777-tree broken-symlink bad-zone suspended hostile bad-cert wrong-password";

const DEFECTS: &[&str] = &[
    "missing-mailbox",
    "dropped-table",
    "truncated-rows",
    "777-tree",
    "broken-symlink",
    "bad-zone",
    "suspended",
    "hostile",
    "bad-cert",
    "wrong-password",
];

const VARIANTS: &[&str] = &[
    "mdbox",
    "gzip-message",
    "utf8-folder",
    "no-prefix-db",
    "mysql8-collation",
    "tls",
    "sslcerts",
];

struct Opts {
    out: PathBuf,
    user: String,
    domain: String,
    size: u64,
    format: String,
    defects: Vec<String>,
    variants: Vec<String>,
    seed: u64,
}

impl Opts {
    fn defect(&self, d: &str) -> bool {
        self.defects.iter().any(|x| x == d)
    }
    fn variant(&self, v: &str) -> bool {
        self.variants.iter().any(|x| x == v)
    }
}

fn parse_size(s: &str) -> Result<u64> {
    let (num, mul) = match s.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        Some((i, _)) => (&s[..i], &s[i..]),
        None => (s, ""),
    };
    let n: f64 = num.parse().with_context(|| format!("size {s:?}"))?;
    let mul: u64 = match mul.to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "K" | "KB" | "KIB" => 1 << 10,
        "M" | "MB" | "MIB" => 1 << 20,
        "G" | "GB" | "GIB" => 1 << 30,
        other => bail!("size unit {other:?}: use K, M or G"),
    };
    Ok((n * mul as f64) as u64)
}

fn opts() -> Result<Opts> {
    let mut o = Opts {
        out: PathBuf::from("."),
        user: "alice".into(),
        domain: "example.com".into(),
        size: 100 << 20,
        format: "tar.gz".into(),
        defects: Vec::new(),
        variants: Vec::new(),
        seed: 1,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--out" => o.out = val()?.into(),
            "--user" => o.user = val()?,
            "--domain" => o.domain = val()?,
            "--size" => o.size = parse_size(&val()?)?,
            "--format" => o.format = val()?,
            "--defect" => {
                let d = val()?;
                if !DEFECTS.contains(&d.as_str()) {
                    bail!("unknown defect {d:?}; known: {}", DEFECTS.join(", "));
                }
                if !o.defects.contains(&d) {
                    o.defects.push(d);
                }
            }
            "--variant" => {
                let v = val()?;
                if !VARIANTS.contains(&v.as_str()) {
                    bail!("unknown variant {v:?}; known: {}", VARIANTS.join(", "));
                }
                if !o.variants.contains(&v) {
                    o.variants.push(v);
                }
            }
            "--seed" => o.seed = val()?.parse()?,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (--help)"),
        }
    }
    if !["tar.gz", "tar", "homedir-tar"].contains(&o.format.as_str()) {
        bail!("--format must be tar.gz, tar or homedir-tar");
    }
    Ok(o)
}

/// Generated content: text that compresses like text, noise that does not (like JPEGs).
trait Content {
    fn text(&mut self, bytes: usize) -> Vec<u8>;
    fn noise(&mut self, bytes: usize) -> Vec<u8>;
}

impl Content for Rng {
    fn text(&mut self, bytes: usize) -> Vec<u8> {
        const WORDS: &[&str] = &[
            "the",
            "hosting",
            "account",
            "function",
            "return",
            "wp_query",
            "post",
            "content",
            "<div",
            "class=\"entry\">",
            "</div>",
            "echo",
            "$this->",
            "array(",
            ");",
            "if",
            "else",
            "foreach",
            "customer",
            "order",
            "invoice",
            "mail",
            "domain",
            "example",
            "lorem",
            "ipsum",
            "dolor",
            "sit",
            "amet",
            "consectetur",
            "{",
            "}",
            "null",
            "true",
            "false",
            "2024-03-11",
            "SELECT",
            "FROM",
            "WHERE",
            "<p>",
            "</p>",
            "<a href=\"/",
            "\">",
        ];
        let mut out = Vec::with_capacity(bytes + 16);
        while out.len() < bytes {
            out.extend_from_slice(WORDS[self.below(WORDS.len() as u64) as usize].as_bytes());
            out.push(if self.below(12) == 0 { b'\n' } else { b' ' });
        }
        out.truncate(bytes);
        out
    }
    fn noise(&mut self, bytes: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(bytes + 8);
        while out.len() < bytes {
            out.extend_from_slice(&self.next().to_le_bytes());
        }
        out.truncate(bytes);
        out
    }
}

/// What was written, for the summary.
#[derive(Default)]
struct Summary {
    home_files: u64,
    home_bytes: u64,
    /// Message files in `cur/`/`new/` (Maildir, folders included).
    maildir_messages: u64,
    /// Messages inside mdbox storage files.
    mdbox_messages: u64,
    /// Messages per `box@domain`, however stored.
    mailbox_messages: BTreeMap<String, u64>,
    /// Per database: tables and rows of its dump.
    databases: BTreeMap<String, (u64, u64)>,
}

impl Summary {
    fn merge(&mut self, o: Summary) {
        self.home_files += o.home_files;
        self.home_bytes += o.home_bytes;
        self.maildir_messages += o.maildir_messages;
        self.mdbox_messages += o.mdbox_messages;
        for (k, v) in o.mailbox_messages {
            *self.mailbox_messages.entry(k).or_default() += v;
        }
        self.databases.extend(o.databases);
    }
}

struct Writer<W: Write> {
    tar: tar::Builder<W>,
    top: String,
    home_prefix: String,
    sum: Summary,
}

impl<W: Write> Writer<W> {
    fn entry(&mut self, path: &str, kind: EntryType, body: &[u8], mode: u32) -> Result<()> {
        let mut h = Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(body.len() as u64);
        h.set_mode(mode);
        h.set_mtime(1_700_000_000);
        h.set_uid(1001);
        h.set_gid(1001);
        self.tar.append_data(&mut h, path, body)?;
        Ok(())
    }
    fn meta(&mut self, name: &str, body: &[u8]) -> Result<()> {
        let p = format!("{}/{name}", self.top);
        self.entry(&p, EntryType::Regular, body, 0o600)
    }
    fn home_file(&mut self, name: &str, body: &[u8], mode: u32) -> Result<()> {
        self.sum.home_files += 1;
        self.sum.home_bytes += body.len() as u64;
        let p = format!("{}{name}", self.home_prefix);
        self.entry(&p, EntryType::Regular, body, mode)
    }
    fn home_dir(&mut self, name: &str, mode: u32) -> Result<()> {
        let p = if name.is_empty() {
            self.home_prefix.clone()
        } else {
            format!("{}{name}/", self.home_prefix)
        };
        self.entry(&p, EntryType::Directory, b"", mode)
    }
    fn home_symlink(&mut self, name: &str, target: &str) -> Result<()> {
        let mut h = Header::new_gnu();
        h.set_entry_type(EntryType::Symlink);
        h.set_size(0);
        h.set_mode(0o777);
        h.set_mtime(1_700_000_000);
        let p = format!("{}{name}", self.home_prefix);
        self.tar.append_link(&mut h, &p, target)?;
        Ok(())
    }
}

fn main() -> Result<()> {
    let o = opts()?;
    std::fs::create_dir_all(&o.out)?;
    let ext = if o.format == "tar" { "tar" } else { "tar.gz" };
    let path = o.out.join(format!("cpmove-{}.{ext}", o.user));
    let file = BufWriter::with_capacity(1 << 20, File::create(&path)?);
    let sum = if o.format == "tar" {
        write_archive(&o, file)?
    } else {
        let gz = flate2::write::GzEncoder::new(file, flate2::Compression::default());
        let (sum, gz) = write_archive_gz(&o, gz)?;
        gz.finish()?.flush()?;
        sum
    };
    let size = std::fs::metadata(&path)?.len();
    println!("{}", path.display());
    let databases: serde_json::Map<String, serde_json::Value> = sum
        .databases
        .iter()
        .map(|(d, (t, r))| (d.clone(), serde_json::json!({"tables": t, "rows": r})))
        .collect();
    println!(
        "{}",
        serde_json::json!({
            "archive": path,
            "archive_bytes": size,
            "format": o.format,
            "user": o.user,
            "domain": o.domain,
            "variants": o.variants,
            "defects": o.defects,
            "home_files": sum.home_files,
            "home_bytes": sum.home_bytes,
            "mail_accounts": 2,
            "mailboxes": sum.mailbox_messages.len(),
            "messages": sum.maildir_messages + sum.mdbox_messages,
            "maildir_messages": sum.maildir_messages,
            "mdbox_messages": sum.mdbox_messages,
            "mailbox_messages": sum.mailbox_messages,
            "databases": databases,
            "tables": sum.databases.values().map(|x| x.0).sum::<u64>(),
            "rows": sum.databases.values().map(|x| x.1).sum::<u64>(),
        })
    );
    Ok(())
}

fn write_archive_gz<W: Write>(o: &Opts, w: W) -> Result<(Summary, W)> {
    let mut wr = new_writer(o, w);
    fill(o, &mut wr)?;
    Ok((wr.sum, wr.tar.into_inner()?))
}

fn write_archive<W: Write>(o: &Opts, w: W) -> Result<Summary> {
    let mut wr = new_writer(o, w);
    fill(o, &mut wr)?;
    wr.tar.into_inner()?.flush()?;
    Ok(wr.sum)
}

fn new_writer<W: Write>(o: &Opts, w: W) -> Writer<W> {
    let mut tar = tar::Builder::new(w);
    tar.mode(tar::HeaderMode::Complete);
    let top = format!("cpmove-{}", o.user);
    Writer {
        tar,
        home_prefix: format!("{top}/homedir/"),
        top,
        sum: Summary::default(),
    }
}

/// The home's entries go straight into the archive, or (format `homedir-tar`) into a
/// `homedir.tar` written into it afterwards.
fn fill<W: Write>(o: &Opts, wr: &mut Writer<W>) -> Result<()> {
    let (u, d) = (o.user.as_str(), o.domain.as_str());
    let has = |x: &str| o.defect(x);
    // Wrapping: any seed (a debug build panicked on overflow for seeds above 1).
    let mut rng = Rng(o.seed.max(1).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    wr.entry(
        &format!("{}/", wr.top.clone()),
        EntryType::Directory,
        b"",
        0o700,
    )?;
    wr.meta("version", b"pkgacct version: 10\narchive version: 4\n")?;
    wr.meta(
        "shadow",
        b"$6$fixturesalt$Yx0kR9mW1fJ3VvQ8c7n2Lh5sT4uP6dE0aB9gC1iK3oM7qS2rZ8yX4wN6vF5jH0tU.\n",
    )?;
    wr.meta("shell", b"/bin/bash\n")?;
    wr.meta("homedir_paths", format!("/home/{u}\n").as_bytes())?;
    wr.meta(
        "quota",
        format!("{}\n", (o.size >> 20) * 2 + 100).as_bytes(),
    )?;
    let suspended = if has("suspended") {
        "SUSPENDED=1\n"
    } else {
        ""
    };
    wr.meta(
        &format!("cp/{u}"),
        format!(
            "USER={u}\nDNS={d}\nPLAN=basic\nCONTACTEMAIL={u}@example.net\nIP=203.0.113.10\n\
             STARTDATE=1700000000\nMAXPOP=10\nMAXSQL=5\nMAXFTP=2\nMAXSUB=10\nMAXPARK=2\n\
             MAXADDON=1\nBWLIMIT=10737418240\nHASCGI=0\nMAX_EMAILACCT_QUOTA=1024\n\
             MAILBOX_FORMAT={format}\nUTF8MAILBOX=1\nFEATURELIST=default\nOWNER=root\n{suspended}",
            format = if o.variant("mdbox") {
                "mdbox"
            } else {
                "maildir"
            }
        )
        .as_bytes(),
    )?;
    wr.meta(
        "userdata/main",
        format!("main_domain: {d}\naddon_domains: {{}}\nparked_domains: []\nsub_domains:\n  - blog.{d}\n").as_bytes(),
    )?;
    wr.meta(
        &format!("userdata/{d}"),
        format!("documentroot: /home/{u}/public_html\nuser: {u}\nserveradmin: webmaster@{d}\nphpversion: ea-php81\n").as_bytes(),
    )?;
    wr.meta("sds", format!("blog_{d}\n").as_bytes())?;
    wr.meta("sds2", format!("blog_{d}=public_html/blog\n").as_bytes())?;
    wr.meta("pds", b"")?;
    wr.meta("addons", b"")?;
    // Databases: three tables, rows as the size allows (at least 200); with `no-prefix-db` a
    // second database whose name lacks the `<user>_` prefix.
    let db = format!("{u}_wp");
    let collation = if o.variant("mysql8-collation") {
        "utf8mb4_0900_ai_ci"
    } else {
        "utf8mb4_unicode_ci"
    };
    let rows = (o.size / 20_000).clamp(200, 200_000);
    let mut dbs = vec![(
        db.clone(),
        vec![("wp_posts", rows), ("wp_options", 120), ("wp_users", 3)],
    )];
    if o.variant("no-prefix-db") {
        dbs.push(("blog".to_string(), vec![("posts", 50), ("comments", 20)]));
    }
    let mut grants = String::from("-- cPanel mysql backup\n");
    grants.push_str(&format!("GRANT USAGE ON *.* TO '{u}_wp'@'localhost' IDENTIFIED BY PASSWORD '*2470C0C06DEE42FD1618BB99005ADCA2EC9D1E19';\n"));
    for (name, tables) in &dbs {
        let mut sql = String::from("-- MySQL dump (fixture)\nSET NAMES utf8mb4;\n");
        let mut written = 0u64;
        for &(t, n) in tables {
            if has("dropped-table") && t == "wp_options" {
                // A CREATE the server refuses: the table never comes back.
                sql.push_str(&format!(
                    "CREATE TABLE `{t}` (`id` bigint NOT NULL AUTO_INCREMENT,, PRIMARY KEY (`id`));\n"
                ));
            } else {
                sql.push_str(&format!(
                    "CREATE TABLE `{t}` (`id` bigint NOT NULL AUTO_INCREMENT, `body` longtext COLLATE {collation}, PRIMARY KEY (`id`)) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE={collation};\n"
                ));
            }
            for chunk in (1..=n).collect::<Vec<_>>().chunks(100) {
                let values: Vec<String> = chunk
                    .iter()
                    .map(|i| {
                        format!(
                            "({i},'{}')",
                            String::from_utf8_lossy(&rng.text(40)).replace(['\'', '\\', '\n'], " ")
                        )
                    })
                    .collect();
                sql.push_str(&format!("INSERT INTO `{t}` VALUES {};\n", values.join(",")));
                written += chunk.len() as u64;
            }
        }
        if has("truncated-rows") && *name == db {
            // The dump ends in the middle of its last INSERT.
            let cut = sql.rfind("INSERT INTO").unwrap_or(sql.len()) + 30;
            sql.truncate(cut);
        }
        wr.sum
            .databases
            .insert(name.clone(), (tables.len() as u64, written));
        wr.meta(
            &format!("mysql/{name}.create"),
            format!("CREATE DATABASE `{name}` /*!40100 DEFAULT CHARACTER SET utf8mb4 COLLATE {collation} */;\n").as_bytes(),
        )?;
        wr.meta(&format!("mysql/{name}.sql"), sql.as_bytes())?;
        grants.push_str(&format!(
            "GRANT ALL PRIVILEGES ON `{}`.* TO '{u}_wp'@'localhost';\n",
            name.replace('_', "\\_")
        ));
    }
    wr.meta("mysql.sql", grants.as_bytes())?;
    // The hash of `password` (mysql_native_password), which wp-config.php holds.
    wr.meta(
        "mysql.sql-auth.json",
        format!("{{\"{u}_wp\":{{\"localhost\":{{\"auth_plugin\":\"mysql_native_password\",\"pass_hash\":\"*2470C0C06DEE42FD1618BB99005ADCA2EC9D1E19\"}}}}}}").as_bytes(),
    )?;
    if o.variant("tls") || (has("bad-cert") && !o.variant("sslcerts")) {
        let (key, cert) = tls_pair(d, has("bad-cert") && !o.variant("sslcerts"))?;
        wr.meta(&format!("apache_tls/{d}"), (key + &cert).as_bytes())?;
    }
    if o.variant("sslcerts") {
        // cPanel's names: `<domain with _>_<key id>_<cert id>_<expiry>_<hash>.crt` and
        // `<key id>_<cert id>_<hash>.key` (ids made up here: nothing is derived from them).
        let (key, cert) = tls_pair(d, has("bad-cert"))?;
        let flat = d.replace('.', "_");
        wr.meta(
            &format!("sslcerts/{flat}_a1b2c_d3e4f_1735689599_7d0c3e9f2b.crt"),
            cert.as_bytes(),
        )?;
        wr.meta("sslkeys/a1b2c_d3e4f_5e8a61c04f.key", key.as_bytes())?;
    }
    let zone = if has("bad-zone") {
        format!("$TTL 14400\n{d}. IN SOA ns1.{d}. (broken\n")
    } else {
        format!(
            "$TTL 14400\n{d}. 86400 IN SOA ns1.{d}. hostmaster.{d}. 2024031101 3600 1800 1209600 86400\n\
             {d}. 86400 IN NS ns1.{d}.\n{d}. 14400 IN A 203.0.113.10\nwww 14400 IN CNAME {d}.\n\
             mail 14400 IN A 203.0.113.10\n{d}. 14400 IN MX 0 {d}.\n{d}. 14400 IN TXT \"v=spf1 +a +mx ~all\"\n"
        )
    };
    wr.meta(&format!("dnszones/{d}.db"), zone.as_bytes())?;
    wr.meta(
        &format!("va/{d}"),
        format!("info@{d}: {u}@example.net\n*: :fail: No Such User Here\n").as_bytes(),
    )?;
    wr.meta(&format!("vad/{d}"), b"")?;
    wr.meta(&format!("vf/{d}"), b"")?;
    wr.meta(
        &format!("cron/{u}"),
        format!("MAILTO=\"\"\n*/5 * * * * /usr/local/bin/ea-php81 /home/{u}/cron.php\n").as_bytes(),
    )?;
    wr.meta(
        "proftpdpasswd",
        format!("ftpu@{d}:$6$x$y:1001:1001:{u}:/home/{u}/public_html/ftp:/bin/ftpsh\n").as_bytes(),
    )?;
    if has("hostile") {
        let mut h = Header::new_gnu();
        let name = b"../../etc/cron.d/npanel-fixture";
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.set_entry_type(EntryType::Regular);
        h.set_size(5);
        h.set_mode(0o644);
        h.set_cksum();
        wr.tar.append(&h, &b"evil\n"[..])?;
    }

    if o.format == "homedir-tar" {
        // The home as a tar of its own, written to memory then into the archive.
        let mut inner = Writer {
            tar: tar::Builder::new(Vec::new()),
            top: String::new(),
            home_prefix: String::new(),
            sum: Summary::default(),
        };
        home(o, &mut inner, &mut rng, &db)?;
        let bytes = inner.tar.into_inner()?;
        wr.sum.merge(inner.sum);
        wr.meta("homedir.tar", &bytes)?;
        Ok(())
    } else {
        wr.home_dir("", 0o711)?;
        home(o, wr, &mut rng, &db)
    }
}

fn home<W: Write>(o: &Opts, wr: &mut Writer<W>, rng: &mut Rng, db: &str) -> Result<()> {
    let (u, d) = (o.user.as_str(), o.domain.as_str());
    let has = |x: &str| o.defect(x);
    let open = if has("777-tree") { 0o777 } else { 0o755 };
    let file_mode = if has("777-tree") { 0o777 } else { 0o644 };
    wr.home_dir("public_html", 0o750)?;
    let password = if has("wrong-password") {
        "not-it"
    } else {
        "password"
    };
    wr.home_file(
        "public_html/wp-config.php",
        format!("<?php\ndefine('DB_NAME', '{db}');\ndefine('DB_USER', '{u}_wp');\ndefine('DB_PASSWORD', '{password}');\ndefine('DB_HOST', 'localhost');\n").as_bytes(),
        0o600,
    )?;
    wr.home_file(
        "public_html/index.php",
        b"<?php require __DIR__ . '/wp-blog-header.php';\n",
        0o644,
    )?;
    wr.home_dir("public_html/blog", 0o755)?;
    wr.home_file("public_html/blog/index.html", &rng.text(2048), 0o644)?;
    wr.home_symlink("www", "public_html")?;
    if has("broken-symlink") {
        wr.home_symlink("public_html/old-site", "../old_public_html")?;
    }
    // Mail: two mailboxes, their etc/ files, messages of 2-12 KB.
    let mailboxes = ["info", "sales"];
    let mut passwd = String::new();
    let mut shadow = String::new();
    let mut quota = String::new();
    for m in mailboxes {
        passwd.push_str(&format!(
            "{m}:x:1001:1001::/home/{u}/mail/{d}/{m}:/home/{u}\n"
        ));
        shadow.push_str(&format!("{m}:$6$fixture$hash:19000::::::\n"));
        quota.push_str(&format!("{m}:262144000\n"));
    }
    wr.home_dir("etc", 0o750)?;
    wr.home_dir(&format!("etc/{d}"), 0o750)?;
    wr.home_file(&format!("etc/{d}/passwd"), passwd.as_bytes(), 0o644)?;
    wr.home_file(&format!("etc/{d}/shadow"), shadow.as_bytes(), 0o640)?;
    wr.home_file(&format!("etc/{d}/quota"), quota.as_bytes(), 0o644)?;
    wr.home_dir("mail", 0o751)?;
    let format = if o.variant("mdbox") {
        "mdbox"
    } else {
        "maildir"
    };
    wr.home_file(
        "mail/mailbox_format.cpanel",
        format!("{format}\n").as_bytes(),
        0o644,
    )?;
    let messages = (o.size / (200 << 10)).clamp(20, 5000);
    for m in mailboxes {
        if m == "sales" && has("missing-mailbox") {
            continue;
        }
        let key = format!("{m}@{d}");
        if m == "sales" && o.variant("mdbox") {
            let n = mdbox(wr, rng, &format!("mail/{d}/{m}"), m, d, messages / 2)?;
            wr.sum.mdbox_messages += n;
            *wr.sum.mailbox_messages.entry(key).or_default() += n;
            continue;
        }
        for sub in ["cur", "new", "tmp"] {
            wr.home_dir(&format!("mail/{d}/{m}/{sub}"), 0o700)?;
        }
        for i in 0..messages / 2 {
            let msg = message(rng, i, m, d);
            let gz = i == 0 && m == "info" && o.variant("gzip-message");
            let name = format!(
                "mail/{d}/{m}/cur/{}.M{i}P1.host,S={}:2,S{}",
                1_681_274_990 + i,
                msg.len(),
                if gz { "Z" } else { "" }
            );
            let body = if gz { gzip(&msg)? } else { msg };
            wr.home_file(&name, &body, 0o600)?;
            wr.sum.maildir_messages += 1;
            *wr.sum.mailbox_messages.entry(key.clone()).or_default() += 1;
        }
        if m == "info" && o.variant("utf8-folder") {
            // A Maildir++ folder with a UTF-8 name (UTF8MAILBOX=1), subscribed.
            let folder = format!("mail/{d}/{m}/.Entwürfe");
            for sub in ["cur", "new", "tmp"] {
                wr.home_dir(&format!("{folder}/{sub}"), 0o700)?;
            }
            for i in 0..3 {
                let msg = message(rng, 10_000 + i, m, d);
                let name = format!(
                    "{folder}/cur/{}.M{}P2.host,S={}:2,D",
                    1_681_300_000 + i,
                    10_000 + i,
                    msg.len()
                );
                wr.home_file(&name, &msg, 0o600)?;
                wr.sum.maildir_messages += 1;
                *wr.sum.mailbox_messages.entry(key.clone()).or_default() += 1;
            }
            wr.home_file(
                &format!("mail/{d}/{m}/subscriptions"),
                "Entwürfe\n".as_bytes(),
                0o600,
            )?;
        }
    }
    // The rest of the size: site files (text, 1-64 KB) and uploads (incompressible, 64 KB-8 MB),
    // about 40/60 by bytes.
    let budget = o.size.saturating_sub(wr.sum.home_bytes);
    let mut text_left = budget * 2 / 5;
    let mut media_left = budget - text_left;
    let mut n = 0u64;
    while text_left > 0 {
        let dir = format!("public_html/wp-content/plugins/plugin{:03}", n / 200);
        if n.is_multiple_of(200) {
            wr.home_dir(&dir, open)?;
        }
        let size = (1024 + rng.below(63 << 10)).min(text_left);
        wr.home_file(
            &format!("{dir}/file{n:05}.php"),
            &rng.text(size as usize),
            file_mode,
        )?;
        text_left -= size;
        n += 1;
    }
    let mut m = 0u64;
    while media_left > 0 {
        let dir = format!(
            "public_html/wp-content/uploads/2024/{:02}",
            m / 100 % 12 + 1
        );
        if m.is_multiple_of(100) && m < 1200 {
            wr.home_dir(&dir, open)?;
        }
        let size = (64 << 10) + rng.below(8 << 20);
        let size = size.min(media_left);
        wr.home_file(
            &format!("{dir}/photo{m:05}.jpg"),
            &rng.noise(size as usize),
            file_mode,
        )?;
        media_left -= size;
        m += 1;
    }
    Ok(())
}

/// One message of 2-12 KB to `boxname@domain`.
fn message(rng: &mut Rng, i: u64, boxname: &str, domain: &str) -> Vec<u8> {
    let len = 2048 + rng.below(10 << 10) as usize;
    let body = rng.text(len);
    let mut msg = format!(
        "From: someone{i}@example.org\r\nTo: {boxname}@{domain}\r\nSubject: message {i}\r\n\r\n"
    )
    .into_bytes();
    msg.extend_from_slice(&body);
    msg
}

fn gzip(data: &[u8]) -> Result<Vec<u8>> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(data)?;
    Ok(gz.finish()?)
}

/// A Dovecot mdbox mailbox at `dir` holding `n` messages in `storage/m.1` and `storage/m.2`
/// (half each; dbox v2: a file header, then per message a header with its size, the message
/// and its metadata), the map index and its log in `storage/`, and the INBOX's index and log under
/// `mailboxes/INBOX/dbox-Mails/`. The indexes are opaque here (a restore copies them; Dovecot
/// rebuilds them when they do not match). Returns `n`.
fn mdbox<W: Write>(
    wr: &mut Writer<W>,
    rng: &mut Rng,
    dir: &str,
    boxname: &str,
    domain: &str,
    n: u64,
) -> Result<u64> {
    wr.home_dir(dir, 0o700)?;
    wr.home_dir(&format!("{dir}/storage"), 0o700)?;
    wr.home_dir(&format!("{dir}/mailboxes/INBOX/dbox-Mails"), 0o700)?;
    // `M1e`: the message header's size, 30 bytes, in hex.
    let mut files = [b"2 M1e C6553f100\n".to_vec(), b"2 M1e C6553f200\n".to_vec()];
    for i in 0..n {
        let msg = message(rng, i, boxname, domain);
        let f = &mut files[usize::from(i >= n / 2)];
        f.extend_from_slice(format!("\x01\x02N 00000000 {:016x}\n", msg.len()).as_bytes());
        f.extend_from_slice(&msg);
        f.extend_from_slice(
            format!(
                "\n\x01\x03\nG{:032x}\nR{:x}\nZ{:x}\n\n",
                rng.next() as u128 | ((rng.next() as u128) << 64),
                1_681_274_990 + i,
                msg.len()
            )
            .as_bytes(),
        );
    }
    for (k, f) in files.iter().enumerate() {
        wr.home_file(&format!("{dir}/storage/m.{}", k + 1), f, 0o600)?;
    }
    let mut index = |name: &str, records: u64| -> Result<()> {
        // Dovecot's index files start with a version and header size; the rest is records.
        let mut b = vec![7u8, 3, 120, 0];
        b.extend_from_slice(&rng.noise(120 + 16 * records as usize));
        wr.home_file(&format!("{dir}/{name}"), &b, 0o600)
    };
    index("storage/dovecot.map.index", n)?;
    index("storage/dovecot.map.index.log", n)?;
    index("mailboxes/INBOX/dbox-Mails/dovecot.index", n)?;
    index("mailboxes/INBOX/dbox-Mails/dovecot.index.log", n)?;
    Ok(n)
}

/// A key and a self-signed certificate for `domain` and `www.domain` (the `openssl` CLI, in a
/// temp dir), as PEM; with `mismatched`, the key is another one.
fn tls_pair(domain: &str, mismatched: bool) -> Result<(String, String)> {
    let dir = tempfile::tempdir()?;
    let run = |args: &[&str]| -> Result<()> {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir.path())
            .output()
            .context(
                "run openssl (needed for the tls and sslcerts variants and the bad-cert defect)",
            )?;
        if !out.status.success() {
            bail!(
                "openssl {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    };
    let subj = format!("/CN={domain}");
    let san = format!("subjectAltName=DNS:{domain},DNS:www.{domain}");
    run(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-days",
        "30",
        "-subj",
        &subj,
        "-addext",
        &san,
        "-keyout",
        "key.pem",
        "-out",
        "cert.pem",
    ])?;
    if mismatched {
        run(&[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-out",
            "key.pem",
        ])?;
    }
    let read = |p: &str| std::fs::read_to_string(dir.path().join(p));
    Ok((read("key.pem")?, read("cert.pem")?))
}
