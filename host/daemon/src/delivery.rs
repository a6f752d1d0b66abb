//! Local delivery: takes spooled messages, writes each local recipient's copy into its
//! Maildir, and retires the spool file once nothing local is left.
//!
//! Recipients in other domains (accepted on submission) stay pending in the spool and the
//! message is handed to the outbound queue runner (`portcullis-outbound`). A failed local delivery (disk full, permissions) is retried with
//! a growing delay; the message stays safe in the spool meanwhile.

use std::sync::Arc;
use std::time::Duration;

use portcullis_outbound::Outbound;
use portcullis_outbound::dsn::{self, RecipientReport};
use portcullis_smtp::{Enhanced, Reply};
use portcullis_spool::{Entry, Maildir, QueueId, Spool, SpoolError};
use tokio::sync::{Notify, Semaphore, mpsc};

/// Deliveries running at once (each is mostly fsync wait).
const PARALLEL: usize = 4;
/// How long delivered messages' spool files may wait for a session's flush before the
/// sweeper runs one (they are safe meanwhile; only `queue/` shows them).
const RETIRE_SWEEP: Duration = Duration::from_millis(50);
/// Delays between attempts of a failing local delivery.
const RETRY: [Duration; 5] = [
    Duration::from_secs(5),
    Duration::from_secs(30),
    Duration::from_secs(60),
    Duration::from_secs(300),
    Duration::from_secs(900),
];

/// One message to deliver.
#[derive(Clone, Debug)]
pub struct Job {
    /// The spooled message.
    pub id: QueueId,
    /// It was found in the spool at start: look in `cur/` too before writing a copy.
    pub recovering: bool,
    /// Attempts made so far.
    pub attempts: usize,
}

impl Job {
    /// A job for a message just accepted.
    pub fn new(id: QueueId) -> Self {
        Job {
            id,
            recovering: false,
            attempts: 0,
        }
    }
}

/// What one delivery run achieved.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// Every recipient is done; the spool file is gone.
    Finished,
    /// Local recipients are done; these many remote ones wait for outbound delivery.
    AwaitingOutbound(usize),
}

#[derive(Debug, thiserror::Error)]
enum DeliveryError {
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error("maildir delivery to {recipient} failed: {source}")]
    Maildir {
        recipient: String,
        source: std::io::Error,
    },
}

/// Starts local delivery and the outbound queue runner behind it; send jobs through the
/// returned channel. A message goes to local delivery first; what is left for other domains
/// is handed to the runner, and the reports the runner queues come back here first. The
/// returned `Notify` wakes the sweeper when the spool writer has published a message whose
/// spool file waits for a flush (`portcullis_spool::writer`).
pub fn start(
    spool: Arc<Spool>,
    maildir: Maildir,
    outbound: portcullis_outbound::Routing,
) -> (mpsc::UnboundedSender<Job>, Outbound, Arc<Notify>) {
    let (tx, mut rx) = mpsc::unbounded_channel::<Job>();
    let requeue = tx.clone();
    let handoff = tx.clone();
    let outbound = Outbound::start(
        Arc::clone(&spool),
        outbound,
        Arc::new(move |id| {
            let _ = handoff.send(Job::new(id));
        }),
    );
    let runner = outbound.clone();
    let sweep = Arc::new(Notify::new());
    {
        let (spool, sweep) = (Arc::clone(&spool), Arc::clone(&sweep));
        tokio::spawn(async move {
            loop {
                sweep.notified().await;
                tokio::time::sleep(RETIRE_SWEEP).await;
                let spool = Arc::clone(&spool);
                let swept =
                    tokio::task::spawn_blocking(move || spool.flush_retiring(Duration::from_millis(5))).await;
                if let Ok(Err(e)) = swept {
                    tracing::warn!(error = %e, "cannot flush the spool to retire delivered messages; recovery will");
                }
            }
        });
    }
    tokio::spawn(async move {
        let slots = Arc::new(Semaphore::new(PARALLEL));
        while let Some(job) = rx.recv().await {
            let Ok(permit) = Arc::clone(&slots).acquire_owned().await else {
                break;
            };
            let (spool, maildir, requeue) = (Arc::clone(&spool), maildir.clone(), requeue.clone());
            let runner = runner.clone();
            tokio::spawn(async move {
                let run = job.clone();
                let (reports, settings) = (requeue.clone(), runner.settings());
                let result = tokio::task::spawn_blocking(move || {
                    let notices = Notices {
                        settings: &settings.settings,
                        deliveries: &reports,
                    };
                    run_local(&spool, &maildir, &run, &notices)
                })
                .await;
                drop(permit);
                match result {
                    Ok(Ok(Outcome::Finished)) => tracing::info!(queue_id = %job.id, "delivered"),
                    Ok(Ok(Outcome::AwaitingOutbound(n))) => {
                        tracing::info!(queue_id = %job.id, remote = n, "local copies delivered; remote recipients go to the outbound queue");
                        runner.submit(job.id);
                    }
                    Ok(Err(e)) => {
                        let delay = RETRY[job.attempts.min(RETRY.len() - 1)];
                        tracing::warn!(queue_id = %job.id, error = %e, retry_in = ?delay, "delivery failed; the message stays in the spool");
                        let next = Job {
                            attempts: job.attempts + 1,
                            recovering: true,
                            ..job
                        };
                        tokio::spawn(async move {
                            tokio::time::sleep(delay).await;
                            let _ = requeue.send(next);
                        });
                    }
                    Err(e) => tracing::error!(queue_id = %job.id, error = %e, "delivery task failed"),
                }
            });
        }
    });
    (tx, outbound, sweep)
}

