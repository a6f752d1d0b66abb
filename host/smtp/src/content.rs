//! A message's content as it arrives: in memory up to a per-message budget, then in a file
//! the host provides (the spool file the 250 will make durable), so that what a client
//! sends costs the server disk, not memory.
//!
//! The session never opens files itself: the host hands it a [`SpillSource`] through its
//! [`crate::Settings`], and a [`Budget`] that caps the memory all sessions' contents may
//! hold together. Without a source, content stays in memory whole (tests, `plugin test`).
//! The CRC-32 of the content is computed as it arrives, once.

use std::borrow::Cow;
use std::fmt;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// The most of a content read as its header section ([`Content::header_section`]).
pub const MAX_HEADER_SECTION: usize = 1 << 20;

/// Once spilled, content is written out in pieces of about this size.
const WRITE_CHUNK: usize = 64 * 1024;

/// Where content goes once it is over its memory budget: the host's file factory.
pub trait SpillSource: Send + Sync + fmt::Debug {
    /// A new file for one message's content, positioned nowhere: content is written at
    /// [`SpillFile::start`] and after.
    fn open(&self) -> io::Result<SpillFile>;

    /// Opening or writing such a file failed (the disk is full, the spool gone): the
    /// content is lost and its message will be answered `452 4.3.1`. For the host's log;
    /// nothing by default.
    fn failed(&self, _error: &io::Error) {}
}

/// The room on the disk that keeps accepted messages: the host measures it, the session
/// asks before it takes a transaction (MAIL FROM, `[limits] spool-min-free`).
pub trait Room: Send + Sync + fmt::Debug {
    /// Whether at least `octets` are free now.
    fn has(&self, octets: u64) -> bool;
}

/// A file holding one message's content, from [`SpillFile::start`] on. Removed when
/// dropped, unless the host took it over ([`SpillFile::keep`]).
pub struct SpillFile {
    file: File,
    path: PathBuf,
    start: u64,
    kept: AtomicBool,
}

impl SpillFile {
    /// A file at `path` whose content begins at offset `start` (the host keeps the octets
    /// before it for its own header).
    pub fn new(file: File, path: PathBuf, start: u64) -> Self {
        SpillFile {
            file,
            path,
            start,
            kept: AtomicBool::new(false),
        }
    }

    /// The open file.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Where the file was created.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The offset of the content's first octet.
    pub fn start(&self) -> u64 {
        self.start
    }

    /// The host has moved the file where it belongs: dropping no longer removes it.
    pub fn keep(&self) {
        self.kept.store(true, Ordering::Release);
    }
}

impl Drop for SpillFile {
    fn drop(&mut self) {
        if !self.kept.load(Ordering::Acquire) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl fmt::Debug for SpillFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpillFile")
            .field("path", &self.path)
            .field("start", &self.start)
            .finish()
    }
}

/// The memory every session's content may hold together (`[limits] buffered-content`).
#[derive(Debug)]
pub struct Budget {
    used: AtomicUsize,
    cap: AtomicUsize,
}

impl Budget {
    /// A budget of `cap` octets.
    pub fn new(cap: usize) -> Arc<Budget> {
        Arc::new(Budget {
            used: AtomicUsize::new(0),
            cap: AtomicUsize::new(cap),
        })
    }

    /// Changes the cap (a reload); what is reserved stays reserved.
    pub fn set_cap(&self, cap: usize) {
        self.cap.store(cap, Ordering::Release);
    }

    /// Takes `amount` octets of the budget, or `None` when that would pass the cap.
    pub fn reserve(self: &Arc<Self>, amount: usize) -> Option<Reservation> {
        let cap = self.cap.load(Ordering::Acquire);
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(amount).filter(|total| *total <= cap)
            })
            .ok()?;
        Some(Reservation {
            budget: Arc::clone(self),
            amount,
        })
    }

    /// Octets reserved now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }
}

/// A share of a [`Budget`], given back when dropped.
#[derive(Debug)]
pub struct Reservation {
    budget: Arc<Budget>,
    amount: usize,
}

impl Reservation {
    /// Gives back all but `amount` octets.
    fn shrink(&mut self, amount: usize) {
        if amount < self.amount {
            self.budget.used.fetch_sub(self.amount - amount, Ordering::AcqRel);
            self.amount = amount;
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.amount, Ordering::AcqRel);
    }
}

/// Where a content is kept while it arrives: what the session needs to make one.
#[derive(Clone, Debug, Default)]
pub struct Storage {
    /// The memory cap of all contents together; `None`: no cap.
    pub budget: Option<Arc<Budget>>,
    /// Where content over `[limits] memory-per-message` goes; `None`: it stays in memory.
    pub spill: Option<Arc<dyn SpillSource>>,
    /// The disk's room for accepted messages; `None`: not measured, always room.
    pub room: Option<Arc<dyn Room>>,
}

impl Storage {
    /// Whether the disk has at least `octets` free now (always, when not measured).
    pub fn has_room(&self, octets: u64) -> bool {
        self.room.as_ref().is_none_or(|room| room.has(octets))
    }

