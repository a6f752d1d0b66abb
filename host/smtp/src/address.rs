//! RFC 5321 paths and mailboxes (`<@route:local@domain>`), parsed into types.
//!
//! Parsing is strict about structure and lenient about nothing that matters for routing: the
//! relay checks of the MX pipeline read [`Mailbox::routing_hazard`] rather than re-parse text.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A mailbox, `local-part@domain`, with the local part unquoted.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Mailbox {
    /// The local part as the user means it (quotes and escapes removed).
    pub local: String,
    /// The domain, or an address literal such as `[192.0.2.1]`, as sent.
    pub domain: String,
}

/// How strictly MAIL and RCPT paths (and EHLO names) are read.
///
/// Real senders break RFC 5321 in a few harmless ways that Postfix accepts by default
/// (`strict_rfc821_envelopes = no`): an address without angle brackets, a trailing dot on
/// a domain, words after the EHLO name. [`Syntax::Lenient`] accepts those; nothing it
/// accepts changes where mail is routed, and every relay check reads the parsed
/// [`Mailbox`], never the text.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Syntax {
    /// Accept what Postfix accepts by default. The default.
    #[default]
    Lenient,
    /// RFC 5321 to the letter: `<address>` and nothing else.
    Strict,
}

/// A reverse- or forward-path as it appeared in MAIL or RCPT.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Path {
    /// `None` for the null reverse-path `<>`.
    pub mailbox: Option<Mailbox>,
    /// The path carried an RFC 5321 source route (`@a,@b:`), which servers must not honour.
    pub source_route: bool,
}

/// Why a path could not be parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AddressError {
    /// The path is not enclosed in `<` `>`.
    #[error("the address must be enclosed in <>")]
    MissingBrackets,
    /// The local part is empty or holds characters RFC 5321 does not allow.
    #[error("the local part of the address is not valid")]
    BadLocalPart,
    /// The domain is missing or not a valid domain or address literal.
    #[error("the domain of the address is not valid")]
    BadDomain,
    /// A quoted string was not closed or ends in a lone backslash.
    #[error("unterminated quoted string in the address")]
    Unterminated,
    /// The address is longer than RFC 5321 allows (256 octets for a path).
    #[error("the address is too long")]
    TooLong,
}

/// Something in a mailbox that asks the receiving host to route the message further:
/// the classic ways to turn an MX into an open relay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RoutingHazard {
    /// `user%other@local`: the percent hack.
    PercentHack,
    /// `other!user@local`: a UUCP bang path.
    BangPath,
    /// `"user@other"@local`: a quoted local part holding another address.
    QuotedAt,
}

fn is_atext(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~".contains(&b) || b >= 0x80
}

impl Mailbox {
    /// Whether the local part would need quoting on the wire.
    fn needs_quotes(&self) -> bool {
        let bytes = self.local.as_bytes();
        bytes.is_empty()
            || bytes[0] == b'.'
            || bytes[bytes.len() - 1] == b'.'
            || self.local.contains("..")
            || !bytes.iter().all(|b| is_atext(*b) || *b == b'.')
    }

    /// The domain lower-cased, for comparisons (domains are case-insensitive).
    pub fn domain_lower(&self) -> String {
        self.domain.to_ascii_lowercase()
    }

    /// Whether either part holds non-ASCII text (which needs SMTPUTF8).
    pub fn is_utf8(&self) -> bool {
        !self.local.is_ascii() || !self.domain.is_ascii()
    }

    /// The mailbox without a `+detail` in its local part (`alice+news` → `alice`): the
    /// account that plus-addressed mail belongs to.
    pub fn without_detail(&self) -> Mailbox {
        match self.local.split_once('+') {
            Some((base, _)) if !base.is_empty() => Mailbox {
                local: base.to_string(),
                domain: self.domain.clone(),
            },
            _ => self.clone(),
        }
    }

