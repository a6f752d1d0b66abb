//! The connection driver: moves bytes between a socket and a `Session<P>` and answers the
//! session's requests. It holds no SMTP logic; every decision is the core's or a hook's.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use portcullis_smtp::session::{Action, PipelineKind, ReadTimeout, SessionInfo, SpoolFailure};
use portcullis_smtp::{Pipeline, Session, SpoolRequest, Verdict};
use portcullis_spool::QueueId;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::server::TlsStream;

use crate::abuse::AuthGate;
use crate::context::{Context, Phase};
use crate::hooks::Event;
use crate::live::Live;
use crate::tls;
use portcullis_smtp::escape::Escaped;

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

/// What the driver does next, after an action.
enum Step {
    Continue,
    /// The client went away, or the session was closed.
    End,
}

/// One session's driver: the socket, the session, and one method per action it asks for.
struct Driver<P: Pipeline> {
    ctx: Arc<Context>,
    /// This session's rules and certificate, fixed for its whole life (a reload only
    /// affects sessions accepted after it).
    live: Arc<Live>,
    listener: &'static str,
    peer: SocketAddr,
    phase: watch::Receiver<Phase>,
    stream: Stream,
    session: Session<P>,
    /// Replies not yet written.
    out: Vec<u8>,
    /// What the next read goes into.
    buf: Vec<u8>,
    tally: Tally,
    /// When the command line begun by the octets the session holds must be complete.
    command_deadline: Option<Instant>,
    /// Content under way: when it began, and the octets received since.
    content: Option<(Instant, u64)>,
}

