//! The audit log (DESIGN §10): one record per mutating call, job transition, override and
//! config change, chained by hash.
//!
//! - **Chain.** `hash = SHA-256(prev_hash ‖ "\n" ‖ canonical JSON of the record without
//!   `hash`)`, genesis `prev_hash` = 64 zeros; canonical JSON has object keys sorted and no
//!   whitespace, so equal records hash equally whatever built them. [`Store::verify_audit`]
//!   walks the chain and names the first record that does not match. A chain kept on the same
//!   host detects edits in the middle, not the removal of the tail: the head hash is given out
//!   with every verification so it can be kept elsewhere.
//! - **Order.** `seq` is assigned here, at append, inside one transaction that reads the head
//!   and inserts after it. Two appenders racing (two processes on PostgreSQL) collide on the
//!   `seq` primary key; the loser retries on the new head. Records carry their own ULID `id`
//!   made on the request path; an id already present is skipped, so re-delivering an outbox
//!   entry after a crash never writes it twice.
//! - **Columns vs document.** The filterable fields are copied into indexed columns; the
//!   record itself is the `doc` column, which is what the hash covers. `verify` also checks the
//!   columns against the document, so editing either is found.
//! - **Search.** Newest first, a page at a time, and the cost of a page must not grow with a
//!   year of records (3.65 M). A time range is served by the `(ts, seq)` index. Free text is
//!   a case-insensitive substring of the record that **starts at the beginning of a word**
//!   (words are runs of letters and digits): `198.51.3.10`, `3.105`, `cust004`, `created`
//!   and `Note-1` match, `ustomer` does not. It goes through an index of the records' words
//!   (the text's words, the last one as a prefix; a phrase on SQLite) and the candidates are then
//!   checked against the text itself: on SQLite a contentless FTS5 table keyed by `seq`, read
//!   newest first in growing chunks that the other filters then narrow (a rare text costs its
//!   matches, a common one its first chunk); on PostgreSQL a GIN index of the document's
//!   ASCII words, each with the word after it (column `terms`, made here at append): a text
//!   of several words is looked up as its pairs, because words that are each common (an IP's
//!   numbers) are rare as pairs, and one word as the prefix of its pairs; the planner uses the index for rare texts (the
//!   statement is planned with the text in hand).
//!   Within a time range on SQLite, a text found in at most 20 000 records is looked up in the
//!   word index; a commoner one, and a text with no word of 3 characters or more (`-7`, `ab`),
//!   is a scan of what the other filters leave. An action prefix without a
//!   range is walked one action name at a time on the `(action, seq)` index and merged, so a
//!   rare prefix does not walk every newer record.

use crate::{get_opt_str, Result, Store, StoreError};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use sqlx::any::AnyRow;
use sqlx::Row;
use std::collections::HashSet;
use std::sync::OnceLock;
use tokio::sync::Mutex;

/// A time at millisecond precision (what the store keeps), from Unix ms.
pub fn ms_time(ms: i64) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

/// The genesis `prev_hash`.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Who did it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Actor {
    /// `admin`, `reseller`, `customer`, `whmcs` or `system`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Token subject, account, key id, or the component's name.
    pub id: String,
    /// Client address.
    #[serde(default)]
    pub ip: Option<String>,
    /// Client user agent.
    #[serde(default)]
    pub user_agent: Option<String>,
}

/// A record as written on the request path (before `seq` and the chain).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NewAudit {
    /// ULID made by the writer (deduplication key).
    pub id: String,
    /// When it happened (RFC 3339, millisecond precision).
    pub timestamp: chrono::DateTime<chrono::Utc>,
    /// The account concerned.
    pub account: Option<String>,
    /// That account's reseller (who may read the record besides the account and admins).
    pub reseller: Option<String>,
    /// Who.
    pub actor: Actor,
    /// What (`account_created`, `package_changed`, `concurrency_changed`, ...).
    pub action: String,
    /// On what: `{"type", "id", "name"}`.
    pub resource: Value,
    /// `{"before", "after"}`, secrets already redacted.
    pub changes: Value,
    /// `success`, `failure` or `denied`.
    pub result: String,
    /// How long the action took.
    pub duration_ms: Option<u64>,
    /// `{"method": "API"|"WHMCS"|"CLI"|"JOB", "endpoint"}`.
    pub source: Value,
    /// The job it started or concerns.
    pub job_id: Option<String>,
    /// The request id.
    pub request_id: Option<String>,
    /// The record this one follows from (a job's completion → the request that started it).
    pub parent_id: Option<String>,
    /// Log lines that explain it.
    pub related_logs: Vec<String>,
    /// `{"accounts_affected", "resources_changed"}`.
    pub impact: Value,
}

impl NewAudit {
    /// A record with a fresh id and the current time.
    pub fn new(action: impl Into<String>, actor: Actor, result: &str) -> NewAudit {
        NewAudit {
            id: ulid::Ulid::new().to_string(),
            timestamp: ms_time(crate::now_ms()),
            actor,
            action: action.into(),
            result: result.to_string(),
            resource: Value::Null,
            changes: Value::Null,
            source: Value::Null,
            impact: Value::Null,
            account: None,
            reseller: None,
            duration_ms: None,
            job_id: None,
            request_id: None,
            parent_id: None,
            related_logs: Vec::new(),
        }
    }
}

/// A stored record: the written fields, plus its place in the chain.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Position in the log.
    pub seq: i64,
    /// The record.
    #[serde(flatten)]
    pub record: NewAudit,
    /// Hash of the previous record.
    pub prev_hash: String,
    /// This record's hash.
    pub hash: String,
}

