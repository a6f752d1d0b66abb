//! Messages the server writes itself: the notice to an account that sent malware.

use std::sync::Arc;

use portcullis_outbound::Delivery;
use portcullis_smtp::envelope::{Envelope, Recipient};
use portcullis_smtp::{Folder, Mailbox, Message};
use portcullis_spool::{QueueId, Spool};

/// Writes notices into the spool and hands them to delivery.
pub struct Notices {
    spool: Arc<Spool>,
    delivery: Delivery,
}

impl Notices {
    /// Notices stored in `spool`, handed to `delivery`.
    pub fn new(spool: Arc<Spool>, delivery: Delivery) -> Self {
        Notices { spool, delivery }
    }

    /// Puts a notice into `account`'s own mailbox: `message`, which it sent from
    /// `client_ip`, carried `virus`. Logged, never fatal: the message itself was refused.
    pub async fn virus_from_account(
        &self,
        hostname: &str,
        account: &str,
        virus: &str,
        client_ip: &str,
        message: &Message,
    ) {
        let Some((local, domain)) = account.rsplit_once('@') else {
            return;
        };
        let recipients: Vec<String> = message
            .envelope
            .recipients
            .iter()
            .map(|r| r.mailbox.to_string())
            .collect();
        let subject = header_value(&message.body.prefix(64 * 1024), "subject").unwrap_or_default();
        let id = QueueId::generate();
        let text = virus_notice(&VirusNotice {
            hostname,
            account,
            virus,
            client_ip,
            mail_from: &message.envelope.reverse_path(),
            recipients: &recipients,
            subject: &subject,
            id: id.as_str(),
        });
        let envelope = Envelope {
            mail_from: None,
            params: Default::default(),
            recipients: vec![Recipient {
                local: true,
                ..Recipient::remote(
                    Mailbox {
                        local: local.to_string(),
                        domain: domain.to_string(),
                    },
                    Default::default(),
                )
            }],
        };
        let spool = Arc::clone(&self.spool);
        let stored = tokio::task::spawn_blocking(move || {
            spool.store(id, envelope, Folder::Inbox, "", text.as_bytes())
        })
        .await;
        match stored {
            Ok(Ok(entry)) => {
                tracing::info!(queue_id = %entry.id, %account, "virus notice queued for the account");
                self.delivery.deliver(entry.id);
            }
            Ok(Err(e)) => tracing::error!(error = %e, %account, "cannot queue the virus notice"),
            Err(e) => tracing::error!(error = %e, "virus notice task failed"),
        }
    }
}

/// What goes into a virus notice.
pub struct VirusNotice<'a> {
    /// Our host name.
    pub hostname: &'a str,
    /// The account that sent it.
    pub account: &'a str,
    /// The malware's name.
    pub virus: &'a str,
    /// Where the client connected from.
    pub client_ip: &'a str,
    /// The refused message's reverse-path.
    pub mail_from: &'a str,
    /// Its recipients.
    pub recipients: &'a [String],
    /// Its subject.
    pub subject: &'a str,
    /// The notice's queue id, for its Message-ID.
    pub id: &'a str,
}

/// The first value of header `name` in `message`, unfolded, if any.
pub fn header_value(message: &[u8], name: &str) -> Option<String> {
    let end = message
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(message.len());
    let head = String::from_utf8_lossy(&message[..end]);
    let mut found: Option<String> = None;
    for line in head.split("\r\n") {
        match &mut found {
            Some(value) if line.starts_with([' ', '\t']) => {
                value.push(' ');
                value.push_str(line.trim());
            }
            Some(_) => break,
            None => {
                if let Some((n, v)) = line.split_once(':')
                    && n.trim().eq_ignore_ascii_case(name)
                {
                    found = Some(v.trim().to_string());
                }
            }
        }
    }
    found
}

fn clean(text: &str) -> String {
    text.chars().filter(|c| !c.is_control()).take(200).collect()
}

/// The notice, a complete RFC 5322 message with CRLF lines.
pub fn virus_notice(n: &VirusNotice<'_>) -> String {
    let date = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc2822)
        .unwrap_or_default();
    let body = format!(
        "A message sent with your account ({account}) through {host} was refused,\n\
         because it contains malware: {virus}.\n\
         \n\
         \x20 From:    {from}\n\
         \x20 To:      {to}\n\
         \x20 Subject: {subject}\n\
         \x20 Sent from the address {ip}\n\
         \n\
         If you did not send this message, your computer is probably infected, or your\n\
         password has been stolen. Scan your computer and change your password.\n\
         \n\
         The message was not delivered to anyone.\n",
        account = clean(n.account),
        host = n.hostname,
        virus = clean(n.virus),
        from = clean(n.mail_from),
        to = clean(&n.recipients.join(", ")),
        subject = clean(n.subject),
        ip = n.client_ip,
    );
    let head = format!(
        "From: Mail Delivery System <MAILER-DAEMON@{host}>\n\
         To: <{account}>\n\
         Subject: Your message was refused: virus found ({virus})\n\
         Date: {date}\n\
         Message-ID: <virus-notice.{id}@{host}>\n\
         Auto-Submitted: auto-generated\n\
         MIME-Version: 1.0\n\
         Content-Type: text/plain; charset=utf-8\n\
         Content-Transfer-Encoding: 8bit\n\n",
        host = n.hostname,
        account = clean(n.account),
        virus = clean(n.virus),
        id = n.id,
    );
    format!("{head}{body}").replace('\n', "\r\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_lookup_unfolds() {
        let m = b"From: a\r\nSubject: hello\r\n world\r\nTo: b\r\n\r\nSubject: body\r\n";
        assert_eq!(header_value(m, "subject").as_deref(), Some("hello world"));
        assert_eq!(header_value(m, "cc"), None);
    }
}
