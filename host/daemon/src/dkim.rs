//! DKIM signing of submitted mail (RFC 6376, RFC 8463) with the `[[dkim]]` keys, and
//! `portcullis dkim keygen`. The signing itself is mail-auth's; this module loads the keys,
//! picks the ones of the message's `From:` domain and turns the signatures into header
//! lines written before the content (which is never rewritten).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use mail_auth::common::crypto::{Ed25519Key, RsaKey, Sha256};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::{DkimSigner, Done};
use portcullis_smtp::Content;
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;

use crate::config::dkim::DkimKey;

/// Octets of a content read at a time when it is signed from its file.
const CHUNK: usize = 64 * 1024;

/// Why a key or a signature could not be made.
#[derive(Debug, thiserror::Error)]
pub enum DkimError {
    /// The key file cannot be read.
    #[error("dkim key {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The key file holds no key we can sign with.
    #[error("dkim key {path}: {reason}")]
    Key {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Signing failed (the content could not be read back, or the crypto library refused).
    #[error("dkim signing for {domain}: {reason}")]
    Sign {
        /// The `d=` domain.
        domain: String,
        /// Why.
        reason: String,
    },
}

/// One loaded key, ready to sign.
enum Signer {
    Rsa(DkimSigner<RsaKey<Sha256>, Done>),
    Ed25519(DkimSigner<Ed25519Key, Done>),
}

impl Signer {
    /// Loads `key`'s PEM file: an Ed25519 key (PKCS#8), or an RSA key (PKCS#8 or PKCS#1;
    /// the crypto library refuses fewer than 2048 bits).
    fn load(key: &DkimKey) -> Result<Signer, DkimError> {
        let path = &key.key;
        let pem = std::fs::read(path).map_err(|source| DkimError::Read {
            path: path.clone(),
            source,
        })?;
        let refused = |reason: String| DkimError::Key {
            path: path.clone(),
            reason,
        };
        let der = PrivateKeyDer::from_pem_slice(&pem)
            .map_err(|e| refused(format!("not a PEM private key ({e})")))?;
        if let PrivateKeyDer::Pkcs8(pkcs8) = &der
            && let Ok(ed25519) = Ed25519Key::from_pkcs8_maybe_unchecked_der(pkcs8.secret_pkcs8_der())
        {
            return Ok(Signer::Ed25519(
                DkimSigner::from_key(ed25519)
                    .domain(&key.domain)
                    .selector(&key.selector)
                    .headers(&key.headers),
            ));
        }
        let rsa = RsaKey::<Sha256>::from_key_der(der)
            .map_err(|e| refused(format!("neither Ed25519 nor RSA of at least 2048 bits ({e})")))?;
        Ok(Signer::Rsa(
            DkimSigner::from_key(rsa)
                .domain(&key.domain)
                .selector(&key.selector)
                .headers(&key.headers),
        ))
    }

