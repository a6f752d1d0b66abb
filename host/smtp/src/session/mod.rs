//! The session state machine shared by both pipelines.
//!
//! Bytes and host answers go in; [`Action`]s come out of [`Session::poll`]. Where the host
//! must decide something asynchronously (TLS handshake, credentials, a hook verdict, durable
//! storage) the machine stops in a named state and keeps answering `poll` with the same
//! request until the matching `resolve_*` call moves it on — the model is rustls's
//! `Accepted`. Nothing here reads a socket, a clock or a file.

mod pipeline;
mod sasl;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::marker::PhantomData;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

pub use pipeline::{Mx, Pipeline, PipelineKind, RoutedRecipient, Submission};
pub use sasl::Credentials;
use sasl::SaslError;

use crate::address::{Mailbox, Path, Syntax};
use crate::command::{self, Command, Mechanism, ParseError};
use crate::data::{BareLf, ContentReceiver, Progress};
use crate::envelope::{Envelope, MailParams, RcptParams, Recipient};
use crate::replies;
use crate::reply::{Enhanced, Reply};

/// The longest command line, with its CRLF. RFC 5321 4.5.3.1.4 says 512, but RFC 3461
/// adds up to 500 octets of DSN parameters to RCPT and 100 to MAIL, and SIZE and AUTH= add
/// to MAIL too; Postfix's `line_length_limit` is 2048, and so is this.
pub const MAX_COMMAND_LINE: usize = 2048;
/// RFC 4954 4: a SASL response line may be up to 12288 octets.
pub const MAX_SASL_LINE: usize = 12288;

/// What the host knows about mailboxes: pure lookups, no I/O.
pub trait Directory: Send + Sync {
    /// The domain that `<postmaster>` and bare account names belong to.
    fn primary_domain(&self) -> &str;
    /// Whether mail for `domain` is delivered here.
    fn is_local_domain(&self, domain: &str) -> bool;
    /// The mailbox whose Maildir receives mail for `address` (in a local domain), or `None`
    /// when nobody does (`550 5.1.1`): the account itself for `account+detail`, the
    /// configured postmaster account for `postmaster@` and `abuse@`.
    fn resolve(&self, address: &Mailbox) -> Option<Mailbox>;
    /// Whether the authenticated `account` may use `mailbox` as its sender.
    fn may_send_as(&self, account: &str, mailbox: &Mailbox) -> bool;
}

/// Per-session limits, all from the operator's config.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest message accepted, in octets.
    pub message_size: usize,
    /// Recipients per message before `452 4.5.3` (RFC 5321 asks for at least 100).
    pub recipients: usize,
    /// Longest text line in content, with its CRLF (RFC 5321: at least 1000).
    pub line_length: usize,
    /// What a content line ending in a bare LF gets.
    pub bare_lf: BareLf,
    /// How strictly MAIL, RCPT and EHLO are read.
    pub syntax: Syntax,
    /// Refused commands before the session is closed.
    pub errors: u32,
    /// Failed AUTH attempts before the session is closed.
    pub auth_failures: u32,
    /// Pause before answering the n-th failed AUTH: n times this.
    pub auth_failure_delay: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            message_size: 25 * 1024 * 1024,
            recipients: 100,
            line_length: 64 * 1024,
            bare_lf: BareLf::Normalize,
            syntax: Syntax::Lenient,
            errors: 20,
            auth_failures: 3,
            auth_failure_delay: Duration::from_secs(1),
        }
    }
}

/// What every session of a listener shares.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Our name, in the greeting, EHLO reply and trace headers.
    pub hostname: String,
    /// The limits.
    pub limits: Limits,
    /// Whether a certificate is loaded, so STARTTLS can be offered.
    pub tls_available: bool,
}

/// The negotiated TLS parameters, for trace headers and hooks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsInfo {
    /// For example `TLSv1.3`.
    pub protocol: String,
    /// For example `TLS13_AES_256_GCM_SHA384`.
    pub cipher: String,
}

/// How far the client has proven itself.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Security {
    /// Set once TLS is up (STARTTLS or implicit).
    pub tls: Option<TlsInfo>,
    /// The authenticated account, once AUTH succeeded.
    pub account: Option<String>,
}

/// How the client greeted us.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Greeting {
    /// EHLO name.
    Ehlo(String),
    /// HELO name.
    Helo(String),
}