/// Search filters (all optional); newest first, keyset on `seq`.
#[derive(Clone, Debug, Default)]
pub struct AuditFilter {
    /// From (inclusive), Unix ms.
    pub from: Option<i64>,
    /// To (exclusive), Unix ms.
    pub to: Option<i64>,
    /// Action prefix (`account_` matches `account_created` and `account_suspended`).
    pub action: Option<String>,
    /// Account.
    pub account: Option<String>,
    /// Reseller (visibility of a reseller: its own records and its customers').
    pub reseller: Option<String>,
    /// Actor id.
    pub actor: Option<String>,
    /// Result.
    pub result: Option<String>,
    /// Resource type.
    pub resource_type: Option<String>,
    /// Free text, case-insensitive, where it starts a word of the record (module docs).
    pub text: Option<String>,
    /// Records with `seq` below this (with a time range: below `(before_ts, before_seq)`).
    pub before_seq: Option<i64>,
    /// With a time range, the `timestamp` (ms) of the previous page's last record.
    pub before_ts: Option<i64>,
    /// Page size.
    pub limit: i64,
}

/// The outcome of [`Store::verify_audit`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Verification {
    /// True when every record checked out.
    pub ok: bool,
    /// Records checked.
    pub checked: u64,
    /// First and last `seq` present.
    pub first_seq: Option<i64>,
    /// Last `seq`.
    pub last_seq: Option<i64>,
    /// Hash of the newest record (keep it elsewhere to detect a rewritten tail).
    pub head_hash: Option<String>,
    /// The first record that does not match.
    pub broken_at: Option<i64>,
    /// Why it does not.
    pub reason: Option<String>,
    /// The checkpoint this pass started after (`None`: from the oldest record kept).
    #[serde(default)]
    pub from_checkpoint: Option<i64>,
}

/// JSON with object keys sorted, no whitespace (serde_json's `Value` map is sorted unless
/// `preserve_order` is on somewhere in the build, so the keys are sorted here explicitly).
pub fn canonical(v: &Value) -> String {
    fn walk(v: &Value, out: &mut String) {
        match v {
            Value::Object(m) => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort();
                out.push('{');
                for (i, k) in keys.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&Value::String((*k).clone()).to_string());
                    out.push(':');
                    walk(&m[*k], out);
                }
                out.push('}');
            }
            Value::Array(a) => {
                out.push('[');
                for (i, x) in a.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    walk(x, out);
                }
                out.push(']');
            }
            other => out.push_str(&other.to_string()),
        }
    }
    let mut s = String::new();
    walk(v, &mut s);
    s
}

fn chain_hash(prev: &str, doc: &str) -> String {
    let mut h = Sha256::new();
    h.update(prev.as_bytes());
    h.update(b"\n");
    h.update(doc.as_bytes());
    hex::encode(h.finalize())
}

/// The document that is hashed and stored: the record with `seq` and `prev_hash`.
fn document(seq: i64, rec: &NewAudit, prev: &str) -> Result<String> {
    let mut v = serde_json::to_value(rec)?;
    v["seq"] = seq.into();
    v["prev_hash"] = prev.into();
    Ok(canonical(&v))
}

fn append_lock() -> &'static Mutex<()> {
    static L: OnceLock<Mutex<()>> = OnceLock::new();
    L.get_or_init(|| Mutex::new(()))
}

fn record_from_row(r: &AnyRow) -> Result<AuditRecord> {
    let doc: Value = serde_json::from_str(&r.try_get::<String, _>("doc")?)?;
    let record: NewAudit = serde_json::from_value(doc)?;
    Ok(AuditRecord {
        seq: r.try_get("seq")?,
        record,
        prev_hash: r.try_get("prev_hash")?,
        hash: r.try_get("hash")?,
    })
}

/// The columns an append writes (PostgreSQL adds `terms`).
const AUDIT_INSERT_COLS: &str = "seq, id, ts, account, reseller, actor_type, actor_id, action, resource_type, resource_id, result, job_id, parent_id, doc, prev_hash, hash";

const COLS: &str = "seq, id, ts, account, actor_id, action, result, doc, prev_hash, hash";

/// True when `text` occurs in the row's document starting at a word (after a character that
/// is not a letter or digit), case-insensitively. A text that starts with punctuation starts
/// a word wherever it occurs.
fn text_at_word_start(r: &AnyRow, text: &str) -> bool {
    let Ok(doc) = r.try_get::<String, _>("doc") else {
        return false;
    };
    let (doc, text) = (doc.to_lowercase(), text.to_lowercase());
    if !text.starts_with(char::is_alphanumeric) {
        return doc.contains(&text);
    }
    doc.match_indices(&text)
        .any(|(i, _)| !doc[..i].ends_with(char::is_alphanumeric))
}

/// A lexeme PostgreSQL takes: longer words are left out of the index (a search for one is a
/// scan of what the other filters leave).
const PG_MAX_LEXEME: usize = 2047;

/// Bytes of lexemes one `tsvector` holds (1 MiB less a margin); words past it are not indexed.
const PG_MAX_TERMS: usize = 1_000_000;

/// The words of a text as PostgreSQL's word index holds them: runs of ASCII letters and digits
/// of the lower-cased text (whatever the database's locale).
fn pg_words(text: &str) -> Vec<String> {
    text.to_lowercase()
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .collect()
}

