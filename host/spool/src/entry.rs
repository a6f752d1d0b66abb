//! What the spool knows about a message besides its content: its queue id and its
//! [`Entry`] (envelope, pending recipients, retry state), and a message on its way in.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use portcullis_smtp::envelope::Envelope;
use portcullis_smtp::{Content, Folder, Reply};
use serde::{Deserialize, Serialize};

/// A queue id: unique, sortable by arrival, safe as a file name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct QueueId(String);

impl QueueId {
    /// A fresh id: microseconds since the epoch and a counter, in upper-case hex.
    pub fn generate() -> Self {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let micros = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros())
            .unwrap_or(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed) & 0xFFFF;
        QueueId(format!("{micros:014X}{n:04X}"))
    }

    /// Parses a file name back into an id, refusing anything that is not one.
    pub fn parse(name: &str) -> Option<Self> {
        let ok = name.len() == 18
            && name
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_lowercase());
        ok.then(|| QueueId(name.to_string()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// When the id was made: microseconds since the epoch (its first 14 hex digits).
    pub fn micros(&self) -> u128 {
        self.0
            .get(..14)
            .and_then(|hex| u128::from_str_radix(hex, 16).ok())
            .unwrap_or(0)
    }
}

impl std::fmt::Display for QueueId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What the spool knows about one message besides its content.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Entry {
    /// The queue id.
    pub id: QueueId,
    /// When it was accepted, seconds since the epoch.
    pub received_at: u64,
    /// Sender and recipients as accepted.
    pub envelope: Envelope,
    /// Indices into `envelope.recipients` still to be delivered.
    pub pending: Vec<usize>,
    /// Where local copies go.
    pub folder: Folder,
    /// Octets of the message as delivered: [`Entry::head`] and the content.
    pub size: u64,
    /// Header lines written before the content when the message is delivered (the
    /// `Received:` header, hook headers), so that the content is stored as it came. Empty
    /// in files of older versions, whose content starts with them.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub head: String,
    /// Ranges of the content (`[start, end)` octet offsets, in order, disjoint) left out
    /// when the message is delivered: header fields the host removed (a forged
    /// `Authentication-Results`), so that the content is still stored as it came.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub omit: Vec<(u64, u64)>,
    /// Outbound: delivery attempts made so far for the remote recipients.
    #[serde(default)]
    pub attempts: u32,
    /// Outbound: the earliest time of the next attempt, seconds since the epoch (0: now).
    #[serde(default)]
    pub next_attempt: u64,
    /// The last temporary failure of each pending recipient (index → reply), stored as
    /// the reply's text (`451 4.4.1 no answer`).
    #[serde(default, with = "reply_text")]
    pub last_error: BTreeMap<usize, Reply>,
    /// Outbound: the sender has been told that delivery is late.
    #[serde(default)]
    pub delay_notified: bool,
    /// CRC-32 of the message octets, in files of versions 1 and 2 (version 3 keeps it in
    /// the file's first line).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<u32>,
    /// The sender may be told of a successful local delivery (RFC 3461 NOTIFY=SUCCESS):
    /// it is known, not merely claimed (submission). On MX a success notice to a forged
    /// sender would be backscatter.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub success_notices: bool,
}

impl Entry {
    /// A message just accepted: every recipient pending, no attempt made, nothing in front
    /// of or left out of its content (the spool fills those in).
    pub fn new(id: QueueId, received_at: u64, envelope: Envelope, folder: Folder) -> Entry {
        Entry {
            pending: (0..envelope.recipients.len()).collect(),
            id,
            received_at,
            envelope,
            folder,
            size: 0,
            head: String::new(),
            omit: Vec::new(),
            attempts: 0,
            next_attempt: 0,
            last_error: BTreeMap::new(),
            delay_notified: false,
            checksum: None,
            success_notices: false,
        }
    }

    /// The pending recipients in one of our domains (delivered into a mailbox).
    pub fn pending_local(&self) -> Vec<usize> {
        self.pending_where(true)
    }

    /// The pending recipients in other domains (delivered over SMTP).
    pub fn pending_remote(&self) -> Vec<usize> {
        self.pending_where(false)
    }

    fn pending_where(&self, local: bool) -> Vec<usize> {
        self.pending
            .iter()
            .copied()
            .filter(|&i| self.envelope.recipients.get(i).is_some_and(|r| r.local == local))
            .collect()
    }

    /// Every recipient of the message is in one of our domains.
    pub fn all_local(&self) -> bool {
        self.envelope.recipients.iter().all(|r| r.local)
    }

    /// Whether a local recipient is owed a report of its delivery (RFC 3461
    /// NOTIFY=SUCCESS), or an alias its `expanded` report, on a message whose sender is
    /// known ([`Entry::success_notices`]) and not the null sender.
    pub fn wants_success_notice(&self) -> bool {
        self.success_notices
            && self.envelope.mail_from.is_some()
            && self.envelope.recipients.iter().any(|r| {
                r.reports_expansion
                    || r.local
                        && r.params
                            .notify
                            .is_some_and(|notify| notify.success && !notify.never)
            })
    }
}

/// A message on its way into the spool.
#[derive(Clone, Copy, Debug)]
pub struct Incoming<'a> {
    /// Its queue id.
    pub id: &'a QueueId,
    /// Sender and recipients as accepted.
    pub envelope: &'a Envelope,
    /// Where local copies go.
    pub folder: Folder,
    /// [`Entry::success_notices`].
    pub success_notices: bool,
    /// Header lines written before the content (the `Received:` header, hook headers).
    pub head: &'a str,
    /// Ranges of the content left out when it is delivered ([`Entry::omit`]).
    pub omit: &'a [(u64, u64)],
    /// The content as received, in memory or in its spill file.
    pub content: &'a Content,
}

