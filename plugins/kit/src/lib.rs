//! What the shipped plugins share. It has no bindings of its own (each plugin generates
//! those for its world), so it holds plain functions: the host's limits on the header
//! changes of a verdict, the fields no plugin may add or remove, reading a message whole
//! through a plugin's `message.read`; and [`needles`], many needles searched for in one pass.

#[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
pub mod arena;
pub mod needles;

/// Every plugin built with the kit for `wasm32-unknown-unknown` allocates from the arena.
#[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
#[global_allocator]
static ARENA: arena::Arena = arena::Arena::new();

/// The host keeps at most this many headers to add, and as many to remove, per verdict.
pub const MAX_HEADERS: usize = 20;
/// The host's limit on a header value, in octets.
pub const MAX_VALUE: usize = 1000;

/// Header fields only the host writes, which no plugin adds or removes (nor any `ARC-`).
const PROTECTED: &[&str] = &[
    "received",
    "return-path",
    "delivered-to",
    "authentication-results",
    "dkim-signature",
];

/// Whether `name` is a trace or authentication field the host alone writes.
pub fn protected(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    PROTECTED.contains(&lower.as_str()) || lower.starts_with("arc-")
}

/// A field name the host takes: printable ASCII without a colon, at most 64 octets.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 64 && name.bytes().all(|b| b.is_ascii_graphic() && b != b':')
}

/// A value the host takes: one line (CR, LF and TAB become spaces), trimmed, and cut to
/// [`MAX_VALUE`] octets at a character boundary.
pub fn header_value(value: &str) -> String {
    let mut value = value.replace(['\r', '\n', '\t'], " ").trim().to_string();
    if value.len() > MAX_VALUE {
        let mut end = MAX_VALUE;
        while !value.is_char_boundary(end) {
            end -= 1;
        }
        value.truncate(end);
    }
    value
}

/// The whole message of `size` octets, read in 1 MiB chunks with `read(offset, max)` (a
/// plugin's `|at, max| message.read(at, max)`), which returns nothing past the end. A
/// message of one chunk is the chunk itself: no second copy, no call to find the end.
pub fn read_all(size: u64, mut read: impl FnMut(u64, u32) -> Vec<u8>) -> Vec<u8> {
    let size = usize::try_from(size).unwrap_or(usize::MAX);
    let mut raw = read(0, CHUNK);
    if raw.len() >= size || raw.is_empty() {
        return raw;
    }
    raw.reserve(size - raw.len());
    loop {
        let chunk = read(raw.len() as u64, CHUNK);
        if chunk.is_empty() {
            return raw;
        }
        raw.extend_from_slice(&chunk);
        if raw.len() >= size {
            return raw;
        }
    }
}

/// What [`read_all`] asks for at a time.
const CHUNK: u32 = 1 << 20;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_and_authentication_fields_are_protected() {
        for name in [
            "Received",
            "RETURN-PATH",
            "Delivered-To",
            "Authentication-Results",
            "DKIM-Signature",
            "ARC-Seal",
        ] {
            assert!(protected(name), "{name}");
        }
        for name in ["X-Spam-Status", "Subject", "X-DKIM-Signature"] {
            assert!(!protected(name), "{name}");
        }
    }

    #[test]
    fn names_and_values_fit_the_host() {
        assert!(valid_name("X-Virus-Status"));
        for bad in ["", "X Bad", "X:Bad", "X-\u{e9}", &"x".repeat(65)] {
            assert!(!valid_name(bad), "{bad:?}");
        }
        assert_eq!(header_value(" a\r\n\tb "), "a   b");
        // Cut at a character boundary: 999 octets, never half of the two-octet é.
        let long = format!("{}é", "x".repeat(999));
        assert_eq!(header_value(&long).len(), 999);
        assert_eq!(header_value(&"y".repeat(2000)).len(), MAX_VALUE);
    }

    #[test]
    fn read_all_reads_to_the_end_in_chunks() {
        let data: Vec<u8> = (0..3_000_000u32).map(|i| i as u8).collect();
        let mut calls = 0;
        let got = read_all(data.len() as u64, |at, max| {
            calls += 1;
            let at = at as usize;
            data[at.min(data.len())..(at + max as usize).min(data.len())].to_vec()
        });
        assert_eq!(got, data);
        assert_eq!(calls, 3, "the size says when the end is reached");
        // One chunk: one call. A size that promises more than there is: read to the end.
        let small = b"Subject: x\r\n\r\nhi\r\n".to_vec();
        let mut calls = 0;
        let got = read_all(small.len() as u64, |at, _| {
            calls += 1;
            small[(at as usize).min(small.len())..].to_vec()
        });
        assert_eq!((got, calls), (small.clone(), 1));
        let got = read_all(1000, |at, _| small[(at as usize).min(small.len())..].to_vec());
        assert_eq!(got, small);
    }
}
