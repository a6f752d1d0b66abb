//! Couriers: what carries a batch of one message's recipients to where they go. The
//! [scheduler](crate::scheduler) decides when and which recipients; a courier only
//! delivers and says, for each recipient, what happened.
//!
//! - [`maildir::MaildirCourier`]: our own domains' mailboxes.
//! - [`lmtp::LmtpCourier`]: our own domains' mailboxes, kept by an LMTP server (Dovecot).
//! - [`smtp::SmtpCourier`]: other domains, over SMTP (routes, relay host, MX).

pub mod lmtp;
pub mod maildir;
pub mod smtp;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use portcullis_smtp::client::RecipientResult;
use portcullis_spool::Entry;

/// What a courier is given: a message and the recipients of it to carry.
#[derive(Clone, Debug)]
pub struct Parcel {
    /// The message's spool entry as read for this attempt.
    pub entry: Arc<Entry>,
    /// The message as delivered: its header lines, then its content.
    pub message: Arc<Vec<u8>>,
    /// Indices into the envelope's recipients, all of this courier's kind.
    pub recipients: Vec<usize>,
    /// The message was found in the spool at start, or was tried before: a copy may have
    /// been delivered by an attempt that did not live to record it.
    pub recovering: bool,
}

/// What happened to one recipient.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// The recipient's index in the envelope.
    pub index: usize,
    /// Delivered, failed for good, or to be tried again; with the reply that says so.
    pub result: RecipientResult,
    /// The host that answered (SMTP).
    pub host: Option<String>,
    /// The next hop announced DSN and takes over success reports (SMTP).
    pub peer_dsn: bool,
}

impl Outcome {
    /// `result` for each of `recipients`, answered by `host`.
    pub fn all(recipients: &[usize], result: &RecipientResult, host: Option<&str>) -> Vec<Outcome> {
        recipients
            .iter()
            .map(|&index| Outcome {
                index,
                result: result.clone(),
                host: host.map(str::to_string),
                peer_dsn: false,
            })
            .collect()
    }
}

/// A delivery under way.
pub type Delivering<'a> = Pin<Box<dyn Future<Output = Vec<Outcome>> + Send + 'a>>;

/// Carries recipients of one kind (local or remote).
pub trait Courier: Send + Sync {
    /// Splits the recipients of `entry` due now into batches, each delivered on its own
    /// and all at once (SMTP: one per destination domain).
    fn batches(&self, entry: &Entry, recipients: Vec<usize>) -> Vec<Vec<usize>>;

    /// Delivers one batch. Every recipient of the parcel gets an outcome; a copy is
    /// durable where it went before its outcome says delivered.
    fn carry(&self, parcel: Parcel) -> Delivering<'_>;

    /// How long to wait before trying a recipient again after `attempts` attempts.
    fn retry_after(&self, attempts: u32) -> Duration;
}