impl Greeting {
    /// The name the client claimed.
    pub fn name(&self) -> &str {
        match self {
            Greeting::Ehlo(n) | Greeting::Helo(n) => n,
        }
    }
}

/// What the host and hooks may know about the session.
#[derive(Clone, Debug)]
pub struct SessionInfo {
    /// Which pipeline runs.
    pub pipeline: PipelineKind,
    /// The client's address.
    pub peer: IpAddr,
    /// The current EHLO/HELO, if any.
    pub greeting: Option<Greeting>,
    /// TLS and AUTH state.
    pub security: Security,
}

/// A per-message decision point.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Hook {
    /// Rate limits, once the envelope is complete (submission).
    Rate,
    /// Virus scan of the content (both pipelines).
    Virus,
    /// Spam classification of the content (MX).
    Spam,
}

impl Hook {
    /// The hook's name in config and logs.
    pub fn name(self) -> &'static str {
        match self {
            Hook::Rate => "rate",
            Hook::Virus => "virus",
            Hook::Spam => "spam",
        }
    }
}

/// A header field a hook asks to add.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// Field name, for example `X-Spam-Score`.
    pub name: String,
    /// Field value.
    pub value: String,
}

/// A hook's decision about one message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Go on to the next hook.
    Accept,
    /// Go on, adding these headers.
    Tag(Vec<Header>),
    /// Deliver into the Junk folder, adding these headers.
    Junk(Vec<Header>),
    /// Refuse permanently (a 5xx reply; anything else becomes `554 5.7.1`).
    Reject(Reply),
    /// Refuse temporarily (a 4xx reply; anything else becomes `451 4.7.1`).
    Defer(Reply),
    /// Answer 250 and drop the message.
    Discard,
}

/// Where a local recipient's copy goes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Folder {
    /// The inbox.
    #[default]
    Inbox,
    /// The `.Junk` Maildir folder.
    Junk,
}

/// A received message with its envelope, shared with hooks and the spool without copies.
#[derive(Debug)]
pub struct Message {
    /// Sender and recipients.
    pub envelope: Envelope,
    /// The content as received (CRLF lines, dot-unstuffed).
    pub body: Vec<u8>,
}

/// What the host must make durable before the session may say 250.
#[derive(Clone, Debug)]
pub struct SpoolRequest {
    /// The message.
    pub message: Arc<Message>,
    /// Headers the hooks asked to add.
    pub headers: Vec<Header>,
    /// Where local copies go.
    pub folder: Folder,
}

/// The host's answer to [`Action::Authenticate`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthOutcome {
    /// The credentials are good; the session acts as `account` from now on.
    Accept {
        /// The account name the credentials belong to.
        account: String,
    },
    /// The credentials are wrong.
    Reject,
    /// The credential store could not answer.
    TempFail,
}

/// Which RFC 5321 timeout applies to the next read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadTimeout {
    /// Waiting for a command (RFC 5321 4.5.3.2: 5 minutes).
    Command,
    /// Waiting for content (RFC 5321 4.5.3.2.6: 3 minutes per block).
    Data,
}

/// What the host must do next.
#[derive(Clone, Debug)]
pub enum Action {
    /// Send this reply (buffer it; flush before reading or blocking).
    Reply(Reply),
    /// Wait this long before going on (the tarpit after failed AUTH).
    Pause(Duration),
    /// Flush, then run the TLS handshake and call [`Session::tls_established`].
    StartTls,
    /// Verify these credentials and call [`Session::resolve_auth`].
    Authenticate(Credentials),
    /// Run this hook on [`Session::info`], [`Session::envelope`] and [`Session::message`],
    /// then call [`Session::resolve_hook`].
    CallHook(Hook),
    /// Make this durable and call [`Session::resolve_spool`].
    Spool(SpoolRequest),
    /// Flush replies, then read more bytes and pass them to [`Session::feed`].
    Read,
    /// Flush replies, then close the connection.
    Close,
}

/// How many of each command a session received, for the closing log line (in the style
/// of Postfix's `disconnect from ... ehlo=1 mail=1 rcpt=1 data=1 quit=1 commands=5`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CommandCounts {
    counts: [u32; VERBS.len()],
}

const VERBS: [&str; 14] = [
    "ehlo", "helo", "starttls", "auth", "mail", "rcpt", "data", "bdat", "rset", "noop", "vrfy", "help",
    "quit", "unknown",
];

