//! The one pass over the raw message: its signatures, and whether decoding is needed. Plain
//! Rust over bytes (no WIT), so that the fuzz target in `fuzz/` compiles this very file
//! natively.

use std::ops::ControlFlow;

use plugin_kit::needles::Needles;

/// The words whose presence may mean decoding is needed, searched for regardless of ASCII
/// case: the two transfer encodings, and `charset` (whose value then decides).
const WORDS: [&[u8]; 3] = [b"base64", b"quoted-printable", CHARSET];
const CHARSET: &[u8] = b"charset";

/// What the raw message shows.
#[derive(Debug, PartialEq, Eq)]
pub enum Raw {
    /// The signature of this index is in it.
    Signature(usize),
    /// None is; whether decoding could reveal one (see [`scan_raw`]).
    Clean { needs_decoding: bool },
}

/// Searches `raw` for every signature (byte for byte) and, in the same pass, tells whether
/// decoding could reveal bytes that the raw message does not hold as they are. MIME
/// decoding changes a part's bytes in two ways only: a transfer encoding (base64,
/// quoted-printable) and, for text parts, a charset conversion to UTF-8. So decoding is
/// needed when either encoding is named anywhere (case-insensitively; a mention in the body
/// only costs a parse, never a miss) or a charset is declared that is not UTF-8, or not
/// US-ASCII over bytes that are all ASCII. A charset parameter that cannot be read counts
/// as foreign.
pub fn scan_raw(raw: &[u8], signatures: &[&[u8]]) -> Raw {
    let exact = signatures.iter().map(|s| (*s, false));
    let words = WORDS.iter().map(|w| (*w, true));
    let mut needs_decoding = false;
    let found = Needles::new(exact.chain(words)).find(raw, |m| {
        let Some(word) = m.needle.checked_sub(signatures.len()) else {
            return ControlFlow::Break(m.needle);
        };
        needs_decoding =
            needs_decoding || WORDS[word] != CHARSET || foreign_charset(raw, m.at + CHARSET.len());
        ControlFlow::Continue(())
    });
    match found {
        Some(index) => Raw::Signature(index),
        None => Raw::Clean { needs_decoding },
    }
}

/// Whether the charset named after `charset` (what `after` starts with) is one decoding
/// could change.
fn foreign_charset(raw: &[u8], after: usize) -> bool {
    // `charset="UTF-8"`, `charset = utf-8`, RFC 2231's `charset*=...`.
    let rest = &raw[after..];
    let start = rest
        .iter()
        .position(|b| !matches!(b, b'*' | b'=' | b' ' | b'\t' | b'"' | b'\''))
        .unwrap_or(rest.len());
    let name: Vec<u8> = rest[start..]
        .iter()
        .take_while(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
        .map(u8::to_ascii_lowercase)
        .collect();
    match name.as_slice() {
        b"utf-8" | b"utf8" => false,
        b"us-ascii" | b"ascii" => !raw.is_ascii(),
        _ => true,
    }
}
