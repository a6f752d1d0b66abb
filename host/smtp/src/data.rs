//! Message content receivers: DATA (dot-terminated, dot-stuffed) and BDAT (counted chunks).
//!
//! Both enforce strict CRLF line endings. A bare CR or LF in DATA is fatal, because it is
//! exactly where SMTP smuggling lives (CVE-2023-51764 and its family): `<LF>.<LF>`,
//! `<CR>.<CR>`, `<LF>.<CR><LF>` and friends must never end a message here, and must never
//! be passed on to a server that might read them as an end. In BDAT the framing is a byte
//! count, so a bare line ending only fails the transaction once the chunk is read.

/// Why content was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ContentError {
    /// A LF not preceded by CR.
    #[error("bare LF in message content")]
    BareLf,
    /// A CR not followed by LF.
    #[error("bare CR in message content")]
    BareCr,
    /// The message exceeds the configured size.
    #[error("message too big")]
    TooBig,
    /// A line exceeds the configured text line length.
    #[error("line too long")]
    LineTooLong,
}

/// What one call to `ingest` achieved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    /// Every byte given was consumed; more content is expected.
    NeedMore,
    /// The content ended; the bytes consumed include the terminator (DATA) or the chunk.
    Complete,
    /// The content is broken beyond recovery of the framing; the session must close.
    Fatal(ContentError),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Line {
    Start,
    Dot,
    DotCr,
    Middle,
    Cr,
}

/// Receives message content and keeps it, within limits.
#[derive(Debug)]
pub struct ContentReceiver {
    line: Line,
    line_len: usize,
    max_line: usize,
    max_size: usize,
    body: Vec<u8>,
    failure: Option<ContentError>,
}

impl ContentReceiver {
    /// A receiver for one message. `max_line` counts the CRLF (RFC 5321: 1000).
    pub fn new(max_size: usize, max_line: usize) -> Self {
        ContentReceiver {
            line: Line::Start,
            line_len: 0,
            max_line: max_line.saturating_sub(2),
            max_size,
            body: Vec::new(),
            failure: None,
        }
    }

    /// Total octets received so far (after unstuffing), counting those past the size limit.
    pub fn len(&self) -> usize {
        self.body.len()
    }

    /// Whether nothing has been received.
    pub fn is_empty(&self) -> bool {
        self.body.is_empty()
    }

    /// The first non-fatal failure seen (size or line length), if any.
    pub fn failure(&self) -> Option<ContentError> {
        self.failure
    }

    /// The received message. Only meaningful when `failure()` is `None`.
    pub fn into_body(self) -> Vec<u8> {
        self.body
    }

    fn fail(&mut self, e: ContentError) {
        self.failure.get_or_insert(e);
    }

    fn push_content(&mut self, bytes: &[u8]) {
        self.line_len += bytes.len();
        if self.line_len > self.max_line {
            self.fail(ContentError::LineTooLong);
        }
        self.push_raw(bytes);
    }

    fn push_raw(&mut self, bytes: &[u8]) {
        if self.failure.is_some() {
            return;
        }
        if self.body.len() + bytes.len() > self.max_size {
            self.fail(ContentError::TooBig);
            return;
        }
        self.body.extend_from_slice(bytes);
    }

