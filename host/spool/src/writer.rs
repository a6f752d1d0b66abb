//! The spool writer: the life of an accepted message up to its 250, in one place.
//!
//! One thread takes the messages sessions accept and moves each through its steps:
//!
//! 1. **written** ([`Spool::write_with_copies`]): the spool file is in `queue/` and, for a
//!    local-only message whose mailboxes share the spool's file system, its Maildir copies
//!    are prepared in each `tmp/`;
//! 2. **durable** ([`Spool::flush`]): one flush for everything written together (group
//!    commit); a message whose flush failed is taken back ([`Spool::withdraw`]);
//! 3. **answered**: each session hears its fate (the 250 only now);
//! 4. **published** ([`Writer`]'s `publish`): the prepared copies are moved into `new/`;
//!    whatever cannot be settled here (a remote recipient, a failed copy, a success report
//!    to queue) is handed to delivery;
//! 5. **released** ([`Spool::retire_after_flush`]): the spool file leaves `queue/` after a
//!    later flush (anyone's, or the sweeper's) has made the moves durable.
//!
//! While the thread waits on a flush, the next messages queue up and share the following
//! one: compared with a blocking-pool task per message, this spares thread wake-ups and
//! migrations per message (docs/benchmarks.md). Large messages and every message under
//! per-message sync are better written on their own ([`Writer::write_alone`], called by
//! the host from a blocking task of its own): one large write must not hold up the answers
//! of the small ones behind it, and per-message fsyncs overlap better side by side.

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, mpsc};

use portcullis_smtp::{Folder, Message};

use crate::queue::{Entry, Incoming, QueueId, Spool};
use crate::{Maildir, SyncMode};

/// Messages above this size are better written on their own ([`Writer::is_alone`]).
const LARGE: usize = 1 << 20;

/// One accepted message on its way to the spool.
#[derive(Debug)]
pub struct Accepted {
    /// Its queue id.
    pub id: QueueId,
    /// The message as received.
    pub message: Arc<Message>,
    /// The header lines written before it (`Received:`, hook headers).
    pub head: String,
    /// Ranges of its content left out when it is delivered ([`Entry::omit`]).
    pub omit: Vec<(u64, u64)>,
    /// Where its local copies go.
    pub folder: Folder,
    /// Its sender may be told of successful deliveries ([`Entry::success_notices`]).
    pub success_notices: bool,
}

/// Where a session hears its message's fate: the entry once it is durable, or why not.
pub type Answer = Box<dyn FnOnce(Result<Entry, String>) + Send>;

/// A message handed to the writer, with its session's log span and where to answer.
pub struct Request {
    /// The message.
    pub accepted: Accepted,
    /// The session's span, so that the writer's log lines are the session's.
    pub span: tracing::Span,
    /// Called once, with the message's fate.
    pub answer: Answer,
}

/// What the host gives the writer: where a message goes that it cannot settle itself, and
/// who to wake when delivered messages wait for a flush to be released.
pub struct Handoff {
    /// A message for delivery to finish (remote recipients, failed copies, reports).
    pub deliver: Box<dyn Fn(QueueId) + Send + Sync>,
    /// Delivered messages wait for a flush before their files go ([`Spool::flush_retiring`]).
    pub retiring: Box<dyn Fn() + Send + Sync>,
}

/// What the thread is handed: a message, or a barrier called once everything handed
/// before it is written, answered and published.
enum Work {
    Store(Request),
    Barrier(Box<dyn FnOnce() + Send>),
}

/// What a batch is written with.
struct Shared {
    spool: Arc<Spool>,
    maildir: Maildir,
    handoff: Handoff,
}

/// The writer thread's handle; the thread ends when it is dropped.
pub struct Writer {
    tx: mpsc::Sender<Work>,
    shared: Arc<Shared>,
}

impl Writer {
    /// Starts the thread.
    pub fn start(spool: Arc<Spool>, maildir: Maildir, handoff: Handoff) -> std::io::Result<Writer> {
        let shared = Arc::new(Shared {
            spool,
            maildir,
            handoff,
        });
        let (tx, rx) = mpsc::channel::<Work>();
        let writer = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("spool-writer".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut batch = Vec::new();
                    let mut barriers = Vec::new();
                    for work in std::iter::once(first).chain(rx.try_iter()) {
                        match work {
                            Work::Store(request) => batch.push(request),
                            Work::Barrier(done) => barriers.push(done),
                        }
                    }
                    if !batch.is_empty() {
                        writer.write_batch(batch, true);
                    }
                    for done in barriers {
                        done();
                    }
                }
            })?;
        Ok(Writer { tx, shared })
    }

    /// Whether `accepted` is better written on its own ([`Writer::write_alone`]) than by
    /// the thread: a large message, or any under per-message sync.
    pub fn is_alone(&self, accepted: &Accepted) -> bool {
        accepted.message.body.len() > LARGE as u64 || self.shared.spool.sync_mode() == SyncMode::PerMessage
    }

    /// Hands `request` to the thread; its answer comes through the request. When the thread
    /// has stopped, the request comes back.
    pub fn submit(&self, request: Request) -> Result<(), Box<Request>> {
        self.tx
            .send(Work::Store(request))
            .map_err(|mpsc::SendError(work)| match work {
                Work::Store(request) => Box::new(request),
                Work::Barrier(_) => unreachable!("a Store was sent"),
            })
    }

    /// Writes, flushes, publishes and answers `request` in the calling thread (blocking),
    /// publishing before answering: once the session has its answer, nothing of this
    /// message is still in flight.
    pub fn write_alone(&self, request: Request) {
        self.shared.write_batch(vec![request], false);
    }

    /// Calls `done` once everything handed to the thread before it is written, answered
    /// and published; at once when the thread has stopped.
    pub fn barrier(&self, done: Box<dyn FnOnce() + Send>) {
        if let Err(mpsc::SendError(Work::Barrier(done))) = self.tx.send(Work::Barrier(done)) {
            done();
        }
    }
}

