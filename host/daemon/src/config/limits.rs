//! `[limits]`: what one message and one session may take, and the limits that keep one
//! client from taking the server down (docs/operations.md, "Limits and abuse").

use std::time::Duration;

use serde::Deserialize;

use super::{Problems, Size, Span};

/// `[limits]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct LimitsSection {
    /// Largest message accepted. Default: `"25MiB"`.
    #[serde(default = "default_message_size")]
    pub message_size: Size,
    /// Recipients per message before `452 4.5.3`. Default: `100` (the RFC 5321 minimum).
    #[serde(default = "default_recipients")]
    pub recipients: usize,
    /// Longest text line in a message, CRLF included; longer lines are refused with
    /// `500 5.5.6`. Default: `65536` (RFC 5321's 1000 is the least a receiver must take;
    /// newsletters and generated HTML send longer lines, and Postfix accepts them).
    #[serde(default = "default_line_length")]
    pub line_length: usize,
    /// A content line ending in a bare LF: `"normalize"` (stored with CRLF; only
    /// `<CRLF>.<CRLF>` ends DATA) or `"reject"` (`554 5.5.2` and close). Default:
    /// `"normalize"`. A bare CR is always refused, and command lines always need CRLF.
    #[serde(default)]
    pub bare_lf: BareLfPolicy,
    /// Read MAIL, RCPT and EHLO to the letter of RFC 5321. Default: `false` — addresses
    /// without angle brackets, a trailing dot on a domain and words after the EHLO name are
    /// accepted, as Postfix does by default.
    #[serde(default)]
    pub strict_syntax: bool,
    /// Wait for a command before `421`. Default: `"5m"` (RFC 5321 4.5.3.2).
    #[serde(default = "default_command_timeout")]
    pub command_timeout: Span,
    /// Wait for each block of message content. Default: `"3m"` (RFC 5321 4.5.3.2.6).
    #[serde(default = "default_data_timeout")]
    pub data_timeout: Span,
    /// Refused commands before a session is closed. Default: `20` (Postfix's
    /// `smtpd_hard_error_limit`).
    #[serde(default = "default_errors")]
    pub errors: u32,
    /// Failed AUTH attempts before a session is closed. Default: `3`.
    #[serde(default = "default_auth_failures")]
    pub auth_failures: u32,
    /// Pause before answering the n-th failed AUTH, times n. Default: `"1s"`.
    #[serde(default = "default_auth_failure_delay")]
    pub auth_failure_delay: Span,
    /// Open connections per listener; more get `421 4.7.0` and are closed at once.
    /// Default: `1000`.
    #[serde(default = "default_connections")]
    pub connections: usize,
    /// Open connections from one client address (all listeners); more get `421 4.7.0`
    /// and are closed at once (Postfix's `smtpd_client_connection_count_limit`). Default:
    /// `50`.
    #[serde(default = "default_connections_per_ip")]
    pub connections_per_ip: usize,
    /// Addresses and networks (`"192.0.2.0/24"`, `"::1"`) exempt from the per-IP limits
    /// (connections, AUTH failures). Default: `["127.0.0.0/8", "::1"]` (loopback, like
    /// Postfix's exception for `$mynetworks`).
    #[serde(default = "default_exempt")]
    pub exempt: Vec<Network>,
    /// Slowest content a client may send, in octets per second, once `data-timeout` has
    /// passed since DATA or the first BDAT: below it the session gets `421 4.4.2` (Postfix's
    /// `smtpd_min_data_rate`). Default: `500`.
    #[serde(default = "default_min_data_rate")]
    pub min_data_rate: u64,
    /// Content a message may keep in memory while it arrives; beyond it, the content is
    /// written to its spool file as it comes. Default: `"1MiB"`.
    #[serde(default = "default_memory_per_message")]
    pub memory_per_message: Size,
    /// Content all sessions together may keep in memory (each open DATA or BDAT takes
    /// `memory-per-message` of it); beyond it, DATA and BDAT are answered `452 4.3.1`
    /// until some is given back. Default: `"256MiB"`.
    #[serde(default = "default_buffered_content")]
    pub buffered_content: Size,
    /// Free space the file system of the spool keeps for the messages already taken:
    /// while less than this (and a message's declared `SIZE`) is free, MAIL FROM is
    /// answered `452 4.3.1` and the client retries later. Default: one and a half times
    /// `message-size` (Postfix's rule for `queue_minfree`); `"0"` switches it off.
    #[serde(default)]
    pub spool_min_free: Option<Size>,
    /// Failed AUTHs from one client address within a window; beyond it, AUTH from there
    /// is answered `454 4.7.0` without checking the password until the window passes.
    /// Default: `{ max = 10, window = "10m" }`.
    #[serde(default = "default_auth_failures_per_ip")]
    pub auth_failures_per_ip: Threshold,
    /// Failed AUTHs for one account name within a window; beyond it, each attempt for
    /// that name waits a growing delay (never a refusal: nobody can lock a user out).
    /// Default: `{ max = 20, window = "10m" }`.
    #[serde(default = "default_auth_failures_per_account")]
    pub auth_failures_per_account: Threshold,
}

