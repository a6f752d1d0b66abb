//! The spool: one file per accepted message, durable before the 250.
//!
//! File format: a first line `PORTCULLIS-SPOOL 2 <length> <crc>` (16 and 8 hex digits: the
//! octets that follow the line, up to the end of the message, and their CRC-32), one line
//! of JSON metadata ([`Entry`]), then `Entry::size` octets of message (trace and hook
//! headers already prepended). Octets after that are what is left of an earlier, longer
//! message in a reused file, and are ignored. Files of version 1 (first line
//! `PORTCULLIS-SPOOL 1`, exactly `Entry::size` octets of message, whose CRC-32 is in the
//! metadata) are read as before.
//!
//! A file whose length or CRC-32 disagrees is moved to `corrupt/` at recovery and never
//! delivered (under group commit, that is a file whose flush a crash interrupted: no client
//! was told 250 for it).

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use portcullis_smtp::Folder;
use portcullis_smtp::envelope::Envelope;
use serde::{Deserialize, Serialize};

use crate::Maildir;
use crate::commit::{Committer, SyncMode};
use crate::fsync;

const MAGIC_V1: &[u8] = b"PORTCULLIS-SPOOL 1\n";
const MAGIC_V2: &[u8] = b"PORTCULLIS-SPOOL 2 ";
/// `PORTCULLIS-SPOOL 2 ` + 16 hex digits + space + 8 hex digits + newline.
const HEADER_V2: usize = 19 + 16 + 1 + 8 + 1;

/// The first line of a version 2 file whose metadata line and message are `parts`.
fn header(parts: &[&[u8]]) -> Vec<u8> {
    let length: usize = parts.iter().map(|p| p.len()).sum();
    let line = format!("PORTCULLIS-SPOOL 2 {length:016x} {:08x}\n", checksum(parts));
    debug_assert_eq!(line.len(), HEADER_V2);
    line.into_bytes()
}

/// A queue id: unique, sortable by arrival, safe as a file name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct QueueId(String);

impl QueueId {
    /// A fresh id: microseconds since the epoch and a counter, in upper-case hex.
    pub fn generate() -> Self {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let micros = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros())
            .unwrap_or(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed) & 0xFFFF;
        QueueId(format!("{micros:014X}{n:04X}"))
    }

    /// Parses a file name back into an id, refusing anything that is not one.
    pub fn parse(name: &str) -> Option<Self> {
        let ok = name.len() == 18
            && name
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_lowercase());
        ok.then(|| QueueId(name.to_string()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// When the id was made: microseconds since the epoch (its first 14 hex digits).
    pub fn micros(&self) -> u128 {
        self.0
            .get(..14)
            .and_then(|hex| u128::from_str_radix(hex, 16).ok())
            .unwrap_or(0)
    }
}

impl std::fmt::Display for QueueId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What the spool knows about one message besides its content.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Entry {
    /// The queue id.
    pub id: QueueId,
    /// When it was accepted, seconds since the epoch.
    pub received_at: u64,
    /// Sender and recipients as accepted.
    pub envelope: Envelope,
    /// Indices into `envelope.recipients` still to be delivered.
    pub pending: Vec<usize>,
    /// Where local copies go.
    pub folder: Folder,
    /// Octets of message after the metadata line.
    pub size: u64,
    /// Outbound: delivery attempts made so far for the remote recipients.
    #[serde(default)]
    pub attempts: u32,
    /// Outbound: the earliest time of the next attempt, seconds since the epoch (0: now).
    #[serde(default)]
    pub next_attempt: u64,
    /// Outbound: the last temporary failure of each pending recipient (index → reply).
    #[serde(default)]
    pub last_error: BTreeMap<usize, String>,
    /// Outbound: the sender has been told that delivery is late.
    #[serde(default)]
    pub delay_notified: bool,
    /// CRC-32 of the message octets (absent in files of older versions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<u32>,
    /// The sender may be told of a successful local delivery (RFC 3461 NOTIFY=SUCCESS):
    /// it is known, not merely claimed (submission). On MX a success notice to a forged
    /// sender would be backscatter.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub success_notices: bool,
}

/// A message on its way into the spool.
#[derive(Clone, Copy, Debug)]
pub struct Incoming<'a> {
    /// Its queue id.
    pub id: &'a QueueId,
    /// Sender and recipients as accepted.
    pub envelope: &'a Envelope,
    /// Where local copies go.
    pub folder: Folder,
    /// [`Entry::success_notices`].
    pub success_notices: bool,
    /// Header lines written before `body` (the `Received:` header and hook headers).
    pub head: &'a [u8],
    /// The message as received.
    pub body: &'a [u8],
}

