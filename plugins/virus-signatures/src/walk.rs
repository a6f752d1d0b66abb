//! Which messages need decoding before a scan. Plain Rust over bytes (no WIT), so that the
//! fuzz target in `fuzz/` compiles this very file natively.

/// Whether decoding could reveal bytes that the raw message does not hold as they are.
/// MIME decoding changes a part's bytes in two ways only: a transfer encoding (base64,
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
