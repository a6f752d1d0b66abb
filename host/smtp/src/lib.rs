//! The sans-IO SMTP core of Portcullis.
//!
//! No sockets, no async runtime, no clock: bytes and host answers go in, actions come out.
//! The one file it writes is the one the host hands it for a content larger than its
//! memory ([`content::SpillSource`]).
//! Everything the server can say on the wire is decided here, so every transcript of the
//! RFCs and of the security advisories can be a unit test without a network.
//!
//! # Layout
//!
//! - [`reply`]: the [`Reply`] value every answer is made of.
//! - [`replies`]: every reply the server can send, in one place.
//! - [`address`]: RFC 5321 paths and mailboxes, and the relay hazards in them.
//! - [`envelope`]: sender, recipients and their ESMTP / DSN parameters.
//! - [`command`]: one command line in, one [`Command`] out.
//! - [`data`]: DATA and BDAT content receivers with strict CRLF and limits.
//! - [`content`]: a content as it arrives, in memory up to a budget, then in the
//!   host's spill file.
//! - [`session`]: the state machine, generic over the two fixed pipelines
//!   ([`Mx`] and [`Submission`]), stopping at named states for the host.
//! - [`received`]: the `Received:` trace header.
//! - [`escape`]: client-supplied text made safe for log lines.
//! - [`client`]: the other side: reply parser, EHLO extensions, our commands and
//!   dot-stuffing for outbound delivery.

#![forbid(unsafe_code)]

pub mod address;
pub mod client;
pub mod command;
pub mod content;
pub mod data;
pub mod envelope;
pub mod escape;
pub mod fields;
pub mod mime;
pub mod received;
pub mod replies;
pub mod reply;
pub mod session;

pub use address::Mailbox;
pub use command::Command;
pub use content::Content;
pub use envelope::Envelope;
pub use reply::{Enhanced, Reply};
pub use session::{
    Action, AuthOutcome, Destination, Directory, Folder, Hook, HookCall, Limits, Message, Mx, Pipeline,
    Session, Settings, SpoolRequest, Submission, Verdict,
};
