//! A spam plugin with a fixed verdict, built in two versions for the hot-swap tests:
//! version A accepts with `X-Probe: a`, version B (feature `version-b`) files into Junk with
//! `X-Probe: b`.

wit_bindgen::generate!({ path: "../../../wit", world: "spam-plugin" });

use exports::portcullis::filter::spam::{Guest, SpamResult};
use portcullis::filter::types::{Envelope, Header, Message, SessionInfo, Verdict};

struct Probe;

impl Guest for Probe {
    fn classify(
        _session: SessionInfo,
        _envelope: Envelope,
        _message: &Message,
    ) -> Result<SpamResult, String> {
        let (tag, verdict) = if cfg!(feature = "version-b") {
            ("b", Verdict::Junk)
        } else {
            ("a", Verdict::Accept)
        };
        Ok(SpamResult {
            score: 0.0,
            verdict,
            headers: vec![Header {
                name: "X-Probe".into(),
                value: tag.into(),
            }],
            remove_headers: Vec::new(),
        })
    }
}

export!(Probe);
