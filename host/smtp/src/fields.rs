//! The header fields of a message's header section, each with where it lies: the one
//! reader of header fields for the hosts' own uses (the plugins' `message.headers`, the
//! removal of forged `Authentication-Results`).

use std::ops::Range;

/// One header field as it lies in the header section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field<'a> {
    /// The name, without surrounding white space.
    pub name: &'a [u8],
    /// The value after the colon, folding lines included, without the final CRLF.
    pub raw_value: &'a [u8],
    /// The octets of the whole field, its final line ending included.
    pub range: Range<usize>,
}

impl Field<'_> {
    /// Whether the field's name is `name` (ASCII case-insensitively).
    pub fn is(&self, name: &str) -> bool {
        self.name.eq_ignore_ascii_case(name.as_bytes())
    }

    /// The value unfolded (each line ending and the white space around it made one space)
    /// and trimmed; octets that are not UTF-8 are replaced.
    pub fn value(&self) -> String {
        let text = String::from_utf8_lossy(self.raw_value);
        text.split(['\r', '\n'])
            .map(str::trim)
            .filter(|part| !part.is_empty())
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// The fields of `section` (a header section, or a whole message: reading stops at the
/// empty line). A line that is neither a field nor a continuation ends the section, as a
/// parser of the message would see it.
pub fn fields(section: &[u8]) -> Vec<Field<'_>> {
    // (name, where the value starts, where the field ends)
    let mut found: Vec<(&[u8], usize, usize)> = Vec::new();
    let mut at = 0;
    while at < section.len() {
        let end = section[at..]
            .iter()
            .position(|b| *b == b'\n')
            .map_or(section.len(), |p| at + p + 1);
        let text = trim_line_end(&section[at..end]);
        if text.is_empty() {
            break;
        }
        if matches!(text[0], b' ' | b'\t') {
            match found.last_mut() {
                Some(field) => field.2 = end,
                None => break,
            }
        } else {
            let Some(colon) = text.iter().position(|b| *b == b':') else {
                break;
            };
            found.push((text[..colon].trim_ascii(), at + colon + 1, end));
        }
        at = end;
    }
    let mut start = 0;
    found
        .into_iter()
        .map(|(name, value_start, end)| {
            let field = Field {
                name,
                raw_value: trim_line_end(&section[value_start..end]),
                range: start..end,
            };
            start = end;
            field
        })
        .collect()
}

fn trim_line_end(value: &[u8]) -> &[u8] {
    let value = value.strip_suffix(b"\n").unwrap_or(value);
    value.strip_suffix(b"\r").unwrap_or(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_with_folding_and_ranges() {
        let message =
            b"From: a@b.example\r\nSubject: one\r\n two\r\n\tthree\r\nX-Empty:\r\n\r\nFrom: body\r\n";
        let found = fields(message);
        let names: Vec<&[u8]> = found.iter().map(|f| f.name).collect();
        assert_eq!(names, [&b"From"[..], b"Subject", b"X-Empty"]);
        assert_eq!(found[1].value(), "one two three");
        assert_eq!(
            &message[found[1].range.clone()],
            b"Subject: one\r\n two\r\n\tthree\r\n"
        );
        assert_eq!(found[1].raw_value, b" one\r\n two\r\n\tthree");
        assert_eq!(found[2].value(), "");
        assert!(found[0].is("from") && !found[0].is("fro"));
    }

    #[test]
    fn a_line_that_is_no_field_ends_the_section() {
        assert_eq!(fields(b"Subject: x\r\nnot a field\r\nTo: y\r\n").len(), 1);
        assert!(fields(b" continuation first\r\nTo: y\r\n").is_empty());
        // Without a final line ending, and with bare LF.
        let found = fields(b"A: 1\nB: 2");
        assert_eq!(found.len(), 2);
        assert_eq!(found[1].range, 5..9);
        assert_eq!(found[1].value(), "2");
    }
}
