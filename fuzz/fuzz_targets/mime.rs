//! Feeds arbitrary messages to the MIME walk the virus-signatures plugin runs (this very
//! file: `plugins/virus-signatures/src/walk.rs`, compiled natively): every decoded leaf or
//! a reason it cannot be scanned, never a panic, and never deeper than its limit.
//!
//! Run: `cargo +nightly fuzz run mime` (from `fuzz/`).

#![no_main]

#[path = "../../plugins/virus-signatures/src/walk.rs"]
#[allow(dead_code)] // the plugin uses all of it; this target only the walk
mod walk;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut leaves = Vec::new();
    if walk::needs_decoding(data) || data.len() < 4096 {
        let _ = walk::leaves(data, 0, &mut leaves);
    }
});
