//! The free space of the spool's file system, for `[limits] spool-min-free`: a session
//! asks before it takes a transaction (MAIL FROM gets `452 4.3.1` when the disk is short),
//! and the shortage is logged, at most once a minute, so the operator hears of it from the
//! log rather than from senders.

use std::fs::File;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use bytesize::ByteSize;

/// How often a shortage is logged while it lasts, in seconds.
const WARN_EVERY: u64 = 60;

/// What the log says of a shortage, at start and while it lasts.
const SHORT: &str = "the spool's disk is short of space: new mail is answered 452 4.3.1 until more is free ([limits] spool-min-free)";

/// The spool directory's file system, measured at each question.
#[derive(Debug)]
pub struct SpoolRoom {
    /// The spool directory, open: measured without a path lookup (`fstatvfs`).
    dir: File,
    /// When a shortage was last logged, in seconds since the epoch (0: never).
    warned: AtomicU64,
}

impl SpoolRoom {
    /// Measures the file system holding `dir`.
    pub fn open(dir: &Path) -> std::io::Result<SpoolRoom> {
        Ok(SpoolRoom {
            dir: File::open(dir)?,
            warned: AtomicU64::new(0),
        })
    }

    /// The octets the daemon may still write there (blocks kept for root not counted).
    pub fn free(&self) -> std::io::Result<u64> {
        Ok(available(&rustix::fs::fstatvfs(&self.dir)?))
    }

    /// Logs the free space at start against `keep` (`[limits] spool-min-free`): a warning
    /// when mail would wait already.
    pub fn report(&self, keep: u64) {
        let free = match self.free() {
            Ok(free) => ByteSize(free),
            Err(e) => return tracing::warn!(error = %e, "cannot measure the spool's free space"),
        };
        let keep = ByteSize(keep);
        if free < keep {
            tracing::warn!(%free, %keep, "{SHORT}");
        } else {
            tracing::info!(%free, %keep, "spool disk");
        }
    }

    /// Whether a shortage may be logged now (one caller a minute gets `true`).
    fn time_to_warn(&self) -> bool {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let last = self.warned.load(Ordering::Relaxed);
        now >= last.saturating_add(WARN_EVERY)
            && self
                .warned
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

impl portcullis_smtp::content::Room for SpoolRoom {
    fn has(&self, octets: u64) -> bool {
        let free = match self.free() {
            Ok(free) => free,
            Err(e) => {
                // Mail is not refused for want of a measurement.
                if self.time_to_warn() {
                    tracing::warn!(error = %e, "cannot measure the spool's free space; taking mail as if there were room");
                }
                return true;
            }
        };
        let short = free < octets;
        crate::metrics::spool_room(free, short);
        if short && self.time_to_warn() {
            tracing::warn!(
                free = %ByteSize(free),
                needed = %ByteSize(octets),
                "{SHORT}"
            );
        }
        !short
    }
}

/// The octets an unprivileged writer may still use on a file system.
fn available(stat: &rustix::fs::StatVfs) -> u64 {
    stat.f_bavail.saturating_mul(stat.f_frsize)
}

/// What `check-config` says when the disk the spool is (or will be) on has less free now
/// than `keep` (`[limits] spool-min-free`): measured at `<data-dir>/spool`, or the nearest
/// of its parents that exists.
pub fn disk_warning(data_dir: &Path, keep: u64) -> Option<String> {
    let spool = data_dir.join("spool");
    let measured = spool.ancestors().find(|p| p.exists())?;
    let free = available(&rustix::fs::statvfs(measured).ok()?);
    (free < keep).then(|| {
        format!(
            "the disk of {} has {} free, less than limits.spool-min-free ({}): serve would answer MAIL FROM 452 4.3.1 until more is free",
            measured.display(),
            ByteSize(free),
            ByteSize(keep)
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_smtp::content::Room;

    #[test]
    fn the_spool_disk_has_what_statvfs_says_and_no_more() {
        let dir = tempfile::tempdir().unwrap();
        let room = SpoolRoom::open(dir.path()).unwrap();
        let free = room.free().unwrap();
        assert!(free > 0, "a disk the tests write to has some room");
        assert!(room.has(0));
        assert!(room.has(free / 2));
        assert!(!room.has(u64::MAX), "nobody has 16 EiB free");
        assert!(
            !room.time_to_warn(),
            "the refusal above logged; the next one waits"
        );
    }
}
