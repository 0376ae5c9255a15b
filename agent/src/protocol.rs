//! The wire protocol: typed, versioned JSON lines.
//!
//! Each request is one JSON object on one line, each answer too:
//!
//! ```text
//! -> {"v":1,"id":7,"op":"freeze","account":"alice"}
//! <- {"v":1,"id":7,"ok":{"type":"frozen","account":"alice"}}
//! -> {"v":1,"id":8,"op":"reboot"}
//! <- {"v":1,"id":8,"error":{"code":"unknown_request","message":"unknown op \"reboot\" ..."}}
//! ```
//!
//! `v` is the protocol version ([`PROTOCOL_VERSION`]), `id` an optional number
//! echoed back, `op` one of a closed set ([`Request`]). There are no shell
//! strings anywhere: every argument is a typed field, account names are
//! validated ([`AccountName`]). A bad line gets a typed error answer
//! ([`ErrorCode`]) and the connection stays usable.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::account::AccountName;
use crate::names::{Domain, Mailbox, Password};

/// Version of this protocol; a request with another `v` is refused with
/// [`ErrorCode::UnsupportedVersion`].
pub const PROTOCOL_VERSION: u32 = 1;

/// Longest accepted request line (bytes, newline included). Longer lines get a
/// [`ErrorCode::Malformed`] answer and the connection is closed.
pub const MAX_LINE_BYTES: usize = 64 * 1024;

/// Default `cpu.max`: 50 % of one core.
pub const DEFAULT_CPU_MAX: CpuMax = CpuMax {
    quota_us: Some(50_000),
    period_us: 100_000,
};
/// Default `memory.max`: 512 MiB.
pub const DEFAULT_MEMORY_MAX: u64 = 512 * 1024 * 1024;
/// Default `io.max` read and write bandwidth: 50 MiB/s (50 × 1024 × 1024 bytes
/// per second, i.e. `rbps=52428800 wbps=52428800`).
pub const DEFAULT_IO_BPS: u64 = 50 * 1024 * 1024;
/// Default `pids.max`.
pub const DEFAULT_PIDS_MAX: u64 = 256;

/// All `op` values the agent knows.
pub const KNOWN_OPS: &[&str] = &[
    "ping",
    "apply_limits",
    "freeze",
    "thaw",
    "kill",
    "remove",
    "usage",
    "disk_usage",
    "prepare_home",
    "create_user",
    "lock_user",
    "unlock_user",
    "delete_user",
    "set_password",
    "build_home",
    "write_zone",
    "remove_zone",
    "write_security",
    "set_suspended",
    "set_quota",
    "backup_home",
    "remove_home",
    "create_mailbox",
    "delete_mailbox",
    "list_mailboxes",
    "unpack_archive",
    "unpack_status",
    "cancel_unpack",
    "install_home",
    "revert_home",
    "discard_restore",
    "write_mail_policy",
    "remove_mail_policy",
];

