//! The MIME structure of a received message, parsed once by the host (with mail-parser)
//! for every plugin that asks, so that plugins stop parsing MIME inside WebAssembly: each
//! part's type, disposition, file name and decoded content, enclosed messages included,
//! in document order.

use mail_parser::{MessageParser, MimeHeaders, PartType};

/// Enclosed `message/rfc822` levels opened; a message nested deeper is not parsed (an
/// error, never a partial structure a scanner could take for the whole).
pub const MAX_DEPTH: usize = 8;

/// The largest message parsed (its content is held in memory while it is).
pub const MAX_SIZE: u64 = 64 << 20;

/// Why a message's structure cannot be had.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MimeError {
    /// Enclosed messages go deeper than [`MAX_DEPTH`] levels.
    #[error("messages enclosed deeper than {MAX_DEPTH} levels")]
    NestedTooDeep,
    /// The message is larger than [`MAX_SIZE`].
    #[error("{0} octets: larger than the host parses ({MAX_SIZE} octets)")]
    TooLarge(u64),
    /// Its content cannot be read, or holds no structure that parses.
    #[error("{0}")]
    Unreadable(String),
}

/// One part, as [`Structure::parts`] lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Part {
    /// The index of the part it is inside (a multipart, or an enclosed message's
    /// `message/rfc822` part); `None` for the message itself.
    pub parent: Option<u32>,
    /// `type/subtype`, lower case.
    pub content_type: String,
    /// The `charset` parameter, lower case, if given.
    pub charset: Option<String>,
    /// The disposition (`inline`, `attachment`), lower case, if given.
    pub disposition: Option<String>,
    /// The file name (Content-Disposition's `filename`, else Content-Type's `name`),
    /// decoded.
    pub filename: Option<String>,
    /// A leaf's content, its transfer encoding undone and a text part's text as UTF-8;
    /// empty for a multipart or an enclosed message (its parts follow it).
    pub content: Vec<u8>,
    /// The part could not be decoded as it declares (a broken transfer encoding or
    /// charset): `content` is what could be had.
    pub problem: bool,
}

/// The parts of a message, the message itself first, in document order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Structure {
    /// Every part; a part's `parent` comes before it.
    pub parts: Vec<Part>,
}

impl Structure {
    /// Parses `raw` (a whole message), opening enclosed messages up to [`MAX_DEPTH`]
    /// levels; an error says why it cannot be had.
    pub fn parse(raw: &[u8]) -> Result<Structure, MimeError> {
        let mut structure = Structure::default();
        structure.add(raw, None, 0)?;
        Ok(structure)
    }

