//! The server's one DNS resolver: built from `[dns]`, shared by outbound MX lookups and the
//! mail authentication checks, with one cache (hickory's, which honours each record's TTL).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{Name, RData, RecordType};

/// `[dns]`, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsSettings {
    /// The servers to ask, in order; empty means the system's (`/etc/resolv.conf`).
    pub nameservers: Vec<SocketAddr>,
    /// How long one query may take before the next server (or the next attempt) is tried.
    pub timeout: Duration,
}

impl Default for DnsSettings {
    fn default() -> Self {
        DnsSettings {
            nameservers: Vec::new(),
            timeout: Duration::from_secs(5),
        }
    }
}

/// The resolver could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("cannot set up the DNS resolver: {0}")]
pub struct ResolverError(String);

/// A handle on the shared resolver; clones share its cache and connections.
#[derive(Clone)]
pub struct Resolver(TokioResolver);

/// PTR names tried for forward confirmation (Postfix and mail-auth's iprev stop early too).
const MAX_PTR_NAMES: usize = 5;

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver").finish_non_exhaustive()
    }
}

impl Resolver {
    /// A resolver asking the servers of `settings` (UDP, falling back to TCP for truncated
    /// answers), or the system's when it names none.
    pub fn new(settings: &DnsSettings) -> Result<Self, ResolverError> {
        let mut builder = if settings.nameservers.is_empty() {
            TokioResolver::builder_tokio().map_err(|e| ResolverError(e.to_string()))?
        } else {
            let servers = settings
                .nameservers
                .iter()
                .map(|addr| {
                    let mut udp = ConnectionConfig::udp();
                    udp.port = addr.port();
                    let mut tcp = ConnectionConfig::tcp();
                    tcp.port = addr.port();
                    NameServerConfig::new(addr.ip(), true, vec![udp, tcp])
                })
                .collect();
            TokioResolver::builder_with_config(
                ResolverConfig::from_name_servers(servers),
                TokioRuntimeProvider::default(),
            )
        };
        let opts = builder.options_mut();
        // Named servers are the whole truth: /etc/hosts is read only with the system's
        // configuration (as the system's own lookups would).
        if !settings.nameservers.is_empty() {
            opts.use_hosts_file = ResolveHosts::Never;
        }
        opts.timeout = settings.timeout;
        opts.attempts = 2;
        // Every name we look up is absolute: no search list.
        opts.ndots = 0;
        let resolver = builder.build().map_err(|e| ResolverError(e.to_string()))?;
        Ok(Resolver(resolver))
    }

    /// The hickory resolver itself, for the crates that take one (mail-auth).
    pub fn hickory(&self) -> &TokioResolver {
        &self.0
    }

    /// The reverse name of `ip`: its PTR names (the first [`MAX_PTR_NAMES`] tried), the
    /// first whose A or AAAA records include `ip` (forward-confirmed, `true`), else the
    /// first PTR name (`false`). `(None, false)` without a PTR record or when the lookup
    /// fails: a missing name is what a spam filter weighs, not a reason to stop.
    pub async fn reverse_name(&self, ip: IpAddr) -> (Option<String>, bool) {
        let Ok(ptr) = self.0.lookup(Name::from(ip), RecordType::PTR).await else {
            return (None, false);
        };
        let names: Vec<Name> = ptr
            .answers()
            .iter()
            .filter_map(|record| match &record.data {
                RData::PTR(name) => Some(name.0.clone()),
                _ => None,
            })
            .take(MAX_PTR_NAMES)
            .collect();
        let text = |name: &Name| name.to_ascii().trim_end_matches('.').to_ascii_lowercase();
        let forward = if ip.is_ipv4() {
            RecordType::A
        } else {
            RecordType::AAAA
        };
        for name in &names {
            let Ok(addresses) = self.0.lookup(name.clone(), forward).await else {
                continue;
            };
            let confirmed = addresses.answers().iter().any(|record| match &record.data {
                RData::A(a) => IpAddr::V4(a.0) == ip,
                RData::AAAA(aaaa) => IpAddr::V6(aaaa.0) == ip,
                _ => false,
            });
            if confirmed {
                return (Some(text(name)), true);
            }
        }
        (names.first().map(text), false)
    }
}
