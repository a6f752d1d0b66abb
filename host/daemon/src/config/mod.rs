//! The operator's configuration: TOML parsed into validated types, once, at start.
//!
//! Unknown keys are refused, sizes read like `"25MiB"`, durations like `"30s"`. Relative
//! paths are resolved against the directory of the config file (the working directory for
//! the embedded default). Every field's doc states its default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use portcullis_runtime::capability::Endpoint;
use portcullis_runtime::{Hook, PluginSpec};
use serde::Deserialize;

pub mod aliases;
pub mod authentication;
pub mod delivery;
pub mod dkim;
pub mod dns;
pub mod limits;
pub mod plugin;
pub mod rate;

pub use limits::{BareLfPolicy, LimitsSection, Network, Threshold};
pub use plugin::PluginSection;

/// The configuration `portcullis serve` runs on when no `--config` is given.
pub const EMBEDDED_DEFAULT: &str = include_str!("default.toml");

/// A configuration problem, with the key it concerns.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The TOML is malformed or has unknown or mistyped keys.
    #[error("{origin}: {message}")]
    Syntax {
        /// The file (or "embedded default").
        origin: String,
        /// What the parser said, with line and column.
        message: String,
    },
    /// More than one problem, each on its own line.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Several(Vec<ConfigError>),
    /// The values parse but do not make a working server.
    #[error("{origin}: {key}: {message}")]
    Invalid {
        /// The file (or "embedded default").
        origin: String,
        /// The offending key, for example `listener[1].kind`.
        key: String,
        /// What is wrong and what would be right.
        message: String,
    },
}

/// A duration written like `"30s"`, `"5m"` or `"1h 30m"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span(pub Duration);

impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map(Span).map_err(|e| {
            serde::de::Error::custom(format!("{text:?} is not a duration like \"30s\" or \"5m\": {e}"))
        })
    }
}

/// A size written like `"25MiB"`, `"512KiB"` or `"1GB"` (or a number of octets).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Size(pub u64);

impl Size {
    /// Octets.
    pub fn as_u64(self) -> u64 {
        self.0
    }

    const fn mib(n: u64) -> Size {
        Size(n << 20)
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Size;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a size like \"25MiB\", \"512KiB\" or \"1GB\"")
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<Size, E> {
                Ok(Size(n))
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<Size, E> {
                u64::try_from(n)
                    .map(Size)
                    .map_err(|_| E::custom(format!("{n} is not a size like \"25MiB\"")))
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Size, E> {
                text.parse::<bytesize::ByteSize>()
                    .map(|b| Size(b.as_u64()))
                    .map_err(|_| {
                        E::custom(format!(
                            "{text:?} is not a size like \"25MiB\", \"512KiB\" or \"1GB\""
                        ))
                    })
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// `base` joined with `path`, with `.` and `..` resolved lexically, so that a config file's
/// relative paths read the same wherever the file sits (`../data` from `examples/`).
pub fn resolve(base: &Path, path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for part in base.join(path).components() {
        match part {
            Component::CurDir => {}
            Component::ParentDir => match out.components().next_back() {
                Some(Component::Normal(_)) => {
                    out.pop();
                }
                // Above the root is the root.
                Some(Component::RootDir) => {}
                _ => out.push(".."),
            },
            other => out.push(other),
        }
    }
    out
}

/// The kind of a listener, which fixes its pipeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ListenerKind {
    /// Port 25: mail exchange.
    Mx,
    /// Port 587: submission with STARTTLS.
    Submission,
    /// Port 465: submission with implicit TLS (RFC 8314).
    Submissions,
}

impl ListenerKind {
    /// The name used in config and logs.
    pub fn name(self) -> &'static str {
        match self {
            ListenerKind::Mx => "mx",
            ListenerKind::Submission => "submission",
            ListenerKind::Submissions => "submissions",
        }
    }
}

/// `[server]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ServerSection {
    /// Our host name in the greeting and trace headers. Default: `"localhost"`.
    #[serde(default = "default_hostname")]
    pub hostname: String,
    /// Where the spool, mailboxes and generated certificate live. Required.
    pub data_dir: PathBuf,
    /// How long SIGTERM waits for open transactions before answering 421. Default: `"30s"`.
    #[serde(default = "default_drain")]
    pub drain_timeout: Span,
    /// `"text"` (one human-readable line per event) or `"json"` (one JSON object per
    /// line). Default: `"text"`.
    #[serde(default)]
    pub log_format: LogFormat,
    /// The unprivileged user to run as once the listeners are bound (when started as
    /// root). Default: none.
    pub user: Option<String>,
    /// A mail reader's group (Dovecot's, for example), which then gets the Maildirs:
    /// directories 2770 and files 0660, group-owned (the reader renames and indexes inside
    /// them). The spool and the users file stay 0600. Default: none — everything the
    /// daemon writes is its user's alone (umask 077).
    pub group: Option<String>,
    /// Keep running as root after binding when no `user` is set. Default: `false` (refuse).
    #[serde(default)]
    pub run_as_root: bool,
    /// Write the four example plugins built into the binary into `<data-dir>/plugins/`
    /// when they are missing there (the embedded default does, so that a fresh checkout
    /// runs with every check on). Default: `false`.
    #[serde(default)]
    pub install_example_plugins: bool,
    /// How an accepted message is made durable before the 250: `"group"` (messages that
    /// arrive together share one flush of the spool's file system) or `"per-message"` (an
    /// fsync of each file and of the directory). Default: `"group"`.
    #[serde(default)]
    pub spool_sync: SpoolSync,
}

/// `server.spool-sync`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SpoolSync {
    /// Group commit.
    #[default]
    Group,
    /// One fsync of file and directory per message.
    PerMessage,
}

