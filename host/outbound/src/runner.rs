//! The queue runner: decides when each spooled message with remote recipients is tried,
//! tries it (one transaction per destination domain), and writes what happened back to the
//! spool before anything else.
//!
//! State lives in the spool file of each message (pending recipients, attempts, next
//! attempt time, last errors), so a restart resumes the schedule where it was. The runner's
//! memory is only a timetable rebuilt from the spool.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use portcullis_smtp::client::RecipientResult;
use portcullis_smtp::envelope::Envelope;
use portcullis_smtp::{Enhanced, Reply};
use portcullis_spool::{Entry, QueueId, Spool, SpoolError};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinSet;

use crate::client::{self, Peer};
use crate::dsn::{self, RecipientReport, ReportAction};
use crate::route::{RouteError, Router};
use crate::settings::DeliverySettings;

/// DeliverySettings with the router built for them; swapped whole on reload.
#[derive(Debug)]
pub struct Routing {
    /// The settings.
    pub settings: DeliverySettings,
    /// The resolver and routes they imply.
    pub router: Router,
}

impl Routing {
    /// Builds the router for `settings`.
    pub fn new(settings: DeliverySettings) -> Result<Self, crate::route::ResolverError> {
        let router = Router::new(settings.resolver)?;
        Ok(Routing { settings, router })
    }
}

/// Called with the id of every message the runner queues itself (DSNs), so that local
/// delivery sees them first.
pub type Handoff = Arc<dyn Fn(QueueId) + Send + Sync>;

enum Request {
    Submit(QueueId),
    Flush(oneshot::Sender<usize>),
    Finished(QueueId, Option<u64>),
}

/// The handle the daemon keeps: submit messages, flush the queue, reload settings.
#[derive(Clone)]
pub struct Outbound {
    tx: mpsc::UnboundedSender<Request>,
    context: Arc<ArcSwap<Routing>>,
}

impl std::fmt::Debug for Outbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbound").finish_non_exhaustive()
    }
}

impl Outbound {
    /// Starts the runner on the current tokio runtime.
    pub fn start(spool: Arc<Spool>, context: Routing, handoff: Handoff) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let context = Arc::new(ArcSwap::from_pointee(context));
        let runner = Runner {
            spool,
            context: Arc::clone(&context),
            handoff,
            tx: tx.clone(),
            timetable: BinaryHeap::new(),
            due: HashMap::new(),
            forced: HashSet::new(),
            running: HashSet::new(),
            destinations: Arc::new(Mutex::new(HashMap::new())),
        };
        tokio::spawn(runner.run(rx));
        Outbound { tx, context }
    }

    /// A message whose local recipients are done and whose remote ones wait.
    pub fn submit(&self, id: QueueId) {
        let _ = self.tx.send(Request::Submit(id));
    }

    /// Tries every queued message now, ignoring the schedule; returns how many.
    pub async fn flush(&self) -> usize {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Request::Flush(tx)).is_err() {
            return 0;
        }
        rx.await.unwrap_or(0)
    }

    /// New settings for the attempts that start from now on.
    pub fn reload(&self, context: Routing) {
        self.context.store(Arc::new(context));
    }

    /// The settings in force (for reports written outside the runner).
    pub fn settings(&self) -> Arc<Routing> {
        self.context.load_full()
    }
}

