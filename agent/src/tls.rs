//! TLS certificates from an archive (DESIGN §12): cPanel's `apache_tls/<domain>` holds the
//! private key, the certificate and its chain in one PEM file; older archives keep
//! certificates in `sslcerts/<name>.crt` (a CA chain beside them as `<name>.cabundle`) and keys
//! in `sslkeys/<name>.key`, with nothing but the public key to tell which key is whose.
//!
//! [`check`] says whether such a bundle can serve `domain`: the certificate's public key is the
//! key's, it has not expired, and it names the domain. [`pair`] matches the older files up
//! by public key and says what could not be used. The checks run `openssl` (its `x509`
//! and `pkey` commands, the PEM on stdin, never on the command line); without an `openssl`
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

/// The public key (PEM) a certificate carries.
pub fn cert_public_key(cert: &str) -> Result<String, String> {
    let (ok, out) = openssl(&["x509", "-noout", "-pubkey"], cert)?;
    if !ok || out.trim().is_empty() {
        return Err("the certificate does not parse".into());
    }
    Ok(out.trim().to_string())
}

/// The public key (PEM) of a private key.
pub fn key_public_key(key: &str) -> Result<String, String> {
    // `-passin pass:`: an encrypted key fails at once instead of asking on a terminal.
    let (ok, out) = openssl(&["pkey", "-pubout", "-passin", "pass:"], key)?;
    if !ok || out.trim().is_empty() {
        return Err("the private key does not parse (or has a passphrase)".into());
    }
    Ok(out.trim().to_string())
}

/// The DNS names a certificate is for: its subjectAltName's `DNS:` entries, else its subject's
/// CN; lower case.
pub fn dns_names(cert: &str) -> Result<Vec<String>, String> {
    let (ok, out) = openssl(
        &[
            "x509",
            "-noout",
            "-ext",
            "subjectAltName",
            "-subject",
            "-nameopt",
            "RFC2253",
        ],
        cert,
    )?;
    if !ok {
        return Err("the certificate does not parse".into());
    }
    let mut names: Vec<String> = out
        .lines()
        .filter(|l| l.contains("DNS:"))
        .flat_map(|l| l.split(','))
        .filter_map(|t| t.trim().strip_prefix("DNS:"))
        .map(|n| n.trim().to_ascii_lowercase())
        .filter(|n| !n.is_empty())
        .collect();
    if names.is_empty() {
        names.extend(
            out.lines()
                .filter_map(|l| l.strip_prefix("subject="))
                .flat_map(|s| s.split(','))
                .filter_map(|p| p.trim().strip_prefix("CN="))
                .map(|n| n.trim().to_ascii_lowercase()),
        );
    }
    names.dedup();
    Ok(names)
}

/// Whether the certificate name `name` (`example.com`, or a wildcard `*.example.com` for one
/// label) covers `domain`.
pub fn covers(name: &str, domain: &str) -> bool {
    let (name, domain) = (name.to_ascii_lowercase(), domain.to_ascii_lowercase());
    match name.strip_prefix("*.") {
        Some(parent) => domain
            .split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && rest == parent),
        None => name == domain,
    }
}

/// A certificate file of `sslcerts/` and its key of `sslkeys/`, matched by public key.
#[derive(Debug, PartialEq, Eq)]
pub struct Pair {
    /// The certificate's file name (in `sslcerts/`).
    pub cert: String,
    /// The key's file name (in `sslkeys/`).
    pub key: String,
}

/// [`pair`]'s answer: the pairs, and each file that could not be used with the reason.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Pairing {
    pub pairs: Vec<Pair>,
    /// (`sslcerts/<name>` or `sslkeys/<name>`, why).
    pub unused: Vec<(String, String)>,
}

