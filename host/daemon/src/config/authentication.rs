//! `[authentication]`: the checks of mail arriving on MX (SPF, DKIM, ARC, DMARC, iprev)
//! and what a DMARC failure does.

use std::time::Duration;

use serde::Deserialize;

use super::{Problems, Span};

/// What a DMARC failure does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DmarcMode {
    /// Apply the From domain's policy: `p=reject` is refused (550 5.7.1), `p=quarantine`
    /// goes to Junk, a DNS failure is answered 451 so the sender retries.
    #[default]
    Enforce,
    /// Evaluate and record in the header; never refuse.
    Report,
    /// Do not evaluate DMARC.
    Off,
}

/// `[authentication]`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct AuthenticationSection {
    /// The name in our `Authentication-Results:` headers; the same on every node.
    /// Default: the primary local domain.
    pub authserv_id: Option<String>,
    /// How long the checks of one message may take together. Default: `"10s"`.
    pub timeout: Option<Span>,
    /// `"enforce"`, `"report"` or `"off"`. Default: `"enforce"`.
    #[serde(default)]
    pub dmarc: DmarcMode,
    /// Domains whose ARC seals are trusted to vouch for a message that fails DMARC after
    /// passing through them (mailing lists, forwarders). Default: none.
    #[serde(default)]
    pub trusted_arc_sealers: Vec<String>,
    /// Check SPF. Default: `true`.
    pub spf: Option<bool>,
    /// Verify DKIM signatures. Default: `true`.
    pub dkim: Option<bool>,
    /// Verify ARC chains. Default: `true`.
    pub arc: Option<bool>,
    /// Check the client's reverse DNS (iprev). Default: `true`.
    pub iprev: Option<bool>,
}

/// `[authentication]`, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthenticationSettings {
    /// Lower-case.
    pub authserv_id: String,
    /// For all the checks of one message.
    pub timeout: Duration,
    /// What a DMARC failure does.
    pub dmarc: DmarcMode,
    /// Lower-case, without a trailing dot.
    pub trusted_arc_sealers: Vec<String>,
    /// Which checks run.
    pub spf: bool,
    /// Verify DKIM signatures.
    pub dkim: bool,
    /// Verify ARC chains.
    pub arc: bool,
    /// Check the client's reverse DNS.
    pub iprev: bool,
}

/// The validated settings, with `primary` (the primary local domain) as default authserv-id.
pub fn settings(
    section: AuthenticationSection,
    primary: &str,
    problems: &mut Problems<'_>,
) -> AuthenticationSettings {
    let authserv_id = section
        .authserv_id
        .unwrap_or_else(|| primary.to_string())
        .trim_end_matches('.')
        .to_ascii_lowercase();
    if authserv_id.is_empty()
        || !authserv_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
    {
        problems.push(
            "authentication.authserv-id",
            format!("{authserv_id:?} is not a host or domain name"),
        );
    }
    let timeout = section.timeout.map_or(Duration::from_secs(10), |s| s.0);
    if timeout.is_zero() {
        problems.push("authentication.timeout", "must be more than zero".into());
    }
    let trusted_arc_sealers = section
        .trusted_arc_sealers
        .iter()
        .map(|d| d.trim_end_matches('.').to_ascii_lowercase())
        .collect::<Vec<_>>();
    if let Some(bad) = trusted_arc_sealers
        .iter()
        .find(|d| d.is_empty() || d.contains(['@', ' ', '/']))
    {
        problems.push(
            "authentication.trusted-arc-sealers",
            format!("{bad:?} is not a domain name"),
        );
    }
    AuthenticationSettings {
        authserv_id,
        timeout,
        dmarc: section.dmarc,
        trusted_arc_sealers,
        spf: section.spf.unwrap_or(true),
        dkim: section.dkim.unwrap_or(true),
        arc: section.arc.unwrap_or(true),
        iprev: section.iprev.unwrap_or(true),
    }
}

impl AuthenticationSettings {
    /// What `check-config` says of them, of the resolver and of the signing keys.
    pub fn summary(&self, dns: &portcullis_outbound::DnsSettings, dkim_keys: usize) -> String {
        let dmarc = match self.dmarc {
            DmarcMode::Enforce => Some("dmarc (enforced)"),
            DmarcMode::Report => Some("dmarc (recorded only)"),
            DmarcMode::Off => None,
        };
        let methods: Vec<&str> = [
            ("iprev", self.iprev),
            ("spf", self.spf),
            ("dkim", self.dkim),
            ("arc", self.arc),
        ]
        .into_iter()
        .filter_map(|(name, on)| on.then_some(name))
        .chain(dmarc)
        .collect();
        let methods = if methods.is_empty() {
            "none".to_string()
        } else {
            methods.join(", ")
        };
        let resolvers = if dns.nameservers.is_empty() {
            "the system's resolvers (/etc/resolv.conf)".to_string()
        } else {
            dns.nameservers
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        format!(
            "mail authentication on MX: {methods}; authserv-id {}; DNS: {resolvers}; {dkim_keys} DKIM key(s) for submission",
            self.authserv_id
        )
    }
}
