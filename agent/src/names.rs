//! Validated domain names, mailbox names and passwords.
//!
//! A domain becomes a path component (`mail/<domain>/`, `var/named/<domain>.db`)
//! and a line of a zone file, so only LDH names are accepted: labels of
//! `a-z`, `0-9` and `-` (not first or last), 1–63 characters each, at least two
//! labels, at most 253 characters in all. Upper case is folded to lower case;
//! nothing else is rewritten (no trailing dot, no IDN: send the `xn--` form).
//!
//! A mailbox name is the local part of a mail address and becomes a path
//! component (`mail/<domain>/<mailbox>/`) and the first field of a line of
//! `etc/<domain>/passwd` and `shadow`: `a-z`, `0-9`, `.`, `_` and `-`, 1–64
//! characters, not starting or ending with `.` and without `..`. Upper case
//! is folded to lower case.
//!
//! A password is handed to `chpasswd` as one `user:password` line, so it must
//! not contain `:`, a newline, a carriage return or a NUL. Its `Debug` never
//! shows it.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Longest domain name (RFC 1035, without the trailing dot).
pub const MAX_DOMAIN_LEN: usize = 253;
/// Longest label of a domain name.
pub const MAX_LABEL_LEN: usize = 63;
/// Longest accepted password, in bytes.
pub const MAX_PASSWORD_LEN: usize = 512;

/// A domain name that passed [`Domain::parse`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Domain(String);

