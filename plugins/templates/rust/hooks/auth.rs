//! A starter auth check: the accounts and their passwords come from the plugin's config,
//!
//! ```toml
//! [plugin.config]
//! "alice@example.org" = "correct horse battery staple"
//! ```
//!
//! Plain-text passwords are for trying things out: keep hashes in real use (the auth-table
//! example in plugins/ checks Argon2 hashes).
//!
//! Build: `./build.sh` (needs Rust and `rustup target add wasm32-wasip2`).
//! Try: `portcullis plugin test starter.wasm --hook auth --user alice@example.org --password …`.

wit_bindgen::generate!({ path: "wit", world: "auth-plugin" });

use exports::portcullis::filter::auth::{AuthResult, Guest, Mechanism};
use portcullis::filter::config;
use portcullis::filter::types::SessionInfo;

struct Starter;

/// Compares without stopping at the first difference, so the time taken does not tell how
/// much of a guess was right.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Guest for Starter {
    fn authenticate(
        _session: SessionInfo,
        _mechanism: Mechanism,
        username: String,
        password: String,
    ) -> AuthResult {
        match config::get(&username) {
            Some(expected) if !password.is_empty() && same(expected.as_bytes(), password.as_bytes()) => {
                AuthResult::Accept(username)
            }
            _ => AuthResult::Reject,
        }
    }
}

export!(Starter);
