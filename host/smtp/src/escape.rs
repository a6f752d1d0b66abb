//! Client-supplied text in log lines: escaped, so that nobody can forge a log line (CR,
//! LF) or reach an operator's terminal (ESC) through a user name, a HELO or a plugin's
//! message. JSON logs stay valid JSON either way. (The core logs nothing itself; the
//! host's log lines use this.)

use std::fmt;

/// Displays `text` with every control character (and the backslash) as a visible escape:
/// `\r`, `\n`, `\t`, `\\`, `\x1b`, `\u{7f}`.
pub struct Escaped<'a>(pub &'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in self.0.chars() {
            match c {
                '\r' => f.write_str("\\r")?,
                '\n' => f.write_str("\\n")?,
                '\t' => f.write_str("\\t")?,
                '\\' => f.write_str("\\\\")?,
                c if (c as u32) < 0x20 => write!(f, "\\x{:02x}", c as u32)?,
                c if c.is_control() => write!(f, "\\u{{{:x}}}", c as u32)?,
                c => write!(f, "{c}")?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_become_visible() {
        let cases = [
            ("alice", "alice"),
            ("a\r\nINFO forged", "a\\r\\nINFO forged"),
            ("\x1b[31mred", "\\x1b[31mred"),
            ("back\\slash", "back\\\\slash"),
            ("del\u{7f}", "del\\u{7f}"),
            ("bidi\u{202e}", "bidi\u{202e}"),
            ("héllo", "héllo"),
        ];
        for (raw, shown) in cases {
            assert_eq!(Escaped(raw).to_string(), shown, "{raw:?}");
        }
    }
}
