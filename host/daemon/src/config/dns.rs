//! `[dns]`: the resolver every lookup of the server goes through (outbound MX, SPF, DKIM,
//! DMARC, ARC, iprev).

use std::net::SocketAddr;

use portcullis_outbound::DnsSettings;
use serde::Deserialize;

use super::{Problems, Span};

/// `[dns]`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct DnsSection {
    /// The DNS servers to ask (`ip:port`), in order. Default: the system's
    /// (`/etc/resolv.conf`).
    pub nameservers: Option<Vec<SocketAddr>>,
    /// How long one query may take. Default: `"5s"`.
    pub timeout: Option<Span>,
}

/// The validated settings. `delivery_resolver` is the older `[delivery] resolver`, read as
/// `[dns] nameservers = [it]` (a warning names the new key).
pub fn settings(
    section: DnsSection,
    delivery_resolver: Option<SocketAddr>,
    problems: &mut Problems<'_>,
) -> DnsSettings {
    let mut settings = DnsSettings::default();
    match (section.nameservers, delivery_resolver) {
        (Some(_), Some(_)) => problems.push(
            "delivery.resolver",
            "is the older name of [dns] nameservers; set only [dns] nameservers".into(),
        ),
        (Some(servers), None) => {
            if servers.is_empty() {
                problems.push(
                    "dns.nameservers",
                    "lists no server; leave it out to use the system's (/etc/resolv.conf)".into(),
                );
            }
            settings.nameservers = servers;
        }
        (None, Some(server)) => settings.nameservers = vec![server],
        (None, None) => {}
    }
    if let Some(Span(timeout)) = section.timeout {
        if timeout.is_zero() {
            problems.push("dns.timeout", "must be more than zero".into());
        }
        settings.timeout = timeout;
    }
    settings
}
