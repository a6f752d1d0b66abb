//! The client side of SMTP: what Portcullis says when it delivers to another server.
//!
//! Still sans-IO: the outbound driver moves bytes; this module parses the peer's replies and
//! its EHLO extensions, writes our commands (relaying the DSN parameters kept in the
//! envelope), dot-stuffs the message so that no bare CR or LF can reach the wire, and turns
//! the replies of one transaction into a result per recipient.

use std::borrow::Cow;

use crate::envelope::{BodyType, Envelope, Notify, Recipient, Ret};
use crate::reply::{Enhanced, Reply};

/// Longest reply line we accept from a peer (RFC 5321 asks for 512; be generous).
const MAX_LINE: usize = 4096;
/// Most lines in one multi-line reply (an EHLO with every extension is about 20).
const MAX_LINES: usize = 256;

/// The peer broke the reply grammar; the connection should be dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReplyError {
    /// A line does not start with three digits and a space or dash.
    #[error("malformed reply line {0:?}")]
    Malformed(String),
    /// The lines of one reply carry different codes.
    #[error("reply lines disagree on the code ({0} then {1})")]
    MixedCodes(u16, u16),
    /// A line or a reply is longer than any honest server sends.
    #[error("reply too long")]
    TooLong,
}

/// Reassembles replies from the bytes a server sends, however they are split.
#[derive(Debug, Default)]
pub struct ReplyParser {
    buf: Vec<u8>,
    code: Option<u16>,
    lines: Vec<String>,
}

impl ReplyParser {
    /// A parser with nothing buffered.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds bytes read from the connection.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Whether a partial reply is buffered (bytes were read that are not a whole reply).
    pub fn is_partial(&self) -> bool {
        !self.buf.is_empty() || self.code.is_some()
    }

    /// The next complete reply, if the buffer holds one.
    pub fn next_reply(&mut self) -> Result<Option<Reply>, ReplyError> {
        loop {
            let Some(end) = self.buf.iter().position(|b| *b == b'\n') else {
                if self.buf.len() > MAX_LINE {
                    return Err(ReplyError::TooLong);
                }
                return Ok(None);
            };
            if end > MAX_LINE {
                return Err(ReplyError::TooLong);
            }
            let raw: Vec<u8> = self.buf.drain(..=end).collect();
            // Servers that end lines with a bare LF are tolerated on input.
            let line = String::from_utf8_lossy(raw.strip_suffix(b"\n").unwrap_or(&raw));
            let line = line.strip_suffix('\r').unwrap_or(&line);
            let bytes = line.as_bytes();
            let code = match bytes {
                [a, b, c, rest @ ..]
                    if (b'2'..=b'5').contains(a)
                        && b.is_ascii_digit()
                        && c.is_ascii_digit()
                        && matches!(rest.first(), None | Some(b' ' | b'-')) =>
                {
                    u16::from(a - b'0') * 100 + u16::from(b - b'0') * 10 + u16::from(c - b'0')
                }
                _ => return Err(ReplyError::Malformed(line.chars().take(80).collect())),
            };
            if let Some(first) = self.code
                && first != code
            {
                return Err(ReplyError::MixedCodes(first, code));
            }
            self.code = Some(code);
            let more = bytes.get(3) == Some(&b'-');
            self.lines.push(line.get(4..).unwrap_or("").to_string());
            if self.lines.len() > MAX_LINES {
                return Err(ReplyError::TooLong);
            }
            if !more {
                self.code = None;
                let lines = std::mem::take(&mut self.lines);
                return Ok(Some(assemble(code, lines)));
            }
        }
    }
}

/// Builds a [`Reply`], lifting an enhanced status code of the right class out of the text.
fn assemble(code: u16, lines: Vec<String>) -> Reply {
    let enhanced = lines
        .first()
        .and_then(|l| l.split(' ').next())
        .and_then(parse_enhanced)
        .filter(|e| u16::from(e.0) == code / 100);
    let text: Vec<Cow<'_, str>> = lines
        .iter()
        .map(|l| match enhanced {
            Some(e) => {
                let prefix = e.to_string();
                Cow::Owned(
                    l.strip_prefix(&prefix)
                        .map_or(l.as_str(), str::trim_start)
                        .to_string(),
                )
            }
            None => Cow::Borrowed(l.as_str()),
        })
        .collect();
    Reply::new(code, enhanced, text.join("\n"))
}

