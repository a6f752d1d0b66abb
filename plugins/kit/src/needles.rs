//! Many needles in one pass over a haystack.
//!
//! A spam filter looks for a dozen phrases in the body and a virus scanner for several
//! signatures and MIME keywords; searched one after another, each costs a pass over the
//! whole message (nine phrases were a tenth of the daemon's time at 100 KiB). No crate does
//! this well on wasm32: `memchr::memmem` takes one needle, and aho-corasick's vectorised
//! prefilter (Teddy) exists for x86-64 and AArch64 only, its automaton on wasm32 being
//! slower than the nine passes.
//!
//! So this is the Teddy idea, written for WebAssembly's 128-bit SIMD: every needle is put in
//! one of eight buckets; for each of the first one to three bytes of a needle, two 16-entry
//! tables (indexed by a byte's low and its high nibble) hold the buckets that accept that
//! byte there. Sixteen haystack positions are tested at once with two table lookups
//! (`i8x16.swizzle`) per fingerprint byte and an AND; only where a bucket survives are its
//! needles compared in full. A needle searched without regard to ASCII case puts both cases
//! of its letters in the tables and is compared case-insensitively.
//!
//! Without `simd128` (the native builds of tests and fuzzing) the same tables are read one
//! position at a time: the same candidates, so the tests here check the logic both share.

use std::ops::ControlFlow;

/// How many haystack positions one step tests.
const LANES: usize = 16;
/// Needles fall into this many buckets (one bit each in a table entry).
const BUCKETS: usize = 8;
/// At most this many leading bytes of every needle are tested before a full comparison.
const MAX_FINGERPRINT: usize = 3;

/// A set of needles, searched for all at once with [`Needles::find`].
#[derive(Clone, Debug)]
pub struct Needles {
    needles: Vec<Needle>,
    /// The needles of each bucket, by index.
    buckets: [Vec<usize>; BUCKETS],
    /// The fingerprint's length: the shortest needle's, at most [`MAX_FINGERPRINT`].
    width: usize,
    /// `low[k][n]`: the buckets whose needles may have, at offset `k`, a byte whose low
    /// nibble is `n`; `high` the same for the high nibble.
    low: [[u8; LANES]; MAX_FINGERPRINT],
    high: [[u8; LANES]; MAX_FINGERPRINT],
}

#[derive(Clone, Debug)]
struct Needle {
    /// Lower-cased when `caseless`.
    bytes: Vec<u8>,
    caseless: bool,
}

impl Needle {
    fn at(&self, haystack: &[u8], at: usize) -> bool {
        match haystack.get(at..at + self.bytes.len()) {
            Some(window) if self.caseless => window.eq_ignore_ascii_case(&self.bytes),
            Some(window) => window == self.bytes,
            None => false,
        }
    }
}

/// Where a needle was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Match {
    /// The needle's index: the order in which it was given to [`Needles::new`].
    pub needle: usize,
    /// The offset of its first byte in the haystack.
    pub at: usize,
}

