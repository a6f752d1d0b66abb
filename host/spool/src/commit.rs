//! Group commit: sessions that reach the end of DATA together share one flush of the spool's
//! file system.
//!
//! Each writer puts its file in place without an fsync of its own, then calls
//! [`Committer::commit`]. One caller at a time becomes the leader and runs `syncfs(2)` on
//! the spool's file system, which makes every write and rename made before it durable
//! (file data, inodes and directory entries alike, ext4 and XFS both flush their journal
//! and the device cache); the writers whose work was done before that flush began return
//! together. A writer that arrives while a flush runs waits for the next one. No caller
//! returns before a flush that started after its own writes has completed, so the 250 that
//! follows is never early.
//!
//! Why `syncfs` and not one `fsync` per file: on this project's disk a file + directory
//! fsync costs ~350 µs, and N concurrent messages pay N of them; one `syncfs` covers all N
//! (docs/benchmarks.md has the numbers). A file whose flush never completed (a crash
//! before it) can be found incomplete at recovery; every spool file carries a checksum of
//! its content, so such a file is recognised and never delivered — and no client was ever
//! told 250 for it.

use std::fs::File;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How the spool makes a message durable before the 250.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SyncMode {
    /// One `syncfs` shared by all messages that reach it together (the default).
    #[default]
    Group,
    /// `fsync` of each file and of the directory, per message.
    PerMessage,
}

#[derive(Debug, Default)]
struct State {
    /// Commit requests handed out so far.
    issued: u64,
    /// Every request up to this one is durable.
    done: u64,
    /// A leader is flushing.
    running: bool,
}

/// The leader/follower rendezvous around `syncfs`.
#[derive(Debug)]
pub struct Committer {
    fs: File,
    state: Mutex<State>,
    finished: Condvar,
    flushes: AtomicU64,
}

impl Committer {
    /// A committer for the file system holding `dir`.
    pub fn new(dir: &Path) -> io::Result<Self> {
        Ok(Committer {
            fs: File::open(dir)?,
            state: Mutex::new(State::default()),
            finished: Condvar::new(),
            flushes: AtomicU64::new(0),
        })
    }

    /// Returns once everything this thread wrote before the call is on stable storage.
    pub fn commit(&self) -> io::Result<()> {
        self.commit_within(Duration::ZERO)
    }

    /// [`Committer::commit`], but first waits up to `patience` for a flush someone else
    /// starts, leading one only if none comes. For work nobody waits on (retiring a
    /// delivered message): under any load it rides on the next session's flush instead of
    /// adding one of its own.
    pub fn commit_within(&self, patience: Duration) -> io::Result<()> {
        let deadline = Instant::now() + patience;
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.issued += 1;
        let mine = state.issued;
        loop {
            if state.done >= mine {
                return Ok(());
            }
            let now = Instant::now();
            if !state.running && now < deadline {
                state = self
                    .finished
                    .wait_timeout(state, deadline - now)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
                continue;
            }
            if !state.running {
                // Lead: every request issued so far is covered by a flush starting now.
                state.running = true;
                let upto = state.issued;
                drop(state);
                let result = rustix::fs::syncfs(&self.fs).map_err(io::Error::from);
                self.flushes.fetch_add(1, Ordering::Relaxed);
                state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
                state.running = false;
                if result.is_ok() {
                    state.done = state.done.max(upto);
                }
                self.finished.notify_all();
                // On failure the others wake, find their request not done and flush again;
                // each reports its own error if the disk keeps refusing.
                result?;
                continue;
            }
            state = self.finished.wait(state).unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// A mark for "everything this thread wrote so far", without waiting for a flush: it is
    /// [covered](Committer::covers) once a flush that started after this call has
    /// completed.
    pub fn ticket(&self) -> u64 {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.issued += 1;
        state.issued
    }

    /// Whether a flush has made everything before `ticket` durable.
    pub fn covers(&self, ticket: u64) -> bool {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).done >= ticket
    }

    /// Flushes run so far (for tests and benchmarks).
    pub fn flushes(&self) -> u64 {
        self.flushes.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_patient_commit_rides_on_the_next_flush_or_leads_one_after_its_wait() {
        let dir = tempfile::tempdir().unwrap();
        let committer = Arc::new(Committer::new(dir.path()).unwrap());
        // Nobody else flushes: it leads its own after its patience.
        let started = Instant::now();
        committer.commit_within(Duration::from_millis(20)).unwrap();
        assert!(started.elapsed() >= Duration::from_millis(20));
        assert_eq!(committer.flushes(), 1);
        // Someone else's flush comes first: one flush serves both.
        let patient = {
            let c = Arc::clone(&committer);
            std::thread::spawn(move || c.commit_within(Duration::from_secs(10)))
        };
        while committer.state.lock().unwrap().issued < 2 {
            std::thread::yield_now();
        }
        committer.commit().unwrap();
        patient.join().unwrap().unwrap();
        assert_eq!(committer.flushes(), 2);
    }

    #[test]
    fn a_ticket_is_covered_by_the_next_flush_only() {
        let dir = tempfile::tempdir().unwrap();
        let committer = Committer::new(dir.path()).unwrap();
        committer.commit().unwrap();
        let ticket = committer.ticket();
        assert!(!committer.covers(ticket));
        committer.commit().unwrap();
        assert!(committer.covers(ticket));
        assert!(!committer.covers(committer.ticket()));
    }

    #[test]
    fn concurrent_commits_share_flushes_and_all_return() {
        let dir = tempfile::tempdir().unwrap();
        let committer = Arc::new(Committer::new(dir.path()).unwrap());
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let c = Arc::clone(&committer);
                let path = dir.path().join(format!("f{t}"));
                std::thread::spawn(move || {
                    for i in 0..25 {
                        std::fs::write(&path, format!("{i}")).unwrap();
                        c.commit().unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let flushes = committer.flushes();
        assert!(
            (1..200).contains(&flushes),
            "{flushes} flushes for 200 commits: none shared"
        );
        let state = committer.state.lock().unwrap();
        assert_eq!(state.done, 200);
        assert!(!state.running);
    }
}
