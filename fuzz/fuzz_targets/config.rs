//! Feeds arbitrary text to the config parser, as `check-config` and `serve` read what an
//! operator (or a template, or a half-finished edit) wrote: the answer is a `Config` or a
//! `ConfigError` naming what is wrong, never a panic — also in what a valid config is then
//! asked for (the session limits, the warnings).
//!
//! The parser is compiled from the daemon's own source (the daemon is a binary crate).
//! `scripts/fuzz.sh` starts it from the example configs.
//!
//! Run: `cargo +nightly fuzz run config` (from `fuzz/`).

#![no_main]
// Compiled from the daemon's source, where more of it is used.
#![allow(dead_code, unused_imports)]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

#[path = "../../host/daemon/src/config/mod.rs"]
mod config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match config::Config::parse(text, "fuzz", Path::new("/etc/portcullis")) {
        Ok(config) => {
            let limits = config.session_limits();
            // What check-config accepted holds together.
            assert!(limits.memory_per_message >= 64 * 1024);
            assert!(limits.errors > 0);
            assert!(!config.listeners.is_empty());
            let _ = config.warnings();
        }
        Err(error) => {
            // Every refusal says something the operator can act on.
            assert!(!error.to_string().is_empty());
        }
    }
});
