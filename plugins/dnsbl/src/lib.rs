//! `dnsbl`: the client's address against DNS blocklists (Spamhaus ZEN, SpamCop, a list of
//! your own), and optionally the sender's domain and the message's link domains against
//! domain lists (Spamhaus DBL, URIBL), through the host's resolver (`grant-dns = true`).
//!
//! ```toml
//! [[plugin]]
//! hook = "spam"
//! path = "dnsbl.wasm"
//! grant-dns = true
//! [plugin.config]
//! zones = ["zen.spamhaus.org", { zone = "bl.spamcop.net", score = 2.0 }]
//! domain-zones = ["dbl.spamhaus.org"]   # sender domain and link domains. Default: none
//! action = "reject"        # a listing refuses the message; or "score": add up, then decide
//! score = 5.0              # what one listing adds (a zone may set its own). Default: 5.0
//! junk-threshold = 5.0     # action = "score": from this total on, into Junk. Default: 5.0
//! reject-threshold = 10.0  # action = "score": from this total on, refused. Default: off
//! max-domains = 10         # link domains looked up per message. Default: 10
//! ```
//!
//! - A listing is an A record in 127.0.0.0/8. Answers in 127.255.255.0/24 are the list's
//!   own error codes (a query refused, a resolver it does not serve): logged, never a
//!   listing. Anything outside 127.0.0.0/8 is a resolver that rewrites NXDOMAIN: logged,
//!   never a listing either.
//! - NXDOMAIN is "not listed". A failed lookup (timeout, SERVFAIL) is logged and counts as
//!   not listed: a broken list never refuses mail.
//! - Refused: `554 5.7.1 Service unavailable; client [IP] blocked using ZONE; TXT`, the
//!   list's TXT reason when it has one (as Postfix's `reject_rbl_client` says it).
//! - Every listing is named in an `X-DNSBL` header; with `action = "score"` the total is
//!   the plugin's score and `X-DNSBL-Score` header.

use std::net::IpAddr;

use mail_parser::MessageParser;
use serde::Deserialize;

wit_bindgen::generate!({ path: "../../wit", world: "spam-plugin" });

use exports::portcullis::filter::spam::{Guest, SpamResult};
use portcullis::filter::dns::{self, Answer, LookupError, RecordType};
use portcullis::filter::log::{self, Level};
use portcullis::filter::types::{EnhancedCode, Envelope, Header, Message, Reply, SessionInfo, Verdict};

#[derive(Deserialize)]
#[serde(untagged)]
enum Zone {
    Name(String),
    Weighted { zone: String, score: f64 },
}

impl Zone {
    fn name(&self) -> &str {
        match self {
            Zone::Name(zone) | Zone::Weighted { zone, .. } => zone.trim_end_matches('.'),
        }
    }

    fn score(&self, default: f64) -> f64 {
        match self {
            Zone::Name(_) => default,
            Zone::Weighted { score, .. } => *score,
        }
    }
}

#[derive(Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
enum Action {
    Reject,
    Score,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct Config {
    #[serde(default)]
    zones: Vec<Zone>,
    #[serde(default)]
    domain_zones: Vec<Zone>,
    #[serde(default = "reject")]
    action: Action,
    #[serde(default = "five")]
    score: f64,
    #[serde(default = "five")]
    junk_threshold: f64,
    #[serde(default)]
    reject_threshold: Option<f64>,
    #[serde(default = "ten")]
    max_domains: usize,
}

fn reject() -> Action {
    Action::Reject
}
fn five() -> f64 {
    5.0
}
fn ten() -> usize {
    10
}

/// One listing found.
struct Listing {
    /// What was listed: the client's address or a domain.
    what: String,
    zone: String,
    /// The A record the list answered (`127.0.0.2`).
    code: String,
    score: f64,
    /// The list's TXT reason, for the client's address.
    reason: Option<String>,
}

/// The name to look up for `ip` in `zone`: octets (IPv4) or nibbles (IPv6) reversed.
fn query_name(ip: IpAddr, zone: &str) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            format!("{d}.{c}.{b}.{a}.{zone}")
        }
        IpAddr::V6(v6) => {
            let mut name = String::with_capacity(64 + zone.len());
            for byte in v6.octets().iter().rev() {
                name.push(char::from_digit(u32::from(byte & 0xf), 16).unwrap_or('0'));
                name.push('.');
                name.push(char::from_digit(u32::from(byte >> 4), 16).unwrap_or('0'));
                name.push('.');
            }
            name.push_str(zone);
            name
        }
    }
}

