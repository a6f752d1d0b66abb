//! One SMTP client session to one host: moves bytes, while the core's [`client`] module
//! parses the replies, writes the commands and judges the results.
//!
//! [`client`]: portcullis_smtp::client

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use base64::Engine as _;
use portcullis_smtp::client::{self, Extensions, RecipientResult, ReplyParser, TransactionReplies};
use portcullis_smtp::{Envelope, Reply};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::settings::{DeliverySettings, RelayLogin, TlsPolicy};

/// Something we can read SMTP from and write SMTP to: TCP, or TLS over TCP.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// Why a session to a host ended before it decided anything about the recipients: the next
/// host (or a later attempt) should be tried.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// TCP could not connect to any address.
    #[error("cannot connect to {host}: {reason}")]
    Connect {
        /// The host.
        host: String,
        /// What the last address said.
        reason: String,
    },
    /// The connection broke, timed out, or the peer broke the protocol.
    #[error("{host}: {reason}")]
    Broken {
        /// The host.
        host: String,
        /// What happened.
        reason: String,
    },
    /// The peer refused us before the transaction (greeting, EHLO, STARTTLS, AUTH).
    #[error("{host} said: {reply}")]
    Refused {
        /// The host.
        host: String,
        /// Its reply.
        reply: Reply,
    },
    /// TLS is required and the peer could not do it.
    #[error("{host}: TLS is required but {reason}")]
    TlsRequired {
        /// The host.
        host: String,
        /// What failed.
        reason: String,
    },
}

impl SessionError {
    /// Whether retrying can help; `false` when the peer refused us with a 5xx.
    pub fn is_permanent(&self) -> bool {
        matches!(self, SessionError::Refused { reply, .. } if reply.is_permanent())
    }

    /// A reply describing the failure, for logs and DSNs.
    pub fn reply(&self) -> Reply {
        match self {
            SessionError::Refused { reply, .. } => reply.clone(),
            other => Reply::new(451, Some(portcullis_smtp::Enhanced(4, 4, 1)), other.to_string()),
        }
    }
}

/// What a finished transaction reports.
#[derive(Debug)]
pub struct Delivered {
    /// One result per recipient, in the order given.
    pub results: Vec<RecipientResult>,
    /// The peer announced DSN (it will report success itself when asked).
    pub peer_dsn: bool,
    /// The session ran over TLS.
    pub tls: bool,
}

/// The per-host session parameters.
#[derive(Debug, Clone)]
pub struct Peer<'a> {
    /// Its name, for SNI and logs.
    pub name: &'a str,
    /// Its addresses, tried in order.
    pub addrs: &'a [SocketAddr],
    /// STARTTLS policy.
    pub tls: TlsPolicy,
    /// AUTH to do after STARTTLS.
    pub auth: Option<&'a RelayLogin>,
}

struct Conn {
    io: Box<dyn Stream>,
    parser: ReplyParser,
    host: String,
    timeout: Duration,
}

impl Conn {
    fn broken(&self, reason: impl std::fmt::Display) -> SessionError {
        SessionError::Broken {
            host: self.host.clone(),
            reason: reason.to_string(),
        }
    }

    /// Writes `bytes` and flushes them (through TLS too) within the command timeout.
    async fn send(&mut self, bytes: &[u8]) -> Result<(), SessionError> {
        let io = &mut self.io;
        let write = async move {
            io.write_all(bytes).await?;
            io.flush().await
        };
        match tokio::time::timeout(self.timeout, write).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(self.broken(format!("write failed: {e}"))),
            Err(_) => Err(self.broken("write timed out")),
        }
    }

    async fn reply_within(&mut self, wait: Duration) -> Result<Reply, SessionError> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut buf = [0u8; 4096];
        loop {
            match self.parser.next_reply() {
                Ok(Some(reply)) => return Ok(reply),
                Ok(None) => {}
                Err(e) => return Err(self.broken(format!("protocol error: {e}"))),
            }
            match tokio::time::timeout_at(deadline, self.io.read(&mut buf)).await {
                Ok(Ok(0)) => return Err(self.broken("connection closed by the peer")),
                Ok(Ok(n)) => self.parser.feed(&buf[..n]),
                Ok(Err(e)) => return Err(self.broken(format!("read failed: {e}"))),
                Err(_) => return Err(self.broken("timed out waiting for a reply")),
            }
        }
    }

    async fn reply(&mut self) -> Result<Reply, SessionError> {
        self.reply_within(self.timeout).await
    }

    async fn command(&mut self, line: &str) -> Result<Reply, SessionError> {
        self.send(line.as_bytes()).await?;
        self.reply().await
    }

    fn refused(&self, reply: Reply) -> SessionError {
        SessionError::Refused {
            host: self.host.clone(),
            reply,
        }
    }
}