/// The closed set of requests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Liveness + capabilities.
    Ping,
    /// Create the account's cgroup if needed and write its limits (defaults
    /// from the config, overridden field by field by `limits`).
    ApplyLimits {
        account: AccountName,
        #[serde(default)]
        limits: LimitsPatch,
    },
    /// Freeze every process of the account (`cgroup.freeze`), waiting for
    /// `cgroup.events` to say `frozen 1`.
    Freeze { account: AccountName },
    /// Undo [`Request::Freeze`].
    Thaw { account: AccountName },
    /// SIGKILL every process of the account (`cgroup.kill`, or SIGKILL of every
    /// pid in `cgroup.procs`).
    Kill { account: AccountName },
    /// Remove the account's (empty) cgroup.
    Remove { account: AccountName },
    /// Resource usage counters of the account's cgroup.
    Usage { account: AccountName },
    /// Disk usage of the account's home directory (`<home_root>/<account>`).
    DiskUsage { account: AccountName },
    /// Create `<home_root>/<account>` owned by `uid:gid`, mode 0750.
    PrepareHome {
        account: AccountName,
        uid: u32,
        gid: u32,
    },
    /// Create the account's login user (`useradd`, a normal user with its own
    /// group, home `<home_root>/<account>`, shell nologin), or with system
    /// users off a pseudo uid/gid from the agent's registry. An existing user
    /// made by nPanel is answered with its ids (`created: false`).
    /// `home_layout`: also create the home and its domain-independent layout
    /// (`public_html/`, `mail/`, `etc/`, `tmp/`, `logs/`).
    CreateUser {
        account: AccountName,
        #[serde(default)]
        home_layout: bool,
    },
    /// Lock the login (`usermod --lock --expiredate 1`: password and keys).
    LockUser { account: AccountName },
    /// Undo [`Request::LockUser`].
    UnlockUser { account: AccountName },
    /// Delete the login user (`userdel`, the home stays); absent is fine.
    DeleteUser { account: AccountName },
    /// Set the login password (`chpasswd`, on stdin; never logged).
    SetPassword {
        account: AccountName,
        password: Password,
    },
    /// The cPanel-compatible home layout for one domain, owned `uid:gid`.
    BuildHome {
        account: AccountName,
        uid: u32,
        gid: u32,
        domain: Domain,
    },
    /// Write `<host_root>/var/named/<domain>.db` (a minimal zone).
    WriteZone {
        account: AccountName,
        domain: Domain,
        ipv4: Ipv4Addr,
    },
    /// Remove `<host_root>/var/named/<domain>.db`; with `account`, only if
    /// the zone was written for that account.
    RemoveZone {
        domain: Domain,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        account: Option<AccountName>,
    },
    /// The per-account security fragments under
    /// `<host_root>/etc/npanel/accounts/<account>/`.
    WriteSecurity {
        account: AccountName,
        profile: SecurityProfile,
        /// Whether the account may use cron (default true).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cron: Option<bool>,
        /// The account's effective settings, each replacing the profile's template value
        /// (absent: the template as it is).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        settings: Option<crate::hostfiles::SecuritySettings>,
    },
    /// Create or remove the account's `suspended` flag file.
    SetSuspended {
        account: AccountName,
        suspended: bool,
    },
    /// Create or remove the account's `throttled` flag file (bandwidth over its limit).
    SetThrottled {
        account: AccountName,
        throttled: bool,
    },
    /// Create or remove the account's `mail_held` flag file: its outgoing mail is deferred by
    /// the mail policy ACL (it sent over its hourly limit; [`crate::mailpolicy`]).
    SetMailHeld { account: AccountName, held: bool },
    /// Make the account's home read-only (its modes recorded) or give them back: a disk limit
    /// enforced where the filesystem has no quotas ([`crate::enforce`]).
    SetReadOnly {
        account: AccountName,
        read_only: bool,
    },
    /// Filesystem quota of the account's user on the home filesystem
    /// (`None` = unlimited).
    SetQuota {
        account: AccountName,
        #[serde(default)]
        disk_mb: Option<u64>,
    },
    /// Every user's disk use from the kernel's quota report (`repquota`), where the homes'
    /// filesystem keeps one.
    QuotaUsage,
    /// Archive the home into `<host_root>/backups/<account>-<UTC>.tar.zst`;
    /// `manifest`, when given, is stored first as `manifest.json`.
    BackupHome {
        account: AccountName,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        manifest: Option<Value>,
    },
    /// Delete the home tree `<home_root>/<account>`.
    RemoveHome { account: AccountName },
    /// Create the mailbox `<mailbox>@<domain>` of the account (its Maildir
    /// and its `etc/<domain>/passwd` and `shadow` lines), or set its
    /// password again.
    CreateMailbox {
        account: AccountName,
        domain: Domain,
        mailbox: Mailbox,
        password: Password,
    },
    /// Remove the mailbox's lines and its Maildir; absent is fine.
    DeleteMailbox {
        account: AccountName,
        domain: Domain,
        mailbox: Mailbox,
    },
    /// The mailbox names in `etc/<domain>/passwd`.
    ListMailboxes {
        account: AccountName,
        domain: Domain,
    },
    /// Unpack an archive on this server into the staging of restore `restore_id`
    /// (`<home_root>/.npanel-restore-<id>/{home,meta}`, see [`crate::restore`]): at most
    /// `max_bytes` of content, owned by `uid:gid` when given, absolute links inside
    /// `source_home` made relative.
    UnpackArchive {
        account: AccountName,
        restore_id: String,
        archive: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_bytes: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        source_home: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        uid: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        gid: Option<u32>,
        /// Count the home's files and bytes in a headers-only pass first (for progress).
        #[serde(default)]
        scan_first: bool,
    },
    /// Counters of a running unpack.
    UnpackStatus { restore_id: String },
    /// Stop a running unpack (its staging is removed).
    CancelUnpack { restore_id: String },
    /// Put the staged home in place of the account's (kept in the staging as `previous`),
    /// every entry given to `uid:gid` when given.
    InstallHome {
        account: AccountName,
        restore_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        uid: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        gid: Option<u32>,
    },
    /// Undo an install: the previous home back in place.
    RevertHome {
        account: AccountName,
        restore_id: String,
    },
    /// Delete the staging of a restore (and the home an install replaced).
    DiscardRestore { restore_id: String },
    /// Write the account's outbound mail policy
    /// (`<host_root>/etc/exim4/npanel/policies/<account>.conf`) and regenerate the Exim ACL
    /// include from every policy, checked by `exim -bV` before it is swapped in
    /// ([`crate::mailpolicy`]). `domains`: the account's domains, whose mailbox logins
    /// (`box@domain`) count as the account's.
    WriteMailPolicy {
        account: AccountName,
        policy: crate::mailpolicy::MailPolicy,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        domains: Vec<Domain>,
    },
    /// Remove the account's mail policy and its stanza from the ACL; absent is fine.
    RemoveMailPolicy { account: AccountName },
    /// The facts a post-migration health check compares: the archive's (one read) and the
    /// account's as it is now ([`crate::inspect`]). Read-only.
    InspectMigration {
        account: AccountName,
        archive: std::path::PathBuf,
    },
    /// After a restore's home is installed: its archive's DNS zones (of `domains`, the
    /// account's, old address → `ipv4`) and crontab (when `cron`) from the staging
    /// ([`crate::restore_meta`]).
    ApplyRestoreMeta {
        account: AccountName,
        restore_id: String,
        domains: Vec<Domain>,
        ipv4: Ipv4Addr,
        cron: bool,
    },
    /// The first file of the metadata directory `dir` of an archive (`cp`: the account's
    /// `cp/<user>`), read without unpacking ([`crate::inspect::archive_meta_file`]).
    ReadArchiveMeta {
        archive: std::path::PathBuf,
        dir: String,
    },
    /// The regular files of `meta/<dir>` in a restore's staging (the database dumps, for the
    /// workers' import).
    ListRestoreMeta { restore_id: String, dir: String },
    /// Up to `len` bytes (≤ 1 MiB) of `meta/<path>` in a restore's staging from `offset`.
    ReadRestoreFile {
        restore_id: String,
        path: String,
        offset: u64,
        len: u32,
    },
}

