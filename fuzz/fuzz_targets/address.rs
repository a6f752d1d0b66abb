//! Feeds arbitrary text to the MAIL/RCPT path parser, strict and lenient: an address or a
//! clean error, never a panic; and every mailbox that parses prints (with quoting where
//! needed) as text that parses back to the same mailbox: strictly, unless its local part
//! is longer than the 64 octets of strict syntax (the lenient reading takes up to 254).
//!
//! Run: `cargo +nightly fuzz run address` (from `fuzz/`).

#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_smtp::address::{Syntax, parse_path_with};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for syntax in [Syntax::Strict, Syntax::Lenient] {
        let Ok((path, _rest)) = parse_path_with(text, syntax) else {
            continue;
        };
        if let Some(mailbox) = path.mailbox {
            let printed = format!("<{mailbox}>");
            let back = if mailbox.local.len() > 64 {
                Syntax::Lenient
            } else {
                Syntax::Strict
            };
            let (again, rest) = parse_path_with(&printed, back)
                .unwrap_or_else(|e| panic!("{printed:?} does not parse back: {e}"));
            assert_eq!(again.mailbox.as_ref(), Some(&mailbox), "{printed:?}");
            assert!(rest.is_empty());
            let _ = mailbox.without_detail();
            let _ = mailbox.routing_hazard();
        }
    }
});
