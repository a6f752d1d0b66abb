//! The spool: one file per accepted message, durable before the 250.
//!
//! A message's file is written over a reused file in `free/` when there is one, else to
//! `tmp/`, or was written there as its content arrived; it is renamed into `queue/` and made
//! durable before the 250. Delivery records its progress in a state file beside it and
//! releases both at the end. The format is [`crate::file`]'s; when writes become durable,
//! [`flush`]'s.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use portcullis_smtp::content::SpillFile;
use portcullis_smtp::envelope::Envelope;
use portcullis_smtp::{Content, Folder};

use crate::Maildir;
use crate::commit::{Committer, SyncMode};
pub use crate::entry::{Entry, Incoming, QueueId};
use crate::file::{HEADER_V3, header_state, header_v3, metadata_line, read_queued, state_path};
use crate::fsync;

mod flush;

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

pub(crate) fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Files of delivered messages kept in `free/` for reuse.
const MAX_FREE: usize = 256;

/// The largest file kept in `free/`: a reused file is written over, not cut, so each one
/// kept holds its size of disk until it is reused by a larger message. Larger files (large
/// messages, which are rare and cost their own write anyway) are deleted, so `free/`
/// never holds more than 32 MiB.
const MAX_FREE_SIZE: u64 = 128 * 1024;

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
    /// Serialises [`Spool::modify`] and [`Spool::discard`]: a delivery's change never
    /// brings back a message an operator removed.
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
        fsync::create_dir_durable(dir, fsync::PRIVATE_DIR).map_err(io_err(dir))?;
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
            fsync::create_dir_durable(&d, fsync::PRIVATE_DIR).map_err(io_err(&d))?;
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
        for path in scan_queue(&spool.queue)?.1 {
            tracing::warn!(path = %path.display(), "removing the state file of a message delivered before a crash");
            remove_if_present(&path)?;
        }
        {
            let mut free = spool
                .free
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for item in fs::read_dir(&spool.free_dir).map_err(io_err(&spool.free_dir))? {
                let item = item.map_err(io_err(&spool.free_dir))?;
                let path = item.path();
                let size = item.metadata().map_err(io_err(&path))?.len();
                if free.len() < MAX_FREE && size <= MAX_FREE_SIZE {
                    // A reused file keeps its mode: one from an older version may have been
                    // created readable by others.
                    use std::os::unix::fs::PermissionsExt;
                    fs::set_permissions(&path, fs::Permissions::from_mode(fsync::PRIVATE_FILE))
                        .map_err(io_err(&path))?;
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
    /// `head` goes before `body` when the message is delivered (the `Received:` header and
    /// hook headers).
    pub fn store(
        &self,
        id: QueueId,
        envelope: Envelope,
        folder: Folder,
        head: &str,
        body: &[u8],
    ) -> Result<Entry, SpoolError> {
        let content = Content::from_bytes(body.to_vec());
        let incoming = Incoming {
            id: &id,
            envelope: &envelope,
            folder,
            success_notices: false,
            head,
            omit: &[],
            content: &content,
        };
        let entry = self.write(&incoming)?;
        self.make_durable()?;
        Ok(entry)
    }

    /// [`Spool::store`] up to the flush: the file is in `queue/`, durable only after
    /// [`Spool::flush`] (with per-message sync the file itself is fsync'd already, and the
    /// flush syncs `queue/`). A content in memory is written to a new file (or over a free
    /// one); a spilled one already is in its file, behind the first line, and gets its
    /// metadata and first line there.
    fn write(&self, incoming: &Incoming<'_>) -> Result<Entry, SpoolError> {
        let received_at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let content = incoming.content;
        if !crate::entry::omit_fits(incoming.omit, content.len()) {
            let path = self.path(incoming.id);
            return Err(io_err(&path)(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the ranges to leave out do not fit the content",
            )));
        }
        let entry = Entry {
            size: incoming.head.len() as u64 + content.len() - crate::entry::omitted(incoming.omit),
            head: incoming.head.to_string(),
            omit: incoming.omit.to_vec(),
            success_notices: incoming.success_notices,
            ..Entry::new(
                incoming.id.clone(),
                received_at,
                incoming.envelope.clone(),
                incoming.folder,
            )
        };
        let meta = metadata_line(&entry)?;
        let first = header_v3(content.len(), content.checksum(), &meta);
        let sync = self.sync == SyncMode::PerMessage;
        let dest = self.path(&entry.id);
        match (content.in_memory(), content.spilled()) {
            (Some(bytes), _) => {
                let written =
                    self.write_file(&self.tmp.join(entry.id.as_str()), &[&first, bytes, &meta], sync)?;
                fs::rename(&written, &dest).map_err(io_err(&dest))?;
            }
            (None, Some(spill)) => {
                use std::os::unix::fs::FileExt;
                let file = spill.file();
                let path = spill.path();
                file.write_all_at(&meta, spill.start() + content.len())
                    .and_then(|()| file.write_all_at(&first, 0))
                    .and_then(|()| if sync { file.sync_all() } else { Ok(()) })
                    .map_err(io_err(path))?;
                fs::rename(path, &dest).map_err(io_err(&dest))?;
                spill.keep();
            }
            (None, None) => unreachable!("a content is in memory or in a file"),
        }
        Ok(entry)
    }

    /// A file for a content too large to keep in memory, in `tmp/` (a free one when there
    /// is one), its content to be written behind the first line of a version 3 file. A
    /// crash leaves it in `tmp/`, removed at the next start.
    pub fn spill_file(&self) -> io::Result<SpillFile> {
        static SPILLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = SPILLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = self.tmp.join(format!("spill-{}-{n}", std::process::id()));
        let reused = self
            .free
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop();
        let file = match reused {
            Some(old) if fs::rename(&old, &path).is_ok() => {
                fs::OpenOptions::new().read(true).write(true).open(&path)?
            }
            _ => {
                use std::os::unix::fs::OpenOptionsExt;
                fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .mode(fsync::PRIVATE_FILE)
                    .open(&path)?
            }
        };
        Ok(SpillFile::new(file, path, HEADER_V3 as u64))
    }

    /// Writes a message whose Maildir copies can share its flush, without the flush: the
    /// message is durable, and may be acknowledged, once a [`Spool::flush`] called after
    /// this returned has returned (one flush serves every message written before it). When
    /// `maildir` shares the spool's flushes, every recipient is local and the content is
    /// in memory, each copy is prepared in its folder's `tmp/` ([`Maildir::prepare`])
    /// once the spool file is written, so that the flush covers them all. A copy that
    /// cannot be prepared (a broken folder, a full quota) does not refuse the message: the
    /// prepared ones are removed, and delivery retries from the spool. Returns the entry and
    /// whether every copy was prepared ([`Maildir::publish_prepared`] then publishes them).
    pub(crate) fn write_with_copies(
        &self,
        maildir: &Maildir,
        incoming: Incoming<'_>,
    ) -> Result<(Entry, bool), SpoolError> {
        let Some(body) = incoming.content.in_memory() else {
            // A large content: delivery copies it from the spool file.
            return Ok((self.write(&incoming)?, false));
        };
        if !maildir.shares_spool_flush() || !incoming.envelope.recipients.iter().all(|r| r.local) {
            return Ok((self.write(&incoming)?, false));
        }
        let entry = self.write(&incoming)?;
        let message = crate::entry::delivered(incoming.head.as_bytes(), body, incoming.omit);
        let mut prepared: Vec<crate::maildir::Copy> = Vec::new();
        for index in 0..entry.envelope.recipients.len() {
            let Some(copy) = crate::maildir::Copy::of(&entry, index) else {
                continue;
            };
            match maildir.prepare(&copy, &message) {
                Ok(true) => prepared.push(copy),
                // A folder on another file system: delivery writes and fsyncs it.
                Ok(false) => {}
                Err(e) => {
                    let folder = maildir.folder_path(&copy.owner, copy.folder);
                    tracing::warn!(queue_id = %incoming.id, folder = %folder.display(), error = %e, "cannot prepare a maildir copy; the message is spooled and delivery will retry");
                    for copy in &prepared {
                        maildir.discard_prepared(copy);
                    }
                    return Ok((entry, false));
                }
            }
        }
        let all_prepared = prepared.len() == entry.envelope.recipients.len();
        Ok((entry, all_prepared))
    }

    /// Writes a new spool file, fsync'd with `sync`, over a free one where it is when there
    /// is one (a crash leaves it in `free/`, as free as it was), else at `fresh` (in
    /// `tmp/`); returns the path written, for the caller to rename into `queue/`. Written
    /// in place, a reused file costs one rename instead of two (through `tmp/`).
    fn write_file(&self, fresh: &Path, parts: &[&[u8]], sync: bool) -> Result<PathBuf, SpoolError> {
        let reused = self
            .free
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop();
        if let Some(old) = reused {
            // On failure it is not put back: whatever it holds now, a restart frees it again.
            fsync::write_over(&old, parts, sync).map_err(io_err(&old))?;
            return Ok(old);
        }
        // A file cut short is removed by `finish_new`; one of this name that was there
        // already is not ours to remove.
        fsync::create_new(fresh, fsync::PRIVATE_FILE)
            .and_then(|file| fsync::finish_new(file, fresh, parts, sync))
            .map_err(io_err(fresh))?;
        Ok(fresh.to_path_buf())
    }

    /// Takes the file of a message out of `queue/`: into `free/` for reuse, or deleted
    /// when enough are kept or it is too large to keep. Not durable by itself.
    fn release(&self, id: &QueueId) -> Result<(), SpoolError> {
        let path = self.release_content(id)?;
        // After the content: a state file left alone by a crash is removed at the next
        // start, while a content left without its state would be delivered again.
        remove_if_present(&state_path(&path))
    }

    /// The first half of [`Spool::release`], alone for a message known to have no state
    /// file: its content leaves `queue/`. Returns the path it had there.
    fn release_content(&self, id: &QueueId) -> Result<PathBuf, SpoolError> {
        let path = self.path(id);
        let mut free = self
            .free
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Measured only when there is room to keep it (a file that cannot be measured is
        // removed, which then says why).
        let small = || fs::metadata(&path).is_ok_and(|m| m.len() <= MAX_FREE_SIZE);
        if free.len() < MAX_FREE && small() {
            let dest = self.free_dir.join(id.as_str());
            fs::rename(&path, &dest).map_err(io_err(&path))?;
            free.push(dest);
        } else {
            drop(free);
            fs::remove_file(&path).map_err(io_err(&path))?;
        }
        Ok(path)
    }

    /// Writes `entry` as the message's state file, durably; the content is not touched.
    fn write_state(&self, entry: &Entry) -> Result<(), SpoolError> {
        let tmp = self.tmp.join(format!("{}.state", entry.id));
        let _ = fs::remove_file(&tmp);
        let meta = metadata_line(entry)?;
        // Renamed over the previous state, so its content must be on disk before the
        // rename can be, whatever the sync mode.
        fsync::write_new(&tmp, &[&header_state(&meta), &meta], fsync::PRIVATE_FILE).map_err(io_err(&tmp))?;
        let dest = state_path(&self.path(&entry.id));
        fs::rename(&tmp, &dest).map_err(io_err(&dest))?;
        self.make_durable()
    }

    /// Reads the message's current metadata, lets `change` edit it, and writes it back
    /// durably — or removes the message when no recipient is left pending. Returns the
    /// entry as written. The content is neither read nor rewritten.
    ///
    /// Changes are serialised, so two deliveries working on different recipients of one
    /// message never lose each other's progress.
    pub fn modify(&self, id: &QueueId, change: impl FnOnce(&mut Entry)) -> Result<Entry, SpoolError> {
        let _guard = self
            .modifying
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut entry = self.entry(id)?;
        change(&mut entry);
        if entry.pending.is_empty() {
            self.remove(id)?;
        } else {
            self.write_state(&entry)?;
        }
        Ok(entry)
    }

    /// Reads a stored message (its header lines, then its content) and checks it is whole.
    pub fn load(&self, id: &QueueId) -> Result<(Entry, Vec<u8>), SpoolError> {
        read_queued(&self.queue, id, true)
    }

    /// Reads only a stored message's metadata (the content is not read or checked): enough
    /// to decide whether it is due.
    pub fn entry(&self, id: &QueueId) -> Result<Entry, SpoolError> {
        read_queued(&self.queue, id, false).map(|(entry, _)| entry)
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
    pub(crate) fn withdraw(&self, maildir: &Maildir, entry: &Entry) -> Result<(), SpoolError> {
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
        let state = state_path(&path);
        if state.exists() {
            let dest = state_path(&dest);
            fs::rename(&state, &dest).map_err(io_err(&dest))?;
        }
        fsync::sync_dir(&self.queue).map_err(io_err(&self.queue))
    }

    /// Every queued message id, oldest first.
    pub fn list(&self) -> Result<Vec<QueueId>, SpoolError> {
        list_queue(&self.queue)
    }
}

/// Large contents go to the spool's `tmp/`, in the file the 250 will make durable.
impl portcullis_smtp::content::SpillSource for Spool {
    fn open(&self) -> io::Result<SpillFile> {
        self.spill_file()
    }

    fn failed(&self, error: &io::Error) {
        tracing::warn!(%error, "a message's content could not be written to the spool; it is answered 452 4.3.1");
    }
}

/// Removes the file at `path`; not there is fine.
fn remove_if_present(path: &Path) -> Result<(), SpoolError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err(path)(e)),
        _ => Ok(()),
    }
}

