//! Feeds arbitrary needles and haystacks to the many-needle search the shipped plugins use
//! (`plugins/kit/src/needles.rs`, the same tables read one position at a time natively):
//! it must report exactly the matches the obvious search finds, in order of offset.
//!
//! Run: `cargo +nightly fuzz run needles` (from `fuzz/`).

#![no_main]

use std::ops::ControlFlow;

use libfuzzer_sys::fuzz_target;
use plugin_kit::needles::{Match, Needles};

fuzz_target!(|data: &[u8]| {
    // First byte: how many needles (up to 20); then each needle as a length byte (its top
    // bit: regardless of case) and its bytes; the rest is the haystack.
    let Some((&count, mut rest)) = data.split_first() else {
        return;
    };
    let mut needles: Vec<(&[u8], bool)> = Vec::new();
    for _ in 0..count % 21 {
        let Some((&head, tail)) = rest.split_first() else {
            return;
        };
        let len = usize::from(head & 0x0f).min(tail.len());
        needles.push((&tail[..len], head & 0x80 != 0));
        rest = &tail[len..];
    }
    let haystack = rest;

    let mut found = Vec::new();
    Needles::new(needles.iter().copied()).find(haystack, |m| {
        found.push(m);
        ControlFlow::<()>::Continue(())
    });
    assert!(found.windows(2).all(|w| w[0].at <= w[1].at), "matches out of order");
    found.sort_by_key(|m| (m.at, m.needle));

    let mut expected = Vec::new();
    for (needle, (bytes, _)) in needles.iter().enumerate() {
        if bytes.is_empty() {
            expected.push(Match { needle, at: 0 });
        }
    }
    for at in 0..haystack.len() {
        for (needle, (bytes, caseless)) in needles.iter().enumerate() {
            let hit = haystack.get(at..at + bytes.len()).is_some_and(|window| {
                if *caseless {
                    window.eq_ignore_ascii_case(bytes)
                } else {
                    window == *bytes
                }
            });
            if !bytes.is_empty() && hit {
                expected.push(Match { needle, at });
            }
        }
    }
    expected.sort_by_key(|m| (m.at, m.needle));
    assert_eq!(found, expected);
});
