//! The values that cross the session's boundary: what the host tells it (limits, the
//! directory, verdicts) and what it asks of the host (actions).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::address::{Mailbox, Syntax};
use crate::content::{Content, Storage};
use crate::data::BareLf;
use crate::envelope::Envelope;
use crate::reply::Reply;

use super::{Credentials, PipelineKind};

/// What the host knows about mailboxes: pure lookups, no I/O.
pub trait Directory: Send + Sync {
    /// The domain that `<postmaster>` and bare account names belong to.
    fn primary_domain(&self) -> &str;
    /// Whether mail for `domain` is delivered here.
    fn is_local_domain(&self, domain: &str) -> bool;
    /// Where mail for `address` (in a local domain) goes, or `None` when nowhere
    /// (`550 5.1.1`): a mailbox (the account itself for `account+detail`, the configured
    /// postmaster account for `postmaster@` and `abuse@`), or the targets of an alias.
    fn resolve(&self, address: &Mailbox) -> Option<Destination>;
    /// Whether the authenticated `account` may use `mailbox` as its sender.
    fn may_send_as(&self, account: &str, mailbox: &Mailbox) -> bool;
    /// Whether an address of a local domain that [`Directory::resolve`] does not know is
    /// looked up by the host in an outside user database (Dovecot's) before it is refused:
    /// the session then asks with [`Action::LookUpRecipient`].
    fn looks_up_unknown(&self) -> bool {
        false
    }
    /// Where mail goes for a local address the outside user database does not know
    /// either: its domain's catch-all alias, if there is one.
    fn catch_all(&self, _address: &Mailbox) -> Option<Destination> {
        None
    }
    /// The reverse-path of a copy that the alias `alias` forwards to another domain, for
    /// a message from `sender`: the sender rewritten (SRS) so that the next hop's SPF
    /// check passes, or `None` to keep it as it is.
    fn forwarding_sender(&self, _sender: &Mailbox, _alias: &Mailbox) -> Option<Mailbox> {
        None
    }
}

/// Where mail for one address of a local domain goes ([`Directory::resolve`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Destination {
    /// A mailbox of ours: the copy goes there.
    Mailbox(Mailbox),
    /// An alias: its targets once expanded (recursively), in order, each once, never
    /// none.
    Alias(Vec<Target>),
}

/// One target of an alias, once expanded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// An address of ours, and the mailbox its copy goes to.
    Local {
        /// The address as the alias names it.
        address: Mailbox,
        /// The mailbox that receives it.
        mailbox: Mailbox,
    },
    /// An address elsewhere: the copy is forwarded through the outbound queue.
    Remote(Mailbox),
}

/// What the host's outside user database said about a recipient.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecipientLookup {
    /// It exists: its mail goes to this mailbox.
    Exists(Mailbox),
    /// Nobody of that name (`550 5.1.1`).
    Unknown,
    /// The database could not answer (`451 4.3.0`: the client tries again later).
    TempFail,
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
    /// Content kept in memory per message; beyond, it goes to a spill file when the
    /// host gives a source ([`Settings::storage`]).
    pub memory_per_message: usize,
    /// Free space the disk of accepted messages keeps: MAIL FROM is answered `452 4.3.1`
    /// while less than this and the declared `SIZE` is free ([`Settings::storage`]
    /// measures it).
    pub spool_min_free: u64,
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
            memory_per_message: 1024 * 1024,
            spool_min_free: 3 * 25 * 1024 * 1024 / 2,
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
    /// Where contents are kept while they arrive.
    pub storage: Storage,
}

/// The negotiated TLS parameters, for trace headers and hooks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsInfo {
    /// For example `TLSv1.3`.
    pub protocol: String,
    /// For example `TLS13_AES_256_GCM_SHA384`.
    pub cipher: String,
    /// The subject of the certificate the client presented (RFC 4514 text, such as
    /// `CN=mail.example.org, O=Example`), when the host asked for one and it gave one.
    /// Not verified against any CA.
    pub peer_subject: Option<String>,
}