impl SpoolSync {
    /// The spool's own type.
    pub fn mode(self) -> portcullis_spool::SyncMode {
        match self {
            SpoolSync::Group => portcullis_spool::SyncMode::Group,
            SpoolSync::PerMessage => portcullis_spool::SyncMode::PerMessage,
        }
    }
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    /// Human-readable text.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

fn default_hostname() -> String {
    "localhost".into()
}

fn default_drain() -> Span {
    Span(Duration::from_secs(30))
}

/// `[tls]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct TlsSection {
    /// PEM certificate chain. Required.
    pub cert: PathBuf,
    /// PEM private key. Required.
    pub key: PathBuf,
    /// Generate a self-signed certificate for `server.hostname` when both files are
    /// missing. Default: `false` (missing files are an error).
    #[serde(default)]
    pub self_signed: bool,
    /// Ask every TLS client for a certificate (never require one) and show the subject of
    /// one it presents to the plugins and in the log, as Postfix's `smtpd_tls_ask_ccert`.
    /// Not verified against any CA: it proves the client holds the certificate's key,
    /// nothing more. Default: `false` (a few old clients stumble when asked).
    #[serde(default)]
    pub ask_client_certificate: bool,
}

/// One `[[listener]]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ListenerSection {
    /// `"mx"`, `"submission"` or `"submissions"`. Required.
    pub kind: ListenerKind,
    /// `ip:port` to bind. Required.
    pub address: SocketAddr,
}

/// `[domains]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct DomainsSection {
    /// Domains delivered here; the first is the primary domain. Required, not empty.
    pub local: Vec<String>,
    /// The account (`local@domain`, in a local domain) that receives mail for
    /// `postmaster@` and `abuse@` of every local domain, unless an account of that name
    /// exists. Default: none — postmaster mail is still accepted (RFC 5321 4.5.1) and kept
    /// in `<data-dir>/mail/<primary domain>/postmaster/`, and `check-config` warns.
    pub postmaster: Option<String>,
}

