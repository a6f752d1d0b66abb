//! A starter spam rule: junk every message whose subject holds the configured word, or
//! whose client's address is listed in the DNS blocklist `dnsbl` names — a lookup through
//! the host's resolver, which works only when the operator grants it (`grant-dns = true`).
//! (For the other hooks: `portcullis plugin new --hook auth|rate|virus`, or `hooks/` in the
//! template folder.)
//!
//! Build: `./build.sh` (needs Rust and `rustup target add wasm32-wasip2`).
//! Try: `portcullis plugin test starter.wasm --hook spam message.eml`, with `--grant-dns`
//! to let it look up.

wit_bindgen::generate!({ path: "wit", world: "spam-plugin" });

use exports::portcullis::filter::spam::{Guest, SpamResult};
use portcullis::filter::config;
use portcullis::filter::dns::{self, LookupError, RecordType};
use portcullis::filter::log::{self, Level};
use portcullis::filter::types::{Envelope, Header, Message, SessionInfo, Verdict};

/// Whether `ip` (IPv4) is listed in the DNSBL `zone`: its octets reversed, under the zone,
/// have an A record. Without the grant the lookup is denied, and the rule is skipped.
fn listed(ip: &str, zone: &str) -> bool {
    let Ok(ip) = ip.parse::<std::net::Ipv4Addr>() else {
        return false;
    };
    let [a, b, c, d] = ip.octets();
    match dns::lookup(&format!("{d}.{c}.{b}.{a}.{zone}"), RecordType::A) {
        Ok(answers) => !answers.is_empty(),
        Err(LookupError::Nxdomain) => false,
        Err(LookupError::Failed(why) | LookupError::Denied(why)) => {
            log::log(Level::Warn, &format!("{zone}: {why}"));
            false
        }
    }
}

struct Starter;

impl Guest for Starter {
    fn classify(session: SessionInfo, _envelope: Envelope, message: &Message) -> Result<SpamResult, String> {
        // The word and the zone come from the operator's [plugin.config] table.
        let word = config::get("word").unwrap_or_else(|| "crypto".to_string()).to_lowercase();
        let subject = message
            .headers()
            .into_iter()
            .find(|h| h.name.eq_ignore_ascii_case("subject"))
            .map(|h| h.value.to_lowercase())
            .unwrap_or_default();
        let hit = !word.is_empty() && subject.contains(&word);
        let listed = config::get("dnsbl").is_some_and(|zone| listed(&session.client_ip, &zone));
        let (score, said) = match (hit, listed) {
            (true, _) => (10.0, "hit"),
            (false, true) => (5.0, "listed"),
            (false, false) => (0.0, "miss"),
        };
        Ok(SpamResult {
            score,
            verdict: if hit || listed { Verdict::Junk } else { Verdict::Accept },
            headers: vec![Header {
                name: "X-Starter".into(),
                value: said.into(),
            }],
            // Ours replaces any X-Starter the message came with.
            remove_headers: vec!["X-Starter".into()],
        })
    }
}

export!(Starter);
