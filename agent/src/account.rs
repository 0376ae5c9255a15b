//! Validated account names.
//!
//! An account name becomes a directory name under the cgroup root and under the
//! home root, so it must never be able to name anything else: `..`, an empty
//! string, something with a `/`, a NUL or a leading dash. The rule is the
//! classic Unix user-name rule, `^[a-z][a-z0-9_-]{0,31}$`.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Maximum length of an account name (same as a Linux user name).
pub const MAX_ACCOUNT_NAME_LEN: usize = 32;

/// Why an account name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccountNameError {
    #[error("account name is empty")]
    Empty,
    #[error("account name is longer than {MAX_ACCOUNT_NAME_LEN} characters")]
    TooLong,
    #[error("account name must start with a lowercase letter a-z")]
    BadFirst,
    #[error("account name may only contain a-z, 0-9, '_' and '-' (found {0:?})")]
    BadChar(char),
}

/// An account name that matched `^[a-z][a-z0-9_-]{0,31}$`.
///
/// The only way to get one is [`AccountName::parse`] (or deserializing, which
/// calls it), so code holding an `AccountName` can join it onto a path safely.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct AccountName(String);

impl AccountName {
    /// Validates `name`.
    pub fn parse(name: &str) -> Result<Self, AccountNameError> {
        let mut chars = name.chars();
        let first = chars.next().ok_or(AccountNameError::Empty)?;
        if name.len() > MAX_ACCOUNT_NAME_LEN {
            return Err(AccountNameError::TooLong);
        }
        if !first.is_ascii_lowercase() {
            return Err(AccountNameError::BadFirst);
        }
        for c in chars {
            if !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-') {
                return Err(AccountNameError::BadChar(c));
            }
        }
        Ok(Self(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for AccountName {
    type Error = AccountNameError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<AccountName> for String {
    fn from(value: AccountName) -> Self {
        value.0
    }
}

impl fmt::Display for AccountName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<std::path::Path> for AccountName {
    fn as_ref(&self) -> &std::path::Path {
        std::path::Path::new(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_unix_style_names() {
        for ok in [
            "a",
            "alice",
            "bob_2",
            "x-y",
            "a234567890123456789012345678901",
        ] {
            assert_eq!(AccountName::parse(ok).unwrap().as_str(), ok);
        }
        let max = format!("a{}", "b".repeat(31));
        assert!(AccountName::parse(&max).is_ok());
    }

    #[test]
    fn refuses_names_that_could_escape_or_confuse() {
        assert_eq!(AccountName::parse(""), Err(AccountNameError::Empty));
        assert_eq!(AccountName::parse(".."), Err(AccountNameError::BadFirst));
        assert_eq!(AccountName::parse("."), Err(AccountNameError::BadFirst));
        assert_eq!(AccountName::parse("-rf"), Err(AccountNameError::BadFirst));
        assert_eq!(AccountName::parse("1abc"), Err(AccountNameError::BadFirst));
        assert_eq!(AccountName::parse("Alice"), Err(AccountNameError::BadFirst));
        assert_eq!(
            AccountName::parse("a/../b"),
            Err(AccountNameError::BadChar('/'))
        );
        assert_eq!(
            AccountName::parse("a.b"),
            Err(AccountNameError::BadChar('.'))
        );
        assert_eq!(
            AccountName::parse("a\0"),
            Err(AccountNameError::BadChar('\0'))
        );
        assert_eq!(
            AccountName::parse("a b"),
            Err(AccountNameError::BadChar(' '))
        );
        assert_eq!(
            AccountName::parse("aé"),
            Err(AccountNameError::BadChar('é'))
        );
        let long = format!("a{}", "b".repeat(32));
        assert_eq!(AccountName::parse(&long), Err(AccountNameError::TooLong));
    }

    #[test]
    fn deserializing_validates() {
        let ok: AccountName = serde_json::from_str("\"alice\"").unwrap();
        assert_eq!(ok.as_str(), "alice");
        assert!(serde_json::from_str::<AccountName>("\"../etc\"").is_err());
    }
}