/// The ids of the messages in `queue`, oldest first, and the state files whose message is
/// gone (left by a crash between the two removals of [`Spool::release`]).
fn scan_queue(queue: &Path) -> Result<(Vec<QueueId>, Vec<PathBuf>), SpoolError> {
    let mut ids = Vec::new();
    let mut states = Vec::new();
    for item in fs::read_dir(queue).map_err(io_err(queue))? {
        let item = item.map_err(io_err(queue))?;
        let name = item.file_name();
        let name = name.to_string_lossy();
        if let Some(id) = QueueId::parse(&name) {
            ids.push(id);
        } else if let Some(id) = name.strip_suffix(".state").and_then(QueueId::parse) {
            states.push(id);
        } else {
            tracing::warn!(file = %name, "ignoring a foreign file in the spool queue");
        }
    }
    ids.sort();
    let orphans = states
        .into_iter()
        .filter(|id| ids.binary_search(id).is_err())
        .map(|id| queue.join(format!("{id}.state")))
        .collect();
    Ok((ids, orphans))
}

/// The ids of the messages in `queue`, oldest first.
pub(crate) fn list_queue(queue: &Path) -> Result<Vec<QueueId>, SpoolError> {
    scan_queue(queue).map(|(ids, _)| ids)
}

#[cfg(test)]
mod tests;