async fn connect(peer: &Peer<'_>, timeout: Duration) -> Result<TcpStream, SessionError> {
    let mut last = String::from("no address");
    for addr in peer.addrs {
        match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                return Ok(stream);
            }
            Ok(Err(e)) => last = format!("{addr}: {e}"),
            Err(_) => last = format!("{addr}: connection timed out"),
        }
    }
    Err(SessionError::Connect {
        host: peer.name.to_string(),
        reason: last,
    })
}

/// Opens a session to `peer`, greets, upgrades to TLS and authenticates as the policy says,
/// and runs one transaction for `envelope` (its recipients are the ones to deliver here).
///
/// The message is sent once the peer accepted at least one recipient; the result of each
/// recipient is decided by the replies, never guessed.
pub async fn transact(
    settings: &DeliverySettings,
    peer: &Peer<'_>,
    envelope: &Envelope,
    message: &[u8],
) -> Result<Delivered, SessionError> {
    match session(settings, peer, envelope, message, peer.tls).await {
        // A broken handshake under the opportunistic policy: retry once in plaintext, as
        // RFC 3207 section 4 allows (the peer may have a broken TLS stack).
        Err(SessionError::TlsRequired { host, reason }) if peer.tls == TlsPolicy::Opportunistic => {
            tracing::info!(%host, %reason, "TLS handshake failed; retrying this host without TLS");
            session(settings, peer, envelope, message, TlsPolicy::Disabled).await
        }
        other => other,
    }
}

async fn session(
    settings: &DeliverySettings,
    peer: &Peer<'_>,
    envelope: &Envelope,
    message: &[u8],
    tls: TlsPolicy,
) -> Result<Delivered, SessionError> {
    let stream = connect(peer, settings.connect_timeout).await?;
    let mut conn = Conn {
        io: Box::new(stream),
        parser: ReplyParser::new(),
        host: peer.name.to_string(),
        timeout: settings.command_timeout,
    };
    let greeting = conn.reply().await?;
    if !greeting.is_positive() {
        let _ = conn.command("QUIT\r\n").await;
        return Err(conn.refused(greeting));
    }
    let ext = hello(&mut conn, &settings.hostname).await?;
    let (mut conn, ext, secure) = starttls(conn, ext, peer, tls, &settings.hostname).await?;
    if let Some(creds) = peer.auth {
        if !secure {
            return Err(SessionError::TlsRequired {
                host: conn.host.clone(),
                reason: "credentials are never sent without TLS".into(),
            });
        }
        authenticate(&mut conn, &ext, creds).await?;
    }
    if let Some(reply) = unfit(&ext, envelope, message, &conn.host) {
        let _ = conn.command("QUIT\r\n").await;
        return Ok(Delivered {
            results: vec![RecipientResult::Fail(reply); envelope.recipients.len()],
            peer_dsn: ext.dsn,
            tls: secure,
        });
    }
    let replies = transaction(&mut conn, &ext, envelope, message, settings.data_timeout).await?;
    // The results go back to be written to the spool at once; QUIT and its 221 are
    // exchanged meanwhile, so they add nothing to the window in which a crash could make us
    // send the message again.
    tokio::spawn(async move {
        let _ = conn.command("QUIT\r\n").await;
    });
    Ok(Delivered {
        results: replies.results(envelope.recipients.len()),
        peer_dsn: ext.dsn,
        tls: secure,
    })
}

