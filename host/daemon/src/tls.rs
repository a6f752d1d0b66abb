//! TLS: the certificate from config (or a self-signed one generated on first start) and the
//! rustls server configuration shared by STARTTLS and implicit TLS.

use std::path::Path;
use std::sync::Arc;

use portcullis_smtp::session::TlsInfo;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::config::TlsSection;

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A certificate or key file is missing or unreadable.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// rustls refused the certificate and key.
    #[error("the certificate and key do not make a TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// Generating a self-signed certificate failed.
    #[error("cannot generate a self-signed certificate: {0}")]
    Generate(String),
}

fn file_error(path: &Path, message: impl ToString) -> TlsError {
    TlsError::File {
        path: path.display().to_string(),
        message: message.to_string(),
    }
}

/// Writes a self-signed certificate and key for `hostname` if neither file exists.
/// Returns whether it generated one.
pub fn ensure_self_signed(section: &TlsSection, hostname: &str) -> Result<bool, TlsError> {
    if !section.self_signed || section.cert.exists() || section.key.exists() {
        return Ok(false);
    }
    let mut names = vec![hostname.to_string()];
    if hostname != "localhost" {
        names.push("localhost".to_string());
    }
    let certified =
        rcgen::generate_simple_self_signed(names).map_err(|e| TlsError::Generate(e.to_string()))?;
    for (path, pem) in [
        (&section.cert, certified.cert.pem()),
        (&section.key, certified.signing_key.serialize_pem()),
    ] {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| file_error(dir, e))?;
        }
        std::fs::write(path, pem).map_err(|e| file_error(path, e))?;
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&section.key, std::fs::Permissions::from_mode(0o600));
    }
    Ok(true)
}

/// Loads the certificate chain and key into an acceptor.
pub fn acceptor(section: &TlsSection) -> Result<TlsAcceptor, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&section.cert)
        .map_err(|e| file_error(&section.cert, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_error(&section.cert, e))?;
    if certs.is_empty() {
        return Err(file_error(&section.cert, "no certificate in the file"));
    }
    let key = PrivateKeyDer::from_pem_file(&section.key).map_err(|e| file_error(&section.key, e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// What a finished handshake negotiated, for the session and trace headers.
pub fn info(connection: &rustls::ServerConnection) -> TlsInfo {
    let protocol = match connection.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3".to_string(),
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2".to_string(),
        Some(other) => format!("{other:?}"),
        None => "unknown".to_string(),
    };
    let cipher = connection
        .negotiated_cipher_suite()
        .map_or_else(|| "unknown".to_string(), |s| format!("{:?}", s.suite()));
    TlsInfo { protocol, cipher }
}
