//! TLS: the certificate from config (or a self-signed one generated on first start) and the
//! rustls server configuration shared by STARTTLS and implicit TLS.

use std::path::Path;
use std::sync::Arc;

use portcullis_smtp::session::TlsInfo;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::{WebPkiSupportedAlgorithms, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, ServerConfig, SignatureScheme};
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

/// TLS 1.2 sessions kept for resumption by id (a few hundred bytes each).
const SESSION_CACHE: usize = 4096;

/// Loads the certificate chain and key into an acceptor that lets clients resume.
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
    let algorithms = provider.signature_verification_algorithms;
    let builder = ServerConfig::builder_with_provider(provider).with_safe_default_protocol_versions()?;
    let builder = if section.ask_client_certificate {
        builder.with_client_cert_verifier(Arc::new(AnyClientCertificate { algorithms }))
    } else {
        builder.with_no_client_auth()
    };
    let mut config = builder.with_single_cert(certs, key)?;
    // A returning client (a mail client's next message, Postfix's next delivery) resumes
    // its session instead of a full handshake: TLS 1.3 tickets under a key rustls rotates
    // every six hours (stateless: nothing kept per client), and for TLS 1.2 clients that
    // resume by session id, a bounded cache. A reload makes a new key: older tickets then
    // get a full handshake.
    config.ticketer = rustls::crypto::ring::Ticketer::new()?;
    config.session_storage = rustls::server::ServerSessionMemoryCache::new(SESSION_CACHE);
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Asks every client for a certificate, requires none, and takes any one it presents
/// once the client has proven it holds the key (the handshake signature is checked as
/// always); no CA is consulted. What it shows is a fact for the plugins, not an identity
/// the host relies on.
#[derive(Debug)]
struct AnyClientCertificate {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for AnyClientCertificate {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The most of a client certificate's subject kept: it is the client's text.
const MAX_SUBJECT: usize = 256;

/// The subject of a DER certificate as RFC 4514 text, printable and bounded; `None` when
/// it does not parse.
fn subject(der: &CertificateDer<'_>) -> Option<String> {
    let (_, certificate) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    let text: String = certificate
        .subject()
        .to_string()
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_SUBJECT)
        .collect();
    Some(text)
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
    let peer_subject = connection
        .peer_certificates()
        .and_then(|chain| chain.first())
        .and_then(subject);
    TlsInfo {
        protocol,
        cipher,
        peer_subject,
    }
}