/// The lexeme of a word and the word after it: `"a b"`, `"a "` after the last word. A pair
/// too long for a lexeme keeps what fits: the first word's first 2046 bytes, then what fits of
/// the second (a prefix of either is still found).
fn pg_pair(a: &str, b: Option<&str>) -> Option<String> {
    // Words are ASCII: any byte is a character boundary.
    let a = &a[..a.len().min(PG_MAX_LEXEME - 1)];
    let room = PG_MAX_LEXEME - a.len() - 1;
    let b = b.map_or("", |b| &b[..b.len().min(room)]);
    Some(format!("{a} {b}"))
}

/// The `terms` of a document on PostgreSQL (schema 6), in `tsvector` input syntax: each word
/// with the word after it, one lexeme per pair ([`pg_pair`]). A word is found as the prefix of
/// its pairs, two adjacent words as their pair. Made here when appending, so inserting costs
/// no regexp.
fn pg_terms(doc: &str) -> String {
    let words = pg_words(doc);
    let mut lexemes: Vec<String> = (0..words.len())
        .filter_map(|i| pg_pair(&words[i], words.get(i + 1).map(String::as_str)))
        .collect();
    lexemes.sort_unstable();
    lexemes.dedup();
    let mut out = String::new();
    let mut bytes = 0;
    for l in lexemes {
        bytes += l.len();
        if bytes > PG_MAX_TERMS {
            break;
        }
        // Lexemes are ASCII letters, digits and one space: nothing to escape in quotes.
        out.push_str(&format!("'{l}' "));
    }
    out
}

/// A free text as a query of the word index: its words in order, the last one a prefix.
#[derive(Debug)]
struct WordQuery {
    words: Vec<String>,
    last_is_prefix: bool,
}

impl WordQuery {
    /// `None` when the text has nothing worth looking up (a scan then): no word of 3
    /// characters or more and, on PostgreSQL, not two words. Words are what the backend's
    /// index holds: runs of letters and digits on SQLite (unicode61), of ASCII letters and
    /// digits on PostgreSQL ([`pg_words`]).
    fn parse(text: &str, backend: crate::Backend) -> Option<WordQuery> {
        let mut words: Vec<String> = match backend {
            crate::Backend::Postgres => pg_words(text),
            crate::Backend::Sqlite => text
                .split(|c: char| !c.is_alphanumeric())
                .filter(|w| !w.is_empty())
                .map(str::to_lowercase)
                .collect(),
        };
        // A short last word would be a prefix of too many words to be worth looking up in
        // SQLite's phrase; the check against the text itself still requires it. (In a
        // PostgreSQL pair it narrows the lookup.)
        let mut last_is_prefix = true;
        if backend == crate::Backend::Sqlite
            && words.len() > 1
            && words.last().is_some_and(|w| w.chars().count() < 3)
        {
            words.pop();
            last_is_prefix = false;
        }
        // On PostgreSQL two words are a pair, rare enough to look up however short they are.
        let pairs = backend == crate::Backend::Postgres && words.len() > 1;
        (pairs || words.iter().any(|w| w.chars().count() >= 3)).then_some(WordQuery {
            words,
            last_is_prefix,
        })
    }

    /// FTS5: `"w1 w2 w3" *` (a phrase, its last word a prefix).
    fn fts5(&self) -> String {
        let star = if self.last_is_prefix { " *" } else { "" };
        format!("\"{}\"{star}", self.words.join(" "))
    }

    /// PostgreSQL: one word as the prefix of its pairs, `'w1':*` (`'w1 ':*` when it is not a
    /// prefix); more as their adjacent pairs, all present: `'w1 w2' & 'w2 w3':*` (the last
    /// word a prefix). A pair says the words are adjacent, which an IP's common numbers alone
    /// do not; pairs too long to be lexemes are left out. `None` when nothing is left.
    fn tsquery(&self) -> Option<String> {
        let star = if self.last_is_prefix { ":*" } else { "" };
        if let [word] = self.words.as_slice() {
            // An over-long word is stored cut (`pg_pair`): look for its cut as a prefix.
            let lexeme = if word.len() >= PG_MAX_LEXEME - 1 {
                word[..PG_MAX_LEXEME - 1].to_string()
            } else if self.last_is_prefix {
                word.clone()
            } else {
                format!("{word} ")
            };
            return Some(format!("'{lexeme}':*"));
        }
        let last = self.words.len() - 2;
        let pairs: Vec<String> = self
            .words
            .windows(2)
            .enumerate()
            .filter(|(_, p)| p[0].len() + 1 + p[1].len() <= PG_MAX_LEXEME)
            .map(|(i, p)| {
                let star = if i == last { star } else { "" };
                format!("'{} {}'{star}", p[0], p[1])
            })
            .collect();
        (!pairs.is_empty()).then(|| pairs.join(" & "))
    }
}

/// Rows per multi-row statement of an append (16 binds each, 17 on PostgreSQL: at most 8500,
/// under SQLite's 32766 and PostgreSQL's 65535).
const ROWS_PER_STATEMENT: usize = 500;

/// `INSERT INTO {into} VALUES (…), (…)`: `rows` rows of `cols` placeholders, the last one
/// cast to `cast_last` when given (PostgreSQL).
fn insert_rows(
    backend: crate::Backend,
    into: &str,
    rows: usize,
    cols: usize,
    cast_last: Option<&str>,
) -> String {
    let cast = cast_last.map(|t| format!("::{t}")).unwrap_or_default();
    let values: Vec<String> = (0..rows)
        .map(|i| format!("({}{cast})", placeholders(backend, i * cols + 1, cols)))
        .collect();
    format!("INSERT INTO {into} VALUES {}", values.join(", "))
}