    /// The first routing hazard in the local part, if any.
    pub fn routing_hazard(&self) -> Option<RoutingHazard> {
        if self.local.contains('@') {
            Some(RoutingHazard::QuotedAt)
        } else if self.local.contains('%') {
            Some(RoutingHazard::PercentHack)
        } else if self.local.contains('!') {
            Some(RoutingHazard::BangPath)
        } else {
            None
        }
    }
}

impl fmt::Display for Mailbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.needs_quotes() {
            f.write_str("\"")?;
            for c in self.local.chars() {
                if c == '"' || c == '\\' {
                    f.write_str("\\")?;
                }
                write!(f, "{c}")?;
            }
            write!(f, "\"@{}", self.domain)
        } else {
            write!(f, "{}@{}", self.local, self.domain)
        }
    }
}

/// Splits `<path> rest` into the parsed path and the text after `>` (the parameters),
/// strictly (RFC 5321).
///
/// `text` starts at the `<` (leading spaces are tolerated, as most servers do).
pub fn parse_path(text: &str) -> Result<(Path, &str), AddressError> {
    parse_path_with(text, Syntax::Strict)
}

/// [`parse_path`] under `syntax`: leniently, an address without brackets runs to the
/// first space, and one trailing dot on the domain is dropped.
pub fn parse_path_with(text: &str, syntax: Syntax) -> Result<(Path, &str), AddressError> {
    let text = text.trim_start_matches(' ');
    let Some(inner_start) = text.strip_prefix('<') else {
        if syntax == Syntax::Strict || text.is_empty() || text.starts_with('"') {
            return Err(AddressError::MissingBrackets);
        }
        let end = text.find(' ').unwrap_or(text.len());
        let mailbox = parse_mailbox_with(&text[..end], syntax)?;
        if text[..end].len() > 254 {
            return Err(AddressError::TooLong);
        }
        let path = Path {
            mailbox: Some(mailbox),
            source_route: false,
        };
        return Ok((path, &text[end..]));
    };
    // Find the closing bracket outside any quoted string.
    let bytes = inner_start.as_bytes();
    let mut i = 0;
    let mut in_quotes = false;
    let end = loop {
        match bytes.get(i) {
            None => {
                return Err(if in_quotes {
                    AddressError::Unterminated
                } else {
                    AddressError::MissingBrackets
                });
            }
            Some(b'\\') if in_quotes => i += 2,
            Some(b'"') => {
                in_quotes = !in_quotes;
                i += 1;
            }
            Some(b'>') if !in_quotes => break i,
            Some(_) => i += 1,
        }
    };
    let inner = &inner_start[..end];
    let rest = &inner_start[end + 1..];
    if inner.len() > 254 {
        return Err(AddressError::TooLong);
    }
    if inner.is_empty() {
        let path = Path {
            mailbox: None,
            source_route: false,
        };
        return Ok((path, rest));
    }
    let (source_route, mailbox_text) = match inner.strip_prefix('@') {
        Some(_) => {
            let colon = inner.find(':').ok_or(AddressError::BadDomain)?;
            for hop in inner[..colon].split(',') {
                let domain = hop.strip_prefix('@').ok_or(AddressError::BadDomain)?;
                check_domain(domain)?;
            }
            (true, &inner[colon + 1..])
        }
        None => (false, inner),
    };
    let mailbox = parse_mailbox_with(mailbox_text, syntax)?;
    Ok((
        Path {
            mailbox: Some(mailbox),
            source_route,
        },
        rest,
    ))
}

/// Parses `local-part@domain` (no brackets), strictly.
pub fn parse_mailbox(text: &str) -> Result<Mailbox, AddressError> {
    parse_mailbox_with(text, Syntax::Strict)
}

