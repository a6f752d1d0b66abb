//! The SMTP command grammar: one line in, one [`Command`] out.
//!
//! Pure over a byte slice without its CRLF; the session owns line framing.

use crate::address::{AddressError, Mailbox, Path, Syntax, parse_path_with};
use crate::envelope::{BodyType, MailParams, Notify, RcptParams, Ret};

/// A SASL mechanism the server implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mechanism {
    /// RFC 4616 PLAIN.
    Plain,
    /// The de-facto LOGIN mechanism.
    Login,
}

impl Mechanism {
    /// The IANA name.
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::Login => "LOGIN",
        }
    }
}

/// One parsed SMTP command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// EHLO with the client's claimed name.
    Ehlo(String),
    /// HELO with the client's claimed name.
    Helo(String),
    /// MAIL FROM.
    Mail {
        /// The reverse-path.
        path: Path,
        /// Its ESMTP parameters.
        params: MailParams,
    },
    /// RCPT TO.
    Rcpt {
        /// The forward-path.
        path: Path,
        /// Its ESMTP parameters.
        params: RcptParams,
    },
    /// DATA.
    Data,
    /// BDAT (RFC 3030): `size` octets of content follow the command line.
    Bdat {
        /// Octets in this chunk.
        size: u64,
        /// This is the last chunk.
        last: bool,
    },
    /// RSET.
    Rset,
    /// NOOP (its argument is ignored).
    Noop,
    /// QUIT.
    Quit,
    /// STARTTLS.
    StartTls,
    /// AUTH with an optional initial response (still base64).
    Auth {
        /// The mechanism asked for.
        mechanism: Mechanism,
        /// The initial response, base64 as sent (`=` means empty).
        initial: Option<String>,
    },
    /// VRFY (never answered with data).
    Vrfy,
    /// EXPN (not implemented).
    Expn,
    /// HELP.
    Help,
}

/// Why a command line was not understood.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    /// Not an SMTP verb at all.
    #[error("command unrecognized")]
    Unrecognized,
    /// An HTTP request line or other proxy abuse: close at once.
    #[error("HTTP request sent to an SMTP server")]
    Http,
    /// The verb is known but the arguments do not follow its grammar; holds the grammar.
    #[error("syntax: {0}")]
    Syntax(&'static str),
    /// The address in MAIL or RCPT is malformed.
    #[error("{0}")]
    Address(#[from] AddressError),
    /// An ESMTP parameter this server does not know.
    #[error("unsupported parameter {0}")]
    UnknownParameter(String),
    /// A known ESMTP parameter with a bad value; holds its grammar.
    #[error("bad parameter value, expected {0}")]
    BadParameter(&'static str),
    /// AUTH with a mechanism this server does not offer.
    #[error("unsupported authentication mechanism")]
    UnknownMechanism,
    /// The line is not UTF-8 or holds a NUL or other control character.
    #[error("invalid characters in command")]
    BadCharacters,
}

fn split_verb(line: &str) -> (&str, &str) {
    match line.find(' ') {
        Some(i) => (&line[..i], &line[i + 1..]),
        None => (line, ""),
    }
}

fn strip_prefix_ci<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    let head = text.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix).then(|| &text[prefix.len()..])
}

