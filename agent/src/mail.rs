//! Mail accounts of an account's domain (DESIGN §11), in cPanel's layout
//! inside the home (research: wave2-anchors §1.5):
//!
//! | what | where |
//! | --- | --- |
//! | Maildir | `<home>/mail/<domain>/<mailbox>/{cur,new,tmp}` (0700, owned like the home) |
//! | passwd | `<home>/etc/<domain>/passwd`: `<mailbox>:x:<uid>:<gid>::<home>/mail/<domain>/<mailbox>:<home>` |
//! | shadow | `<home>/etc/<domain>/shadow`: `<mailbox>:<SHA-512 crypt $6$…>:<days since 1970>::::::` |
//!
//! `uid:gid` are the home's owner (the account's ids; the serving user's in
//! the unprivileged embedded default, which cannot give files away). The
//! files are 0640, rewritten atomically (temp file, fsync, rename) under an
//! exclusive `flock` of `etc/<domain>/`, every other line kept as it was.
//! Every step below the home root is taken without following a symlink
//! ([`crate::fsx`]); a passwd, shadow or quota file that is a symlink or has
//! more than one hard link is refused, never read. The password is stored
//! only as its hash.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::account::AccountName;
use crate::error::{AgentError, Result};
use crate::fsx::{self, DirHandle};
use crate::home::{OwnerPlan, LAYOUT_DIR_MODE, MAIL_FILE_MODE};
use crate::names::{Domain, Mailbox, Password};
use crate::protocol::MailboxCreated;

/// Mode of a mailbox's Maildir and its `cur`, `new` and `tmp`.
pub const MAILDIR_MODE: u32 = 0o700;
/// Biggest `passwd` / `shadow` / `quota` file the agent reads (about
/// 100 000 mailboxes).
pub const MAX_MAIL_FILE_BYTES: u64 = 16 << 20;

/// The files of `etc/<domain>/` that have one line per mailbox.
const MAIL_FILES: [&str; 3] = ["passwd", "shadow", "quota"];

/// The `passwd` line of a mailbox (newline included).
pub fn passwd_line(mailbox: &Mailbox, uid: u32, gid: u32, home: &Path, domain: &Domain) -> String {
    let maildir = home
        .join("mail")
        .join(domain.as_str())
        .join(mailbox.as_str());
    format!(
        "{mailbox}:x:{uid}:{gid}::{}:{}\n",
        maildir.display(),
        home.display()
    )
}

/// The `shadow` line of a mailbox (newline included): its hash and the day
/// the password was set, like `/etc/shadow`'s first three fields.
pub fn shadow_line(mailbox: &Mailbox, hash: &str, days_since_epoch: i64) -> String {
    format!("{mailbox}:{hash}:{days_since_epoch}::::::\n")
}

/// SHA-512 crypt (`$6$<16-character random salt>$<hash>`, 5000 rounds, the
/// glibc default) of the password.
pub fn hash_password(password: &Password) -> Result<String> {
    let hash = sha_crypt::sha512_simple(password.expose(), &sha_crypt::Sha512Params::default())
        .map_err(|e| AgentError::Internal(format!("cannot hash the password: {e:?}")))?;
    if hash.contains(':') || hash.contains('\n') || !hash.starts_with("$6$") {
        return Err(AgentError::Internal(
            "the password hash is not a $6$ string".into(),
        ));
    }
    Ok(hash)
}

/// `text` with the lines whose first field is `name` removed and, when
/// given, `new_line` in the place of the first of them (at the end if there
/// was none). Other lines are kept byte for byte (a last line without a
/// newline gets one). Returns the new text and whether `name` had a line.
fn replace_line(text: &[u8], name: &str, new_line: Option<&str>) -> (Vec<u8>, bool) {
    let mut out = Vec::with_capacity(text.len() + new_line.map_or(0, str::len));
    let mut had = false;
    for line in text.split(|b| *b == b'\n') {
        if line.is_empty() {
            continue;
        }
        let first = line.split(|b| *b == b':').next().unwrap_or_default();
        if first == name.as_bytes() {
            if !had {
                if let Some(l) = new_line {
                    out.extend_from_slice(l.as_bytes());
                }
            }
            had = true;
            continue;
        }
        out.extend_from_slice(line);
        out.push(b'\n');
    }
    if !had {
        if let Some(l) = new_line {
            out.extend_from_slice(l.as_bytes());
        }
    }
    (out, had)
}

