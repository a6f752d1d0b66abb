//! The Sender Rewriting Scheme, in the form of libsrs2 (Postfix's postsrsd, Exim): the
//! envelope sender of a copy an alias forwards to another domain is rewritten into one of
//! our own domains, so that SPF passes at the next hop, and a bounce to the rewritten
//! address is turned back into the original sender.
//!
//! - `SRS0=HHHH=TT=example.com=alice@forwarder.example`: `TT` the day (base32, modulo 1024),
//!   `HHHH` the first four base64 characters of an HMAC-SHA1, under the secret, of the
//!   lower-cased `TT`, domain and local part.
//! - A sender that is an SRS0 address of another forwarder becomes an SRS1 address, which
//!   points back at that forwarder (`SRS1=HHHH=other.example==HHHH=TT=…@forwarder.example`),
//!   so that the address does not grow with every hop.
//!
//! Written here rather than taken from a crate: the crates found write other forms (hex
//! hashes, decimal stamps) that postsrsd and Exim cannot reverse; this form is checked
//! against Debian's postsrsd in the tests.

use base64::Engine;
use portcullis_smtp::Mailbox;
use ring::hmac;

/// How many days a rewritten address is reversed for (libsrs2's default).
const MAX_AGE_DAYS: u64 = 21;
/// The hash characters written and required.
const HASH_LENGTH: usize = 4;
/// The base32 alphabet of the day stamp.
const STAMP_CHARS: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
/// The separators libsrs2 accepts after `SRS0` and `SRS1`.
const SEPARATORS: [char; 3] = ['=', '-', '+'];

/// The rewriting under one secret.
#[derive(Clone)]
pub struct Srs {
    key: hmac::Key,
}

impl std::fmt::Debug for Srs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Srs { .. }")
    }
}

/// Today's number in SRS: days since the epoch, modulo 1024.
fn day(now: u64) -> u64 {
    (now / 86_400) % 1024
}

fn stamp(now: u64) -> String {
    let day = day(now) as usize;
    [STAMP_CHARS[(day >> 5) & 31], STAMP_CHARS[day & 31]]
        .iter()
        .map(|&b| b as char)
        .collect()
}

/// Whether the stamp `text` is from the last [`MAX_AGE_DAYS`] days.
fn stamp_is_fresh(text: &str, now: u64) -> bool {
    let mut then = 0u64;
    if text.len() != 2 {
        return false;
    }
    for c in text.bytes() {
        let Some(value) = STAMP_CHARS.iter().position(|&s| s == c.to_ascii_uppercase()) else {
            return false;
        };
        then = (then << 5) | value as u64;
    }
    let mut today = day(now);
    while today < then {
        today += 1024;
    }
    today <= then + MAX_AGE_DAYS
}

/// The `SRS0`/`SRS1` tag of a local part and what follows its separator.
fn tagged<'a>(local: &'a str, tag: &str) -> Option<&'a str> {
    let head = local.get(..4)?;
    let separator = local[4..].chars().next()?;
    (head.eq_ignore_ascii_case(tag) && SEPARATORS.contains(&separator)).then(|| &local[5..])
}

/// Whether two hashes are the same: case does not count (some MTAs lower-case local
/// parts), and `+`/`/` equal `-`/`_` (postsrsd 2.4 writes base64url).
fn same_hash(given: &str, ours: &str) -> bool {
    let fold = |c: char| match c {
        '-' => '+',
        '_' => '/',
        c => c.to_ascii_lowercase(),
    };
    given.len() >= HASH_LENGTH
        && given
            .chars()
            .take(HASH_LENGTH)
            .map(fold)
            .eq(ours.chars().take(HASH_LENGTH).map(fold))
}