/// Parses one command line (without the CRLF) under `syntax` ([`Syntax::Lenient`] also
/// takes paths without brackets, a trailing dot on a domain and words after the EHLO name).
pub fn parse(line: &[u8], syntax: Syntax) -> Result<Command, ParseError> {
    let line = std::str::from_utf8(line).map_err(|_| ParseError::BadCharacters)?;
    if line.chars().any(|c| c.is_control() && c != '\t') {
        return Err(ParseError::BadCharacters);
    }
    let (verb, args) = split_verb(line);
    let no_args = |command: Command, grammar: &'static str| {
        if args.trim().is_empty() {
            Ok(command)
        } else {
            Err(ParseError::Syntax(grammar))
        }
    };
    match verb.to_ascii_uppercase().as_str() {
        "EHLO" => hello(args, syntax, "EHLO hostname").map(Command::Ehlo),
        "HELO" => hello(args, syntax, "HELO hostname").map(Command::Helo),
        "MAIL" => mail(args, syntax),
        "RCPT" => rcpt(args, syntax),
        "DATA" => no_args(Command::Data, "DATA"),
        "BDAT" => bdat(args),
        "RSET" => no_args(Command::Rset, "RSET"),
        "NOOP" => Ok(Command::Noop),
        "QUIT" => no_args(Command::Quit, "QUIT"),
        "STARTTLS" => no_args(Command::StartTls, "STARTTLS"),
        "AUTH" => auth(args),
        "VRFY" => Ok(Command::Vrfy),
        "EXPN" => Ok(Command::Expn),
        "HELP" => Ok(Command::Help),
        "GET" | "POST" | "PUT" | "HEAD" | "CONNECT" | "OPTIONS" | "USER" => Err(ParseError::Http),
        _ => Err(ParseError::Unrecognized),
    }
}

/// The name of EHLO or HELO.
fn hello(args: &str, syntax: Syntax, grammar: &'static str) -> Result<String, ParseError> {
    let mut name = args.trim();
    if syntax == Syntax::Lenient {
        // `EHLO name extra words`: the name is the first word (Postfix does the same).
        name = name.split(' ').next().unwrap_or_default();
    }
    // A bidirectional control (U+202A..U+202E, U+2066..U+2069, U+200E, U+200F) or a tab in
    // the name would end up in our Received: header, reordering or hiding what an operator
    // reads there.
    let disguised = name.chars().any(
        |c| matches!(c, '\t' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'),
    );
    if name.is_empty() || name.contains(' ') || disguised {
        return Err(ParseError::Syntax(grammar));
    }
    Ok(name.to_string())
}

fn mail(args: &str, syntax: Syntax) -> Result<Command, ParseError> {
    let rest = strip_prefix_ci(args, "FROM:").ok_or(ParseError::Syntax("MAIL FROM:<address>"))?;
    let (path, params) = parse_path_with(rest, syntax)?;
    let params = mail_params(params)?;
    Ok(Command::Mail { path, params })
}

fn rcpt(args: &str, syntax: Syntax) -> Result<Command, ParseError> {
    let rest = strip_prefix_ci(args, "TO:").ok_or(ParseError::Syntax("RCPT TO:<address>"))?;
    let (path, params) = match parse_path_with(rest, syntax) {
        Ok(parsed) => parsed,
        // RFC 5321 4.5.1: <Postmaster> without a domain must be accepted.
        Err(e) => match strip_prefix_ci(rest.trim_start(), "<postmaster>") {
            Some(tail) => (
                Path {
                    mailbox: Some(Mailbox {
                        local: "postmaster".into(),
                        domain: String::new(),
                    }),
                    source_route: false,
                },
                tail,
            ),
            None => return Err(e.into()),
        },
    };
    let params = rcpt_params(params)?;
    Ok(Command::Rcpt { path, params })
}

fn bdat(args: &str) -> Result<Command, ParseError> {
    let mut words = args.split(' ').filter(|w| !w.is_empty());
    let grammar = "BDAT chunk-size [LAST]";
    let size = words.next().ok_or(ParseError::Syntax(grammar))?;
    if size.is_empty() || size.len() > 18 || !size.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ParseError::Syntax(grammar));
    }
    let size = size.parse().map_err(|_| ParseError::Syntax(grammar))?;
    let last = match words.next() {
        None => false,
        Some(w) if w.eq_ignore_ascii_case("LAST") => true,
        Some(_) => return Err(ParseError::Syntax(grammar)),
    };
    if words.next().is_some() {
        return Err(ParseError::Syntax(grammar));
    }
    Ok(Command::Bdat { size, last })
}

