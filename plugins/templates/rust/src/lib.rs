//! A starter spam rule: junk every message whose subject holds the configured word.
//! (For the other hooks: `portcullis plugin new --hook auth|rate|virus`, or `hooks/` in the
//! template folder.)
//!
//! Build: `./build.sh` (needs Rust and `rustup target add wasm32-wasip2`).
//! Try: `portcullis plugin test starter.wasm --hook spam message.eml`.

wit_bindgen::generate!({ path: "wit", world: "spam-plugin" });

use exports::portcullis::filter::spam::{Guest, SpamResult};
use portcullis::filter::config;
use portcullis::filter::types::{Envelope, Header, Message, SessionInfo, Verdict};

struct Starter;

impl Guest for Starter {
    fn classify(_session: SessionInfo, _envelope: Envelope, message: &Message) -> Result<SpamResult, String> {
        // The word comes from the operator's [plugin.config] table.
        let word = config::get("word").unwrap_or_else(|| "crypto".to_string()).to_lowercase();
        let subject = message
            .headers()
            .into_iter()
            .find(|h| h.name.eq_ignore_ascii_case("subject"))
            .map(|h| h.value.to_lowercase())
            .unwrap_or_default();
        let hit = !word.is_empty() && subject.contains(&word);
        Ok(SpamResult {
            score: if hit { 10.0 } else { 0.0 },
            verdict: if hit { Verdict::Junk } else { Verdict::Accept },
            headers: vec![Header {
                name: "X-Starter".into(),
                value: if hit { "hit" } else { "miss" }.into(),
            }],
            // Ours replaces any X-Starter the message came with.
            remove_headers: vec!["X-Starter".into()],
        })
    }
}

export!(Starter);