/// STARTTLS as `tls` asks, with the EHLO after it: the connection (upgraded or not), the
/// extensions in force and whether it is encrypted.
async fn starttls(
    mut conn: Conn,
    ext: Extensions,
    peer: &Peer<'_>,
    tls: TlsPolicy,
    hostname: &str,
) -> Result<(Conn, Extensions, bool), SessionError> {
    if tls == TlsPolicy::Disabled {
        return Ok((conn, ext, false));
    }
    if !ext.starttls {
        if tls == TlsPolicy::Required {
            let _ = conn.command("QUIT\r\n").await;
            return Err(SessionError::TlsRequired {
                host: conn.host.clone(),
                reason: "the peer does not offer STARTTLS".into(),
            });
        }
        return Ok((conn, ext, false));
    }
    let reply = conn.command("STARTTLS\r\n").await?;
    if reply.code != 220 {
        if tls == TlsPolicy::Required {
            return Err(SessionError::TlsRequired {
                host: conn.host.clone(),
                reason: format!("STARTTLS was refused: {reply}"),
            });
        }
        return Ok((conn, ext, false));
    }
    // Bytes the peer sent after its 220 would be read as if they came over TLS: the
    // injection of CVE-2011-0411, on the client side. Refuse the peer.
    if conn.parser.is_partial() {
        return Err(conn.broken("data after the STARTTLS reply (injection attempt)"));
    }
    let mut conn = upgrade(conn, peer.name).await?;
    let ext = match conn.command(&format!("EHLO {hostname}\r\n")).await? {
        reply if reply.is_positive() => Extensions::from_ehlo(&reply),
        reply => return Err(conn.refused(reply)),
    };
    Ok((conn, ext, true))
}

/// Why the peer cannot take this message at all (its announced SIZE, no SMTPUTF8 for a
/// message that needs it): the permanent failure of every recipient.
fn unfit(ext: &Extensions, envelope: &Envelope, message: &[u8], host: &str) -> Option<Reply> {
    let size = message.len() as u64;
    if ext.refuses_size(size) {
        return Some(Reply::new(
            552,
            Some(portcullis_smtp::Enhanced(5, 3, 4)),
            format!(
                "message of {size} octets exceeds the limit of {} announced by {host}",
                ext.size.unwrap_or(0),
            ),
        ));
    }
    if client::needs_smtputf8(envelope) && !ext.smtputf8 {
        return Some(Reply::new(
            553,
            Some(portcullis_smtp::Enhanced(5, 6, 7)),
            format!("{host} does not support SMTPUTF8, which this message needs"),
        ));
    }
    None
}

/// EHLO, falling back to HELO for a peer that does not know it (RFC 5321 3.2).
async fn hello(conn: &mut Conn, hostname: &str) -> Result<Extensions, SessionError> {
    let reply = conn.command(&format!("EHLO {hostname}\r\n")).await?;
    if reply.is_positive() {
        return Ok(Extensions::from_ehlo(&reply));
    }
    if reply.code == 421 {
        return Err(conn.refused(reply));
    }
    let reply = conn.command(&format!("HELO {hostname}\r\n")).await?;
    if reply.is_positive() {
        Ok(Extensions::default())
    } else {
        Err(conn.refused(reply))
    }
}

async fn authenticate(conn: &mut Conn, ext: &Extensions, creds: &RelayLogin) -> Result<(), SessionError> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let has = |m: &str| ext.auth.iter().any(|a| a == m);
    let reply = if has("PLAIN") {
        let token = b64.encode(format!("\0{}\0{}", creds.username, creds.password));
        conn.command(&format!("AUTH PLAIN {token}\r\n")).await?
    } else if has("LOGIN") {
        let first = conn.command("AUTH LOGIN\r\n").await?;
        if first.code != 334 {
            return Err(conn.refused(first));
        }
        let second = conn
            .command(&format!("{}\r\n", b64.encode(&creds.username)))
            .await?;
        if second.code != 334 {
            return Err(conn.refused(second));
        }
        conn.command(&format!("{}\r\n", b64.encode(&creds.password)))
            .await?
    } else {
        return Err(conn.broken("the smarthost offers neither AUTH PLAIN nor AUTH LOGIN"));
    };
    if reply.code == 235 {
        Ok(())
    } else {
        Err(conn.refused(reply))
    }
}

