//! `virus-signatures`: looks for the EICAR test string and configured byte signatures in
//! the message and in every decoded MIME part (base64, quoted-printable, charsets, nested
//! messages), which the host parses (`message.parts`, contract 0.2.0).
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
//! The EICAR test string (Eicar-Test-Signature) is always searched for. A message holding
//! several signatures is named after the one that starts first in it.
//!
//! What cannot be scanned is never called clean: a message nested deeper than 8
//! `message/rfc822` levels, or whose MIME structure cannot be parsed, is reported infected
//! (`Unscannable.NestedTooDeep`, `Unscannable.Malformed`: a retry would get the same
//! answer, so it is refused); one larger than `max-size` (default 25 MiB) is an error, and
//! the plugin's `on-error` policy applies.
//!
//! The raw message is searched first, for every signature and for the words that say
//! decoding may be needed, in one pass (`plugin_kit::needles`); the decoded parts are asked
//! for only when they could show bytes the raw message hides (see [`walk::scan_raw`]), so
//! plain-text mail, most of it, costs one pass over its bytes and no parse at all.

use plugin_kit::needles::Needles;
use serde::Deserialize;

mod walk;

use walk::Raw;

wit_bindgen::generate!({ path: "../../wit", world: "virus-plugin" });

use exports::portcullis::filter::virus::{Guest, ScanReport, ScanResult};
use portcullis::filter::types::{Envelope, Message, PartsError, SessionInfo};

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

/// The default `max-size`: the server's default message size limit.
const MAX_SIZE: u64 = 25 << 20;

struct Signature {
    name: String,
    bytes: Vec<u8>,
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
    let mut out = vec![Signature {
        name: "Eicar-Test-Signature".into(),
        bytes: EICAR.concat().into_bytes(),
    }];
    for s in config.signatures {
        let bytes = match (s.hex, s.text) {
            (Some(hex), None) => decode_hex(&hex).ok_or_else(|| format!("signature {}: bad hex", s.name))?,
            (None, Some(text)) => text.into_bytes(),
            _ => return Err(format!("signature {}: give exactly one of hex or text", s.name)),
        };
        if bytes.is_empty() {
            return Err(format!("signature {}: empty", s.name));
        }
        out.push(Signature { name: s.name, bytes });
    }
    Ok((out, max_size))
}

struct VirusSignatures;

impl Guest for VirusSignatures {
    fn scan(_session: SessionInfo, _envelope: Envelope, message: &Message) -> ScanReport {
        ScanReport {
            found: scan(message),
            headers: Vec::new(),
        }
    }
}

fn scan(message: &Message) -> ScanResult {
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
    let raw = plugin_kit::read_all(message.size(), |at, max| message.read(at, max));
    let bytes: Vec<&[u8]> = signatures.iter().map(|s| s.bytes.as_slice()).collect();
    match walk::scan_raw(&raw, &bytes) {
        Raw::Signature(index) => return ScanResult::Infected(signatures[index].name.clone()),
        Raw::Clean {
            needs_decoding: false,
        } => return ScanResult::Clean,
        Raw::Clean { needs_decoding: true } => {}
    }
    let needles = Needles::new(bytes.iter().map(|b| (*b, false)));
    let hit = |content: &[u8]| needles.first(content).map(|m| &signatures[m.needle]);
    // What cannot be scanned is refused (a retry gets the same answer), never clean.
    let parts = match message.parts() {
        Ok(parts) => parts,
        Err(PartsError::NestedTooDeep) => return ScanResult::Infected("Unscannable.NestedTooDeep".into()),
        Err(PartsError::Unreadable(_)) => return ScanResult::Infected("Unscannable.Malformed".into()),
        Err(PartsError::TooLarge) => {
            return ScanResult::Error("the message is larger than the host parses: not scanned".into());
        }
    };
    for part in parts.iter().filter(|p| p.size > 0) {
        let content = read_part(message, part.index, part.size);
        if let Some(found) = hit(&content) {
            return ScanResult::Infected(found.name.clone());
        }
    }
    ScanResult::Clean
}

/// The whole decoded content of part `index` (`size` octets), in 1 MiB chunks.
fn read_part(message: &Message, index: u32, size: u64) -> Vec<u8> {
    let mut content = Vec::with_capacity(size as usize);
    loop {
        let chunk = message.read_part(index, content.len() as u64, 1 << 20);
        if chunk.is_empty() {
            return content;
        }
        content.extend_from_slice(&chunk);
    }
}

export!(VirusSignatures);
