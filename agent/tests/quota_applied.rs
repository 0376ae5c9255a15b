//! Disk quotas on their applied path. This machine's kernel has no quota support
//! (`CONFIG_QUOTA` is off: an ext4 or XFS loop mount with `usrquota` is refused), so the two
//! things only such a kernel offers are given at the OS boundary: a mount table that says the
//! homes' filesystem has user quotas, and a stand-in `setquota` that records its arguments.
//! Everything else is real: a real system user (`npq…`, always removed), the uid checks, the
//! arguments, the exit status handling. As root only (SKIP line otherwise).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use agent::config::{AgentConfig, HostConfig};
use agent::protocol::QuotaStatus;
use agent::quota::apply_quota;
use agent::{AccountName, AgentError};
use common::{is_root, UserGuard};

fn stand_in(dir: &Path, exit: i32) -> (PathBuf, PathBuf) {
    let record = dir.join(format!("setquota-{exit}.args"));
    let script = dir.join(format!("setquota-{exit}"));
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho \"$@\" >> {}\n[ {exit} = 0 ] || echo 'setquota: Cannot set quota: No such process' >&2\nexit {exit}\n",
            record.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    (script, record)
}

#[test]
fn a_quota_is_applied_where_the_mount_has_user_quotas() {
    if !is_root() {
        common::skip(
            "a_quota_is_applied_where_the_mount_has_user_quotas",
            "needs root (useradd)",
        );
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    // Unique per process and moment (12 characters at most: npq + 9 digits).
    let name = format!(
        "npq{}",
        (std::process::id() as u64 * 1_000_003
            + std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .subsec_nanos() as u64)
            % 1_000_000_000
    );
    let _guard = UserGuard(name.clone());
    let ok = Command::new("useradd")
        .args(["-M", "-s", "/usr/sbin/nologin", &name])
        .status()
        .unwrap();
    assert!(ok.success(), "useradd {name}");
    let cfg = AgentConfig {
        host: HostConfig {
            root: tmp.path().to_path_buf(),
            system_users: true,
            nameservers: Vec::new(),
        },
        ..AgentConfig::default()
    };
    let homes = cfg.home_root();
    std::fs::create_dir_all(&homes).unwrap();
    let homes = std::fs::canonicalize(&homes).unwrap();
    let mounts = format!(
        "/dev/vda / ext4 rw,relatime 0 0\n/dev/vdb {} ext4 rw,relatime,usrjquota=aquota.user,jqfmt=vfsv1 0 0\n",
        homes.display()
    );
    let account = AccountName::parse(&name).unwrap();
    let (good, record) = stand_in(tmp.path(), 0);

    let r = apply_quota(&cfg, &account, Some(10), &mounts, Some(good.clone())).unwrap();
    assert_eq!(r.status, QuotaStatus::Applied, "{r:?}");
    assert_eq!(r.mount.as_deref(), Some(homes.to_str().unwrap()));
    // Unlimited is 0 0.
    apply_quota(&cfg, &account, None, &mounts, Some(good.clone())).unwrap();
    let args = std::fs::read_to_string(&record).unwrap();
    let lines: Vec<&str> = args.lines().collect();
    assert_eq!(
        lines,
        [
            format!("-u {name} 10240 10240 0 0 {}", homes.display()),
            format!("-u {name} 0 0 0 0 {}", homes.display())
        ]
    );

    // A setquota that fails is an error with its message; nothing is reported applied.
    let (bad, _) = stand_in(tmp.path(), 1);
    let err = apply_quota(&cfg, &account, Some(10), &mounts, Some(bad)).unwrap_err();
    assert!(
        matches!(err, AgentError::ToolFailed(ref m) if m.contains("No such process")),
        "{err}"
    );
    // A system account is refused, an unknown user is not found: setquota never runs.
    let daemon = AccountName::parse("daemon").unwrap();
    let err = apply_quota(&cfg, &daemon, Some(10), &mounts, Some(good.clone())).unwrap_err();
    assert!(matches!(err, AgentError::Busy(_)), "{err}");
    let ghost = AccountName::parse(&format!("{name}x")).unwrap();
    let err = apply_quota(&cfg, &ghost, Some(10), &mounts, Some(good.clone())).unwrap_err();
    assert!(matches!(err, AgentError::NotFound { .. }), "{err}");
    assert_eq!(std::fs::read_to_string(&record).unwrap().lines().count(), 2);

    // Without user quotas on the mount, or without setquota: skipped with the reason.
    let plain = format!("/dev/vdb {} ext4 rw,relatime 0 0\n", homes.display());
    let r = apply_quota(&cfg, &account, Some(10), &plain, Some(good)).unwrap();
    assert_eq!(r.status, QuotaStatus::Skipped);
    assert!(r.reason.unwrap().contains("without user quotas"));
    let r = apply_quota(&cfg, &account, Some(10), &mounts, None).unwrap();
    assert!(r.reason.unwrap().contains("setquota is not installed"));
}

/// The sweep's disk figures from the kernel's quota report, given (as above) a mount table
/// with user quotas and a stand-in `repquota` printing what the real one prints with `-O csv`.
#[test]
fn the_quota_report_gives_every_users_use() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = AgentConfig {
        host: HostConfig {
            root: tmp.path().to_path_buf(),
            system_users: true,
            nameservers: Vec::new(),
        },
        ..AgentConfig::default()
    };
    std::fs::create_dir_all(cfg.home_root()).unwrap();
    let homes = std::fs::canonicalize(cfg.home_root()).unwrap();
    let mounts = format!("/dev/vdb {} ext4 rw,usrquota 0 0\n", homes.display());
    let args = tmp.path().join("repquota.args");
    let script = tmp.path().join("repquota");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho \"$@\" > {}\ncat <<'EOF'\nUser,BlockStatus,FileStatus,BlockUsed,BlockSoftLimit,BlockHardLimit,BlockGrace,FileUsed,FileSoftLimit,FileHardLimit,FileGrace\nroot,ok,ok,4,0,0,,2,0,0,\nalice,+,ok,2048,1024,1024,6days,33,0,0,\nEOF\n",
            args.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let q = agent::quota::read_quota_usage(&cfg, &mounts, Some(script.clone())).unwrap();
    assert_eq!(q.status, QuotaStatus::Applied, "{q:?}");
    assert_eq!(q.users["alice"], (2048 * 1024, 33));
    assert_eq!(
        std::fs::read_to_string(&args).unwrap().trim(),
        format!("-u -O csv {}", homes.display())
    );
    // Without user quotas on the mount, or without repquota: skipped, so the sweep walks.
    let plain = format!("/dev/vdb {} ext4 rw 0 0\n", homes.display());
    let q = agent::quota::read_quota_usage(&cfg, &plain, Some(script)).unwrap();
    assert_eq!(q.status, QuotaStatus::Skipped);
    let q = agent::quota::read_quota_usage(&cfg, &mounts, None).unwrap();
    assert!(q.reason.unwrap().contains("repquota is not installed"));
}