/// [`parse_mailbox`] under `syntax` (leniently, `a@example.org.` is `a@example.org`).
pub fn parse_mailbox_with(text: &str, syntax: Syntax) -> Result<Mailbox, AddressError> {
    let (local, domain) = if let Some(quoted) = text.strip_prefix('"') {
        let mut local = String::new();
        let mut chars = quoted.char_indices();
        let close = loop {
            match chars.next() {
                None => return Err(AddressError::Unterminated),
                // RFC 5321 quoted-pairSMTP: a backslash and a printable character; a control
                // character is refused escaped or not.
                Some((_, '\\')) => match chars.next() {
                    Some((_, c)) if !c.is_control() => local.push(c),
                    Some(_) => return Err(AddressError::BadLocalPart),
                    None => return Err(AddressError::Unterminated),
                },
                Some((i, '"')) => break i,
                Some((_, c)) if c.is_control() => return Err(AddressError::BadLocalPart),
                Some((_, c)) => local.push(c),
            }
        };
        let after = &quoted[close + 1..];
        let domain = after.strip_prefix('@').ok_or(AddressError::BadDomain)?;
        (local, domain)
    } else {
        let at = text.rfind('@').ok_or(AddressError::BadDomain)?;
        let local = &text[..at];
        let valid = !local.is_empty()
            && !local.starts_with('.')
            && !local.ends_with('.')
            && !local.contains("..")
            && local.bytes().all(|b| is_atext(b) || b == b'.');
        if !valid {
            return Err(AddressError::BadLocalPart);
        }
        (local.to_string(), &text[at + 1..])
    };
    // RFC 5321 4.5.3.1.1 sets 64 octets, and asks for no limit where possible: the
    // lenient reading takes longer local parts (SRS and VERP addresses exceed 64 in the
    // wild, and Postfix takes them); the path as a whole stays within 254.
    let local_limit = if syntax == Syntax::Strict { 64 } else { 254 };
    if local.len() > local_limit {
        return Err(AddressError::TooLong);
    }
    let domain = match domain.strip_suffix('.') {
        Some(rooted) if syntax == Syntax::Lenient && !rooted.starts_with('[') => rooted,
        _ => domain,
    };
    check_domain(domain)?;
    Ok(Mailbox {
        local,
        domain: domain.to_string(),
    })
}

