//! The session state machine shared by both pipelines.
//!
//! Bytes and host answers go in; [`Action`]s come out of [`Session::poll`]. Where the host
//! must decide something asynchronously (TLS handshake, credentials, a hook verdict, durable
//! storage) the machine stops in a named state and keeps answering `poll` with the same
//! request until the matching `resolve_*` call moves it on — the model is rustls's
//! `Accepted`. Nothing here reads a socket, a clock or a file.
//!
//! # Layout
//!
//! - this file: the [`Session`] and what the host calls on it;
//! - [`types`]: the values that cross the boundary (limits, directory, verdicts, actions);
//! - `framing`: bytes into command lines, SASL lines, DATA and BDAT content;
//! - `commands`: the commands outside a mail transaction (EHLO, STARTTLS, AUTH, ...);
//! - `transaction`: MAIL, RCPT, DATA and BDAT, and the transaction's phases;
//! - `verdicts`: the hook points of a transaction and what their verdicts do;
//! - [`counts`]: the commands received, for the closing log line;
//! - [`pipeline`]: the two fixed flows as types.

mod commands;
pub mod counts;
mod framing;
mod pipeline;
mod sasl;
#[cfg(test)]
mod tests;
mod transaction;
pub mod types;
mod verdicts;

use std::collections::VecDeque;
use std::marker::PhantomData;
use std::net::IpAddr;
use std::sync::Arc;

pub use counts::{CommandCounts, Verb};
pub use pipeline::{Mx, Pipeline, PipelineKind, RoutedRecipient, Submission};
pub use sasl::Credentials;
pub use types::{
    Action, AuthMethod, AuthOutcome, AuthResult, AuthStatus, Destination, Directory, Folder, Greeting,
    Header, Hook, HookCall, Limits, Message, PluginVerdict, ReadTimeout, RecipientLookup, ReverseName,
    Security, SessionInfo, Settings, SpoolFailure, SpoolRequest, Target, TlsInfo, UsageError, Verdict,
};

use crate::address::Mailbox;
use crate::data::ContentReceiver;
use crate::envelope::Envelope;
use crate::replies;
use crate::reply::Reply;
use transaction::Transaction;
use verdicts::Stage;

/// The longest command line, with its CRLF. RFC 5321 4.5.3.1.4 says 512, but RFC 3461
/// adds up to 500 octets of DSN parameters to RCPT and 100 to MAIL, and SIZE and AUTH= add
/// to MAIL too; Postfix's `line_length_limit` is 2048, and so is this.
pub const MAX_COMMAND_LINE: usize = 2048;
/// RFC 4954 4: a SASL response line may be up to 12288 octets.
pub const MAX_SASL_LINE: usize = 12288;

/// Where a SASL exchange is.
#[derive(Debug)]
enum SaslStep {
    Plain,
    LoginUser,
    LoginPassword(String),
}

/// What the machine is doing: reading something, or waiting for the host.
#[derive(Debug)]
enum State {
    Command,
    /// Skipping the rest of an over-long command line.
    SkipLine,
    Sasl(SaslStep),
    Data(ContentReceiver),
    Chunk {
        remaining: u64,
        size: u64,
        last: bool,
        refusal: Option<Reply>,
    },
    AwaitingTls,
    AwaitingAuth(Credentials),
    /// A RCPT whose local address the outside user database is asked about.
    AwaitingRecipient {
        mailbox: Mailbox,
        params: crate::envelope::RcptParams,
    },
    AwaitingVerdict {
        call: HookCall,
        stage: Stage,
        index: usize,
    },
    AwaitingChecks(Arc<Message>),
    AwaitingSpool(SpoolRequest),
    Closed,
}

/// One SMTP session of pipeline `P`, from greeting to close.
pub struct Session<P: Pipeline> {
    settings: Arc<Settings>,
    directory: Arc<dyn Directory>,
    info: SessionInfo,
    state: State,
    txn: Option<Transaction>,
    input: Vec<u8>,
    outbox: VecDeque<Action>,
    errors: u32,
    auth_failures: u32,
    discarded_after_starttls: usize,
    counts: CommandCounts,
    pipeline: PhantomData<fn() -> P>,
}

impl<P: Pipeline> Session<P> {
    /// Starts a session; the greeting is the first action. `tls` is set for implicit TLS (465).
    pub fn new(
        settings: Arc<Settings>,
        directory: Arc<dyn Directory>,
        peer: IpAddr,
        tls: Option<TlsInfo>,
    ) -> Self {
        let mut outbox = VecDeque::new();
        outbox.push_back(Action::Reply(replies::greeting(&settings.hostname)));
        Session {
            info: SessionInfo {
                implicit_tls: tls.is_some(),
                security: Security {
                    tls,
                    ..Security::default()
                },
                ..SessionInfo::new(P::KIND, peer)
            },
            settings,
            directory,
            state: State::Command,
            txn: None,
            input: Vec::new(),
            outbox,
            errors: 0,
            auth_failures: 0,
            discarded_after_starttls: 0,
            counts: CommandCounts::default(),
            pipeline: PhantomData,
        }
    }