struct Runner {
    spool: Arc<Spool>,
    context: Arc<ArcSwap<Routing>>,
    handoff: Handoff,
    tx: mpsc::UnboundedSender<Request>,
    /// (due time, id), earliest first; entries whose time no longer matches `due` are stale.
    timetable: BinaryHeap<Reverse<(u64, QueueId)>>,
    due: HashMap<QueueId, u64>,
    forced: HashSet<QueueId>,
    running: HashSet<QueueId>,
    destinations: Arc<Mutex<HashMap<String, Arc<Semaphore>>>>,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Runner {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Request>) {
        let slots = Arc::new(Semaphore::new(
            self.context.load().settings.max_connections.max(1),
        ));
        loop {
            let wait = self.timetable.peek().map(|Reverse((at, _))| {
                Duration::from_secs(at.saturating_sub(now())).min(Duration::from_secs(3600))
            });
            let command = match wait {
                Some(wait) if wait.is_zero() => None,
                Some(wait) => tokio::select! {
                    c = rx.recv() => match c { Some(c) => Some(c), None => break },
                    () = tokio::time::sleep(wait) => None,
                },
                None => match rx.recv().await {
                    Some(c) => Some(c),
                    None => break,
                },
            };
            match command {
                Some(Request::Submit(id)) => self.schedule(id, 0),
                Some(Request::Flush(reply)) => {
                    let ids: Vec<QueueId> = match self.spool.list() {
                        Ok(ids) => ids,
                        Err(e) => {
                            tracing::error!(error = %e, "cannot list the spool for a flush");
                            Vec::new()
                        }
                    };
                    let count = ids.len();
                    for id in ids {
                        self.forced.insert(id.clone());
                        self.schedule(id, 0);
                    }
                    let _ = reply.send(count);
                }
                Some(Request::Finished(id, next)) => {
                    self.running.remove(&id);
                    if let Some(at) = next {
                        self.schedule(id, at);
                    }
                }
                None => self.start_due(&slots),
            }
        }
    }

    fn schedule(&mut self, id: QueueId, at: u64) {
        if self.running.contains(&id) {
            // The attempt under way reads the spool afresh; a flush during it is served by
            // its own reschedule.
            return;
        }
        let at = match self.due.get(&id) {
            Some(&existing) if existing <= at => return,
            _ => at,
        };
        self.due.insert(id.clone(), at);
        self.timetable.push(Reverse((at, id)));
    }

    fn start_due(&mut self, slots: &Arc<Semaphore>) {
        let t = now();
        while let Some(Reverse((at, _))) = self.timetable.peek() {
            if *at > t {
                break;
            }
            let Some(Reverse((at, id))) = self.timetable.pop() else {
                break;
            };
            if self.due.get(&id) != Some(&at) {
                continue;
            }
            self.due.remove(&id);
            self.running.insert(id.clone());
            let force = self.forced.remove(&id);
            let attempt = Attempt {
                spool: Arc::clone(&self.spool),
                context: self.context.load_full(),
                handoff: Arc::clone(&self.handoff),
                slots: Arc::clone(slots),
                destinations: Arc::clone(&self.destinations),
            };
            let tx = self.tx.clone();
            tokio::spawn(async move {
                let next = attempt.run(&id, force).await;
                let _ = tx.send(Request::Finished(id, next));
            });
        }
    }
}

/// The result of one destination of one attempt.
struct GroupResult {
    /// (recipient index, result, host that answered, peer does DSN).
    results: Vec<(usize, RecipientResult, Option<String>, bool)>,
}

struct Attempt {
    spool: Arc<Spool>,
    context: Arc<Routing>,
    handoff: Handoff,
    slots: Arc<Semaphore>,
    destinations: Arc<Mutex<HashMap<String, Arc<Semaphore>>>>,
}