/// `n` placeholders numbered from `first`: `$first, …` on PostgreSQL; plain `?` on SQLite,
/// where binding numbered ones looks each name up in a list (thousands of `$n` in one
/// statement made binding quadratic: 70 % of an append's time).
fn placeholders(backend: crate::Backend, first: usize, n: usize) -> String {
    (first..first + n)
        .map(|i| match backend {
            crate::Backend::Sqlite => "?".to_string(),
            crate::Backend::Postgres => format!("${i}"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// A text found in at most this many records is "rare": within a time range on SQLite its
/// matches are looked up in the word index rather than scanned for.
const RARE_TEXT: i64 = 20_000;

/// At most this many actions under one prefix are walked one by one; more fall back to one
/// statement.
const MAX_ACTION_WALKS: usize = 64;

/// A bound value.
enum Bind {
    I(i64),
    S(String),
}

/// A WHERE clause and its numbered binds, built in order.
struct Where {
    wh: Vec<String>,
    binds: Vec<Bind>,
}

impl Where {
    /// Every filter but the action prefix and the text, and the keyset position.
    fn common(f: &AuditFilter, by_time: bool) -> Where {
        let mut w = Where {
            wh: Vec::new(),
            binds: Vec::new(),
        };
        match (by_time, f.before_seq, f.before_ts) {
            (true, Some(seq), Some(ts)) => {
                let (a, b, c) = (
                    w.bind(Bind::I(ts)),
                    w.bind(Bind::I(ts)),
                    w.bind(Bind::I(seq)),
                );
                w.wh.push(format!("(ts < {a} OR (ts = {b} AND seq < {c}))"));
            }
            (_, Some(v), _) => w.add("seq < ?", Bind::I(v)),
            _ => {}
        }
        let text = |v: &Option<String>| v.clone().map(Bind::S);
        for (cond, b) in [
            ("ts >= ?", f.from.map(Bind::I)),
            ("ts < ?", f.to.map(Bind::I)),
            ("account = ?", text(&f.account)),
            ("reseller = ?", text(&f.reseller)),
            ("actor_id = ?", text(&f.actor)),
            ("result = ?", text(&f.result)),
            ("resource_type = ?", text(&f.resource_type)),
        ] {
            if let Some(b) = b {
                w.add(cond, b);
            }
        }
        w
    }

    /// Bind a value; its placeholder.
    fn bind(&mut self, b: Bind) -> String {
        self.binds.push(b);
        format!("${}", self.binds.len())
    }

    /// A condition with one `?`.
    fn add(&mut self, cond: &str, b: Bind) {
        let p = self.bind(b);
        self.wh.push(cond.replace('?', &p));
    }

    /// The placeholder after the last bind.
    fn next(&self) -> String {
        format!("${}", self.binds.len() + 1)
    }

    fn clause(&self) -> String {
        if self.wh.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", self.wh.join(" AND "))
        }
    }

    fn apply<'q>(
        self,
        mut q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    ) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
        for b in self.binds {
            q = match b {
                Bind::I(i) => q.bind(i),
                Bind::S(s) => q.bind(s),
            };
        }
        q
    }
}

/// `v` with LIKE's wildcards and the escape character escaped (`ESCAPE '\'`).
fn like_escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_")
}

impl Store {
    /// Append records in order, skipping ids already present. Returns how many were written.
    pub async fn append_audit(&self, records: &[NewAudit]) -> Result<usize> {
        if records.is_empty() {
            return Ok(0);
        }
        let _g = append_lock().lock().await;
        let mut last_err = None;
        for _ in 0..5 {
            match self.try_append(records).await {
                Ok(n) => return Ok(n),
                Err(StoreError::Conflict(e)) => last_err = Some(StoreError::Conflict(e)),
                Err(e) => return Err(e),
            }
        }
        Err(last_err.unwrap_or_else(|| StoreError::Database("audit append failed".into())))
    }