fn parse_enhanced(word: &str) -> Option<Enhanced> {
    let mut parts = word.split('.');
    let class: u8 = parts.next()?.parse().ok()?;
    let subject: u16 = parts.next()?.parse().ok()?;
    let detail: u16 = parts.next()?.parse().ok()?;
    (parts.next().is_none() && (2..=5).contains(&class) && subject < 1000 && detail < 1000)
        .then_some(Enhanced(class, subject, detail))
}

/// What a server offered in its EHLO reply.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Extensions {
    /// STARTTLS (RFC 3207).
    pub starttls: bool,
    /// PIPELINING (RFC 2920).
    pub pipelining: bool,
    /// SIZE (RFC 1870): `Some(0)` means no fixed limit was announced.
    pub size: Option<u64>,
    /// 8BITMIME (RFC 6152).
    pub eight_bit_mime: bool,
    /// SMTPUTF8 (RFC 6531).
    pub smtputf8: bool,
    /// DSN (RFC 3461).
    pub dsn: bool,
    /// ENHANCEDSTATUSCODES (RFC 2034).
    pub enhanced_status_codes: bool,
    /// AUTH mechanisms (RFC 4954), upper-case.
    pub auth: Vec<String>,
}

impl Extensions {
    /// Reads the extension lines of an EHLO reply (the first line is the greeting).
    pub fn from_ehlo(reply: &Reply) -> Self {
        let mut ext = Extensions::default();
        for line in reply.text.split('\n').skip(1) {
            let mut words = line.split_ascii_whitespace();
            let Some(keyword) = words.next() else { continue };
            match keyword.to_ascii_uppercase().as_str() {
                "STARTTLS" => ext.starttls = true,
                "PIPELINING" => ext.pipelining = true,
                "SIZE" => ext.size = Some(words.next().and_then(|n| n.parse().ok()).unwrap_or(0)),
                "8BITMIME" => ext.eight_bit_mime = true,
                "SMTPUTF8" => ext.smtputf8 = true,
                "DSN" => ext.dsn = true,
                "ENHANCEDSTATUSCODES" => ext.enhanced_status_codes = true,
                "AUTH" => ext.auth.extend(words.map(str::to_ascii_uppercase)),
                _ => {}
            }
        }
        ext
    }

    /// Whether a message of `size` octets is over the limit the peer announced.
    pub fn refuses_size(&self, size: u64) -> bool {
        matches!(self.size, Some(limit) if limit > 0 && size > limit)
    }
}

/// `MAIL FROM:<...>` with the parameters the peer understands, CRLF included.
pub fn mail_command(envelope: &Envelope, ext: &Extensions, size: u64) -> String {
    let mut cmd = format!("MAIL FROM:{}", envelope.reverse_path());
    if ext.size.is_some() {
        cmd.push_str(&format!(" SIZE={size}"));
    }
    if envelope.params.body == BodyType::EightBitMime && ext.eight_bit_mime {
        cmd.push_str(" BODY=8BITMIME");
    }
    if needs_smtputf8(envelope) && ext.smtputf8 {
        cmd.push_str(" SMTPUTF8");
    }
    if ext.dsn {
        if let Some(ret) = envelope.params.ret {
            cmd.push_str(match ret {
                Ret::Full => " RET=FULL",
                Ret::Hdrs => " RET=HDRS",
            });
        }
        if let Some(envid) = &envelope.params.envid {
            cmd.push_str(&format!(" ENVID={envid}"));
        }
    }
    cmd.push_str("\r\n");
    cmd
}