impl Request {
    /// The `op` name of this request.
    pub fn op(&self) -> &'static str {
        match self {
            Request::Ping => "ping",
            Request::ApplyLimits { .. } => "apply_limits",
            Request::Freeze { .. } => "freeze",
            Request::Thaw { .. } => "thaw",
            Request::Kill { .. } => "kill",
            Request::Remove { .. } => "remove",
            Request::Usage { .. } => "usage",
            Request::DiskUsage { .. } => "disk_usage",
            Request::PrepareHome { .. } => "prepare_home",
            Request::CreateUser { .. } => "create_user",
            Request::LockUser { .. } => "lock_user",
            Request::UnlockUser { .. } => "unlock_user",
            Request::DeleteUser { .. } => "delete_user",
            Request::SetPassword { .. } => "set_password",
            Request::BuildHome { .. } => "build_home",
            Request::WriteZone { .. } => "write_zone",
            Request::RemoveZone { .. } => "remove_zone",
            Request::WriteSecurity { .. } => "write_security",
            Request::SetSuspended { .. } => "set_suspended",
            Request::SetReadOnly { .. } => "set_read_only",
            Request::SetThrottled { .. } => "set_throttled",
            Request::SetMailHeld { .. } => "set_mail_held",
            Request::InspectMigration { .. } => "inspect_migration",
            Request::ApplyRestoreMeta { .. } => "apply_restore_meta",
            Request::ListRestoreMeta { .. } => "list_restore_meta",
            Request::ReadArchiveMeta { .. } => "read_archive_meta",
            Request::ReadRestoreFile { .. } => "read_restore_file",
            Request::SetQuota { .. } => "set_quota",
            Request::QuotaUsage => "quota_usage",
            Request::BackupHome { .. } => "backup_home",
            Request::RemoveHome { .. } => "remove_home",
            Request::CreateMailbox { .. } => "create_mailbox",
            Request::DeleteMailbox { .. } => "delete_mailbox",
            Request::ListMailboxes { .. } => "list_mailboxes",
            Request::UnpackArchive { .. } => "unpack_archive",
            Request::UnpackStatus { .. } => "unpack_status",
            Request::CancelUnpack { .. } => "cancel_unpack",
            Request::InstallHome { .. } => "install_home",
            Request::RevertHome { .. } => "revert_home",
            Request::DiscardRestore { .. } => "discard_restore",
            Request::WriteMailPolicy { .. } => "write_mail_policy",
            Request::RemoveMailPolicy { .. } => "remove_mail_policy",
        }
    }

    /// Requests whose work grows with the size of a home (archive, delete):
    /// they get the config's `long_request_timeout_ms` instead of
    /// `request_timeout_ms`, and clients wait as long.
    pub fn is_long(&self) -> bool {
        matches!(
            self,
            Request::BackupHome { .. }
                | Request::RemoveHome { .. }
                | Request::SetReadOnly { .. }
                | Request::QuotaUsage
                | Request::DiskUsage { .. }
                | Request::UnpackArchive { .. }
                | Request::InstallHome { .. }
                | Request::DiscardRestore { .. }
                | Request::InspectMigration { .. }
                | Request::ApplyRestoreMeta { .. }
                | Request::ReadArchiveMeta { .. }
        )
    }
}

/// The security templates of DESIGN §13.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecurityProfile {
    Strict,
    Moderate,
    Legacy,
}

impl SecurityProfile {
    pub fn as_str(self) -> &'static str {
        match self {
            SecurityProfile::Strict => "strict",
            SecurityProfile::Moderate => "moderate",
            SecurityProfile::Legacy => "legacy",
        }
    }
}

/// A request as sent on the wire.
#[derive(Debug, Clone, Serialize)]
pub struct RequestEnvelope<'a> {
    pub v: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<u64>,
    #[serde(flatten)]
    pub request: &'a Request,
}

/// An answer as sent on the wire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub v: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<u64>,
    #[serde(flatten)]
    pub body: ResponseBody,
}

impl Response {
    pub fn ok(id: Option<u64>, reply: Reply) -> Self {
        Self {
            v: PROTOCOL_VERSION,
            id,
            body: ResponseBody::Ok(reply),
        }
    }

    pub fn error(id: Option<u64>, code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            v: PROTOCOL_VERSION,
            id,
            body: ResponseBody::Error(WireError {
                code,
                message: message.into(),
            }),
        }
    }

    /// One JSON line, newline included.
    pub fn to_line(&self) -> String {
        // Serializing these plain types cannot fail.
        let mut s = serde_json::to_string(self).unwrap_or_else(|e| {
            format!(r#"{{"v":{PROTOCOL_VERSION},"error":{{"code":"internal","message":"{e}"}}}}"#)
        });
        s.push('\n');
        s
    }
}

/// `{"ok": reply}` or `{"error": {...}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResponseBody {
    Ok(Reply),
    Error(WireError),
}

/// A typed error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct WireError {
    pub code: ErrorCode,
    pub message: String,
}

/// Error codes of the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Not JSON, not an object, a bad `id`, no `op`, or a line too long.
    Malformed,
    /// `v` missing or not [`PROTOCOL_VERSION`].
    UnsupportedVersion,
    /// `op` is not one of [`KNOWN_OPS`].
    UnknownRequest,
    /// Known `op`, but missing/unknown/ill-typed fields.
    InvalidRequest,
    /// The account name does not match `^[a-z][a-z0-9_-]{0,31}$`.
    InvalidAccount,
    /// The caller's uid/gid (SO_PEERCRED) is not on the allow list.
    NotPermitted,
    /// The account has no cgroup (or home) yet.
    NotFound,
    /// The cgroup still has processes (remove) or a similar conflict.
    Busy,
    /// The request did not finish within the agent's request timeout, or a
    /// freeze did not complete within its deadline.
    Timeout,
    /// The host lacks the feature (e.g. no cgroup v2 freezer).
    Unsupported,
    /// A value read back from a cgroup file differs from what was written.
    VerifyMismatch,
    /// A path the operation would have to follow through a symlink, or that
    /// is not what it must be (a file where a directory belongs, a hard link
    /// where a file of the account's own belongs): refused, nothing followed.
    UnsafePath,
    /// A host tool (`useradd`, `usermod`, `userdel`, `chpasswd`, `setquota`)
    /// is missing or failed; the message has its exit status and stderr.
    ToolFailed,
    /// A filesystem or syscall error.
    Io,
    /// A bug or an unexpected state in the agent.
    Internal,
    /// The caller cancelled the operation (`cancel_unpack`).
    Cancelled,
    /// A host daemon's own check (`exim -bV`) refused the config the operation would have
    /// written; nothing was changed.
    ConfigRejected,
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = serde_json::to_value(self).ok();
        f.write_str(v.as_ref().and_then(Value::as_str).unwrap_or("internal"))
    }
}

