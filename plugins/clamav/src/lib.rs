//! A virus plugin that asks a real clamd: the message is streamed to it with `INSTREAM` over
//! a connection the operator granted (`grant-connect`), and clamd's answer is the verdict.
//!
//! ```toml
//! [[plugin]]
//! hook = "virus"
//! path = "clamav.wasm"
//! grant-connect = ["unix:/run/clamav/clamd.ctl"]
//! [plugin.config]
//! address = "unix:/run/clamav/clamd.ctl"
//! max-size = 26214400          # octets; keep it below clamd's StreamMaxLength
//! ```
//!
//! - `stream: OK` → clean, with `X-Virus-Scanned: ClamAV` (`scanned-header = false` leaves
//!   it out); `stream: NAME FOUND` → infected with clamd's signature name.
//! - Never clean by default: clamd unreachable or erroring, a message over `max-size`, and
//!   clamd's `Heuristics.Limits.Exceeded` finding (a part past its scan limits, reported
//!   with `AlertExceedsMax yes`) are errors, so the plugin's `on-error` applies (default:
//!   defer, nothing lost).

wit_bindgen::generate!({ path: "../../wit", world: "virus-plugin" });

use exports::portcullis::filter::virus::{Guest, ScanReport, ScanResult};
use portcullis::filter::connect::{self, ConnectError, Connection};
use portcullis::filter::types::{Envelope, Header, Message, SessionInfo};
use portcullis::filter::{config, log};

/// The default `max-size`: clamd's default `StreamMaxLength` is 25 MiB.
const DEFAULT_MAX_SIZE: u64 = 25 << 20;
/// Octets per `INSTREAM` chunk.
const CHUNK: u32 = 256 << 10;
/// The longest answer clamd gives to one scan.
const MAX_ANSWER: usize = 4096;

struct Clamav;

fn failure(e: ConnectError) -> String {
    match e {
        ConnectError::Denied(why) => format!("not allowed: {why}"),
        ConnectError::Failed(why) => why,
    }
}

/// Streams the message and returns clamd's answer, without the trailing NUL.
fn instream(address: &str, message: &Message) -> Result<String, String> {
    let clamd: Connection =
        connect::open(address).map_err(|e| format!("clamd at {address}: {}", failure(e)))?;
    // `z`: commands and answers end with NUL.
    clamd.write(b"zINSTREAM\0").map_err(failure)?;
    let mut offset = 0u64;
    loop {
        let chunk = message.read(offset, CHUNK);
        if chunk.is_empty() {
            break;
        }
        offset += chunk.len() as u64;
        let mut framed = Vec::with_capacity(chunk.len() + 4);
        framed.extend_from_slice(&(chunk.len() as u32).to_be_bytes());
        framed.extend_from_slice(&chunk);
        clamd.write(&framed).map_err(failure)?;
    }
    clamd.write(&0u32.to_be_bytes()).map_err(failure)?;
    let mut answer = Vec::new();
    while !answer.ends_with(b"\0") && answer.len() < MAX_ANSWER {
        let got = clamd.read(1024).map_err(failure)?;
        if got.is_empty() {
            break;
        }
        answer.extend_from_slice(&got);
    }
    let text = String::from_utf8_lossy(&answer);
    Ok(text.trim_end_matches('\0').trim().to_string())
}

/// clamd's answer as a verdict.
fn verdict(answer: &str) -> ScanResult {
    let Some(finding) = answer.strip_prefix("stream: ") else {
        return ScanResult::Error(format!("clamd answered {answer:?}"));
    };
    if finding == "OK" {
        return ScanResult::Clean;
    }
    match finding.strip_suffix(" FOUND") {
        // A part too large, too deep or too compressed for clamd's limits was not scanned:
        // never clean, never a virus either.
        Some(name) if name.starts_with("Heuristics.Limits.Exceeded") => {
            ScanResult::Error(format!("clamd could not scan all of it ({name})"))
        }
        Some(name) => ScanResult::Infected(name.to_string()),
        None => ScanResult::Error(format!("clamd answered {answer:?}")),
    }
}

impl Guest for Clamav {
    fn scan(_session: SessionInfo, _envelope: Envelope, message: &Message) -> ScanReport {
        let found = scan(message);
        let say = config::get("scanned-header").is_none_or(|v| v != "false");
        let headers = match found {
            ScanResult::Clean if say => vec![Header {
                name: "X-Virus-Scanned".into(),
                value: "ClamAV".into(),
            }],
            _ => Vec::new(),
        };
        ScanReport { found, headers }
    }
}

fn scan(message: &Message) -> ScanResult {
    let Some(address) = config::get("address") else {
        return ScanResult::Error(
            "no address in [plugin.config] (such as unix:/run/clamav/clamd.ctl)".into(),
        );
    };
    let max_size = config::get("max-size")
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_MAX_SIZE);
    let size = message.size();
    if size > max_size {
        return ScanResult::Error(format!(
            "the message ({size} octets) is over max-size ({max_size}): not scanned"
        ));
    }
    match instream(&address, message) {
        Ok(answer) => {
            let result = verdict(&answer);
            if let ScanResult::Error(why) = &result {
                log::log(log::Level::Warn, why);
            }
            result
        }
        Err(why) => {
            log::log(log::Level::Warn, &why);
            ScanResult::Error(why)
        }
    }
}

export!(Clamav);
