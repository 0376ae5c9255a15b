//! Stage 1: is this tarball a release we signed, and which version is it?
//!
//! There is deliberately no "signature missing, carry on" path: no key configured, no
//! `.minisig`, a key id that is not ours, a signature (or trusted comment) that does not verify:
//! each is refused before anything is written. The trusted comment is covered by the global
//! signature, which `minisign-verify` checks, so its `version:` can be believed.

use sha2::{Digest, Sha256};
use std::cmp::Ordering;
use std::path::Path;

/// A verified release.
#[derive(Clone, Debug)]
pub struct Verified {
    /// The version its trusted comment names.
    pub version: String,
    /// The trusted comment as signed.
    pub trusted_comment: String,
    /// sha256 of the tarball (hex).
    pub sha256: String,
    /// Its size in bytes.
    pub bytes: u64,
    /// The tarball.
    pub tarball: std::path::PathBuf,
}

/// Why verify refused.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// No public key configured.
    #[error("upgrades are off: set upgrade.public_key to the release signing key (base64, the second line of minisign.pub)")]
    NoKey,
    /// The configured key does not parse.
    #[error("upgrade.public_key is not a minisign public key")]
    BadKey,
    /// A file cannot be read.
    #[error("cannot read {0}: {1}")]
    Read(String, String),
    /// The signature file does not parse.
    #[error("{0} is not a minisign signature: {1}")]
    BadSignatureFile(String, String),
    /// The signature does not verify with our key.
    #[error("the signature of {0} does not verify with upgrade.public_key ({1}): the tarball was changed or signed with another key")]
    Signature(String, String),
    /// The trusted comment names no version (or another file).
    #[error("{0}")]
    Comment(String),
    /// Older than what runs.
    #[error("{to} is older than the running {from}: a downgrade needs force")]
    Downgrade {
        /// Running.
        from: String,
        /// Offered.
        to: String,
    },
    /// The same version.
    #[error("{0} is the running version already: reinstalling needs force")]
    Same(String),
}

impl VerifyError {
    /// The failing check's name (audit records).
    pub fn check(&self) -> &'static str {
        match self {
            VerifyError::NoKey | VerifyError::BadKey => "public_key",
            VerifyError::Read(..) => "read",
            VerifyError::BadSignatureFile(..) | VerifyError::Signature(..) => "signature",
            VerifyError::Comment(_) => "trusted_comment",
            VerifyError::Downgrade { .. } | VerifyError::Same(_) => "version",
        }
    }
}

/// Verify `tarball` against `signature` with `public_key`, and its version against `running`.
pub fn verify(
    tarball: &Path,
    signature: &Path,
    public_key: &str,
    running: &str,
    force: bool,
) -> Result<Verified, VerifyError> {
    if public_key.trim().is_empty() {
        return Err(VerifyError::NoKey);
    }
    let pk = minisign_verify::PublicKey::from_base64(public_key.trim())
        .map_err(|_| VerifyError::BadKey)?;
    let sig_text = std::fs::read_to_string(signature)
        .map_err(|e| VerifyError::Read(signature.display().to_string(), e.to_string()))?;
    let sig = minisign_verify::Signature::decode(&sig_text).map_err(|e| {
        VerifyError::BadSignatureFile(signature.display().to_string(), e.to_string())
    })?;
    let bytes = std::fs::read(tarball)
        .map_err(|e| VerifyError::Read(tarball.display().to_string(), e.to_string()))?;
    // allow_legacy = false: only prehashed ("ED") signatures, minisign's default since 0.10.
    pk.verify(&bytes, &sig, false)
        .map_err(|e| VerifyError::Signature(tarball.display().to_string(), e.to_string()))?;
    let comment = sig.trusted_comment().to_string();
    let (version, file) = parse_trusted_comment(&comment).ok_or_else(|| {
        VerifyError::Comment(format!(
            "the trusted comment {comment:?} names no version: sign releases with -t \"version:X file:NAME\""
        ))
    })?;
    let name = tarball
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if let Some(f) = file {
        if f != name {
            return Err(VerifyError::Comment(format!(
                "the signature is for file {f:?}, not {name:?}"
            )));
        }
    }
    match compare_versions(&version, running) {
        Some(Ordering::Less) if !force => {
            return Err(VerifyError::Downgrade {
                from: running.to_string(),
                to: version,
            })
        }
        Some(Ordering::Equal) if !force => return Err(VerifyError::Same(version)),
        None => {
            return Err(VerifyError::Comment(format!(
                "version {version:?} is not a version like 1.4.2"
            )))
        }
        _ => {}
    }
    Ok(Verified {
        version,
        trusted_comment: comment,
        sha256: hex::encode(Sha256::digest(&bytes)),
        bytes: bytes.len() as u64,
        tarball: tarball.to_path_buf(),
    })
}

