//! A starter virus scan: refuse every message that holds the configured byte string
//! anywhere in its raw content (the EICAR test string when none is configured),
//!
//! ```toml
//! [plugin.config]
//! signature = "X5O!WORM-TEST"
//! name = "Demo.Worm"
//! ```
//!
//! It reads the message in 64 KiB chunks and keeps the tail of each, so a signature split
//! across two reads is still found. Raw bytes only: a base64 attachment must be matched in
//! its encoded form (the virus-signatures example in plugins/ decodes MIME parts).
//!
//! Build: `./build.sh` (needs Rust and `rustup target add wasm32-wasip2`).
//! Try: `portcullis plugin test starter.wasm --hook virus message.eml`.

wit_bindgen::generate!({ path: "wit", world: "virus-plugin" });

use exports::portcullis::filter::virus::{Guest, ScanReport, ScanResult};
use portcullis::filter::config;
use portcullis::filter::types::{Envelope, Header, Message, SessionInfo};

struct Starter;

const EICAR: &str = r"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*";
const CHUNK: u32 = 64 * 1024;

impl Guest for Starter {
    fn scan(_session: SessionInfo, _envelope: Envelope, message: &Message) -> ScanReport {
        let found = scan(message);
        // A clean message is delivered with this header (only a clean one).
        let headers = vec![Header {
            name: "X-Starter-Scan".into(),
            value: "clean".into(),
        }];
        ScanReport { found, headers }
    }
}

fn scan(message: &Message) -> ScanResult {
    let (signature, name) = match config::get("signature").filter(|s| !s.is_empty()) {
        Some(s) => (
            s,
            config::get("name").unwrap_or_else(|| "Starter-Signature".into()),
        ),
        None => (EICAR.to_string(), "Eicar-Test-Signature".to_string()),
    };
    let signature = signature.as_bytes();
    // The unread tail of the previous chunk plus the new one.
    let mut window: Vec<u8> = Vec::new();
    let mut offset = 0u64;
    loop {
        let chunk = message.read(offset, CHUNK);
        if chunk.is_empty() {
            return ScanResult::Clean;
        }
        offset += chunk.len() as u64;
        window.extend_from_slice(&chunk);
        if window.windows(signature.len()).any(|w| w == signature) {
            return ScanResult::Infected(name);
        }
        let keep = signature.len() - 1;
        window.drain(..window.len().saturating_sub(keep));
    }
}

export!(Starter);
