//! Keyset cursors: opaque to clients, checked on the way back in.
//!
//! A cursor carries the last key of a page (`"<scope>:<key>"`) plus a short checksum, base64url.
//! A cursor that was edited, truncated or belongs to another list is refused with a clear error
//! rather than silently restarting or skipping. It is not a security boundary: every list is
//! filtered by the caller's place in the hierarchy whatever the cursor says.

use crate::{Result, StoreError};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use sha2::{Digest, Sha256};

/// A decoded cursor: the last key of the previous page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cursor(pub String);

fn sum(scope: &str, key: &str) -> String {
    let d = Sha256::digest(format!("npanel-cursor|{scope}|{key}").as_bytes());
    hex::encode(&d[..6])
}

impl Cursor {
    /// Encode `key` for the list called `scope`.
    pub fn encode(scope: &str, key: &str) -> String {
        URL_SAFE_NO_PAD.encode(format!("{scope}:{key}:{}", sum(scope, key)))
    }

    /// Decode a cursor handed back by a client for the list `scope`.
    pub fn decode(scope: &str, s: &str) -> Result<Cursor> {
        let bad = || {
            StoreError::Invalid(
                "the cursor is not valid for this list (it was changed or comes from another list); \
                 start again without a cursor"
                    .to_string(),
            )
        };
        if s.len() > 400 {
            return Err(bad());
        }
        let raw = URL_SAFE_NO_PAD.decode(s).map_err(|_| bad())?;
        let text = String::from_utf8(raw).map_err(|_| bad())?;
        let rest = text.strip_prefix(scope).and_then(|r| r.strip_prefix(':'));
        let (key, check) = rest.and_then(|r| r.rsplit_once(':')).ok_or_else(bad)?;
        if check != sum(scope, key) {
            return Err(bad());
        }
        Ok(Cursor(key.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_tamper() {
        let c = Cursor::encode("jobs", "01J0000000000000000000000A");
        assert_eq!(
            Cursor::decode("jobs", &c).unwrap().0,
            "01J0000000000000000000000A"
        );
        assert!(Cursor::decode("audit", &c).is_err());
        let forged = URL_SAFE_NO_PAD.encode("jobs:01J0000000000000000000000B:000000000000");
        assert!(Cursor::decode("jobs", &forged).is_err());
        assert!(Cursor::decode("jobs", "!!!").is_err());
        let mut t = c.clone();
        t.pop();
        assert!(Cursor::decode("jobs", &t).is_err());
    }
}