impl Shared {
    /// Writes, flushes, answers, publishes. A panic here (a bug) fails this batch's
    /// messages with a 451, not the writer. `answer_first`: answer the sessions before
    /// publishing (the thread), or after (a message written on its own, which nothing
    /// else waits behind).
    fn write_batch(&self, batch: Vec<Request>, answer_first: bool) {
        if std::panic::catch_unwind(AssertUnwindSafe(|| self.write_batch_inner(batch, answer_first))).is_err()
        {
            tracing::error!("the spool writer failed on a batch; its sessions were answered 451");
        }
    }

    fn write_batch_inner(&self, batch: Vec<Request>, answer_first: bool) {
        // Written.
        let written: Vec<_> = batch
            .into_iter()
            .map(|request| {
                let entry = request.span.in_scope(|| {
                    let a = &request.accepted;
                    // A local-only message's Maildir copies are written now, so that the
                    // flush before the 250 covers them too.
                    let incoming = Incoming {
                        id: &a.id,
                        envelope: &a.message.envelope,
                        folder: a.folder,
                        success_notices: a.success_notices,
                        head: &a.head,
                        omit: &a.omit,
                        content: &a.message.body,
                    };
                    self.spool.write_with_copies(&self.maildir, incoming)
                });
                (request, entry)
            })
            .collect();
        // Durable.
        let flushed = self.spool.flush().map_err(|e| e.to_string());
        let mut durable = Vec::with_capacity(written.len());
        let mut answers = Vec::with_capacity(written.len());
        for (request, entry) in written {
            let _span = request.span.enter();
            let result = match (entry, &flushed) {
                (Ok(written), Ok(())) => Ok(written),
                (Ok((entry, _)), Err(e)) => {
                    // Told 451, the client sends it again: this copy must not be delivered.
                    if let Err(withdraw) = self.spool.withdraw(&self.maildir, &entry) {
                        tracing::warn!(queue_id = %entry.id, error = %withdraw, "cannot take back a message whose flush failed; it may be delivered twice");
                    }
                    Err(e.clone())
                }
                (Err(e), _) => Err(e.to_string()),
            };
            match &result {
                Ok((entry, prepared)) => {
                    tracing::info!(
                        queue_id = %entry.id,
                        from = %entry.envelope.reverse_path(),
                        recipients = entry.envelope.recipients.len(),
                        size = entry.size,
                        "queued"
                    );
                    durable.push((request.span.clone(), entry.clone(), request.accepted, *prepared));
                }
                Err(e) => tracing::error!(error = %e, "spool write failed; answering 451"),
            }
            answers.push((request.answer, result.map(|(entry, _)| entry)));
        }
        // Answered (the thread answers first: the 250s go out before the copies are
        // published), then published.
        let answers = if answer_first {
            answer(answers);
            Vec::new()
        } else {
            answers
        };
        for (span, entry, accepted, prepared) in durable {
            let _span = span.enter();
            if !self.publish(&entry, &accepted, prepared) {
                (self.handoff.deliver)(entry.id);
            }
        }
        // Released: earlier messages whose delivery this flush made durable give up their
        // files.
        self.spool.release_flushed();
        answer(answers);
    }

    /// Publishes a durable message right here when that needs no flush of its own: its
    /// Maildir copies share the spool's flushes, every recipient is local and no report is
    /// owed. The copies prepared before the 250 are moved into `new/`, and the spool file
    /// is released after the next flush anyone runs. Returns whether the message is
    /// settled; when not, delivery finds the published copies delivered already.
    /// `prepared`: [`Spool::write_with_copies`] prepared every copy.
    fn publish(&self, entry: &Entry, accepted: &Accepted, prepared: bool) -> bool {
        // A large content was not copied before the flush: delivery copies it.
        let Some(body) = accepted.message.body.in_memory() else {
            return false;
        };
        if !self.maildir.shares_spool_flush() || !entry.all_local() {
            return false;
        }
        let content = crate::entry::delivered(accepted.head.as_bytes(), body, &accepted.omit);
        if entry.wants_success_notice() {
            // The report is queued before the recipients leave the spool: delivery's job.
            return false;
        }
        let results = if prepared {
            self.maildir.publish_prepared(entry, &entry.pending, &content)
        } else {
            self.maildir
                .deliver_copies(entry, &entry.pending, &content, false)
        };
        if let Some((index, Err(e))) = results.iter().find(|(_, r)| r.is_err()) {
            let recipient = &entry.envelope.recipients[*index].mailbox;
            tracing::warn!(queue_id = %entry.id, %recipient, error = %e, "delivery failed; the delivery scheduler will retry");
            return false;
        }
        match self.spool.retire_after_flush(entry.id.clone()) {
            Ok(()) => {
                (self.handoff.retiring)();
                tracing::info!(queue_id = %entry.id, "delivered");
                true
            }
            Err(e) => {
                tracing::warn!(queue_id = %entry.id, error = %e, "cannot retire a delivered message; the delivery scheduler will");
                false
            }
        }
    }
}

fn answer(answers: Vec<(Answer, Result<Entry, String>)>) {
    for (done, result) in answers {
        // A session that went away meanwhile: its message is spooled all the same.
        done(result);
    }
}
