//! One attempt at one message: read what is due, hand each batch to its courier, and as
//! each batch finishes, queue the reports it owes and record its results in the spool
//! (the reports first: a crash in between can repeat a report, never lose one).

use std::sync::Arc;

use portcullis_smtp::client::RecipientResult;
use portcullis_smtp::{Enhanced, Reply};
use portcullis_spool::{Entry, QueueId, Spool, SpoolError};
use tokio::task::JoinSet;

use crate::courier::{Outcome, Parcel};
use crate::dsn::{self, RecipientReport, ReportAction};
use crate::scheduler::{Routing, Shared, now};

pub(crate) struct Attempt {
    pub(crate) shared: Arc<Shared>,
    /// The settings when the attempt started.
    pub(crate) settings: Arc<Routing>,
    /// A `queue flush`: remote recipients are due whatever their schedule.
    pub(crate) force: bool,
    /// Found in the spool at start: copies may have been delivered without a record.
    pub(crate) recovering: bool,
}

/// The reports one batch's outcomes owe the sender.
#[derive(Default)]
struct Owed {
    failed: Vec<RecipientReport>,
    relayed: Vec<RecipientReport>,
    delivered: Vec<RecipientReport>,
    expanded: Vec<RecipientReport>,
}

impl Attempt {
    /// Runs the attempt; returns when the next one is due, or `None` when the message is
    /// done (or gone).
    pub(crate) async fn run(&self, id: &QueueId) -> Option<u64> {
        // The metadata decides whether anything is due; the content is read only then.
        let entry = match self.read(id, |spool, id| spool.entry(id)).await {
            Ok(entry) => entry,
            Err(next) => return next,
        };
        if entry.pending.is_empty() {
            // Left by a crash between the last result and the removal.
            return self.persist(&entry).await;
        }
        if entry.pending_local().is_empty() && !self.remote_due(&entry) {
            // Not due yet (a restart, or a message handed over while scheduled).
            return Some(entry.next_attempt);
        }
        let (mut entry, message) = match self.read(id, |spool, id| spool.load(id)).await {
            Ok(loaded) => loaded,
            Err(next) => return next,
        };
        let message = Arc::new(message);
        let expires_at = entry.received_at + self.settings.settings.expire.as_secs();
        let local = entry.pending_local();
        let mut remote = if self.remote_due(&entry) {
            entry.pending_remote()
        } else {
            Vec::new()
        };
        if !remote.is_empty() && now() >= expires_at {
            self.expire(&mut entry, &message, &remote).await;
            remote.clear();
        }
        let tried_remote = !remote.is_empty();
        let recovering = self.recovering || entry.attempts > 0;
        let mut batches = JoinSet::new();
        let shared = &self.shared;
        for (courier, recipients) in [(&shared.local, local), (&shared.remote, remote)] {
            if recipients.is_empty() {
                continue;
            }
            let snapshot = Arc::new(entry.clone());
            for batch in courier.batches(&snapshot, recipients) {
                let parcel = Parcel {
                    entry: Arc::clone(&snapshot),
                    message: Arc::clone(&message),
                    recipients: batch,
                    recovering,
                };
                let courier = Arc::clone(courier);
                batches.spawn(async move { courier.carry(parcel).await });
            }
        }
        while let Some(done) = batches.join_next().await {
            let outcomes = match done {
                Ok(outcomes) => outcomes,
                Err(e) => {
                    tracing::error!(queue_id = %entry.id, error = %e, "delivery task failed");
                    continue;
                }
            };
            let owed = settle(&mut entry, outcomes);
            self.pay(&mut entry, &message, owed).await;
            if !batches.is_empty() {
                // Recorded after each batch, so that the window in which a crash repeats a
                // delivery is one batch's answer to our write, not the whole attempt.
                if let Err(e) = self.write(&entry).await {
                    tracing::error!(queue_id = %entry.id, error = %e, "cannot record delivery results");
                }
            }
        }
        let again = self
            .plan_next(&mut entry, &message, tried_remote, expires_at)
            .await;
        let next = self.persist(&entry).await;
        if again && next.is_some() {
            // Said once it is recorded: what `queue list` shows from now on.
            let next_in = entry.next_attempt.saturating_sub(now());
            tracing::info!(queue_id = %entry.id, attempts = entry.attempts, next_in, "message stays queued for another attempt");
        }
        next
    }