/// What a delivery run needs to tell senders of successful deliveries.
struct Notices<'a> {
    settings: &'a portcullis_outbound::DeliverySettings,
    /// Where a queued report goes to be delivered.
    deliveries: &'a mpsc::UnboundedSender<Job>,
}

impl Notices<'_> {
    /// Queues the "delivered" report for the local recipients of `entry` just delivered
    /// (`delivered`), those whose NOTIFY asks for one; before they leave the spool, so that
    /// a crash can repeat a report, never lose one.
    fn delivered(
        &self,
        spool: &Spool,
        entry: &Entry,
        message: &[u8],
        delivered: &[usize],
    ) -> Result<(), SpoolError> {
        if !entry.success_notices || delivered.is_empty() {
            return Ok(());
        }
        let recipients = delivered
            .iter()
            .map(|&index| RecipientReport {
                index,
                remote_mta: None,
                reply: Reply::new(250, Some(Enhanced(2, 0, 0)), "delivered to mailbox"),
            })
            .collect();
        let report = dsn::Pending {
            entry,
            message,
            action: dsn::ReportAction::Deliver,
            recipients,
            retry_until: None,
        };
        if let Some(queued) = dsn::queue_report(spool, self.settings, report)? {
            tracing::info!(queue_id = %entry.id, dsn_id = %queued.id, "delivery report queued for the sender");
            let _ = self.deliveries.send(Job::new(queued.id));
        }
        Ok(())
    }
}

fn run_local(
    spool: &Spool,
    maildir: &Maildir,
    job: &Job,
    notices: &Notices<'_>,
) -> Result<Outcome, DeliveryError> {
    let (mut entry, message) = match spool.load(&job.id) {
        Ok(loaded) => loaded,
        Err(SpoolError::Corrupt { path, reason }) => {
            tracing::error!(queue_id = %job.id, path = %path.display(), %reason, "corrupt spool file moved to spool/corrupt; it will not be delivered");
            spool.quarantine(&job.id)?;
            return Ok(Outcome::Finished);
        }
        Err(e) => return Err(e.into()),
    };
    let before = entry.pending.len();
    let portcullis_spool::Pending { remaining, failure } =
        maildir.deliver_pending(&entry, &[&message], job.recovering);
    let failure = failure.map(|(recipient, source)| DeliveryError::Maildir { recipient, source });
    let delivered: Vec<usize> = entry
        .pending
        .iter()
        .copied()
        .filter(|i| entry.envelope.recipients.get(*i).is_some_and(|r| r.local) && !remaining.contains(i))
        .collect();
    notices.delivered(spool, &entry, &message, &delivered)?;
    if maildir.shares_spool_flush() && remaining.len() != before {
        // The copies are durable before the spool forgets them; no client waits on this
        // flush, so it rides on the next session's when one comes soon.
        spool.flush_soon()?;
        if remaining.is_empty() && entry.envelope.recipients.iter().all(|r| r.local) {
            // Nothing else works on an all-local message: retire it without a flush of its
            // own (a crash that loses the removal finds every copy delivered already).
            spool.retire(&entry.id)?;
            return Ok(Outcome::Finished);
        }
    }
    if remaining.len() != before {
        // Only the local recipients are ours to settle; outbound delivery may have settled
        // remote ones meanwhile (a `queue flush`), and its record is kept.
        let recipients = &entry.envelope.recipients;
        let local: Vec<bool> = recipients.iter().map(|r| r.local).collect();
        entry = spool.modify(&entry.id, |fresh| {
            fresh
                .pending
                .retain(|i| !local.get(*i).copied().unwrap_or(false) || remaining.contains(i));
        })?;
    }
    if entry.pending.is_empty() {
        if before == 0 {
            spool.remove(&entry.id)?;
        }
        return Ok(Outcome::Finished);
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(Outcome::AwaitingOutbound(entry.pending.len())),
    }
}