fn auth(args: &str) -> Result<Command, ParseError> {
    let mut words = args.split(' ').filter(|w| !w.is_empty());
    let mechanism = match words.next() {
        Some(m) if m.eq_ignore_ascii_case("PLAIN") => Mechanism::Plain,
        Some(m) if m.eq_ignore_ascii_case("LOGIN") => Mechanism::Login,
        Some(_) => return Err(ParseError::UnknownMechanism),
        None => return Err(ParseError::Syntax("AUTH mechanism [initial-response]")),
    };
    let initial = words.next().map(str::to_string);
    if words.next().is_some() {
        return Err(ParseError::Syntax("AUTH mechanism [initial-response]"));
    }
    Ok(Command::Auth { mechanism, initial })
}

/// Splits ` KEY=VALUE KEY2` into (keyword, value) pairs.
fn params(text: &str) -> Result<Vec<(String, Option<&str>)>, ParseError> {
    if !text.is_empty() && !text.starts_with(' ') {
        return Err(ParseError::Syntax("<address> [SP parameter=value ...]"));
    }
    let mut out: Vec<(String, Option<&str>)> = Vec::new();
    for word in text.split(' ').filter(|w| !w.is_empty()) {
        let (key, value) = match word.split_once('=') {
            Some((k, v)) => (k.to_ascii_uppercase(), Some(v)),
            None => (word.to_ascii_uppercase(), None),
        };
        if out.iter().any(|(k, _)| *k == key) {
            return Err(ParseError::BadParameter("each parameter at most once"));
        }
        out.push((key, value));
    }
    Ok(out)
}

fn is_xtext(value: &str) -> bool {
    let bytes = value.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => {
                let hex = bytes.get(i + 1..i + 3);
                if !hex.is_some_and(|h| h.iter().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_lowercase())) {
                    return false;
                }
                i += 3;
            }
            b'!'..=b'~' if bytes[i] != b'=' => i += 1,
            _ => return false,
        }
    }
    !bytes.is_empty()
}

fn mail_params(text: &str) -> Result<MailParams, ParseError> {
    let mut out = MailParams::default();
    for (key, value) in params(text)? {
        match (key.as_str(), value) {
            ("SIZE", Some(v)) => {
                let ok = !v.is_empty() && v.len() <= 20 && v.bytes().all(|b| b.is_ascii_digit());
                out.size = Some(
                    v.parse()
                        .ok()
                        .filter(|_| ok)
                        .ok_or(ParseError::BadParameter("SIZE=digits"))?,
                );
            }
            ("BODY", Some(v)) if v.eq_ignore_ascii_case("7BIT") => out.body = BodyType::SevenBit,
            ("BODY", Some(v)) if v.eq_ignore_ascii_case("8BITMIME") => out.body = BodyType::EightBitMime,
            ("BODY", _) => return Err(ParseError::BadParameter("BODY=7BIT or BODY=8BITMIME")),
            ("SMTPUTF8", None) => out.smtputf8 = true,
            ("RET", Some(v)) if v.eq_ignore_ascii_case("FULL") => out.ret = Some(Ret::Full),
            ("RET", Some(v)) if v.eq_ignore_ascii_case("HDRS") => out.ret = Some(Ret::Hdrs),
            ("RET", _) => return Err(ParseError::BadParameter("RET=FULL or RET=HDRS")),
            ("ENVID", Some(v)) if v.len() <= 100 && is_xtext(v) => out.envid = Some(v.to_string()),
            ("ENVID", _) => return Err(ParseError::BadParameter("ENVID=xtext of at most 100 octets")),
            // RFC 4954 AUTH= is informational for a relay; we record nothing from it.
            ("AUTH", Some(_)) => {}
            _ => return Err(ParseError::UnknownParameter(key)),
        }
    }
    Ok(out)
}