/// How far the client has proven itself.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Security {
    /// Set once TLS is up (STARTTLS or implicit).
    pub tls: Option<TlsInfo>,
    /// The authenticated account, once AUTH succeeded.
    pub account: Option<String>,
    /// The SASL mechanism it authenticated with.
    pub mechanism: Option<crate::command::Mechanism>,
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
    /// The client's TCP port (0 when the host did not say, see [`Session::connected`]).
    ///
    /// [`Session::connected`]: crate::session::Session::connected
    pub client_port: u16,
    /// The local address the client connected to, when the host said.
    pub local: Option<std::net::SocketAddr>,
    /// Whether TLS was up from the first byte (implicit TLS, port 465).
    pub implicit_tls: bool,
    /// The current EHLO/HELO, if any.
    pub greeting: Option<Greeting>,
    /// TLS and AUTH state.
    pub security: Security,
    /// While a hook runs: the header fields the host and earlier hooks have added to the
    /// message under way (on MX, the `Authentication-Results` of the checks first), which
    /// a content hook sees in front of the message.
    pub added_headers: Vec<Header>,
    /// The client's reverse DNS name, once the host looked it up (before the first hook
    /// call of the session); `None` until then.
    pub reverse: Option<ReverseName>,
    /// While a hook runs: the queue id the message under way will be spooled under, once
    /// the host gave it one ([`Session::assign_queue_id`]).
    ///
    /// [`Session::assign_queue_id`]: crate::session::Session::assign_queue_id
    pub queue_id: Option<String>,
    /// While a hook runs: what the plugins before it decided about the message under way,
    /// in order ([`Session::record_plugin_verdicts`]).
    ///
    /// [`Session::record_plugin_verdicts`]: crate::session::Session::record_plugin_verdicts
    pub earlier: Vec<PluginVerdict>,
    /// While a content hook runs on MX: what the mail authentication checks found about
    /// the message under way, one entry per method (per signature for DKIM), in the order
    /// of its `Authentication-Results` ([`Session::record_authentication`]); empty when
    /// none ran.
    ///
    /// [`Session::record_authentication`]: crate::session::Session::record_authentication
    pub authentication: Vec<AuthResult>,
}

impl SessionInfo {
    /// A session of `pipeline` from `peer` that has said and shown nothing yet.
    pub fn new(pipeline: PipelineKind, peer: IpAddr) -> SessionInfo {
        SessionInfo {
            pipeline,
            peer,
            client_port: 0,
            local: None,
            implicit_tls: false,
            greeting: None,
            security: Security::default(),
            added_headers: Vec::new(),
            reverse: None,
            queue_id: None,
            earlier: Vec::new(),
            authentication: Vec::new(),
        }
    }
}

/// A mail authentication method (RFC 8601 §2.7).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthMethod {
    /// The client's reverse DNS, forward-confirmed (RFC 8601 §3).
    Iprev,
    /// SPF, of the MAIL FROM domain (or of the EHLO name for `<>`).
    Spf,
    /// One DKIM signature.
    Dkim,
    /// The ARC chain.
    Arc,
    /// DMARC, of the From domain.
    Dmarc,
}

impl AuthMethod {
    /// Its name in `Authentication-Results`.
    pub fn name(self) -> &'static str {
        match self {
            AuthMethod::Iprev => "iprev",
            AuthMethod::Spf => "spf",
            AuthMethod::Dkim => "dkim",
            AuthMethod::Arc => "arc",
            AuthMethod::Dmarc => "dmarc",
        }
    }
}

/// What a method found (the result names of RFC 8601 and RFC 7208).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthStatus {
    /// Authenticated.
    Pass,
    /// Checked, and failed.
    Fail,
    /// SPF: probably not authorised.
    Softfail,
    /// Checked; the domain asserts nothing.
    Neutral,
    /// Nothing to check (no record, no signature).
    None,
    /// DKIM: a valid signature the verifier's policy does not accept.
    Policy,
    /// A transient error (DNS): the same check may pass later.
    Temperror,
    /// A permanent error (a broken record or signature).
    Permerror,
}