impl CommandCounts {
    fn add(&mut self, verb: &str) {
        let index = VERBS.iter().position(|v| *v == verb).unwrap_or(VERBS.len() - 1);
        self.counts[index] += 1;
    }

    /// All commands received.
    pub fn total(&self) -> u32 {
        self.counts.iter().sum()
    }

    /// How many times `verb` (lower case, as in the log line) was received.
    pub fn get(&self, verb: &str) -> u32 {
        VERBS
            .iter()
            .position(|v| *v == verb)
            .map_or(0, |i| self.counts[i])
    }
}

impl std::fmt::Display for CommandCounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (verb, count) in VERBS.iter().zip(self.counts) {
            if count > 0 {
                write!(f, "{verb}={count} ")?;
            }
        }
        write!(f, "commands={}", self.total())
    }
}

/// The host called a `resolve_*` method the machine was not waiting for: a host bug.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the session is not waiting for {0}")]
pub struct UsageError(&'static str);

/// Why the spool could not store a message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("spool failure: {0}")]
pub struct SpoolFailure(pub String);

#[derive(Clone, Copy, Debug)]
enum Stage {
    BeforeData,
    BeforeChunk { size: u64, last: bool },
    AfterContent,
}

#[derive(Debug)]
enum SaslStep {
    Plain,
    LoginUser,
    LoginPassword(String),
}

#[derive(Debug)]
enum State {
    Command,
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
    AwaitingVerdict {
        hook: Hook,
        stage: Stage,
        index: usize,
    },
    AwaitingSpool(SpoolRequest),
    Closed,
}

#[derive(Debug)]
struct Transaction {
    mail_from: Option<Mailbox>,
    params: MailParams,
    recipients: Vec<Recipient>,
    chunks: Option<ContentReceiver>,
    checked: bool,
    discard: bool,
    message: Option<Arc<Message>>,
    headers: Vec<Header>,
    folder: Folder,
}

impl Transaction {
    fn envelope(&self) -> Envelope {
        Envelope {
            mail_from: self.mail_from.clone(),
            params: self.params.clone(),
            recipients: self.recipients.clone(),
        }
    }
}

enum LineRead {
    Line(Vec<u8>),
    Incomplete,
    TooLong { complete: bool },
    BareEnding,
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
                pipeline: P::KIND,
                peer,
                greeting: None,
                security: Security { tls, account: None },
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
        self.txn.as_ref().and_then(|t| t.message.as_ref())
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
                State::AwaitingVerdict { hook, .. } => return Action::CallHook(*hook),
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
            account: None,
        };
        self.info.greeting = None;
        self.txn = None;
        self.state = State::Command;
        Ok(())
    }

    /// The host's verdict on the credentials of [`Action::Authenticate`].
    pub fn resolve_auth(&mut self, outcome: AuthOutcome) -> Result<(), UsageError> {
        if !matches!(self.state, State::AwaitingAuth(_)) {
            return Err(UsageError("credentials to be checked"));
        }
        self.state = State::Command;
        match outcome {
            AuthOutcome::Accept { account } => {
                self.info.security.account = Some(account);
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
        }
        Ok(())
    }

    /// A hook's verdict for [`Action::CallHook`].
    pub fn resolve_hook(&mut self, verdict: Verdict) -> Result<(), UsageError> {
        let State::AwaitingVerdict { stage, index, .. } = self.state else {
            return Err(UsageError("a hook verdict"));
        };
        let Some(txn) = self.txn.as_mut() else {
            return Err(UsageError("a hook verdict"));
        };
        match verdict {
            Verdict::Accept => {}
            Verdict::Tag(headers) => txn.headers.extend(headers),
            Verdict::Junk(headers) => {
                txn.headers.extend(headers);
                txn.folder = Folder::Junk;
            }
            Verdict::Discard => txn.discard = true,
            Verdict::Reject(reply) => {
                let reply = if reply.is_permanent() {
                    reply
                } else {
                    Reply::fixed(554, Some(Enhanced(5, 7, 1)), "Message rejected")
                };
                self.refuse(stage, reply);
                return Ok(());
            }
            Verdict::Defer(reply) => {
                let reply = if reply.is_transient() {
                    reply
                } else {
                    Reply::fixed(451, Some(Enhanced(4, 7, 1)), "Message deferred, try again later")
                };
                self.refuse(stage, reply);
                return Ok(());
            }
        }
        self.run_hooks(stage, index + 1);
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

    fn take_line(&mut self, max: usize) -> LineRead {
        match self.input.iter().position(|b| *b == b'\n') {
            Some(lf) => {
                if lf == 0 || self.input[lf - 1] != b'\r' || self.input[..lf - 1].contains(&b'\r') {
                    return LineRead::BareEnding;
                }
                if lf + 1 > max {
                    self.input.drain(..=lf);
                    return LineRead::TooLong { complete: true };
                }
                let line = self.input[..lf - 1].to_vec();
                self.input.drain(..=lf);
                LineRead::Line(line)
            }
            None => {
                let bare_cr = self
                    .input
                    .iter()
                    .position(|b| *b == b'\r')
                    .is_some_and(|cr| cr + 1 < self.input.len());
                if bare_cr {
                    LineRead::BareEnding
                } else if self.input.len() >= max {
                    self.input.clear();
                    LineRead::TooLong { complete: false }
                } else {
                    LineRead::Incomplete
                }
            }
        }
    }

    /// Handles buffered input; false when nothing more can be done without more bytes.
    fn process_input(&mut self) -> bool {
        match &mut self.state {
            State::Command | State::Sasl(_) => {
                let max = if matches!(self.state, State::Command) {
                    MAX_COMMAND_LINE
                } else {
                    MAX_SASL_LINE
                };
                match self.take_line(max) {
                    LineRead::Line(line) => {
                        if matches!(self.state, State::Command) {
                            self.command(&line);
                        } else {
                            self.sasl_line(&line);
                        }
                    }
                    LineRead::Incomplete => return false,
                    LineRead::TooLong { complete } => {
                        if !complete {
                            self.state = State::SkipLine;
                        } else if matches!(self.state, State::Sasl(_)) {
                            self.state = State::Command;
                        }
                        self.refuse_command(replies::LINE_TOO_LONG);
                    }
                    LineRead::BareEnding => {
                        self.reply(replies::BARE_LINE_ENDING);
                        self.close();
                    }
                }
            }
            State::SkipLine => match self.input.iter().position(|b| *b == b'\n') {
                Some(lf) => {
                    self.input.drain(..=lf);
                    self.state = State::Command;
                }
                None => {
                    self.input.clear();
                    return false;
                }
            },
            State::Data(receiver) => {
                let (consumed, progress) = receiver.ingest_dot(&self.input);
                self.input.drain(..consumed);
                match progress {
                    Progress::NeedMore => return false,
                    Progress::Complete => {
                        let State::Data(receiver) = std::mem::replace(&mut self.state, State::Command) else {
                            unreachable!("matched State::Data above");
                        };
                        match receiver.failure() {
                            Some(e) => {
                                self.txn = None;
                                self.reply(replies::content_error(e));
                            }
                            None => self.content_complete(receiver.into_body()),
                        }
                    }
                    Progress::Fatal(_) => {
                        self.reply(replies::BARE_LINE_ENDING);
                        self.close();
                    }
                }
            }
            State::Chunk {
                remaining, refusal, ..
            } => {
                let take = (*remaining).min(self.input.len() as u64) as usize;
                *remaining -= take as u64;
                let done = *remaining == 0;
                if refusal.is_none()
                    && let Some(receiver) = self.txn.as_mut().and_then(|t| t.chunks.as_mut())
                {
                    receiver.ingest_counted(&self.input[..take]);
                }
                self.input.drain(..take);
                if !done {
                    return false;
                }
                self.chunk_complete();
            }
            State::AwaitingTls
            | State::AwaitingAuth(_)
            | State::AwaitingVerdict { .. }
            | State::AwaitingSpool(_)
            | State::Closed => return false,
        }
        true
    }

    fn command(&mut self, line: &[u8]) {
        let parsed = command::parse(line, self.settings.limits.syntax);
        self.counts.add(match &parsed {
            Ok(Command::Ehlo(_)) => "ehlo",
            Ok(Command::Helo(_)) => "helo",
            Ok(Command::StartTls) => "starttls",
            Ok(Command::Auth { .. }) => "auth",
            Ok(Command::Mail { .. }) => "mail",
            Ok(Command::Rcpt { .. }) => "rcpt",
            Ok(Command::Data) => "data",
            Ok(Command::Bdat { .. }) => "bdat",
            Ok(Command::Rset) => "rset",
            Ok(Command::Noop) => "noop",
            Ok(Command::Vrfy) => "vrfy",
            Ok(Command::Help) => "help",
            Ok(Command::Quit) => "quit",
            Ok(Command::Expn) | Err(_) => "unknown",
        });
        let command = match parsed {
            Ok(c) => c,
            Err(ParseError::Http) => {
                self.reply(replies::NOT_HTTP);
                self.close();
                return;
            }
            Err(e) => return self.refuse_command(replies::parse_error(&e)),
        };
        if let Err(reply) = P::gate(&command, &self.info.security) {
            return self.refuse_command(reply);
        }
        match command {
            Command::Ehlo(name) => {
                self.txn = None;
                self.info.greeting = Some(Greeting::Ehlo(name));
                let reply = self.ehlo_reply();
                self.reply(reply);
            }
            Command::Helo(name) => {
                self.txn = None;
                self.info.greeting = Some(Greeting::Helo(name));
                self.reply(replies::helo(&self.settings.hostname));
            }
            Command::StartTls => self.starttls(),
            Command::Auth { mechanism, initial } => self.auth(mechanism, initial),
            Command::Mail { path, params } => self.mail(path, params),
            Command::Rcpt { path, params } => self.rcpt(path, params),
            Command::Data => self.data(),
            Command::Bdat { size, last } => self.bdat(size, last),
            Command::Rset => {
                self.txn = None;
                self.reply(replies::RESET);
            }
            Command::Noop => self.reply(replies::OK),
            Command::Quit => {
                self.reply(replies::BYE);
                self.close();
            }
            Command::Vrfy => self.reply(replies::VRFY),
            Command::Expn => self.refuse_command(replies::NOT_IMPLEMENTED),
            Command::Help => self.reply(replies::HELP),
        }
    }

    fn ehlo_reply(&self) -> Reply {
        let security = &self.info.security;
        let mut lines = vec![
            self.settings.hostname.clone(),
            "PIPELINING".into(),
            format!("SIZE {}", self.settings.limits.message_size),
            "8BITMIME".into(),
            "ENHANCEDSTATUSCODES".into(),
            "SMTPUTF8".into(),
            "CHUNKING".into(),
            "DSN".into(),
        ];
        if security.tls.is_none() && self.settings.tls_available {
            lines.push("STARTTLS".into());
        }
        if P::OFFERS_AUTH && security.tls.is_some() && security.account.is_none() {
            lines.push("AUTH PLAIN LOGIN".into());
        }
        Reply::new(250, None, lines.join("\n"))
    }

    fn starttls(&mut self) {
        if self.info.security.tls.is_some() {
            return self.refuse_command(replies::TLS_ALREADY);
        }
        if !self.settings.tls_available {
            return self.reply(replies::TLS_UNAVAILABLE);
        }
        self.reply(replies::START_TLS);
        // CVE-2011-0411: anything pipelined after STARTTLS was sent in cleartext and must
        // not be read as if it came through TLS.
        self.discarded_after_starttls = self.input.len();
        self.input.clear();
        self.state = State::AwaitingTls;
    }

    fn auth(&mut self, mechanism: Mechanism, initial: Option<String>) {
        let security = &self.info.security;
        let refusal = if !P::OFFERS_AUTH {
            Some(replies::AUTH_NOT_OFFERED)
        } else if security.tls.is_none() {
            Some(replies::TLS_REQUIRED)
        } else if self.info.greeting.is_none() {
            Some(replies::HELLO_FIRST)
        } else if security.account.is_some() {
            Some(replies::AUTH_ALREADY)
        } else if self.txn.is_some() {
            Some(replies::AUTH_IN_TRANSACTION)
        } else {
            None
        };
        if let Some(reply) = refusal {
            return self.refuse_command(reply);
        }
        match (mechanism, initial) {
            (Mechanism::Plain, None) => {
                self.reply(replies::AUTH_EMPTY_CHALLENGE);
                self.state = State::Sasl(SaslStep::Plain);
            }
            (Mechanism::Plain, Some(response)) => self.sasl_result(sasl::plain(&response)),
            (Mechanism::Login, None) => {
                self.reply(replies::AUTH_USERNAME);
                self.state = State::Sasl(SaslStep::LoginUser);
            }
            (Mechanism::Login, Some(response)) => match sasl::decode(&response) {
                Ok(user) => {
                    self.reply(replies::AUTH_PASSWORD);
                    self.state = State::Sasl(SaslStep::LoginPassword(user));
                }
                Err(e) => self.sasl_result(Err(e)),
            },
        }
    }

    fn sasl_line(&mut self, line: &[u8]) {
        let State::Sasl(step) = std::mem::replace(&mut self.state, State::Command) else {
            return;
        };
        let Ok(line) = std::str::from_utf8(line) else {
            return self.sasl_result(Err(SaslError::Malformed));
        };
        match step {
            SaslStep::Plain => self.sasl_result(sasl::plain(line)),
            SaslStep::LoginUser => match sasl::decode(line) {
                Ok(user) => {
                    self.reply(replies::AUTH_PASSWORD);
                    self.state = State::Sasl(SaslStep::LoginPassword(user));
                }
                Err(e) => self.sasl_result(Err(e)),
            },
            SaslStep::LoginPassword(username) => {
                let result = sasl::decode(line).map(|password| Credentials {
                    mechanism: Mechanism::Login,
                    authzid: None,
                    username,
                    password,
                });
                self.sasl_result(result)
            }
        }
    }

    fn sasl_result(&mut self, result: Result<Credentials, SaslError>) {
        match result {
            Ok(credentials) => self.state = State::AwaitingAuth(credentials),
            Err(SaslError::Cancelled) => self.refuse_command(replies::AUTH_CANCELLED),
            Err(SaslError::Malformed) => self.refuse_command(replies::AUTH_MALFORMED),
        }
    }

    fn mail(&mut self, path: Path, params: MailParams) {
        let refusal = if self.info.greeting.is_none() {
            Some(replies::HELLO_FIRST)
        } else if self.txn.is_some() {
            Some(replies::NESTED_MAIL)
        } else if params
            .size
            .is_some_and(|s| s > self.settings.limits.message_size as u64)
        {
            Some(replies::SIZE_DECLARED_TOO_BIG)
        } else if path.mailbox.as_ref().is_some_and(Mailbox::is_utf8) && !params.smtputf8 {
            Some(replies::UTF8_REQUIRED)
        } else {
            P::check_sender(&path, &self.info.security, self.directory.as_ref()).err()
        };
        if let Some(reply) = refusal {
            return self.refuse_command(reply);
        }
        self.txn = Some(Transaction {
            mail_from: path.mailbox,
            params,
            recipients: Vec::new(),
            chunks: None,
            checked: false,
            discard: false,
            message: None,
            headers: Vec::new(),
            folder: Folder::Inbox,
        });
        self.reply(replies::SENDER_OK);
    }

    fn rcpt(&mut self, path: Path, params: RcptParams) {
        let Some(txn) = self.txn.as_ref() else {
            return self.refuse_command(replies::MAIL_FIRST);
        };
        if txn.chunks.is_some() {
            return self.refuse_command(replies::MAIL_FIRST);
        }
        if txn.recipients.len() >= self.settings.limits.recipients {
            return self.reply(replies::TOO_MANY_RECIPIENTS);
        }
        if path.mailbox.as_ref().is_some_and(Mailbox::is_utf8) && !txn.params.smtputf8 {
            return self.refuse_command(replies::UTF8_REQUIRED);
        }
        match P::check_recipient(&path, self.directory.as_ref()) {
            Ok(routed) => {
                if let Some(txn) = self.txn.as_mut()
                    && !txn.recipients.iter().any(|r| r.mailbox == routed.mailbox)
                {
                    txn.recipients.push(Recipient {
                        mailbox: routed.mailbox,
                        params,
                        local: routed.local,
                        deliver_to: routed.deliver_to,
                    });
                }
                self.reply(replies::RECIPIENT_OK);
            }
            Err(reply) => self.refuse_command(reply),
        }
    }

    /// Whether the open transaction may receive content; the refusal otherwise.
    fn content_refusal(&self) -> Option<Reply> {
        match &self.txn {
            None => Some(replies::MAIL_FIRST),
            Some(t) if t.recipients.is_empty() => Some(replies::NO_RECIPIENTS),
            Some(_) => None,
        }
    }

    fn data(&mut self) {
        if let Some(reply) = self.content_refusal() {
            return self.refuse_command(reply);
        }
        if self.txn.as_ref().is_some_and(|t| t.chunks.is_some()) {
            return self.refuse_command(replies::DATA_AFTER_BDAT);
        }
        self.run_hooks(Stage::BeforeData, 0);
    }

    fn bdat(&mut self, size: u64, last: bool) {
        // The chunk's octets follow whatever we answer, so they are always read.
        if let Some(reply) = self.content_refusal() {
            self.errors += 1;
            self.state = State::Chunk {
                remaining: size,
                size,
                last,
                refusal: Some(reply),
            };
            return;
        }
        let checked = self.txn.as_ref().is_some_and(|t| t.checked);
        if checked {
            self.enter_chunk(size, last);
        } else {
            self.run_hooks(Stage::BeforeChunk { size, last }, 0);
        }
    }

    fn enter_chunk(&mut self, size: u64, last: bool) {
        let limits = &self.settings.limits;
        if let Some(txn) = self.txn.as_mut() {
            txn.chunks.get_or_insert_with(|| {
                ContentReceiver::new(limits.message_size, limits.line_length, limits.bare_lf)
            });
        }
        self.state = State::Chunk {
            remaining: size,
            size,
            last,
            refusal: None,
        };
    }

    fn chunk_complete(&mut self) {
        let State::Chunk {
            size, last, refusal, ..
        } = std::mem::replace(&mut self.state, State::Command)
        else {
            return;
        };
        if let Some(reply) = refusal {
            return self.reply(reply);
        }
        let Some(receiver) = self.txn.as_mut().and_then(|t| t.chunks.as_mut()) else {
            return self.reply(replies::MAIL_FIRST);
        };
        if last {
            receiver.finish_counted();
        }
        if let Some(e) = receiver.failure() {
            self.txn = None;
            return self.reply(replies::content_error(e));
        }
        if !last {
            return self.reply(replies::chunk_ok(size));
        }
        let body = self
            .txn
            .as_mut()
            .and_then(|t| t.chunks.take())
            .map(ContentReceiver::into_body)
            .unwrap_or_default();
        self.content_complete(body);
    }

    fn content_complete(&mut self, body: Vec<u8>) {
        let Some(txn) = self.txn.as_mut() else {
            return self.reply(replies::MAIL_FIRST);
        };
        txn.message = Some(Arc::new(Message {
            envelope: txn.envelope(),
            body,
        }));
        self.run_hooks(Stage::AfterContent, 0);
    }

    /// Stops at the next hook of `stage` from `from` on, or finishes the stage.
    fn run_hooks(&mut self, stage: Stage, from: usize) {
        let hooks = match stage {
            Stage::AfterContent => P::AFTER_CONTENT,
            Stage::BeforeData | Stage::BeforeChunk { .. } => P::BEFORE_CONTENT,
        };
        if let Some(hook) = hooks.get(from) {
            self.state = State::AwaitingVerdict {
                hook: *hook,
                stage,
                index: from,
            };
            return;
        }
        let Some(txn) = self.txn.as_mut() else {
            self.state = State::Command;
            return self.reply(replies::MAIL_FIRST);
        };
        match stage {
            Stage::BeforeData => {
                txn.checked = true;
                let limits = &self.settings.limits;
                self.state = State::Data(ContentReceiver::new(
                    limits.message_size,
                    limits.line_length,
                    limits.bare_lf,
                ));
                self.reply(replies::START_DATA);
            }
            Stage::BeforeChunk { size, last } => {
                txn.checked = true;
                self.enter_chunk(size, last);
            }
            Stage::AfterContent if txn.discard => {
                self.txn = None;
                self.state = State::Command;
                self.reply(replies::DISCARDED);
            }
            Stage::AfterContent => match &txn.message {
                Some(message) => {
                    self.state = State::AwaitingSpool(SpoolRequest {
                        message: Arc::clone(message),
                        headers: txn.headers.clone(),
                        folder: txn.folder,
                    });
                }
                None => {
                    self.txn = None;
                    self.state = State::Command;
                    self.reply(replies::MAIL_FIRST);
                }
            },
        }
    }

    fn refuse(&mut self, stage: Stage, reply: Reply) {
        self.txn = None;
        match stage {
            Stage::BeforeChunk { size, last } => {
                self.state = State::Chunk {
                    remaining: size,
                    size,
                    last,
                    refusal: Some(reply),
                };
            }
            Stage::BeforeData | Stage::AfterContent => {
                self.state = State::Command;
                self.reply(reply);
            }
        }
    }
}