fn check_domain(domain: &str) -> Result<(), AddressError> {
    if domain.is_empty() || domain.len() > 255 {
        return Err(AddressError::BadDomain);
    }
    if let Some(literal) = domain.strip_prefix('[') {
        let body = literal.strip_suffix(']').ok_or(AddressError::BadDomain)?;
        let ok = !body.is_empty()
            && body
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b":.-".contains(&b));
        return if ok { Ok(()) } else { Err(AddressError::BadDomain) };
    }
    for label in domain.split('.') {
        let ok = !label.is_empty()
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b >= 0x80);
        if !ok {
            return Err(AddressError::BadDomain);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mb(local: &str, domain: &str) -> Mailbox {
        Mailbox {
            local: local.into(),
            domain: domain.into(),
        }
    }

    #[test]
    fn paths() {
        type Case = (
            &'static str,
            Result<(Option<Mailbox>, bool, &'static str), AddressError>,
        );
        let cases: Vec<Case> = vec![
            ("<a@b.c>", Ok((Some(mb("a", "b.c")), false, ""))),
            ("<>", Ok((None, false, ""))),
            (" <a@b> SIZE=10", Ok((Some(mb("a", "b")), false, " SIZE=10"))),
            ("<@x,@y:a@b>", Ok((Some(mb("a", "b")), true, ""))),
            ("<\"a b\"@c>", Ok((Some(mb("a b", "c")), false, ""))),
            ("<\"a>b\"@c>", Ok((Some(mb("a>b", "c")), false, ""))),
            ("<\"a\\\"b\"@c>", Ok((Some(mb("a\"b", "c")), false, ""))),
            (
                "<\"x@other\"@local>",
                Ok((Some(mb("x@other", "local")), false, "")),
            ),
            ("<u%other@local>", Ok((Some(mb("u%other", "local")), false, ""))),
            ("<a@[192.0.2.1]>", Ok((Some(mb("a", "[192.0.2.1]")), false, ""))),
            (
                "<δοκιμή@παράδειγμα.δοκιμή>",
                Ok((Some(mb("δοκιμή", "παράδειγμα.δοκιμή")), false, "")),
            ),
            ("a@b", Err(AddressError::MissingBrackets)),
            ("<a@b", Err(AddressError::MissingBrackets)),
            ("<a>", Err(AddressError::BadDomain)),
            ("<@b>", Err(AddressError::BadDomain)),
            ("<a@>", Err(AddressError::BadDomain)),
            ("<.a@b>", Err(AddressError::BadLocalPart)),
            ("<a..b@c>", Err(AddressError::BadLocalPart)),
            ("<a b@c>", Err(AddressError::BadLocalPart)),
            ("<a@b..c>", Err(AddressError::BadDomain)),
            ("<a@-b.c>", Err(AddressError::BadDomain)),
            ("<\"a@b>", Err(AddressError::Unterminated)),
            // Found by the fuzzer: an escaped control character printed raw would not
            // parse back.
            ("<\"a\\\0b\"@c>", Err(AddressError::BadLocalPart)),
            ("<\"a\\\rb\"@c>", Err(AddressError::BadLocalPart)),
        ];
        for (input, expected) in cases {
            let got = parse_path(input).map(|(p, rest)| (p.mailbox, p.source_route, rest));
            assert_eq!(got, expected, "input {input:?}");
        }
    }

    #[test]
    fn lenient_paths() {
        type Case = (
            &'static str,
            Result<(Option<Mailbox>, &'static str), AddressError>,
        );
        let cases: Vec<Case> = vec![
            ("a@b.example", Ok((Some(mb("a", "b.example")), ""))),
            (
                " a@b.example SIZE=10",
                Ok((Some(mb("a", "b.example")), " SIZE=10")),
            ),
            ("<a@b.example.>", Ok((Some(mb("a", "b.example")), ""))),
            ("a@b.example.", Ok((Some(mb("a", "b.example")), ""))),
            ("<>", Ok((None, ""))),
            ("", Err(AddressError::MissingBrackets)),
            ("a@b..", Err(AddressError::BadDomain)),
            ("a@[192.0.2.1].", Err(AddressError::BadDomain)),
            ("a b@c", Err(AddressError::BadDomain)),
            ("\"a b\"@c", Err(AddressError::MissingBrackets)),
        ];
        for (input, expected) in cases {
            let got = parse_path_with(input, Syntax::Lenient).map(|(p, rest)| (p.mailbox, rest));
            assert_eq!(got, expected, "input {input:?}");
        }
        // Strictly, both are refused as before.
        assert_eq!(
            parse_path_with("a@b.example", Syntax::Strict).unwrap_err(),
            AddressError::MissingBrackets
        );
        assert_eq!(
            parse_path_with("<a@b.example.>", Syntax::Strict).unwrap_err(),
            AddressError::BadDomain
        );
    }

    #[test]
    fn detail_is_removed() {
        assert_eq!(mb("alice+news", "x").without_detail(), mb("alice", "x"));
        assert_eq!(mb("alice+a+b", "x").without_detail(), mb("alice", "x"));
        assert_eq!(mb("alice", "x").without_detail(), mb("alice", "x"));
        // A local part that starts with '+' has no account before it: kept whole.
        assert_eq!(mb("+x", "x").without_detail(), mb("+x", "x"));
    }

    #[test]
    fn hazards_and_display() {
        assert_eq!(mb("u%o", "l").routing_hazard(), Some(RoutingHazard::PercentHack));
        assert_eq!(mb("o!u", "l").routing_hazard(), Some(RoutingHazard::BangPath));
        assert_eq!(mb("u@o", "l").routing_hazard(), Some(RoutingHazard::QuotedAt));
        assert_eq!(mb("user", "l").routing_hazard(), None);
        assert_eq!(mb("a b", "c").to_string(), "\"a b\"@c");
        assert_eq!(mb("a.b", "c").to_string(), "a.b@c");
    }
}
