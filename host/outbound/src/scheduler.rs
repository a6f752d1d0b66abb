//! The delivery scheduler: decides when each spooled message is tried and which of its
//! pending recipients are due, hands each batch to its courier (Maildir for our domains,
//! SMTP for the others), and writes what happened back to the spool before anything else.
//!
//! State lives in the spool: each message's entry holds its pending recipients, attempts,
//! next attempt time and the last error of each recipient, so a restart resumes the
//! schedule where it was. The scheduler's memory is only a timetable rebuilt from the
//! spool. A local recipient is due whenever its message is tried; a remote one at the
//! entry's next attempt time (or at a `queue flush`).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use portcullis_spool::{Maildir, QueueId, Spool};
use tokio::sync::{Notify, mpsc, oneshot};

use crate::attempt::Attempt;
use crate::courier::Courier;
use crate::courier::maildir::MaildirCourier;
use crate::courier::smtp::SmtpCourier;
use crate::route::Router;
use crate::settings::DeliverySettings;

/// How long delivered messages' spool files may wait for a session's flush before the
/// sweeper runs one (they are safe meanwhile; only `queue/` shows them).
const RETIRE_SWEEP: Duration = Duration::from_millis(50);

/// DeliverySettings with the router built for them; swapped whole on reload.
#[derive(Debug)]
pub struct Routing {
    /// The settings.
    pub settings: DeliverySettings,
    /// The resolver and routes they imply.
    pub router: Router,
}

impl Routing {
    /// The routing of `settings`, asking `resolver`.
    pub fn new(settings: DeliverySettings, resolver: crate::dns::Resolver) -> Self {
        Routing {
            settings,
            router: Router::new(resolver),
        }
    }
}

enum Request {
    Deliver { id: QueueId, recovering: bool },
    Flush(oneshot::Sender<usize>),
    Finished(QueueId, Option<u64>),
}

/// The handle the daemon keeps: hand over messages, flush the queue, reload settings.
#[derive(Clone)]
pub struct Delivery {
    tx: mpsc::UnboundedSender<Request>,
    routing: Arc<ArcSwap<Routing>>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery").finish_non_exhaustive()
    }
}

/// What every attempt shares: the spool, the settings and the couriers.
pub(crate) struct Shared {
    pub(crate) spool: Arc<Spool>,
    pub(crate) routing: Arc<ArcSwap<Routing>>,
    pub(crate) local: Arc<dyn Courier>,
    pub(crate) remote: Arc<dyn Courier>,
    tx: mpsc::UnboundedSender<Request>,
}

impl Shared {
    /// A message the scheduler queued itself (a report): delivered like any other.
    pub(crate) fn enqueue(&self, id: QueueId) {
        let _ = self.tx.send(Request::Deliver {
            id,
            recovering: false,
        });
    }
}

impl Delivery {
    /// Starts the scheduler on the current tokio runtime, with Maildir delivery into
    /// `maildir` and SMTP delivery as `routing` says. The returned `Notify` wakes the
    /// sweeper that releases the spool files of messages the spool writer delivered
    /// (`portcullis_spool::writer`) when no session's flush comes.
    pub fn start(spool: Arc<Spool>, maildir: Maildir, routing: Routing) -> (Self, Arc<Notify>) {
        let local = Arc::new(MaildirCourier::new(Arc::clone(&spool), maildir));
        Delivery::start_with_local(spool, local, routing)
    }

    /// [`Delivery::start`], with local recipients carried by `local` (such as the
    /// [LMTP courier](crate::courier::lmtp::LmtpCourier)).
    pub fn start_with_local(
        spool: Arc<Spool>,
        local: Arc<dyn Courier>,
        routing: Routing,
    ) -> (Self, Arc<Notify>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let routing = Arc::new(ArcSwap::from_pointee(routing));
        let shared = Arc::new(Shared {
            spool: Arc::clone(&spool),
            routing: Arc::clone(&routing),
            local,
            remote: Arc::new(SmtpCourier::new(Arc::clone(&routing))),
            tx: tx.clone(),
        });
        let scheduler = Scheduler {
            shared,
            timetable: BinaryHeap::new(),
            due: HashMap::new(),
            forced: HashSet::new(),
            recovering: HashSet::new(),
            running: HashSet::new(),
        };
        tokio::spawn(scheduler.run(rx));
        (Delivery { tx, routing }, sweeper(spool))
    }