/// `RCPT TO:<...>` with the DSN parameters when the peer takes them, CRLF included.
pub fn rcpt_command(recipient: &Recipient, ext: &Extensions) -> String {
    let mut cmd = format!("RCPT TO:<{}>", recipient.mailbox);
    if ext.dsn {
        if let Some(notify) = recipient.params.notify {
            cmd.push_str(&format!(" NOTIFY={}", notify_keyword(notify)));
        }
        if let Some(orcpt) = &recipient.params.orcpt {
            cmd.push_str(&format!(" ORCPT={orcpt}"));
        }
    }
    cmd.push_str("\r\n");
    cmd
}

fn notify_keyword(n: Notify) -> String {
    if n.never {
        return "NEVER".into();
    }
    let words: Vec<&str> = [(n.success, "SUCCESS"), (n.failure, "FAILURE"), (n.delay, "DELAY")]
        .into_iter()
        .filter_map(|(on, w)| on.then_some(w))
        .collect();
    words.join(",")
}

/// Whether delivering needs the peer's SMTPUTF8 (an address is not ASCII, or the client
/// asked for it).
pub fn needs_smtputf8(envelope: &Envelope) -> bool {
    envelope.params.smtputf8
        || envelope.mail_from.as_ref().is_some_and(|m| m.is_utf8())
        || envelope.recipients.iter().any(|r| r.mailbox.is_utf8())
}

/// The message as DATA content: every line ending made CRLF (a bare CR or LF becomes
/// CRLF, so none ever reaches the wire), lines starting with `.` doubled, a final CRLF
/// added when missing, and the terminating `.` line appended.
pub fn dot_stuff(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + message.len() / 64 + 5);
    let mut at_line_start = true;
    let mut i = 0;
    while i < message.len() {
        let b = message[i];
        match b {
            b'\r' | b'\n' => {
                out.extend_from_slice(b"\r\n");
                // CRLF is one line ending, not two.
                if b == b'\r' && message.get(i + 1) == Some(&b'\n') {
                    i += 1;
                }
                at_line_start = true;
            }
            _ => {
                if at_line_start && b == b'.' {
                    out.push(b'.');
                }
                out.push(b);
                at_line_start = false;
            }
        }
        i += 1;
    }
    if !at_line_start {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

/// What happened to one recipient in one transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecipientResult {
    /// The peer took responsibility (its reply is kept for logs and success DSNs).
    Deliver(Reply),
    /// Try again later.
    Defer(Reply),
    /// Give up on this recipient and tell the sender.
    Fail(Reply),
}

impl RecipientResult {
    /// The result a reply means: 2xx delivered, 4xx deferred, 5xx (or nonsense) failed.
    pub fn from_reply(reply: &Reply) -> Self {
        if reply.is_positive() {
            RecipientResult::Deliver(reply.clone())
        } else if reply.is_transient() {
            RecipientResult::Defer(reply.clone())
        } else {
            RecipientResult::Fail(reply.clone())
        }
    }
}

/// The replies of one transaction, in the order the commands were sent; a reply is `None`
/// when its command was never sent (MAIL failed, or every RCPT did).
#[derive(Clone, Debug)]
pub struct TransactionReplies {
    /// The reply to MAIL FROM.
    pub mail: Reply,
    /// One reply per RCPT TO, in order (missing ones: the command was not sent).
    pub rcpts: Vec<Option<Reply>>,
    /// The reply to DATA (354 expected).
    pub data: Option<Reply>,
    /// The reply after the message content.
    pub done: Option<Reply>,
}