impl AuthStatus {
    /// Its name in `Authentication-Results`.
    pub fn name(self) -> &'static str {
        match self {
            AuthStatus::Pass => "pass",
            AuthStatus::Fail => "fail",
            AuthStatus::Softfail => "softfail",
            AuthStatus::Neutral => "neutral",
            AuthStatus::None => "none",
            AuthStatus::Policy => "policy",
            AuthStatus::Temperror => "temperror",
            AuthStatus::Permerror => "permerror",
        }
    }
}

/// What one mail authentication check found about a message received on MX.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthResult {
    /// The method.
    pub method: AuthMethod,
    /// Its result.
    pub status: AuthStatus,
    /// What the result is about: the domain SPF checked, a DKIM signature's `d=`, the
    /// From domain of DMARC; `None` for iprev and ARC, or when there was nothing to check.
    pub domain: Option<String>,
    /// The method's clause of the `Authentication-Results` header, on one line (such as
    /// `spf=pass smtp.mailfrom=a@example.org`).
    pub text: String,
}

/// What one plugin decided about the message under way, shown to the plugins after it.
#[derive(Clone, Debug, PartialEq)]
pub struct PluginVerdict {
    /// The hook it served.
    pub hook: Hook,
    /// Its name (`[[plugin]] name`).
    pub plugin: String,
    /// The verdict's kind: `accept`, `tag`, `junk`, `reject`, `defer` or `discard`.
    pub verdict: &'static str,
    /// Its score (spam plugins).
    pub score: Option<f64>,
    /// Whether it failed, so that `verdict` is its `on-error` policy's.
    pub failed: bool,
}

/// What the reverse DNS of the client's address says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReverseName {
    /// The name: the first PTR name whose addresses include the client's, else the first
    /// PTR name; `None` without a PTR record (or when the lookup failed).
    pub name: Option<String>,
    /// Whether `name` resolves back to the client's address (forward-confirmed).
    pub confirmed: bool,
}

/// A decision point a plugin answers: the one vocabulary of the session, the config
/// (`[[plugin]] hook`), the plugin runtime and the logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Hook {
    /// Credentials, at each AUTH (submission); asked through [`Action::Authenticate`].
    Auth,
    /// Rate limits, once the envelope is complete (submission).
    Rate,
    /// Virus scan of the content (both pipelines).
    Virus,
    /// Spam classification of the content (MX).
    Spam,
}

impl Hook {
    /// Every hook, in the order of the config's documentation.
    pub const ALL: [Hook; 4] = [Hook::Auth, Hook::Rate, Hook::Virus, Hook::Spam];

    /// The hook's name in config and logs.
    pub fn name(self) -> &'static str {
        match self {
            Hook::Auth => "auth",
            Hook::Rate => "rate",
            Hook::Virus => "virus",
            Hook::Spam => "spam",
        }
    }

    /// The hook a config name means.
    pub fn parse(name: &str) -> Option<Hook> {
        Hook::ALL.into_iter().find(|h| h.name() == name)
    }
}

/// A hook to run and what it runs on: the host cannot call a content hook without the
/// content, because the call carries it.
#[derive(Clone, Debug)]
pub enum HookCall {
    /// The rate hook, on the complete envelope.
    Rate(Envelope),
    /// The virus hook, on the received message.
    Virus(Arc<Message>),
    /// The spam hook, on the received message.
    Spam(Arc<Message>),
}