impl Needles {
    /// The set of `needles`, each with whether it matches regardless of ASCII case. An
    /// empty needle matches once, at offset 0.
    pub fn new<'a>(needles: impl IntoIterator<Item = (&'a [u8], bool)>) -> Needles {
        let needles: Vec<Needle> = needles
            .into_iter()
            .map(|(bytes, caseless)| Needle {
                bytes: if caseless {
                    bytes.to_ascii_lowercase()
                } else {
                    bytes.to_vec()
                },
                caseless,
            })
            .collect();
        let width = needles
            .iter()
            .map(|n| n.bytes.len())
            .filter(|&len| len > 0)
            .min()
            .unwrap_or(1)
            .min(MAX_FINGERPRINT);
        let mut set = Needles {
            buckets: Default::default(),
            width,
            low: [[0; LANES]; MAX_FINGERPRINT],
            high: [[0; LANES]; MAX_FINGERPRINT],
            needles,
        };
        for (index, needle) in set
            .needles
            .iter()
            .enumerate()
            .filter(|(_, n)| !n.bytes.is_empty())
        {
            let bucket = index % BUCKETS;
            set.buckets[bucket].push(index);
            for (k, &byte) in needle.bytes.iter().take(width).enumerate() {
                let upper = byte.to_ascii_uppercase();
                let variants = if needle.caseless && upper != byte {
                    [byte, upper]
                } else {
                    [byte, byte]
                };
                for b in variants {
                    set.low[k][usize::from(b & 0x0f)] |= 1 << bucket;
                    set.high[k][usize::from(b >> 4)] |= 1 << bucket;
                }
            }
        }
        set
    }

    /// Calls `found` with every match in `haystack`, overlapping ones included, in order of
    /// offset, until it breaks; returns its break value.
    pub fn find<B>(&self, haystack: &[u8], mut found: impl FnMut(Match) -> ControlFlow<B>) -> Option<B> {
        for (needle, _) in self
            .needles
            .iter()
            .enumerate()
            .filter(|(_, n)| n.bytes.is_empty())
        {
            if let ControlFlow::Break(b) = found(Match { needle, at: 0 }) {
                return Some(b);
            }
        }
        if self.buckets.iter().all(Vec::is_empty) {
            return None;
        }
        match self.width {
            1 => self.scan::<1, B>(haystack, &mut found),
            2 => self.scan::<2, B>(haystack, &mut found),
            _ => self.scan::<3, B>(haystack, &mut found),
        }
    }

    /// Whether any needle occurs in `haystack`, and the first one found.
    pub fn first(&self, haystack: &[u8]) -> Option<Match> {
        self.find(haystack, ControlFlow::Break)
    }

    /// [`Needles::find`] with a fingerprint of `W` bytes.
    fn scan<const W: usize, B>(
        &self,
        haystack: &[u8],
        found: &mut impl FnMut(Match) -> ControlFlow<B>,
    ) -> Option<B> {
        let tables = Tables::<W>::of(self);
        // A step reads `LANES + W - 1` bytes; the last, shorter stretch is copied into a
        // zeroed window of that size (candidates past the end fail their comparison).
        let span = LANES + W - 1;
        let mut start = 0;
        while start + span <= haystack.len() {
            if let Some(candidates) = tables.candidates(&haystack[start..start + span])
                && let Some(b) = self.compare(haystack, start, candidates, found)
            {
                return Some(b);
            }
            start += LANES;
        }
        if start < haystack.len() {
            let mut window = [0u8; LANES + MAX_FINGERPRINT - 1];
            window[..haystack.len() - start].copy_from_slice(&haystack[start..]);
            if let Some(candidates) = tables.candidates(&window[..span]) {
                return self.compare(haystack, start, candidates, found);
            }
        }
        None
    }

    /// Compares the needles of every bucket that survived at the sixteen positions from
    /// `start`.
    fn compare<B>(
        &self,
        haystack: &[u8],
        start: usize,
        candidates: [u8; LANES],
        found: &mut impl FnMut(Match) -> ControlFlow<B>,
    ) -> Option<B> {
        for (lane, mut buckets) in candidates.into_iter().enumerate() {
            while buckets != 0 {
                let bucket = buckets.trailing_zeros() as usize;
                buckets &= buckets - 1;
                for &needle in &self.buckets[bucket] {
                    let at = start + lane;
                    if self.needles[needle].at(haystack, at)
                        && let ControlFlow::Break(b) = found(Match { needle, at })
                    {
                        return Some(b);
                    }
                }
            }
        }
        None
    }
}

/// The nibble tables of a fingerprint of `W` bytes, as vectors.
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
struct Tables<const W: usize> {
    low: [core::arch::wasm32::v128; W],
    high: [core::arch::wasm32::v128; W],
}

#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
impl<const W: usize> Tables<W> {
    fn of(needles: &Needles) -> Self {
        use core::arch::wasm32::u8x16;
        let vector = |t: &[u8; LANES]| {
            u8x16(
                t[0], t[1], t[2], t[3], t[4], t[5], t[6], t[7], t[8], t[9], t[10], t[11], t[12], t[13],
                t[14], t[15],
            )
        };
        Tables {
            low: std::array::from_fn(|k| vector(&needles.low[k])),
            high: std::array::from_fn(|k| vector(&needles.high[k])),
        }
    }

    /// For each of the sixteen positions of `window`, the buckets whose fingerprint it
    /// holds; `None` when there is none.
    fn candidates(&self, window: &[u8]) -> Option<[u8; LANES]> {
        use core::arch::wasm32::{
            u8x16_shr, u8x16_splat, u8x16_swizzle, v128, v128_and, v128_any_true, v128_load, v128_store,
        };
        assert!(window.len() >= LANES + W - 1);
        let nibble = u8x16_splat(0x0f);
        let mut buckets = u8x16_splat(0xff);
        for k in 0..W {
            // SAFETY: `window` holds `LANES + W - 1` bytes (asserted above), so the sixteen
            // from `k < W` are inside it; wasm loads need no alignment.
            #[allow(unsafe_code)]
            let bytes = unsafe { v128_load(window.as_ptr().add(k).cast::<v128>()) };
            let low = u8x16_swizzle(self.low[k], v128_and(bytes, nibble));
            let high = u8x16_swizzle(self.high[k], u8x16_shr(bytes, 4));
            buckets = v128_and(buckets, v128_and(low, high));
        }
        if !v128_any_true(buckets) {
            return None;
        }
        let mut out = [0u8; LANES];
        // SAFETY: sixteen bytes written into a 16-byte array; wasm stores need no alignment.
        #[allow(unsafe_code)]
        unsafe {
            v128_store(out.as_mut_ptr().cast::<v128>(), buckets)
        };
        Some(out)
    }
}

/// The nibble tables of a fingerprint of `W` bytes (read one position at a time where
/// there is no `simd128`: the same candidates).
#[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
struct Tables<const W: usize> {
    low: [[u8; LANES]; W],
    high: [[u8; LANES]; W],
}

#[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
impl<const W: usize> Tables<W> {
    fn of(needles: &Needles) -> Self {
        Tables {
            low: std::array::from_fn(|k| needles.low[k]),
            high: std::array::from_fn(|k| needles.high[k]),
        }
    }