impl Attempt {
    /// Runs one attempt; returns when the next one is due, or `None` when the message needs
    /// no more outbound work.
    async fn run(&self, id: &QueueId, force: bool) -> Option<u64> {
        // The metadata decides whether anything is due; the content (up to the message size
        // limit) is read only when an attempt is made.
        let entry = match self.read(id, |spool, id| spool.entry(id)).await {
            Ok(entry) => entry,
            Err(next) => return next,
        };
        let settings = &self.context.settings;
        let has_remote = |e: &Entry| {
            e.pending
                .iter()
                .any(|&i| e.envelope.recipients.get(i).is_some_and(|r| !r.local))
        };
        if !has_remote(&entry) {
            return None;
        }
        // Not due yet (a restart, or a submit while scheduled): come back at the due time,
        // when expiry is checked too.
        if !force && entry.next_attempt > now() {
            return Some(entry.next_attempt);
        }
        let (mut entry, message) = match self.read(id, |spool, id| spool.load(id)).await {
            Ok(loaded) => loaded,
            Err(next) => return next,
        };
        let remote: Vec<usize> = entry
            .pending
            .iter()
            .copied()
            .filter(|&i| entry.envelope.recipients.get(i).is_some_and(|r| !r.local))
            .collect();
        if remote.is_empty() {
            return None;
        }
        let t = now();
        let expires_at = entry.received_at + settings.expire.as_secs();
        let message = Arc::new(message);
        if t >= expires_at {
            self.expire(&mut entry, &message, &remote).await;
            return self.persist(&entry).await;
        }

        // One transaction per destination domain, all at once.
        let mut groups: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for &i in &remote {
            groups
                .entry(entry.envelope.recipients[i].mailbox.domain_lower())
                .or_default()
                .push(i);
        }
        let mut tasks = JoinSet::new();
        for (domain, indices) in groups {
            let group = Group {
                context: Arc::clone(&self.context),
                slots: Arc::clone(&self.slots),
                destinations: Arc::clone(&self.destinations),
                id: entry.id.clone(),
                envelope: Envelope {
                    recipients: indices
                        .iter()
                        .map(|&i| entry.envelope.recipients[i].clone())
                        .collect(),
                    ..entry.envelope.clone()
                },
                indices,
                message: Arc::clone(&message),
            };
            tasks.spawn(async move { group.attempt(&domain).await });
        }
        while let Some(done) = tasks.join_next().await {
            let Ok(group) = done else { continue };
            let (mut failed, mut relays) = (Vec::new(), Vec::new());
            for (index, result, host, peer_dsn) in group.results {
                let to = entry.envelope.recipients[index].clone();
                match result {
                    RecipientResult::Deliver(reply) => {
                        tracing::info!(queue_id = %entry.id, to = %to.mailbox, host = host.as_deref().unwrap_or("-"), reply = %reply.to_string().trim_end(), "delivered to the remote host");
                        metrics::counter!("portcullis_outbound_recipients_total", "result" => "delivered")
                            .increment(1);
                        entry.pending.retain(|&p| p != index);
                        entry.last_error.remove(&index);
                        if !peer_dsn && ReportAction::Relay.wanted_by(to.params.notify) {
                            relays.push(RecipientReport {
                                index,
                                remote_mta: host,
                                reply,
                            });
                        }
                    }
                    RecipientResult::Fail(reply) => {
                        tracing::warn!(queue_id = %entry.id, to = %to.mailbox, host = host.as_deref().unwrap_or("-"), reply = %reply.to_string().trim_end(), "delivery failed permanently");
                        metrics::counter!("portcullis_outbound_recipients_total", "result" => "bounced")
                            .increment(1);
                        entry.pending.retain(|&p| p != index);
                        entry.last_error.remove(&index);
                        failed.push(RecipientReport {
                            index,
                            remote_mta: host,
                            reply,
                        });
                    }
                    RecipientResult::Defer(reply) => {
                        tracing::info!(queue_id = %entry.id, to = %to.mailbox, host = host.as_deref().unwrap_or("-"), reply = %reply.to_string().trim_end(), "delivery deferred");
                        metrics::counter!("portcullis_outbound_recipients_total", "result" => "deferred")
                            .increment(1);
                        entry
                            .last_error
                            .insert(index, reply.to_string().trim_end().to_string());
                    }
                }
            }
            // The report is queued before the recipients leave the spool: a crash in
            // between can repeat a report, never lose one.
            self.report(&entry, &message, ReportAction::Fail, failed, None)
                .await;
            self.report(&entry, &message, ReportAction::Relay, relays, None)
                .await;
            if entry.pending.is_empty() {
                break;
            }
            // Persist after each destination, so that the window in which a crash repeats a
            // delivery is one destination's reply to our write, not the whole attempt.
            if let Err(e) = self.write(&entry).await {
                tracing::error!(queue_id = %entry.id, error = %e, "cannot record delivery results");
            }
        }
        let still_remote = entry
            .pending
            .iter()
            .any(|&i| entry.envelope.recipients.get(i).is_some_and(|r| !r.local));
        if still_remote {
            entry.attempts += 1;
            let t = now();
            entry.next_attempt =
                (t + settings.retry_after(entry.attempts).as_secs()).min(expires_at.max(t + 1));
            if let Some(after) = settings.delay_notice
                && !entry.delay_notified
                && t.saturating_sub(entry.received_at) >= after.as_secs()
            {
                let late: Vec<RecipientReport> = entry
                    .pending
                    .iter()
                    .filter(|&&i| entry.envelope.recipients.get(i).is_some_and(|r| !r.local))
                    .map(|&i| RecipientReport {
                        index: i,
                        remote_mta: None,
                        reply: entry
                            .last_error
                            .get(&i)
                            .map(|text| reply_from_text(text))
                            .unwrap_or_else(|| Reply::new(451, Some(Enhanced(4, 4, 1)), "not delivered yet")),
                    })
                    .filter(|r| {
                        ReportAction::Delay.wanted_by(entry.envelope.recipients[r.index].params.notify)
                    })
                    .collect();
                self.report(&entry, &message, ReportAction::Delay, late, Some(expires_at))
                    .await;
                entry.delay_notified = true;
            }
            tracing::info!(queue_id = %entry.id, attempts = entry.attempts, next_in = entry.next_attempt.saturating_sub(t), "message stays queued for another attempt");
        }
        self.persist(&entry).await
    }