/// Successful answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Reply {
    Pong(Pong),
    LimitsApplied(LimitsReport),
    Frozen {
        account: AccountName,
    },
    Thawed {
        account: AccountName,
    },
    Killed {
        account: AccountName,
        method: KillMethod,
        /// Pids signalled by the fallback (0 with `cgroup.kill`, where the
        /// kernel does it).
        pids_signalled: u32,
        /// Whether `cgroup.events` showed `populated 0` afterwards.
        emptied: bool,
    },
    Removed {
        account: AccountName,
        /// false when there was nothing to remove.
        existed: bool,
    },
    Usage(Usage),
    DiskUsage(DiskUsage),
    HomePrepared {
        account: AccountName,
        path: String,
        uid: u32,
        gid: u32,
        mode: u32,
    },
    /// A cgroup operation this host cannot carry out (no writable cgroup v2
    /// root, e.g. the unprivileged embedded default): nothing was done.
    Skipped {
        op: String,
        account: AccountName,
        reason: String,
    },
    UserCreated(UserCreated),
    UserLocked {
        account: AccountName,
        /// true: a real system user; false: the pseudo-user registry.
        system_user: bool,
    },
    UserUnlocked {
        account: AccountName,
        system_user: bool,
    },
    UserDeleted {
        account: AccountName,
        system_user: bool,
        /// false when there was no such user.
        existed: bool,
    },
    PasswordSet {
        account: AccountName,
        system_user: bool,
    },
    HomeBuilt(HomeBuilt),
    ZoneWritten(ZoneWritten),
    ZoneRemoved {
        domain: Domain,
        path: String,
        existed: bool,
    },
    SecurityWritten(SecurityWritten),
    /// The kernel's quota report, by user.
    QuotaUsage(crate::quota::QuotaUsage),
    /// The `throttled` flag set or removed.
    ThrottleSet {
        account: AccountName,
        throttled: bool,
        changed: bool,
        path: String,
    },
    /// [`Request::ReadArchiveMeta`]'s file: its name and text (`None`: the archive has none).
    ArchiveMetaFile {
        file: Option<(String, String)>,
    },
    /// [`Request::ListRestoreMeta`]'s files.
    RestoreMetaList {
        files: Vec<crate::restore_meta::MetaFile>,
    },
    /// A chunk of a staging file (base64) and the file's size.
    RestoreFileChunk {
        data: String,
        size: u64,
    },
    /// What [`Request::ApplyRestoreMeta`] applied.
    RestoreMetaApplied(crate::restore_meta::MetaApplied),
    /// What [`Request::InspectMigration`] found.
    MigrationInspected(Box<crate::inspect::MigrationFacts>),
    /// The `mail_held` flag set or removed.
    MailHeldSet {
        account: AccountName,
        held: bool,
        changed: bool,
        path: String,
    },
    /// The home made read-only, or given its modes back.
    ReadOnlySet(crate::enforce::ReadOnlyReport),
    SuspensionSet {
        account: AccountName,
        suspended: bool,
        /// false when the flag already was as asked.
        changed: bool,
        path: String,
    },
    Quota(QuotaReport),
    HomeBackedUp(HomeBackup),
    ArchiveUnpacked(crate::restore::ArchiveUnpacked),
    UnpackStatus(crate::restore::UnpackStatus),
    UnpackCancelled {
        restore_id: String,
        /// false when no unpack with that id was running.
        running: bool,
    },
    HomeInstalled(crate::restore::HomeInstalled),
    HomeReverted {
        account: AccountName,
        /// false when there was nothing to undo.
        reverted: bool,
    },
    RestoreDiscarded {
        restore_id: String,
        existed: bool,
    },
    HomeRemoved {
        account: AccountName,
        path: String,
        existed: bool,
    },
    MailboxCreated(MailboxCreated),
    MailboxDeleted {
        account: AccountName,
        domain: Domain,
        mailbox: Mailbox,
        /// The Maildir.
        path: String,
        /// false when there was neither a line nor a Maildir to remove.
        existed: bool,
    },
    Mailboxes {
        account: AccountName,
        domain: Domain,
        /// Sorted; empty when the domain has no `passwd` file.
        mailboxes: Vec<Mailbox>,
    },
    MailPolicyWritten(crate::mailpolicy::MailPolicyReport),
    MailPolicyRemoved(crate::mailpolicy::MailPolicyReport),
}

/// Answer to [`Request::CreateMailbox`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MailboxCreated {
    pub account: AccountName,
    pub domain: Domain,
    pub mailbox: Mailbox,
    /// The Maildir (`<home>/mail/<domain>/<mailbox>`).
    pub path: String,
    /// false when `passwd` already had the mailbox (its password was set
    /// again, its Maildir kept).
    pub created: bool,
}

/// Answer to [`Request::CreateUser`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserCreated {
    pub account: AccountName,
    pub uid: u32,
    pub gid: u32,
    /// false when the user already existed (its ids are answered).
    pub created: bool,
    /// true: a real system user (`useradd`); false: a pseudo uid/gid from
    /// the agent's registry (system users off).
    pub system_user: bool,
    /// The home, when `home_layout` was asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub home: Option<HomeBuilt>,
}

/// Answer to [`Request::BuildHome`] (and the home part of
/// [`Request::CreateUser`] with `home_layout`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HomeBuilt {
    pub account: AccountName,
    pub path: String,
    pub uid: u32,
    pub gid: u32,
    /// Entries created by this call, relative to the home (`.` = the home);
    /// empty when everything already existed.
    pub created: Vec<String>,
    /// Whether the tree is owned `uid:gid`. false only when the agent is not
    /// root and `uid:gid` is not its own: ownership was left alone (see `note`).
    pub owner_applied: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// Answer to [`Request::WriteZone`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ZoneWritten {
    pub domain: Domain,
    pub path: String,
    /// The SOA serial now in the file (`YYYYMMDDnn`).
    pub serial: u64,
    /// false when the file already said exactly this (serial kept).
    pub changed: bool,
}

/// Answer to [`Request::WriteSecurity`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecurityWritten {
    pub account: AccountName,
    pub profile: SecurityProfile,
    pub dir: String,
    /// The files the profile consists of (present after the call).
    pub files: Vec<String>,
    /// false when every file already had this content.
    pub changed: bool,
}

/// Whether a quota was applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QuotaStatus {
    Applied,
    Skipped,
}