/// Errors of the spool.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpoolError {
    /// The file system refused.
    #[error("spool I/O error on {path}: {source}")]
    Io {
        /// The file or directory concerned.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// A queue file is not in the spool format (truncated, foreign, damaged).
    #[error("corrupt spool file {path}: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Files of delivered messages kept in `free/` for reuse.
const MAX_FREE: usize = 256;

/// The durable queue under `<data-dir>/spool`.
#[derive(Debug)]
pub struct Spool {
    tmp: PathBuf,
    queue: PathBuf,
    corrupt: PathBuf,
    /// `free/`: files of delivered messages, kept to be written over by the next ones.
    free_dir: PathBuf,
    /// What `free/` holds. Reusing a file instead of deleting one and creating the next
    /// spares ext4 its inode allocator's scan past recently deleted inodes, which under a
    /// steady create/delete churn cost more CPU than the rest of the accept path
    /// (docs/benchmarks.md).
    free: std::sync::Mutex<Vec<PathBuf>>,
    /// Serialises [`Spool::modify`]: local and outbound delivery each change their own
    /// recipients of one message, and neither may overwrite the other's change.
    modifying: std::sync::Mutex<()>,
    sync: SyncMode,
    committer: Committer,
    /// Delivered messages whose files wait for a flush that started after their copies
    /// were published (a committer ticket each) before they are released.
    retiring: std::sync::Mutex<Vec<(u64, QueueId)>>,
    /// `spool/lock`, locked exclusively for as long as this value lives: one process owns
    /// a spool's files at a time (the daemon, or a queue command acting while none runs).
    _lock: fs::File,
}

/// Takes the spool's lock: waits for it with `wait`, else `Ok(None)` when another process
/// holds it.
fn lock_spool(dir: &Path, wait: bool) -> Result<Option<fs::File>, SpoolError> {
    let path = dir.join("lock");
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io_err(&path))?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(fs::TryLockError::WouldBlock) if wait => {
            tracing::warn!(path = %path.display(), "waiting for the spool lock: another process (a portcullis queue command?) is working on the spool");
            file.lock().map_err(io_err(&path))?;
            Ok(Some(file))
        }
        Err(fs::TryLockError::WouldBlock) => Ok(None),
        Err(fs::TryLockError::Error(e)) => Err(io_err(&path)(e)),
    }
}

impl Spool {
    /// Opens (creating if needed) the spool in `dir` with group commit, and removes
    /// half-written files.
    pub fn open(dir: &Path) -> Result<Self, SpoolError> {
        Spool::open_with(dir, SyncMode::Group)
    }

    /// Opens the spool with the given way of making messages durable, waiting for its lock
    /// while another process holds it.
    pub fn open_with(dir: &Path, sync: SyncMode) -> Result<Self, SpoolError> {
        // Waiting, the lock is always taken in the end: `None` cannot come back.
        Spool::open_locked(dir, sync, true)?.ok_or_else(|| SpoolError::Io {
            path: dir.join("lock"),
            source: io::Error::other("the spool lock was not taken"),
        })
    }

    /// Opens the spool only if no other process holds it (a daemon): `Ok(None)` when one
    /// does. For the queue commands, which act on the files themselves only then.
    pub fn open_if_unlocked(dir: &Path) -> Result<Option<Self>, SpoolError> {
        Spool::open_locked(dir, SyncMode::Group, false)
    }

    fn open_locked(dir: &Path, sync: SyncMode, wait: bool) -> Result<Option<Self>, SpoolError> {
        fsync::create_dir_durable(dir).map_err(io_err(dir))?;
        let Some(lock) = lock_spool(dir, wait)? else {
            return Ok(None);
        };
        let queue = dir.join("queue");
        for d in [
            dir.join("tmp"),
            queue.clone(),
            dir.join("corrupt"),
            dir.join("free"),
        ] {
            fsync::create_dir_durable(&d).map_err(io_err(&d))?;
        }
        let spool = Spool {
            tmp: dir.join("tmp"),
            committer: Committer::new(&queue).map_err(io_err(&queue))?,
            queue,
            corrupt: dir.join("corrupt"),
            free_dir: dir.join("free"),
            free: std::sync::Mutex::new(Vec::new()),
            modifying: std::sync::Mutex::new(()),
            sync,
            retiring: std::sync::Mutex::new(Vec::new()),
            _lock: lock,
        };
        for item in fs::read_dir(&spool.tmp).map_err(io_err(&spool.tmp))? {
            let path = item.map_err(io_err(&spool.tmp))?.path();
            tracing::warn!(path = %path.display(), "removing a half-written spool file left by a crash");
            fs::remove_file(&path).map_err(io_err(&path))?;
        }
        {
            let mut free = spool
                .free
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for item in fs::read_dir(&spool.free_dir).map_err(io_err(&spool.free_dir))? {
                let path = item.map_err(io_err(&spool.free_dir))?.path();
                if free.len() < MAX_FREE {
                    free.push(path);
                } else {
                    fs::remove_file(&path).map_err(io_err(&path))?;
                }
            }
        }
        Ok(Some(spool))
    }

    fn path(&self, id: &QueueId) -> PathBuf {
        self.queue.join(id.as_str())
    }