    /// The `DKIM-Signature:` header line for `content`.
    fn sign(&self, content: &Content) -> Result<String, String> {
        let signature = match self {
            Signer::Rsa(signer) => sign_with(signer, content),
            Signer::Ed25519(signer) => sign_with(signer, content),
        }?;
        Ok(signature.to_header())
    }
}

/// Signs `content` with `signer`: at once when it is in memory, else read from its file in
/// chunks (a large message is never held whole).
fn sign_with<T: mail_auth::common::crypto::SigningKey>(
    signer: &DkimSigner<T, Done>,
    content: &Content,
) -> Result<mail_auth::dkim::Signature, String> {
    if let Some(bytes) = content.in_memory() {
        return signer.sign(bytes).map_err(|e| e.to_string());
    }
    let mut stream = signer.sign_streaming();
    let mut buf = vec![0; CHUNK];
    let mut offset = 0;
    while offset < content.len() {
        let n = content.read_at(offset, &mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("the content's file is shorter than the content".into());
        }
        stream.write(&buf[..n]);
        offset += n as u64;
    }
    stream.finish().map_err(|e| e.to_string())
}

/// Every configured key, by domain.
#[derive(Default)]
pub struct Signers {
    by_domain: HashMap<String, Vec<Signer>>,
    /// `From:` domains already logged as having no key (logged once each).
    unsigned: Mutex<HashSet<String>>,
}

impl std::fmt::Debug for Signers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signers")
            .field("domains", &self.by_domain.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Signers {
    /// Loads every key; any that does not load is an error naming its file.
    pub fn load(keys: &[DkimKey]) -> Result<Signers, DkimError> {
        let mut by_domain: HashMap<String, Vec<Signer>> = HashMap::new();
        for key in keys {
            by_domain
                .entry(key.domain.clone())
                .or_default()
                .push(Signer::load(key)?);
        }
        Ok(Signers {
            by_domain,
            unsigned: Mutex::default(),
        })
    }

    /// Whether any key is configured.
    pub fn is_empty(&self) -> bool {
        self.by_domain.is_empty()
    }

    /// The `DKIM-Signature:` header lines for `content`, one per key of its `From:`
    /// domain (none when the domain has no key, or the message has no single `From:`
    /// address).
    pub fn sign(&self, content: &Content) -> Result<Vec<String>, DkimError> {
        let Some(domain) = from_domain(&content.header_section()) else {
            return Ok(Vec::new());
        };
        let Some(signers) = self.by_domain.get(&domain) else {
            let mut unsigned = self
                .unsigned
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if unsigned.insert(domain.clone()) {
                tracing::info!(%domain, "no [[dkim]] key for this From: domain; its mail is sent unsigned (said once per domain)");
            }
            return Ok(Vec::new());
        };
        signers
            .iter()
            .map(|signer| {
                signer.sign(content).map_err(|reason| DkimError::Sign {
                    domain: domain.clone(),
                    reason,
                })
            })
            .collect()
    }
}

/// The domain of the one address in the `From:` field of the header section `head`,
/// lower-case.
fn from_domain(head: &[u8]) -> Option<String> {
    let message = mail_parser::MessageParser::default().parse_headers(head)?;
    let from = message.from()?;
    let mut addresses = from.iter();
    let address = addresses.next()?.address()?;
    if addresses.next().is_some() {
        return None;
    }
    let (_, domain) = address.rsplit_once('@')?;
    Some(domain.trim_end_matches('.').to_ascii_lowercase())
}

/// `portcullis dkim keygen`'s algorithms.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Algorithm {
    /// RSA, 2048 bits: verified by every receiver.
    Rsa,
    /// Ed25519 (RFC 8463): short, fast; not verified by every receiver yet.
    Ed25519,
}

/// A new key written to a file, and what to publish and configure for it.
pub struct Generated {
    /// The private key's file (mode 0600).
    pub path: PathBuf,
    /// The DNS record, as a zone file line.
    pub record: String,
    /// The `[[dkim]]` section to add to the configuration.
    pub section: String,
}

/// Generates a key for `domain` and `selector` into `dir` (created 0700 if needed), never
/// over an existing file.
pub fn keygen(dir: &Path, domain: &str, selector: &str, algorithm: Algorithm) -> Result<Generated, String> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let (pem, public, k) = match algorithm {
        Algorithm::Rsa => rsa_key()?,
        Algorithm::Ed25519 => ed25519_key()?,
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    let name = format!("{domain}.{selector}.{k}.pem");
    let path = dir.join(&name);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| {
            format!(
                "{}: {e} (a key of that name exists: choose another selector, or remove it)",
                path.display()
            )
        })?;
    file.write_all(pem.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let value = format!(
        "v=DKIM1; k={k}; p={}",
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, public)
    );
    Ok(Generated {
        record: format!(
            "{selector}._domainkey.{domain}. IN TXT ( {} )",
            txt_strings(&value)
        ),
        section: format!(
            "[[dkim]]\ndomain = \"{domain}\"\nselector = \"{selector}\"\nkey = \"{}\"",
            path.display()
        ),
        path,
    })
}