    /// A message just spooled (or queued by the host: a notice): tried now.
    pub fn deliver(&self, id: QueueId) {
        let _ = self.tx.send(Request::Deliver {
            id,
            recovering: false,
        });
    }

    /// A message found in the spool at start: tried now, looking for copies an earlier run
    /// delivered without recording it.
    pub fn recover(&self, id: QueueId) {
        let _ = self.tx.send(Request::Deliver { id, recovering: true });
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
    pub fn reload(&self, routing: Routing) {
        self.routing.store(Arc::new(routing));
    }

    /// The settings in force (for reports written outside the scheduler).
    pub fn settings(&self) -> Arc<Routing> {
        self.routing.load_full()
    }
}

/// Releases delivered messages' spool files when no session's flush comes.
fn sweeper(spool: Arc<Spool>) -> Arc<Notify> {
    let sweep = Arc::new(Notify::new());
    let wake = Arc::clone(&sweep);
    tokio::spawn(async move {
        loop {
            wake.notified().await;
            tokio::time::sleep(RETIRE_SWEEP).await;
            let spool = Arc::clone(&spool);
            let swept =
                tokio::task::spawn_blocking(move || spool.flush_retiring(Duration::from_millis(5))).await;
            if let Ok(Err(e)) = swept {
                tracing::warn!(error = %e, "cannot flush the spool to retire delivered messages; recovery will");
            }
        }
    });
    sweep
}

struct Scheduler {
    shared: Arc<Shared>,
    /// (due time, id), earliest first; entries whose time no longer matches `due` are stale.
    timetable: BinaryHeap<Reverse<(u64, QueueId)>>,
    due: HashMap<QueueId, u64>,
    forced: HashSet<QueueId>,
    recovering: HashSet<QueueId>,
    running: HashSet<QueueId>,
}

pub(crate) fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Scheduler {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Request>) {
        loop {
            let wait = self.timetable.peek().map(|Reverse((at, _))| {
                Duration::from_secs(at.saturating_sub(now())).min(Duration::from_secs(3600))
            });
            let request = match wait {
                Some(wait) if wait.is_zero() => None,
                Some(wait) => tokio::select! {
                    r = rx.recv() => match r { Some(r) => Some(r), None => break },
                    () = tokio::time::sleep(wait) => None,
                },
                None => match rx.recv().await {
                    Some(r) => Some(r),
                    None => break,
                },
            };
            match request {
                Some(Request::Deliver { id, recovering }) => {
                    if recovering {
                        self.recovering.insert(id.clone());
                    }
                    self.schedule(id, 0);
                }
                Some(Request::Flush(reply)) => {
                    let _ = reply.send(self.flush());
                }
                Some(Request::Finished(id, next)) => {
                    self.running.remove(&id);
                    if let Some(at) = next {
                        self.schedule(id, at);
                    }
                }
                None => self.start_due(),
            }
        }
    }

    /// Every queued message, due now and forced past its schedule.
    fn flush(&mut self) -> usize {
        let ids = match self.shared.spool.list() {
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
        count
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

    fn start_due(&mut self) {
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
            let attempt = Attempt {
                shared: Arc::clone(&self.shared),
                settings: self.shared.routing.load_full(),
                force: self.forced.remove(&id),
                recovering: self.recovering.remove(&id),
            };
            let tx = self.shared.tx.clone();
            tokio::spawn(async move {
                let next = attempt.run(&id).await;
                let _ = tx.send(Request::Finished(id, next));
            });
        }
    }
}