    /// Stores a message durably under `id`: when this returns `Ok`, a crash loses nothing.
    ///
    /// `head` is prepended to `body` (the `Received:` header and hook headers).
    pub fn store(
        &self,
        id: QueueId,
        envelope: Envelope,
        folder: Folder,
        head: &[u8],
        body: &[u8],
    ) -> Result<Entry, SpoolError> {
        let incoming = Incoming {
            id: &id,
            envelope: &envelope,
            folder,
            success_notices: false,
            head,
            body,
        };
        let entry = self.write_with(&incoming, |_| Ok(()))?;
        self.make_durable()?;
        Ok(entry)
    }

    /// [`Spool::store`] up to the flush, running `prepare` with the entry before the spool
    /// file is written: the file is in `queue/`, durable only after [`Spool::flush`] (with
    /// per-message sync the file itself is fsync'd already, and the flush syncs `queue/`).
    /// Whatever `prepare` writes without syncing (the Maildir copies,
    /// [`crate::Maildir::prepare`]) is made durable by the same flush. When `prepare`
    /// fails nothing is written and its error is returned; undoing its partial work is the
    /// caller's.
    fn write_with(
        &self,
        incoming: &Incoming<'_>,
        prepare: impl FnOnce(&Entry) -> Result<(), SpoolError>,
    ) -> Result<Entry, SpoolError> {
        let received_at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let Incoming { head, body, .. } = *incoming;
        let entry = Entry {
            pending: (0..incoming.envelope.recipients.len()).collect(),
            id: incoming.id.clone(),
            received_at,
            envelope: incoming.envelope.clone(),
            folder: incoming.folder,
            size: (head.len() + body.len()) as u64,
            attempts: 0,
            next_attempt: 0,
            last_error: BTreeMap::new(),
            delay_notified: false,
            checksum: Some(checksum(&[head, body])),
            success_notices: incoming.success_notices,
        };
        prepare(&entry)?;
        let tmp = self.tmp.join(entry.id.as_str());
        let meta = metadata_line(&entry)?;
        let parts: [&[u8]; 4] = [&header(&[&meta, head, body]), &meta, head, body];
        if let Err(e) = self.write_file(&tmp, &parts, self.sync == SyncMode::PerMessage) {
            if e.kind() != io::ErrorKind::AlreadyExists {
                let _ = fs::remove_file(&tmp);
            }
            return Err(io_err(&tmp)(e));
        }
        let dest = self.path(&entry.id);
        fs::rename(&tmp, &dest).map_err(io_err(&dest))?;
        Ok(entry)
    }

    /// Writes a message whose Maildir copies can share its flush, without the flush: the
    /// message is durable, and may be acknowledged, once a [`Spool::flush`] called after
    /// this returned has returned (one flush serves every message written before it). When
    /// `maildir` shares the spool's flushes and every recipient is local, each copy is
    /// prepared in its folder's `tmp/` ([`Maildir::prepare`]) before the spool file is
    /// written, so that flush covers them all. A copy that cannot be prepared (a broken
    /// folder, a full quota) does not refuse the message: the prepared ones are removed,
    /// and the message is spooled alone for delivery to retry.
    pub fn write_with_copies(&self, maildir: &Maildir, incoming: Incoming<'_>) -> Result<Entry, SpoolError> {
        if !maildir.shares_spool_flush() || !incoming.envelope.recipients.iter().all(|r| r.local) {
            return self.write_with(&incoming, |_| Ok(()));
        }
        let mut prepared: Vec<crate::maildir::Copy> = Vec::new();
        let mut prepare_failed = false;
        let stored = self.write_with(&incoming, |entry| {
            for index in 0..entry.envelope.recipients.len() {
                let Some(copy) = crate::maildir::Copy::of(entry, index) else {
                    continue;
                };
                match maildir.prepare(&copy, &[incoming.head, incoming.body]) {
                    Ok(true) => prepared.push(copy),
                    // A folder on another file system: delivery writes and fsyncs it.
                    Ok(false) => {}
                    Err(source) => {
                        prepare_failed = true;
                        return Err(io_err(&maildir.folder_path(&copy.owner, copy.folder))(source));
                    }
                }
            }
            Ok(())
        });
        if stored.is_err() {
            for copy in &prepared {
                maildir.discard_prepared(copy);
            }
        }
        match stored {
            Err(e) if prepare_failed => {
                tracing::warn!(queue_id = %incoming.id, error = %e, "cannot prepare a maildir copy; the message is spooled and delivery will retry");
                self.write_with(&incoming, |_| Ok(()))
            }
            stored => stored,
        }
    }

    /// Writes a new spool file at `path` (in `tmp/`), over a free one when there is one,
    /// and fsyncs it with `sync`.
    fn write_file(&self, path: &Path, parts: &[&[u8]], sync: bool) -> io::Result<()> {
        let reused = self
            .free
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop();
        if let Some(old) = reused
            && fs::rename(&old, path).is_ok()
        {
            return fsync::write_over(path, parts, sync);
        }
        if sync {
            fsync::write_new(path, parts)
        } else {
            fsync::write_new_unsynced(path, parts)
        }
    }