    async fn try_append(&self, records: &[NewAudit]) -> Result<usize> {
        if records.iter().any(|r| r.id.is_empty() || r.id.len() > 64) {
            return Err(StoreError::Invalid("an audit record needs an id".into()));
        }
        let mut tx = self.write_tx().await?;
        let head: Option<(i64, String)> =
            sqlx::query_as("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1")
                .fetch_optional(&mut *tx)
                .await?;
        let (mut seq, mut prev) = head.unwrap_or((0, GENESIS.to_string()));
        // Ids already stored (an outbox entry delivered again after a crash) and repeats
        // within the batch are skipped. Reads and writes go a few hundred rows per statement:
        // one round trip per record made the drain as slow as the connection's latency.
        let mut seen: HashSet<String> = HashSet::new();
        for chunk in records.chunks(ROWS_PER_STATEMENT) {
            let sql = format!(
                "SELECT id FROM audit WHERE id IN ({})",
                placeholders(self.backend(), 1, chunk.len())
            );
            // Planned each time: a plan cached while the table was small (a new store) is a
            // sequential scan, and stays one as the table grows (every append read it all).
            let mut q = sqlx::query_scalar::<_, String>(&sql).persistent(false);
            for r in chunk {
                q = q.bind(&r.id);
            }
            seen.extend(q.fetch_all(&mut *tx).await?);
        }
        let mut rows: Vec<(i64, &NewAudit, String, String, String)> = Vec::new();
        for rec in records {
            if !seen.insert(rec.id.clone()) {
                continue;
            }
            seq += 1;
            let doc = document(seq, rec, &prev)?;
            let hash = chain_hash(&prev, &doc);
            rows.push((
                seq,
                rec,
                doc,
                std::mem::replace(&mut prev, hash.clone()),
                hash,
            ));
        }
        for chunk in rows.chunks(ROWS_PER_STATEMENT) {
            // PostgreSQL also stores the words of the document for its index (schema 6).
            let pg = self.backend() == crate::Backend::Postgres;
            let (into, cols, cast) = if pg {
                (
                    format!("audit ({AUDIT_INSERT_COLS}, terms)"),
                    17,
                    Some("tsvector"),
                )
            } else {
                (format!("audit ({AUDIT_INSERT_COLS})"), 16, None)
            };
            let sql = insert_rows(self.backend(), &into, chunk.len(), cols, cast);
            let mut q = sqlx::query(&sql).persistent(chunk.len() == ROWS_PER_STATEMENT);
            for (seq, rec, doc, prev, hash) in chunk {
                let resource = |k: &str| {
                    rec.resource
                        .get(k)
                        .and_then(Value::as_str)
                        .map(str::to_string)
                };
                q = q
                    .bind(*seq)
                    .bind(&rec.id)
                    .bind(rec.timestamp.timestamp_millis())
                    .bind(rec.account.clone())
                    .bind(rec.reseller.clone())
                    .bind(&rec.actor.kind)
                    .bind(&rec.actor.id)
                    .bind(&rec.action)
                    .bind(resource("type"))
                    .bind(resource("id"))
                    .bind(&rec.result)
                    .bind(rec.job_id.clone())
                    .bind(rec.parent_id.clone())
                    .bind(doc)
                    .bind(prev)
                    .bind(hash);
                if pg {
                    q = q.bind(pg_terms(doc));
                }
            }
            q.execute(&mut *tx).await?;
            if self.backend() == crate::Backend::Sqlite {
                let sql = insert_rows(
                    self.backend(),
                    "audit_words (rowid, doc)",
                    chunk.len(),
                    2,
                    None,
                );
                let mut q = sqlx::query(&sql).persistent(chunk.len() == ROWS_PER_STATEMENT);
                for (seq, _, doc, _, _) in chunk {
                    q = q.bind(*seq).bind(doc);
                }
                q.execute(&mut *tx).await?;
            }
        }
        tx.commit().await?;
        Ok(rows.len())
    }

