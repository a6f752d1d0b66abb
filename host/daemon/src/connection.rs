//! The connection driver: moves bytes between a socket and a `Session<P>` and answers the
//! session's requests. It holds no SMTP logic; every decision is the core's or a hook's.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use portcullis_smtp::session::{Action, ReadTimeout, SessionInfo, SpoolFailure};
use portcullis_smtp::{Pipeline, Session, SpoolRequest, Verdict};
use portcullis_spool::QueueId;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::server::TlsStream;

use crate::hooks::Event;
use crate::live::Live;
use crate::server::{Context, Phase};
use crate::tls;

/// The socket, before and after TLS.
enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    Closed,
}

impl Stream {
    /// Reads into `buf`'s spare capacity (not zeroed first: an idle session's buffer is
    /// never touched).
    async fn read(&mut self, buf: &mut Vec<u8>) -> io::Result<usize> {
        buf.clear();
        match self {
            Stream::Plain(s) => s.read_buf(buf).await,
            Stream::Tls(s) => s.read_buf(buf).await,
            Stream::Closed => Ok(0),
        }
    }

    async fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.write_all(data).await,
            Stream::Tls(s) => {
                s.write_all(data).await?;
                s.flush().await
            }
            Stream::Closed => Err(io::ErrorKind::NotConnected.into()),
        }
    }

    async fn shutdown(&mut self) {
        let _ = match self {
            Stream::Plain(s) => s.shutdown().await,
            Stream::Tls(s) => s.shutdown().await,
            Stream::Closed => Ok(()),
        };
    }

    /// Runs the server handshake over the plain socket, within the command timeout (a
    /// client that opens a connection and says nothing must not hold it forever).
    async fn upgrade(&mut self, live: &Live) -> io::Result<portcullis_smtp::session::TlsInfo> {
        let Stream::Plain(tcp) = std::mem::replace(self, Stream::Closed) else {
            return Err(io::Error::other(
                "TLS requested on a stream that is not plain TCP",
            ));
        };
        let acceptor = live
            .tls
            .as_ref()
            .ok_or_else(|| io::Error::other("TLS requested without a certificate"))?;
        let limit = live.config.limits.command_timeout.0;
        let tls = tokio::time::timeout(limit, acceptor.accept(tcp))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))??;
        let info = tls::info(tls.get_ref().1);
        *self = Stream::Tls(Box::new(tls));
        Ok(info)
    }
}

/// What a session did, for its closing log line.
#[derive(Debug, Default)]
struct Tally {
    accepted: u32,
    refused: u32,
}