    /// Whether the remote recipients of `entry` are due now.
    fn remote_due(&self, entry: &Entry) -> bool {
        self.force || entry.next_attempt <= now()
    }

    /// After the batches: when to try again what is still pending, and whether the
    /// sender should hear that it is late. Returns whether anything is to be tried again.
    async fn plan_next(
        &self,
        entry: &mut Entry,
        message: &Arc<Vec<u8>>,
        tried_remote: bool,
        expires_at: u64,
    ) -> bool {
        let still_local = !entry.pending_local().is_empty();
        let still_remote = !entry.pending_remote().is_empty();
        let retried_remote = still_remote && tried_remote;
        if !still_local && !retried_remote {
            return false;
        }
        entry.attempts += 1;
        let t = now();
        // Remote recipients not tried this time keep their own schedule.
        let mut next = if still_remote {
            entry.next_attempt
        } else {
            u64::MAX
        };
        if retried_remote {
            let delay = self.shared.remote.retry_after(entry.attempts).as_secs();
            next = (t + delay).min(expires_at.max(t + 1));
            self.notify_delay(entry, message, expires_at).await;
        }
        if still_local {
            next = next.min(t + self.shared.local.retry_after(entry.attempts).as_secs());
        }
        entry.next_attempt = next;
        true
    }

    /// Tells the sender once that remote delivery is late (`[delivery] delay-notice`).
    async fn notify_delay(&self, entry: &mut Entry, message: &Arc<Vec<u8>>, expires_at: u64) {
        let Some(after) = self.settings.settings.delay_notice else {
            return;
        };
        if entry.delay_notified || now().saturating_sub(entry.received_at) < after.as_secs() {
            return;
        }
        let late: Vec<RecipientReport> = entry
            .pending_remote()
            .into_iter()
            .filter(|&i| ReportAction::Delay.wanted_by(entry.envelope.recipients[i].params.notify))
            .map(|i| RecipientReport {
                index: i,
                remote_mta: None,
                reply: entry
                    .last_error
                    .get(&i)
                    .cloned()
                    .unwrap_or_else(|| Reply::new(451, Some(Enhanced(4, 4, 1)), "not delivered yet")),
            })
            .collect();
        // One that cannot be queued now is tried again at the next attempt.
        entry.delay_notified = self
            .report(entry, message, ReportAction::Delay, late, Some(expires_at))
            .await;
    }

