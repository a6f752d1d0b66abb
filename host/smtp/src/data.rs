//! Message content receivers: DATA (dot-terminated, dot-stuffed) and BDAT (counted chunks).
//!
//! A bare CR is always fatal in DATA, and the end of DATA is only ever `<CRLF>.<CRLF>`:
//! a `.` line ending in a real CRLF whose previous line also ended in a real CRLF. That is
//! exactly where SMTP smuggling lives (CVE-2023-51764 and its family): `<LF>.<LF>`,
//! `<CR>.<CR>`, `<LF>.<CR><LF>` and friends must never end a message here, and must never
//! be passed on to a server that might read them as an end.
//!
//! A bare LF is what many real senders' line ending is. With [`BareLf::Normalize`] (the
//! default) a line ending in a bare LF is stored with CRLF, and a `.` line next to a bare
//! LF is content, so every smuggling variant with a bare LF becomes part of one message;
//! with [`BareLf::Reject`] a bare LF is fatal too. In BDAT the framing is a byte count, so
//! a bare CR (or, under `Reject`, a bare LF) only fails the transaction.

use crate::content::Content;

/// What to do with a line of content that ends in a bare LF.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BareLf {
    /// Store the line with CRLF. The default.
    #[default]
    Normalize,
    /// Refuse: fatal in DATA (`554 5.5.2` and close), fails a BDAT transaction.
    Reject,
}

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
    /// The content could not be stored (a large message's file: the disk is full).
    #[error("cannot store the content")]
    Storage,
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

/// Where the receiver is within a line. `clean` says whether the previous line ended in a
/// real CRLF (or there was none): only then can a `.` line end DATA.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Line {
    Start { clean: bool },
    Dot { clean: bool },
    DotCr { clean: bool },
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
    bare_lf: BareLf,
    content: Content,
    failure: Option<ContentError>,
}

impl ContentReceiver {
    /// A receiver for one message, kept in `content`. `max_line` counts the CRLF (RFC
    /// 5321: at least 1000).
    pub fn new(content: Content, max_size: usize, max_line: usize, bare_lf: BareLf) -> Self {
        ContentReceiver {
            line: Line::Start { clean: true },
            line_len: 0,
            max_line: max_line.saturating_sub(2),
            max_size,
            bare_lf,
            content,
            failure: None,
        }
    }

    /// A receiver keeping everything in memory (tests, fuzzing).
    pub fn in_memory(max_size: usize, max_line: usize, bare_lf: BareLf) -> Self {
        ContentReceiver::new(Content::from_bytes(Vec::new()), max_size, max_line, bare_lf)
    }

    /// Octets received and kept so far (after unstuffing).
    pub fn len(&self) -> u64 {
        self.content.len()
    }

    /// Whether nothing has been received.
    pub fn is_empty(&self) -> bool {
        self.content.is_empty()
    }

    /// The first non-fatal failure seen (size or line length), if any.
    pub fn failure(&self) -> Option<ContentError> {
        self.failure
    }

    /// The received message, or the first failure: size, line length, or the storage of
    /// a large content.
    pub fn finish(mut self) -> Result<Content, ContentError> {
        if let Some(e) = self.failure {
            return Err(e);
        }
        self.content.finish().map_err(|_| ContentError::Storage)?;
        Ok(self.content)
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
        if self.content.len() + bytes.len() as u64 > self.max_size as u64 {
            self.fail(ContentError::TooBig);
            return;
        }
        self.content.push(bytes);
    }

    /// Ends the current line with CRLF; `clean` says whether it really ended so.
    fn end_line(&mut self, clean: bool) {
        self.push_raw(b"\r\n");
        self.line = Line::Start { clean };
        self.line_len = 0;
    }