    fn add(&mut self, raw: &[u8], parent: Option<u32>, depth: usize) -> Result<(), MimeError> {
        let parsed = MessageParser::default().parse(raw).ok_or_else(|| {
            MimeError::Unreadable("the message has no MIME structure that can be parsed".into())
        })?;
        // mail-parser lists parts in document order; a multipart names its children.
        let mut stack: Vec<(u32, Option<u32>)> = vec![(0, parent)];
        while let Some((id, parent)) = stack.pop() {
            let Some(part) = parsed.parts.get(id as usize) else {
                continue;
            };
            let index = u32::try_from(self.parts.len())
                .map_err(|_| MimeError::Unreadable("too many parts".into()))?;
            let kind = match &part.body {
                PartType::Multipart(_) => "multipart/mixed",
                PartType::Message(_) => "message/rfc822",
                _ => "text/plain",
            };
            let content_type = part.content_type().map_or_else(
                || kind.to_string(),
                |ct| match ct.subtype() {
                    Some(sub) => format!("{}/{}", ct.ctype(), sub).to_ascii_lowercase(),
                    None => ct.ctype().to_ascii_lowercase(),
                },
            );
            let content = match &part.body {
                PartType::Text(text) | PartType::Html(text) => text.as_bytes().to_vec(),
                PartType::Binary(bytes) | PartType::InlineBinary(bytes) => bytes.to_vec(),
                PartType::Multipart(_) | PartType::Message(_) => Vec::new(),
            };
            self.parts.push(Part {
                parent,
                content_type,
                charset: part
                    .content_type()
                    .and_then(|ct| ct.attribute("charset"))
                    .map(str::to_ascii_lowercase),
                disposition: part.content_disposition().map(|d| d.ctype().to_ascii_lowercase()),
                filename: part.attachment_name().map(str::to_string),
                content,
                problem: part.is_encoding_problem,
            });
            match &part.body {
                PartType::Multipart(children) => {
                    stack.extend(children.iter().rev().map(|&child| (child, Some(index))));
                }
                PartType::Message(nested) => {
                    if depth >= MAX_DEPTH {
                        return Err(MimeError::NestedTooDeep);
                    }
                    // Parsed again on its own, so that every level gets the same treatment
                    // (mail-parser opens only three levels of encoded messages itself).
                    self.add(nested.raw_message(), Some(index), depth + 1)?;
                }
                _ => {}
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn types(s: &Structure) -> Vec<(Option<u32>, &str)> {
        s.parts
            .iter()
            .map(|p| (p.parent, p.content_type.as_str()))
            .collect()
    }

    #[test]
    fn a_plain_message_is_one_text_part() {
        let s = Structure::parse(b"Subject: x\r\n\r\nhello\r\n").unwrap();
        assert_eq!(types(&s), [(None, "text/plain")]);
        assert_eq!(s.parts[0].content, b"hello\r\n");
    }

    #[test]
    fn parts_come_in_document_order_with_their_parents_and_decoded() {
        let raw = b"Content-Type: multipart/mixed; boundary=b\r\n\r\n\
--b\r\nContent-Type: text/plain; charset=ISO-8859-1\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\ncaf=E9\r\n\
--b\r\nContent-Type: application/octet-stream; name=a.bin\r\nContent-Disposition: attachment; filename=\"report.pdf\"\r\n\
Content-Transfer-Encoding: base64\r\n\r\naGVsbG8=\r\n\
--b\r\nContent-Type: message/rfc822\r\n\r\nSubject: inner\r\nContent-Type: text/html\r\n\r\n<b>hi</b>\r\n\
--b--\r\n";
        let s = Structure::parse(raw).unwrap();
        assert_eq!(
            types(&s),
            [
                (None, "multipart/mixed"),
                (Some(0), "text/plain"),
                (Some(0), "application/octet-stream"),
                (Some(0), "message/rfc822"),
                (Some(3), "text/html"),
            ]
        );
        assert_eq!(s.parts[1].charset.as_deref(), Some("iso-8859-1"));
        assert_eq!(String::from_utf8_lossy(&s.parts[1].content).trim_end(), "café");
        assert_eq!(s.parts[2].disposition.as_deref(), Some("attachment"));
        assert_eq!(s.parts[2].filename.as_deref(), Some("report.pdf"));
        assert_eq!(s.parts[2].content, b"hello");
        assert!(s.parts[3].content.is_empty());
        assert!(String::from_utf8_lossy(&s.parts[4].content).contains("<b>hi</b>"));
    }

    #[test]
    fn messages_nested_too_deep_are_an_error_never_a_partial_structure() {
        let mut raw = b"Subject: bottom\r\n\r\nX5O\r\n".to_vec();
        for _ in 0..=MAX_DEPTH {
            let mut outer = b"Content-Type: message/rfc822\r\n\r\n".to_vec();
            outer.extend_from_slice(&raw);
            raw = outer;
        }
        assert_eq!(Structure::parse(&raw), Err(MimeError::NestedTooDeep));
        // One level less is fine, and the bottom text is there.
        let inner = &raw[b"Content-Type: message/rfc822\r\n\r\n".len()..];
        let s = Structure::parse(inner).unwrap();
        assert_eq!(s.parts.len(), MAX_DEPTH + 1);
        assert_eq!(s.parts.last().unwrap().content, b"X5O\r\n");
    }
}
