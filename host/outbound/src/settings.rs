//! What the operator decided about outbound delivery, already validated by the daemon's
//! config loader (`[delivery]` and `[delivery.routes]`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

/// When to use STARTTLS towards a destination.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TlsPolicy {
    /// Use it when offered; fall back to plaintext when not offered or when the handshake
    /// fails (RFC 3207 opportunistic TLS, Postfix's `may`). The default.
    #[default]
    Opportunistic,
    /// Refuse to send without TLS: a peer that does not offer it, or fails the handshake,
    /// defers the message (Postfix's `encrypt`). Certificates are not verified.
    Required,
    /// Never use TLS (for test sinks and legacy peers).
    Disabled,
}

impl TlsPolicy {
    /// Parses the config spelling: `"opportunistic"`, `"required"` or `"none"`.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "opportunistic" => Some(TlsPolicy::Opportunistic),
            "required" => Some(TlsPolicy::Required),
            "none" => Some(TlsPolicy::Disabled),
            _ => None,
        }
    }
}

/// A user name and password for AUTH at a smarthost.
#[derive(Clone, PartialEq, Eq)]
pub struct RelayLogin {
    /// The account name at the smarthost.
    pub username: String,
    /// Its password (read from a file named in the config, never logged).
    pub password: String,
}

impl std::fmt::Debug for RelayLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayLogin")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// A fixed next hop: a route for one domain, or the relay host for all.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// Host name or IP address.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// STARTTLS policy.
    pub tls: TlsPolicy,
    /// AUTH at this hop, if any (only ever sent over TLS).
    pub auth: Option<RelayLogin>,
}

/// Everything the scheduler, the couriers and the client need.
#[derive(Clone, Debug)]
pub struct DeliverySettings {
    /// Our name in EHLO, in DSNs and in their Message-IDs.
    pub hostname: String,
    /// Our own domains: a DSN to an address in one of them is delivered locally.
    pub local_domains: Vec<String>,
    /// Per-domain next hops (lower-case ASCII domain → route).
    pub routes: HashMap<String, Route>,
    /// A smarthost for every other domain; `None` means DNS (MX, then A/AAAA).
    pub relay: Option<Route>,
    /// The port of hosts found through DNS (25; tests move it).
    pub mx_port: u16,
    /// STARTTLS policy for hosts found through DNS.
    pub mx_tls: TlsPolicy,
    /// Delays between attempts; the last one repeats.
    pub retry: Vec<Duration>,
    /// How long a message may stay queued before it bounces.
    pub expire: Duration,
    /// Tell the sender once when a message has waited this long; `None`: never.
    pub delay_notice: Option<Duration>,
    /// Connections at once to one destination (domain, route or relay).
    pub per_destination: usize,
    /// Outbound connections at once in all.
    pub max_connections: usize,
    /// Time to establish a TCP connection.
    pub connect_timeout: Duration,
    /// Time to wait for each reply.
    pub command_timeout: Duration,
    /// Time to wait for the reply after the message content (RFC 5321: 10 minutes).
    pub data_timeout: Duration,
    /// Where this server itself listens (concrete addresses: a wildcard listener stands
    /// for every local interface). A destination found through DNS at one of them is mail
    /// that loops back to ourselves (Postfix's "mail for X loops back to myself"): such
    /// hosts are never connected to. Empty unless the daemon fills it in after binding.
    pub own_addresses: Vec<SocketAddr>,
    /// Local recipients go to this LMTP server (`[delivery] local = "lmtp"`); `None`: into
    /// Maildirs we write ourselves.
    pub lmtp: Option<crate::courier::lmtp::LmtpAddress>,
}

impl DeliverySettings {
    /// Sensible defaults for `hostname`, as the config's documentation states them.
    pub fn new(hostname: &str) -> Self {
        DeliverySettings {
            hostname: hostname.to_string(),
            local_domains: Vec::new(),
            routes: HashMap::new(),
            relay: None,
            mx_port: 25,
            mx_tls: TlsPolicy::Opportunistic,
            retry: [60, 300, 900, 1800, 3600]
                .into_iter()
                .map(Duration::from_secs)
                .collect(),
            expire: Duration::from_secs(5 * 24 * 3600),
            delay_notice: None,
            per_destination: 4,
            max_connections: 32,
            connect_timeout: Duration::from_secs(30),
            command_timeout: Duration::from_secs(300),
            data_timeout: Duration::from_secs(600),
            own_addresses: Vec::new(),
            lmtp: None,
        }
    }

    /// The delay before attempt number `attempts + 1`, after `attempts` failed ones.
    pub fn retry_after(&self, attempts: u32) -> Duration {
        let i = (attempts as usize).saturating_sub(1);
        self.retry
            .get(i)
            .or(self.retry.last())
            .copied()
            .unwrap_or(Duration::from_secs(3600))
    }

    /// Whether `domain` (lower-case) is one of ours.
    pub fn is_local(&self, domain: &str) -> bool {
        self.local_domains.iter().any(|d| d.eq_ignore_ascii_case(domain))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_schedule_repeats_its_last_step() {
        let s = DeliverySettings::new("mx.example");
        let got: Vec<u64> = (1..=7).map(|n| s.retry_after(n).as_secs()).collect();
        assert_eq!(got, [60, 300, 900, 1800, 3600, 3600, 3600]);
        assert_eq!(TlsPolicy::parse("none"), Some(TlsPolicy::Disabled));
        assert_eq!(TlsPolicy::parse("sometimes"), None);
    }
}
