//! A read-only view of a spool, for looking at the queue (`portcullis queue list`) while a
//! daemon owns it: it never creates, removes, renames or takes a file, and needs no lock.
//!
//! A message listed may be delivered (its file gone) before it is read: readers get
//! `NotFound` for it and should pass over it.

use std::path::{Path, PathBuf};

use crate::queue::{self, Entry, QueueId, SpoolError};

/// The queue of a spool directory, read only.
#[derive(Debug)]
pub struct SpoolView {
    queue: PathBuf,
}

impl SpoolView {
    /// Looks at the spool in `dir`; an error when it has no `queue/` (no spool there).
    pub fn open(dir: &Path) -> Result<SpoolView, SpoolError> {
        let queue = dir.join("queue");
        std::fs::metadata(&queue).map_err(|source| SpoolError::Io {
            path: queue.clone(),
            source,
        })?;
        Ok(SpoolView { queue })
    }

    /// Every queued message id, oldest first.
    pub fn list(&self) -> Result<Vec<QueueId>, SpoolError> {
        queue::list_queue(&self.queue)
    }

    /// A queued message's metadata only (its content neither read nor checked): what a
    /// listing needs, at the cost of a few hundred octets per message.
    pub fn entry(&self, id: &QueueId) -> Result<Entry, SpoolError> {
        crate::file::read_queued(&self.queue, id, false).map(|(entry, _)| entry)
    }

    /// A queued message, checked whole.
    pub fn load(&self, id: &QueueId) -> Result<(Entry, Vec<u8>), SpoolError> {
        crate::file::read_queued(&self.queue, id, true)
    }
}
