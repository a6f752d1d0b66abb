//! SASL PLAIN (RFC 4616) and LOGIN decoding: base64 lines in, credentials out.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use crate::command::Mechanism;

/// Credentials a client presented, for the host (or the auth hook) to verify.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The mechanism used.
    pub mechanism: Mechanism,
    /// The identity to act as (PLAIN authzid), when given and different from `username`.
    pub authzid: Option<String>,
    /// The authentication identity.
    pub username: String,
    /// The password, never logged (see the `Debug` impl).
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("mechanism", &self.mechanism)
            .field("authzid", &self.authzid)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Why a SASL response was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SaslError {
    /// The client sent `*`.
    Cancelled,
    /// Not base64, not UTF-8, or not of the mechanism's form.
    Malformed,
}

/// Decodes one base64 response line (`=` is the empty response).
pub fn decode(line: &str) -> Result<String, SaslError> {
    if line == "*" {
        return Err(SaslError::Cancelled);
    }
    if line == "=" {
        return Ok(String::new());
    }
    let bytes = STANDARD
        .decode(line.trim_end())
        .map_err(|_| SaslError::Malformed)?;
    String::from_utf8(bytes).map_err(|_| SaslError::Malformed)
}

/// Splits a PLAIN response `authzid NUL authcid NUL passwd`.
pub fn plain(line: &str) -> Result<Credentials, SaslError> {
    let decoded = decode(line)?;
    let mut parts = decoded.split('\0');
    let (Some(authzid), Some(username), Some(password), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(SaslError::Malformed);
    };
    if username.is_empty() {
        return Err(SaslError::Malformed);
    }
    Ok(Credentials {
        mechanism: Mechanism::Plain,
        authzid: (!authzid.is_empty() && authzid != username).then(|| authzid.to_string()),
        username: username.to_string(),
        password: password.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_forms() {
        let b64 = |s: &[u8]| STANDARD.encode(s);
        let ok = plain(&b64(b"\0alice\0secret")).unwrap();
        assert_eq!(
            (ok.username.as_str(), ok.password.as_str(), ok.authzid.clone()),
            ("alice", "secret", None)
        );
        let z = plain(&b64(b"bob\0alice\0pw")).unwrap();
        assert_eq!(z.authzid.as_deref(), Some("bob"));
        assert_eq!(plain(&b64(b"alice\0secret")), Err(SaslError::Malformed));
        assert_eq!(plain(&b64(b"\0\0pw")), Err(SaslError::Malformed));
        assert_eq!(plain("!!notbase64"), Err(SaslError::Malformed));
        assert_eq!(plain("*"), Err(SaslError::Cancelled));
        assert!(!format!("{ok:?}").contains("secret"));
    }
}