/// Runs one session of pipeline `P` to its end. `implicit_tls` is the submissions (465) case.
pub async fn run<P: Pipeline>(
    ctx: Arc<Context>,
    tcp: TcpStream,
    peer: SocketAddr,
    implicit_tls: bool,
    phase: watch::Receiver<Phase>,
) {
    let _ = tcp.set_nodelay(true);
    let local = tcp.local_addr().ok();
    let listener: &'static str = match (P::KIND, implicit_tls) {
        (portcullis_smtp::session::PipelineKind::Mx, _) => "mx",
        (_, false) => "submission",
        (_, true) => "submissions",
    };
    let _active = crate::metrics::session_opened(listener);
    let live = ctx.live();
    let mut stream = Stream::Plain(tcp);
    let tls = if implicit_tls {
        match Box::pin(stream.upgrade(&live)).await {
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
    if let Some(local) = local {
        session.connected(peer.port(), local);
    }
    let mut driver = Driver {
        ctx,
        live,
        listener,
        peer,
        phase,
        stream,
        session,
        out: Vec::with_capacity(1024),
        // Commands fit in 1 KiB; the buffer grows to 16 KiB chunks at the first DATA, so
        // that the thousands of sessions of a connection flood that never get there stay
        // small.
        buf: Vec::with_capacity(1024),
        tally: Tally::default(),
        command_deadline: None,
        content: None,
    };
    let result = driver.drive().await;
    driver.log_end(result);
}

impl<P: Pipeline> Driver<P> {
    async fn drive(&mut self) -> io::Result<()> {
        loop {
            let step = match self.session.poll() {
                Action::Reply(reply) => self.reply(&reply),
                Action::Read => self.read().await?,
                Action::Pause(delay) => {
                    self.flush().await?;
                    tokio::time::sleep(delay).await;
                    Step::Continue
                }
                // The steps a session takes now and then run as futures of their own on
                // the heap: held inline, the largest of them would size every session's
                // task, idle ones included (7 KiB of each of 10,000 idle sessions).
                Action::StartTls => Box::pin(self.start_tls()).await?,
                Action::Authenticate(credentials) => Box::pin(self.authenticate(credentials)).await?,
                Action::LookUpRecipient(mailbox) => Box::pin(self.look_up_recipient(mailbox)).await?,
                Action::CallHook(call) => Box::pin(self.call_hook(call)).await?,
                Action::CheckAuthentication(message) => Box::pin(self.check_authentication(message)).await?,
                Action::Spool(request) => Box::pin(self.spool(request)).await?,
                Action::Close => {
                    self.flush().await?;
                    self.stream.shutdown().await;
                    Step::End
                }
            };
            if let Step::End = step {
                return Ok(());
            }
        }
    }

    fn reply(&mut self, reply: &portcullis_smtp::Reply) -> Step {
        if reply.code >= 400 {
            tracing::debug!(reply = %reply.to_string().trim_end(), "refused");
        }
        reply.write_to(&mut self.out);
        Step::Continue
    }

    async fn flush(&mut self) -> io::Result<()> {
        if !self.out.is_empty() {
            self.stream.write_all(&self.out).await?;
            self.out.clear();
        }
        Ok(())
    }

    /// Reads what the client sends next, within the time it has; a drain closes an idle
    /// session (or, once closing, any).
    async fn read(&mut self) -> io::Result<Step> {
        self.flush().await?;
        let stop_now = |p: &Phase, idle: bool| *p == Phase::Closing || (*p == Phase::Draining && idle);
        if stop_now(&self.phase.borrow(), self.session.is_idle()) {
            self.session.shut_down();
            return Ok(Step::Continue);
        }
        let (deadline, what) = self.deadline();
        tokio::select! {
            read = tokio::time::timeout_at(deadline.into(), self.stream.read(&mut self.buf)) => match read {
                Err(_) => {
                    crate::metrics::timed_out(self.listener, what);
                    tracing::info!(what, "client too slow; closing");
                    self.session.timed_out();
                }
                Ok(Ok(0)) => return Ok(Step::End),
                Ok(Ok(n)) => {
                    if let Some((_, received)) = &mut self.content {
                        *received += n as u64;
                    } else if self.command_deadline.is_none() {
                        // The first octets of a command line: it must be complete in time.
                        self.command_deadline = Some(Instant::now() + self.live.config.limits.command_timeout.0);
                    }
                    self.session.feed(&self.buf[..n]);
                }
                Ok(Err(e)) => return Err(e),
            },
            changed = self.phase.changed() => {
                if changed.is_err() || stop_now(&self.phase.borrow(), self.session.is_idle()) {
                    self.session.shut_down();
                }
            }
        }
        Ok(Step::Continue)
    }

    /// When the read about to start must have returned, and what is being waited for.
    ///
    /// A command line must be complete within `command-timeout` of its first octet (a
    /// client dripping one octet at a time gains nothing); with nothing pending, the wait
    /// for the next command is `command-timeout`. Content must keep arriving within
    /// `data-timeout` per read, and, once `data-timeout` has passed since it began, at
    /// `min-data-rate` octets a second on average (Postfix's `smtpd_min_data_rate`).
    fn deadline(&mut self) -> (Instant, &'static str) {
        let limits = &self.live.config.limits;
        let now = Instant::now();
        match self.session.read_timeout() {
            ReadTimeout::Command => {
                self.content = None;
                if self.session.pending_input() == 0 {
                    self.command_deadline = None;
                }
                let deadline = self.command_deadline.unwrap_or(now + limits.command_timeout.0);
                (deadline, "command")
            }
            ReadTimeout::Data => {
                self.command_deadline = None;
                let (started, received) = *self.content.get_or_insert_with(|| {
                    // Commands fit in 1 KiB; the buffer grows to 16 KiB chunks only here,
                    // so that the sessions of a connection flood stay small.
                    self.buf.reserve_exact(16 * 1024);
                    (now, 0)
                });
                let rate = limits.min_data_rate.max(1);
                let earned = Duration::from_secs_f64(received as f64 / rate as f64);
                let by_rate = started + limits.data_timeout.0 + earned;
                let per_read = now + limits.data_timeout.0;
                (by_rate.min(per_read), "content")
            }
        }
    }

    async fn start_tls(&mut self) -> io::Result<Step> {
        self.flush().await?;
        if self.session.discarded_after_starttls() > 0 {
            tracing::warn!(
                octets = self.session.discarded_after_starttls(),
                "discarded cleartext pipelined after STARTTLS (CVE-2011-0411 pattern)"
            );
        }
        let info = match self.stream.upgrade(&self.live).await {
            Ok(info) => {
                crate::metrics::tls_handshake(self.listener, "ok");
                info
            }
            Err(e) => {
                crate::metrics::tls_handshake(self.listener, "failed");
                return Err(e);
            }
        };
        match &info.peer_subject {
            Some(subject) => {
                tracing::info!(protocol = %info.protocol, cipher = %info.cipher, peer_subject = %subject, "TLS established; the client presented a certificate")
            }
            None => tracing::info!(protocol = %info.protocol, cipher = %info.cipher, "TLS established"),
        }
        self.session.tls_established(info).map_err(io::Error::other)?;
        Ok(Step::Continue)
    }

    async fn authenticate(&mut self, credentials: portcullis_smtp::session::Credentials) -> io::Result<Step> {
        let username = credentials.username.clone();
        let limits = &self.live.config.limits;
        let ip = self.peer.ip();
        let outcome = match self.ctx.auth_failures.gate(ip, &username, limits) {
            AuthGate::Closed => {
                tracing::warn!(user = %Escaped(&username), "authentication refused unchecked: too many failures from this address recently");
                crate::metrics::auth_throttled();
                self.session
                    .resolve_auth(portcullis_smtp::AuthOutcome::Throttled)
                    .map_err(io::Error::other)?;
                return Ok(Step::Continue);
            }
            AuthGate::Slow(delay) => {
                tracing::info!(user = %Escaped(&username), delay = ?delay, "slowing down authentication for a name that keeps failing");
                tokio::time::sleep(delay).await;
                self.check(credentials).await
            }
            AuthGate::Open => self.check(credentials).await,
        };
        let result = match &outcome {
            portcullis_smtp::AuthOutcome::Accept { account } => {
                tracing::info!(account = %Escaped(account), "authenticated");
                "accepted"
            }
            portcullis_smtp::AuthOutcome::Reject => {
                tracing::warn!(user = %Escaped(&username), "authentication failed");
                self.ctx
                    .auth_failures
                    .record(ip, &username, &self.live.config.limits);
                "rejected"
            }
            portcullis_smtp::AuthOutcome::TempFail | portcullis_smtp::AuthOutcome::Throttled => {
                tracing::warn!(user = %Escaped(&username), "authentication could not be checked");
                "tempfail"
            }
        };
        crate::metrics::auth(result);
        self.session.resolve_auth(outcome).map_err(io::Error::other)?;
        Ok(Step::Continue)
    }

    /// Asks Dovecot's user database whether a local address the users file does not hold
    /// exists.
    async fn look_up_recipient(&mut self, mailbox: portcullis_smtp::Mailbox) -> io::Result<Step> {
        use crate::dovecot::UserAnswer;
        use portcullis_smtp::session::RecipientLookup;
        // The account the address names, as the users file keeps them: no detail, lower case.
        let base = mailbox.without_detail();
        let owner = portcullis_smtp::Mailbox {
            local: base.local.to_lowercase(),
            domain: base.domain.to_lowercase(),
        };
        let lookup = match &self.live.userdb {
            None => RecipientLookup::Unknown,
            Some(userdb) => match userdb.lookup(&owner.to_string()).await {
                UserAnswer::Exists(_) => RecipientLookup::Exists(owner),
                UserAnswer::Unknown => RecipientLookup::Unknown,
                UserAnswer::Unavailable(why) => {
                    tracing::warn!(recipient = %Escaped(&mailbox.to_string()), error = %why, "Dovecot's userdb could not say whether the recipient exists; answering 451");
                    crate::metrics::dovecot_unavailable("userdb");
                    RecipientLookup::TempFail
                }
            },
        };
        tracing::debug!(recipient = %Escaped(&mailbox.to_string()), lookup = ?lookup, "recipient looked up in Dovecot's userdb");
        self.session.resolve_recipient(lookup).map_err(io::Error::other)?;
        Ok(Step::Continue)
    }

    /// The credential check itself (users file, Dovecot, auth plugins), waiting its turn at most a
    /// command timeout.
    async fn check(
        &self,
        credentials: portcullis_smtp::session::Credentials,
    ) -> portcullis_smtp::AuthOutcome {
        let wait = self.live.config.limits.command_timeout.0;
        self.ctx
            .hooks
            .authenticate(
                Arc::clone(&self.live.accounts),
                self.live.dovecot.as_ref(),
                self.session.info(),
                credentials,
                wait,
            )
            .await
    }

    async fn call_hook(&mut self, call: portcullis_smtp::HookCall) -> io::Result<Step> {
        // Plugins see the client's reverse name: looked up once per session, at its first
        // hook call (a session that never reaches a hook costs no lookup).
        if self.session.info().reverse.is_none() {
            let (name, confirmed) = self.live.resolver.reverse_name(self.peer.ip()).await;
            tracing::debug!(name = name.as_deref().unwrap_or("-"), confirmed, "reverse name");
            self.session
                .reverse_looked_up(portcullis_smtp::session::ReverseName { name, confirmed });
        }
        // The queue id is given before the first hook of a transaction, so that plugins
        // and the log name the message as the spool and Received: will.
        if self.session.info().queue_id.is_none() {
            self.session
                .assign_queue_id(portcullis_spool::QueueId::generate().to_string());
        }
        let decision = self.ctx.hooks.call(&call, self.session.info()).await;
        let outcome = match &decision.verdict {
            Verdict::Reject(_) => Some("refused"),
            Verdict::Defer(_) => Some("deferred"),
            Verdict::Discard => Some("discarded"),
            _ => None,
        };
        if let Some(outcome) = outcome {
            crate::metrics::message(self.listener, outcome, call.hook().name());
        }
        if let Some(Event::VirusFromAccount {
            account,
            virus,
            message,
        }) = decision.event
        {
            let client = self.peer.ip().to_string();
            let hostname = &self.live.config.server.hostname;
            self.ctx
                .notices
                .virus_from_account(hostname, &account, &virus, &client, &message)
                .await;
        }
        self.session.record_plugin_verdicts(decision.verdicts);
        self.session.remove_header_fields(decision.remove);
        self.session
            .resolve_hook(decision.verdict)
            .map_err(io::Error::other)?;
        Ok(Step::Continue)
    }

    /// The mail authentication checks of MX, whose verdict the session applies like a
    /// hook's.
    async fn check_authentication(&mut self, message: Arc<portcullis_smtp::Message>) -> io::Result<Step> {
        let (verdict, results) = self
            .live
            .checks
            .run(self.session.info(), &message, &self.live.settings.storage)
            .await;
        self.session.record_authentication(results);
        let outcome = match &verdict {
            Verdict::Reject(_) => Some("refused"),
            Verdict::Defer(_) => Some("deferred"),
            _ => None,
        };
        if let Some(outcome) = outcome {
            crate::metrics::message(self.listener, outcome, "authentication");
        }
        self.session.resolve_checks(verdict).map_err(io::Error::other)?;
        Ok(Step::Continue)
    }

    async fn spool(&mut self, request: SpoolRequest) -> io::Result<Step> {
        let result = spool(&self.ctx, &self.live, self.session.info(), request).await;
        let (outcome, reason) = match &result {
            Ok(_) => {
                self.tally.accepted += 1;
                ("accepted", "")
            }
            Err(_) => {
                self.tally.refused += 1;
                ("deferred", "spool")
            }
        };
        crate::metrics::message(self.listener, outcome, reason);
        self.session.resolve_spool(result).map_err(io::Error::other)?;
        Ok(Step::Continue)
    }

    /// The closing log line, in the style of Postfix's.
    fn log_end(&self, result: io::Result<()>) {
        let summary = self.session.command_counts();
        let ip = self.peer.ip();
        match result {
            Ok(()) => tracing::info!(
                accepted = self.tally.accepted,
                spool_failures = self.tally.refused,
                "disconnect from [{ip}] {summary}"
            ),
            Err(e) => tracing::info!(
                error = %e,
                accepted = self.tally.accepted,
                "disconnect from [{ip}] after an I/O error {summary}"
            ),
        }
    }
}

/// The `DKIM-Signature:` lines for `message` (off the async threads: a large content is
/// read back from its file). A failure to sign refuses the message for now (451): sent
/// unsigned, it could fail DMARC at every receiver.
async fn sign(live: &Live, message: &Arc<portcullis_smtp::Message>) -> Result<String, SpoolFailure> {
    let (signers, message) = (Arc::clone(&live.signers), Arc::clone(message));
    let signed = tokio::task::spawn_blocking(move || signers.sign(&message.body)).await;
    match signed {
        Ok(Ok(lines)) => Ok(lines.concat()),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "cannot sign the message; refused for now");
            Err(SpoolFailure(e.to_string()))
        }
        Err(e) => Err(SpoolFailure(format!("signing task failed: {e}"))),
    }
}

