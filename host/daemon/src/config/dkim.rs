//! `[[dkim]]`: a key that signs what accounts of one domain submit.

use std::path::PathBuf;

use serde::Deserialize;

use super::{Problems, resolve};

/// The header fields signed when `headers` is not given: what identifies and describes the
/// message and its MIME structure. `From` is listed twice, so that a second `From` added
/// on the way breaks the signature (oversigning, RFC 6376 §8.15).
pub const DEFAULT_HEADERS: &[&str] = &[
    "From",
    "From",
    "Reply-To",
    "Subject",
    "Date",
    "Message-ID",
    "To",
    "Cc",
    "In-Reply-To",
    "References",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
    "Content-Disposition",
];

/// One `[[dkim]]`, as written.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct DkimSection {
    /// The domain whose `From:` addresses the key signs for (`d=`). Required.
    pub domain: String,
    /// The selector its public key is published under (`s=`). Required.
    pub selector: String,
    /// The private key, a PEM file (RSA of at least 2048 bits, or Ed25519). Required.
    pub key: PathBuf,
    /// The header fields to sign. Default: [`DEFAULT_HEADERS`].
    pub headers: Option<Vec<String>>,
}

/// One signing key, validated (the key file is read when the configuration is put to use).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DkimKey {
    /// Lower-case, without a trailing dot.
    pub domain: String,
    /// As written.
    pub selector: String,
    /// The PEM file, absolute.
    pub key: PathBuf,
    /// The header fields to sign; always includes `From`.
    pub headers: Vec<String>,
}

/// The sections as keys, with their problems recorded.
pub fn keys(sections: Vec<DkimSection>, base: &std::path::Path, problems: &mut Problems<'_>) -> Vec<DkimKey> {
    let mut keys = Vec::new();
    for (i, section) in sections.into_iter().enumerate() {
        let key = |k: &str| format!("dkim[{i}].{k}");
        let before = problems.count();
        let domain = section.domain.trim_end_matches('.').to_ascii_lowercase();
        if !is_name(&domain) {
            problems.push(
                &key("domain"),
                format!("{:?} is not a domain name", section.domain),
            );
        }
        // A selector is one or more DNS labels (RFC 6376 §3.1).
        if !is_name(&section.selector) {
            problems.push(
                &key("selector"),
                format!(
                    "{:?} is not a selector (DNS labels: letters, digits, '-', '.')",
                    section.selector
                ),
            );
        }
        let headers = section
            .headers
            .unwrap_or_else(|| DEFAULT_HEADERS.iter().map(|h| h.to_string()).collect());
        if !headers.iter().any(|h| h.eq_ignore_ascii_case("from")) {
            problems.push(&key("headers"), "must include \"From\" (RFC 6376 §5.4)".into());
        }
        if headers
            .iter()
            .any(|h| h.is_empty() || !h.bytes().all(|b| b.is_ascii_graphic() && b != b':'))
        {
            problems.push(&key("headers"), "each must be a header field name".into());
        }
        if problems.count() > before {
            continue;
        }
        let selector = section.selector;
        if keys
            .iter()
            .any(|k: &DkimKey| k.domain == domain && k.selector == selector)
        {
            problems.push(
                &key("selector"),
                format!("{selector:?} is listed twice for {domain}"),
            );
            continue;
        }
        keys.push(DkimKey {
            domain,
            selector,
            key: resolve(base, &section.key),
            headers,
        });
    }
    keys
}

/// Whether `name` is dot-separated labels of letters, digits and hyphens.
fn is_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}