/// `[auth]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct AuthSection {
    /// The accounts file written by `portcullis user add`. Default: `<data-dir>/users.toml`.
    pub users_file: Option<PathBuf>,
    /// Dovecot's authentication service (`unix:/run/dovecot/auth-client` or
    /// `tcp:IP:PORT`): AUTH on submission is checked there for every name the users file
    /// does not hold. Default: none.
    pub dovecot: Option<String>,
    /// Dovecot's user database (`unix:/run/dovecot/auth-userdb` or `tcp:IP:PORT`): RCPT
    /// asks it about local addresses the users file does not hold. Default: none.
    pub dovecot_userdb: Option<String>,
    /// How long a password the users file verified is remembered (under a keyed hash,
    /// never in the clear), so that a client opening a session per message is not
    /// verified with argon2id each time; `"0s"` turns it off. Dropped on any change of the
    /// users file and on reload. Default: `"10m"`.
    pub cache_ttl: Option<Span>,
}

/// `[metrics]`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct MetricsSection {
    /// Where to serve Prometheus metrics (`GET /metrics`). Default: none (off).
    pub address: Option<SocketAddr>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawConfig {
    server: ServerSection,
    tls: Option<TlsSection>,
    #[serde(default)]
    listener: Vec<ListenerSection>,
    domains: DomainsSection,
    #[serde(default)]
    auth: Option<AuthSection>,
    #[serde(default)]
    limits: LimitsSection,
    #[serde(default)]
    plugin: Vec<PluginSection>,
    #[serde(default)]
    metrics: MetricsSection,
    #[serde(default)]
    delivery: delivery::DeliverySection,
    #[serde(default)]
    dkim: Vec<dkim::DkimSection>,
    #[serde(default)]
    dns: dns::DnsSection,
    #[serde(default)]
    authentication: authentication::AuthenticationSection,
    #[serde(default)]
    rate: rate::RateSection,
    #[serde(default)]
    aliases: aliases::AliasesSection,
}

/// A validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where it came from, for messages.
    pub origin: String,
    /// `[server]`, with `data-dir` absolute.
    pub server: ServerSection,
    /// `[tls]`, with paths absolute; `None` means no STARTTLS and no submission.
    pub tls: Option<TlsSection>,
    /// The listeners.
    pub listeners: Vec<ListenerSection>,
    /// Local domains, lower-case; the first is primary.
    pub local_domains: Vec<String>,
    /// `[domains] postmaster`, lower-case and checked to be in a local domain.
    pub postmaster: Option<String>,
    /// The accounts file, absolute.
    pub users_file: PathBuf,
    /// `[auth] dovecot`: Dovecot's authentication service.
    pub dovecot: Option<Endpoint>,
    /// `[auth] dovecot-userdb`: Dovecot's user database.
    pub dovecot_userdb: Option<Endpoint>,
    /// `[auth] cache-ttl`: how long the users file's verified passwords are remembered.
    pub auth_cache_ttl: Duration,
    /// `[rate]`.
    pub rate: rate::RateSettings,
    /// `[aliases]`: the config's own aliases checked, the file's read at start and on
    /// reload ([`aliases::AliasSettings::load`]).
    pub aliases: aliases::AliasSettings,
    /// `[limits]`.
    pub limits: LimitsSection,
    /// The plugins, in config order, paths absolute.
    pub plugins: Vec<PluginSpec>,
    /// `[metrics]`.
    pub metrics: MetricsSection,
    /// `[delivery]`, validated, with the host name and local domains filled in.
    pub delivery: portcullis_outbound::DeliverySettings,
    /// `[[dkim]]`: the keys that sign submitted mail, key paths absolute.
    pub dkim: Vec<dkim::DkimKey>,
    /// `[dns]` (with the older `[delivery] resolver` folded in).
    pub dns: portcullis_outbound::DnsSettings,
    /// `[authentication]`.
    pub authentication: authentication::AuthenticationSettings,
    /// Keys read under an older name, for [`Config::warnings`].
    pub renamed: Vec<(&'static str, &'static str)>,
}

/// The problems found in one configuration, each with its key.
pub struct Problems<'a> {
    origin: &'a str,
    found: Vec<ConfigError>,
}

impl<'a> Problems<'a> {
    fn new(origin: &'a str) -> Self {
        Problems {
            origin,
            found: Vec::new(),
        }
    }

