//! The MIME walk: which messages need decoding, and every decoded leaf of one, nested
//! messages included. Plain Rust over bytes (no WIT), so that the fuzz target in `fuzz/`
//! compiles this very file natively.

use mail_parser::{MessageParser, PartType};

/// `message/rfc822` levels followed; a message nested deeper is unscannable.
pub const MAX_DEPTH: usize = 8;

/// Why a message cannot be scanned: reported as an infection, never as clean.
#[derive(Debug, PartialEq, Eq)]
pub enum Unscannable {
    /// Nested deeper than [`MAX_DEPTH`] messages.
    NestedTooDeep,
    /// The MIME structure cannot be parsed.
    Malformed,
}

impl Unscannable {
    /// The name it is reported infected under.
    pub fn name(&self) -> &'static str {
        match self {
            Unscannable::NestedTooDeep => "Unscannable.NestedTooDeep",
            Unscannable::Malformed => "Unscannable.Malformed",
        }
    }
}

/// Whether decoding could reveal bytes that the raw message does not hold as they are.
/// mail-parser changes a part's bytes in two ways only: a transfer encoding (base64,
/// quoted-printable) and, for text parts, a charset conversion to UTF-8. So decoding is
/// needed when either encoding is named anywhere (case-insensitively; a mention in the body
/// only costs a parse, never a miss) or a charset is declared that is not UTF-8, or not
/// US-ASCII over bytes that are all ASCII. A charset parameter that cannot be read counts
/// as foreign.
pub fn needs_decoding(raw: &[u8]) -> bool {
    let lower = raw.to_ascii_lowercase();
    let has = |word: &str| memchr::memmem::find(&lower, word.as_bytes()).is_some();
    if has("base64") || has("quoted-printable") {
        return true;
    }
    memchr::memmem::find_iter(&lower, b"charset").any(|at| {
        // `charset="UTF-8"`, `charset = utf-8`, RFC 2231's `charset*=...`.
        let rest = &lower[at + "charset".len()..];
        let start = rest
            .iter()
            .position(|b| !matches!(b, b'*' | b'=' | b' ' | b'\t' | b'"' | b'\''))
            .unwrap_or(rest.len());
        let name: Vec<u8> = rest[start..]
            .iter()
            .take_while(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
            .copied()
            .collect();
        match name.as_slice() {
            b"utf-8" | b"utf8" => false,
            b"us-ascii" | b"ascii" => !raw.is_ascii(),
            _ => true,
        }
    })
}

/// Every decoded leaf of a MIME tree, nested messages included, or why it cannot be had.
pub fn leaves(raw: &[u8], depth: usize, out: &mut Vec<Vec<u8>>) -> Result<(), Unscannable> {
    let parsed = MessageParser::default()
        .parse(raw)
        .ok_or(Unscannable::Malformed)?;
    for part in &parsed.parts {
        match &part.body {
            PartType::Multipart(_) => {}
            PartType::Message(_) if depth >= MAX_DEPTH => return Err(Unscannable::NestedTooDeep),
            PartType::Message(nested) => leaves(nested.raw_message(), depth + 1, out)?,
            _ => out.push(part.contents().to_vec()),
        }
    }
    Ok(())
}