    /// An empty content for a message of at most `memory` octets in memory, or `None`
    /// when the budget of all sessions is spent.
    pub fn content(&self, memory: usize) -> Option<Content> {
        let reservation = match &self.budget {
            Some(budget) => Some(budget.reserve(memory)?),
            None => None,
        };
        Some(Content {
            memory: Vec::new(),
            len: 0,
            crc: crc32fast::Hasher::new(),
            spilled: None,
            limit: memory,
            source: self.spill.clone(),
            error: None,
            reservation,
        })
    }
}

/// A message's content (CRLF lines, dot-unstuffed), in memory or in a file.
pub struct Content {
    /// Everything, or (spilled) what is not written out yet.
    memory: Vec<u8>,
    len: u64,
    crc: crc32fast::Hasher,
    spilled: Option<SpillFile>,
    limit: usize,
    source: Option<Arc<dyn SpillSource>>,
    error: Option<io::Error>,
    reservation: Option<Reservation>,
}

impl Content {
    /// A complete content held in memory (a message the host composed, tests).
    pub fn from_bytes(bytes: Vec<u8>) -> Content {
        let mut crc = crc32fast::Hasher::new();
        crc.update(&bytes);
        Content {
            len: bytes.len() as u64,
            limit: bytes.len(),
            memory: bytes,
            crc,
            spilled: None,
            source: None,
            error: None,
            reservation: None,
        }
    }

    /// Appends `bytes`; past the memory budget, what is held goes to a spill file.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.error.is_some() {
            return;
        }
        self.len += bytes.len() as u64;
        self.crc.update(bytes);
        self.memory.extend_from_slice(bytes);
        let over = match self.spilled {
            Some(_) => self.memory.len() >= WRITE_CHUNK,
            None => self.memory.len() > self.limit && self.source.is_some(),
        };
        if over && let Err(e) = self.write_out() {
            self.fail(e);
        }
    }

    /// Records the first failed write: nothing more is kept.
    fn fail(&mut self, error: io::Error) {
        if let Some(source) = &self.source {
            source.failed(&error);
        }
        self.error = Some(error);
        self.memory = Vec::new();
    }

    /// Writes what memory holds to the spill file, opening it first when needed.
    fn write_out(&mut self) -> io::Result<()> {
        if self.spilled.is_none() {
            let source = self
                .source
                .as_ref()
                .ok_or_else(|| io::Error::other("no spill file"))?;
            self.spilled = Some(source.open()?);
            // From now on memory is only a write buffer.
            if let Some(reservation) = &mut self.reservation {
                reservation.shrink(2 * WRITE_CHUNK);
            }
        }
        let Some(spill) = &self.spilled else {
            return Ok(());
        };
        let offset = spill.start + self.len - self.memory.len() as u64;
        spill.file.write_all_at(&self.memory, offset)?;
        if self.memory.capacity() > 2 * WRITE_CHUNK {
            self.memory = Vec::with_capacity(2 * WRITE_CHUNK);
        } else {
            self.memory.clear();
        }
        Ok(())
    }

    /// Ends the content: a spilled one is written out whole. The error is the first write
    /// that failed (the disk is full, the spool gone).
    pub fn finish(&mut self) -> io::Result<()> {
        if self.spilled.is_some()
            && !self.memory.is_empty()
            && self.error.is_none()
            && let Err(e) = self.write_out()
        {
            self.fail(e);
        }
        match &self.error {
            Some(e) => Err(io::Error::new(e.kind(), e.to_string())),
            None => Ok(()),
        }
    }

    /// Octets received.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing was received.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The CRC-32 of the octets received.
    pub fn checksum(&self) -> u32 {
        self.crc.clone().finalize()
    }

    /// The whole content, when it is held in memory.
    pub fn in_memory(&self) -> Option<&[u8]> {
        match self.spilled {
            None => Some(&self.memory),
            Some(_) => None,
        }
    }

    /// The file holding the content, when it went to one ([`Content::finish`]ed first).
    pub fn spilled(&self) -> Option<&SpillFile> {
        self.spilled.as_ref()
    }

    /// Reads up to `buf.len()` octets from `offset` (of a finished content); 0 at the end.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let available = self.len.saturating_sub(offset);
        let want = buf.len().min(usize::try_from(available).unwrap_or(usize::MAX));
        if want == 0 {
            return Ok(0);
        }
        match &self.spilled {
            None => {
                let start = offset as usize;
                buf[..want].copy_from_slice(&self.memory[start..start + want]);
                Ok(want)
            }
            Some(spill) => {
                let mut done = 0;
                while done < want {
                    match spill
                        .file
                        .read_at(&mut buf[done..want], spill.start + offset + done as u64)?
                    {
                        0 => break,
                        n => done += n,
                    }
                }
                Ok(done)
            }
        }
    }

    /// The first `max` octets at most (where the header section is), borrowed when in
    /// memory. Empty when the file cannot be read.
    pub fn prefix(&self, max: usize) -> Cow<'_, [u8]> {
        match self.in_memory() {
            Some(all) => Cow::Borrowed(&all[..all.len().min(max)]),
            None => {
                let mut buf = vec![0; max.min(usize::try_from(self.len).unwrap_or(usize::MAX))];
                match self.read_at(0, &mut buf) {
                    Ok(n) => buf.truncate(n),
                    Err(_) => buf.clear(),
                }
                Cow::Owned(buf)
            }
        }
    }

    /// Where the header section is: the first [`MAX_HEADER_SECTION`] octets at most (a
    /// header section longer than that is cut; no real one comes close).
    pub fn header_section(&self) -> Cow<'_, [u8]> {
        self.prefix(MAX_HEADER_SECTION)
    }

    /// The whole content as one buffer (tests, small contents).
    pub fn to_vec(&self) -> io::Result<Vec<u8>> {
        let mut all = vec![0; usize::try_from(self.len).map_err(io::Error::other)?];
        let n = self.read_at(0, &mut all)?;
        all.truncate(n);
        Ok(all)
    }
}