    /// Records that `key` is wrong, and why.
    pub fn push(&mut self, key: &str, message: String) {
        self.found.push(ConfigError::Invalid {
            origin: self.origin.to_string(),
            key: key.to_string(),
            message,
        });
    }

    /// How many so far.
    pub fn count(&self) -> usize {
        self.found.len()
    }

    fn into_result(mut self) -> Result<(), ConfigError> {
        match self.found.len() {
            0 => Ok(()),
            1 => Err(self.found.remove(0)),
            _ => Err(ConfigError::Several(self.found)),
        }
    }
}

fn check_listeners(listeners: &[ListenerSection], tls: bool, problems: &mut Problems<'_>) {
    if listeners.is_empty() {
        problems.push("listener", "at least one [[listener]] is needed".into());
    }
    for (i, l) in listeners.iter().enumerate() {
        if l.kind != ListenerKind::Mx && !tls {
            problems.push(
                &format!("listener[{i}].kind"),
                format!(
                    "a {} listener needs a [tls] section: submission is never cleartext",
                    l.kind.name()
                ),
            );
        }
        if l.address.port() != 0 && listeners[..i].iter().any(|o| o.address == l.address) {
            problems.push(
                &format!("listener[{i}].address"),
                format!("{} is listed twice", l.address),
            );
        }
    }
}

