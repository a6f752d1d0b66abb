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
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    signatures: Vec<SignatureConfig>,
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

fn signatures() -> Result<Vec<Signature>, String> {
    let config: Config =
        serde_json::from_str(&portcullis::filter::config::json()).map_err(|e| e.to_string())?;
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
    Ok(out)
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

/// Every decoded leaf of a MIME tree, nested messages included.
fn leaves(raw: &[u8], depth: usize, out: &mut Vec<Vec<u8>>) {
    let Some(parsed) = MessageParser::default().parse(raw) else {
        return;
    };
    for part in &parsed.parts {
        match &part.body {
            PartType::Multipart(_) => {}
            PartType::Message(nested) if depth < 8 => leaves(nested.raw_message(), depth + 1, out),
            _ => out.push(part.contents().to_vec()),
        }
    }
}

struct VirusSignatures;

impl Guest for VirusSignatures {
    fn scan(_session: SessionInfo, _envelope: Envelope, message: &Message) -> ScanResult {
        let signatures = match signatures() {
            Ok(s) => s,
            Err(e) => return ScanResult::Error(format!("bad config: {e}")),
        };
        let raw = read_all(message);
        let mut decoded = Vec::new();
        leaves(&raw, 0, &mut decoded);
        for part in std::iter::once(&raw).chain(&decoded) {
            if let Some(found) = signatures.iter().find(|s| s.finder.find(part).is_some()) {
                return ScanResult::Infected(found.name.clone());
            }
        }
        ScanResult::Clean
    }
}

export!(VirusSignatures);