impl fmt::Debug for Content {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Content")
            .field("len", &self.len)
            .field("spilled", &self.spilled)
            .field("error", &self.error)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    /// Spill files in a temporary directory, with a header of `start` octets.
    #[derive(Debug)]
    struct Dir {
        path: tempfile::TempDir,
        start: u64,
        opened: AtomicU32,
    }

    impl SpillSource for Dir {
        fn open(&self) -> io::Result<SpillFile> {
            let n = self.opened.fetch_add(1, Ordering::Relaxed);
            let path = self.path.path().join(format!("spill-{n}"));
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&path)?;
            Ok(SpillFile::new(file, path, self.start))
        }
    }

    fn dir() -> Arc<Dir> {
        Arc::new(Dir {
            path: tempfile::tempdir().unwrap(),
            start: 7,
            opened: AtomicU32::new(0),
        })
    }

    #[test]
    fn small_content_stays_in_memory() {
        let storage = Storage {
            budget: None,
            spill: Some(dir()),
            room: None,
        };
        let mut c = storage.content(100).unwrap();
        c.push(b"Subject: x\r\n\r\nbody\r\n");
        c.finish().unwrap();
        assert_eq!(c.in_memory(), Some(&b"Subject: x\r\n\r\nbody\r\n"[..]));
        assert_eq!(c.checksum(), crc32fast::hash(b"Subject: x\r\n\r\nbody\r\n"));
    }

    #[test]
    fn large_content_goes_to_a_file_and_reads_back() {
        let source = dir();
        let storage = Storage {
            budget: None,
            spill: Some(source.clone()),
            room: None,
        };
        let mut c = storage.content(1000).unwrap();
        let line = b"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcd\r\n";
        let mut expected = Vec::new();
        for _ in 0..5000 {
            c.push(line);
            expected.extend_from_slice(line);
        }
        c.finish().unwrap();
        assert!(c.in_memory().is_none());
        let path = c.spilled().unwrap().path().to_path_buf();
        let on_disk = std::fs::read(&path).unwrap();
        assert_eq!(&on_disk[7..], &expected[..], "content after the host's header");
        assert_eq!(c.to_vec().unwrap(), expected);
        assert_eq!(c.checksum(), crc32fast::hash(&expected));
        assert_eq!(&*c.prefix(10), &expected[..10]);
        let mut buf = [0; 5];
        assert_eq!(c.read_at(expected.len() as u64 - 3, &mut buf).unwrap(), 3);
        drop(c);
        assert!(!path.exists(), "an abandoned content's file is removed");
    }

    #[test]
    fn a_kept_file_survives_its_content() {
        let storage = Storage {
            budget: None,
            spill: Some(dir()),
            room: None,
        };
        let mut c = storage.content(1).unwrap();
        c.push(b"abc");
        c.finish().unwrap();
        let spill = c.spilled().unwrap();
        spill.keep();
        let path = spill.path().to_path_buf();
        drop(c);
        assert!(path.exists());
    }

    #[test]
    fn the_budget_caps_contents_together_and_is_given_back() {
        let storage = Storage {
            budget: Some(Budget::new(250)),
            spill: Some(dir()),
            room: None,
        };
        let a = storage.content(100).unwrap();
        let mut b = storage.content(100).unwrap();
        assert!(storage.content(100).is_none(), "a third would pass the cap");
        drop(a);
        let c = storage.content(100).unwrap();
        // Spilled, a content keeps only a write buffer's worth (here more than it had).
        b.push(&[b'x'; 150]);
        assert!(b.spilled().is_some());
        assert_eq!(storage.budget.as_ref().unwrap().used(), 200);
        drop((b, c));
        assert_eq!(storage.budget.as_ref().unwrap().used(), 0);
    }

    #[test]
    fn a_failed_spill_is_an_error_at_the_end() {
        #[derive(Debug)]
        struct Broken;
        impl SpillSource for Broken {
            fn open(&self) -> io::Result<SpillFile> {
                Err(io::Error::other("disk full"))
            }
        }
        let storage = Storage {
            budget: None,
            spill: Some(Arc::new(Broken)),
            room: None,
        };
        let mut c = storage.content(2).unwrap();
        c.push(b"abcdef");
        c.push(b"more");
        assert!(c.finish().is_err());
    }
}