/// The local domains, lower-case, and the postmaster account, checked.
fn domains(section: DomainsSection, problems: &mut Problems<'_>) -> (Vec<String>, Option<String>) {
    let local: Vec<String> = section.local.iter().map(|d| d.to_ascii_lowercase()).collect();
    if local.is_empty() {
        problems.push("domains.local", "at least one local domain is needed".into());
    }
    if let Some(bad) = local.iter().find(|d| d.is_empty() || d.contains(['@', ' ', '/'])) {
        problems.push("domains.local", format!("{bad:?} is not a domain name"));
    }
    let postmaster = section.postmaster.map(|p| p.trim().to_ascii_lowercase());
    if let Some(account) = &postmaster {
        let in_local_domain = account
            .rsplit_once('@')
            .is_some_and(|(name, domain)| !name.is_empty() && local.iter().any(|d| d == domain));
        if !in_local_domain || account.contains(['+', ' ']) {
            problems.push(
                "domains.postmaster",
                format!("{account:?} is not an account (local@domain) in one of the local domains {local:?}"),
            );
        }
    }
    (local, postmaster)
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let base = path
            .canonicalize()
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf))
            .unwrap_or_else(|| PathBuf::from("."));
        Config::parse(&text, &path.display().to_string(), &base)
    }

    /// The embedded default, relative to the working directory (`examples/dev.toml` is the
    /// same configuration as a file).
    pub fn embedded() -> Result<Config, ConfigError> {
        let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
        Config::parse(EMBEDDED_DEFAULT, "embedded default", &cwd)
    }

    /// Parses and validates `text`; relative paths are joined to `base`.
    pub fn parse(text: &str, origin: &str, base: &Path) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            origin: origin.to_string(),
            message: e.to_string(),
        })?;
        // Every problem is collected, so that one check-config run reports them all.
        let mut problems = Problems::new(origin);
        let mut server = raw.server;
        server.data_dir = resolve(base, &server.data_dir);
        if server.hostname.is_empty() || server.hostname.contains(char::is_whitespace) {
            problems.push("server.hostname", "must be a host name without spaces".into());
        }
        let tls = raw.tls.map(|mut t| {
            t.cert = resolve(base, &t.cert);
            t.key = resolve(base, &t.key);
            t
        });
        check_listeners(&raw.listener, tls.is_some(), &mut problems);
        let (local_domains, postmaster) = domains(raw.domains, &mut problems);
        raw.limits.check(&mut problems);
        let (users_file, dovecot, dovecot_userdb, cache_ttl) = match raw.auth {
            Some(auth) => (auth.users_file, auth.dovecot, auth.dovecot_userdb, auth.cache_ttl),
            None => (None, None, None, None),
        };
        let auth_cache_ttl = cache_ttl.map_or(Duration::from_secs(600), |span| span.0);
        let users_file = match users_file {
            Some(p) => resolve(base, &p),
            None => server.data_dir.join("users.toml"),
        };
        let mut endpoint = |key: &str, text: Option<String>| {
            text.and_then(|text| match Endpoint::parse(&text) {
                Ok(endpoint) => Some(endpoint),
                Err(e) => {
                    problems.push(key, e);
                    None
                }
            })
        };
        let dovecot = endpoint("auth.dovecot", dovecot);
        let dovecot_userdb = endpoint("auth.dovecot-userdb", dovecot_userdb);
        let plugins = plugin::specs(raw.plugin, base, &mut problems);
        let dkim = dkim::keys(raw.dkim, base, &mut problems);
        let mut renamed = Vec::new();
        if raw.delivery.resolver.is_some() {
            renamed.push(("delivery.resolver", "dns.nameservers"));
        }
        let dns = dns::settings(raw.dns, raw.delivery.resolver, &mut problems);
        let primary = local_domains.first().map_or("localhost", String::as_str);
        let authentication = authentication::settings(raw.authentication, primary, &mut problems);
        let delivery = match delivery::settings(raw.delivery, &server.hostname, &local_domains, base) {
            Ok(settings) => Some(settings),
            Err(found) => {
                for (key, message) in found {
                    problems.push(&key, message);
                }
                None
            }
        };
        let rate = rate::settings(raw.rate, &mut problems);
        let aliases = aliases::settings(raw.aliases, base, &local_domains, &mut problems);
        problems.into_result()?;
        Ok(Config {
            origin: origin.to_string(),
            server,
            tls,
            listeners: raw.listener,
            local_domains,
            postmaster,
            users_file,
            dovecot,
            dovecot_userdb,
            auth_cache_ttl,
            rate,
            aliases,
            limits: raw.limits,
            plugins,
            metrics: raw.metrics,
            delivery: delivery.unwrap_or_else(|| portcullis_outbound::DeliverySettings::new("localhost")),
            dkim,
            dns,
            authentication,
            renamed,
        })
    }

    /// What works but is probably not what the operator wants: printed by `check-config`
    /// and logged by `serve` at start.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        for (old, new) in &self.renamed {
            warnings.push(format!(
                "{old} is the older name of {new}; it is still read, but rename it"
            ));
        }
        if self.listeners.iter().any(|l| l.kind == ListenerKind::Mx) {
            for (hook, what) in [(Hook::Virus, "virus"), (Hook::Spam, "spam")] {
                if !self.plugins.iter().any(|p| p.hook == hook) {
                    warnings.push(format!(
                        "the MX pipeline runs with NO {what} check: no [[plugin]] with hook = \"{what}\" is configured, so inbound mail is accepted without one (docs/plugins.md lists the bundled ones)"
                    ));
                }
            }
        }
        if self.postmaster.is_none() {
            let primary = self.local_domains.first().map_or("", String::as_str);
            warnings.push(format!(
                "domains.postmaster is not set: mail to postmaster@ is kept in {} where no one reads it by logging in (docs/operations.md, \"Postmaster mail\"); name an account with [domains] postmaster = \"you@{primary}\"",
                self.server.data_dir.join("mail").join(primary).join("postmaster").display()
            ));
        }
        warnings
    }

    /// What `check-config` says of the mail authentication of MX and of the resolver.
    pub fn authentication_summary(&self) -> String {
        self.authentication.summary(&self.dns, self.dkim.len())
    }

    /// The session limits of the SMTP core.
    pub fn session_limits(&self) -> portcullis_smtp::Limits {
        let l = &self.limits;
        portcullis_smtp::Limits {
            message_size: l.message_size.as_u64() as usize,
            recipients: l.recipients,
            line_length: l.line_length,
            bare_lf: match l.bare_lf {
                BareLfPolicy::Normalize => portcullis_smtp::data::BareLf::Normalize,
                BareLfPolicy::Reject => portcullis_smtp::data::BareLf::Reject,
            },
            syntax: if l.strict_syntax {
                portcullis_smtp::address::Syntax::Strict
            } else {
                portcullis_smtp::address::Syntax::Lenient
            },
            errors: l.errors,
            auth_failures: l.auth_failures,
            auth_failure_delay: l.auth_failure_delay.0,
            memory_per_message: l.memory_per_message.as_u64() as usize,
            spool_min_free: l.spool_min_free(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_is_valid() {
        let c = Config::parse(EMBEDDED_DEFAULT, "embedded", Path::new("/x")).unwrap();
        assert_eq!(c.listeners.len(), 3);
        assert_eq!(c.server.data_dir, Path::new("/x/portcullis-data"));
        assert_eq!(c.limits.message_size.as_u64(), 25 * 1024 * 1024);
        assert_eq!(c.session_limits().auth_failure_delay, Duration::from_secs(1));
    }

    #[test]
    fn dev_toml_is_the_embedded_default_as_resolved() {
        let embedded = Config::parse(EMBEDDED_DEFAULT, "origin", Path::new("/checkout")).unwrap();
        let dev = Config::parse(
            include_str!("../../../../examples/dev.toml"),
            "origin",
            Path::new("/checkout/examples"),
        )
        .unwrap();
        assert_eq!(format!("{embedded:#?}"), format!("{dev:#?}"));
        assert_eq!(dev.server.data_dir, Path::new("/checkout/portcullis-data"));
        assert_eq!(dev.plugins.len(), 4);
        assert!(dev.server.install_example_plugins && dev.server.run_as_root);
    }

    #[test]
    fn stack_settings_parse_and_name_their_key_when_wrong() {
        let base = "[server]\ndata-dir = \"d\"\n[domains]\nlocal = [\"example.org\"]\n[[listener]]\nkind = \"mx\"\naddress = \"127.0.0.1:1\"\n";
        let good = format!(
            "{base}[auth]\ndovecot = \"unix:/run/dovecot/auth-client\"\ndovecot-userdb = \"tcp:127.0.0.1:12345\"\ncache-ttl = \"1m\"\n\
             [rate]\nstore = \"redis://127.0.0.1:6379/0\"\non-store-error = \"local\"\n\
             [delivery]\nlocal = \"lmtp\"\nlmtp = \"unix:/run/dovecot/lmtp\"\n"
        );
        let c = Config::parse(&good, "t", Path::new("/")).unwrap();
        assert!(c.dovecot.is_some() && c.dovecot_userdb.is_some());
        assert_eq!(c.rate.redis.as_deref(), Some("redis://127.0.0.1:6379/0"));
        assert_eq!(c.rate.on_store_error, rate::OnStoreError::Local);
        assert!(c.delivery.lmtp.is_some());
        assert_eq!(c.auth_cache_ttl, Duration::from_secs(60));
        let defaults = Config::parse(base, "t", Path::new("/")).unwrap();
        assert_eq!(defaults.rate, rate::RateSettings::default());
        assert_eq!(defaults.auth_cache_ttl, Duration::from_secs(600));
        assert!(defaults.delivery.lmtp.is_none() && defaults.dovecot.is_none());
        for (bad, key) in [
            ("[auth]\ndovecot = \"/run/dovecot/auth-client\"\n", "auth.dovecot"),
            (
                "[auth]\ndovecot-userdb = \"tcp:localhost\"\n",
                "auth.dovecot-userdb",
            ),
            ("[rate]\nstore = \"mysql://x\"\n", "rate.store"),
            ("[delivery]\nlocal = \"lmtp\"\n", "delivery.lmtp"),
            ("[delivery]\nlmtp = \"unix:/run/dovecot/lmtp\"\n", "delivery.lmtp"),
            ("[delivery]\nlocal = \"mbox\"\n", "delivery.local"),
            (
                "[[plugin]]\nhook = \"spam\"\npath = \"s.wasm\"\ncache = \"5m\"\n",
                "plugin[0].cache",
            ),
            ("[aliases]\nsrs-secret = \"short\"\n", "aliases.srs-secret"),
            ("[aliases]\n\"x@example.org\" = []\n", "aliases.\"x@example.org\""),
        ] {
            let e = Config::parse(&format!("{base}{bad}"), "t", Path::new("/")).unwrap_err();
            assert!(e.to_string().contains(key), "{bad}: {e}");
        }
    }

    #[test]
    fn paths_resolve_lexically() {
        assert_eq!(
            resolve(Path::new("/a/b"), Path::new("../c/./d")),
            Path::new("/a/c/d")
        );
        assert_eq!(resolve(Path::new("/a"), Path::new("/abs/x")), Path::new("/abs/x"));
        assert_eq!(resolve(Path::new("/"), Path::new("../x")), Path::new("/x"));
    }

    #[test]
    fn errors_name_the_accepted_forms() {
        let base = "[server]\ndata-dir = \"d\"\n[domains]\nlocal = [\"example.org\"]\n[[listener]]\nkind = \"mx\"\naddress = \"127.0.0.1:1\"\n";
        let cases = [
            (
                "[limits]\nmessage-size = \"lots\"\n",
                "\"lots\" is not a size like \"25MiB\"",
            ),
            ("[limits]\ncommand-timeout = \"soon\"\n", "like \"30s\""),
            (
                "[delivery.routes]\n\"x.example\" = 25\n",
                "a route: \"host:port\", or a table like { host = \"host:port\", tls = \"required\" }",
            ),
            (
                "[delivery.routes]\n\"x.example\" = { hots = \"a:1\" }\n",
                "unknown field `hots`",
            ),
        ];
        for (extra, needle) in cases {
            let err = Config::parse(&format!("{base}{extra}"), "t.toml", Path::new("/"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{err:?} should say {needle:?}");
            assert!(!err.contains("untagged"), "{err}");
        }
        let ok =
            format!("{base}[limits]\nmessage-size = 1000000\n[delivery.routes]\n\"x.example\" = \"h:25\"\n");
        let c = Config::parse(&ok, "t.toml", Path::new("/")).unwrap();
        assert_eq!(c.limits.message_size, Size(1_000_000));
    }

    #[test]
    fn dns_and_authentication_sections() {
        let base = "[server]\ndata-dir = \"d\"\n[domains]\nlocal = [\"Example.org\"]\n[[listener]]\nkind = \"mx\"\naddress = \"127.0.0.1:1\"\n";
        let c = Config::parse(base, "t.toml", Path::new("/")).unwrap();
        assert!(c.dns.nameservers.is_empty(), "the system's resolvers by default");
        assert_eq!(c.dns.timeout, Duration::from_secs(5));
        assert_eq!(c.authentication.authserv_id, "example.org");
        assert_eq!(c.authentication.timeout, Duration::from_secs(10));
        assert_eq!(c.authentication.dmarc, authentication::DmarcMode::Enforce);
        assert!(
            c.authentication.spf && c.authentication.dkim && c.authentication.arc && c.authentication.iprev
        );
        // The older key is read, with a warning naming the new one.
        let old = Config::parse(
            &format!("{base}[delivery]\nresolver = \"127.0.0.1:53\"\n"),
            "t.toml",
            Path::new("/"),
        )
        .unwrap();
        assert_eq!(old.dns.nameservers, ["127.0.0.1:53".parse().unwrap()]);
        assert!(
            old.warnings()
                .iter()
                .any(|w| w.contains("delivery.resolver is the older name of dns.nameservers"))
        );
        let set = Config::parse(
            &format!("{base}[dns]\nnameservers = [\"127.0.0.1:5353\", \"[::1]:53\"]\ntimeout = \"2s\"\n[authentication]\nauthserv-id = \"MX.Example.org.\"\ndmarc = \"report\"\nspf = false\ntrusted-arc-sealers = [\"Lists.Example.net.\"]\n"),
            "t.toml",
            Path::new("/"),
        )
        .unwrap();
        assert_eq!(set.dns.nameservers.len(), 2);
        assert_eq!(set.dns.timeout, Duration::from_secs(2));
        assert_eq!(set.authentication.authserv_id, "mx.example.org");
        assert_eq!(set.authentication.dmarc, authentication::DmarcMode::Report);
        assert!(!set.authentication.spf && set.authentication.dkim);
        assert_eq!(set.authentication.trusted_arc_sealers, ["lists.example.net"]);
        assert_eq!(
            set.authentication_summary(),
            "mail authentication on MX: iprev, dkim, arc, dmarc (recorded only); authserv-id mx.example.org; DNS: 127.0.0.1:5353, [::1]:53; 0 DKIM key(s) for submission"
        );
        assert!(
            c.authentication_summary().contains("dmarc (enforced)")
                && c.authentication_summary().contains("/etc/resolv.conf")
        );
        for (extra, needle) in [
            ("[dns]\nnameservers = []\n", "dns.nameservers"),
            (
                "[dns]\nnameservers = [\"127.0.0.1:53\"]\n[delivery]\nresolver = \"127.0.0.1:53\"\n",
                "delivery.resolver",
            ),
            ("[dns]\ntimeout = \"0s\"\n", "dns.timeout"),
            ("[authentication]\ndmarc = \"maybe\"\n", "enforce"),
            (
                "[authentication]\nauthserv-id = \"a b\"\n",
                "authentication.authserv-id",
            ),
            ("[authentication]\ntimeout = \"0s\"\n", "authentication.timeout"),
        ] {
            let err = Config::parse(&format!("{base}{extra}"), "t.toml", Path::new("/"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{err:?} should mention {needle:?}");
        }
    }

    #[test]
    fn errors_name_the_key() {
        let base = "[server]\ndata-dir = \"d\"\n[domains]\nlocal = [\"example.org\"]\n";
        let cases = [
            (
                format!("{base}[[listener]]\nkind = \"submission\"\naddress = \"127.0.0.1:1\"\n"),
                "listener[0].kind",
            ),
            (base.to_string(), "listener"),
            (
                format!(
                    "{base}[[listener]]\nkind = \"mx\"\naddress = \"127.0.0.1:1\"\n[limits]\nmessage-size = \"lots\"\n"
                ),
                "message-size",
            ),
            (
                format!(
                    "{base}[[listener]]\nkind = \"mx\"\naddress = \"127.0.0.1:1\"\n[limits]\ncommand-timeout = \"soon\"\n"
                ),
                "duration",
            ),
            (
                format!("{base}[[listener]]\nkind = \"mx\"\naddress = \"127.0.0.1:1\"\ncolour = 1\n"),
                "colour",
            ),
            (
                format!("{base}[[listener]]\nkind = \"pop3\"\naddress = \"127.0.0.1:1\"\n"),
                "pop3",
            ),
            (
                format!(
                    "{base}[[listener]]\nkind = \"mx\"\naddress = \"127.0.0.1:1\"\n[limits]\nconnections-per-ip = 0\n"
                ),
                "connections-per-ip must be at least 1",
            ),
            (
                format!(
                    "{base}[[listener]]\nkind = \"mx\"\naddress = \"127.0.0.1:1\"\n[limits]\nmin-data-rate = 0\n"
                ),
                "limits.min-data-rate",
            ),
        ];
        for (text, needle) in cases {
            let err = Config::parse(&text, "t.toml", Path::new("/"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{err:?} should mention {needle:?}");
        }
        let ok = format!(
            "{base}[[listener]]\nkind = \"mx\"\naddress = \"127.0.0.1:1\"\n[limits]\nmessage-size = \"10MiB\"\ncommand-timeout = \"1m 30s\"\n"
        );
        let c = Config::parse(&ok, "t.toml", Path::new("/")).unwrap();
        assert_eq!(c.limits.command_timeout.0, Duration::from_secs(90));
        assert_eq!(c.users_file, Path::new("/d/users.toml"));
    }
}