impl Srs {
    /// The rewriting under `secret` (`[aliases] srs-secret`).
    pub fn new(secret: &str) -> Srs {
        Srs {
            key: hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret.as_bytes()),
        }
    }

    fn hash(&self, parts: &[&str]) -> String {
        let mut context = hmac::Context::with_key(&self.key);
        for part in parts {
            context.update(part.to_ascii_lowercase().as_bytes());
        }
        let tag = context.sign();
        let mut text = base64::engine::general_purpose::STANDARD.encode(&tag.as_ref()[..3]);
        text.truncate(HASH_LENGTH);
        text
    }

    /// `sender` rewritten into `domain` at time `now` (seconds since the epoch).
    pub fn forward(&self, sender: &Mailbox, domain: &str, now: u64) -> Mailbox {
        let local = if let Some(rest) = tagged(&sender.local, "SRS1") {
            // Another forwarder's SRS1: keep where it points, under our hash.
            match rest.split_once('=').and_then(|(_, rest)| rest.split_once('=')) {
                Some((host, user)) => {
                    format!("SRS1={}={host}={user}", self.hash(&[host, user]))
                }
                None => self.shortcut(sender, now),
            }
        } else if tagged(&sender.local, "SRS0").is_some() {
            // Another forwarder's SRS0: point back at that forwarder.
            let user = &sender.local[4..];
            format!(
                "SRS1={}={}={user}",
                self.hash(&[&sender.domain, user]),
                sender.domain
            )
        } else {
            self.shortcut(sender, now)
        };
        Mailbox {
            local,
            domain: domain.to_string(),
        }
    }

    fn shortcut(&self, sender: &Mailbox, now: u64) -> String {
        let stamp = stamp(now);
        let hash = self.hash(&[&stamp, &sender.domain, &sender.local]);
        format!("SRS0={hash}={stamp}={}={}", sender.domain, sender.local)
    }

    /// The address a rewritten `address` stands for, when its hash is ours and (SRS0) it
    /// is not older than 21 days: the original sender, or for SRS1 the SRS0 address of
    /// the forwarder before us. `None` for anything else.
    pub fn reverse(&self, address: &Mailbox, now: u64) -> Option<Mailbox> {
        if let Some(rest) = tagged(&address.local, "SRS0") {
            let (hash, rest) = rest.split_once('=')?;
            let (stamp, rest) = rest.split_once('=')?;
            let (host, user) = rest.split_once('=')?;
            let good = !host.is_empty()
                && !user.is_empty()
                && stamp_is_fresh(stamp, now)
                && same_hash(hash, &self.hash(&[stamp, host, user]));
            return good.then(|| Mailbox {
                local: user.to_string(),
                domain: host.to_string(),
            });
        }
        let rest = tagged(&address.local, "SRS1")?;
        let (hash, rest) = rest.split_once('=')?;
        let (host, user) = rest.split_once('=')?;
        let good = !host.is_empty() && !user.is_empty() && same_hash(hash, &self.hash(&[host, user]));
        good.then(|| Mailbox {
            local: format!("SRS0{user}"),
            domain: host.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mb(text: &str) -> Mailbox {
        portcullis_smtp::address::parse_mailbox(text).expect("an address")
    }

    /// 2026-12-07 12:00 UTC.
    const NOW: u64 = 1_796_644_800;

    #[test]
    fn a_rewritten_sender_comes_back_and_nothing_else_does() {
        let srs = Srs::new("a secret of some length");
        let forwarded = srs.forward(&mb("Alice@Example.COM"), "forwarder.test", NOW);
        assert_eq!(forwarded.domain, "forwarder.test");
        let parts: Vec<&str> = forwarded.local.split('=').collect();
        assert_eq!(parts.len(), 5, "{forwarded}");
        assert_eq!(parts[0], "SRS0");
        assert_eq!(parts[1].len(), 4);
        assert_eq!(parts[2], stamp(NOW));
        assert_eq!(&parts[3..], ["Example.COM", "Alice"]);
        assert_eq!(srs.reverse(&forwarded, NOW), Some(mb("Alice@Example.COM")));
        // Lower-cased on the way (some servers do), and 21 days later: still good.
        let lowered = mb(&forwarded.to_string().to_lowercase());
        assert_eq!(
            srs.reverse(&lowered, NOW + 21 * 86_400),
            Some(mb("alice@example.com"))
        );
        // 22 days later, another secret, a changed address: refused.
        assert_eq!(srs.reverse(&forwarded, NOW + 22 * 86_400), None);
        assert_eq!(Srs::new("another secret").reverse(&forwarded, NOW), None);
        let forged = mb(&forwarded.to_string().replace("=Alice@", "=Mallory@"));
        assert_eq!(srs.reverse(&forged, NOW), None);
        for junk in [
            "SRS0@x.test",
            "SRS0=abcd@x.test",
            "alice@x.test",
            "SRS1=x=y@x.test",
        ] {
            assert_eq!(srs.reverse(&mb(junk), NOW), None, "{junk}");
        }
    }

    #[test]
    fn another_forwarders_address_becomes_srs1_and_points_back_at_it() {
        let first = Srs::new("first forwarder");
        let ours = Srs::new("second forwarder");
        let once = first.forward(&mb("bob@origin.test"), "one.test", NOW);
        let twice = ours.forward(&once, "two.test", NOW);
        assert!(twice.local.starts_with("SRS1="), "{twice}");
        assert!(twice.local.contains("=one.test==") && twice.local.ends_with("=origin.test=bob"));
        // A third hop keeps pointing at the first forwarder.
        let thrice = Srs::new("third").forward(&twice, "three.test", NOW);
        assert!(thrice.local.contains("=one.test=="), "{thrice}");
        // Reversed by us: the first forwarder's address, which it reverses in turn.
        let back = ours.reverse(&twice, NOW).expect("ours");
        assert_eq!(back, once);
        assert_eq!(first.reverse(&back, NOW), Some(mb("bob@origin.test")));
    }

    #[test]
    fn the_day_stamp_wraps_every_1024_days() {
        let srs = Srs::new("s");
        let at = 1023 * 86_400 + 7;
        let forwarded = srs.forward(&mb("a@b.test"), "f.test", at);
        assert_eq!(stamp(at), "77");
        assert_eq!(srs.reverse(&forwarded, at + 5 * 86_400), Some(mb("a@b.test")));
    }
}
