//! `[delivery]` and `[delivery.routes]`: how mail for other domains leaves.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;

use portcullis_outbound::courier::lmtp::LmtpAddress;
use portcullis_outbound::{DeliverySettings, RelayLogin, Route, TlsPolicy};
use serde::Deserialize;

use super::Span;

/// `[delivery]`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct DeliverySection {
    /// A smarthost (`host:port`) for every domain without a route. Default: none (DNS).
    pub relay_host: Option<String>,
    /// STARTTLS towards the relay host: `"opportunistic"`, `"required"` or `"none"`.
    /// Default: `"required"` when `relay-username` is set, else `"opportunistic"`.
    pub relay_tls: Option<String>,
    /// The account to AUTH as at the relay host (only ever over TLS). Default: none.
    pub relay_username: Option<String>,
    /// A file holding that account's password (first line). Required with `relay-username`.
    pub relay_password_file: Option<std::path::PathBuf>,
    /// The older name of `[dns] nameservers` (one server), still read with a warning.
    pub resolver: Option<SocketAddr>,
    /// The port of mail exchangers found through DNS. Default: `25`.
    pub mx_port: Option<u16>,
    /// STARTTLS towards mail exchangers found through DNS. Default: `"opportunistic"`.
    pub tls: Option<String>,
    /// Delays between delivery attempts; the last one repeats. Default:
    /// `["1m", "5m", "15m", "30m", "1h"]` (then hourly).
    pub retry: Option<Vec<Span>>,
    /// How long a message may wait before it is returned to its sender. Default: `"5d"`.
    pub expire: Option<Span>,
    /// Tell the sender once when a message has waited this long. Default: none (never).
    pub delay_notice: Option<Span>,
    /// Connections at once to one destination. Default: `4`.
    pub connections_per_destination: Option<usize>,
    /// Outbound connections at once in all. Default: `32`.
    pub max_connections: Option<usize>,
    /// Time to connect to a host. Default: `"30s"`.
    pub connect_timeout: Option<Span>,
    /// Time to wait for each reply of a host. Default: `"5m"`.
    pub command_timeout: Option<Span>,
    /// Time to wait for the reply to the message content. Default: `"10m"`.
    pub data_timeout: Option<Span>,
    /// Where local recipients' mail goes: `"maildir"` (the default: Maildirs under
    /// `<data-dir>/mail`) or `"lmtp"` (the LMTP server at `lmtp`, such as Dovecot's).
    pub local: Option<String>,
    /// The LMTP server of `local = "lmtp"`: `unix:/run/dovecot/lmtp` or `tcp:IP:PORT`.
    pub lmtp: Option<String>,
    /// Per-domain next hops. Default: none.
    #[serde(default)]
    pub routes: HashMap<String, RouteEntry>,
}

/// One `[delivery.routes]` value: `"host:port"`, or a table with options.
#[derive(Clone, Debug)]
pub enum RouteEntry {
    /// `"host:port"`, opportunistic TLS.
    Address(String),
    /// `{ host = "host:port", tls = "required", username = "...", password-file = "..." }`.
    Table(RouteTable),
}

