//! The `Received:` trace header (RFC 5321 4.4) the host prepends when it spools a message.

use crate::envelope::Envelope;
use crate::session::{Greeting, SessionInfo};

/// Builds the `Received:` header, folded, ending in CRLF.
///
/// `date` is an RFC 5322 date-time supplied by the host (the core has no clock).
pub fn received_header(
    info: &SessionInfo,
    hostname: &str,
    id: &str,
    envelope: &Envelope,
    date: &str,
) -> String {
    let security = &info.security;
    let mut protocol = String::from(match info.greeting {
        Some(Greeting::Helo(_)) => "SMTP",
        _ => "ESMTP",
    });
    // RFC 3848 protocol types.
    if matches!(info.greeting, Some(Greeting::Ehlo(_)) | None) {
        if security.tls.is_some() {
            protocol.push('S');
        }
        if security.account.is_some() {
            protocol.push('A');
        }
    }
    let helo = info.greeting.as_ref().map_or("unknown", Greeting::name);
    let mut header = format!(
        "Received: from {helo} ([{}])\r\n\tby {hostname} (Portcullis) with {protocol} id {id}",
        info.peer
    );
    if let Some(tls) = &security.tls {
        header.push_str(&format!("\r\n\t(version={} cipher={})", tls.protocol, tls.cipher));
    }
    if let [only] = envelope.recipients.as_slice() {
        header.push_str(&format!("\r\n\tfor <{}>", only.mailbox));
    }
    header.push_str(&format!(";\r\n\t{date}\r\n"));
    header
}