/// Answer to [`Request::SetQuota`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuotaReport {
    pub account: AccountName,
    pub disk_mb: Option<u64>,
    pub status: QuotaStatus,
    /// The mount point the quota was set on (applied).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mount: Option<String>,
    /// Why it was skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Answer to [`Request::BackupHome`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HomeBackup {
    pub account: AccountName,
    /// The archive (`<host_root>/backups/<account>-<UTC>.tar.zst`).
    pub path: String,
    /// Size of the archive.
    pub bytes: u64,
    /// Sum of the archived files' sizes.
    pub source_bytes: u64,
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    /// Entries left out (sockets, FIFOs, devices, other filesystems, too
    /// deep), relative to the home, with the reason; at most 100 listed.
    pub skipped: Vec<String>,
}

/// Answer to [`Request::Ping`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pong {
    pub protocol: u32,
    pub agent_version: String,
    pub pid: u32,
    pub uptime_ms: u64,
    pub capabilities: Capabilities,
}

/// What this host lets the agent enforce, said plainly.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    /// The configured cgroup root.
    pub cgroup_root: String,
    /// Mount point of the cgroup2 filesystem holding the root, if any. `None`
    /// means the root is a plain directory (as in tests) or cgroup v2 is absent.
    pub cgroup2_mount: Option<String>,
    /// Whether account cgroup directories can be created under the root.
    pub cgroup_usable: bool,
    /// Controllers enabled for account cgroups (the root's `cgroup.subtree_control`).
    pub controllers: Vec<String>,
    /// `cgroup.freeze` is available.
    pub freeze: bool,
    /// `cgroup.kill` is available (otherwise kill SIGKILLs every pid).
    pub cgroup_kill: bool,
    /// One entry per limit: how it is enforced.
    pub limits: Vec<LimitCapability>,
    /// Human-readable remarks (why something is missing).
    pub notes: Vec<String>,
}

impl Capabilities {
    /// How `kind` is enforced.
    pub fn enforcement(&self, kind: LimitKind) -> Enforcement {
        self.limits
            .iter()
            .find(|l| l.kind == kind)
            .map(|l| l.enforcement)
            .unwrap_or(Enforcement::None)
    }
}

/// How one kind of limit is enforced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitCapability {
    pub kind: LimitKind,
    pub enforcement: Enforcement,
    pub detail: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitKind {
    Cpu,
    Memory,
    Io,
    Pids,
}

impl LimitKind {
    pub const ALL: [LimitKind; 4] = [
        LimitKind::Cpu,
        LimitKind::Memory,
        LimitKind::Io,
        LimitKind::Pids,
    ];

    /// The cgroup v2 controller that enforces this limit.
    pub fn controller(self) -> &'static str {
        match self {
            LimitKind::Cpu => "cpu",
            LimitKind::Memory => "memory",
            LimitKind::Io => "io",
            LimitKind::Pids => "pids",
        }
    }

    /// The cgroup v2 file holding this limit.
    pub fn file(self) -> &'static str {
        match self {
            LimitKind::Cpu => "cpu.max",
            LimitKind::Memory => "memory.max",
            LimitKind::Io => "io.max",
            LimitKind::Pids => "pids.max",
        }
    }
}

/// Who enforces a limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Enforcement {
    /// The cgroup v2 controller (for every process in the account's cgroup).
    Cgroup,
    /// An rlimit, only for processes started through `npanel-agent exec`.
    Rlimit,
    /// Not enforced at all on this host.
    None,
}

/// Answer to [`Request::ApplyLimits`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitsReport {
    pub account: AccountName,
    /// The effective limits (defaults merged with the request's overrides).
    pub requested: Limits,
    pub applied: Vec<AppliedLimit>,
}

/// What happened to one limit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedLimit {
    pub kind: LimitKind,
    pub enforcement: Enforcement,
    /// The value written (cgroup file syntax) or the rlimit planned.
    pub value: String,
    /// What the cgroup file said when read back (cgroup enforcement only).
    pub read_back: Option<String>,
    pub note: Option<String>,
}

/// How a kill was carried out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KillMethod {
    CgroupKill,
    Sigkill,
}

/// Answer to [`Request::Usage`]. Counters whose file is missing (controller
/// not enabled) are `None`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub account: String,
    pub cpu: Option<CpuStat>,
    pub memory_current: Option<u64>,
    pub memory_oom: Option<u64>,
    pub memory_oom_kill: Option<u64>,
    pub pids_current: Option<u64>,
    /// `pids.events` `max`: how often a fork was refused by `pids.max`.
    pub pids_max_events: Option<u64>,
    pub io: Vec<IoStat>,
    pub populated: Option<bool>,
    pub frozen: Option<bool>,
}

/// `cpu.stat`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuStat {
    pub usage_usec: u64,
    pub user_usec: u64,
    pub system_usec: u64,
    pub nr_periods: Option<u64>,
    pub nr_throttled: Option<u64>,
    pub throttled_usec: Option<u64>,
}

/// One line of `io.stat`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IoStat {
    pub device: String,
    pub rbytes: u64,
    pub wbytes: u64,
    pub rios: u64,
    pub wios: u64,
}

/// Answer to [`Request::DiskUsage`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskUsage {
    pub account: AccountName,
    pub path: String,
    /// Sum of file sizes.
    pub apparent_bytes: u64,
    /// Sum of allocated blocks × 512.
    pub allocated_bytes: u64,
    pub files: u64,
    pub dirs: u64,
}

/// `cpu.max`: quota (None = `max`, unlimited) per period, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuMax {
    pub quota_us: Option<u64>,
    pub period_us: u64,
}

impl fmt::Display for CpuMax {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.quota_us {
            Some(q) => write!(f, "{q} {}", self.period_us),
            None => write!(f, "max {}", self.period_us),
        }
    }
}