/// `version:X` and `file:NAME` of a trusted comment (fields split by tabs or spaces).
pub fn parse_trusted_comment(c: &str) -> Option<(String, Option<String>)> {
    let mut version = None;
    let mut file = None;
    for f in c.split(['\t', ' ']) {
        if let Some(v) = f.strip_prefix("version:") {
            version = Some(v.to_string());
        } else if let Some(v) = f.strip_prefix("file:") {
            file = Some(v.to_string());
        }
    }
    version.filter(|v| !v.is_empty()).map(|v| (v, file))
}

/// Compare two versions `MAJOR.MINOR.PATCH[-PRE]` (a pre-release sorts before its release);
/// `None` when either is not one.
pub fn compare_versions(a: &str, b: &str) -> Option<Ordering> {
    fn parse(v: &str) -> Option<(Vec<u64>, Option<&str>)> {
        let v = v.strip_prefix('v').unwrap_or(v);
        let (core, pre) = match v.split_once('-') {
            Some((c, p)) => (c, Some(p)),
            None => (v, None),
        };
        let nums: Option<Vec<u64>> = core.split('.').map(|p| p.parse().ok()).collect();
        let nums = nums?;
        (!nums.is_empty() && nums.len() <= 4).then_some((nums, pre))
    }
    let (an, ap) = parse(a)?;
    let (bn, bp) = parse(b)?;
    let width = an.len().max(bn.len());
    let pad = |mut v: Vec<u64>| {
        v.resize(width, 0);
        v
    };
    Some(pad(an).cmp(&pad(bn)).then(match (ap, bp) {
        (None, None) => Ordering::Equal,
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (Some(x), Some(y)) => x.cmp(y),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare_numerically() {
        assert_eq!(compare_versions("0.10.0", "0.9.9"), Some(Ordering::Greater));
        assert_eq!(compare_versions("1.0", "1.0.0"), Some(Ordering::Equal));
        assert_eq!(compare_versions("1.0.0-rc1", "1.0.0"), Some(Ordering::Less));
        assert_eq!(compare_versions("v2.0.0", "1.9.0"), Some(Ordering::Greater));
        assert_eq!(compare_versions("x", "1.0.0"), None);
    }

    #[test]
    fn trusted_comments_name_version_and_file() {
        assert_eq!(
            parse_trusted_comment("timestamp:1\tversion:1.2.0\tfile:npanel-1.2.0.tar.gz"),
            Some(("1.2.0".into(), Some("npanel-1.2.0.tar.gz".into())))
        );
        assert_eq!(
            parse_trusted_comment("version:1.2.0"),
            Some(("1.2.0".into(), None))
        );
        assert_eq!(parse_trusted_comment("timestamp:1\tfile:x"), None);
    }

    #[test]
    fn no_key_is_refused_before_reading_anything() {
        let e = verify(
            Path::new("/nonexistent.tar.gz"),
            Path::new("/nonexistent.tar.gz.minisig"),
            "",
            "0.1.0",
            false,
        )
        .unwrap_err();
        assert!(matches!(e, VerifyError::NoKey), "{e}");
        assert!(e.to_string().contains("upgrade.public_key"));
    }
}