    /// Takes the file of a message out of `queue/`: into `free/` for reuse, or deleted
    /// when enough are kept. Not durable by itself.
    fn release(&self, id: &QueueId) -> Result<(), SpoolError> {
        let path = self.path(id);
        let mut free = self
            .free
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if free.len() < MAX_FREE {
            let dest = self.free_dir.join(id.as_str());
            fs::rename(&path, &dest).map_err(io_err(&path))?;
            free.push(dest);
            Ok(())
        } else {
            drop(free);
            fs::remove_file(&path).map_err(io_err(&path))
        }
    }

    /// Makes every change made so far to `queue/` durable: one fsync of the directory, or
    /// a share of a group flush (after which the files [`Spool::retire_after_flush`] was
    /// waiting on are released).
    fn make_durable(&self) -> Result<(), SpoolError> {
        self.flush()?;
        self.release_flushed();
        Ok(())
    }

    /// Makes every message [`Spool::write_with_copies`] wrote before this call durable:
    /// one flush for all of them. The files of delivered messages this flush covers are
    /// left for [`Spool::release_flushed`], so that the caller can answer its clients
    /// first.
    pub fn flush(&self) -> Result<(), SpoolError> {
        match self.sync {
            SyncMode::Group => self.committer.commit().map_err(io_err(&self.queue)),
            SyncMode::PerMessage => fsync::sync_dir(&self.queue).map_err(io_err(&self.queue)),
        }
    }

    /// Retires a delivered message once the next group flush has made its delivery durable,
    /// without waiting for it: whoever flushes next releases the file (or
    /// [`Spool::flush_retiring`] when none comes). Only for deliveries written on the
    /// spool's file system without a sync of their own; with per-message sync it waits for
    /// [`Spool::flush_soon`] and retires at once. If a crash comes first, recovery finds
    /// every copy delivered already.
    pub fn retire_after_flush(&self, id: QueueId) -> Result<(), SpoolError> {
        if self.sync != SyncMode::Group {
            self.flush_soon()?;
            return self.retire(&id);
        }
        let ticket = self.committer.ticket();
        self.retiring
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push((ticket, id));
        Ok(())
    }

    /// Messages waiting for a flush before their files are released.
    pub fn retiring(&self) -> usize {
        self.retiring
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }

    /// Releases the files of [`Spool::retire_after_flush`] a completed flush now covers. A
    /// file that cannot be moved stays in `queue/`; recovery settles it at the next start.
    pub fn release_flushed(&self) {
        let ready: Vec<QueueId> = {
            let mut retiring = self
                .retiring
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if retiring.is_empty() {
                return;
            }
            let (ready, waiting) = retiring
                .drain(..)
                .partition(|(ticket, _)| self.committer.covers(*ticket));
            *retiring = waiting;
            ready.into_iter().map(|(_, id)| id).collect()
        };
        for id in ready {
            if let Err(e) = self.release(&id) {
                tracing::warn!(queue_id = %id, error = %e, "cannot release a delivered message's spool file; recovery will");
            }
        }
    }

    /// Releases what [`Spool::retire_after_flush`] holds when no session's flush came: rides
    /// on one that starts within `patience`, else runs its own.
    pub fn flush_retiring(&self, patience: std::time::Duration) -> Result<(), SpoolError> {
        if self.retiring() == 0 {
            return Ok(());
        }
        self.committer
            .commit_within(patience)
            .map_err(io_err(&self.queue))?;
        self.release_flushed();
        Ok(())
    }

    /// Makes every write made so far to the spool's file system durable, for work nobody
    /// waits on: rides on the next group flush someone else starts within a few
    /// milliseconds, else runs its own (with per-message sync: an fsync of `queue/`).
    pub fn flush_soon(&self) -> Result<(), SpoolError> {
        match self.sync {
            SyncMode::Group => self
                .committer
                .commit_within(std::time::Duration::from_millis(5))
                .map_err(io_err(&self.queue)),
            SyncMode::PerMessage => self.make_durable(),
        }
    }

    /// The device whose whole file system the spool's flushes make durable (group commit),
    /// so that files written there unsynced become durable with the spool's next flush;
    /// `None` with per-message sync.
    pub fn flush_device(&self) -> Option<u64> {
        use std::os::unix::fs::MetadataExt;
        if self.sync != SyncMode::Group {
            return None;
        }
        fs::metadata(&self.queue).ok().map(|m| m.dev())
    }

    /// How this spool makes messages durable.
    pub fn sync_mode(&self) -> SyncMode {
        self.sync
    }

    /// Group flushes run so far (benchmarks).
    pub fn flushes(&self) -> u64 {
        self.committer.flushes()
    }

    /// Replaces the metadata of a stored message (after some recipients were delivered),
    /// atomically: the old file stays until the new one is durable.
    pub fn update(&self, entry: &Entry) -> Result<(), SpoolError> {
        let (_, body) = self.load(&entry.id)?;
        self.rewrite(entry, &body)
    }

