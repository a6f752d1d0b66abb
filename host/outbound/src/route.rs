//! Where mail for a domain goes: a configured route, the relay host, or DNS.
//!
//! DNS follows RFC 5321 section 5.1: MX records in preference order (equal preferences
//! shuffled to spread load), the domain's own A/AAAA when it has no MX, and RFC 7505's
//! null MX (`MX 0 .`) as "this domain takes no mail", which bounces at once. Domain names
//! in Unicode are looked up as A-labels (IDNA).

use std::net::{IpAddr, SocketAddr};

use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{Name, RData};
use portcullis_smtp::{Enhanced, Reply};
use rand::seq::SliceRandom;

use crate::dns::Resolver;
use crate::settings::{DeliverySettings, RelayLogin, Route, TlsPolicy};

/// One host to try, with every address it resolved to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Host {
    /// Its name (for logs, SNI and DSN `Remote-MTA`).
    pub name: String,
    /// Its addresses with the port to use.
    pub addrs: Vec<SocketAddr>,
}

/// How to deliver to one destination.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Hosts in the order to try them.
    pub hosts: Vec<Host>,
    /// STARTTLS policy.
    pub tls: TlsPolicy,
    /// AUTH, for a smarthost.
    pub auth: Option<RelayLogin>,
    /// The key that per-destination connection limits count against.
    pub destination: String,
}

/// Why no plan could be made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteError {
    /// The domain cannot receive mail (null MX, no such domain): bounce now.
    Permanent(Reply),
    /// DNS is failing; try again later.
    Temporary(Reply),
}

impl RouteError {
    fn temporary(text: String) -> Self {
        RouteError::Temporary(Reply::new(451, Some(Enhanced(4, 4, 3)), text))
    }
}

/// What an MX answer says, before the exchanges are resolved to addresses.
#[derive(Debug, PartialEq, Eq)]
pub enum MxAnswer {
    /// RFC 7505: a single `MX 0 .` — the domain accepts no mail.
    NullMx,
    /// Exchange names in the order to try them.
    Exchanges(Vec<String>),
}

/// Orders MX records by preference, shuffling equal preferences, and recognises null MX.
pub fn order_mx(mut records: Vec<(u16, String)>) -> MxAnswer {
    let is_root = |n: &str| n.is_empty() || n == ".";
    if records.iter().any(|(_, n)| is_root(n)) {
        // RFC 7505 3: a null MX is alone; if other records sit beside it, the domain is
        // misconfigured and we still treat it as declining mail.
        return MxAnswer::NullMx;
    }
    records.shuffle(&mut rand::rng());
    records.sort_by_key(|(pref, _)| *pref);
    let mut names: Vec<String> = Vec::with_capacity(records.len());
    for (_, name) in records {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if !names.contains(&name) {
            names.push(name);
        }
    }
    MxAnswer::Exchanges(names)
}

/// The domain as an ASCII name for DNS, with IDN labels turned into A-labels.
pub fn ascii_domain(domain: &str) -> Option<String> {
    let name = Name::from_utf8(domain.trim_end_matches('.')).ok()?;
    Some(name.to_ascii().trim_end_matches('.').to_ascii_lowercase())
}

/// Resolves destinations to plans.
#[derive(Debug)]
pub struct Router {
    resolver: Resolver,
}

impl Router {
    /// A router asking the server's shared resolver.
    pub fn new(resolver: Resolver) -> Self {
        Router { resolver }
    }

    /// How to reach `domain` (lower-case) under `settings`.
    pub async fn plan(&self, settings: &DeliverySettings, domain: &str) -> Result<Plan, RouteError> {
        if let Some(route) = settings.routes.get(domain) {
            return self.fixed(route, format!("route:{domain}")).await;
        }
        if let Some(relay) = &settings.relay {
            return self.fixed(relay, "relay".to_string()).await;
        }
        let Some(ascii) = ascii_domain(domain) else {
            return Err(RouteError::Permanent(Reply::new(
                550,
                Some(Enhanced(5, 1, 2)),
                format!("{domain} is not a valid domain name"),
            )));
        };
        let exchanges = match self.mx(&ascii).await? {
            MxAnswer::NullMx => {
                return Err(RouteError::Permanent(Reply::new(
                    556,
                    Some(Enhanced(5, 1, 10)),
                    format!("{domain} accepts no mail (null MX, RFC 7505)"),
                )));
            }
            // RFC 5321 5.1: no MX means the domain itself is the one implicit exchange.
            MxAnswer::Exchanges(names) if names.is_empty() => vec![ascii.clone()],
            MxAnswer::Exchanges(names) => names,
        };
        let mut hosts = Vec::new();
        let mut last_error = None;
        let mut looped = false;
        for name in exchanges {
            match self.addresses(&name, settings.mx_port).await {
                Ok(mut addrs) => {
                    // Never connect to ourselves: an authenticated sender could otherwise
                    // make the queue deliver to our own listeners.
                    let before = addrs.len();
                    addrs.retain(|a| !settings.own_addresses.contains(a));
                    looped |= addrs.len() < before;
                    if !addrs.is_empty() {
                        hosts.push(Host { name, addrs });
                    }
                }
                Err(e) => last_error = Some(e),
            }
        }
        if hosts.is_empty() && looped {
            return Err(RouteError::Permanent(Reply::new(
                554,
                Some(Enhanced(5, 4, 6)),
                format!("mail for {domain} loops back to myself"),
            )));
        }
        if hosts.is_empty() {
            return Err(last_error.unwrap_or_else(|| {
                RouteError::Permanent(Reply::new(
                    550,
                    Some(Enhanced(5, 1, 2)),
                    format!("{domain} has no mail exchanger with an address"),
                ))
            }));
        }
        Ok(Plan {
            hosts,
            tls: settings.mx_tls,
            auth: None,
            destination: ascii,
        })
    }