    /// Reads from the spool off the async threads. A failure comes back as the schedule to
    /// keep: `None` for a message that is gone or damaged (moved to `spool/corrupt/`), five
    /// minutes for one that cannot be read.
    async fn read<T: Send + 'static>(
        &self,
        id: &QueueId,
        what: fn(&Spool, &QueueId) -> Result<T, SpoolError>,
    ) -> Result<T, Option<u64>> {
        let spool = Arc::clone(&self.shared.spool);
        let lookup = id.clone();
        let read = tokio::task::spawn_blocking(move || match what(&spool, &lookup) {
            Err(SpoolError::Corrupt { path, reason }) => {
                tracing::error!(queue_id = %lookup, path = %path.display(), %reason, "corrupt spool file moved to spool/corrupt; it will not be delivered");
                Err(spool.quarantine(&lookup).err())
            }
            other => other.map_err(Some),
        })
        .await;
        match read {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(None)) => Err(None),
            Ok(Err(Some(SpoolError::Io { source, .. }))) if source.kind() == std::io::ErrorKind::NotFound => {
                Err(None)
            }
            Ok(Err(Some(e))) => {
                tracing::error!(queue_id = %id, error = %e, "cannot read the queued message; retrying later");
                Err(Some(now() + 300))
            }
            Err(e) => {
                tracing::error!(queue_id = %id, error = %e, "delivery task failed");
                Err(Some(now() + 300))
            }
        }
    }

    /// Every remote recipient still pending has waited too long: fail them.
    async fn expire(&self, entry: &mut Entry, message: &Arc<Vec<u8>>, remote: &[usize]) {
        let days = self.settings.settings.expire.as_secs() as f64 / 86_400.0;
        let reports: Vec<RecipientReport> = remote
            .iter()
            .map(|&i| {
                let last = entry
                    .last_error
                    .get(&i)
                    .map(|r| r.to_string().trim_end().to_string())
                    .unwrap_or_default();
                RecipientReport {
                    index: i,
                    remote_mta: None,
                    reply: Reply::new(
                        554,
                        Some(Enhanced(4, 4, 7)),
                        format!("delivery time expired after {days:.1} days; last error: {last}"),
                    ),
                }
            })
            .collect();
        for r in &reports {
            tracing::warn!(queue_id = %entry.id, to = %entry.envelope.recipients[r.index].mailbox, "delivery time expired; returning to the sender");
            metrics::counter!("portcullis_outbound_recipients_total", "result" => "expired").increment(1);
        }
        if !self
            .report(entry, message, ReportAction::Fail, reports, None)
            .await
        {
            // Expired again at the next attempt, and reported then.
            return;
        }
        entry.pending.retain(|i| !remote.contains(i));
        for i in remote {
            entry.last_error.remove(i);
        }
    }

    /// Queues the reports `owed`. Failed recipients whose report cannot be queued (a full
    /// disk) are pending again, with their failure as the last error: tried again later,
    /// they fail again and are reported then, so that no bounce is lost.
    async fn pay(&self, entry: &mut Entry, message: &Arc<Vec<u8>>, owed: Owed) {
        let unreported: Vec<(usize, Reply)> =
            owed.failed.iter().map(|r| (r.index, r.reply.clone())).collect();
        if !self
            .report(entry, message, ReportAction::Fail, owed.failed, None)
            .await
        {
            for (index, reply) in unreported {
                if !entry.pending.contains(&index) {
                    entry.pending.push(index);
                }
                entry.last_error.insert(index, reply);
            }
            entry.pending.sort_unstable();
        }
        self.report(entry, message, ReportAction::Relay, owed.relayed, None)
            .await;
        self.report(entry, message, ReportAction::Deliver, owed.delivered, None)
            .await;
        self.report(entry, message, ReportAction::Expanded, owed.expanded, None)
            .await;
    }

    /// Queues a DSN of `action` for `recipients` to the sender, if anyone is to hear it,
    /// and hands it to delivery. `false` when it could not be queued (a full disk).
    async fn report(
        &self,
        entry: &Entry,
        message: &Arc<Vec<u8>>,
        action: ReportAction,
        recipients: Vec<RecipientReport>,
        retry_until: Option<u64>,
    ) -> bool {
        if recipients.is_empty() {
            return true;
        }
        let (spool, settings, entry, message) = (
            Arc::clone(&self.shared.spool),
            Arc::clone(&self.settings),
            entry.clone(),
            Arc::clone(message),
        );
        let queued = tokio::task::spawn_blocking(move || {
            let report = dsn::Pending {
                entry: &entry,
                message: &message,
                action,
                recipients,
                retry_until,
            };
            (
                entry.id.clone(),
                dsn::queue_report(&spool, &settings.settings, report),
            )
        })
        .await;
        match queued {
            Ok((_, Ok(None))) => true,
            Ok((id, Ok(Some(dsn)))) => {
                tracing::info!(queue_id = %id, dsn_id = %dsn.id, ?action, "delivery report queued for the sender");
                self.shared.enqueue(dsn.id);
                true
            }
            Ok((id, Err(e))) => {
                tracing::error!(queue_id = %id, error = %e, ?action, "cannot queue the delivery report");
                false
            }
            Err(e) => {
                tracing::error!(error = %e, "delivery report task failed");
                false
            }
        }
    }

    /// Records the pending recipients and the retry state. A message whose every
    /// recipient was local and is delivered leaves without a flush of its own: its copies
    /// are durable, and a crash that loses the removal finds them delivered already.
    async fn write(&self, entry: &Entry) -> Result<Entry, SpoolError> {
        let spool = Arc::clone(&self.shared.spool);
        let ours = entry.clone();
        let path = std::path::PathBuf::from(entry.id.as_str());
        tokio::task::spawn_blocking(move || {
            if ours.pending.is_empty() && ours.all_local() {
                spool.retire(&ours.id)?;
                return Ok(ours);
            }
            spool.modify(&ours.id, |fresh| {
                fresh.pending.clone_from(&ours.pending);
                fresh.attempts = ours.attempts;
                fresh.next_attempt = ours.next_attempt;
                fresh.last_error.clone_from(&ours.last_error);
                fresh.delay_notified = ours.delay_notified;
            })
        })
        .await
        .unwrap_or_else(|e| {
            Err(SpoolError::Io {
                path,
                source: std::io::Error::other(e),
            })
        })
    }

    /// Writes the entry and says when to come back.
    async fn persist(&self, entry: &Entry) -> Option<u64> {
        match self.write(entry).await {
            Ok(written) if written.pending.is_empty() => {
                tracing::info!(queue_id = %entry.id, "delivered; every recipient is done");
                None
            }
            Ok(written) => Some(written.next_attempt),
            Err(SpoolError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                tracing::info!(queue_id = %entry.id, "the message left the queue during the attempt (removed by an operator?)");
                None
            }
            Err(e) => {
                tracing::error!(queue_id = %entry.id, error = %e, "cannot record delivery results; retrying in a minute");
                Some(now() + 60)
            }
        }
    }
}