    fn rewrite(&self, entry: &Entry, body: &[u8]) -> Result<(), SpoolError> {
        let tmp = self.tmp.join(format!("{}.update", entry.id));
        let _ = fs::remove_file(&tmp);
        let meta = metadata_line(entry)?;
        // The new version replaces the message's only file by rename, so its content must
        // be on disk before the rename can be, whatever the sync mode: a journal commit
        // carrying the rename but not the data written over a reused file (nothing orders
        // the two) would leave stale content under the message's name.
        self.write_file(&tmp, &[&header(&[&meta, body]), &meta, body], true)
            .map_err(io_err(&tmp))?;
        let dest = self.path(&entry.id);
        fs::rename(&tmp, &dest).map_err(io_err(&dest))?;
        self.make_durable()
    }

    /// Reads the message's current metadata, lets `change` edit it, and writes it back
    /// durably — or removes the message when no recipient is left pending. Returns the
    /// entry as written.
    ///
    /// Changes are serialised, so two deliveries working on different recipients of one
    /// message never lose each other's progress.
    pub fn modify(&self, id: &QueueId, change: impl FnOnce(&mut Entry)) -> Result<Entry, SpoolError> {
        let _guard = self
            .modifying
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (mut entry, body) = self.load(id)?;
        change(&mut entry);
        if entry.pending.is_empty() {
            self.remove(id)?;
        } else {
            self.rewrite(&entry, &body)?;
        }
        Ok(entry)
    }

    /// Reads a stored message and checks it is whole.
    pub fn load(&self, id: &QueueId) -> Result<(Entry, Vec<u8>), SpoolError> {
        let path = self.path(id);
        let (entry, body) = read_spool_file(&path, true)?;
        check_id(&path, &entry, id)?;
        Ok((entry, body))
    }

    /// Reads only a stored message's metadata (the content is not read or checked): enough
    /// to decide whether it is due.
    pub fn entry(&self, id: &QueueId) -> Result<Entry, SpoolError> {
        let path = self.path(id);
        let (entry, _) = read_spool_file(&path, false)?;
        check_id(&path, &entry, id)?;
        Ok(entry)
    }

    /// Removes a message for good, whatever is still pending (the operator's `queue
    /// remove`), serialised with [`Spool::modify`] so that a delivery's change never brings
    /// it back. `Ok(false)` when there is no such message.
    pub fn discard(&self, id: &QueueId) -> Result<bool, SpoolError> {
        let _guard = self
            .modifying
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !self.path(id).is_file() {
            return Ok(false);
        }
        self.remove(id)?;
        Ok(true)
    }

    /// Removes a message whose every recipient is done.
    pub fn remove(&self, id: &QueueId) -> Result<(), SpoolError> {
        self.release(id)?;
        self.make_durable()
    }

    /// Takes back a message [`Spool::write_with_copies`] wrote whose flush failed (its
    /// client is answered 451 and will retry): its prepared Maildir copies are removed and
    /// its file leaves `queue/`, so that neither this run nor the next start delivers a
    /// copy the client will send again. Best effort, not durable by itself.
    pub fn withdraw(&self, maildir: &Maildir, entry: &Entry) -> Result<(), SpoolError> {
        for index in 0..entry.envelope.recipients.len() {
            if let Some(copy) = crate::maildir::Copy::of(entry, index) {
                maildir.discard_prepared(&copy);
            }
        }
        self.release(&entry.id)
    }

    /// Removes a message whose every recipient is done, without waiting for the removal to
    /// be durable: the next flush of anyone makes it so. For deliveries whose results were
    /// made durable first — if a crash loses the removal, recovery finds every copy
    /// delivered already.
    pub fn retire(&self, id: &QueueId) -> Result<(), SpoolError> {
        self.release(id)
    }

    /// Moves a damaged file aside so it is kept for the operator but never delivered.
    pub fn quarantine(&self, id: &QueueId) -> Result<(), SpoolError> {
        let path = self.path(id);
        let dest = self.corrupt.join(id.as_str());
        fs::rename(&path, &dest).map_err(io_err(&dest))?;
        fsync::sync_dir(&self.queue).map_err(io_err(&self.queue))
    }

    /// Every queued message id, oldest first.
    pub fn list(&self) -> Result<Vec<QueueId>, SpoolError> {
        list_queue(&self.queue)
    }
}

/// The ids of the files in `queue`, oldest first.
pub(crate) fn list_queue(queue: &Path) -> Result<Vec<QueueId>, SpoolError> {
    let mut ids = Vec::new();
    for item in fs::read_dir(queue).map_err(io_err(queue))? {
        let item = item.map_err(io_err(queue))?;
        let name = item.file_name();
        match name.to_str().and_then(QueueId::parse) {
            Some(id) => ids.push(id),
            None => tracing::warn!(file = ?name, "ignoring a foreign file in the spool queue"),
        }
    }
    ids.sort();
    Ok(ids)
}