/// Matches the certificates (`(file name, PEM)`) with the keys whose public key they carry.
/// One `openssl` run per file: `n` certificates and `m` keys cost `n + m` runs, not `n × m`.
pub fn pair(certs: &[(String, String)], keys: &[(String, String)]) -> Pairing {
    let mut p = Pairing::default();
    let mut by_public: Vec<(String, String)> = Vec::new(); // (public key, key file)
    for (name, pem) in keys {
        match split(pem)
            .key
            .ok_or_else(|| "no private key in it".to_string())
            .and_then(|k| key_public_key(&k))
        {
            Ok(public) => by_public.push((public, name.clone())),
            Err(why) => p.unused.push((format!("sslkeys/{name}"), why)),
        }
    }
    let mut used = std::collections::BTreeSet::new();
    for (name, pem) in certs {
        let public = split(pem)
            .certs
            .first()
            .ok_or_else(|| "no certificate in it".to_string())
            .and_then(|c| cert_public_key(c));
        match public {
            Err(why) => p.unused.push((format!("sslcerts/{name}"), why)),
            Ok(public) => match by_public.iter().find(|(k, _)| *k == public) {
                Some((_, key)) => {
                    used.insert(key.clone());
                    p.pairs.push(Pair {
                        cert: name.clone(),
                        key: key.clone(),
                    });
                }
                None => p.unused.push((
                    format!("sslcerts/{name}"),
                    "no key in sslkeys/ matches this certificate".into(),
                )),
            },
        }
    }
    for (_, key) in &by_public {
        if !used.contains(key) {
            p.unused.push((
                format!("sslkeys/{key}"),
                "no certificate in sslcerts/ carries this key's public key".into(),
            ));
        }
    }
    p
}

/// Why `bundle` cannot serve `domain`, or `Ok` when it can.
pub fn check(bundle: &Bundle, domain: &str) -> Result<(), String> {
    let key = bundle
        .key
        .as_deref()
        .ok_or("no private key in the bundle")?;
    let cert = bundle.certs.first().ok_or("no certificate in the bundle")?;
    let cert_pub = cert_public_key(cert)?;
    let key_pub = key_public_key(key)?;
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

    #[test]
    fn wildcards_cover_one_label() {
        assert!(covers("example.com", "Example.COM"));
        assert!(covers("*.example.com", "www.example.com"));
        assert!(!covers("*.example.com", "example.com"));
        assert!(!covers("*.example.com", "a.b.example.com"));
        assert!(!covers("example.com", "www.example.com"));
    }

    /// A key and a self-signed certificate for `names` (the `openssl` CLI, in `dir`).
    fn made(dir: &std::path::Path, tag: &str, names: &str) -> (String, String) {
        let san = format!("subjectAltName={names}");
        let (k, c) = (
            dir.join(format!("{tag}.key")),
            dir.join(format!("{tag}.crt")),
        );
        let st = Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
            ])
            .args([
                "-nodes",
                "-days",
                "30",
                "-subj",
                "/CN=ignored.example",
                "-addext",
                &san,
            ])
            .arg("-keyout")
            .arg(&k)
            .arg("-out")
            .arg(&c)
            .stderr(Stdio::null())
            .status()
            .expect("openssl");
        assert!(st.success());
        (
            std::fs::read_to_string(k).unwrap(),
            std::fs::read_to_string(c).unwrap(),
        )
    }

    #[test]
    fn certificates_pair_with_the_keys_they_carry() {
        let dir = tempfile::tempdir().unwrap();
        let (k1, c1) = made(dir.path(), "a", "DNS:a.example,DNS:*.a.example");
        let (k2, c2) = made(dir.path(), "b", "DNS:b.example");
        let (k3, _) = made(dir.path(), "c", "DNS:c.example");
        assert_eq!(
            dns_names(&c1).unwrap(),
            vec!["a.example".to_string(), "*.a.example".to_string()]
        );
        // Names that say nothing of which key is whose.
        let certs = vec![
            ("a_example_1.crt".to_string(), c1),
            ("b_example_2.crt".to_string(), c2),
            ("junk.crt".to_string(), "not pem".to_string()),
        ];
        let keys = vec![
            ("9f1.key".to_string(), k2),
            ("0ab.key".to_string(), k1),
            ("7cc.key".to_string(), k3),
        ];
        let p = pair(&certs, &keys);
        assert_eq!(
            p.pairs,
            vec![
                Pair {
                    cert: "a_example_1.crt".into(),
                    key: "0ab.key".into()
                },
                Pair {
                    cert: "b_example_2.crt".into(),
                    key: "9f1.key".into()
                },
            ]
        );
        assert_eq!(p.unused.len(), 2, "{:?}", p.unused);
        assert!(p
            .unused
            .iter()
            .any(|(f, why)| f == "sslcerts/junk.crt" && why.contains("no certificate")));
        assert!(p
            .unused
            .iter()
            .any(|(f, why)| f == "sslkeys/7cc.key" && why.contains("carries")));
    }
}
