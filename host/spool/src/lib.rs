//! Durable storage of Portcullis: nothing is acknowledged before it is here.
//!
//! # Layout
//!
//! - [`queue`]: the spool. A message and its envelope are written to `tmp/` (over a
//!   reused file from `free/` when there is one), renamed into `queue/` and made durable
//!   (group flush, or fsyncs of file and directory) before the session may say 250.
//!   A content too large for memory is written as it arrives into a file in `tmp/`
//!   ([`queue::Spool::spill_file`]), the one that is renamed into `queue/`. A change of
//!   metadata goes to a state file beside the content, never rewriting it.
//!   Whatever `queue/` holds at start is recovered; `tmp/` leftovers are half-written
//!   messages and are removed, never delivered.
//! - [`maildir`]: local delivery (`tmp/` → `new/`, fsync'd, or prepared before the spool's
//!   flush and published after it), with names derived from the queue id so that a
//!   delivery repeated after a crash is recognised and not duplicated.
//! - [`writer`]: the spool writer thread: the life of an accepted message up to its 250
//!   and just after (written, durable, answered, published, released).
//! - [`view`]: a read-only view of the queue, for looking at it while a daemon owns it
//!   (the daemon holds `spool/lock`).
//! - [`entry`]: the queue id and what the spool knows of a message besides its content.
//! - [`file`]: the spool file format (version 3: lengths and CRC-32s first, content,
//!   metadata; the state file; versions 1 and 2 still read).
//! - [`commit`]: group commit — concurrent writers share one `syncfs` of the spool.
//! - [`fsync`]: the small helpers both use.

#![forbid(unsafe_code)]

pub mod commit;
pub mod entry;
pub mod file;
pub mod fsync;
pub mod maildir;
pub mod queue;
pub mod view;
pub mod writer;

pub use commit::SyncMode;
pub use maildir::{Copied, Copy, Maildir};
pub use queue::{Entry, Incoming, QueueId, Spool, SpoolError};
pub use view::SpoolView;
pub use writer::{Accepted, Handoff, Writer};
