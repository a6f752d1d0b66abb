//! A spam plugin of contract 0.1.0 (built from the pinned `wit/0.1.0/`), for the tests that
//! show a plugin built before 0.2.0 loads and behaves as it did: it reports what 0.1.0 told
//! it in headers, and refuses a message whose subject says `legacy-reject`.

wit_bindgen::generate!({ path: "../../../wit/0.1.0", world: "spam-plugin" });

use exports::portcullis::filter::spam::{Guest, SpamResult};
use portcullis::filter::types::{EnhancedCode, Envelope, Header, Message, Reply, SessionInfo, Verdict};

struct Legacy;

impl Guest for Legacy {
    fn classify(session: SessionInfo, envelope: Envelope, message: &Message) -> SpamResult {
        let subject = message
            .headers()
            .into_iter()
            .find(|h| h.name.eq_ignore_ascii_case("subject"))
            .map(|h| h.value)
            .unwrap_or_default();
        let verdict = if subject.contains("legacy-reject") {
            Verdict::Reject(Reply {
                code: 550,
                enhanced: Some(EnhancedCode {
                    class: 5,
                    subject: 7,
                    detail: 1,
                }),
                text: "refused by a 0.1.0 plugin".into(),
            })
        } else {
            Verdict::Accept
        };
        let header = |name: &str, value: String| Header {
            name: name.into(),
            value,
        };
        SpamResult {
            score: 1.5,
            verdict,
            headers: vec![
                header("X-Legacy-Contract", "0.1.0".into()),
                header("X-Legacy-Client", session.client_ip),
                header("X-Legacy-Rcpt", envelope.rcpt_to.join(",")),
                header("X-Legacy-Size", message.size().to_string()),
            ],
        }
    }
}

export!(Legacy);