impl FromStr for CpuMax {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut parts = s.split_whitespace();
        let q = parts.next().ok_or("cpu.max is empty")?;
        let period_us = match parts.next() {
            Some(p) => p
                .parse::<u64>()
                .map_err(|_| format!("cpu.max period {p:?} is not a number"))?,
            None => 100_000,
        };
        if parts.next().is_some() {
            return Err(format!("cpu.max {s:?}: expected \"QUOTA PERIOD\""));
        }
        if !(1_000..=1_000_000).contains(&period_us) {
            return Err(format!(
                "cpu.max period {period_us} out of range 1000..=1000000"
            ));
        }
        let quota_us = if q == "max" {
            None
        } else {
            let q: u64 = q
                .parse()
                .map_err(|_| format!("cpu.max quota {q:?} is not a number or \"max\""))?;
            if q < 1_000 {
                return Err(format!("cpu.max quota {q} below 1000"));
            }
            Some(q)
        };
        Ok(CpuMax {
            quota_us,
            period_us,
        })
    }
}

impl Serialize for CpuMax {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// `cpu.max` as sent: the file's syntax, or its two fields.
#[derive(Deserialize)]
#[serde(untagged)]
enum CpuMaxWire {
    Text(String),
    Fields {
        quota_us: Option<u64>,
        #[serde(default = "default_period_us")]
        period_us: u64,
    },
}

fn default_period_us() -> u64 {
    100_000
}

/// Accepts `"50000 100000"` / `"max 100000"` or
/// `{"quota_us": 50000, "period_us": 100000}` (`quota_us` null = max), and
/// checks the ranges either way. Always serialized as the string.
impl<'de> Deserialize<'de> for CpuMax {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = match CpuMaxWire::deserialize(d)? {
            CpuMaxWire::Text(s) => s,
            CpuMaxWire::Fields {
                quota_us: Some(q),
                period_us,
            } => format!("{q} {period_us}"),
            CpuMaxWire::Fields {
                quota_us: None,
                period_us,
            } => format!("max {period_us}"),
        };
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A full set of limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// `cpu.max`, e.g. `"50000 100000"` (50 % of a core).
    #[serde(default = "default_cpu_max")]
    pub cpu_max: CpuMax,
    /// `memory.max` in bytes.
    #[serde(default = "default_memory_max")]
    pub memory_max: u64,
    /// `io.max` rbps (bytes/s) on the home device.
    #[serde(default = "default_io_bps")]
    pub io_rbps: u64,
    /// `io.max` wbps (bytes/s) on the home device.
    #[serde(default = "default_io_bps")]
    pub io_wbps: u64,
    /// `pids.max`.
    #[serde(default = "default_pids_max")]
    pub pids_max: u64,
}

fn default_cpu_max() -> CpuMax {
    DEFAULT_CPU_MAX
}
fn default_memory_max() -> u64 {
    DEFAULT_MEMORY_MAX
}
fn default_io_bps() -> u64 {
    DEFAULT_IO_BPS
}
fn default_pids_max() -> u64 {
    DEFAULT_PIDS_MAX
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            cpu_max: DEFAULT_CPU_MAX,
            memory_max: DEFAULT_MEMORY_MAX,
            io_rbps: DEFAULT_IO_BPS,
            io_wbps: DEFAULT_IO_BPS,
            pids_max: DEFAULT_PIDS_MAX,
        }
    }
}

impl Limits {
    /// Refuses values that make no sense (zero memory, zero pids, ...).
    pub fn validate(&self) -> Result<(), String> {
        if self.memory_max < 4096 * 16 {
            return Err(format!("memory_max {} is below 64 KiB", self.memory_max));
        }
        if self.pids_max == 0 {
            return Err("pids_max must be at least 1".into());
        }
        if self.io_rbps == 0 || self.io_wbps == 0 {
            return Err("io_rbps/io_wbps must be at least 1".into());
        }
        Ok(())
    }

    /// These limits with `patch` applied.
    pub fn patched(&self, patch: &LimitsPatch) -> Limits {
        Limits {
            cpu_max: patch.cpu_max.unwrap_or(self.cpu_max),
            memory_max: patch.memory_max.unwrap_or(self.memory_max),
            io_rbps: patch.io_rbps.unwrap_or(self.io_rbps),
            io_wbps: patch.io_wbps.unwrap_or(self.io_wbps),
            pids_max: patch.pids_max.unwrap_or(self.pids_max),
        }
    }
}

/// Per-request overrides of the configured default limits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsPatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_max: Option<CpuMax>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_max: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io_rbps: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io_wbps: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids_max: Option<u64>,
}

/// A request line that could not be turned into a [`Request`]: the error
/// answer to send, with the `id` if one could be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectedLine {
    pub id: Option<u64>,
    pub error: WireError,
}

fn reject(id: Option<u64>, code: ErrorCode, message: impl Into<String>) -> RejectedLine {
    RejectedLine {
        id,
        error: WireError {
            code,
            message: message.into(),
        },
    }
}