    /// Reads from the spool off the async threads. A failure comes back as the schedule to
    /// keep: `None` for a message that is gone, five minutes for one that cannot be read.
    async fn read<T: Send + 'static>(
        &self,
        id: &QueueId,
        what: fn(&Spool, &QueueId) -> Result<T, SpoolError>,
    ) -> Result<T, Option<u64>> {
        let spool = Arc::clone(&self.spool);
        let lookup = id.clone();
        match tokio::task::spawn_blocking(move || what(&spool, &lookup)).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(SpoolError::Io { source, .. })) if source.kind() == std::io::ErrorKind::NotFound => {
                Err(None)
            }
            Ok(Err(e)) => {
                tracing::error!(queue_id = %id, error = %e, "cannot read the queued message; retrying later");
                Err(Some(now() + 300))
            }
            Err(e) => {
                tracing::error!(queue_id = %id, error = %e, "outbound attempt task failed");
                Err(Some(now() + 300))
            }
        }
    }

    /// Every remote recipient still pending has waited too long: fail them.
    async fn expire(&self, entry: &mut Entry, message: &Arc<Vec<u8>>, remote: &[usize]) {
        let days = self.context.settings.expire.as_secs() as f64 / 86_400.0;
        let reports: Vec<RecipientReport> = remote
            .iter()
            .map(|&i| {
                let last = entry.last_error.get(&i).cloned().unwrap_or_default();
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
        self.report(entry, message, ReportAction::Fail, reports, None)
            .await;
        entry.pending.retain(|i| !remote.contains(i));
        for i in remote {
            entry.last_error.remove(i);
        }
    }

    /// Queues a DSN of `action` for `recipients` to the sender, if anyone is to hear it.
    async fn report(
        &self,
        entry: &Entry,
        message: &Arc<Vec<u8>>,
        action: ReportAction,
        recipients: Vec<RecipientReport>,
        retry_until: Option<u64>,
    ) {
        if recipients.is_empty() {
            return;
        }
        let (spool, context, entry, message) = (
            Arc::clone(&self.spool),
            Arc::clone(&self.context),
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
                dsn::queue_report(&spool, &context.settings, report),
            )
        })
        .await;
        match queued {
            Ok((_, Ok(None))) => {}
            Ok((id, Ok(Some(dsn)))) => {
                tracing::info!(queue_id = %id, dsn_id = %dsn.id, ?action, "delivery report queued for the sender");
                (self.handoff)(dsn.id);
            }
            Ok((id, Err(e))) => {
                tracing::error!(queue_id = %id, error = %e, "cannot queue the delivery report")
            }
            Err(e) => tracing::error!(error = %e, "delivery report task failed"),
        }
    }

    /// Records our view of the remote recipients and the retry state, keeping whatever
    /// local delivery recorded about the local ones meanwhile.
    async fn write(&self, entry: &Entry) -> Result<Entry, SpoolError> {
        let spool = Arc::clone(&self.spool);
        let ours = entry.clone();
        let path = std::path::PathBuf::from(entry.id.as_str());
        tokio::task::spawn_blocking(move || {
            spool.modify(&ours.id, |fresh| {
                let recipients = &fresh.envelope.recipients;
                fresh
                    .pending
                    .retain(|i| recipients.get(*i).is_some_and(|r| r.local) || ours.pending.contains(i));
                fresh.attempts = ours.attempts;
                fresh.next_attempt = ours.next_attempt;
                fresh.last_error = ours.last_error.clone();
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
                tracing::info!(queue_id = %entry.id, "every recipient is done; removed from the queue");
                None
            }
            Ok(written) => {
                let remote = written
                    .pending
                    .iter()
                    .any(|&i| written.envelope.recipients.get(i).is_some_and(|r| !r.local));
                remote.then_some(written.next_attempt)
            }
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

/// A reply recovered from its logged text (`"451 4.4.1 text"`), for delay reports.
fn reply_from_text(text: &str) -> Reply {
    let mut parser = portcullis_smtp::client::ReplyParser::new();
    parser.feed(text.as_bytes());
    parser.feed(b"\r\n");
    match parser.next_reply() {
        Ok(Some(reply)) => reply,
        _ => Reply::new(451, Some(Enhanced(4, 0, 0)), text.to_string()),
    }
}

/// The recipients of one domain in one attempt.
struct Group {
    context: Arc<Routing>,
    slots: Arc<Semaphore>,
    destinations: Arc<Mutex<HashMap<String, Arc<Semaphore>>>>,
    id: QueueId,
    envelope: Envelope,
    indices: Vec<usize>,
    message: Arc<Vec<u8>>,
}

impl Group {
    fn all(&self, result: &RecipientResult, host: Option<&str>) -> GroupResult {
        GroupResult {
            results: self
                .indices
                .iter()
                .map(|&i| (i, result.clone(), host.map(str::to_string), false))
                .collect(),
        }
    }

    async fn attempt(&self, domain: &str) -> GroupResult {
        let settings = &self.context.settings;
        let plan = match self.context.router.plan(settings, domain).await {
            Ok(plan) => plan,
            Err(RouteError::Permanent(reply)) => {
                tracing::warn!(queue_id = %self.id, %domain, reply = %reply.to_string().trim_end(), "no route to the domain");
                return self.all(&RecipientResult::Fail(reply), None);
            }
            Err(RouteError::Temporary(reply)) => {
                tracing::info!(queue_id = %self.id, %domain, reply = %reply.to_string().trim_end(), "routing failed for now");
                return self.all(&RecipientResult::Defer(reply), None);
            }
        };
        let destination = {
            let mut map = self
                .destinations
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            Arc::clone(
                map.entry(plan.destination.clone())
                    .or_insert_with(|| Arc::new(Semaphore::new(settings.per_destination.max(1)))),
            )
        };
        // Both semaphores live as long as the runner and are never closed.
        let (Ok(_slot), Ok(_dest)) = (self.slots.acquire().await, destination.acquire().await) else {
            return self.all(
                &RecipientResult::Defer(Reply::new(451, Some(Enhanced(4, 3, 0)), "shutting down")),
                None,
            );
        };
        let mut last = None;
        for (n, host) in plan.hosts.iter().enumerate() {
            let peer = Peer {
                name: &host.name,
                addrs: &host.addrs,
                tls: plan.tls,
                auth: plan.auth.as_ref(),
            };
            tracing::debug!(queue_id = %self.id, host = %host.name, "connecting");
            match client::transact(settings, &peer, &self.envelope, &self.message).await {
                Ok(done) => {
                    let all_deferred = done
                        .results
                        .iter()
                        .all(|r| matches!(r, RecipientResult::Defer(_)));
                    if all_deferred && n + 1 < plan.hosts.len() {
                        // RFC 5321 5.1: a temporary failure at one MX means trying the next.
                        last = Some(done.results[0].clone());
                        continue;
                    }
                    tracing::info!(queue_id = %self.id, host = %host.name, tls = done.tls, "transaction finished");
                    return GroupResult {
                        results: self
                            .indices
                            .iter()
                            .zip(done.results)
                            .map(|(&i, r)| (i, r, Some(host.name.clone()), done.peer_dsn))
                            .collect(),
                    };
                }
                Err(e) => {
                    tracing::info!(queue_id = %self.id, host = %host.name, error = %e, "host failed; trying the next one if any");
                    let reply = e.reply();
                    last = Some(if e.is_permanent() {
                        RecipientResult::Fail(reply)
                    } else {
                        RecipientResult::Defer(reply)
                    });
                }
            }
        }
        let last_host = plan.hosts.last().map(|h| h.name.as_str());
        self.all(
            &last.unwrap_or_else(|| {
                RecipientResult::Defer(Reply::new(451, Some(Enhanced(4, 4, 1)), "no host could be tried"))
            }),
            last_host,
        )
    }
}
