//! The spool: one file per accepted message, durable before the 250.
//!
//! A message's file is written to `tmp/` (over a reused file from `free/` when there is
//! one), renamed into `queue/` and made durable before the 250; delivery rewrites it as
//! recipients are done and releases it at the end. The format is [`crate::file`]'s.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use portcullis_smtp::Folder;
use portcullis_smtp::envelope::Envelope;

use crate::Maildir;
use crate::commit::{Committer, SyncMode};
pub use crate::entry::{Entry, Incoming, QueueId};
use crate::file::{check_id, checksum, header, metadata_line, read_spool_file};
use crate::fsync;

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
        {
            let mut free = spool
                .free
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for item in fs::read_dir(&spool.free_dir).map_err(io_err(&spool.free_dir))? {
                let path = item.map_err(io_err(&spool.free_dir))?.path();
                if free.len() < MAX_FREE {
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
    pub(crate) fn write_with_copies(
        &self,
        maildir: &Maildir,
        incoming: Incoming<'_>,
    ) -> Result<Entry, SpoolError> {
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
            fsync::write_new(path, parts, fsync::PRIVATE_FILE)
        } else {
            fsync::write_new_unsynced(path, parts, fsync::PRIVATE_FILE)
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
    pub(crate) fn flush(&self) -> Result<(), SpoolError> {
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
    pub(crate) fn retire_after_flush(&self, id: QueueId) -> Result<(), SpoolError> {
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
    pub(crate) fn retiring(&self) -> usize {
        self.retiring
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }

    /// Releases the files of [`Spool::retire_after_flush`] a completed flush now covers. A
    /// file that cannot be moved stays in `queue/`; recovery settles it at the next start.
    pub(crate) fn release_flushed(&self) {
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
    pub(crate) fn sync_mode(&self) -> SyncMode {
        self.sync
    }

    /// Group flushes run so far (tests).
    #[cfg(test)]
    fn flushes(&self) -> u64 {
        self.committer.flushes()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::file::MAGIC_V1;
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
        let updated = spool.modify(&entry.id, |e| e.pending.truncate(0)).unwrap();
        assert_eq!(updated.pending, Vec::<usize>::new());
        assert!(spool.list().unwrap().is_empty(), "nothing pending: removed");
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