/// The metadata of the spool file at `path` and, with `content`, its message, checked
/// whole (length and CRC-32); without, the message is neither read nor checked.
pub(crate) fn read_spool_file(path: &Path, content: bool) -> Result<(Entry, Vec<u8>), SpoolError> {
    let corrupt = |reason: &str| SpoolError::Corrupt {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    };
    let file = fs::File::open(path).map_err(io_err(path))?;
    // Never reserve more than the file holds, whatever a damaged metadata line claims.
    let file_length = file.metadata().map_err(io_err(path))?.len();
    let mut reader = BufReader::new(file);
    let mut first = Vec::new();
    reader
        .by_ref()
        .take(HEADER_V2 as u64)
        .read_until(b'\n', &mut first)
        .map_err(io_err(path))?;
    let v2 = if first == MAGIC_V1 {
        None
    } else {
        let fields = first
            .strip_prefix(MAGIC_V2)
            .and_then(|rest| rest.strip_suffix(b"\n"))
            .and_then(|rest| std::str::from_utf8(rest).ok())
            .and_then(|rest| rest.split_once(' '))
            .and_then(|(length, crc)| {
                Some((
                    u64::from_str_radix(length, 16).ok()?,
                    u32::from_str_radix(crc, 16).ok()?,
                ))
            });
        Some(fields.ok_or_else(|| corrupt("not a spool file"))?)
    };
    let mut meta = Vec::new();
    reader.read_until(b'\n', &mut meta).map_err(io_err(path))?;
    let entry: Entry = serde_json::from_slice(&meta).map_err(|e| corrupt(&format!("bad metadata: {e}")))?;
    if !content {
        return Ok((entry, Vec::new()));
    }
    let mut body = Vec::with_capacity(entry.size.min(file_length) as usize);
    match v2 {
        Some((length, crc)) => {
            // The metadata line and the message; what follows is an earlier file's rest.
            let want = length
                .checked_sub(meta.len() as u64)
                .ok_or_else(|| corrupt("length shorter than the metadata"))?;
            reader.take(want).read_to_end(&mut body).map_err(io_err(path))?;
            if body.len() as u64 != want {
                return Err(corrupt("file shorter than its length (truncated?)"));
            }
            if checksum(&[&meta, &body]) != crc {
                return Err(corrupt("checksum differs (a write a crash cut short?)"));
            }
        }
        None => {
            reader.read_to_end(&mut body).map_err(io_err(path))?;
        }
    }
    if body.len() as u64 != entry.size {
        return Err(corrupt("message length differs from its metadata (truncated?)"));
    }
    if entry.checksum.is_some_and(|c| c != checksum(&[&body])) {
        return Err(corrupt("message checksum differs from its metadata"));
    }
    Ok((entry, body))
}

/// That the file at `path`, read as `id`, names `id`.
pub(crate) fn check_id(path: &Path, entry: &Entry, id: &QueueId) -> Result<(), SpoolError> {
    if entry.id == *id {
        return Ok(());
    }
    Err(SpoolError::Corrupt {
        path: path.to_path_buf(),
        reason: "metadata names another queue id".into(),
    })
}

fn checksum(parts: &[&[u8]]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    for part in parts {
        hasher.update(part);
    }
    hasher.finalize()
}

