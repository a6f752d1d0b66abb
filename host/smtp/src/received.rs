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
        // RFC 6531 3.7.3: a transaction with SMTPUTF8.
        _ if envelope.params.smtputf8 => "UTF8SMTP",
        _ => "ESMTP",
    });
    // RFC 3848 (and RFC 6531) protocol types.
    if matches!(info.greeting, Some(Greeting::Ehlo(_)) | None) {
        if security.tls.is_some() {
            protocol.push('S');
        }
        if security.account.is_some() {
            protocol.push('A');
        }
    }
    let helo = info.greeting.as_ref().map_or("unknown", Greeting::name);
    // RFC 5321 4.1.3: an IPv6 address literal is tagged.
    let peer = match info.peer {
        std::net::IpAddr::V4(v4) => v4.to_string(),
        std::net::IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => format!("IPv6:{v6}"),
        },
    };
    let mut header =
        format!("Received: from {helo} ([{peer}])\r\n\tby {hostname} (Portcullis) with {protocol} id {id}");
    if let Some(tls) = &security.tls {
        header.push_str(&format!("\r\n\t(version={} cipher={})", tls.protocol, tls.cipher));
    }
    if let [only] = envelope.recipients.as_slice() {
        header.push_str(&format!("\r\n\tfor <{}>", only.mailbox));
    }
    header.push_str(&format!(";\r\n\t{date}\r\n"));
    header
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::MailParams;
    use crate::session::{PipelineKind, Security, TlsInfo};

    fn info(peer: &str, tls: bool, account: bool) -> SessionInfo {
        SessionInfo {
            greeting: Some(Greeting::Ehlo("client.example".into())),
            security: Security {
                tls: tls.then(|| TlsInfo {
                    protocol: "TLSv1.3".into(),
                    cipher: "X".into(),
                    peer_subject: None,
                }),
                account: account.then(|| "alice@example.org".into()),
                mechanism: None,
            },
            ..SessionInfo::new(PipelineKind::Submission, peer.parse().expect("ip"))
        }
    }

    fn envelope(smtputf8: bool) -> Envelope {
        Envelope {
            mail_from: None,
            params: MailParams {
                smtputf8,
                ..MailParams::default()
            },
            recipients: Vec::new(),
        }
    }

    #[test]
    fn protocol_and_address_literal() {
        let cases = [
            ("192.0.2.1", false, false, false, "([192.0.2.1])", "with ESMTP id"),
            ("192.0.2.1", true, true, false, "([192.0.2.1])", "with ESMTPSA id"),
            (
                "2001:db8::1",
                false,
                false,
                true,
                "([IPv6:2001:db8::1])",
                "with UTF8SMTP id",
            ),
            (
                "2001:db8::1",
                true,
                false,
                true,
                "([IPv6:2001:db8::1])",
                "with UTF8SMTPS id",
            ),
            ("::1", false, true, true, "([IPv6:::1])", "with UTF8SMTPA id"),
            (
                "::ffff:192.0.2.9",
                true,
                true,
                true,
                "([192.0.2.9])",
                "with UTF8SMTPSA id",
            ),
        ];
        for (peer, tls, account, utf8, from, with) in cases {
            let header = received_header(&info(peer, tls, account), "mx", "Q", &envelope(utf8), "D");
            assert!(header.contains(from) && header.contains(with), "{header}");
        }
    }
}