/// Parses one request line, classifying every failure precisely.
pub fn parse_request_line(line: &[u8]) -> Result<(Option<u64>, Request), RejectedLine> {
    let value: Value = serde_json::from_slice(line)
        .map_err(|e| reject(None, ErrorCode::Malformed, format!("not a JSON value: {e}")))?;
    let Value::Object(mut obj) = value else {
        return Err(reject(
            None,
            ErrorCode::Malformed,
            "a request must be a JSON object",
        ));
    };
    let id = match obj.remove("id") {
        None | Some(Value::Null) => None,
        Some(v) => Some(v.as_u64().ok_or_else(|| {
            reject(
                None,
                ErrorCode::Malformed,
                "\"id\" must be a non-negative integer",
            )
        })?),
    };
    match obj.remove("v") {
        None => {
            return Err(reject(
                id,
                ErrorCode::UnsupportedVersion,
                format!(
                    "missing protocol version field \"v\" (this agent speaks v{PROTOCOL_VERSION})"
                ),
            ))
        }
        Some(v) if v.as_u64() == Some(u64::from(PROTOCOL_VERSION)) => {}
        Some(v) => {
            return Err(reject(
                id,
                ErrorCode::UnsupportedVersion,
                format!(
                    "protocol version {v} is not supported (this agent speaks v{PROTOCOL_VERSION})"
                ),
            ))
        }
    }
    let op = match obj.get("op") {
        Some(Value::String(op)) => op.clone(),
        Some(_) => {
            return Err(reject(id, ErrorCode::Malformed, "\"op\" must be a string"));
        }
        None => return Err(reject(id, ErrorCode::Malformed, "missing \"op\" field")),
    };
    if !KNOWN_OPS.contains(&op.as_str()) {
        return Err(reject(
            id,
            ErrorCode::UnknownRequest,
            format!("unknown op {op:?}; known: {}", KNOWN_OPS.join(", ")),
        ));
    }
    if let Some(account) = obj.get("account").filter(|a| !a.is_null()) {
        let Some(name) = account.as_str() else {
            return Err(reject(
                id,
                ErrorCode::InvalidAccount,
                "\"account\" must be a string",
            ));
        };
        if let Err(e) = AccountName::parse(name) {
            return Err(reject(
                id,
                ErrorCode::InvalidAccount,
                format!("account {name:?}: {e}"),
            ));
        }
    }
    let request: Request = serde_json::from_value(Value::Object(obj)).map_err(|e| {
        reject(
            id,
            ErrorCode::InvalidRequest,
            format!("bad {op:?} request: {e}"),
        )
    })?;
    if let Request::ApplyLimits { limits, .. } = &request {
        Limits::default()
            .patched(limits)
            .validate()
            .map_err(|e| reject(id, ErrorCode::InvalidRequest, e))?;
    }
    if let Request::WriteMailPolicy { policy, .. } = &request {
        policy
            .validate()
            .map_err(|e| reject(id, ErrorCode::InvalidRequest, format!("policy: {e}")))?;
    }
    Ok((id, request))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acct(s: &str) -> AccountName {
        AccountName::parse(s).unwrap()
    }

    #[test]
    fn request_round_trips_through_envelope() {
        let reqs = [
            Request::Ping,
            Request::ApplyLimits {
                account: acct("alice"),
                limits: LimitsPatch {
                    pids_max: Some(20),
                    cpu_max: Some("max 100000".parse().unwrap()),
                    ..Default::default()
                },
            },
            Request::Freeze {
                account: acct("bob"),
            },
            Request::PrepareHome {
                account: acct("c"),
                uid: 1001,
                gid: 1002,
            },
            Request::CreateUser {
                account: acct("d"),
                home_layout: true,
            },
            Request::SetPassword {
                account: acct("d"),
                password: Password::parse("Pw-1234567890").unwrap(),
            },
            Request::BuildHome {
                account: acct("d"),
                uid: 1001,
                gid: 1001,
                domain: Domain::parse("example.com").unwrap(),
            },
            Request::WriteZone {
                account: acct("d"),
                domain: Domain::parse("example.com").unwrap(),
                ipv4: Ipv4Addr::new(192, 0, 2, 1),
            },
            Request::RemoveZone {
                domain: Domain::parse("example.com").unwrap(),
                account: None,
            },
            Request::WriteSecurity {
                account: acct("d"),
                profile: SecurityProfile::Moderate,
                cron: Some(false),
                settings: Some(crate::hostfiles::SecuritySettings {
                    php_disable_functions: Some(vec!["exec".into()]),
                    home_mode: Some("0711".into()),
                    mail_relay: Some(crate::hostfiles::MailRelay::Local),
                    ..Default::default()
                }),
            },
            Request::SetSuspended {
                account: acct("d"),
                suspended: true,
            },
            Request::SetQuota {
                account: acct("d"),
                disk_mb: None,
            },
            Request::BackupHome {
                account: acct("d"),
                manifest: Some(serde_json::json!({"files": 1})),
            },
            Request::RemoveHome { account: acct("d") },
            Request::CreateMailbox {
                account: acct("d"),
                domain: Domain::parse("example.com").unwrap(),
                mailbox: Mailbox::parse("info").unwrap(),
                password: Password::parse("Mail-Pw-123").unwrap(),
            },
            Request::DeleteMailbox {
                account: acct("d"),
                domain: Domain::parse("example.com").unwrap(),
                mailbox: Mailbox::parse("info").unwrap(),
            },
            Request::ListMailboxes {
                account: acct("d"),
                domain: Domain::parse("example.com").unwrap(),
            },
            Request::UnpackArchive {
                account: acct("d"),
                restore_id: "01J0".into(),
                archive: "/srv/cpmove-d.tar.gz".into(),
                max_bytes: Some(1 << 30),
                source_home: Some("/home/d".into()),
                uid: Some(1001),
                gid: Some(1001),
                scan_first: true,
            },
            Request::UnpackStatus {
                restore_id: "01J0".into(),
            },
            Request::CancelUnpack {
                restore_id: "01J0".into(),
            },
            Request::InstallHome {
                account: acct("d"),
                restore_id: "01J0".into(),
                uid: None,
                gid: None,
            },
            Request::RevertHome {
                account: acct("d"),
                restore_id: "01J0".into(),
            },
            Request::DiscardRestore {
                restore_id: "01J0".into(),
            },
            Request::WriteMailPolicy {
                account: acct("d"),
                policy: crate::mailpolicy::MailPolicy {
                    per_hour: 2,
                    burst_per_15min: 1,
                    ..Default::default()
                },
                domains: vec![Domain::parse("example.com").unwrap()],
            },
            Request::RemoveMailPolicy { account: acct("d") },
        ];
        for op in KNOWN_OPS {
            assert!(
                reqs.iter().any(|r| r.op() == *op)
                    || [
                        "thaw",
                        "kill",
                        "remove",
                        "usage",
                        "disk_usage",
                        "lock_user",
                        "unlock_user",
                        "delete_user"
                    ]
                    .contains(op),
                "{op} has no round-trip case"
            );
        }
        for (i, r) in reqs.iter().enumerate() {
            let line = serde_json::to_vec(&RequestEnvelope {
                v: PROTOCOL_VERSION,
                id: Some(i as u64),
                request: r,
            })
            .unwrap();
            let (id, back) = parse_request_line(&line).unwrap();
            assert_eq!(id, Some(i as u64));
            assert_eq!(&back, r);
        }
    }

    #[test]
    fn errors_are_classified() {
        let code = |l: &str| parse_request_line(l.as_bytes()).unwrap_err().error.code;
        assert_eq!(code("not json"), ErrorCode::Malformed);
        assert_eq!(code("[1,2]"), ErrorCode::Malformed);
        assert_eq!(code(r#"{"v":1,"id":-1,"op":"ping"}"#), ErrorCode::Malformed);
        assert_eq!(code(r#"{"v":1}"#), ErrorCode::Malformed);
        assert_eq!(code(r#"{"op":"ping"}"#), ErrorCode::UnsupportedVersion);
        assert_eq!(
            code(r#"{"v":2,"op":"ping"}"#),
            ErrorCode::UnsupportedVersion
        );
        assert_eq!(
            code(r#"{"v":1,"op":"rm -rf /"}"#),
            ErrorCode::UnknownRequest
        );
        assert_eq!(
            code(r#"{"v":1,"op":"freeze","account":"../x"}"#),
            ErrorCode::InvalidAccount
        );
        assert_eq!(
            code(r#"{"v":1,"op":"freeze","account":5}"#),
            ErrorCode::InvalidAccount
        );
        assert_eq!(code(r#"{"v":1,"op":"freeze"}"#), ErrorCode::InvalidRequest);
        assert_eq!(
            code(r#"{"v":1,"op":"freeze","account":"a","extra":1}"#),
            ErrorCode::InvalidRequest
        );
        assert_eq!(
            code(r#"{"v":1,"op":"apply_limits","account":"a","limits":{"pids_max":0}}"#),
            ErrorCode::InvalidRequest
        );
        assert_eq!(
            code(r#"{"v":1,"op":"apply_limits","account":"a","limits":{"cpu_max":"1 2 3"}}"#),
            ErrorCode::InvalidRequest
        );
        assert_eq!(
            code(r#"{"v":1,"op":"write_zone","account":"a","domain":"a..b","ipv4":"192.0.2.1"}"#),
            ErrorCode::InvalidRequest
        );
        assert_eq!(
            code(r#"{"v":1,"op":"remove_zone","domain":"a.com","account":"../x"}"#),
            ErrorCode::InvalidAccount
        );
        assert_eq!(
            code(r#"{"v":1,"op":"write_security","account":"a","profile":"lax"}"#),
            ErrorCode::InvalidRequest
        );
        assert_eq!(
            code(
                r#"{"v":1,"op":"write_security","account":"a","profile":"strict","settings":{"password_min_length":8}}"#
            ),
            ErrorCode::InvalidRequest
        );
        assert_eq!(
            code(r#"{"v":1,"op":"write_mail_policy","account":"a","policy":{"per_hour":0}}"#),
            ErrorCode::InvalidRequest
        );
        assert_eq!(
            code(r#"{"v":1,"op":"write_mail_policy","account":"a","policy":{"per_day":5}}"#),
            ErrorCode::InvalidRequest
        );
        // a refused password is not echoed
        let rej = parse_request_line(
            br#"{"v":1,"op":"set_password","account":"a","password":"se:cret"}"#,
        )
        .unwrap_err();
        assert_eq!(rej.error.code, ErrorCode::InvalidRequest);
        assert!(
            !rej.error.message.contains("se:cret"),
            "{}",
            rej.error.message
        );
        assert!(format!(
            "{:?}",
            parse_request_line(
                br#"{"v":1,"op":"set_password","account":"a","password":"Visible-Not"}"#
            )
            .unwrap()
        )
        .contains("***"));
        assert_eq!(
            code(
                r#"{"v":1,"op":"create_mailbox","account":"a","domain":"a.com","mailbox":".x","password":"Pw-123456"}"#
            ),
            ErrorCode::InvalidRequest
        );
        let rej = parse_request_line(
            br#"{"v":1,"op":"create_mailbox","account":"a","domain":"a.com","mailbox":"x","password":"mail:secret"}"#,
        )
        .unwrap_err();
        assert_eq!(rej.error.code, ErrorCode::InvalidRequest);
        assert!(!rej.error.message.contains("mail:secret"));
        // the id survives into the error when it could be read
        let rej = parse_request_line(br#"{"v":1,"id":9,"op":"nope"}"#).unwrap_err();
        assert_eq!(rej.id, Some(9));
    }

    #[test]
    fn response_wire_shape() {
        let r = Response::error(Some(3), ErrorCode::InvalidAccount, "bad");
        let line = r.to_line();
        assert!(line.ends_with('\n'));
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["v"], 1);
        assert_eq!(v["id"], 3);
        assert_eq!(v["error"]["code"], "invalid_account");
        let back: Response = serde_json::from_str(&line).unwrap();
        assert_eq!(back, r);
        let ok = Response::ok(None, Reply::Frozen { account: acct("a") });
        let v: Value = serde_json::from_str(&ok.to_line()).unwrap();
        assert_eq!(v["ok"]["type"], "frozen");
        assert_eq!(v["ok"]["account"], "a");
    }

    #[test]
    fn cpu_max_parses_and_prints() {
        let c: CpuMax = "50000 100000".parse().unwrap();
        assert_eq!(c, DEFAULT_CPU_MAX);
        assert_eq!(c.to_string(), "50000 100000");
        assert_eq!("max".parse::<CpuMax>().unwrap().to_string(), "max 100000");
        assert!("10 100000".parse::<CpuMax>().is_err());
        assert!("5000 10".parse::<CpuMax>().is_err());
        assert!("abc 100000".parse::<CpuMax>().is_err());
        let c: CpuMax = serde_json::from_str(r#"{"quota_us":50000,"period_us":100000}"#).unwrap();
        assert_eq!(c, DEFAULT_CPU_MAX);
        let c: CpuMax = serde_json::from_str(r#"{"quota_us":null}"#).unwrap();
        assert_eq!(c.to_string(), "max 100000");
        assert!(serde_json::from_str::<CpuMax>(r#"{"quota_us":5,"period_us":100000}"#).is_err());
        assert_eq!(serde_json::to_string(&c).unwrap(), "\"max 100000\"");
    }
}