/// The mailbox names of a `passwd` text, sorted, each once (lines whose
/// first field is not a valid, lower-case mailbox name are left out).
pub fn mailbox_names(passwd: &[u8]) -> Vec<Mailbox> {
    let mut names: Vec<Mailbox> = passwd
        .split(|b| *b == b'\n')
        .filter_map(|line| {
            let first = std::str::from_utf8(line.split(|b| *b == b':').next()?).ok()?;
            Mailbox::parse(first).ok().filter(|m| m.as_str() == first)
        })
        .collect();
    names.sort();
    names.dedup();
    names
}

/// `<home_root>/<account>`, opened without following a symlink; `None` if
/// it (or the home root) does not exist.
fn open_home(home_root: &Path, account: &AccountName) -> Result<Option<DirHandle>> {
    let root = match fsx::open_base(home_root) {
        Ok(r) => r,
        Err(AgentError::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(e),
    };
    root.open_dir(account.as_str())
}

fn home_not_found(home_root: &Path, account: &AccountName) -> AgentError {
    AgentError::NotFound {
        what: format!(
            "home of {account} ({})",
            home_root.join(account.as_str()).display()
        ),
    }
}

/// The home's owner ids.
fn home_owner(home: &DirHandle) -> Result<(u32, u32)> {
    let m = home
        .file
        .metadata()
        .map_err(|e| AgentError::io(&home.path, e))?;
    Ok((m.uid(), m.gid()))
}

/// Creates (or opens) the layout directory `name` under `parent`; one it
/// creates gets the layout's mode and the home's owner.
fn ensure_layout_dir(parent: &DirHandle, name: &str, owner: &OwnerPlan) -> Result<DirHandle> {
    let (dir, created) = parent.ensure_dir(name, LAYOUT_DIR_MODE)?;
    if created {
        owner.set(&dir.file, &dir.path, LAYOUT_DIR_MODE)?;
    }
    Ok(dir)
}

/// `<dir>/<name>` opened without following a symlink, if it exists.
fn open_sub(dir: Option<DirHandle>, name: &str) -> Result<Option<DirHandle>> {
    match dir {
        Some(d) => d.open_dir(name),
        None => Ok(None),
    }
}

/// An exclusive `flock` of `etc/<domain>/`, held while its files are read
/// and rewritten, so concurrent changes of one domain's mailboxes never
/// lose each other's lines.
fn lock_dir(dir: &DirHandle) -> Result<nix::fcntl::Flock<File>> {
    let f = dir
        .file
        .try_clone()
        .map_err(|e| AgentError::io(&dir.path, e))?;
    nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| AgentError::io(&dir.path, std::io::Error::from(e)))
}

/// Checks the owner a mailbox's files would get: never root or a system
/// user (an account's ids are at least `min_uid`), except the unprivileged
/// agent's own ids (the embedded default's homes are its own).
fn check_owner(home: &DirHandle, uid: u32, gid: u32, min_uid: u32) -> Result<()> {
    let euid = nix::unistd::geteuid().as_raw();
    let own = euid != 0 && uid == euid;
    if !own && (uid < min_uid || gid < min_uid) {
        return Err(AgentError::Busy(format!(
            "{} belongs to {uid}:{gid}, not to an account (ids >= {min_uid}): no mailbox is made there",
            home.path.display()
        )));
    }
    Ok(())
}