/// Whether `omit` lists ranges in order, disjoint, not empty, within a content of `len`
/// octets.
pub fn omit_fits(omit: &[(u64, u64)], len: u64) -> bool {
    let mut at = 0;
    omit.iter().all(|&(start, end)| {
        let fits = at <= start && start < end && end <= len;
        at = end;
        fits
    })
}

/// How many octets `omit` leaves out.
pub fn omitted(omit: &[(u64, u64)]) -> u64 {
    omit.iter().map(|(start, end)| end.saturating_sub(*start)).sum()
}

/// The message as delivered: `head`, then `content` without the `omit` ranges (which
/// [`omit_fits`] has checked).
pub fn delivered<'a>(head: &'a [u8], content: &'a [u8], omit: &[(u64, u64)]) -> Vec<&'a [u8]> {
    let mut parts = vec![head];
    let mut at = 0;
    for &(start, end) in omit {
        parts.push(&content[at..start as usize]);
        at = end as usize;
    }
    parts.push(&content[at..]);
    parts
}

/// [`Entry::last_error`] as text in the spool file: what earlier versions wrote, and what
/// an operator reads there.
mod reply_text {
    use std::collections::BTreeMap;

    use portcullis_smtp::client::ReplyParser;
    use portcullis_smtp::{Enhanced, Reply};
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(map: &BTreeMap<usize, Reply>, s: S) -> Result<S::Ok, S::Error> {
        let text: BTreeMap<usize, String> = map
            .iter()
            .map(|(&i, reply)| (i, reply.to_string().trim_end().to_string()))
            .collect();
        text.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<usize, Reply>, D::Error> {
        let text = BTreeMap::<usize, String>::deserialize(d)?;
        Ok(text.into_iter().map(|(i, t)| (i, parse(&t))).collect())
    }

    /// The reply written as `text`; a text that is not one (hand-edited) is kept as the
    /// text of a temporary failure.
    pub fn parse(text: &str) -> Reply {
        let mut parser = ReplyParser::new();
        parser.feed(text.as_bytes());
        parser.feed(b"\r\n");
        match parser.next_reply() {
            Ok(Some(reply)) => reply,
            _ => Reply::new(451, Some(Enhanced(4, 0, 0)), text.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_smtp::Enhanced;

    #[test]
    fn last_errors_are_replies_kept_as_their_text() {
        let json = r#"{"0":"451 4.4.1 no answer","2":"421-busy\r\n421 4.3.2 try later","3":"junk"}"#;
        let mut de = serde_json::Deserializer::from_str(json);
        let map = reply_text::deserialize(&mut de).expect("parses");
        assert_eq!(map[&0], Reply::new(451, Some(Enhanced(4, 4, 1)), "no answer"));
        assert_eq!(map[&2].code, 421);
        assert_eq!(
            map[&2].text, "busy\n4.3.2 try later",
            "the enhanced code is the first line's"
        );
        assert_eq!(
            map[&3].code, 451,
            "a text that is not a reply is a temporary failure"
        );
        let mut out = Vec::new();
        reply_text::serialize(&map, &mut serde_json::Serializer::new(&mut out)).expect("writes");
        let text = String::from_utf8(out).expect("utf8");
        assert!(text.contains(r#""0":"451 4.4.1 no answer""#), "{text}");
    }
}