    /// The common case of DATA, taken in one step: from `start` (inside a line, at a byte
    /// that is neither a line ending nor a line's leading dot), every ordinary line that
    /// follows (ended by CRLF, next one starting with neither a dot nor a line ending,
    /// within the line limit) and the text up to the next line ending, all pushed as one
    /// run. Returns where the run ends; everything else is left to [`Self::ingest_dot`]'s
    /// byte-by-byte states.
    fn ingest_lines(&mut self, input: &[u8], start: usize) -> usize {
        let mut end = start;
        let mut line_len = self.line_len;
        loop {
            let Some(found) = memchr::memchr2(b'\r', b'\n', &input[end..]) else {
                line_len += input.len() - end;
                end = input.len();
                break;
            };
            let at = end + found;
            line_len += found;
            let ordinary = input.get(at..at + 3).is_some_and(|next| {
                next[0] == b'\r' && next[1] == b'\n' && !matches!(next[2], b'.' | b'\r' | b'\n')
            });
            if !ordinary || line_len > self.max_line {
                end = at;
                break;
            }
            line_len = 0;
            end = at + 2;
        }
        // The run's last line is the current one: its length so far is what counts.
        self.line_len = line_len;
        if line_len > self.max_line {
            self.fail(ContentError::LineTooLong);
        }
        self.push_raw(&input[start..end]);
        self.line = Line::Middle;
        end
    }