/// Creates the mailbox `mailbox@domain` of `account`, or sets its password
/// again: the Maildir `mail/<domain>/<mailbox>/{cur,new,tmp}` (kept if it
/// exists; `mail/`, `etc/` and their `<domain>/` are made if missing) and
/// its lines in `etc/<domain>/passwd` and `shadow` (added, or replaced).
/// The home must exist ([`AgentError::NotFound`]). `created` is false when
/// `passwd` already had the mailbox.
pub fn create_mailbox(
    home_root: &Path,
    account: &AccountName,
    domain: &Domain,
    mailbox: &Mailbox,
    password: &Password,
    min_uid: u32,
) -> Result<MailboxCreated> {
    let home = open_home(home_root, account)?.ok_or_else(|| home_not_found(home_root, account))?;
    let (uid, gid) = home_owner(&home)?;
    check_owner(&home, uid, gid, min_uid)?;
    let owner = OwnerPlan::new(uid, gid);
    let ids = owner.apply.then_some((uid, gid));

    let mail = ensure_layout_dir(&home, "mail", &owner)?;
    let mail_domain = ensure_layout_dir(&mail, domain.as_str(), &owner)?;
    let etc = ensure_layout_dir(&home, "etc", &owner)?;
    let etc_domain = ensure_layout_dir(&etc, domain.as_str(), &owner)?;
    let _lock = lock_dir(&etc_domain)?;

    // the files first: a refused passwd or shadow leaves no Maildir behind
    let passwd = etc_domain
        .read_private_file("passwd", MAX_MAIL_FILE_BYTES)?
        .unwrap_or_default();
    let shadow = etc_domain
        .read_private_file("shadow", MAX_MAIL_FILE_BYTES)?
        .unwrap_or_default();
    let hash = hash_password(password)?;
    let days = chrono::Utc::now().timestamp().div_euclid(86_400);

    let (maildir, _) = mail_domain.ensure_dir(mailbox.as_str(), MAILDIR_MODE)?;
    owner.set(&maildir.file, &maildir.path, MAILDIR_MODE)?;
    for sub in ["cur", "new", "tmp"] {
        let (d, _) = maildir.ensure_dir(sub, MAILDIR_MODE)?;
        owner.set(&d.file, &d.path, MAILDIR_MODE)?;
    }

    // shadow before passwd: a mailbox is listed only once it has a password
    let (new_shadow, _) = replace_line(
        &shadow,
        mailbox.as_str(),
        Some(&shadow_line(mailbox, &hash, days)),
    );
    etc_domain.write_atomic_owned("shadow", &new_shadow, MAIL_FILE_MODE, ids)?;
    let (new_passwd, had) = replace_line(
        &passwd,
        mailbox.as_str(),
        Some(&passwd_line(mailbox, uid, gid, &home.path, domain)),
    );
    etc_domain.write_atomic_owned("passwd", &new_passwd, MAIL_FILE_MODE, ids)?;
    tracing::info!(
        account = %account,
        domain = %domain,
        mailbox = %mailbox,
        created = !had,
        owner_applied = owner.apply,
        "mailbox written"
    );
    Ok(MailboxCreated {
        account: account.clone(),
        domain: domain.clone(),
        mailbox: mailbox.clone(),
        path: maildir.path.display().to_string(),
        created: !had,
    })
}

/// Removes the mailbox `mailbox@domain` of `account`: its lines in
/// `etc/<domain>/passwd`, `shadow` and `quota`, then its Maildir (walked
/// from directory descriptors, nothing inside followed). A symlink or a
/// file in the Maildir's place is refused before anything is changed.
/// Returns the Maildir's path and whether there was anything to remove
/// (an absent home, domain or mailbox is `false`, not an error).
pub fn delete_mailbox(
    home_root: &Path,
    account: &AccountName,
    domain: &Domain,
    mailbox: &Mailbox,
) -> Result<(PathBuf, bool)> {
    let maildir_path = home_root
        .join(account.as_str())
        .join("mail")
        .join(domain.as_str())
        .join(mailbox.as_str());
    let Some(home) = open_home(home_root, account)? else {
        return Ok((maildir_path, false));
    };
    let (uid, gid) = home_owner(&home)?;
    let owner = OwnerPlan::new(uid, gid);
    let ids = owner.apply.then_some((uid, gid));

    let mail_domain = open_sub(home.open_dir("mail")?, domain.as_str())?;
    if let Some(md) = &mail_domain {
        if md.is_dir_entry(mailbox.as_str())? == Some(false) {
            return Err(AgentError::UnsafePath(format!(
                "{} is not a directory (a symlink or a file): refused, not followed",
                md.path.join(mailbox.as_str()).display()
            )));
        }
    }
    let etc_domain = open_sub(home.open_dir("etc")?, domain.as_str())?;
    let mut existed = false;
    if let Some(ed) = &etc_domain {
        let _lock = lock_dir(ed)?;
        // read all three first: a refused file leaves the others as they were
        let mut texts = Vec::new();
        for f in MAIL_FILES {
            if let Some(text) = ed.read_private_file(f, MAX_MAIL_FILE_BYTES)? {
                texts.push((f, text));
            }
        }
        // passwd first: a mailbox without its passwd line no longer exists
        for (f, text) in texts {
            let (new, had) = replace_line(&text, mailbox.as_str(), None);
            if had {
                ed.write_atomic_owned(f, &new, MAIL_FILE_MODE, ids)?;
                existed = true;
            }
        }
    }
    if let Some(md) = &mail_domain {
        existed |= md.remove_tree(mailbox.as_str())?;
    }
    if existed {
        tracing::info!(account = %account, domain = %domain, mailbox = %mailbox, "mailbox removed");
    }
    Ok((maildir_path, existed))
}

