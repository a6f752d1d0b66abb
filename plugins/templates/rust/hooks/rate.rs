//! A starter rate limit: defer an account's message once it has sent `per-minute` messages
//! in the last minute or `per-day` in the last 24 hours (the host keeps the counters),
//!
//! ```toml
//! [plugin.config]
//! per-minute = 10
//! per-day = 500
//! ```
//!
//! Build: `./build.sh` (needs Rust and `rustup target add wasm32-wasip2`).
//! Try: `portcullis plugin test starter.wasm --hook rate --usage 12 message.eml`.

wit_bindgen::generate!({ path: "wit", world: "rate-plugin" });

use exports::portcullis::filter::rate::{Guest, Usage};
use portcullis::filter::config;
use portcullis::filter::types::{EnhancedCode, Envelope, Reply, SessionInfo, Verdict};

struct Starter;

/// A whole number from the config, or `default` when the key is absent or not a number.
fn limit(key: &str, default: u32) -> u32 {
    config::get(key).and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// `451 4.7.0 text`: the client keeps the message and tries again later.
fn later(text: &str) -> Verdict {
    Verdict::Defer(Reply {
        code: 451,
        enhanced: Some(EnhancedCode {
            class: 4,
            subject: 7,
            detail: 0,
        }),
        text: text.into(),
    })
}

impl Guest for Starter {
    fn check(_session: SessionInfo, _envelope: Envelope, usage: Usage) -> Verdict {
        if usage.account.minute.messages >= limit("per-minute", 10) {
            later("Too many messages this minute, try again shortly")
        } else if usage.account.day.messages >= limit("per-day", 500) {
            later("Daily sending limit reached, try again tomorrow")
        } else {
            Verdict::Accept
        }
    }
}

export!(Starter);