/// What a list said of one name: the listing code, or nothing.
fn listed(name: &str, zone: &str) -> Option<String> {
    match dns::lookup(name, RecordType::A) {
        Ok(answers) => {
            for answer in answers {
                let Answer::A(code) = answer else { continue };
                let Ok(ip) = code.parse::<std::net::Ipv4Addr>() else {
                    continue;
                };
                let [a, b, c, _] = ip.octets();
                if a != 127 {
                    log::log(
                        Level::Warn,
                        &format!(
                            "{zone} answered {code} for {name}: not a list's answer (a resolver rewriting NXDOMAIN?); ignored"
                        ),
                    );
                } else if b == 255 && c == 255 {
                    log::log(
                        Level::Warn,
                        &format!(
                            "{zone} answered {code} for {name}: the list's error code (queries refused?); ignored"
                        ),
                    );
                } else {
                    return Some(code);
                }
            }
            None
        }
        Err(LookupError::Nxdomain) => None,
        Err(LookupError::Failed(why)) => {
            log::log(
                Level::Warn,
                &format!("{zone}: looking up {name} failed ({why}); counted as not listed"),
            );
            None
        }
        Err(LookupError::Denied(why)) => {
            log::log(Level::Error, &format!("{zone}: {why}"));
            None
        }
    }
}

/// The list's TXT reason for a listed name, if it gives one.
fn reason(name: &str) -> Option<String> {
    match dns::lookup(name, RecordType::Txt) {
        Ok(answers) => answers.into_iter().find_map(|a| match a {
            Answer::Txt(text) if !text.trim().is_empty() => Some(text.trim().to_string()),
            _ => None,
        }),
        Err(_) => None,
    }
}

/// The host names of `http://` and `https://` links in `text`, lower-cased, in order.
fn link_hosts(text: &str, into: &mut Vec<String>) {
    let lower = text.to_ascii_lowercase();
    let mut rest = lower.as_str();
    while let Some(at) = rest.find("://") {
        let before = &rest[..at];
        let after = &rest[at + 3..];
        rest = after;
        if !(before.ends_with("http") || before.ends_with("https")) {
            continue;
        }
        let end = after
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '@'))
            .unwrap_or(after.len());
        // `user@host` links name the host after the `@`.
        let host = after[..end]
            .rsplit('@')
            .next()
            .unwrap_or("")
            .trim_end_matches('.');
        if host.contains('.') && host.parse::<IpAddr>().is_err() && !into.iter().any(|h| h == host) {
            into.push(host.to_string());
        }
    }
}

/// The sender's domain, then the link domains of the text and HTML parts.
fn domains(envelope: &Envelope, message: &Message, max_links: usize) -> Vec<String> {
    let mut found = Vec::new();
    if let Some((_, domain)) = envelope
        .mail_from
        .as_deref()
        .and_then(|from| from.rsplit_once('@'))
    {
        found.push(domain.trim_end_matches('.').to_ascii_lowercase());
    }
    if max_links == 0 {
        return found;
    }
    let raw = plugin_kit::read_all(message.size(), |at, max| message.read(at, max));
    let Some(parsed) = MessageParser::default().parse(&raw[..]) else {
        return found;
    };
    let mut links = Vec::new();
    for i in 0..parsed.text_body.len() {
        if let Some(text) = parsed.body_text(i) {
            link_hosts(&text, &mut links);
        }
    }
    for i in 0..parsed.html_body.len() {
        if let Some(html) = parsed.body_html(i) {
            link_hosts(&html, &mut links);
        }
    }
    for host in links.into_iter().take(max_links) {
        if !found.contains(&host) {
            found.push(host);
        }
    }
    found
}