    /// Feeds DATA content. Returns the bytes consumed and the progress; bytes after the
    /// terminating `CRLF.CRLF` are not consumed.
    pub fn ingest_dot(&mut self, input: &[u8]) -> (usize, Progress) {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            match self.line {
                Line::Middle | Line::Start
                    if b != b'\r' && b != b'\n' && !(self.line == Line::Start && b == b'.') =>
                {
                    let run = input[i..]
                        .iter()
                        .position(|c| *c == b'\r' || *c == b'\n')
                        .unwrap_or(input.len() - i);
                    self.push_content(&input[i..i + run]);
                    self.line = Line::Middle;
                    i += run;
                    continue;
                }
                Line::Start if b == b'.' => self.line = Line::Dot,
                Line::Start | Line::Middle if b == b'\r' => self.line = Line::Cr,
                Line::Dot if b == b'\r' => self.line = Line::DotCr,
                Line::Dot => {
                    // A dot-stuffed line: the leading dot is dropped (RFC 5321 4.5.2).
                    if b == b'\n' {
                        return (i + 1, Progress::Fatal(ContentError::BareLf));
                    }
                    self.line = Line::Middle;
                    continue;
                }
                Line::DotCr if b == b'\n' => return (i + 1, Progress::Complete),
                Line::Cr if b == b'\n' => {
                    self.push_raw(b"\r\n");
                    self.line = Line::Start;
                    self.line_len = 0;
                }
                Line::Cr | Line::DotCr => return (i + 1, Progress::Fatal(ContentError::BareCr)),
                _ => return (i + 1, Progress::Fatal(ContentError::BareLf)),
            }
            i += 1;
        }
        (i, Progress::NeedMore)
    }

    /// Feeds BDAT content. The caller passes at most the bytes left in the chunk; all are
    /// consumed. Bare line endings fail the transaction but keep the framing.
    pub fn ingest_counted(&mut self, input: &[u8]) {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            match (self.line, b) {
                (Line::Cr, b'\n') => {
                    self.push_raw(b"\r\n");
                    self.line = Line::Start;
                    self.line_len = 0;
                }
                (Line::Cr, _) => {
                    self.fail(ContentError::BareCr);
                    self.line = Line::Middle;
                    continue;
                }
                (_, b'\r') => self.line = Line::Cr,
                (_, b'\n') => self.fail(ContentError::BareLf),
                _ => {
                    let run = input[i..]
                        .iter()
                        .position(|c| *c == b'\r' || *c == b'\n')
                        .unwrap_or(input.len() - i);
                    self.push_content(&input[i..i + run]);
                    self.line = Line::Middle;
                    i += run;
                    continue;
                }
            }
            i += 1;
        }
    }

    /// Ends BDAT content after the LAST chunk: a dangling CR is a bare CR.
    pub fn finish_counted(&mut self) {
        if self.line == Line::Cr {
            self.fail(ContentError::BareCr);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dot(input: &[u8]) -> (Vec<u8>, usize, Progress, Option<ContentError>) {
        let mut r = ContentReceiver::new(1 << 20, 1000);
        let (n, p) = r.ingest_dot(input);
        let failure = r.failure();
        (r.into_body(), n, p, failure)
    }

    #[test]
    fn dot_termination_and_unstuffing() {
        let cases: &[(&[u8], &[u8], Progress)] = &[
            (b".\r\n", b"", Progress::Complete),
            (b"a\r\n.\r\n", b"a\r\n", Progress::Complete),
            (b"..x\r\n.\r\n", b".x\r\n", Progress::Complete),
            (b"a\r\n..\r\n.\r\n", b"a\r\n.\r\n", Progress::Complete),
            (b"a\r\n.x\r\n.\r\n", b"a\r\nx\r\n", Progress::Complete),
            (b"a\r\nb", b"a\r\nb", Progress::NeedMore),
        ];
        for (input, body, progress) in cases {
            let (got, n, p, _) = dot(input);
            assert_eq!(
                (got.as_slice(), p),
                (*body, *progress),
                "input {:?}",
                String::from_utf8_lossy(input)
            );
            if p == Progress::Complete {
                assert_eq!(n, input.len());
            }
        }
    }

    #[test]
    fn smuggling_variants_never_end_data() {
        // Every one of these is a known smuggling end-of-data; each must be fatal, never Complete.
        let variants: &[(&[u8], ContentError)] = &[
            (b"a\n.\n", ContentError::BareLf),
            (b"a\r\n.\n", ContentError::BareLf),
            (b"a\n.\r\n", ContentError::BareLf),
            (b"a\r.\r", ContentError::BareCr),
            (b"a\r\n.\rX", ContentError::BareCr),
            (b"a\r.\r\n", ContentError::BareCr),
            (b"a\n.\r\n", ContentError::BareLf),
            (b"a\r\n\n.\r\n", ContentError::BareLf),
            (b"x\rMAIL FROM:<a@b>\r\n", ContentError::BareCr),
        ];
        for (input, error) in variants {
            let (_, _, p, _) = dot(input);
            assert_eq!(
                p,
                Progress::Fatal(*error),
                "input {:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn byte_by_byte_equals_whole() {
        let input = b"Subject: x\r\n\r\n..dot\r\nline\r\n.\r\nNEXT";
        let mut r = ContentReceiver::new(1 << 20, 1000);
        let mut consumed = 0;
        for (i, b) in input.iter().enumerate() {
            let (n, p) = r.ingest_dot(std::slice::from_ref(b));
            consumed += n;
            if p == Progress::Complete {
                assert_eq!(i + 1, input.len() - 4);
                break;
            }
        }
        assert_eq!(consumed, input.len() - 4);
        assert_eq!(r.into_body(), b"Subject: x\r\n\r\n.dot\r\nline\r\n");
    }

    #[test]
    fn limits_are_failures_not_fatal() {
        let mut r = ContentReceiver::new(10, 1000);
        assert_eq!(r.ingest_dot(b"0123456789ABC\r\n.\r\n").1, Progress::Complete);
        assert_eq!(r.failure(), Some(ContentError::TooBig));

        let mut r = ContentReceiver::new(1 << 20, 10);
        assert_eq!(r.ingest_dot(b"12345678\r\n.\r\n").1, Progress::Complete);
        assert_eq!(r.failure(), None);
        let mut r = ContentReceiver::new(1 << 20, 10);
        assert_eq!(r.ingest_dot(b"123456789\r\n.\r\n").1, Progress::Complete);
        assert_eq!(r.failure(), Some(ContentError::LineTooLong));
    }

    #[test]
    fn counted_chunks() {
        let mut r = ContentReceiver::new(1 << 20, 1000);
        r.ingest_counted(b"a\r");
        r.ingest_counted(b"\nb\r\n");
        r.finish_counted();
        assert_eq!(r.failure(), None);
        assert_eq!(r.into_body(), b"a\r\nb\r\n");

        for bad in [&b"a\nb"[..], b"a\rb", b"a\r"] {
            let mut r = ContentReceiver::new(1 << 20, 1000);
            r.ingest_counted(bad);
            r.finish_counted();
            assert!(r.failure().is_some(), "{bad:?}");
        }
    }
}