/// The mailboxes of `account` at `domain`: the names in
/// `etc/<domain>/passwd`, sorted (none when the domain has no such file).
/// The home must exist ([`AgentError::NotFound`]).
pub fn list_mailboxes(
    home_root: &Path,
    account: &AccountName,
    domain: &Domain,
) -> Result<Vec<Mailbox>> {
    let home = open_home(home_root, account)?.ok_or_else(|| home_not_found(home_root, account))?;
    let Some(etc_domain) = open_sub(home.open_dir("etc")?, domain.as_str())? else {
        return Ok(Vec::new());
    };
    let passwd = etc_domain
        .read_private_file("passwd", MAX_MAIL_FILE_BYTES)?
        .unwrap_or_default();
    Ok(mailbox_names(&passwd))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mb(s: &str) -> Mailbox {
        Mailbox::parse(s).unwrap()
    }

    #[test]
    fn lines_are_replaced_in_place_and_others_kept() {
        let text = b"a:x:1:1::/h/mail/d/a:/h\nb:x:1:1::/h/mail/d/b:/h\nodd line\nb:dup\nc:x";
        let (out, had) = replace_line(text, "b", Some("b:NEW\n"));
        assert!(had);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "a:x:1:1::/h/mail/d/a:/h\nb:NEW\nodd line\nc:x\n"
        );
        let (out, had) = replace_line(b"", "z", Some("z:1\n"));
        assert!(!had);
        assert_eq!(out, b"z:1\n");
        let (out, had) = replace_line(b"a:1\nab:2\n", "a", None);
        assert!(had);
        assert_eq!(out, b"ab:2\n");
        let (out, had) = replace_line(b"ab:2\n", "a", None);
        assert!(!had);
        assert_eq!(out, b"ab:2\n");
    }

    #[test]
    fn names_from_passwd() {
        let names = mailbox_names(b"zed:x\ninfo:x\nInfo:x\n:x\n.bad:x\ninfo:again\n\nsales:x");
        assert_eq!(names, vec![mb("info"), mb("sales"), mb("zed")]);
    }

    #[test]
    fn formats() {
        let d = Domain::parse("example.com").unwrap();
        assert_eq!(
            passwd_line(&mb("info"), 1001, 1002, Path::new("/home/alice"), &d),
            "info:x:1001:1002::/home/alice/mail/example.com/info:/home/alice\n"
        );
        assert_eq!(
            shadow_line(&mb("info"), "$6$salt$hash", 19_000),
            "info:$6$salt$hash:19000::::::\n"
        );
        let pw = Password::parse("Correct-Horse-42").unwrap();
        let h = hash_password(&pw).unwrap();
        assert!(h.starts_with("$6$"), "{h}");
        assert!(sha_crypt::sha512_check("Correct-Horse-42", &h).is_ok());
        assert!(sha_crypt::sha512_check("wrong", &h).is_err());
        assert_ne!(h, hash_password(&pw).unwrap(), "the salt is random");
    }
}
