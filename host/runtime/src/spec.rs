//! What the configuration says of a plugin, without the engine that runs it: its spec, its
//! failure policy and the capabilities granted to it. Built without the `engine` feature,
//! the crate is only this (what the daemon's config parser needs, and so its fuzz target,
//! which then does not build wasmtime).

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use portcullis_smtp::{Hook, Verdict, replies};

/// Lookups one call may make unless `[[plugin]] dns-lookups` says otherwise.
pub const DEFAULT_DNS_LOOKUPS: u32 = 100;
/// Octets one call may read and write over its connections unless `[[plugin]]
/// connect-bytes` says otherwise.
pub const DEFAULT_CONNECT_BYTES: u64 = 64 << 20;
/// A service a plugin may be granted a connection to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// A Unix domain socket (`unix:/run/clamav/clamd.ctl`).
    Unix(PathBuf),
    /// A TCP address with an IP literal (`tcp:127.0.0.1:11333`, `tcp:[::1]:3310`).
    Tcp(SocketAddr),
}

impl Endpoint {
    /// Parses `unix:/absolute/path` or `tcp:IP:PORT`.
    pub fn parse(text: &str) -> Result<Endpoint, String> {
        if let Some(path) = text.strip_prefix("unix:") {
            if !path.starts_with('/') {
                return Err(format!("{text:?}: a unix endpoint needs an absolute path"));
            }
            return Ok(Endpoint::Unix(PathBuf::from(path)));
        }
        if let Some(address) = text.strip_prefix("tcp:") {
            return address.parse().map(Endpoint::Tcp).map_err(|_| {
                format!("{text:?}: a tcp endpoint is an IP address and a port, such as tcp:127.0.0.1:11333")
            });
        }
        Err(format!("{text:?}: an endpoint is unix:/path or tcp:IP:PORT"))
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Unix(path) => write!(f, "unix:{}", path.display()),
            Endpoint::Tcp(address) => write!(f, "tcp:{address}"),
        }
    }
}

/// The capabilities granted to one plugin, from its `[[plugin]]` section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grants {
    /// `grant-dns`.
    pub dns: bool,
    /// `dns-lookups`: most lookups per call.
    pub dns_lookups: u32,
    /// `grant-connect`: the endpoints it may open.
    pub connect: Vec<Endpoint>,
    /// `connect-bytes`: most octets read and written per call, over all its connections.
    pub connect_bytes: u64,
}

impl Default for Grants {
    fn default() -> Self {
        Grants {
            dns: false,
            dns_lookups: DEFAULT_DNS_LOOKUPS,
            connect: Vec::new(),
            connect_bytes: DEFAULT_CONNECT_BYTES,
        }
    }
}

impl Grants {
    /// What the plugin may reach, one phrase per capability, for `check-config` and the
    /// load log; empty when nothing is granted.
    pub fn describe(&self) -> Vec<String> {
        let mut said = Vec::new();
        if self.dns {
            said.push(format!("may look up DNS ({} lookups per call)", self.dns_lookups));
        }
        for endpoint in &self.connect {
            said.push(format!("may connect to {endpoint}"));
        }
        said
    }
}

/// What happens to the message when a plugin fails (trap, timeout, memory, bad result).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OnError {
    /// `451 4.3.0`: the client retries later. The default: nothing is lost.
    #[default]
    Defer,
    /// Carry on as if the plugin had accepted.
    Accept,
    /// `554 5.7.0`: refuse the message.
    Reject,
}

impl OnError {
    /// Parses the config name.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "defer" => Some(OnError::Defer),
            "accept" => Some(OnError::Accept),
            "reject" => Some(OnError::Reject),
            _ => None,
        }
    }

    /// The verdict the policy stands for.
    pub fn verdict(self) -> Verdict {
        match self {
            OnError::Defer => Verdict::Defer(replies::HOOK_DEFERRED),
            OnError::Accept => Verdict::Accept,
            OnError::Reject => Verdict::Reject(replies::REFUSED_BY_FILTER),
        }
    }
}

/// One `[[plugin]]` entry, validated.
#[derive(Clone, Debug, PartialEq)]
pub struct PluginSpec {
    /// A name for logs (default: the file's stem).
    pub name: String,
    /// The hook it serves.
    pub hook: Hook,
    /// The component file.
    pub path: PathBuf,
    /// Wall-clock limit of one call, instantiation included.
    pub timeout: Duration,
    /// Cap of each linear memory, in bytes.
    pub memory: usize,
    /// The failure policy.
    pub on_error: OnError,
    /// The `[plugin.config]` table.
    pub config: serde_json::Map<String, serde_json::Value>,
    /// A host directory the plugin may read, seen as `/data` inside.
    pub grant_dir: Option<PathBuf>,
    /// DNS and connections granted to it (contract 0.2.0).
    pub grants: Grants,
    /// An auth plugin's accepts are remembered this long (`[[plugin]] cache`); `None`:
    /// the plugin decides every time.
    pub cache: Option<Duration>,
}
