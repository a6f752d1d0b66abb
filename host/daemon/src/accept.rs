//! The spool writer: one thread writes the messages sessions accept, makes everything it
//! wrote together durable with one flush, answers each session, and then publishes the
//! local copies.
//!
//! Sessions hand their message over a channel and await the answer; while the thread waits
//! on a flush, the next messages queue up and share the following one. Compared with a
//! blocking-pool task per message that waits on the group commit itself, this spares
//! thread wake-ups and migrations per message (docs/benchmarks.md). The 250 is still only
//! sent after the flush that covers the message has returned.
//!
//! Two kinds of message bypass the thread and are written by a blocking-pool task of their
//! own, as one-message batches: large ones (so that writing one does not hold up the
//! answers of all the small ones behind it) and all of them with per-message sync (whose
//! fsyncs overlap better when they run side by side).

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, mpsc};

use portcullis_smtp::{Folder, Message};
use portcullis_spool::{Entry, Incoming, Maildir, QueueId, Spool, SyncMode};
use tokio::sync::{Notify, mpsc::UnboundedSender, oneshot};

use crate::delivery::{self, Job};

/// Messages above this size are written by a task of their own.
const LARGE: usize = 1 << 20;

/// One accepted message on its way to the spool.
pub struct Accepted {
    /// Its queue id.
    pub id: QueueId,
    /// The message as received.
    pub message: Arc<Message>,
    /// The header lines written before it (`Received:`, hook headers).
    pub head: String,
    /// Where its local copies go.
    pub folder: Folder,
    /// Its sender may be told of successful deliveries ([`portcullis_spool::Entry::success_notices`]).
    pub success_notices: bool,
}

/// Where a session waits for its message's fate.
type Answer = oneshot::Sender<Result<Entry, String>>;

struct Request {
    accepted: Accepted,
    session: tracing::Span,
    done: Answer,
}

/// What the thread is handed: a message, or a barrier answered once everything handed
/// before it is written, answered and published.
enum Work {
    Store(Request),
    Barrier(oneshot::Sender<()>),
}

/// What a batch is written with.
struct Shared {
    spool: Arc<Spool>,
    maildir: Maildir,
    /// Where a message goes that the writer cannot deliver itself.
    deliveries: UnboundedSender<Job>,
    /// Wakes the sweeper that releases delivered messages' spool files.
    sweep: Arc<Notify>,
}

/// The handle sessions use; the thread ends when it is dropped.
pub struct SpoolWriter {
    tx: mpsc::Sender<Work>,
    shared: Arc<Shared>,
}

impl SpoolWriter {
    /// Starts the thread.
    pub fn start(
        spool: Arc<Spool>,
        maildir: Maildir,
        deliveries: UnboundedSender<Job>,
        sweep: Arc<Notify>,
    ) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            spool,
            maildir,
            deliveries,
            sweep,
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
                        let _ = done.send(());
                    }
                }
            })?;
        Ok(SpoolWriter { tx, shared })
    }

    /// Writes `accepted` to the spool; returns its entry once it is durable, or why not.
    pub async fn store(&self, accepted: Accepted) -> Result<Entry, String> {
        const STOPPED: &str = "the spool writer has stopped";
        let (done, answer) = oneshot::channel();
        let own_task =
            accepted.message.body.len() > LARGE || self.shared.spool.sync_mode() == SyncMode::PerMessage;
        let request = Request {
            accepted,
            session: tracing::Span::current(),
            done,
        };
        if own_task {
            // Published before it answers: once the session has its answer, nothing of
            // this message is still in flight (see `settled`).
            let shared = Arc::clone(&self.shared);
            tokio::task::spawn_blocking(move || shared.write_batch(vec![request], false));
        } else if self.tx.send(Work::Store(request)).is_err() {
            return Err(STOPPED.into());
        }
        answer.await.unwrap_or_else(|_| Err(STOPPED.into()))
    }

    /// Returns once every message handed to the thread so far is written, answered and
    /// its copies published: at shutdown, after the sessions have drained, so that the
    /// spool files waiting for a flush are all known to [`Spool::flush_retiring`].
    pub async fn settled(&self) {
        let (done, answer) = oneshot::channel();
        if self.tx.send(Work::Barrier(done)).is_ok() {
            let _ = answer.await;
        }
    }
}