impl HookCall {
    /// Which hook this is.
    pub fn hook(&self) -> Hook {
        match self {
            HookCall::Rate(_) => Hook::Rate,
            HookCall::Virus(_) => Hook::Virus,
            HookCall::Spam(_) => Hook::Spam,
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

impl Header {
    /// The one way a header from outside (a plugin) becomes one the host writes: the name
    /// must be a field name (printable ASCII without `:`, at most 64 octets), and every
    /// control character of the value (CR and LF above all: no header can smuggle another
    /// line in) becomes a space. `None` for a name that is not one.
    pub fn sanitized(name: &str, value: &str) -> Option<Header> {
        let name_ok =
            !name.is_empty() && name.len() <= 64 && name.bytes().all(|b| b.is_ascii_graphic() && b != b':');
        name_ok.then(|| Header {
            name: name.to_string(),
            value: value
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect(),
        })
    }

    /// The header as one line with its CRLF.
    pub fn line(&self) -> String {
        format!("{}: {}\r\n", self.name, self.value)
    }
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
    /// The content as received (CRLF lines, dot-unstuffed), in memory or in its spool
    /// file.
    pub body: Content,
    /// Its MIME structure, parsed on first use ([`Message::structure`]).
    mime: std::sync::OnceLock<Result<Arc<crate::mime::Structure>, crate::mime::MimeError>>,
}

impl Message {
    /// A message of `envelope` and `body`.
    pub fn new(envelope: Envelope, body: Content) -> Message {
        Message {
            envelope,
            body,
            mime: std::sync::OnceLock::new(),
        }
    }

    /// Its MIME structure, parsed the first time anyone asks (then shared by every hook
    /// and plugin of the message), or why it cannot be had: larger than
    /// [`crate::mime::MAX_SIZE`], unreadable from its file, or not parseable.
    pub fn structure(&self) -> Result<Arc<crate::mime::Structure>, crate::mime::MimeError> {
        use crate::mime::{MAX_SIZE, MimeError};
        self.mime
            .get_or_init(|| {
                let size = self.body.len();
                if size > MAX_SIZE {
                    return Err(MimeError::TooLarge(size));
                }
                let parsed = match self.body.in_memory() {
                    Some(bytes) => crate::mime::Structure::parse(bytes),
                    None => {
                        let bytes = self
                            .body
                            .to_vec()
                            .map_err(|e| MimeError::Unreadable(format!("cannot read the content: {e}")))?;
                        crate::mime::Structure::parse(&bytes)
                    }
                };
                parsed.map(Arc::new)
            })
            .clone()
    }
}

/// What the host must make durable before the session may say 250.
#[derive(Clone, Debug)]
pub struct SpoolRequest {
    /// The message.
    pub message: Arc<Message>,
    /// Headers the hooks asked to add.
    pub headers: Vec<Header>,
    /// Names of the message's own header fields the hooks asked to remove
    /// ([`Session::remove_header_fields`]).
    ///
    /// [`Session::remove_header_fields`]: crate::session::Session::remove_header_fields
    pub remove: Vec<String>,
    /// Where local copies go.
    pub folder: Folder,
    /// The queue id the hooks saw, if the host gave one.
    pub queue_id: Option<String>,
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
    /// Not checked: the client failed too often recently (the host's limit).
    Throttled,
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
    /// Run this hook (with [`Session::info`]), then call [`Session::resolve_hook`].
    CallHook(HookCall),
    /// Ask the outside user database whether this local address exists (without its
    /// `+detail`, lower-cased as the host keeps accounts), then call
    /// [`Session::resolve_recipient`].
    LookUpRecipient(Mailbox),
    /// Run the host's mail authentication checks (SPF, DKIM, ARC, DMARC, iprev) on the
    /// received message, before the content hooks ([`Pipeline::CHECKS_AUTHENTICATION`]),
    /// then call [`Session::resolve_checks`] with what they decided.
    CheckAuthentication(Arc<Message>),
    /// Make this durable and call [`Session::resolve_spool`].
    Spool(SpoolRequest),
    /// Flush replies, then read more bytes and pass them to [`Session::feed`].
    Read,
    /// Flush replies, then close the connection.
    Close,
}

/// The host called a `resolve_*` method the machine was not waiting for: a host bug.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the session is not waiting for {0}")]
pub struct UsageError(pub(super) &'static str);

/// Why the spool could not store a message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("spool failure: {0}")]
pub struct SpoolFailure(pub String);