impl<'de> Deserialize<'de> for RouteEntry {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = RouteEntry;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(
                    "a route: \"host:port\", or a table like { host = \"host:port\", tls = \"required\" }",
                )
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<RouteEntry, E> {
                Ok(RouteEntry::Address(text.to_string()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<RouteEntry, A::Error> {
                RouteTable::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(RouteEntry::Table)
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// The table form of a route.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RouteTable {
    /// `host:port`. Required.
    pub host: String,
    /// STARTTLS policy. Default: `"opportunistic"`, or `"required"` with a username.
    pub tls: Option<String>,
    /// AUTH user name at that host. Default: none.
    pub username: Option<String>,
    /// File with the password. Required with `username`.
    pub password_file: Option<std::path::PathBuf>,
}

/// Splits `host:port` (`[v6]:port` for IPv6 literals).
fn host_port(text: &str) -> Option<(String, u16)> {
    let (host, port) = text.rsplit_once(':')?;
    let port: u16 = port.parse().ok().filter(|p| *p != 0)?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    (!host.is_empty() && !host.contains(char::is_whitespace)).then(|| (host.to_string(), port))
}

/// Turns the section into outbound settings; each problem is `(key, message)`.
pub fn settings(
    section: DeliverySection,
    hostname: &str,
    local_domains: &[String],
    base: &Path,
) -> Result<DeliverySettings, Vec<(String, String)>> {
    let mut check = Checker {
        base,
        problems: Vec::new(),
    };
    let mut s = DeliverySettings::new(hostname);
    s.local_domains = local_domains.to_vec();
    s.relay = check.relay(&section);
    s.routes = check.routes(section.routes);
    if let Some(port) = section.mx_port {
        if port == 0 {
            check.problem("delivery.mx-port", "must not be 0".into());
        }
        s.mx_port = port;
    }
    s.mx_tls = check.tls_policy("delivery.tls", section.tls.as_deref(), TlsPolicy::Opportunistic);
    s.lmtp = check.lmtp(section.local.as_deref(), section.lmtp.as_deref());
    if let Some(retry) = section.retry {
        if retry.is_empty() || retry.iter().any(|d| d.0.is_zero()) {
            check.problem(
                "delivery.retry",
                "must list at least one delay, each more than zero".into(),
            );
        }
        s.retry = retry.into_iter().map(|d| d.0).collect();
    }
    for (key, span, into) in [
        ("delivery.expire", section.expire, &mut s.expire),
        (
            "delivery.connect-timeout",
            section.connect_timeout,
            &mut s.connect_timeout,
        ),
        (
            "delivery.command-timeout",
            section.command_timeout,
            &mut s.command_timeout,
        ),
        ("delivery.data-timeout", section.data_timeout, &mut s.data_timeout),
    ] {
        if let Some(Span(d)) = span {
            if d.is_zero() {
                check.problem(key, "must be more than zero".into());
            }
            *into = d;
        }
    }
    s.delay_notice = section.delay_notice.map(|d| d.0);
    for (key, value, into) in [
        (
            "delivery.connections-per-destination",
            section.connections_per_destination,
            &mut s.per_destination,
        ),
        (
            "delivery.max-connections",
            section.max_connections,
            &mut s.max_connections,
        ),
    ] {
        if let Some(v) = value {
            if v == 0 {
                check.problem(key, "must be at least 1".into());
            }
            *into = v;
        }
    }
    if check.problems.is_empty() {
        Ok(s)
    } else {
        Err(check.problems)
    }
}

/// Reads the parts of `[delivery]` that need checking, and collects what is wrong.
struct Checker<'a> {
    base: &'a Path,
    problems: Vec<(String, String)>,
}

impl Checker<'_> {
    fn problem(&mut self, key: &str, message: String) {
        self.problems.push((key.to_string(), message));
    }

    fn tls_policy(&mut self, key: &str, text: Option<&str>, default: TlsPolicy) -> TlsPolicy {
        match text {
            None => default,
            Some(t) => TlsPolicy::parse(t).unwrap_or_else(|| {
                self.problem(
                    key,
                    format!("{t:?} is not one of \"opportunistic\", \"required\", \"none\""),
                );
                default
            }),
        }
    }

    /// `local` and `lmtp`: the LMTP server local recipients go to, or none for Maildir.
    fn lmtp(&mut self, local: Option<&str>, lmtp: Option<&str>) -> Option<LmtpAddress> {
        match (local.unwrap_or("maildir"), lmtp) {
            ("maildir", None) => None,
            ("maildir", Some(_)) => {
                self.problem(
                    "delivery.lmtp",
                    "is used only with local = \"lmtp\" (local is \"maildir\")".into(),
                );
                None
            }
            ("lmtp", None) => {
                self.problem(
                    "delivery.lmtp",
                    "local = \"lmtp\" needs the server: lmtp = \"unix:/run/dovecot/lmtp\" or \"tcp:127.0.0.1:24\"".into(),
                );
                None
            }
            ("lmtp", Some(text)) => {
                if let Some(path) = text.strip_prefix("unix:").filter(|p| p.starts_with('/')) {
                    return Some(LmtpAddress::Unix(path.into()));
                }
                match text.strip_prefix("tcp:").and_then(|a| a.parse().ok()) {
                    Some(address) => Some(LmtpAddress::Tcp(address)),
                    None => {
                        self.problem(
                            "delivery.lmtp",
                            format!("{text:?}: unix:/absolute/path or tcp:IP:PORT"),
                        );
                        None
                    }
                }
            }
            (other, _) => {
                self.problem(
                    "delivery.local",
                    format!("{other:?} is not one of \"maildir\", \"lmtp\""),
                );
                None
            }
        }
    }

    /// The login at a next hop: a user name and the first line of its password file.
    fn credentials(&mut self, key: &str, user: Option<String>, file: Option<&Path>) -> Option<RelayLogin> {
        let user = user?;
        let Some(file) = file else {
            self.problem(key, "a username needs a password file".into());
            return None;
        };
        let path = super::resolve(self.base, file);
        match std::fs::read_to_string(&path) {
            Ok(text) => Some(RelayLogin {
                username: user,
                password: text.lines().next().unwrap_or("").to_string(),
            }),
            Err(e) => {
                self.problem(key, format!("cannot read {}: {e}", path.display()));
                None
            }
        }
    }

    /// A fixed next hop; credentials are only ever sent over TLS.
    fn route(&mut self, key: &str, host: &str, tls: Option<&str>, auth: Option<RelayLogin>) -> Option<Route> {
        let default = if auth.is_some() {
            TlsPolicy::Required
        } else {
            TlsPolicy::Opportunistic
        };
        let tls = self.tls_policy(&format!("{key}.tls"), tls, default);
        if auth.is_some() && tls != TlsPolicy::Required {
            self.problem(
                &format!("{key}.tls"),
                "credentials are only sent over TLS: use tls = \"required\"".into(),
            );
        }
        match host_port(host) {
            Some((host, port)) => Some(Route {
                host,
                port,
                tls,
                auth,
            }),
            None => {
                self.problem(key, format!("{host:?} is not host:port"));
                None
            }
        }
    }

    fn relay(&mut self, section: &DeliverySection) -> Option<Route> {
        let Some(relay) = &section.relay_host else {
            if section.relay_username.is_some() || section.relay_tls.is_some() {
                self.problem(
                    "delivery.relay-host",
                    "relay-username and relay-tls need a relay-host".into(),
                );
            }
            return None;
        };
        let auth = self.credentials(
            "delivery.relay-username",
            section.relay_username.clone(),
            section.relay_password_file.as_deref(),
        );
        self.route("delivery.relay-host", relay, section.relay_tls.as_deref(), auth)
    }

    /// Each route under its lower-case name and its A-label (IDN).
    fn routes(&mut self, entries: HashMap<String, RouteEntry>) -> HashMap<String, Route> {
        let mut routes = HashMap::new();
        for (domain, entry) in entries {
            let key = format!("delivery.routes.{domain:?}");
            let Some(ascii) = portcullis_outbound::route::ascii_domain(&domain) else {
                self.problem(&key, "is not a domain name".into());
                continue;
            };
            let built = match entry {
                RouteEntry::Address(host) => self.route(&key, &host, None, None),
                RouteEntry::Table(t) => {
                    let auth =
                        self.credentials(&format!("{key}.username"), t.username, t.password_file.as_deref());
                    self.route(&key, &t.host, t.tls.as_deref(), auth)
                }
            };
            if let Some(r) = built {
                routes.insert(domain.to_ascii_lowercase(), r.clone());
                routes.insert(ascii, r);
            }
        }
        routes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn host_port_forms() {
        assert_eq!(host_port("mx.example:25"), Some(("mx.example".into(), 25)));
        assert_eq!(host_port("[::1]:2525"), Some(("::1".into(), 2525)));
        assert_eq!(host_port("mx.example"), None);
        assert_eq!(host_port("mx.example:0"), None);
        assert_eq!(host_port(":25"), None);
    }

    fn parse(text: &str) -> Result<DeliverySettings, Vec<(String, String)>> {
        let section: DeliverySection = toml::from_str(text).expect("toml");
        settings(
            section,
            "mx.example.org",
            &["example.org".into()],
            Path::new("/nonexistent"),
        )
    }

    #[test]
    fn problems_name_their_keys() {
        let cases = [
            ("relay-host = \"smtp.example\"", "delivery.relay-host"),
            ("relay-username = \"u\"", "delivery.relay-host"),
            (
                "relay-host = \"s:587\"\nrelay-username = \"u\"",
                "delivery.relay-username",
            ),
            (
                "relay-host = \"s:587\"\nrelay-username = \"u\"\nrelay-password-file = \"p\"",
                "delivery.relay-username",
            ),
            ("tls = \"maybe\"", "delivery.tls"),
            ("retry = []", "delivery.retry"),
            ("max-connections = 0", "delivery.max-connections"),
            (
                "[routes]\n\"far.example\" = { host = \"x:25\", tls = \"none\", username = \"u\", password-file = \"p\" }",
                "far.example",
            ),
        ];
        for (text, key) in cases {
            let problems = parse(text).expect_err(text);
            assert!(
                problems.iter().any(|(k, _)| k.contains(key)),
                "{text}: {problems:?}"
            );
        }
    }

    #[test]
    fn routes_and_defaults() {
        let s = parse(
            "retry = [\"10s\", \"1m\"]\nexpire = \"1d\"\n[routes]\n\"Far.Example\" = \"127.0.0.1:2525\"\n\"bücher.example\" = { host = \"[::1]:25\", tls = \"required\" }\n",
        )
        .expect("valid");
        assert_eq!(s.routes["far.example"].port, 2525);
        assert_eq!(s.routes["xn--bcher-kva.example"].host, "::1");
        assert_eq!(s.routes["xn--bcher-kva.example"].tls, TlsPolicy::Required);
        assert_eq!(s.retry_after(5), Duration::from_secs(60));
        assert_eq!(s.expire, Duration::from_secs(86_400));
        assert_eq!(s.mx_port, 25);
        assert!(s.relay.is_none() && s.delay_notice.is_none());
    }
}