/// `value` as quoted character-strings of at most 255 octets each (RFC 6376 §3.6.2.2).
fn txt_strings(value: &str) -> String {
    value
        .as_bytes()
        .chunks(255)
        .map(|chunk| format!("\"{}\"", String::from_utf8_lossy(chunk)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A new RSA-2048 key: its PKCS#8 PEM, its public key (SubjectPublicKeyInfo DER), `k=`.
fn rsa_key() -> Result<(String, Vec<u8>, &'static str), String> {
    use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
    let private = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048)
        .map_err(|e| format!("RSA key generation: {e}"))?;
    let pem = private
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| format!("RSA key encoding: {e}"))?;
    let public = private
        .to_public_key()
        .to_public_key_der()
        .map_err(|e| format!("RSA public key encoding: {e}"))?;
    Ok((pem.to_string(), public.as_bytes().to_vec(), "rsa"))
}

/// A new Ed25519 key: its PKCS#8 PEM, its raw public key (RFC 8463 §4.2), `k=`.
fn ed25519_key() -> Result<(String, Vec<u8>, &'static str), String> {
    use ring::signature::{Ed25519KeyPair, KeyPair};
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|e| format!("Ed25519 key generation: {e}"))?;
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).map_err(|e| format!("Ed25519 key: {e}"))?;
    let encoded = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, pkcs8.as_ref());
    let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
    for line in encoded.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    pem.push_str("-----END PRIVATE KEY-----\n");
    Ok((pem, pair.public_key().as_ref().to_vec(), "ed25519"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(dir: &Path, algorithm: Algorithm) -> DkimKey {
        let generated = keygen(dir, "example.org", "s1", algorithm).expect("keygen");
        DkimKey {
            domain: "example.org".into(),
            selector: "s1".into(),
            key: generated.path,
            headers: vec!["From".into(), "Subject".into()],
        }
    }

    #[test]
    fn generated_keys_load_and_sign_in_memory_and_from_a_file_alike() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ed = key(&dir.path().join("a"), Algorithm::Ed25519);
        let signers = Signers::load(&[ed]).expect("loads");
        let message = b"From: Alice <alice@Example.ORG>\r\nSubject: hi\r\n\r\nbody\r\n".to_vec();
        let lines = signers
            .sign(&Content::from_bytes(message.clone()))
            .expect("signs");
        assert_eq!(lines.len(), 1);
        assert!(
            lines[0].starts_with("DKIM-Signature: v=1; a=ed25519-sha256;"),
            "{}",
            lines[0]
        );
        assert!(
            lines[0].contains("d=example.org") && lines[0].contains("s=s1"),
            "{}",
            lines[0]
        );
        assert!(lines[0].ends_with("\r\n"));
        // Another domain's mail, or mail without a From address, is not signed.
        let other = b"From: bob@example.net\r\n\r\nx\r\n".to_vec();
        assert!(signers.sign(&Content::from_bytes(other)).expect("ok").is_empty());
        let none = b"Subject: no from\r\n\r\nx\r\n".to_vec();
        assert!(signers.sign(&Content::from_bytes(none)).expect("ok").is_empty());
    }

    #[test]
    fn an_ed25519_key_as_openssl_writes_it_loads() {
        // RFC 8410 10.3: PKCS#8 version 1, without the public key (`openssl genpkey
        // -algorithm ed25519` writes this form; ring's strict reader wants version 2).
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("openssl.pem");
        std::fs::write(
            &path,
            "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEINTuctv5E1hK1bbY8fdp+K06/nwoy/HU++CXqI9EdVhC\n-----END PRIVATE KEY-----\n",
        )
        .expect("write");
        let key = DkimKey {
            domain: "example.org".into(),
            selector: "s1".into(),
            key: path,
            headers: vec!["From".into()],
        };
        let signers = Signers::load(&[key]).expect("an OpenSSL Ed25519 key loads");
        let lines = signers
            .sign(&Content::from_bytes(b"From: a@example.org\r\n\r\nx\r\n".to_vec()))
            .expect("signs");
        assert!(lines[0].contains("a=ed25519-sha256"), "{}", lines[0]);
    }

    #[test]
    fn a_key_file_that_is_not_a_key_is_refused_by_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("bad.pem");
        std::fs::write(&path, "not a key").expect("write");
        let bad = DkimKey {
            domain: "example.org".into(),
            selector: "s1".into(),
            key: path.clone(),
            headers: vec!["From".into()],
        };
        let Err(e) = Signers::load(&[bad]) else {
            panic!("a garbage key loaded");
        };
        assert!(e.to_string().contains(&path.display().to_string()), "{e}");
    }

    #[test]
    fn keygen_never_overwrites_and_prints_strings_of_at_most_255_octets() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = keygen(dir.path(), "example.org", "s1", Algorithm::Ed25519).expect("keygen");
        assert!(keygen(dir.path(), "example.org", "s1", Algorithm::Ed25519).is_err());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&first.path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(
            first
                .record
                .starts_with("s1._domainkey.example.org. IN TXT ( \"v=DKIM1; k=ed25519; p=")
        );
        let long = "x".repeat(600);
        let split = txt_strings(&long);
        assert_eq!(split.matches('"').count(), 6, "{split}");
    }
}