impl TransactionReplies {
    /// One result per recipient of the transaction (`count` of them), in RCPT order.
    ///
    /// A recipient the server accepted shares the fate of the message; one it refused keeps
    /// its own reply; if MAIL was refused, every recipient gets that reply.
    pub fn results(&self, count: usize) -> Vec<RecipientResult> {
        (0..count)
            .map(|i| {
                if !self.mail.is_positive() {
                    return RecipientResult::from_reply(&self.mail);
                }
                let Some(Some(rcpt)) = self.rcpts.get(i) else {
                    return RecipientResult::Defer(Reply::fixed(
                        451,
                        Some(Enhanced(4, 4, 2)),
                        "connection lost before the recipient was answered",
                    ));
                };
                if !rcpt.is_positive() {
                    return RecipientResult::from_reply(rcpt);
                }
                match (&self.data, &self.done) {
                    (Some(data), _) if data.code != 354 => RecipientResult::from_reply(data),
                    (Some(_), Some(done)) => RecipientResult::from_reply(done),
                    _ => RecipientResult::Defer(Reply::fixed(
                        451,
                        Some(Enhanced(4, 4, 2)),
                        "connection lost before the message was acknowledged",
                    )),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::address::Mailbox;
    use crate::envelope::{MailParams, RcptParams};

    fn parse_all(input: &[&[u8]]) -> Result<Vec<Reply>, ReplyError> {
        let mut p = ReplyParser::new();
        let mut out = Vec::new();
        for chunk in input {
            p.feed(chunk);
            while let Some(r) = p.next_reply()? {
                out.push(r);
            }
        }
        Ok(out)
    }

    #[test]
    fn replies_are_reassembled_across_reads() {
        let replies = parse_all(&[
            b"220 mx.example ESMTP\r\n250-mx.exa",
            b"mple\r\n250-PIPELINING\r\n250 SIZE 1000\r\n",
            b"550 5.1.1 no such user\r\n451 4",
            b".3.0 try later\n",
        ])
        .unwrap();
        assert_eq!(replies.len(), 4);
        assert_eq!(replies[0], Reply::new(220, None, "mx.example ESMTP"));
        assert_eq!(replies[1].text, "mx.example\nPIPELINING\nSIZE 1000");
        assert_eq!(
            replies[2],
            Reply::new(550, Some(Enhanced(5, 1, 1)), "no such user")
        );
        assert_eq!(replies[3], Reply::new(451, Some(Enhanced(4, 3, 0)), "try later"));
    }

    #[test]
    fn hostile_replies_are_errors() {
        let cases: &[(&[u8], ReplyError)] = &[
            (b"hello\r\n", ReplyError::Malformed("hello".into())),
            (b"25\r\n", ReplyError::Malformed("25".into())),
            (b"2500 x\r\n", ReplyError::Malformed("2500 x".into())),
            (b"250-a\r\n251 b\r\n", ReplyError::MixedCodes(250, 251)),
            (b"650 x\r\n", ReplyError::Malformed("650 x".into())),
        ];
        for (input, expected) in cases {
            assert_eq!(parse_all(&[input]).unwrap_err(), *expected, "{input:?}");
        }
        assert_eq!(parse_all(&[&[b'2'; 5000]]).unwrap_err(), ReplyError::TooLong);
        let endless = "250-x\r\n".repeat(300);
        assert_eq!(parse_all(&[endless.as_bytes()]).unwrap_err(), ReplyError::TooLong);
        // An enhanced code of the wrong class stays text.
        let r = parse_all(&[b"250 5.1.1 odd\r\n"]).unwrap();
        assert_eq!(r[0], Reply::new(250, None, "5.1.1 odd"));
    }

    #[test]
    fn extensions() {
        let ehlo = Reply::new(
            250,
            None,
            "mx\nPIPELINING\nSIZE 20480\nstarttls\n8BITMIME\nDSN\nAUTH PLAIN login\nSMTPUTF8",
        );
        let ext = Extensions::from_ehlo(&ehlo);
        assert!(ext.pipelining && ext.starttls && ext.eight_bit_mime && ext.dsn && ext.smtputf8);
        assert_eq!(ext.size, Some(20480));
        assert_eq!(ext.auth, vec!["PLAIN", "LOGIN"]);
        assert!(ext.refuses_size(20481) && !ext.refuses_size(20480));
        let bare = Extensions::from_ehlo(&Reply::new(250, None, "mx\nSIZE"));
        assert_eq!(bare.size, Some(0));
        assert!(!bare.refuses_size(u64::MAX) && !bare.starttls);
    }

    fn envelope() -> Envelope {
        Envelope {
            mail_from: Some(Mailbox {
                local: "alice".into(),
                domain: "example.org".into(),
            }),
            params: MailParams {
                size: None,
                body: BodyType::EightBitMime,
                smtputf8: false,
                ret: Some(Ret::Hdrs),
                envid: Some("QQ+2B1".into()),
            },
            recipients: vec![Recipient::remote(
                Mailbox {
                    local: "bob".into(),
                    domain: "example.net".into(),
                },
                RcptParams {
                    notify: Some(Notify {
                        never: false,
                        success: true,
                        failure: true,
                        delay: false,
                    }),
                    orcpt: Some("rfc822;bob@example.net".into()),
                },
            )],
        }
    }

    #[test]
    fn commands_carry_what_the_peer_understands() {
        let env = envelope();
        let full = Extensions {
            size: Some(0),
            eight_bit_mime: true,
            dsn: true,
            ..Default::default()
        };
        assert_eq!(
            mail_command(&env, &full, 42),
            "MAIL FROM:<alice@example.org> SIZE=42 BODY=8BITMIME RET=HDRS ENVID=QQ+2B1\r\n"
        );
        assert_eq!(
            rcpt_command(&env.recipients[0], &full),
            "RCPT TO:<bob@example.net> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;bob@example.net\r\n"
        );
        let none = Extensions::default();
        assert_eq!(mail_command(&env, &none, 42), "MAIL FROM:<alice@example.org>\r\n");
        assert_eq!(
            rcpt_command(&env.recipients[0], &none),
            "RCPT TO:<bob@example.net>\r\n"
        );
        let bounce = Envelope {
            mail_from: None,
            ..env
        };
        assert_eq!(mail_command(&bounce, &none, 1), "MAIL FROM:<>\r\n");
    }

    #[test]
    fn dot_stuffing_never_sends_a_bare_line_ending() {
        let cases: &[(&[u8], &[u8])] = &[
            (b"a\r\nb\r\n", b"a\r\nb\r\n.\r\n"),
            (b".hidden\r\n..two\r\n", b"..hidden\r\n...two\r\n.\r\n"),
            (b"no final newline", b"no final newline\r\n.\r\n"),
            (b"bare\nlf\rcr\r\n.\n", b"bare\r\nlf\r\ncr\r\n..\r\n.\r\n"),
            (b"", b".\r\n"),
            (b"x\r\n.\r\nsmuggled\r\n", b"x\r\n..\r\nsmuggled\r\n.\r\n"),
        ];
        for (input, expected) in cases {
            assert_eq!(
                String::from_utf8_lossy(&dot_stuff(input)),
                String::from_utf8_lossy(expected)
            );
        }
    }

    #[test]
    fn results_per_recipient() {
        let ok = Reply::new(250, None, "ok");
        let r = TransactionReplies {
            mail: ok.clone(),
            rcpts: vec![
                Some(ok.clone()),
                Some(Reply::new(550, None, "unknown")),
                Some(Reply::new(452, None, "full")),
            ],
            data: Some(Reply::new(354, None, "go")),
            done: Some(Reply::new(250, None, "queued")),
        };
        let results = r.results(3);
        assert!(matches!(&results[0], RecipientResult::Deliver(x) if x.text == "queued"));
        assert!(matches!(&results[1], RecipientResult::Fail(x) if x.code == 550));
        assert!(matches!(&results[2], RecipientResult::Defer(x) if x.code == 452));

        let mail_refused = TransactionReplies {
            mail: Reply::new(421, None, "busy"),
            rcpts: vec![],
            data: None,
            done: None,
        };
        assert!(matches!(&mail_refused.results(2)[1], RecipientResult::Defer(x) if x.code == 421));

        let lost = TransactionReplies {
            mail: ok.clone(),
            rcpts: vec![Some(ok.clone())],
            data: Some(Reply::new(354, None, "go")),
            done: None,
        };
        assert!(matches!(&lost.results(1)[0], RecipientResult::Defer(_)));

        let data_refused = TransactionReplies {
            mail: ok.clone(),
            rcpts: vec![Some(ok)],
            data: Some(Reply::new(554, None, "no")),
            done: None,
        };
        assert!(matches!(&data_refused.results(1)[0], RecipientResult::Fail(_)));
    }
}
