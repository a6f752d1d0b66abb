//! When the spool's writes become durable: group flushes (or fsyncs), and the release of
//! delivered messages' files once a flush covers their delivery.

use std::fs;

use super::{Spool, SpoolError, io_err};
use crate::commit::SyncMode;
use crate::entry::QueueId;
use crate::fsync;

impl Spool {
    /// Makes every change made so far to `queue/` durable: one fsync of the directory, or
    /// a share of a group flush (after which the files [`Spool::retire_after_flush`] was
    /// waiting on are released).
    pub(super) fn make_durable(&self) -> Result<(), SpoolError> {
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
    /// every copy delivered already. Only for a message published as it was written (the
    /// spool writer's), which never had a state file.
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
            // Published by the spool writer as it was written, never changed by delivery:
            // there is no state file to remove (those come from `Spool::modify`).
            if let Err(e) = self.release_content(&id) {
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
    pub(super) fn flushes(&self) -> u64 {
        self.committer.flushes()
    }
}
