//! Feeds arbitrary messages to the host's MIME parse (`portcullis_smtp::mime`, what
//! `message.parts` gives every plugin) and to the check the virus-signatures plugin runs
//! before asking for it (`plugins/virus-signatures/src/walk.rs`, compiled natively): a
//! structure whose every part's parent comes before it, or a clean error; never a panic.
//!
//! Run: `cargo +nightly fuzz run mime` (from `fuzz/`).

#![no_main]

#[path = "../../plugins/virus-signatures/src/walk.rs"]
mod walk;

use libfuzzer_sys::fuzz_target;
use portcullis_smtp::mime::{MimeError, Structure};

fuzz_target!(|data: &[u8]| {
    let _ = walk::needs_decoding(data);
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