/// The ranges of `section` (a header section) holding fields named in `names`.
fn named_fields(section: &[u8], names: &[String]) -> Vec<(u64, u64)> {
    if names.is_empty() {
        return Vec::new();
    }
    portcullis_smtp::fields::fields(section)
        .into_iter()
        .filter(|field| names.iter().any(|name| field.is(name)))
        .map(|field| (field.range.start as u64, field.range.end as u64))
        .collect()
}

/// Two lists of whole fields' ranges as one, in order, each field once.
fn merge_ranges(mut a: Vec<(u64, u64)>, b: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    a.extend(b);
    a.sort_unstable();
    a.dedup();
    a
}

/// Hands the message to the spool writer ([`crate::spool_writer`]); answers once it is durable.
async fn spool(
    ctx: &Arc<Context>,
    live: &Live,
    info: &SessionInfo,
    request: SpoolRequest,
) -> Result<String, SpoolFailure> {
    let id = request
        .queue_id
        .as_deref()
        .and_then(QueueId::parse)
        .unwrap_or_else(QueueId::generate);
    let date = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc2822)
        .unwrap_or_default();
    let message = request.message;
    // Submitted mail is signed for its From: domain, over the content as it will be
    // delivered (what goes before it is trace and hook headers, which are not signed).
    let mut head = if info.pipeline == PipelineKind::Submission && !live.signers.is_empty() {
        sign(live, &message).await?
    } else {
        String::new()
    };
    head += &portcullis_smtp::received::received_header(
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
    // Authentication-Results that claim to be ours came from outside: left out; so are the
    // fields the hooks asked to remove.
    let section = message.body.header_section();
    let forged = live.checks.forged_results(&section);
    if !forged.is_empty() {
        tracing::info!(
            fields = forged.len(),
            "removed Authentication-Results header fields that claim to be ours"
        );
    }
    let removed = named_fields(&section, &request.remove);
    if !removed.is_empty() {
        tracing::info!(
            fields = removed.len(),
            names = ?request.remove,
            "removed header fields the hooks asked to remove"
        );
    }
    let omit = merge_ranges(forged, removed);
    let accepted = portcullis_spool::Accepted {
        id,
        message,
        head,
        omit,
        folder: request.folder,
        // Only an authenticated sender hears of successful deliveries: on MX the sender is
        // merely claimed, and a notice to a forged one is backscatter.
        success_notices: info.pipeline == PipelineKind::Submission,
    };
    match ctx.writer.store(accepted).await {
        Ok(entry) => Ok(entry.id.to_string()),
        Err(e) => Err(SpoolFailure(e)),
    }
}
