//! Delivery status notifications (RFC 3464): the bounce, the delay notice, and the
//! "delivered" and "relayed" reports, as `multipart/report` messages from the null sender.
//!
//! Which recipients get one follows RFC 3461 NOTIFY: absent means failures and delays;
//! NEVER means none; SUCCESS is reported for a local delivery, and for a relay only when the
//! next hop could not report it itself.

use portcullis_smtp::envelope::{Envelope, MailParams, Notify, Recipient, Ret};
use portcullis_smtp::{Enhanced, Folder, Reply};
use portcullis_spool::{Entry, QueueId, Spool, SpoolError};

use crate::settings::DeliverySettings;

/// Returned message content above this size is cut to its headers (Postfix returns
/// 50,000 octets; a little more is kind to the sender).
pub const RETURN_LIMIT: usize = 128 * 1024;

/// What the report says happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReportAction {
    /// Delivery failed for good.
    Fail,
    /// Delivery is late and will be retried.
    Delay,
    /// Relayed to a host that will not send DSNs itself.
    Relay,
    /// Delivered into a local mailbox (the final delivery).
    Deliver,
    /// Delivered to an alias, which forwards it to several addresses (RFC 3464 2.3.3).
    Expanded,
}

impl ReportAction {
    fn field(self) -> &'static str {
        match self {
            ReportAction::Fail => "failed",
            ReportAction::Delay => "delayed",
            ReportAction::Relay => "relayed",
            ReportAction::Deliver => "delivered",
            ReportAction::Expanded => "expanded",
        }
    }

    /// Whether `to` is owed this kind of report: its NOTIFY asks for it, or, for an
    /// alias's `expanded` report, it carries it ([`Recipient::reports_expansion`]).
    pub fn wanted_for(self, to: &Recipient) -> bool {
        match self {
            ReportAction::Expanded => to.reports_expansion,
            _ => self.wanted_by(to.params.notify),
        }
    }

    /// Whether a recipient's NOTIFY asks for this kind of report.
    pub fn wanted_by(self, notify: Option<Notify>) -> bool {
        match notify {
            None => matches!(self, ReportAction::Fail | ReportAction::Delay),
            Some(n) if n.never => false,
            Some(n) => match self {
                ReportAction::Fail => n.failure,
                ReportAction::Delay => n.delay,
                ReportAction::Relay | ReportAction::Deliver | ReportAction::Expanded => n.success,
            },
        }
    }
}

/// One recipient's line of the report.
#[derive(Clone, Debug)]
pub struct RecipientReport {
    /// Index into the envelope's recipients.
    pub index: usize,
    /// The host that answered, if one did.
    pub remote_mta: Option<String>,
    /// Its answer (or ours, for expiry and DNS failures).
    pub reply: Reply,
}

/// Everything a report is made of.
#[derive(Debug)]
pub struct Report<'a> {
    /// Our host name (Reporting-MTA, From, Message-ID).
    pub hostname: &'a str,
    /// A unique token for the Message-ID and the MIME boundary (the DSN's queue id).
    pub token: &'a str,
    /// The original envelope.
    pub envelope: &'a Envelope,
    /// When the original arrived, seconds since the epoch.
    pub arrival: u64,
    /// The original message as spooled.
    pub message: &'a [u8],
    /// What happened.
    pub action: ReportAction,
    /// To whom.
    pub recipients: Vec<RecipientReport>,
    /// For a delay: when we give up, seconds since the epoch.
    pub retry_until: Option<u64>,
}

fn rfc2822(secs: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp(secs as i64)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc2822).ok())
        .unwrap_or_default()
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The status code a reply stands for (its enhanced code, or the class alone).
pub fn status_of(reply: &Reply) -> Enhanced {
    reply.enhanced.unwrap_or(Enhanced((reply.code / 100) as u8, 0, 0))
}

/// Decodes RFC 3461 xtext (`+2B` is `+`); undecodable input is returned as it was.
pub fn xtext_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'+'
            && let Some(hex) = text.get(i + 1..i + 3)
            && let Ok(b) = u8::from_str_radix(hex, 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out).unwrap_or_else(|_| text.to_string())
}

/// Text safe for one header or field line: no control characters, bounded length.
fn field(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(900)
        .collect()
}