/// Runs one session of pipeline `P` to its end. `implicit_tls` is the submissions (465) case.
pub async fn run<P: Pipeline>(
    ctx: Arc<Context>,
    tcp: TcpStream,
    peer: SocketAddr,
    implicit_tls: bool,
    mut phase: watch::Receiver<Phase>,
) {
    let _ = tcp.set_nodelay(true);
    let listener: &'static str = match (P::KIND, implicit_tls) {
        (portcullis_smtp::session::PipelineKind::Mx, _) => "mx",
        (_, false) => "submission",
        (_, true) => "submissions",
    };
    let _active = crate::metrics::session_opened(listener);
    // This session's rules and certificate, fixed for its whole life (a reload only
    // affects sessions accepted after it).
    let live = ctx.live();
    let mut stream = Stream::Plain(tcp);
    let tls = if implicit_tls {
        match stream.upgrade(&live).await {
            Ok(info) => {
                crate::metrics::tls_handshake(listener, "ok");
                Some(info)
            }
            Err(e) => {
                crate::metrics::tls_handshake(listener, "failed");
                tracing::info!(error = %e, "TLS handshake failed");
                return;
            }
        }
    } else {
        None
    };
    tracing::info!(peer = %peer, tls = tls.is_some(), "connect");
    let mut session = Session::<P>::new(
        Arc::clone(&live.settings),
        Arc::clone(&live.accounts) as Arc<dyn portcullis_smtp::Directory>,
        peer.ip(),
        tls,
    );
    let mut out = Vec::with_capacity(1024);
    // Commands fit in 1 KiB; the buffer grows to 16 KiB chunks at the first DATA, so that
    // the thousands of sessions of a connection flood that never get there stay small.
    let mut buf = Vec::with_capacity(1024);
    let mut tally = Tally::default();
    let result: io::Result<()> = async {
        loop {
            match session.poll() {
                Action::Reply(reply) => {
                    if reply.code >= 400 {
                        tracing::debug!(reply = %reply.to_string().trim_end(), "refused");
                    }
                    reply.write_to(&mut out);
                }
                Action::Read => {
                    flush(&mut stream, &mut out).await?;
                    let limit = match session.read_timeout() {
                        ReadTimeout::Command => live.config.limits.command_timeout.0,
                        ReadTimeout::Data => {
                            buf.clear();
                            buf.reserve_exact(16 * 1024);
                            live.config.limits.data_timeout.0
                        }
                    };
                    let stop_now =
                        |p: &Phase, idle: bool| *p == Phase::Closing || (*p == Phase::Draining && idle);
                    if stop_now(&phase.borrow(), session.is_idle()) {
                        session.shut_down();
                        continue;
                    }
                    tokio::select! {
                        read = tokio::time::timeout(limit, stream.read(&mut buf)) => match read {
                            Err(_) => session.timed_out(),
                            Ok(Ok(0)) => return Ok(()),
                            Ok(Ok(n)) => session.feed(&buf[..n]),
                            Ok(Err(e)) => return Err(e),
                        },
                        changed = phase.changed() => {
                            if changed.is_err() || stop_now(&phase.borrow(), session.is_idle()) {
                                session.shut_down();
                            }
                        }
                    }
                }
                Action::Pause(delay) => {
                    flush(&mut stream, &mut out).await?;
                    tokio::time::sleep(delay).await;
                }
                Action::StartTls => {
                    flush(&mut stream, &mut out).await?;
                    if session.discarded_after_starttls() > 0 {
                        tracing::warn!(
                            octets = session.discarded_after_starttls(),
                            "discarded cleartext pipelined after STARTTLS (CVE-2011-0411 pattern)"
                        );
                    }
                    let info = match stream.upgrade(&live).await {
                        Ok(info) => {
                            crate::metrics::tls_handshake(listener, "ok");
                            info
                        }
                        Err(e) => {
                            crate::metrics::tls_handshake(listener, "failed");
                            return Err(e);
                        }
                    };
                    tracing::info!(protocol = %info.protocol, cipher = %info.cipher, "TLS established");
                    session.tls_established(info).map_err(io::Error::other)?;
                }
                Action::Authenticate(credentials) => {
                    let username = credentials.username.clone();
                    let outcome = ctx
                        .hooks
                        .authenticate(Arc::clone(&live.accounts), session.info(), credentials)
                        .await;
                    let result = match &outcome {
                        portcullis_smtp::AuthOutcome::Accept { account } => {
                            tracing::info!(%account, "authenticated");
                            "accepted"
                        }
                        portcullis_smtp::AuthOutcome::Reject => {
                            tracing::warn!(%username, "authentication failed");
                            "rejected"
                        }
                        portcullis_smtp::AuthOutcome::TempFail => {
                            tracing::warn!(%username, "authentication could not be checked");
                            "tempfail"
                        }
                    };
                    crate::metrics::auth(result);
                    session.resolve_auth(outcome).map_err(io::Error::other)?;
                }
                Action::CallHook(call) => {
                    let decision = ctx.hooks.call(&call, session.info()).await;
                    if let Some(outcome) = match &decision.verdict {
                        Verdict::Reject(_) => Some("refused"),
                        Verdict::Defer(_) => Some("deferred"),
                        Verdict::Discard => Some("discarded"),
                        _ => None,
                    } {
                        crate::metrics::message(listener, outcome, call.hook().name());
                    }
                    if let Some(Event::VirusFromAccount {
                        account,
                        virus,
                        message,
                    }) = decision.event
                    {
                        let client = peer.ip().to_string();
                        ctx.notices
                            .virus_from_account(
                                &live.config.server.hostname,
                                &account,
                                &virus,
                                &client,
                                &message,
                            )
                            .await;
                    }
                    session.resolve_hook(decision.verdict).map_err(io::Error::other)?;
                }
                Action::Spool(request) => {
                    let result = spool(&ctx, &live, session.info(), request).await;
                    let (outcome, reason) = match &result {
                        Ok(_) => {
                            tally.accepted += 1;
                            ("accepted", "")
                        }
                        Err(_) => {
                            tally.refused += 1;
                            ("deferred", "spool")
                        }
                    };
                    crate::metrics::message(listener, outcome, reason);
                    session.resolve_spool(result).map_err(io::Error::other)?;
                }
                Action::Close => {
                    flush(&mut stream, &mut out).await?;
                    stream.shutdown().await;
                    return Ok(());
                }
            }
        }
    }
    .await;
    let summary = session.command_counts();
    match result {
        Ok(()) => tracing::info!(
            accepted = tally.accepted,
            spool_failures = tally.refused,
            "disconnect from [{}] {summary}",
            peer.ip()
        ),
        Err(e) => tracing::info!(
            error = %e,
            accepted = tally.accepted,
            "disconnect from [{}] after an I/O error {summary}",
            peer.ip()
        ),
    }
}

async fn flush(stream: &mut Stream, out: &mut Vec<u8>) -> io::Result<()> {
    if !out.is_empty() {
        stream.write_all(out).await?;
        out.clear();
    }
    Ok(())
}

/// Hands the message to the spool writer ([`crate::accept`]); answers once it is durable.
async fn spool(
    ctx: &Arc<Context>,
    live: &Live,
    info: &SessionInfo,
    request: SpoolRequest,
) -> Result<String, SpoolFailure> {
    let id = QueueId::generate();
    let date = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc2822)
        .unwrap_or_default();
    let message = request.message;
    let mut head = portcullis_smtp::received::received_header(
        info,
        &live.config.server.hostname,
        id.as_str(),
        &message.envelope,
        &date,
    );
    for header in &request.headers {
        match portcullis_smtp::session::Header::sanitized(&header.name, &header.value) {
            Some(header) => head.push_str(&header.line()),
            None => tracing::warn!(name = %header.name, "dropped a hook header with an invalid name"),
        }
    }
    let accepted = crate::accept::Accepted {
        id,
        message,
        head,
        folder: request.folder,
        // Only an authenticated sender hears of successful deliveries: on MX the sender is
        // merely claimed, and a notice to a forged one is backscatter.
        success_notices: info.pipeline == portcullis_smtp::session::PipelineKind::Submission,
    };
    match ctx.writer.store(accepted).await {
        Ok(entry) => Ok(entry.id.to_string()),
        Err(e) => Err(SpoolFailure(e)),
    }
}