    /// For each of the sixteen positions of `window`, the buckets whose fingerprint it
    /// holds; `None` when there is none.
    fn candidates(&self, window: &[u8]) -> Option<[u8; LANES]> {
        let mut out = [0u8; LANES];
        for (lane, buckets) in out.iter_mut().enumerate() {
            *buckets = (0..W).fold(0xff, |acc, k| {
                let byte = window[lane + k];
                acc & self.low[k][usize::from(byte & 0x0f)] & self.high[k][usize::from(byte >> 4)]
            });
        }
        out.iter().any(|&b| b != 0).then_some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every match, by the obvious search.
    fn naive(needles: &[(&[u8], bool)], haystack: &[u8]) -> Vec<Match> {
        let mut out = Vec::new();
        for (index, (needle, _)) in needles.iter().enumerate() {
            if needle.is_empty() {
                out.push(Match { needle: index, at: 0 });
            }
        }
        for at in 0..haystack.len() {
            for (index, (needle, caseless)) in needles.iter().enumerate() {
                let Some(window) = haystack.get(at..at + needle.len()) else {
                    continue;
                };
                let hit = if *caseless {
                    window.eq_ignore_ascii_case(needle)
                } else {
                    window == *needle
                };
                if !needle.is_empty() && hit {
                    out.push(Match { needle: index, at });
                }
            }
        }
        out
    }

    fn all(needles: &[(&[u8], bool)], haystack: &[u8]) -> Vec<Match> {
        let set = Needles::new(needles.iter().copied());
        let mut out = Vec::new();
        set.find(haystack, |m| {
            out.push(m);
            ControlFlow::<()>::Continue(())
        });
        // At one offset, in the order of the needles.
        out.sort_by_key(|m| (m.at, m.needle));
        out
    }

    #[test]
    fn finds_what_the_obvious_search_finds() {
        let phrases: Vec<(&[u8], bool)> = vec![
            (b"viagra", true),
            (b"you have won", true),
            (b"http", false),
            (b"100% free", true),
            (b"risk-free", true),
            (b"click here", true),
            (b"aa", false),
            (b"a", true),
            (b"wire transfer", true),
            (b"\0\x01\xff", false),
            (b"lottery", true),
        ];
        let texts: Vec<Vec<u8>> = vec![
            b"".to_vec(),
            b"v".to_vec(),
            b"VIAGRA".to_vec(),
            b"Buy ViAgRa now: YOU HAVE WON the LotTery, click here http://x HTTP://y".to_vec(),
            b"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa".to_vec(),
            b"risk-freerisk-free 100% FREE\0\x01\xff wire transfer".to_vec(),
            // Matches that straddle a step of sixteen and end the haystack.
            format!("{}viagra{}wire transfer", "x".repeat(13), "y".repeat(15)).into_bytes(),
            (0u8..=255).cycle().take(1000).collect(),
        ];
        for text in &texts {
            assert_eq!(
                all(&phrases, text),
                naive(&phrases, text),
                "{:?}",
                String::from_utf8_lossy(text)
            );
            // Each needle alone, which changes the fingerprint's width and the buckets.
            for needle in &phrases {
                assert_eq!(all(&[*needle], text), naive(&[*needle], text));
            }
        }
    }

    #[test]
    fn many_needles_share_buckets() {
        let owned: Vec<Vec<u8>> = (0..40).map(|i| format!("word{i}x").into_bytes()).collect();
        let needles: Vec<(&[u8], bool)> = owned
            .iter()
            .map(|n| (n.as_slice(), i32::from(n[4]) % 2 == 0))
            .collect();
        let text: Vec<u8> = (0..300)
            .map(|i| format!("{} WORD{}X ", ["word", "Word"][i % 2], i % 45))
            .collect::<String>()
            .into_bytes();
        assert_eq!(all(&needles, &text), naive(&needles, &text));
    }

    #[test]
    fn every_offset_and_length() {
        let needles: &[(&[u8], bool)] = &[(b"abc", true), (b"bcd", false), (b"xy", true)];
        let base = b"..abcd.XY.aBcd..xyz.abc";
        for len in 0..=base.len() {
            for from in 0..len {
                let text = &base[from..len];
                assert_eq!(
                    all(needles, text),
                    naive(needles, text),
                    "{:?}",
                    String::from_utf8_lossy(text)
                );
            }
        }
    }

    #[test]
    fn empty_needles_and_breaking() {
        let set = Needles::new([(&b""[..], false), (&b"b"[..], false)]);
        assert_eq!(set.first(b"abc"), Some(Match { needle: 0, at: 0 }));
        let none = Needles::new(std::iter::empty());
        assert_eq!(none.first(b"abc"), None);
        let set = Needles::new([(&b"b"[..], false)]);
        let mut seen = 0;
        let stopped = set.find(b"abbbb", |m| {
            seen += 1;
            if m.at == 2 {
                ControlFlow::Break(m.at)
            } else {
                ControlFlow::Continue(())
            }
        });
        assert_eq!((stopped, seen), (Some(2), 2));
    }
}