fn header(name: &str, value: String) -> Header {
    Header {
        name: name.into(),
        value,
    }
}

struct Dnsbl;

impl Guest for Dnsbl {
    fn classify(session: SessionInfo, envelope: Envelope, message: &Message) -> Result<SpamResult, String> {
        // A config it cannot read is the plugin failing: `on-error` applies.
        let config: Config = serde_json::from_str(&portcullis::filter::config::json())
            .map_err(|e| format!("bad [plugin.config]: {e}"))?;
        let mut listings = Vec::new();
        match session.client_ip.parse::<IpAddr>() {
            Ok(ip) => {
                let ip = match ip {
                    IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
                    v4 => v4,
                };
                for zone in &config.zones {
                    let name = query_name(ip, zone.name());
                    if let Some(code) = listed(&name, zone.name()) {
                        listings.push(Listing {
                            what: ip.to_string(),
                            zone: zone.name().to_string(),
                            code,
                            score: zone.score(config.score),
                            reason: reason(&name),
                        });
                    }
                }
            }
            Err(_) => log::log(
                Level::Warn,
                &format!("client address {:?} not understood", session.client_ip),
            ),
        }
        if !config.domain_zones.is_empty() {
            for domain in domains(&envelope, message, config.max_domains) {
                for zone in &config.domain_zones {
                    if let Some(code) = listed(&format!("{domain}.{}", zone.name()), zone.name()) {
                        listings.push(Listing {
                            what: domain.clone(),
                            zone: zone.name().to_string(),
                            code,
                            score: zone.score(config.score),
                            reason: None,
                        });
                    }
                }
            }
        }

        let total: f64 = listings.iter().map(|l| l.score).sum();
        let mut headers: Vec<Header> = listings
            .iter()
            .take(10)
            .map(|l| header("X-DNSBL", format!("{} listed in {} ({})", l.what, l.zone, l.code)))
            .collect();
        for l in &listings {
            log::log(
                Level::Info,
                &format!("{} listed in {} ({})", l.what, l.zone, l.code),
            );
        }
        let verdict = match (&config.action, listings.first()) {
            (_, None) => Verdict::Accept,
            (Action::Reject, Some(first)) => Verdict::Reject(refusal(first)),
            (Action::Score, Some(first)) => {
                headers.push(header("X-DNSBL-Score", format!("{total:.1}")));
                if config.reject_threshold.is_some_and(|t| total >= t) {
                    Verdict::Reject(refusal(first))
                } else if total >= config.junk_threshold {
                    Verdict::Junk
                } else {
                    Verdict::Accept
                }
            }
        };
        Ok(SpamResult {
            score: total,
            verdict,
            headers,
            // Ours stand in place of any the message came with.
            remove_headers: vec!["X-DNSBL".into(), "X-DNSBL-Score".into()],
        })
    }
}

/// The reply for a refusal, naming the first listing's zone.
fn refusal(first: &Listing) -> Reply {
    let mut text = if first.what.parse::<IpAddr>().is_ok() {
        format!(
            "Service unavailable; client [{}] blocked using {}",
            first.what, first.zone
        )
    } else {
        format!(
            "Service unavailable; domain {} blocked using {}",
            first.what, first.zone
        )
    };
    if let Some(reason) = &first.reason {
        text.push_str("; ");
        text.push_str(reason);
    }
    Reply {
        code: 554,
        enhanced: Some(EnhancedCode {
            class: 5,
            subject: 7,
            detail: 1,
        }),
        text,
    }
}

export!(Dnsbl);