fn metadata_line(entry: &Entry) -> Result<Vec<u8>, SpoolError> {
    let mut meta = serde_json::to_vec(entry).map_err(|e| SpoolError::Corrupt {
        path: PathBuf::from(entry.id.as_str()),
        reason: format!("cannot encode metadata: {e}"),
    })?;
    meta.push(b'\n');
    Ok(meta)
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_smtp::Mailbox;
    use portcullis_smtp::envelope::{MailParams, Recipient};

    fn envelope() -> Envelope {
        Envelope {
            mail_from: None,
            params: MailParams::default(),
            recipients: vec![Recipient {
                mailbox: Mailbox {
                    local: "alice".into(),
                    domain: "example.org".into(),
                },
                params: Default::default(),
                local: true,
                deliver_to: None,
            }],
        }
    }

    #[test]
    fn store_load_update_remove() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let entry = spool
            .store(
                QueueId::generate(),
                envelope(),
                Folder::Inbox,
                b"Received: x\r\n",
                b"body\r\n",
            )
            .unwrap();
        assert_eq!(spool.list().unwrap(), vec![entry.id.clone()]);
        let (loaded, body) = spool.load(&entry.id).unwrap();
        assert_eq!(loaded, entry);
        assert_eq!(body, b"Received: x\r\nbody\r\n");
        let mut updated = entry.clone();
        updated.pending.clear();
        spool.update(&updated).unwrap();
        assert_eq!(spool.load(&entry.id).unwrap().0.pending, Vec::<usize>::new());
        spool.remove(&entry.id).unwrap();
        assert!(spool.list().unwrap().is_empty());
    }

    #[test]
    fn both_sync_modes_store_and_a_damaged_byte_is_caught() {
        for mode in [SyncMode::Group, SyncMode::PerMessage] {
            let dir = tempfile::tempdir().unwrap();
            let spool = Spool::open_with(dir.path(), mode).unwrap();
            let entry = spool
                .store(
                    QueueId::generate(),
                    envelope(),
                    Folder::Inbox,
                    b"H: 1\r\n",
                    b"\r\nbody\r\n",
                )
                .unwrap();
            assert!(entry.checksum.is_some());
            assert_eq!(spool.load(&entry.id).unwrap().1, b"H: 1\r\n\r\nbody\r\n");
            // Same length, one byte different: what an interrupted flush can leave.
            let path = dir.path().join("queue").join(entry.id.as_str());
            let mut data = fs::read(&path).unwrap();
            let last = data.len() - 3;
            data[last] ^= 0x20;
            fs::write(&path, &data).unwrap();
            assert!(
                matches!(spool.load(&entry.id), Err(SpoolError::Corrupt { reason, .. }) if reason.contains("checksum")),
                "{mode:?}"
            );
        }
    }

    #[test]
    fn a_failed_prepare_stores_nothing_and_flushes_cover_the_same_file_system() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let (id, sent) = (QueueId::generate(), envelope());
        let incoming = Incoming {
            id: &id,
            envelope: &sent,
            folder: Folder::Inbox,
            success_notices: false,
            head: b"",
            body: b"x",
        };
        let failed = spool.write_with(&incoming, |_| {
            Err(SpoolError::Io {
                path: dir.path().to_path_buf(),
                source: io::Error::other("disk full"),
            })
        });
        assert!(failed.is_err());
        assert!(spool.list().unwrap().is_empty());
        let mut seen = None;
        let entry = spool
            .write_with(&incoming, |e| {
                seen = Some(e.id.clone());
                Ok(())
            })
            .unwrap();
        spool.flush().unwrap();
        assert_eq!(seen.as_ref(), Some(&entry.id));
        let flushes = spool.flushes();
        spool.flush_soon().unwrap();
        assert!(spool.flushes() > flushes);
        spool.retire(&entry.id).unwrap();
        assert!(spool.list().unwrap().is_empty());

        // The retired file is reused for the next message.
        assert_eq!(fs::read_dir(dir.path().join("free")).unwrap().count(), 1);
        let long = vec![b'y'; 5000];
        let first = spool
            .store(QueueId::generate(), envelope(), Folder::Inbox, b"", &long)
            .unwrap();
        assert_eq!(fs::read_dir(dir.path().join("free")).unwrap().count(), 0);
        spool.remove(&first.id).unwrap();
        let short = spool
            .store(QueueId::generate(), envelope(), Folder::Inbox, b"h", b"z")
            .unwrap();
        assert_eq!(spool.load(&short.id).unwrap().1, b"hz");
        // Kept across a restart.
        spool.retire(&short.id).unwrap();
        drop(spool);
        let spool = Spool::open(dir.path()).unwrap();
        assert_eq!(spool.free.lock().unwrap().len(), 1);
        assert!(spool.list().unwrap().is_empty());

        use std::os::unix::fs::MetadataExt;
        assert_eq!(
            spool.flush_device(),
            Some(fs::metadata(dir.path()).unwrap().dev())
        );
        let per_message = Spool::open_with(&dir.path().join("other"), SyncMode::PerMessage).unwrap();
        assert_eq!(per_message.flush_device(), None);
    }

    #[test]
    fn a_file_retired_after_a_flush_stays_until_one_has_run() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let queued = |spool: &Spool| spool.list().unwrap().len();
        let first = spool
            .store(QueueId::generate(), envelope(), Folder::Inbox, b"", b"one")
            .unwrap();
        spool.retire_after_flush(first.id.clone()).unwrap();
        assert_eq!((queued(&spool), spool.retiring()), (1, 1));
        // The next message's flush covers the first one's delivery: its file goes then.
        let second = spool
            .store(QueueId::generate(), envelope(), Folder::Inbox, b"", b"two")
            .unwrap();
        assert_eq!((queued(&spool), spool.retiring()), (1, 0));
        assert!(spool.load(&second.id).is_ok());
        // With no session to flush, the sweeper's call does.
        spool.retire_after_flush(second.id.clone()).unwrap();
        let flushes = spool.flushes();
        spool.flush_retiring(std::time::Duration::ZERO).unwrap();
        assert_eq!((queued(&spool), spool.retiring()), (0, 0));
        assert_eq!(spool.flushes(), flushes + 1);
        // Nothing waiting: no flush.
        spool.flush_retiring(std::time::Duration::ZERO).unwrap();
        assert_eq!(spool.flushes(), flushes + 1);
        assert_eq!(fs::read_dir(dir.path().join("free")).unwrap().count(), 2);

        // Per-message sync has no shared flush to wait for: it retires at once.
        let per_message = Spool::open_with(&dir.path().join("other"), SyncMode::PerMessage).unwrap();
        let entry = per_message
            .store(QueueId::generate(), envelope(), Folder::Inbox, b"", b"three")
            .unwrap();
        per_message.retire_after_flush(entry.id).unwrap();
        assert_eq!((queued(&per_message), per_message.retiring()), (0, 0));
    }

    #[test]
    fn a_reused_file_keeps_an_old_tail_that_is_ignored_and_version_1_files_still_load() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let long = spool
            .store(QueueId::generate(), envelope(), Folder::Inbox, b"", &[b'y'; 5000])
            .unwrap();
        spool.remove(&long.id).unwrap();
        let short = spool
            .store(QueueId::generate(), envelope(), Folder::Inbox, b"h", b"z")
            .unwrap();
        let path = dir.path().join("queue").join(short.id.as_str());
        assert!(fs::metadata(&path).unwrap().len() > 5000, "written over, not cut");
        assert_eq!(spool.load(&short.id).unwrap().1, b"hz");

        // A file of the previous version: exactly its message after the metadata.
        let old = Entry {
            id: QueueId::generate(),
            ..short.clone()
        };
        let old = Entry {
            size: 4,
            checksum: Some(checksum(&[b"old\n"])),
            ..old
        };
        let mut file = MAGIC_V1.to_vec();
        file.extend(metadata_line(&old).unwrap());
        file.extend(b"old\n");
        fs::write(dir.path().join("queue").join(old.id.as_str()), &file).unwrap();
        assert_eq!(spool.load(&old.id).unwrap(), (old.clone(), b"old\n".to_vec()));
        file.push(b'!');
        fs::write(dir.path().join("queue").join(old.id.as_str()), &file).unwrap();
        assert!(matches!(spool.load(&old.id), Err(SpoolError::Corrupt { .. })));
        // A damaged size is an error, not an allocation of what it claims.
        let huge = Entry {
            size: u64::MAX / 2,
            ..old.clone()
        };
        let mut file = MAGIC_V1.to_vec();
        file.extend(metadata_line(&huge).unwrap());
        file.extend(b"old\n");
        fs::write(dir.path().join("queue").join(old.id.as_str()), &file).unwrap();
        assert!(matches!(spool.load(&old.id), Err(SpoolError::Corrupt { .. })));
    }

    #[test]
    fn a_withdrawn_message_leaves_neither_its_file_nor_its_prepared_copies() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        use std::os::unix::fs::MetadataExt;
        let device = fs::metadata(dir.path()).unwrap().dev();
        let maildir = Maildir::new(dir.path().join("mail"), "mx").sharing_spool_flush(Some(device));
        let (id, envelope) = (QueueId::generate(), envelope());
        let incoming = Incoming {
            id: &id,
            envelope: &envelope,
            folder: Folder::Inbox,
            success_notices: false,
            head: b"",
            body: b"body\r\n",
        };
        let entry = spool.write_with_copies(&maildir, incoming).unwrap();
        let tmp = dir.path().join("mail/example.org/alice/tmp");
        assert_eq!(fs::read_dir(&tmp).unwrap().count(), 1, "a copy was prepared");
        assert_eq!(spool.list().unwrap(), vec![entry.id.clone()]);
        spool.withdraw(&maildir, &entry).unwrap();
        assert_eq!(fs::read_dir(&tmp).unwrap().count(), 0);
        assert!(spool.list().unwrap().is_empty());
        // Nothing comes back at the next start.
        drop(spool);
        assert!(Spool::open(dir.path()).unwrap().list().unwrap().is_empty());
    }

    #[test]
    fn one_process_owns_the_spool_and_a_view_never_touches_it() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let entry = spool
            .store(QueueId::generate(), envelope(), Folder::Inbox, b"", b"x")
            .unwrap();
        fs::write(dir.path().join("tmp/being-written"), b"half").unwrap();
        // Held (here by this value; in real life by the daemon): nobody else opens it.
        assert!(Spool::open_if_unlocked(dir.path()).unwrap().is_none());
        // The read-only view lists and reads, and leaves tmp/ and free/ alone.
        let view = crate::SpoolView::open(dir.path()).unwrap();
        assert_eq!(view.list().unwrap(), vec![entry.id.clone()]);
        assert_eq!(view.load(&entry.id).unwrap().1, b"x");
        assert!(dir.path().join("tmp/being-written").exists());
        drop(spool);
        let taken = Spool::open_if_unlocked(dir.path()).unwrap();
        assert!(taken.is_some());
    }

    #[test]
    fn half_written_and_truncated_files_are_never_delivered() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let entry = spool
            .store(QueueId::generate(), envelope(), Folder::Inbox, b"", b"0123456789")
            .unwrap();
        fs::write(
            dir.path().join("tmp/0000000000000000AB"),
            b"PORTCULLIS-SPOOL 1\n{",
        )
        .unwrap();
        // Truncate the stored message, as a disk fault would.
        let path = dir.path().join("queue").join(entry.id.as_str());
        let data = fs::read(&path).unwrap();
        fs::write(&path, &data[..data.len() - 3]).unwrap();

        drop(spool);
        let spool = Spool::open(dir.path()).unwrap();
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
        assert!(matches!(spool.load(&entry.id), Err(SpoolError::Corrupt { .. })));
        spool.quarantine(&entry.id).unwrap();
        assert!(spool.list().unwrap().is_empty());
    }
}