/// MAIL, RCPT ×n, DATA (in one write when the peer pipelines), then the content.
async fn transaction(
    conn: &mut Conn,
    ext: &Extensions,
    envelope: &Envelope,
    message: &[u8],
    data_timeout: Duration,
) -> Result<TransactionReplies, SessionError> {
    let mail = client::mail_command(envelope, ext, message.len() as u64);
    let rcpts: Vec<String> = envelope
        .recipients
        .iter()
        .map(|r| client::rcpt_command(r, ext))
        .collect();
    let mut replies = TransactionReplies {
        mail: Reply::new(0, None, ""),
        rcpts: Vec::with_capacity(rcpts.len()),
        data: None,
        done: None,
    };
    if ext.pipelining {
        // RFC 2920: MAIL, every RCPT and DATA go in one write; the replies come in order.
        let mut batch = mail.into_bytes();
        for r in &rcpts {
            batch.extend_from_slice(r.as_bytes());
        }
        batch.extend_from_slice(b"DATA\r\n");
        conn.send(&batch).await?;
        replies.mail = conn.reply().await?;
        for _ in &rcpts {
            replies.rcpts.push(Some(conn.reply().await?));
        }
        replies.data = Some(conn.reply().await?);
    } else {
        replies.mail = conn.command(&mail).await?;
        if !replies.mail.is_positive() {
            return Ok(replies);
        }
        for r in &rcpts {
            let reply = conn.command(r).await?;
            replies.rcpts.push(Some(reply));
        }
        if replies.rcpts.iter().flatten().any(Reply::is_positive) {
            replies.data = Some(conn.command("DATA\r\n").await?);
        }
    }
    let accepted = replies.mail.is_positive() && replies.rcpts.iter().flatten().any(Reply::is_positive);
    match &replies.data {
        Some(data) if data.code == 354 && accepted => {
            conn.send(&client::dot_stuff(message)).await?;
            // The window in which a crash can duplicate the message (RFC 5321 6.1) opens with
            // this reply; the caller persists the result before anything else.
            replies.done = Some(conn.reply_within(data_timeout).await?);
        }
        Some(data) if data.code == 354 => {
            // Pipelined DATA accepted though no recipient was: send an empty message's end
            // so the peer discards it (RFC 2920 3.1).
            conn.send(b".\r\n").await?;
            let _ = conn.reply().await?;
        }
        _ => {}
    }
    Ok(replies)
}

async fn upgrade(conn: Conn, name: &str) -> Result<Conn, SessionError> {
    let server_name = ServerName::try_from(name.to_string())
        .unwrap_or_else(|_| ServerName::try_from("invalid.invalid").expect("a valid literal name"));
    let connector = tokio_rustls::TlsConnector::from(tls_config());
    let Conn {
        io, host, timeout, ..
    } = conn;
    match tokio::time::timeout(timeout, connector.connect(server_name, io)).await {
        Ok(Ok(tls)) => Ok(Conn {
            io: Box::new(tls),
            parser: ReplyParser::new(),
            host,
            timeout,
        }),
        Ok(Err(e)) => Err(SessionError::TlsRequired {
            host,
            reason: format!("the TLS handshake failed: {e}"),
        }),
        Err(_) => Err(SessionError::TlsRequired {
            host,
            reason: "the TLS handshake timed out".into(),
        }),
    }
}

/// The client TLS configuration: encryption without certificate verification, as for
/// Postfix's `may` and `encrypt` levels. Server-to-server SMTP has no PKI to check against
/// (MX names rarely match certificates); DANE and MTA-STS would add one and are not done.
fn tls_config() -> Arc<rustls::ClientConfig> {
    static CONFIG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    Arc::clone(CONFIG.get_or_init(|| {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoCertificateCheck(provider)))
            .with_no_client_auth();
        Arc::new(config)
    }))
}

/// Accepts any certificate, but still checks the handshake signatures, so the session is
/// encrypted to whoever holds the presented key.
#[derive(Debug)]
struct NoCertificateCheck(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoCertificateCheck {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