/// The headers of `message` (up to the blank line), CRLF-terminated.
fn headers_of(message: &[u8]) -> &[u8] {
    match message.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(end) => &message[..end + 2],
        None => message,
    }
}

/// The subject and the human-readable part of the report.
fn human_part(r: &Report<'_>) -> (&'static str, String) {
    let (subject, intro) = match r.action {
        ReportAction::Fail => (
            "Undelivered Mail Returned to Sender",
            "Your message could not be delivered to one or more recipients.\nIt is attached below; the reasons follow.",
        ),
        ReportAction::Delay => (
            "Delayed Mail (still being retried)",
            "Your message has not been delivered yet to one or more recipients.\nNo action is needed: delivery will be retried.",
        ),
        ReportAction::Relay => (
            "Successful Mail Delivery Report (relayed)",
            "Your message was relayed to the next server, which does not send\ndelivery reports of its own.",
        ),
        ReportAction::Deliver => (
            "Successful Mail Delivery Report",
            "Your message was delivered to the mailbox of each recipient below.",
        ),
        ReportAction::Expanded => (
            "Successful Mail Delivery Report (expanded)",
            "Your message was delivered to each address below, an alias that passes it on\nto several addresses; their deliveries are not reported to you.",
        ),
    };
    let mut human = format!("This is the mail system at {}.\n\n{intro}\n\n", r.hostname);
    for rcpt in &r.recipients {
        if let Some(to) = r.envelope.recipients.get(rcpt.index) {
            let host = rcpt
                .remote_mta
                .as_deref()
                .map(|h| format!(" (host {h} said)"))
                .unwrap_or_default();
            human.push_str(&format!(
                "<{}>{host}: {}\n",
                reported(r.action, to),
                field(&rcpt.reply.to_string())
            ));
        }
    }
    if let Some(until) = r.retry_until {
        human.push_str(&format!("\nDelivery will be tried until {}.\n", rfc2822(until)));
    }
    (subject, human)
}

/// The address a report line is about: the recipient, or for an `expanded` report the
/// alias it came from.
fn reported(action: ReportAction, to: &Recipient) -> &portcullis_smtp::Mailbox {
    match (&to.alias, action) {
        (Some(alias), ReportAction::Expanded) => alias,
        _ => &to.mailbox,
    }
}

/// The `message/delivery-status` part (RFC 3464 2.2 and 2.3).
fn status_part(r: &Report<'_>) -> String {
    let mut status = format!("Reporting-MTA: dns; {}\n", r.hostname);
    if let Some(envid) = &r.envelope.params.envid {
        status.push_str(&format!(
            "Original-Envelope-Id: {}\n",
            field(&xtext_decode(envid))
        ));
    }
    status.push_str(&format!("Arrival-Date: {}\n", rfc2822(r.arrival)));
    let attempted = rfc2822(now());
    for rcpt in &r.recipients {
        let Some(to) = r.envelope.recipients.get(rcpt.index) else {
            continue;
        };
        status.push('\n');
        // The address the sender named: its ORCPT, else the alias this recipient came
        // from.
        if let Some(orcpt) = &to.params.orcpt {
            status.push_str(&format!("Original-Recipient: {}\n", field(&xtext_decode(orcpt))));
        } else if let Some(alias) = to.alias.as_ref().filter(|_| r.action != ReportAction::Expanded) {
            status.push_str(&format!("Original-Recipient: rfc822; {alias}\n"));
        }
        status.push_str(&format!("Final-Recipient: rfc822; {}\n", reported(r.action, to)));
        status.push_str(&format!("Action: {}\n", r.action.field()));
        let code = match r.action {
            ReportAction::Relay | ReportAction::Deliver | ReportAction::Expanded => Enhanced(2, 0, 0),
            _ => status_of(&rcpt.reply),
        };
        status.push_str(&format!("Status: {code}\n"));
        if let Some(host) = &rcpt.remote_mta {
            status.push_str(&format!("Remote-MTA: dns; {}\n", field(host)));
        }
        let diagnostic = field(&rcpt.reply.to_string().replace("\r\n", " "));
        status.push_str(&format!("Diagnostic-Code: smtp; {}\n", diagnostic.trim()));
        status.push_str(&format!("Last-Attempt-Date: {attempted}\n"));
        if let Some(until) = r.retry_until {
            status.push_str(&format!("Will-Retry-Until: {}\n", rfc2822(until)));
        }
    }
    status
}

