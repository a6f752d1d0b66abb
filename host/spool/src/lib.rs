//! Durable storage of Portcullis: nothing is acknowledged before it is here.
//!
//! # Layout
//!
//! - [`queue`]: the spool. A message and its envelope are written to `tmp/`, fsync'd,
//!   renamed into `queue/` and the directory fsync'd before the session may say 250.
//!   Whatever `queue/` holds at start is recovered; `tmp/` leftovers are half-written
//!   messages and are removed, never delivered.
//! - [`maildir`]: local delivery (`tmp/` → `new/`, fsync'd), with names derived from the
//!   queue id so that a delivery repeated after a crash is recognised and not duplicated.
//! - [`commit`]: group commit — concurrent writers share one `syncfs` of the spool.
//! - [`fsync`]: the small helpers both use.

#![forbid(unsafe_code)]

pub mod commit;
pub mod fsync;
pub mod maildir;
pub mod queue;

pub use commit::SyncMode;
pub use maildir::{Delivery, Maildir};
pub use queue::{Entry, QueueId, Spool, SpoolError};