    async fn fixed(&self, route: &Route, destination: String) -> Result<Plan, RouteError> {
        let addrs = self.addresses(&route.host, route.port).await?;
        Ok(Plan {
            hosts: vec![Host {
                name: route.host.clone(),
                addrs,
            }],
            tls: route.tls,
            auth: route.auth.clone(),
            destination,
        })
    }

    async fn mx(&self, domain: &str) -> Result<MxAnswer, RouteError> {
        match self.resolver.hickory().mx_lookup(format!("{domain}.")).await {
            Ok(lookup) => Ok(order_mx(
                lookup
                    .answers()
                    .iter()
                    .filter_map(|r| match &r.data {
                        RData::MX(mx) => Some((mx.preference, mx.exchange.to_ascii())),
                        _ => None,
                    })
                    .collect(),
            )),
            Err(e) => match no_records(&e) {
                Some(ResponseCode::NXDomain) => Err(RouteError::Permanent(Reply::new(
                    550,
                    Some(Enhanced(5, 1, 2)),
                    format!("domain {domain} does not exist"),
                ))),
                Some(_) => Ok(MxAnswer::Exchanges(Vec::new())),
                None => Err(RouteError::temporary(format!(
                    "MX lookup for {domain} failed: {e}"
                ))),
            },
        }
    }

    /// Addresses of `host` (an IP literal or a name), IPv6 and IPv4 alike.
    async fn addresses(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, RouteError> {
        if let Ok(ip) = host.trim_matches(['[', ']']).parse::<IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        let Some(ascii) = ascii_domain(host) else {
            return Err(RouteError::Permanent(Reply::new(
                550,
                Some(Enhanced(5, 1, 2)),
                format!("{host} is not a valid host name"),
            )));
        };
        match self.resolver.hickory().lookup_ip(format!("{ascii}.")).await {
            Ok(ips) => Ok(ips.iter().map(|ip| SocketAddr::new(ip, port)).collect()),
            Err(e) if no_records(&e).is_some() => Ok(Vec::new()),
            Err(e) => Err(RouteError::temporary(format!(
                "address lookup for {host} failed: {e}"
            ))),
        }
    }
}

/// The response code of a "no records" answer (NXDOMAIN or an empty NOERROR), if it is one.
fn no_records(e: &NetError) -> Option<ResponseCode> {
    match e {
        NetError::Dns(DnsError::NoRecordsFound(no)) => Some(no.response_code),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mx_order_and_null_mx() {
        let got = order_mx(vec![
            (20, "b.example.".into()),
            (10, "A.example.".into()),
            (30, "c.example.".into()),
            (10, "a.example".into()),
        ]);
        assert_eq!(
            got,
            MxAnswer::Exchanges(vec!["a.example".into(), "b.example".into(), "c.example".into()])
        );
        assert_eq!(order_mx(vec![(0, ".".into())]), MxAnswer::NullMx);
        assert_eq!(order_mx(vec![(0, "".into())]), MxAnswer::NullMx);
        assert_eq!(order_mx(vec![]), MxAnswer::Exchanges(vec![]));
        // Equal preferences are spread: both orders show up.
        let mut firsts = std::collections::HashSet::new();
        for _ in 0..200 {
            if let MxAnswer::Exchanges(n) = order_mx(vec![(5, "x.".into()), (5, "y.".into())]) {
                firsts.insert(n[0].clone());
            }
        }
        assert_eq!(firsts.len(), 2);
    }

    #[test]
    fn idn_domains_become_a_labels() {
        assert_eq!(
            ascii_domain("bücher.example").as_deref(),
            Some("xn--bcher-kva.example")
        );
        assert_eq!(ascii_domain("Example.ORG.").as_deref(), Some("example.org"));
    }
}
