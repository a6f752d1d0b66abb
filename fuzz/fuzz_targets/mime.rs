//! Feeds arbitrary messages to the host's MIME parse (`portcullis_smtp::mime`, what
//! `message.parts` gives every plugin) and to the pass over the raw message the
//! virus-signatures plugin makes before asking for it (`plugins/virus-signatures/src/walk.rs`,
//! compiled natively): a structure whose every part's parent comes before it, or a clean
//! error; a signature reported only where it is, and found wherever it is; never a panic.
//!
//! Run: `cargo +nightly fuzz run mime` (from `fuzz/`).

#![no_main]

#[path = "../../plugins/virus-signatures/src/walk.rs"]
mod walk;

use libfuzzer_sys::fuzz_target;
use portcullis_smtp::mime::{MimeError, Structure};
use walk::Raw;

fuzz_target!(|data: &[u8]| {
    let signatures: [&[u8]; 2] = [b"X5O!P%@AP", b"\0\xff"];
    let occurs = |s: &[u8]| data.windows(s.len()).any(|w| w == s);
    match walk::scan_raw(data, &signatures) {
        Raw::Signature(index) => assert!(occurs(signatures[index]), "a signature that is not there"),
        Raw::Clean { .. } => assert!(!signatures.iter().any(|s| occurs(s)), "a signature missed"),
    }
    match Structure::parse(data) {
        Ok(structure) => {
            for (index, part) in structure.parts.iter().enumerate() {
                if let Some(parent) = part.parent {
                    assert!((parent as usize) < index, "a parent after its part");
                }
            }
        }
        Err(MimeError::NestedTooDeep | MimeError::Unreadable(_)) => {}
        Err(MimeError::TooLarge(_)) => unreachable!("no size limit in Structure::parse"),
    }
});