impl Domain {
    /// Validates `name` (case-insensitively; the result is lower case).
    pub fn parse(name: &str) -> Result<Self, String> {
        if name.is_empty() {
            return Err("domain is empty".into());
        }
        if name.len() > MAX_DOMAIN_LEN {
            return Err(format!("domain is longer than {MAX_DOMAIN_LEN} characters"));
        }
        let lower = name.to_ascii_lowercase();
        let labels: Vec<&str> = lower.split('.').collect();
        if labels.len() < 2 {
            return Err(format!(
                "domain {name:?} needs at least two labels (like example.com)"
            ));
        }
        for label in &labels {
            if label.is_empty() {
                return Err(format!(
                    "domain {name:?} has an empty label (a leading, trailing or double dot)"
                ));
            }
            if label.len() > MAX_LABEL_LEN {
                return Err(format!(
                    "domain {name:?}: label {label:?} is longer than {MAX_LABEL_LEN} characters"
                ));
            }
            if let Some(c) = label
                .chars()
                .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
            {
                return Err(format!(
                    "domain {name:?}: only letters, digits, '-' and '.' are allowed (found {c:?})"
                ));
            }
            if label.starts_with('-') || label.ends_with('-') {
                return Err(format!(
                    "domain {name:?}: label {label:?} starts or ends with '-'"
                ));
            }
        }
        if labels
            .last()
            .is_some_and(|tld| tld.chars().all(|c| c.is_ascii_digit()))
        {
            return Err(format!(
                "domain {name:?}: the last label is all digits (an IP address is not a domain)"
            ));
        }
        Ok(Self(lower))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Domain {
    type Error = String;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<Domain> for String {
    fn from(value: Domain) -> Self {
        value.0
    }
}

impl fmt::Display for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Longest mailbox name (the local part of an address, RFC 5321).
pub const MAX_MAILBOX_LEN: usize = 64;

/// A mailbox name that passed [`Mailbox::parse`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Mailbox(String);

impl Mailbox {
    /// Validates `name` (case-insensitively; the result is lower case).
    pub fn parse(name: &str) -> Result<Self, String> {
        if name.is_empty() {
            return Err("mailbox name is empty".into());
        }
        if name.len() > MAX_MAILBOX_LEN {
            return Err(format!(
                "mailbox name is longer than {MAX_MAILBOX_LEN} characters"
            ));
        }
        let lower = name.to_ascii_lowercase();
        if let Some(c) = lower.chars().find(|c| {
            !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'))
        }) {
            return Err(format!(
                "mailbox {name:?}: only letters, digits, '.', '_' and '-' are allowed (found {c:?})"
            ));
        }
        if lower.starts_with('.') || lower.ends_with('.') || lower.contains("..") {
            return Err(format!(
                "mailbox {name:?} starts or ends with '.' or has '..'"
            ));
        }
        Ok(Self(lower))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Mailbox {
    type Error = String;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<Mailbox> for String {
    fn from(value: Mailbox) -> Self {
        value.0
    }
}

impl fmt::Display for Mailbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A password for [`crate::protocol::Request::SetPassword`] and
/// [`crate::protocol::Request::CreateMailbox`]: non-empty, at
/// most [`MAX_PASSWORD_LEN`] bytes, no `:`, newline, carriage return or NUL.
/// `Debug` and `Display` print `***`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Password(String);

impl Password {
    pub fn parse(password: &str) -> Result<Self, String> {
        if password.is_empty() {
            return Err("password is empty".into());
        }
        if password.len() > MAX_PASSWORD_LEN {
            return Err(format!("password is longer than {MAX_PASSWORD_LEN} bytes"));
        }
        for (c, what) in [
            (':', "':'"),
            ('\n', "a newline"),
            ('\r', "a carriage return"),
            ('\0', "a NUL"),
        ] {
            if password.contains(c) {
                return Err(format!("password must not contain {what}"));
            }
        }
        Ok(Self(password.to_owned()))
    }

    /// The secret itself: only for handing it to `chpasswd` or hashing it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Password {
    type Error = String;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<Password> for String {
    fn from(value: Password) -> Self {
        value.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(***)")
    }
}

impl fmt::Display for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains() {
        for ok in [
            "example.com",
            "a.b.c.example.co.uk",
            "xn--bcher-kva.de",
            "x1.io",
        ] {
            assert_eq!(Domain::parse(ok).unwrap().as_str(), ok);
        }
        assert_eq!(
            Domain::parse("Example.COM").unwrap().as_str(),
            "example.com"
        );
        let long_label = format!("{}.com", "a".repeat(64));
        let long = format!("{}.com", ["abcdefghij"; 25].join("."));
        for bad in [
            "",
            "com",
            "example.com.",
            ".example.com",
            "a..b",
            "-a.com",
            "a-.com",
            "a_b.com",
            "a b.com",
            "../etc.com",
            "a/b.com",
            "1.2.3.4",
            "exämple.com",
            long_label.as_str(),
            long.as_str(),
        ] {
            assert!(Domain::parse(bad).is_err(), "accepted {bad:?}");
        }
        assert!(serde_json::from_str::<Domain>("\"a..b\"").is_err());
    }

    #[test]
    fn mailboxes() {
        for ok in ["info", "a", "first.last", "x_y-z", "0day", "sales-2024"] {
            assert_eq!(Mailbox::parse(ok).unwrap().as_str(), ok);
        }
        assert_eq!(Mailbox::parse("Info").unwrap().as_str(), "info");
        assert_eq!(Mailbox::parse(&"a".repeat(64)).unwrap().as_str().len(), 64);
        let long = "a".repeat(65);
        for bad in [
            "",
            ".hidden",
            "trailing.",
            "a..b",
            "..",
            ".",
            "a/b",
            "../x",
            "a b",
            "a:b",
            "a@b",
            "a+tag",
            "ä",
            "a\nb",
            long.as_str(),
        ] {
            assert!(Mailbox::parse(bad).is_err(), "accepted {bad:?}");
        }
        assert!(serde_json::from_str::<Mailbox>("\".x\"").is_err());
    }

    #[test]
    fn passwords_are_validated_and_never_shown() {
        assert!(Password::parse("Correct-Horse-42").is_ok());
        for bad in ["", "a:b", "a\nb", "a\rb", "a\0b"] {
            assert!(Password::parse(bad).is_err(), "accepted {bad:?}");
        }
        assert!(Password::parse(&"x".repeat(513)).is_err());
        let p = Password::parse("s3cret-value").unwrap();
        assert!(!format!("{p:?} {p}").contains("s3cret"));
        let e = Password::parse("has:colon").unwrap_err();
        assert!(!e.contains("has:colon"));
    }
}
