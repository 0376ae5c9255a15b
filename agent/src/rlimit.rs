//! The rlimit fallback for hosts where cgroup v2 controllers are missing.
//!
//! rlimits are per process (RLIMIT_AS, RLIMIT_CPU) or per uid (RLIMIT_NPROC),
//! so they are a weaker stand-in: they only bind processes started through
//! `npanel-agent exec`, which applies them (see [`ExecSpec`]) before it
//! `exec`s the real command. Root is exempt from RLIMIT_NPROC, so the command
//! should run as the account's uid (`--uid/--gid`). I/O bandwidth has no
//! rlimit at all. The [`crate::protocol::Capabilities`] say which limit is
//! enforced how.

use std::convert::Infallible;
use std::ffi::CString;
use std::path::PathBuf;

use nix::sys::resource::{setrlimit, Resource};
use nix::unistd::{execvp, setgid, setgroups, setuid, Gid, Uid};

use crate::config::Fallback;
use crate::error::AgentError;
use crate::protocol::{AppliedLimit, Capabilities, Enforcement, LimitKind, Limits};

/// The rlimits that stand in for missing controllers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RlimitPlan {
    /// RLIMIT_NPROC (stands in for `pids.max`).
    pub nproc: Option<u64>,
    /// RLIMIT_AS in bytes (stands in for `memory.max`).
    pub address_space: Option<u64>,
    /// RLIMIT_CPU in seconds (stands in for `cpu.max`).
    pub cpu_seconds: Option<u64>,
}

impl RlimitPlan {
    /// The rlimits for every limit whose controller is missing.
    pub fn for_capabilities(caps: &Capabilities, limits: &Limits, fallback: &Fallback) -> Self {
        let rl = |k| caps.enforcement(k) == Enforcement::Rlimit;
        RlimitPlan {
            nproc: rl(LimitKind::Pids).then_some(limits.pids_max),
            address_space: rl(LimitKind::Memory).then_some(limits.memory_max),
            cpu_seconds: rl(LimitKind::Cpu).then_some(fallback.cpu_seconds),
        }
    }

    pub fn is_empty(&self) -> bool {
        *self == RlimitPlan::default()
    }

    /// Report entries for the limits not enforced by a cgroup.
    pub fn as_applied(&self, caps: &Capabilities) -> Vec<AppliedLimit> {
        LimitKind::ALL
            .iter()
            .filter(|k| caps.enforcement(**k) != Enforcement::Cgroup)
            .map(|&kind| {
                let detail = caps
                    .limits
                    .iter()
                    .find(|l| l.kind == kind)
                    .map(|l| l.detail.clone());
                let (enforcement, value) = match kind {
                    LimitKind::Pids if self.nproc.is_some() => (
                        Enforcement::Rlimit,
                        format!("RLIMIT_NPROC={}", self.nproc.unwrap_or_default()),
                    ),
                    LimitKind::Memory if self.address_space.is_some() => (
                        Enforcement::Rlimit,
                        format!("RLIMIT_AS={}", self.address_space.unwrap_or_default()),
                    ),
                    LimitKind::Cpu if self.cpu_seconds.is_some() => (
                        Enforcement::Rlimit,
                        format!("RLIMIT_CPU={}", self.cpu_seconds.unwrap_or_default()),
                    ),
                    _ => (Enforcement::None, "not enforced".to_string()),
                };
                AppliedLimit {
                    kind,
                    enforcement,
                    value,
                    read_back: None,
                    note: detail,
                }
            })
            .collect()
    }

    /// Sets these rlimits (soft = hard) on the calling process; they are
    /// inherited by everything it starts or `exec`s.
    pub fn apply_to_current_process(&self) -> Result<(), AgentError> {
        let set = |r: Resource, v: u64, name: &str| {
            setrlimit(r, v, v)
                .map_err(|e| AgentError::Internal(format!("setrlimit({name}, {v}): {e}")))
        };
        if let Some(v) = self.nproc {
            set(Resource::RLIMIT_NPROC, v, "RLIMIT_NPROC")?;
        }
        if let Some(v) = self.address_space {
            set(Resource::RLIMIT_AS, v, "RLIMIT_AS")?;
        }
        if let Some(v) = self.cpu_seconds {
            set(Resource::RLIMIT_CPU, v, "RLIMIT_CPU")?;
        }
        Ok(())
    }
}

/// What `npanel-agent exec` does: join a cgroup, set rlimits, drop to a
/// uid/gid, then `exec` a command (an argv, never a shell string).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecSpec {
    /// Cgroup directory to join (its `cgroup.procs` gets our pid).
    pub cgroup: Option<PathBuf>,
    pub rlimits: RlimitPlan,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub argv: Vec<String>,
}

impl ExecSpec {
    /// Command-line arguments for `npanel-agent exec` (after `exec`).
    pub fn to_args(&self) -> Vec<String> {
        let mut a = Vec::new();
        let mut opt = |k: &str, v: Option<String>| {
            if let Some(v) = v {
                a.push(k.to_string());
                a.push(v);
            }
        };
        opt(
            "--cgroup",
            self.cgroup.as_ref().map(|p| p.display().to_string()),
        );
        opt("--nproc", self.rlimits.nproc.map(|v| v.to_string()));
        opt("--as", self.rlimits.address_space.map(|v| v.to_string()));
        opt("--cpu", self.rlimits.cpu_seconds.map(|v| v.to_string()));
        opt("--uid", self.uid.map(|v| v.to_string()));
        opt("--gid", self.gid.map(|v| v.to_string()));
        a.push("--".into());
        a.extend(self.argv.iter().cloned());
        a
    }