/// A count within a sliding window: `{ max = 10, window = "10m" }`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Threshold {
    /// Events allowed within the window.
    pub max: u32,
    /// The window.
    pub window: Span,
}

/// An address or a network, written `"192.0.2.0/24"`, `"2001:db8::/32"`, or a single
/// address (`"::1"`, a /32 or /128).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Network(pub ipnet::IpNet);

impl Network {
    /// Whether `ip` is in this network (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        let ip = match ip {
            std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, std::net::IpAddr::V4),
            v4 => v4,
        };
        self.0.contains(&ip)
    }
}

impl std::str::FromStr for Network {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let net = match text.parse::<std::net::IpAddr>() {
            Ok(ip) => Ok(ipnet::IpNet::from(ip)),
            Err(_) => text.parse::<ipnet::IpNet>().map(|n| n.trunc()),
        };
        net.map(Network)
            .map_err(|_| format!("{text:?} is not an address or network like \"192.0.2.0/24\" or \"::1\""))
    }
}

impl<'de> Deserialize<'de> for Network {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

fn default_memory_per_message() -> Size {
    Size::mib(1)
}
fn default_buffered_content() -> Size {
    Size::mib(256)
}
fn default_connections() -> usize {
    1000
}
fn default_connections_per_ip() -> usize {
    50
}
fn default_exempt() -> Vec<Network> {
    ["127.0.0.0/8", "::1"]
        .iter()
        .filter_map(|n| n.parse().ok())
        .collect()
}
fn default_min_data_rate() -> u64 {
    500
}
fn default_auth_failures_per_ip() -> Threshold {
    Threshold {
        max: 10,
        window: Span(Duration::from_secs(600)),
    }
}
fn default_auth_failures_per_account() -> Threshold {
    Threshold {
        max: 20,
        window: Span(Duration::from_secs(600)),
    }
}

fn default_message_size() -> Size {
    Size::mib(25)
}
fn default_recipients() -> usize {
    100
}
fn default_line_length() -> usize {
    64 * 1024
}
fn default_command_timeout() -> Span {
    Span(Duration::from_secs(300))
}
fn default_data_timeout() -> Span {
    Span(Duration::from_secs(180))
}
fn default_errors() -> u32 {
    20
}

/// `limits.bare-lf`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BareLfPolicy {
    /// Store such a line with CRLF.
    #[default]
    Normalize,
    /// Refuse the message and close the session.
    Reject,
}
fn default_auth_failures() -> u32 {
    3
}
fn default_auth_failure_delay() -> Span {
    Span(Duration::from_secs(1))
}

impl Default for LimitsSection {
    fn default() -> Self {
        LimitsSection {
            message_size: default_message_size(),
            recipients: default_recipients(),
            line_length: default_line_length(),
            bare_lf: BareLfPolicy::default(),
            strict_syntax: false,
            command_timeout: default_command_timeout(),
            data_timeout: default_data_timeout(),
            errors: default_errors(),
            auth_failures: default_auth_failures(),
            auth_failure_delay: default_auth_failure_delay(),
            connections: default_connections(),
            connections_per_ip: default_connections_per_ip(),
            exempt: default_exempt(),
            min_data_rate: default_min_data_rate(),
            memory_per_message: default_memory_per_message(),
            buffered_content: default_buffered_content(),
            spool_min_free: None,
            auth_failures_per_ip: default_auth_failures_per_ip(),
            auth_failures_per_account: default_auth_failures_per_account(),
        }
    }
}

impl LimitsSection {
    /// `spool-min-free` in octets, its default worked out.
    pub fn spool_min_free(&self) -> u64 {
        match self.spool_min_free {
            Some(size) => size.as_u64(),
            None => self.message_size.as_u64().saturating_mul(3) / 2,
        }
    }

    /// Records what does not make a working server.
    pub fn check(&self, problems: &mut Problems<'_>) {
        if self.recipients == 0 {
            problems.push(
                "limits.recipients",
                "must be at least 1 (RFC 5321 asks for 100)".into(),
            );
        }
        if self.line_length < 80 {
            problems.push(
                "limits.line-length",
                "must be at least 80 (RFC 5321 asks for 1000)".into(),
            );
        }
        if self.message_size.as_u64() == 0 || self.message_size.as_u64() > usize::MAX as u64 {
            problems.push(
                "limits.message-size",
                "must be a positive size such as \"25MiB\"".into(),
            );
        }
        if self.errors == 0 || self.auth_failures == 0 {
            problems.push("limits", "errors and auth-failures must be at least 1".into());
        }
        if self.connections == 0 || self.connections_per_ip == 0 {
            problems.push(
                "limits",
                "connections and connections-per-ip must be at least 1".into(),
            );
        }
        let (memory, buffered) = (self.memory_per_message.as_u64(), self.buffered_content.as_u64());
        if memory < 64 * 1024 || memory > buffered {
            problems.push(
                "limits.memory-per-message",
                "must be at least \"64KiB\" and at most limits.buffered-content".into(),
            );
        }
        if buffered > usize::MAX as u64 {
            problems.push(
                "limits.buffered-content",
                "is more than this machine can address".into(),
            );
        }
        if self.min_data_rate == 0 {
            problems.push("limits.min-data-rate", "must be at least 1 octet a second".into());
        }
    }
}
