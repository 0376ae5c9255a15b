//! TLS certificates from an archive (DESIGN §12): cPanel's `apache_tls/<domain>` holds the
//! private key, the certificate and its chain in one PEM file.
//!
//! [`check`] says whether such a bundle can serve `domain`: the certificate's public key is the
//! key's, it has not expired, and it names the domain. The checks run `openssl` (its `x509`
//! and `pkey` commands, the bundle on stdin, never on the command line); without an `openssl`
//! binary they say so instead of guessing.

use std::io::Write;
use std::process::{Command, Stdio};

/// A PEM bundle split into its key and its certificates (leaf first).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Bundle {
    pub key: Option<String>,
    pub certs: Vec<String>,
}

/// The PEM blocks of `text`: the private key and the certificates, in order.
pub fn split(text: &str) -> Bundle {
    let mut b = Bundle::default();
    let mut cur: Option<(String, String)> = None;
    for line in text.lines() {
        let l = line.trim();
        if let Some(label) = l
            .strip_prefix("-----BEGIN ")
            .and_then(|r| r.strip_suffix("-----"))
        {
            cur = Some((label.to_string(), format!("{l}\n")));
            continue;
        }
        if let Some((label, body)) = cur.as_mut() {
            body.push_str(l);
            body.push('\n');
            if l.starts_with("-----END ") {
                if label.ends_with("PRIVATE KEY") {
                    b.key.get_or_insert_with(|| body.clone());
                } else if label == "CERTIFICATE" {
                    b.certs.push(body.clone());
                }
                cur = None;
            }
        }
    }
    b
}

/// `openssl <args>` with `input` on stdin: (success, stdout).
fn openssl(args: &[&str], input: &str) -> Result<(bool, String), String> {
    let mut child = Command::new("openssl")
        .args(args)
        .env_clear()
        .env("PATH", "/usr/bin:/bin:/usr/local/bin")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("openssl is not available here ({e})"))?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(input.as_bytes());
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("openssl: {e}"))?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    ))
}

/// Why `bundle` cannot serve `domain`, or `Ok` when it can.
pub fn check(bundle: &Bundle, domain: &str) -> Result<(), String> {
    let key = bundle
        .key
        .as_deref()
        .ok_or("no private key in the bundle")?;
    let cert = bundle.certs.first().ok_or("no certificate in the bundle")?;
    let (ok, cert_pub) = openssl(&["x509", "-noout", "-pubkey"], cert)?;
    if !ok {
        return Err("the certificate does not parse".into());
    }
    // `-passin pass:`: an encrypted key fails at once instead of asking on a terminal.
    let (ok, key_pub) = openssl(&["pkey", "-pubout", "-passin", "pass:"], key)?;
    if !ok {
        return Err("the private key does not parse (or has a passphrase)".into());
    }
    if cert_pub.trim() != key_pub.trim() {
        return Err("the certificate does not match the private key".into());
    }
    let (valid, _) = openssl(&["x509", "-noout", "-checkend", "0"], cert)?;
    if !valid {
        return Err("the certificate has expired".into());
    }
    let (_, names) = openssl(&["x509", "-noout", "-checkhost", domain], cert)?;
    if !names.contains("does match") {
        return Err(format!("the certificate is not for {domain}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundles_split_into_key_and_certificates() {
        let text = "-----BEGIN PRIVATE KEY-----\nAAA\n-----END PRIVATE KEY-----\n\
                    -----BEGIN CERTIFICATE-----\nBBB\n-----END CERTIFICATE-----\n\
                    -----BEGIN CERTIFICATE-----\nCCC\n-----END CERTIFICATE-----\n";
        let b = split(text);
        assert!(b.key.unwrap().contains("AAA"));
        assert_eq!(b.certs.len(), 2);
        assert!(b.certs[0].contains("BBB"), "the leaf first");
        assert_eq!(split("junk").certs.len(), 0);
    }
}