    /// Feeds DATA content. Returns the bytes consumed and the progress; bytes after the
    /// terminating `CRLF.CRLF` are not consumed.
    pub fn ingest_dot(&mut self, input: &[u8]) -> (usize, Progress) {
        let normalize = self.bare_lf == BareLf::Normalize;
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            match self.line {
                Line::Middle | Line::Start { .. }
                    if b != b'\r'
                        && b != b'\n'
                        && !(matches!(self.line, Line::Start { .. }) && b == b'.') =>
                {
                    i = self.ingest_lines(input, i);
                    continue;
                }
                Line::Start { clean } if b == b'.' => self.line = Line::Dot { clean },
                Line::Start { .. } | Line::Middle if b == b'\r' => self.line = Line::Cr,
                Line::Start { .. } | Line::Middle if b == b'\n' && normalize => self.end_line(false),
                Line::Dot { clean } if b == b'\r' => self.line = Line::DotCr { clean },
                // A lone `.` next to a bare LF is content, never the end.
                Line::Dot { .. } if b == b'\n' && normalize => {
                    self.push_content(b".");
                    self.end_line(false);
                }
                Line::Dot { .. } if b == b'\n' => return (i + 1, Progress::Fatal(ContentError::BareLf)),
                Line::Dot { .. } => {
                    // A dot-stuffed line: the leading dot is dropped (RFC 5321 4.5.2).
                    self.line = Line::Middle;
                    continue;
                }
                Line::DotCr { clean: true } if b == b'\n' => return (i + 1, Progress::Complete),
                Line::DotCr { clean: false } if b == b'\n' => {
                    self.push_content(b".");
                    self.end_line(true);
                }
                Line::Cr if b == b'\n' => self.end_line(true),
                Line::Cr | Line::DotCr { .. } => return (i + 1, Progress::Fatal(ContentError::BareCr)),
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
                (Line::Cr, b'\n') => self.end_line(true),
                (Line::Cr, _) => {
                    self.fail(ContentError::BareCr);
                    self.line = Line::Middle;
                    continue;
                }
                (_, b'\r') => self.line = Line::Cr,
                (_, b'\n') if self.bare_lf == BareLf::Normalize => self.end_line(false),
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

    fn dot_with(input: &[u8], bare_lf: BareLf) -> (Vec<u8>, usize, Progress, Option<ContentError>) {
        let mut r = ContentReceiver::in_memory(1 << 20, 1000, bare_lf);
        let (n, p) = r.ingest_dot(input);
        let failure = r.failure();
        (r.content.to_vec().unwrap(), n, p, failure)
    }

    fn dot(input: &[u8]) -> (Vec<u8>, usize, Progress, Option<ContentError>) {
        dot_with(input, BareLf::Normalize)
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
        // Every one of these is a known smuggling end-of-data; none may be Complete. With a
        // bare CR, or a bare LF under `Reject`, each is fatal.
        let variants: &[(&[u8], ContentError)] = &[
            (b"a\n.\n", ContentError::BareLf),
            (b"a\r\n.\n", ContentError::BareLf),
            (b"a\n.\r\n", ContentError::BareLf),
            (b"a\r.\r", ContentError::BareCr),
            (b"a\r\n.\rX", ContentError::BareCr),
            (b"a\r.\r\n", ContentError::BareCr),
            (b"a\r\n\n.\r\n", ContentError::BareLf),
            (b"x\rMAIL FROM:<a@b>\r\n", ContentError::BareCr),
        ];
        for (input, error) in variants {
            let (_, _, p, _) = dot_with(input, BareLf::Reject);
            assert_eq!(
                p,
                Progress::Fatal(*error),
                "input {:?}",
                String::from_utf8_lossy(input)
            );
            let (_, _, p, _) = dot_with(input, BareLf::Normalize);
            assert_ne!(
                p,
                Progress::Complete,
                "input {:?}",
                String::from_utf8_lossy(input)
            );
            if *error == ContentError::BareCr {
                assert_eq!(p, Progress::Fatal(ContentError::BareCr));
            }
        }
    }

    #[test]
    fn bare_lf_is_normalised_and_never_ends_data() {
        let cases: &[(&[u8], &[u8], Progress)] = &[
            (b"a\nb\n.\r\n", b"a\r\nb\r\n.\r\n", Progress::NeedMore),
            (b"a\nb\r\n.\r\n", b"a\r\nb\r\n", Progress::Complete),
            // The three smuggling ends with a bare LF: content of the same message.
            (b"a\n.\nX\r\n.\r\n", b"a\r\n.\r\nX\r\n", Progress::Complete),
            (b"a\n.\r\nX\r\n.\r\n", b"a\r\n.\r\nX\r\n", Progress::Complete),
            (b"a\r\n.\nX\r\n.\r\n", b"a\r\n.\r\nX\r\n", Progress::Complete),
            // Dot-stuffing still applies after a bare LF.
            (b"a\n..x\n.\r\n", b"a\r\n.x\r\n.\r\n", Progress::NeedMore),
            (b"a\n\n.\r\n.\r\n", b"a\r\n\r\n.\r\n", Progress::Complete),
            (b".\n.\r\n.\r\n", b".\r\n.\r\n", Progress::Complete),
        ];
        for (input, body, progress) in cases {
            let (got, n, p, failure) = dot(input);
            assert_eq!(
                (got.as_slice(), p, failure),
                (*body, *progress, None),
                "input {:?}",
                String::from_utf8_lossy(input)
            );
            if p == Progress::Complete {
                assert_eq!(n, input.len());
            }
        }
        // Byte by byte the same.
        let input = b"a\n.\nX\r\n.\r\n";
        let mut r = ContentReceiver::in_memory(1 << 20, 1000, BareLf::Normalize);
        let mut last = Progress::NeedMore;
        for b in input {
            last = r.ingest_dot(std::slice::from_ref(b)).1;
        }
        assert_eq!(last, Progress::Complete);
        assert_eq!(r.content.to_vec().unwrap(), b"a\r\n.\r\nX\r\n");
    }

    #[test]
    fn byte_by_byte_equals_whole() {
        let input = b"Subject: x\r\n\r\n..dot\r\nline\r\n.\r\nNEXT";
        let mut r = ContentReceiver::in_memory(1 << 20, 1000, BareLf::Normalize);
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
        assert_eq!(r.content.to_vec().unwrap(), b"Subject: x\r\n\r\n.dot\r\nline\r\n");
    }

    /// Feeds `input` in pieces cut at `cuts`; what came out (nothing once failed), how much
    /// was consumed, how it ended and why it failed.
    fn dot_in_pieces(
        input: &[u8],
        cuts: &[usize],
        max_line: usize,
        bare_lf: BareLf,
    ) -> (Vec<u8>, usize, Progress, Option<ContentError>) {
        let mut r = ContentReceiver::in_memory(1 << 20, max_line, bare_lf);
        let (mut consumed, mut progress) = (0, Progress::NeedMore);
        let mut from = 0;
        for &to in cuts.iter().chain([&input.len()]) {
            let piece = &input[from..to.max(from)];
            from = to.max(from);
            let mut at = 0;
            while at < piece.len() && progress == Progress::NeedMore {
                let (n, p) = r.ingest_dot(&piece[at..]);
                assert!(n > 0 || p != Progress::NeedMore, "no progress");
                at += n;
                consumed += n;
                progress = p;
            }
            if progress != Progress::NeedMore {
                break;
            }
        }
        // After a failure the content is thrown away: what was kept of it does not count.
        let failure = r.failure();
        let content = if failure.is_some() {
            Vec::new()
        } else {
            r.content.to_vec().unwrap()
        };
        (content, consumed, progress, failure)
    }

    #[test]
    fn runs_of_lines_cut_anywhere_equal_the_whole() {
        let inputs: [&[u8]; 8] = [
            b"Subject: x\r\n\r\nline one\r\nline two\r\n..stuffed\r\nthree\r\n.\r\nNEXT",
            b"a\r\nb\r\n\r\n\r\nc\r\n.\r\n",
            b"short\r\nthis line is too long\r\nok\r\n.\r\n",
            b"ok\r\nfine\r\nthis one is much too long and ends the run\r\n.\r\n",
            b"bare\nlf\r\nin\rthe\r\nmiddle\r\n.\r\n",
            b"x\r\n.\n.\r\n.\r\n",
            b"dots\r\n.x\r\n..\r\n.\r\n",
            b"no end\r\nyet\r\nstill",
        ];
        for input in inputs {
            for bare_lf in [BareLf::Normalize, BareLf::Reject] {
                let whole = dot_in_pieces(input, &[], 12, bare_lf);
                for cut in 0..=input.len() {
                    assert_eq!(
                        dot_in_pieces(input, &[cut], 12, bare_lf),
                        whole,
                        "{input:?} cut at {cut}"
                    );
                }
                let every: Vec<usize> = (1..input.len()).collect();
                assert_eq!(
                    dot_in_pieces(input, &every, 12, bare_lf),
                    whole,
                    "{input:?} byte by byte"
                );
            }
        }
        // The long line of the third input fails the transaction, whichever way it came.
        let (_, _, progress, failure) = dot_in_pieces(inputs[2], &[], 12, BareLf::Normalize);
        assert_eq!(
            (progress, failure),
            (Progress::Complete, Some(ContentError::LineTooLong))
        );
        let (content, _, _, failure) = dot_in_pieces(inputs[0], &[], 100, BareLf::Normalize);
        assert_eq!(failure, None);
        assert_eq!(
            content,
            b"Subject: x\r\n\r\nline one\r\nline two\r\n.stuffed\r\nthree\r\n"
        );
    }

    #[test]
    fn limits_are_failures_not_fatal() {
        let mut r = ContentReceiver::in_memory(10, 1000, BareLf::Normalize);
        assert_eq!(r.ingest_dot(b"0123456789ABC\r\n.\r\n").1, Progress::Complete);
        assert_eq!(r.failure(), Some(ContentError::TooBig));

        let mut r = ContentReceiver::in_memory(1 << 20, 10, BareLf::Normalize);
        assert_eq!(r.ingest_dot(b"12345678\r\n.\r\n").1, Progress::Complete);
        assert_eq!(r.failure(), None);
        let mut r = ContentReceiver::in_memory(1 << 20, 10, BareLf::Normalize);
        assert_eq!(r.ingest_dot(b"123456789\r\n.\r\n").1, Progress::Complete);
        assert_eq!(r.failure(), Some(ContentError::LineTooLong));
        // A line ending in a bare LF counts the same.
        let mut r = ContentReceiver::in_memory(1 << 20, 10, BareLf::Normalize);
        assert_eq!(r.ingest_dot(b"123456789\n.\r\n.\r\n").1, Progress::Complete);
        assert_eq!(r.failure(), Some(ContentError::LineTooLong));
    }

    #[test]
    fn counted_chunks() {
        let mut r = ContentReceiver::in_memory(1 << 20, 1000, BareLf::Normalize);
        r.ingest_counted(b"a\r");
        r.ingest_counted(b"\nb\r\n");
        r.finish_counted();
        assert_eq!(r.failure(), None);
        assert_eq!(r.content.to_vec().unwrap(), b"a\r\nb\r\n");

        for bad in [&b"a\nb"[..], b"a\rb", b"a\r"] {
            let mut r = ContentReceiver::in_memory(1 << 20, 1000, BareLf::Reject);
            r.ingest_counted(bad);
            r.finish_counted();
            assert!(r.failure().is_some(), "{bad:?}");
        }
        // Normalised: a bare LF becomes CRLF; a bare CR still fails.
        let mut r = ContentReceiver::in_memory(1 << 20, 1000, BareLf::Normalize);
        r.ingest_counted(b"a\nb\n.\n");
        r.finish_counted();
        assert_eq!(r.failure(), None);
        assert_eq!(r.content.to_vec().unwrap(), b"a\r\nb\r\n.\r\n");
        for bad in [&b"a\rb"[..], b"a\r"] {
            let mut r = ContentReceiver::in_memory(1 << 20, 1000, BareLf::Normalize);
            r.ingest_counted(bad);
            r.finish_counted();
            assert_eq!(r.failure(), Some(ContentError::BareCr), "{bad:?}");
        }
    }
}