fn rcpt_params(text: &str) -> Result<RcptParams, ParseError> {
    let mut out = RcptParams::default();
    for (key, value) in params(text)? {
        match (key.as_str(), value) {
            ("NOTIFY", Some(v)) => {
                let mut notify = Notify::default();
                for item in v.split(',') {
                    match item.to_ascii_uppercase().as_str() {
                        "NEVER" => notify.never = true,
                        "SUCCESS" => notify.success = true,
                        "FAILURE" => notify.failure = true,
                        "DELAY" => notify.delay = true,
                        _ => {
                            return Err(ParseError::BadParameter(
                                "NOTIFY=NEVER or NOTIFY=SUCCESS,FAILURE,DELAY",
                            ));
                        }
                    }
                }
                if notify.never && (notify.success || notify.failure || notify.delay) {
                    return Err(ParseError::BadParameter("NOTIFY=NEVER alone"));
                }
                out.notify = Some(notify);
            }
            ("ORCPT", Some(v)) => {
                let valid = v.split_once(';').is_some_and(|(kind, addr)| {
                    !kind.is_empty()
                        && kind.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                        && is_xtext(addr)
                });
                if !valid || v.len() > 500 {
                    return Err(ParseError::BadParameter("ORCPT=addr-type;xtext"));
                }
                out.orcpt = Some(v.to_string());
            }
            _ => return Err(ParseError::UnknownParameter(key)),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mb(local: &str, domain: &str) -> Option<Mailbox> {
        Some(Mailbox {
            local: local.into(),
            domain: domain.into(),
        })
    }

    #[test]
    fn commands() {
        let plain = |m| Path {
            mailbox: m,
            source_route: false,
        };
        let cases: Vec<(&str, Result<Command, ParseError>)> = vec![
            ("EHLO client.example", Ok(Command::Ehlo("client.example".into()))),
            ("ehlo [192.0.2.1]", Ok(Command::Ehlo("[192.0.2.1]".into()))),
            ("EHLO", Err(ParseError::Syntax("EHLO hostname"))),
            ("HELO a b", Err(ParseError::Syntax("HELO hostname"))),
            (
                "EHLO evil\u{202e}elpmaxe.com",
                Err(ParseError::Syntax("EHLO hostname")),
            ),
            ("EHLO tab\there", Err(ParseError::Syntax("EHLO hostname"))),
            (
                "MAIL FROM:<a@b>",
                Ok(Command::Mail {
                    path: plain(mb("a", "b")),
                    params: MailParams::default(),
                }),
            ),
            (
                "mail from: <> SIZE=100 BODY=8BITMIME RET=HDRS ENVID=x+2By",
                Ok(Command::Mail {
                    path: plain(None),
                    params: MailParams {
                        size: Some(100),
                        body: BodyType::EightBitMime,
                        smtputf8: false,
                        ret: Some(Ret::Hdrs),
                        envid: Some("x+2By".into()),
                    },
                }),
            ),
            (
                "MAIL FROM:<a@b> FOO=1",
                Err(ParseError::UnknownParameter("FOO".into())),
            ),
            (
                "MAIL FROM:<a@b> SIZE=x",
                Err(ParseError::BadParameter("SIZE=digits")),
            ),
            (
                "MAIL FROM:<a@b> SIZE=1 SIZE=2",
                Err(ParseError::BadParameter("each parameter at most once")),
            ),
            (
                "MAIL FROM:<a@b>SIZE=1",
                Err(ParseError::Syntax("<address> [SP parameter=value ...]")),
            ),
            ("MAIL TO:<a@b>", Err(ParseError::Syntax("MAIL FROM:<address>"))),
            (
                "MAIL FROM:a@b",
                Err(ParseError::Address(AddressError::MissingBrackets)),
            ),
            (
                "RCPT TO:<x@y> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;x+40y",
                Ok(Command::Rcpt {
                    path: plain(mb("x", "y")),
                    params: RcptParams {
                        notify: Some(Notify {
                            never: false,
                            success: true,
                            failure: true,
                            delay: false,
                        }),
                        orcpt: Some("rfc822;x+40y".into()),
                    },
                }),
            ),
            (
                "RCPT TO:<Postmaster>",
                Ok(Command::Rcpt {
                    path: plain(mb("postmaster", "")),
                    params: RcptParams::default(),
                }),
            ),
            (
                "RCPT TO:<x@y> NOTIFY=NEVER,DELAY",
                Err(ParseError::BadParameter("NOTIFY=NEVER alone")),
            ),
            (
                "RCPT TO:<x@y> ORCPT=bad",
                Err(ParseError::BadParameter("ORCPT=addr-type;xtext")),
            ),
            ("DATA", Ok(Command::Data)),
            ("DATA x", Err(ParseError::Syntax("DATA"))),
            (
                "BDAT 100 LAST",
                Ok(Command::Bdat {
                    size: 100,
                    last: true,
                }),
            ),
            ("BDAT 0", Ok(Command::Bdat { size: 0, last: false })),
            ("BDAT -1", Err(ParseError::Syntax("BDAT chunk-size [LAST]"))),
            ("BDAT 1 FIRST", Err(ParseError::Syntax("BDAT chunk-size [LAST]"))),
            (
                "AUTH PLAIN AGFsaWNlAHB3",
                Ok(Command::Auth {
                    mechanism: Mechanism::Plain,
                    initial: Some("AGFsaWNlAHB3".into()),
                }),
            ),
            (
                "AUTH login",
                Ok(Command::Auth {
                    mechanism: Mechanism::Login,
                    initial: None,
                }),
            ),
            ("AUTH CRAM-MD5", Err(ParseError::UnknownMechanism)),
            ("STARTTLS", Ok(Command::StartTls)),
            ("NOOP whatever", Ok(Command::Noop)),
            ("QUIT", Ok(Command::Quit)),
            ("RSET", Ok(Command::Rset)),
            ("VRFY root", Ok(Command::Vrfy)),
            ("GET / HTTP/1.1", Err(ParseError::Http)),
            ("XYZZY", Err(ParseError::Unrecognized)),
            ("MAIL FROM:<a@b>\0", Err(ParseError::BadCharacters)),
        ];
        for (input, expected) in cases {
            assert_eq!(
                parse(input.as_bytes(), Syntax::Strict),
                expected,
                "input {input:?}"
            );
        }
        assert_eq!(
            parse(b"NOOP \xff", Syntax::Strict),
            Err(ParseError::BadCharacters)
        );
    }

    #[test]
    fn lenient_commands() {
        let plain = |m| Path {
            mailbox: m,
            source_route: false,
        };
        let cases: Vec<(&str, Result<Command, ParseError>)> = vec![
            (
                "EHLO client.example extra words",
                Ok(Command::Ehlo("client.example".into())),
            ),
            ("HELO a b", Ok(Command::Helo("a".into()))),
            ("EHLO", Err(ParseError::Syntax("EHLO hostname"))),
            (
                "MAIL FROM:a@b.example SIZE=10",
                Ok(Command::Mail {
                    path: plain(mb("a", "b.example")),
                    params: MailParams {
                        size: Some(10),
                        ..MailParams::default()
                    },
                }),
            ),
            (
                "RCPT TO:bob@example.org.",
                Ok(Command::Rcpt {
                    path: plain(mb("bob", "example.org")),
                    params: RcptParams::default(),
                }),
            ),
            (
                "RCPT TO: <bob@example.org.> NOTIFY=NEVER",
                Ok(Command::Rcpt {
                    path: plain(mb("bob", "example.org")),
                    params: RcptParams {
                        notify: Some(Notify {
                            never: true,
                            ..Notify::default()
                        }),
                        orcpt: None,
                    },
                }),
            ),
            (
                "MAIL FROM:",
                Err(ParseError::Address(AddressError::MissingBrackets)),
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(
                parse(input.as_bytes(), Syntax::Lenient),
                expected,
                "input {input:?}"
            );
        }
    }
}