/// Composes the report, a complete message with CRLF line endings, to the envelope's
/// sender.
pub fn compose(r: &Report<'_>) -> Vec<u8> {
    let boundary = format!("{}/{}", r.token, r.hostname);
    let sender = r
        .envelope
        .mail_from
        .as_ref()
        .map(ToString::to_string)
        .unwrap_or_default();
    let (subject, human) = human_part(r);
    let status = status_part(r);

    let headers_only = r.action != ReportAction::Fail
        || r.envelope.params.ret == Some(Ret::Hdrs)
        || r.message.len() > RETURN_LIMIT;
    let returned: &[u8] = if headers_only {
        headers_of(r.message)
    } else {
        r.message
    };
    let eight_bit = returned.iter().any(|b| *b >= 0x80);
    let returned_type = if headers_only {
        "text/rfc822-headers"
    } else {
        "message/rfc822"
    };

    let head = format!(
        "From: Mail Delivery System <MAILER-DAEMON@{host}>\n\
         To: <{sender}>\n\
         Subject: {subject}\n\
         Date: {date}\n\
         Message-ID: <dsn.{token}@{host}>\n\
         Auto-Submitted: auto-replied\n\
         MIME-Version: 1.0\n\
         Content-Type: multipart/report; report-type=delivery-status;\n\
         \tboundary=\"{boundary}\"\n\
         \n\
         This is a MIME-encapsulated delivery status notification.\n\
         \n\
         --{boundary}\n\
         Content-Description: Notification\n\
         Content-Type: text/plain; charset=utf-8\n\
         \n\
         {human}\n\
         --{boundary}\n\
         Content-Description: Delivery report\n\
         Content-Type: message/delivery-status\n\
         \n\
         {status}\n\
         --{boundary}\n\
         Content-Description: {description}\n\
         Content-Type: {returned_type}\n{cte}\
         \n",
        host = r.hostname,
        date = rfc2822(now()),
        token = r.token,
        description = if headers_only {
            "Message headers"
        } else {
            "Undelivered message"
        },
        cte = if eight_bit {
            "Content-Transfer-Encoding: 8bit\n"
        } else {
            ""
        },
    );
    let mut out = head.replace('\n', "\r\n").into_bytes();
    out.extend_from_slice(returned);
    if !returned.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    out
}

/// Queues a report of `action` about `entry`'s `recipients` to its sender, keeping only
/// the recipients whose NOTIFY asks for it: composed, stored in the spool durably (a
/// message from `<>` to the sender, local or remote like any other), and returned for
/// delivery. `None` when nobody is to hear it, or the message came from the null sender
/// (a bounce is never bounced).
pub fn queue_report(
    spool: &Spool,
    settings: &DeliverySettings,
    report: Pending<'_>,
) -> Result<Option<Entry>, SpoolError> {
    let Pending {
        entry,
        message,
        action,
        recipients,
        retry_until,
    } = report;
    let recipients: Vec<RecipientReport> = recipients
        .into_iter()
        .filter(|r| {
            entry
                .envelope
                .recipients
                .get(r.index)
                .is_some_and(|to| action.wanted_for(to))
        })
        .collect();
    if recipients.is_empty() {
        return Ok(None);
    }
    let Some(sender) = entry.envelope.mail_from.clone() else {
        tracing::warn!(queue_id = %entry.id, ?action, "a delivery report about a message from the null sender is dropped (bounces are never bounced)");
        return Ok(None);
    };
    let id = QueueId::generate();
    let text = compose(&Report {
        hostname: &settings.hostname,
        token: id.as_str(),
        envelope: &entry.envelope,
        arrival: entry.received_at,
        message,
        action,
        recipients,
        retry_until,
    });
    let local = settings.is_local(&sender.domain_lower());
    let envelope = Envelope {
        mail_from: None,
        params: MailParams::default(),
        recipients: vec![Recipient {
            local,
            ..Recipient::remote(sender, Default::default())
        }],
    };
    spool.store(id, envelope, Folder::Inbox, "", &text).map(Some)
}