    /// Tells the session the client's port and the local address it connected to (facts
    /// the plugins see); the IP address was given to [`Session::new`].
    pub fn connected(&mut self, client_port: u16, local: std::net::SocketAddr) {
        self.info.client_port = client_port;
        self.info.local = Some(local);
    }

    /// Gives the transaction under way the queue id its message will be spooled under, so
    /// that hooks and logs can name it before it is accepted. Nothing without a
    /// transaction.
    pub fn assign_queue_id(&mut self, id: String) {
        if let Some(txn) = self.txn.as_mut() {
            txn.queue_id = Some(id.clone());
            self.info.queue_id = Some(id);
        }
    }

    /// Records what the plugins of a hook decided, for the hooks after it (call it before
    /// [`Session::resolve_hook`]). Nothing without a transaction.
    pub fn record_plugin_verdicts(&mut self, verdicts: Vec<PluginVerdict>) {
        if let Some(txn) = self.txn.as_mut() {
            txn.earlier.extend(verdicts);
        }
    }

    /// Records what the mail authentication checks found about the message under way, for
    /// its content hooks (call it before [`Session::resolve_checks`]). Nothing without a
    /// transaction.
    pub fn record_authentication(&mut self, results: Vec<AuthResult>) {
        if let Some(txn) = self.txn.as_mut() {
            txn.authentication = results;
        }
    }

    /// Records the names of header fields a hook's plugins asked to remove from the
    /// message as received (checked by the host), applied when it is delivered if the
    /// hook's verdict lets it go on. Nothing without a transaction.
    pub fn remove_header_fields(&mut self, names: Vec<String>) {
        if let Some(txn) = self.txn.as_mut() {
            for name in names {
                if !txn.remove.iter().any(|n| n.eq_ignore_ascii_case(&name)) {
                    txn.remove.push(name);
                }
            }
        }
    }

    /// Records what the host found in the reverse DNS of the client's address.
    pub fn reverse_looked_up(&mut self, reverse: ReverseName) {
        self.info.reverse = Some(reverse);
    }

    /// Who the client is, as far as the session knows.
    pub fn info(&self) -> &SessionInfo {
        &self.info
    }

    /// The envelope of the current transaction, if one is open.
    pub fn envelope(&self) -> Option<Envelope> {
        self.txn.as_ref().map(Transaction::envelope)
    }

    /// The received message, once the content is complete and until the transaction ends.
    pub fn message(&self) -> Option<&Arc<Message>> {
        self.txn.as_ref().and_then(Transaction::message)
    }

    /// Whether no mail transaction is open (the session may be closed without losing work).
    pub fn is_idle(&self) -> bool {
        self.txn.is_none() && matches!(self.state, State::Command | State::SkipLine | State::Sasl(_))
    }

    /// Octets of cleartext that followed STARTTLS in the same read and were dropped
    /// (CVE-2011-0411); the host may log it.
    pub fn discarded_after_starttls(&self) -> usize {
        self.discarded_after_starttls
    }

    /// The commands received so far, by verb.
    pub fn command_counts(&self) -> &CommandCounts {
        &self.counts
    }

    /// Which timeout the host should apply to its next read.
    pub fn read_timeout(&self) -> ReadTimeout {
        match self.state {
            State::Data(_) | State::Chunk { .. } => ReadTimeout::Data,
            _ => ReadTimeout::Command,
        }
    }

    /// Octets received and not yet used: when the session asks for a read, the start of a
    /// command line (or of content) it has not seen the end of. The host's deadlines use
    /// it: a line must be complete within the command timeout from its first octet.
    pub fn pending_input(&self) -> usize {
        self.input.len()
    }

    /// Bytes read from the client.
    pub fn feed(&mut self, bytes: &[u8]) {
        if !matches!(self.state, State::Closed) {
            self.input.extend_from_slice(bytes);
        }
    }

    /// The next thing the host must do.
    pub fn poll(&mut self) -> Action {
        loop {
            if let Some(action) = self.outbox.pop_front() {
                return action;
            }
            match &self.state {
                State::AwaitingTls => return Action::StartTls,
                State::AwaitingAuth(c) => return Action::Authenticate(c.clone()),
                State::AwaitingRecipient { mailbox, .. } => return Action::LookUpRecipient(mailbox.clone()),
                State::AwaitingVerdict { call, .. } => return Action::CallHook(call.clone()),
                State::AwaitingChecks(message) => return Action::CheckAuthentication(Arc::clone(message)),
                State::AwaitingSpool(request) => return Action::Spool(request.clone()),
                State::Closed => return Action::Close,
                _ => {}
            }
            if !self.process_input() {
                return Action::Read;
            }
        }
    }

    /// The client was silent past the timeout.
    pub fn timed_out(&mut self) {
        self.reply(replies::TIMEOUT);
        self.close();
    }

    /// The server is shutting down: say so and close.
    pub fn shut_down(&mut self) {
        self.reply(replies::SHUTTING_DOWN);
        self.close();
    }

