//! The one type every SMTP reply is made of.

use std::borrow::Cow;
use std::fmt;

/// An RFC 3463 enhanced status code, `class.subject.detail` (for example `5.7.1`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Enhanced(pub u8, pub u16, pub u16);

impl fmt::Display for Enhanced {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

/// An SMTP reply: a three-digit code, an optional enhanced status code and human text.
///
/// Replies are values so that the whole protocol surface of the server can be read in one
/// place ([`crate::replies`]) and compared in tests. Multi-line replies keep one line of text
/// per `\n` in `text`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// The RFC 5321 reply code, 200..=599.
    pub code: u16,
    /// The RFC 3463 enhanced status code, when the reply carries one.
    pub enhanced: Option<Enhanced>,
    /// Human-readable text; `\n` separates the lines of a multi-line reply.
    pub text: Cow<'static, str>,
}

impl Reply {
    /// A reply whose text is known at compile time.
    pub const fn fixed(code: u16, enhanced: Option<Enhanced>, text: &'static str) -> Self {
        Reply {
            code,
            enhanced,
            text: Cow::Borrowed(text),
        }
    }

    /// A reply with text built at run time.
    pub fn new(code: u16, enhanced: Option<Enhanced>, text: impl Into<Cow<'static, str>>) -> Self {
        Reply {
            code,
            enhanced,
            text: text.into(),
        }
    }

    /// 2xx: the command succeeded.
    pub fn is_positive(&self) -> bool {
        (200..300).contains(&self.code)
    }

    /// 4xx: try again later.
    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }

    /// 5xx: do not try again.
    pub fn is_permanent(&self) -> bool {
        (500..600).contains(&self.code)
    }

    /// Appends the wire form (CRLF line endings, `-` continuation) to `out`.
    ///
    /// Text is sanitised: a CR or LF inside a line can never reach the wire, so no reply
    /// built from peer or plugin data can inject a line of its own.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let lines: Vec<&str> = self.text.split('\n').collect();
        for (i, line) in lines.iter().enumerate() {
            let sep = if i + 1 == lines.len() { ' ' } else { '-' };
            out.extend_from_slice(format!("{}{}", self.code, sep).as_bytes());
            if let Some(enhanced) = self.enhanced {
                out.extend_from_slice(format!("{enhanced} ").as_bytes());
            }
            out.extend(line.bytes().filter(|b| *b != b'\r' && *b != b'\n'));
            out.extend_from_slice(b"\r\n");
        }
    }

    /// The wire form as a byte vector.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_to(&mut out);
        out
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.to_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_forms() {
        let cases: &[(Reply, &str)] = &[
            (
                Reply::fixed(250, Some(Enhanced(2, 0, 0)), "OK"),
                "250 2.0.0 OK\r\n",
            ),
            (Reply::fixed(220, None, "mx ESMTP"), "220 mx ESMTP\r\n"),
            (Reply::fixed(250, None, "a\nb\nc"), "250-a\r\n250-b\r\n250 c\r\n"),
            (
                Reply::new(550, Some(Enhanced(5, 1, 1)), "x\r y"),
                "550 5.1.1 x y\r\n",
            ),
        ];
        for (reply, wire) in cases {
            assert_eq!(String::from_utf8(reply.to_bytes()).unwrap(), *wire);
        }
    }
}
