//! The Maildir courier: writes each local recipient's copy into its mailbox
//! (`portcullis_spool::Maildir`), a few messages at once (each is mostly fsync wait).

use std::sync::Arc;
use std::time::Duration;

use portcullis_smtp::client::RecipientResult;
use portcullis_smtp::{Enhanced, Reply};
use portcullis_spool::{Entry, Maildir, Spool};
use tokio::sync::Semaphore;

use super::{Courier, Delivering, Outcome, Parcel};

/// Messages delivered into mailboxes at once.
const PARALLEL: usize = 4;
/// Delays between attempts of a failing copy (a full disk, a broken folder).
const RETRY: [Duration; 5] = [
    Duration::from_secs(5),
    Duration::from_secs(30),
    Duration::from_secs(60),
    Duration::from_secs(300),
    Duration::from_secs(900),
];

/// Delivers into `<data-dir>/mail`.
pub struct MaildirCourier {
    spool: Arc<Spool>,
    maildir: Maildir,
    slots: Semaphore,
}

impl MaildirCourier {
    /// A courier writing into `maildir`, whose copies may ride on `spool`'s flushes.
    pub fn new(spool: Arc<Spool>, maildir: Maildir) -> Self {
        MaildirCourier {
            spool,
            maildir,
            slots: Semaphore::new(PARALLEL),
        }
    }

    /// Writes the copies, and makes them durable before saying so.
    fn write(spool: &Spool, maildir: &Maildir, parcel: &Parcel) -> Vec<Outcome> {
        let results = maildir.deliver_copies(
            &parcel.entry,
            &parcel.recipients,
            &[parcel.message.as_slice()],
            parcel.recovering,
        );
        let mut delivered = results.iter().any(|(_, r)| r.is_ok());
        if delivered && maildir.shares_spool_flush() {
            // The copies become durable by a flush of the spool's file system; no client
            // waits on it, so it rides on the next session's when one comes soon.
            if let Err(e) = spool.flush_soon() {
                tracing::warn!(queue_id = %parcel.entry.id, error = %e, "cannot flush the delivered copies; trying again later");
                delivered = false;
            }
        }
        results
            .into_iter()
            .map(|(index, result)| {
                let result = match result {
                    Ok(()) if delivered => RecipientResult::Deliver(Reply::fixed(
                        250,
                        Some(Enhanced(2, 0, 0)),
                        "delivered to mailbox",
                    )),
                    Ok(()) => RecipientResult::Defer(Reply::fixed(
                        451,
                        Some(Enhanced(4, 3, 0)),
                        "the mailbox copy is not durable yet",
                    )),
                    Err(e) => {
                        let to = &parcel.entry.envelope.recipients[index].mailbox;
                        tracing::warn!(queue_id = %parcel.entry.id, %to, error = %e, "maildir delivery failed; the message stays in the spool");
                        RecipientResult::Defer(Reply::new(
                            451,
                            Some(Enhanced(4, 3, 0)),
                            format!("cannot write to the mailbox: {e}"),
                        ))
                    }
                };
                Outcome {
                    index,
                    result,
                    host: None,
                    peer_dsn: false,
                }
            })
            .collect()
    }
}

impl Courier for MaildirCourier {
    fn batches(&self, _entry: &Entry, recipients: Vec<usize>) -> Vec<Vec<usize>> {
        vec![recipients]
    }

    fn carry(&self, parcel: Parcel) -> Delivering<'_> {
        Box::pin(async move {
            // Never closed: the courier lives as long as the scheduler.
            let _slot = self.slots.acquire().await.ok();
            let (spool, maildir) = (Arc::clone(&self.spool), self.maildir.clone());
            let recipients = parcel.recipients.clone();
            match tokio::task::spawn_blocking(move || Self::write(&spool, &maildir, &parcel)).await {
                Ok(outcomes) => outcomes,
                Err(e) => {
                    tracing::error!(error = %e, "maildir delivery task failed");
                    let reply = Reply::fixed(451, Some(Enhanced(4, 3, 0)), "local delivery failed");
                    Outcome::all(&recipients, &RecipientResult::Defer(reply), None)
                }
            }
        })
    }

    fn retry_after(&self, attempts: u32) -> Duration {
        RETRY[(attempts as usize).saturating_sub(1).min(RETRY.len() - 1)]
    }
}