/// A report to queue: what [`queue_report`] needs besides the spool and the settings.
#[derive(Debug)]
pub struct Pending<'a> {
    /// The original message's spool entry.
    pub entry: &'a Entry,
    /// Its content as spooled.
    pub message: &'a [u8],
    /// What happened.
    pub action: ReportAction,
    /// To whom (filtered by their NOTIFY).
    pub recipients: Vec<RecipientReport>,
    /// For a delay: when we give up.
    pub retry_until: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_smtp::Mailbox;
    use portcullis_smtp::envelope::{MailParams, RcptParams, Recipient};

    /// A needle without a line break must begin a line: "Action: failed" inside
    /// "ReportAction: failed" is not the field.
    fn has_field(text: &str, needle: &str) -> bool {
        if needle.contains("\r\n") {
            text.contains(needle)
        } else {
            text.starts_with(needle) || text.contains(&format!("\n{needle}"))
        }
    }

    fn envelope(ret: Option<Ret>, notify: Option<Notify>) -> Envelope {
        Envelope {
            mail_from: Some(Mailbox {
                local: "alice".into(),
                domain: "example.org".into(),
            }),
            params: MailParams {
                ret,
                envid: Some("id+2B1".into()),
                ..Default::default()
            },
            recipients: vec![Recipient::remote(
                Mailbox {
                    local: "bob".into(),
                    domain: "example.net".into(),
                },
                RcptParams {
                    notify,
                    orcpt: Some("rfc822;bob+2Bx@example.net".into()),
                },
            )],
        }
    }

    #[test]
    fn a_bounce_has_the_three_parts_and_the_original() {
        let env = envelope(None, None);
        let message = b"Subject: hi\r\nFrom: alice@example.org\r\n\r\nbody\r\n";
        let dsn = compose(&Report {
            hostname: "mx.example.org",
            token: "ABC",
            envelope: &env,
            arrival: 1_700_000_000,
            message,
            action: ReportAction::Fail,
            recipients: vec![RecipientReport {
                index: 0,
                remote_mta: Some("mx.example.net".into()),
                reply: Reply::new(550, Some(Enhanced(5, 1, 1)), "no such user"),
            }],
            retry_until: None,
        });
        let text = String::from_utf8(dsn).unwrap();
        for needle in [
            "Content-Type: multipart/report; report-type=delivery-status;",
            "Auto-Submitted: auto-replied",
            "To: <alice@example.org>",
            "Original-Envelope-Id: id+1",
            "Original-Recipient: rfc822;bob+x@example.net",
            "Final-Recipient: rfc822; bob@example.net",
            "Action: failed",
            "Status: 5.1.1",
            "Remote-MTA: dns; mx.example.net",
            "Diagnostic-Code: smtp; 550 5.1.1 no such user",
            "Content-Type: message/rfc822",
            "Subject: hi\r\nFrom: alice@example.org\r\n\r\nbody\r\n",
            "--ABC/mx.example.org--\r\n",
        ] {
            assert!(has_field(&text, needle), "missing {needle:?} in\n{text}");
        }
        assert!(!text.replace("\r\n", "").contains('\n'), "bare LF in the DSN");
        assert!(!text.replace("\r\n", "").contains('\r'), "bare CR in the DSN");
    }

    #[test]
    fn reports_about_alias_targets_name_the_alias() {
        let mut env = envelope(None, None);
        let alias = Mailbox {
            local: "team".into(),
            domain: "example.org".into(),
        };
        env.recipients[0].params.orcpt = None;
        env.recipients[0].alias = Some(alias);
        env.recipients[0].reports_expansion = true;
        let report = |action, reply| Report {
            hostname: "h",
            token: "T",
            envelope: &env,
            arrival: 0,
            message: b"Subject: hi\r\n\r\nbody\r\n",
            action,
            recipients: vec![RecipientReport {
                index: 0,
                remote_mta: None,
                reply,
            }],
            retry_until: None,
        };
        let failed = String::from_utf8(compose(&report(
            ReportAction::Fail,
            Reply::new(
                554,
                Some(Enhanced(5, 4, 6)),
                "mail forwarding loop for team@example.org",
            ),
        )))
        .unwrap();
        for needle in [
            "Original-Recipient: rfc822; team@example.org",
            "Final-Recipient: rfc822; bob@example.net",
            "Action: failed",
            "Status: 5.4.6",
        ] {
            assert!(has_field(&failed, needle), "missing {needle:?} in\n{failed}");
        }
        let expanded = String::from_utf8(compose(&report(
            ReportAction::Expanded,
            Reply::fixed(250, Some(Enhanced(2, 0, 0)), "alias expanded"),
        )))
        .unwrap();
        for needle in [
            "Subject: Successful Mail Delivery Report (expanded)",
            "Final-Recipient: rfc822; team@example.org",
            "Action: expanded",
            "Status: 2.0.0",
            "Content-Type: text/rfc822-headers",
        ] {
            assert!(has_field(&expanded, needle), "missing {needle:?} in\n{expanded}");
        }
        assert!(!expanded.contains("bob@example.net"), "{expanded}");
        // Owed by the target that carries it, whatever its NOTIFY says.
        assert!(ReportAction::Expanded.wanted_for(&env.recipients[0]));
        env.recipients[0].reports_expansion = false;
        assert!(!ReportAction::Expanded.wanted_for(&env.recipients[0]));
    }

    #[test]
    fn ret_hdrs_and_delays_return_headers_only() {
        let env = envelope(Some(Ret::Hdrs), None);
        let message = b"Subject: hi\r\n\r\nsecret body\r\n";
        let report = |action| Report {
            hostname: "h",
            token: "T",
            envelope: &env,
            arrival: 0,
            message,
            action,
            recipients: vec![RecipientReport {
                index: 0,
                remote_mta: None,
                reply: Reply::new(451, Some(Enhanced(4, 4, 1)), "no answer"),
            }],
            retry_until: Some(86_400),
        };
        for action in [ReportAction::Fail, ReportAction::Delay] {
            let text = String::from_utf8(compose(&report(action))).unwrap();
            assert!(text.contains("text/rfc822-headers"));
            assert!(text.contains("Subject: hi"));
            assert!(!text.contains("secret body"));
        }
        let delay = String::from_utf8(compose(&report(ReportAction::Delay))).unwrap();
        assert!(has_field(&delay, "Action: delayed") && delay.contains("Will-Retry-Until:"));
    }

    #[test]
    fn a_success_report_says_delivered_and_returns_headers() {
        let env = envelope(Some(Ret::Full), None);
        let text = String::from_utf8(compose(&Report {
            hostname: "mx.example.org",
            token: "T",
            envelope: &env,
            arrival: 0,
            message: b"Subject: hi\r\n\r\nsecret body\r\n",
            action: ReportAction::Deliver,
            recipients: vec![RecipientReport {
                index: 0,
                remote_mta: None,
                reply: Reply::new(250, Some(Enhanced(2, 0, 0)), "delivered to mailbox"),
            }],
            retry_until: None,
        }))
        .unwrap();
        for needle in [
            "Subject: Successful Mail Delivery Report",
            "Action: delivered",
            "Status: 2.0.0",
            "Original-Envelope-Id: id+1",
            "Content-Type: text/rfc822-headers",
            "Subject: hi",
        ] {
            assert!(has_field(&text, needle), "missing {needle:?} in\n{text}");
        }
        assert!(!text.contains("secret body") && !text.contains("Remote-MTA"));
    }

    #[test]
    fn notify_decides_who_hears() {
        let n = |never, success, failure, delay| {
            Some(Notify {
                never,
                success,
                failure,
                delay,
            })
        };
        assert!(ReportAction::Fail.wanted_by(None) && ReportAction::Delay.wanted_by(None));
        assert!(!ReportAction::Relay.wanted_by(None));
        assert!(!ReportAction::Fail.wanted_by(n(true, false, false, false)));
        assert!(ReportAction::Relay.wanted_by(n(false, true, false, false)));
        assert!(ReportAction::Deliver.wanted_by(n(false, true, false, false)));
        assert!(
            !ReportAction::Deliver.wanted_by(None)
                && !ReportAction::Deliver.wanted_by(n(false, false, true, true))
        );
        assert!(!ReportAction::Fail.wanted_by(n(false, true, false, false)));
        assert!(!ReportAction::Delay.wanted_by(n(false, false, true, false)));
    }
}
