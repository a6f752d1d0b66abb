//! Feeds arbitrary bytes, in arbitrary chunks, to the outbound client's reply parser, as a
//! hostile remote server would send them: replies or a clean error, never a panic; and
//! whatever parses becomes EHLO extensions and per-recipient results without one.
//!
//! Run: `cargo +nightly fuzz run reply` (from `fuzz/`).

#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_smtp::client::{Extensions, RecipientResult, ReplyParser};

fuzz_target!(|data: &[u8]| {
    let chunk = 1 + data.first().copied().unwrap_or(0) as usize % 61;
    let mut parser = ReplyParser::new();
    for piece in data.chunks(chunk) {
        parser.feed(piece);
        loop {
            match parser.next_reply() {
                Ok(Some(reply)) => {
                    assert!((100..1000).contains(&reply.code));
                    let ext = Extensions::from_ehlo(&reply);
                    let _ = ext.refuses_size(u64::MAX);
                    let _ = RecipientResult::from_reply(&reply);
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
});