impl Shared {
    /// Writes, flushes, answers, publishes. A panic here (a bug) fails this batch's
    /// messages with a 451, not the writer.
    /// `answer_first`: answer the sessions before publishing (the thread), or after (a
    /// task of its own, which nothing else waits behind).
    fn write_batch(&self, batch: Vec<Request>, answer_first: bool) {
        if std::panic::catch_unwind(AssertUnwindSafe(|| self.write_batch_inner(batch, answer_first))).is_err()
        {
            tracing::error!("the spool writer failed on a batch; its sessions were answered 451");
        }
    }

    fn write_batch_inner(&self, batch: Vec<Request>, answer_first: bool) {
        let written: Vec<_> = batch
            .into_iter()
            .map(|request| {
                let entry = request.session.in_scope(|| {
                    let a = &request.accepted;
                    // A local-only message's Maildir copies are written now, so that the
                    // flush before the 250 covers them too.
                    let incoming = Incoming {
                        id: &a.id,
                        envelope: &a.message.envelope,
                        folder: a.folder,
                        success_notices: a.success_notices,
                        head: a.head.as_bytes(),
                        body: &a.message.body,
                    };
                    self.spool.write_with_copies(&self.maildir, incoming)
                });
                (request, entry)
            })
            .collect();
        let flushed = self.spool.flush().map_err(|e| e.to_string());
        // The thread answers every session first: the 250s go out before the copies are
        // published.
        let mut settled = Vec::with_capacity(written.len());
        let mut answers = Vec::with_capacity(written.len());
        for (request, entry) in written {
            let session = request.session.clone();
            let _session = session.enter();
            let result = match (entry, &flushed) {
                (Ok(entry), Ok(())) => Ok(entry),
                (Ok(entry), Err(e)) => {
                    // Told 451, the client sends it again: this copy must not be delivered.
                    if let Err(withdraw) = self.spool.withdraw(&self.maildir, &entry) {
                        tracing::warn!(queue_id = %entry.id, error = %withdraw, "cannot take back a message whose flush failed; it may be delivered twice");
                    }
                    Err(e.clone())
                }
                (Err(e), _) => Err(e.to_string()),
            };
            match &result {
                Ok(entry) => {
                    tracing::info!(
                        queue_id = %entry.id,
                        from = %entry.envelope.reverse_path(),
                        recipients = entry.envelope.recipients.len(),
                        size = entry.size,
                        "queued"
                    );
                    settled.push((request.session.clone(), entry.clone(), request.accepted));
                }
                Err(e) => tracing::error!(error = %e, "spool write failed; answering 451"),
            }
            answers.push((request.done, result));
        }
        let answer = |answers: Vec<(Answer, Result<Entry, String>)>| {
            for (done, result) in answers {
                // A session that went away meanwhile: its message is spooled all the same.
                let _ = done.send(result);
            }
        };
        let answers = if answer_first {
            answer(answers);
            Vec::new()
        } else {
            answers
        };
        for (session, entry, accepted) in settled {
            let _session = session.enter();
            let content: [&[u8]; 2] = [accepted.head.as_bytes(), &accepted.message.body];
            if !delivery::deliver_accepted(&self.spool, &self.maildir, &entry, &content, &self.sweep) {
                let _ = self.deliveries.send(Job::new(entry.id));
            }
        }
        // Earlier messages whose delivery this flush made durable give up their files.
        self.spool.release_flushed();
        answer(answers);
    }
}
