//! `virus-signatures`: decodes every MIME part (base64, quoted-printable, nested messages)
//! and looks for the EICAR test string and configured byte signatures.
//!
//! ```toml
//! [[plugin.config.signatures]]
//! name = "Example-Dropper"
//! hex = "4d5a90000300"            # bytes, in hex
//! [[plugin.config.signatures]]
//! name = "Example-Phrase"
//! text = "run this macro now"     # bytes, as UTF-8 text
//! ```
//!
//! The EICAR test string (Eicar-Test-Signature) is always searched for.
//!
//! What cannot be scanned is never called clean: a message nested deeper than 8
//! `message/rfc822` levels, or whose MIME structure cannot be parsed, is reported infected
//! (`Unscannable.NestedTooDeep`, `Unscannable.Malformed`: a retry would get the same
//! answer, so it is refused); one larger than `max-size` (default 25 MiB) is an error, and
//! the plugin's `on-error` policy applies.
//!
//! The raw message is searched first; the MIME parse and decoding run only when they could
//! show bytes the raw message hides (see [`needs_decoding`]), so plain-text mail, most of
//! it, costs one pass over its bytes.

use mail_parser::{MessageParser, PartType};
use serde::Deserialize;

wit_bindgen::generate!({ path: "../../wit", world: "virus-plugin" });

use exports::portcullis::filter::virus::{Guest, ScanResult};
use portcullis::filter::types::{Envelope, Message, SessionInfo};

/// The EICAR anti-virus test file, split so that this source is not itself "infected".
const EICAR: [&str; 2] = [
    r"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-",
    r"ANTIVIRUS-TEST-FILE!$H+H*",
];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SignatureConfig {
    name: String,
    hex: Option<String>,
    text: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Config {
    #[serde(default)]
    signatures: Vec<SignatureConfig>,
    /// Largest message scanned, in octets; larger ones are an error.
    max_size: Option<u64>,
}

/// `message/rfc822` levels followed; a message nested deeper is unscannable.
const MAX_DEPTH: usize = 8;
/// The default `max-size`: the server's default message size limit.
const MAX_SIZE: u64 = 25 << 20;

/// Why a message cannot be scanned: reported as an infection, never as clean.
#[derive(Debug, PartialEq, Eq)]
enum Unscannable {
    NestedTooDeep,
    Malformed,
}

impl Unscannable {
    fn name(&self) -> &'static str {
        match self {
            Unscannable::NestedTooDeep => "Unscannable.NestedTooDeep",
            Unscannable::Malformed => "Unscannable.Malformed",
        }
    }
}

struct Signature {
    name: String,
    finder: memchr::memmem::Finder<'static>,
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    let hex: Vec<u8> = hex.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    hex.chunks(2)
        .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok())
        .collect()
}

fn settings() -> Result<(Vec<Signature>, u64), String> {
    let config: Config =
        serde_json::from_str(&portcullis::filter::config::json()).map_err(|e| e.to_string())?;
    let max_size = config.max_size.unwrap_or(MAX_SIZE);
    let signature = |name: String, bytes: Vec<u8>| Signature {
        name,
        finder: memchr::memmem::Finder::new(&bytes).into_owned(),
    };
    let mut out = vec![signature(
        "Eicar-Test-Signature".into(),
        EICAR.concat().into_bytes(),
    )];
    for s in config.signatures {
        let bytes = match (s.hex, s.text) {
            (Some(hex), None) => decode_hex(&hex).ok_or_else(|| format!("signature {}: bad hex", s.name))?,
            (None, Some(text)) => text.into_bytes(),
            _ => return Err(format!("signature {}: give exactly one of hex or text", s.name)),
        };
        if bytes.is_empty() {
            return Err(format!("signature {}: empty", s.name));
        }
        out.push(signature(s.name, bytes));
    }
    Ok((out, max_size))
}

/// Reads the whole message from the host in 1 MiB chunks.
fn read_all(message: &Message) -> Vec<u8> {
    let mut raw = Vec::with_capacity(message.size() as usize);
    loop {
        let chunk = message.read(raw.len() as u64, 1 << 20);
        if chunk.is_empty() {
            return raw;
        }
        raw.extend_from_slice(&chunk);
    }
}

/// Whether decoding could reveal bytes that the raw message does not hold as they are.
/// mail-parser changes a part's bytes in two ways only: a transfer encoding (base64,
/// quoted-printable) and, for text parts, a charset conversion to UTF-8. So decoding is
/// needed when either encoding is named anywhere (case-insensitively; a mention in the body
/// only costs a parse, never a miss) or a charset is declared that is not UTF-8, or not
/// US-ASCII over bytes that are all ASCII. A charset parameter that cannot be read counts
/// as foreign.
fn needs_decoding(raw: &[u8]) -> bool {
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
fn leaves(raw: &[u8], depth: usize, out: &mut Vec<Vec<u8>>) -> Result<(), Unscannable> {
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

struct VirusSignatures;

impl Guest for VirusSignatures {
    fn scan(_session: SessionInfo, _envelope: Envelope, message: &Message) -> ScanResult {
        let (signatures, max_size) = match settings() {
            Ok(s) => s,
            Err(e) => return ScanResult::Error(format!("bad config: {e}")),
        };
        if message.size() > max_size {
            return ScanResult::Error(format!(
                "message of {} octets is larger than max-size ({max_size}): not scanned",
                message.size()
            ));
        }
        let raw = read_all(message);
        let mut decoded = Vec::new();
        let unscannable = if needs_decoding(&raw) {
            leaves(&raw, 0, &mut decoded).err()
        } else {
            None
        };
        for part in std::iter::once(&raw).chain(&decoded) {
            if let Some(found) = signatures.iter().find(|s| s.finder.find(part).is_some()) {
                return ScanResult::Infected(found.name.clone());
            }
        }
        match unscannable {
            Some(why) => ScanResult::Infected(why.name().into()),
            None => ScanResult::Clean,
        }
    }
}

export!(VirusSignatures);