/// Applies one batch's outcomes to `entry`; returns the reports they owe.
fn settle(entry: &mut Entry, outcomes: Vec<Outcome>) -> Owed {
    let mut owed = Owed::default();
    for Outcome {
        index,
        result,
        host,
        peer_dsn,
    } in outcomes
    {
        let Some(to) = entry.envelope.recipients.get(index).cloned() else {
            continue;
        };
        if !to.local {
            log_remote(&entry.id, &to.mailbox, host.as_deref(), &result);
        } else if let Some(server) = host.as_deref() {
            log_lmtp(&entry.id, &to.mailbox, server, &result);
        }
        let report = |reply: Reply| RecipientReport {
            index,
            remote_mta: host.clone(),
            reply,
        };
        // An alias's `expanded` report goes with the first final answer for the target
        // that carries it, whatever that answer is: the alias was expanded.
        if to.reports_expansion && entry.success_notices && !matches!(result, RecipientResult::Defer(_)) {
            owed.expanded.push(report(Reply::fixed(
                250,
                Some(portcullis_smtp::Enhanced(2, 0, 0)),
                "alias expanded",
            )));
        }
        match result {
            RecipientResult::Deliver(reply) => {
                entry.pending.retain(|&p| p != index);
                entry.last_error.remove(&index);
                if to.local {
                    if entry.success_notices {
                        owed.delivered.push(report(reply));
                    }
                } else if !peer_dsn && ReportAction::Relay.wanted_by(to.params.notify) {
                    owed.relayed.push(report(reply));
                }
            }
            RecipientResult::Fail(reply) => {
                entry.pending.retain(|&p| p != index);
                entry.last_error.remove(&index);
                owed.failed.push(report(reply));
            }
            RecipientResult::Defer(reply) => {
                entry.last_error.insert(index, reply);
            }
        }
    }
    owed
}

/// The log line of a local recipient's outcome at an LMTP server.
fn log_lmtp(id: &QueueId, to: &portcullis_smtp::Mailbox, server: &str, result: &RecipientResult) {
    match result {
        RecipientResult::Deliver(reply) => {
            tracing::info!(queue_id = %id, %to, lmtp = server, reply = %reply.to_string().trim_end(), "delivered over LMTP")
        }
        RecipientResult::Fail(reply) => {
            tracing::warn!(queue_id = %id, %to, lmtp = server, reply = %reply.to_string().trim_end(), "LMTP delivery failed permanently")
        }
        RecipientResult::Defer(reply) => {
            tracing::info!(queue_id = %id, %to, lmtp = server, reply = %reply.to_string().trim_end(), "LMTP delivery deferred")
        }
    }
}

/// The log line and metric of a remote recipient's outcome.
fn log_remote(id: &QueueId, to: &portcullis_smtp::Mailbox, host: Option<&str>, result: &RecipientResult) {
    let host = host.unwrap_or("-");
    match result {
        RecipientResult::Deliver(reply) => {
            tracing::info!(queue_id = %id, %to, host, reply = %reply.to_string().trim_end(), "delivered to the remote host");
            metrics::counter!("portcullis_outbound_recipients_total", "result" => "delivered").increment(1);
        }
        RecipientResult::Fail(reply) => {
            tracing::warn!(queue_id = %id, %to, host, reply = %reply.to_string().trim_end(), "delivery failed permanently");
            metrics::counter!("portcullis_outbound_recipients_total", "result" => "bounced").increment(1);
        }
        RecipientResult::Defer(reply) => {
            tracing::info!(queue_id = %id, %to, host, reply = %reply.to_string().trim_end(), "delivery deferred");
            metrics::counter!("portcullis_outbound_recipients_total", "result" => "deferred").increment(1);
        }
    }
}