    /// Search, newest first. Three plans, chosen by the filters (module docs, "Search"):
    /// free text through the word index on SQLite, an action prefix walked one action name at
    /// a time, or one statement the database plans.
    pub async fn search_audit(&self, f: &AuditFilter) -> Result<Vec<AuditRecord>> {
        let by_time = f.from.is_some() || f.to.is_some();
        let words = f
            .text
            .as_deref()
            .and_then(|t| WordQuery::parse(t, self.backend()));
        if !by_time {
            if let (Some(w), crate::Backend::Sqlite) = (&words, self.backend()) {
                return self.search_audit_words(f, w).await;
            }
            // Not with an account, reseller or actor: their own `(x, seq)` indexes are the
            // better walk.
            let narrower = f.account.is_some() || f.reseller.is_some() || f.actor.is_some();
            if let (None, false, Some(prefix)) = (
                &f.text,
                narrower,
                f.action.as_deref().filter(|p| !p.is_empty()),
            ) {
                let names = self.audit_actions(prefix).await?;
                if names.len() <= MAX_ACTION_WALKS {
                    return self.search_audit_actions(f, &names).await;
                }
            }
        }
        let order = if by_time {
            "ts DESC, seq DESC"
        } else {
            "seq DESC"
        };
        // Within a time range on SQLite, a rare text narrows the range's records to its few
        // matches through the word index; a common one is found soon enough by the range scan.
        let rare_words = match (&words, self.backend(), by_time) {
            (Some(q), crate::Backend::Sqlite, true) => {
                let phrase = q.fts5();
                let n: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM (SELECT rowid FROM audit_words WHERE audit_words MATCH $1 LIMIT $2)",
                )
                .bind(&phrase)
                .bind(RARE_TEXT + 1)
                .fetch_one(self.pool())
                .await?;
                (n <= RARE_TEXT).then_some(phrase)
            }
            _ => None,
        };
        let mut out = Vec::new();
        let mut at = f.clone();
        loop {
            let mut w = Where::common(&at, by_time);
            if let Some(phrase) = &rare_words {
                w.add(
                    "seq IN (SELECT rowid FROM audit_words WHERE audit_words MATCH ?)",
                    Bind::S(phrase.clone()),
                );
            }
            if let Some(v) = &f.action {
                w.add(
                    "action LIKE ? ESCAPE '\\'",
                    Bind::S(format!("{}%", like_escape(v))),
                );
            }
            if let Some(v) = &f.text {
                self.text_condition(&mut w, v);
                if let (Some(q), crate::Backend::Postgres) = (&words, self.backend()) {
                    if let Some(tsquery) = q.tsquery() {
                        w.add("terms @@ ?::tsquery", Bind::S(tsquery));
                    }
                }
            }
            let sql = format!(
                "SELECT {COLS} FROM audit{} ORDER BY {order} LIMIT {}",
                w.clause(),
                w.next()
            );
            let want = f.limit - out.len() as i64;
            // Free text is planned with the text in hand (an unnamed statement): a cached
            // generic plan cannot tell a rare text (the word index) from a common one (newest
            // first).
            let rows = w
                .apply(sqlx::query(&sql))
                .bind(want)
                .persistent(f.text.is_none())
                .fetch_all(self.pool())
                .await?;
            let full = rows.len() as i64 == want;
            let mut last = None;
            for r in &rows {
                last = Some((r.try_get::<i64, _>("seq")?, r.try_get::<i64, _>("ts")?));
                if f.text.as_deref().is_none_or(|t| text_at_word_start(r, t)) {
                    out.push(record_from_row(r)?);
                }
            }
            // Rows that only matched inside a word were dropped: read on from the last one.
            match last {
                Some((seq, ts)) if full && (out.len() as i64) < f.limit => {
                    at.before_seq = Some(seq);
                    at.before_ts = Some(ts);
                }
                _ => return Ok(out),
            }
        }
    }

    /// The text itself, case-insensitively: what every plan checks in SQL (the word start is
    /// checked on the rows it returns, [`text_at_word_start`]).
    fn text_condition(&self, w: &mut Where, text: &str) {
        // SQLite's LIKE already ignores ASCII case (LOWER() cost a third of the scan);
        // PostgreSQL's does not.
        let cond = match self.backend() {
            crate::Backend::Sqlite => "doc LIKE ? ESCAPE '\\'",
            crate::Backend::Postgres => "LOWER(doc) LIKE ? ESCAPE '\\'",
        };
        w.add(
            cond,
            Bind::S(format!("%{}%", like_escape(&text.to_lowercase()))),
        );
    }

    /// Free text on SQLite: the word index gives candidate `seq`s newest first, in growing
    /// chunks; each chunk is checked against the text and the other filters until the page
    /// is full. A rare text costs its few matches, a common one its first chunk.
    async fn search_audit_words(&self, f: &AuditFilter, q: &WordQuery) -> Result<Vec<AuditRecord>> {
        let phrase = q.fts5();
        let text = f.text.as_deref().unwrap_or_default();
        let mut below = f.before_seq.unwrap_or(i64::MAX);
        let mut chunk: i64 = 256;
        let mut out: Vec<AuditRecord> = Vec::new();
        loop {
            let seqs: Vec<i64> = sqlx::query_scalar(
                "SELECT rowid FROM audit_words WHERE audit_words MATCH $1 AND rowid < $2 ORDER BY rowid DESC LIMIT $3",
            )
            .bind(&phrase)
            .bind(below)
            .bind(chunk)
            .fetch_all(self.pool())
            .await?;
            let Some(&last) = seqs.last() else { break };
            let mut w = Where::common(
                &AuditFilter {
                    before_seq: None,
                    ..f.clone()
                },
                false,
            );
            if let Some(v) = &f.action {
                w.add(
                    "action LIKE ? ESCAPE '\\'",
                    Bind::S(format!("{}%", like_escape(v))),
                );
            }
            self.text_condition(&mut w, text);
            w.add(
                "seq IN (SELECT value FROM json_each(?))",
                Bind::S(serde_json::to_string(&seqs)?),
            );
            // The whole chunk (at most `chunk` rows): the word-start check may drop some.
            let sql = format!("SELECT {COLS} FROM audit{} ORDER BY seq DESC", w.clause());
            let rows = w.apply(sqlx::query(&sql)).fetch_all(self.pool()).await?;
            for r in &rows {
                if text_at_word_start(r, text) {
                    out.push(record_from_row(r)?);
                    if out.len() as i64 >= f.limit {
                        return Ok(out);
                    }
                }
            }
            if (seqs.len() as i64) < chunk {
                break;
            }
            below = last;
            chunk = (chunk * 2).min(16_384);
        }
        Ok(out)
    }

    /// The action names that start with `prefix`, read by skipping through the action index
    /// (one seek per distinct name, not a scan).
    async fn audit_actions(&self, prefix: &str) -> Result<Vec<String>> {
        let names: Vec<String> = sqlx::query_scalar(
            "WITH RECURSIVE names(a) AS ( \
                SELECT MIN(action) FROM audit \
                UNION ALL \
                SELECT (SELECT MIN(action) FROM audit WHERE action > names.a) FROM names WHERE names.a IS NOT NULL \
             ) SELECT a FROM names WHERE a IS NOT NULL",
        )
        .fetch_all(self.pool())
        .await?;
        Ok(names
            .into_iter()
            .filter(|n| n.starts_with(prefix))
            .collect())
    }

    /// An action prefix without a time range: the newest page of each action (an ordered
    /// walk of the `(action, seq)` index), merged. A rare prefix costs its few records, not a
    /// walk through everything newer than them.
    async fn search_audit_actions(
        &self,
        f: &AuditFilter,
        names: &[String],
    ) -> Result<Vec<AuditRecord>> {
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let mut w = Where::common(f, false);
        let limit = w.bind(Bind::I(f.limit));
        let rest: String = w.wh.iter().map(|c| format!(" AND {c}")).collect();
        let mut parts = Vec::new();
        for name in names {
            let p = w.bind(Bind::S(name.clone()));
            parts.push(format!(
                "SELECT seq FROM (SELECT seq FROM audit WHERE action = {p}{rest} ORDER BY seq DESC LIMIT {limit}) AS a{}",
                parts.len()
            ));
        }
        let sql = format!(
            "SELECT {COLS} FROM audit WHERE seq IN ({}) ORDER BY seq DESC LIMIT {limit}",
            parts.join(" UNION ALL ")
        );
        let rows = w.apply(sqlx::query(&sql)).fetch_all(self.pool()).await?;
        rows.iter().map(record_from_row).collect()
    }

    /// One record with its related ones: its parent, its children, and the other records of
    /// the same job.
    pub async fn audit_record(&self, id: &str) -> Result<(AuditRecord, Vec<AuditRecord>)> {
        let row = sqlx::query(&format!(
            "SELECT {COLS}, parent_id, job_id FROM audit WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(self.pool())
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("no audit record {id:?}")))?;
        let rec = record_from_row(&row)?;
        let parent: Option<String> = get_opt_str(&row, "parent_id")?;
        let job: Option<String> = get_opt_str(&row, "job_id")?;
        let rows = sqlx::query(&format!(
            "SELECT {COLS} FROM audit WHERE (parent_id = $1 OR id = $2 OR (job_id IS NOT NULL AND job_id = $3)) AND id <> $4 ORDER BY seq LIMIT 100"
        ))
        .bind(id)
        .bind(parent.unwrap_or_default())
        .bind(job.unwrap_or_default())
        .bind(id)
        .fetch_all(self.pool())
        .await?;
        let related = rows.iter().map(record_from_row).collect::<Result<_>>()?;
        Ok((rec, related))
    }

    /// Walk the whole chain (in pages) from the oldest record kept and report the first record
    /// that does not match; a clean walk leaves a checkpoint at its end.
    pub async fn verify_audit(&self) -> Result<Verification> {
        self.verify_audit_from(None).await
    }

    /// Verify only what came after the newest checkpoint (after checking that the record it
    /// names still has the hash it had): the cost of a verification is the records since the
    /// last one, not the whole log. Without a usable checkpoint this is [`Store::verify_audit`].
    pub async fn verify_audit_incremental(&self) -> Result<Verification> {
        let cp: Option<(i64, String)> =
            sqlx::query_as("SELECT seq, hash FROM audit_checkpoints ORDER BY seq DESC LIMIT 1")
                .fetch_optional(self.pool())
                .await?;
        let Some((seq, hash)) = cp else {
            return self.verify_audit_from(None).await;
        };
        let now: Option<(String,)> = sqlx::query_as("SELECT hash FROM audit WHERE seq = $1")
            .bind(seq)
            .fetch_optional(self.pool())
            .await?;
        match now {
            Some((h,)) if h == hash => self.verify_audit_from(Some((seq, hash))).await,
            Some(_) => Ok(Verification {
                ok: false,
                checked: 0,
                first_seq: Some(seq),
                last_seq: None,
                head_hash: None,
                broken_at: Some(seq),
                reason: Some(format!(
                    "record {seq} no longer has the hash an earlier verification recorded (it was rewritten)"
                )),
                from_checkpoint: Some(seq),
            }),
            None => {
                let (oldest,): (Option<i64>,) = sqlx::query_as("SELECT MIN(seq) FROM audit")
                    .fetch_one(self.pool())
                    .await?;
                if oldest.is_some_and(|o| o > seq) || oldest.is_none() {
                    // Retention removed it: start from the oldest record kept.
                    self.verify_audit_from(None).await
                } else {
                    Ok(Verification {
                        ok: false,
                        checked: 0,
                        first_seq: Some(seq),
                        last_seq: None,
                        head_hash: None,
                        broken_at: Some(seq),
                        reason: Some(format!(
                            "record {seq}, checked by an earlier verification, was deleted"
                        )),
                        from_checkpoint: Some(seq),
                    })
                }
            }
        }
    }

    async fn verify_audit_from(&self, start: Option<(i64, String)>) -> Result<Verification> {
        let mut v = Verification {
            ok: true,
            checked: 0,
            first_seq: None,
            last_seq: None,
            head_hash: None,
            broken_at: None,
            reason: None,
            from_checkpoint: start.as_ref().map(|s| s.0),
        };
        if let Some((seq, hash)) = &start {
            v.last_seq = Some(*seq);
            v.head_hash = Some(hash.clone());
        }
        let (mut after, mut prev) = match start {
            Some((seq, hash)) => (seq, Some(hash)),
            None => (0i64, None),
        };
        loop {
            let rows = sqlx::query(
                "SELECT seq, id, ts, account, actor_id, action, result, doc, prev_hash, hash FROM audit WHERE seq > $1 ORDER BY seq LIMIT 5000",
            )
            .bind(after)
            .fetch_all(self.pool())
            .await?;
            if rows.is_empty() {
                break;
            }
            for r in &rows {
                let seq: i64 = r.try_get("seq")?;
                let doc: String = r.try_get("doc")?;
                let prev_hash: String = r.try_get("prev_hash")?;
                let hash: String = r.try_get("hash")?;
                v.first_seq.get_or_insert(seq);
                let fail = |why: String| (seq, why);
                let problem = (|| {
                    if let Some(p) = &prev {
                        if *p != prev_hash {
                            return Some(fail(format!(
                                "record {seq} does not follow the record before it (prev_hash differs: a record was removed, inserted or edited)"
                            )));
                        }
                        if seq != after + 1 {
                            return Some(fail(format!(
                                "records {} to {} are missing",
                                after + 1,
                                seq - 1
                            )));
                        }
                    }
                    if chain_hash(&prev_hash, &doc) != hash {
                        return Some(fail(format!(
                            "record {seq}'s content does not match its hash (it was edited)"
                        )));
                    }
                    let d: Value = match serde_json::from_str(&doc) {
                        Ok(d) => d,
                        Err(_) => return Some(fail(format!("record {seq} is not JSON"))),
                    };
                    let col = |c: &str| get_opt_str(r, c).ok().flatten();
                    let same = d["seq"].as_i64() == Some(seq)
                        && d["prev_hash"].as_str() == Some(prev_hash.as_str())
                        && d["id"].as_str() == col("id").as_deref()
                        && d["action"].as_str() == col("action").as_deref()
                        && d["account"].as_str() == col("account").as_deref()
                        && d["result"].as_str() == col("result").as_deref()
                        && d["actor"]["id"].as_str() == col("actor_id").as_deref()
                        && d["timestamp"]
                            .as_str()
                            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                            .map(|t| t.timestamp_millis())
                            == r.try_get::<i64, _>("ts").ok();
                    if !same {
                        return Some(fail(format!(
                            "record {seq}'s indexed columns differ from its hashed content (they were edited)"
                        )));
                    }
                    None
                })();
                if let Some((s, why)) = problem {
                    v.ok = false;
                    v.broken_at = Some(s);
                    v.reason = Some(why);
                    return Ok(v);
                }
                v.checked += 1;
                v.last_seq = Some(seq);
                v.head_hash = Some(hash.clone());
                prev = Some(hash);
                after = seq;
            }
        }
        if let (true, Some(seq), Some(hash)) = (v.checked > 0, v.last_seq, &v.head_hash) {
            sqlx::query(
                "INSERT INTO audit_checkpoints (seq, hash, verified_at) VALUES ($1, $2, $3) ON CONFLICT (seq) DO NOTHING",
            )
            .bind(seq)
            .bind(hash)
            .bind(crate::now_ms())
            .execute(self.pool())
            .await?;
        }
        Ok(v)
    }

    /// Retention: drop records older than `cutoff_ms`. The chain then starts at the oldest
    /// record kept (its `prev_hash` names the dropped one, which `verify` accepts).
    pub async fn purge_audit(&self, cutoff_ms: i64) -> Result<u64> {
        // By position, not by time: the chain stays a suffix even when clocks disagree.
        let mut tx = self.write_tx().await?;
        let last: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM audit WHERE ts < $1")
            .bind(cutoff_ms)
            .fetch_one(&mut *tx)
            .await?;
        if self.backend() == crate::Backend::Sqlite {
            // A contentless index forgets an entry given the text it indexed.
            sqlx::query(
                "INSERT INTO audit_words (audit_words, rowid, doc) SELECT 'delete', seq, doc FROM audit WHERE seq <= $1",
            )
            .bind(last)
            .execute(&mut *tx)
            .await?;
        }
        let n = sqlx::query("DELETE FROM audit WHERE seq <= $1")
            .bind(last)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(n.rows_affected())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same document through migration 6's SQL gave exactly these lexemes.
    #[test]
    fn postgres_terms_are_each_word_with_the_next() {
        let doc = r#"{"ip":"198.51.3.105","ua":"Mozilla/5.0","n":"Müller"}"#;
        assert_eq!(
            pg_terms(doc),
            "'0 n' '105 ua' '198 51' '3 105' '5 0' '51 3' 'ip 198' 'ller ' 'm ller' \
             'mozilla 5' 'n m' 'ua mozilla' "
        );
        assert_eq!(pg_terms(""), "");
        // A word too long for a lexeme is kept cut; the word before keeps what fits of it.
        let huge = "a".repeat(3000);
        let terms = pg_terms(&format!("agent {huge} ok"));
        assert_eq!(
            terms,
            format!(
                "'{} ' 'agent {}' 'ok ' ",
                "a".repeat(2046),
                "a".repeat(2041)
            )
        );
        let q = |t: &str| WordQuery::parse(t, crate::Backend::Postgres).and_then(|q| q.tsquery());
        assert_eq!(
            q(&"a".repeat(100)),
            Some(format!("'{}':*", "a".repeat(100)))
        );
        assert_eq!(q(&huge), Some(format!("'{}':*", "a".repeat(2046))));
    }

    #[test]
    fn postgres_queries_are_pairs_or_a_prefix() {
        let q = |t: &str| WordQuery::parse(t, crate::Backend::Postgres).and_then(|q| q.tsquery());
        assert_eq!(
            q("198.51.3.105").as_deref(),
            Some("'198 51' & '51 3' & '3 105':*")
        );
        assert_eq!(q("10.0.3.1").as_deref(), Some("'10 0' & '0 3' & '3 1':*"));
        assert_eq!(q("cust004").as_deref(), Some("'cust004':*"));
        assert_eq!(q("Mozilla/5").as_deref(), Some("'mozilla 5':*"));
        // Two short words are still a pair; one short word, or none, is a scan.
        assert_eq!(q("5.0").as_deref(), Some("'5 0':*"));
        assert_eq!(q("-7"), None);
        assert_eq!(q("--"), None);
        // Only SQLite reads words of other scripts.
        assert_eq!(q("müller").as_deref(), Some("'m ller':*"));
        let fts5 = |t: &str| WordQuery::parse(t, crate::Backend::Sqlite).map(|q| q.fts5());
        assert_eq!(fts5("müller").as_deref(), Some("\"müller\" *"));
        // SQLite leaves a short last word to the text check: the word before it is whole.
        assert_eq!(fts5("198.51.3.1").as_deref(), Some("\"198 51 3\""));
        assert_eq!(fts5("10.0.3.1"), None);
        assert_eq!(fts5("5.0"), None);
    }
}