    /// Parses what [`ExecSpec::to_args`] produced.
    pub fn parse_args(args: &[String]) -> Result<Self, AgentError> {
        let mut spec = ExecSpec::default();
        let mut it = args.iter();
        let num = |k: &str, v: Option<&String>| -> Result<u64, AgentError> {
            v.ok_or_else(|| AgentError::InvalidRequest(format!("{k} needs a value")))?
                .parse()
                .map_err(|_| AgentError::InvalidRequest(format!("{k} needs a number")))
        };
        while let Some(a) = it.next() {
            match a.as_str() {
                "--cgroup" => {
                    spec.cgroup = Some(PathBuf::from(it.next().ok_or_else(|| {
                        AgentError::InvalidRequest("--cgroup needs a value".into())
                    })?))
                }
                "--nproc" => spec.rlimits.nproc = Some(num(a, it.next())?),
                "--as" => spec.rlimits.address_space = Some(num(a, it.next())?),
                "--cpu" => spec.rlimits.cpu_seconds = Some(num(a, it.next())?),
                "--uid" => spec.uid = Some(id_arg(a, it.next())?),
                "--gid" => spec.gid = Some(id_arg(a, it.next())?),
                "--" => {
                    spec.argv = it.by_ref().cloned().collect();
                }
                other => {
                    return Err(AgentError::InvalidRequest(format!(
                        "unknown exec option {other:?}"
                    )))
                }
            }
        }
        if spec.argv.is_empty() {
            return Err(AgentError::InvalidRequest(
                "exec needs a command after --".into(),
            ));
        }
        if spec.uid.is_some() != spec.gid.is_some() {
            // --uid alone would keep gid 0 and root's supplementary groups.
            return Err(AgentError::InvalidRequest(
                "--uid and --gid go together".into(),
            ));
        }
        Ok(spec)
    }

    /// Joins the cgroup, sets the rlimits, drops privileges and replaces the
    /// current process with the command. Only returns on failure.
    pub fn exec(&self) -> Result<Infallible, AgentError> {
        if let Some(dir) = &self.cgroup {
            let procs = dir.join("cgroup.procs");
            std::fs::write(&procs, std::process::id().to_string())
                .map_err(|e| AgentError::io(&procs, e))?;
        }
        self.rlimits.apply_to_current_process()?;
        if let Some(gid) = self.gid {
            let g = Gid::from_raw(gid);
            setgroups(&[g]).map_err(|e| AgentError::Internal(format!("setgroups: {e}")))?;
            setgid(g).map_err(|e| AgentError::Internal(format!("setgid({gid}): {e}")))?;
        }
        if let Some(uid) = self.uid {
            setuid(Uid::from_raw(uid))
                .map_err(|e| AgentError::Internal(format!("setuid({uid}): {e}")))?;
        }
        let argv: Vec<CString> = self
            .argv
            .iter()
            .map(|a| CString::new(a.as_bytes()))
            .collect::<Result<_, _>>()
            .map_err(|_| AgentError::InvalidRequest("argument contains a NUL byte".into()))?;
        // Rust's runtime ignores SIGPIPE; the command gets the default back.
        let _ = unsafe_free_sigpipe_default();
        let err = if self.uid.is_some() {
            // The account's command starts with a clean environment, never the agent's.
            let env: Vec<CString> = [
                "PATH=/usr/local/bin:/usr/bin:/bin".to_string(),
                format!(
                    "LANG={}",
                    std::env::var("LANG").unwrap_or_else(|_| "C.UTF-8".into())
                ),
            ]
            .into_iter()
            .filter_map(|v| CString::new(v).ok())
            .collect();
            nix::unistd::execvpe(&argv[0], &argv, &env).unwrap_err()
        } else {
            execvp(&argv[0], &argv).unwrap_err()
        };
        Err(AgentError::Internal(format!(
            "exec {:?}: {err}",
            self.argv[0]
        )))
    }
}

/// Parse a uid/gid: a u32 that is neither 0 (root) nor u32::MAX (-1, "unchanged").
fn id_arg(flag: &str, v: Option<&String>) -> Result<u32, AgentError> {
    let v = v.ok_or_else(|| AgentError::InvalidRequest(format!("{flag} needs a value")))?;
    match v.parse::<u32>() {
        Ok(n) if n != 0 && n != u32::MAX => Ok(n),
        _ => Err(AgentError::InvalidRequest(format!(
            "{flag} {v:?} is not a non-root user or group id"
        ))),
    }
}

/// Reset SIGPIPE to its default disposition before exec.
fn unsafe_free_sigpipe_default() -> nix::Result<()> {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let dfl = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
    // SAFETY: installing SIG_DFL runs no code of ours in signal context.
    #[allow(unsafe_code)]
    unsafe { sigaction(Signal::SIGPIPE, &dfl) }.map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_args_round_trip() {
        let spec = ExecSpec {
            cgroup: Some("/sys/fs/cgroup/x/alice".into()),
            rlimits: RlimitPlan {
                nproc: Some(20),
                address_space: None,
                cpu_seconds: Some(5),
            },
            uid: Some(61000),
            gid: Some(61000),
            argv: vec!["sh".into(), "-c".into(), "echo hi".into()],
        };
        assert_eq!(ExecSpec::parse_args(&spec.to_args()).unwrap(), spec);
        assert!(ExecSpec::parse_args(&["--nproc".into(), "x".into()]).is_err());
        assert!(ExecSpec::parse_args(&["--".into()]).is_err());
        assert!(ExecSpec::parse_args(&["--bogus".into()]).is_err());
    }
}