    /// The TLS handshake after STARTTLS succeeded: everything learnt before is forgotten
    /// (RFC 3207 4.2) and a new EHLO is required.
    pub fn tls_established(&mut self, tls: TlsInfo) -> Result<(), UsageError> {
        if !matches!(self.state, State::AwaitingTls) {
            return Err(UsageError("a TLS handshake"));
        }
        self.info.security = Security {
            tls: Some(tls),
            ..Security::default()
        };
        self.info.greeting = None;
        self.txn = None;
        self.state = State::Command;
        Ok(())
    }

    /// The host's verdict on the credentials of [`Action::Authenticate`].
    pub fn resolve_auth(&mut self, outcome: AuthOutcome) -> Result<(), UsageError> {
        let credentials = match std::mem::replace(&mut self.state, State::Command) {
            State::AwaitingAuth(credentials) => credentials,
            other => {
                self.state = other;
                return Err(UsageError("credentials to be checked"));
            }
        };
        match outcome {
            AuthOutcome::Accept { account } => {
                self.info.security.account = Some(account);
                self.info.security.mechanism = Some(credentials.mechanism);
                self.reply(replies::AUTH_OK);
            }
            AuthOutcome::Reject => {
                self.auth_failures += 1;
                if self.auth_failures >= self.settings.limits.auth_failures {
                    self.reply(replies::AUTH_FAILED);
                    self.reply(replies::AUTH_TOO_MANY);
                    self.close();
                } else {
                    let delay = self.settings.limits.auth_failure_delay * self.auth_failures;
                    self.outbox.push_back(Action::Pause(delay));
                    self.reply(replies::AUTH_FAILED);
                }
            }
            AuthOutcome::TempFail => self.reply(replies::AUTH_TEMPFAIL),
            AuthOutcome::Throttled => self.reply(replies::AUTH_TOO_MANY_RECENTLY),
        }
        Ok(())
    }

    /// The outside user database's answer for [`Action::LookUpRecipient`].
    pub fn resolve_recipient(&mut self, lookup: RecipientLookup) -> Result<(), UsageError> {
        let (mailbox, params) = match std::mem::replace(&mut self.state, State::Command) {
            State::AwaitingRecipient { mailbox, params } => (mailbox, params),
            other => {
                self.state = other;
                return Err(UsageError("a recipient lookup"));
            }
        };
        let destination = match lookup {
            RecipientLookup::Exists(owner) => Some(Destination::Mailbox(owner)),
            // Nobody of that name there either: the domain's catch-all, if any.
            RecipientLookup::Unknown => self.directory.catch_all(&mailbox),
            RecipientLookup::TempFail => {
                self.reply(replies::RECIPIENT_TEMPFAIL);
                return Ok(());
            }
        };
        match destination {
            Some(destination) => self.add_recipient(
                RoutedRecipient {
                    mailbox,
                    local: true,
                    destination: Some(destination),
                },
                params,
            ),
            None => self.refuse_command(replies::UNKNOWN_USER),
        }
        Ok(())
    }

    /// A hook's verdict for [`Action::CallHook`].
    pub fn resolve_hook(&mut self, verdict: Verdict) -> Result<(), UsageError> {
        let State::AwaitingVerdict { stage, index, .. } = &self.state else {
            return Err(UsageError("a hook verdict"));
        };
        let (stage, index) = (*stage, *index);
        if self.txn.is_none() {
            return Err(UsageError("a hook verdict"));
        }
        self.apply_verdict(stage, index + 1, verdict);
        Ok(())
    }

    /// What the mail authentication checks of [`Action::CheckAuthentication`] decided, as a
    /// verdict: `Tag` with the `Authentication-Results` header to add, `Junk` for a DMARC
    /// quarantine, `Reject` or `Defer` to refuse the message. The content hooks run next.
    pub fn resolve_checks(&mut self, verdict: Verdict) -> Result<(), UsageError> {
        if !matches!(self.state, State::AwaitingChecks(_)) || self.txn.is_none() {
            return Err(UsageError("the authentication checks"));
        }
        self.apply_verdict(Stage::AfterContent, 0, verdict);
        Ok(())
    }

    /// The spool's answer to [`Action::Spool`]: a queue id once the message is durable.
    pub fn resolve_spool(&mut self, result: Result<String, SpoolFailure>) -> Result<(), UsageError> {
        if !matches!(self.state, State::AwaitingSpool(_)) {
            return Err(UsageError("the spool"));
        }
        self.state = State::Command;
        self.txn = None;
        match result {
            Ok(id) => self.reply(replies::queued(&id)),
            Err(_) => self.reply(replies::SPOOL_FAILED),
        }
        Ok(())
    }

    fn reply(&mut self, reply: Reply) {
        self.outbox.push_back(Action::Reply(reply));
    }

    /// A refused command: counts toward the error limit.
    fn refuse_command(&mut self, reply: Reply) {
        self.reply(reply);
        self.errors += 1;
        if self.errors >= self.settings.limits.errors {
            self.reply(replies::TOO_MANY_ERRORS);
            self.close();
        }
    }

    fn close(&mut self) {
        self.state = State::Closed;
        self.input.clear();
        self.txn = None;
    }
}
