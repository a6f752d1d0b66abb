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
use portcullis_spool::{Entry, Maildir, QueueId, Spool, SyncMode};
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
}

struct Request {
    accepted: Accepted,
    session: tracing::Span,
    done: oneshot::Sender<Result<Entry, String>>,
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
    tx: mpsc::Sender<Request>,
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
        let (tx, rx) = mpsc::channel::<Request>();
        let writer = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("spool-writer".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let batch: Vec<Request> = std::iter::once(first).chain(rx.try_iter()).collect();
                    writer.write_batch(batch);
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
            let shared = Arc::clone(&self.shared);
            tokio::task::spawn_blocking(move || shared.write_batch(vec![request]));
        } else if self.tx.send(request).is_err() {
            return Err(STOPPED.into());
        }
        answer.await.unwrap_or_else(|_| Err(STOPPED.into()))
    }
}

impl Shared {
    /// Writes, flushes, answers, publishes. A panic here (a bug) fails this batch's
    /// messages with a 451, not the writer.
    fn write_batch(&self, batch: Vec<Request>) {
        if std::panic::catch_unwind(AssertUnwindSafe(|| self.write_batch_inner(batch))).is_err() {
            tracing::error!("the spool writer failed on a batch; its sessions were answered 451");
        }
    }

    fn write_batch_inner(&self, batch: Vec<Request>) {
        let written: Vec<_> = batch
            .into_iter()
            .map(|request| {
                let entry = request.session.in_scope(|| {
                    let a = &request.accepted;
                    // A local-only message's Maildir copies are written now, so that the
                    // flush before the 250 covers them too.
                    self.spool.write_with_copies(
                        &self.maildir,
                        a.id.clone(),
                        a.message.envelope.clone(),
                        a.folder,
                        a.head.as_bytes(),
                        &a.message.body,
                    )
                });
                (request, entry)
            })
            .collect();
        let flushed = self.spool.flush().map_err(|e| e.to_string());
        // Answer every session first: the 250s go out before the copies are published.
        let mut settled = Vec::with_capacity(written.len());
        for (request, entry) in written {
            let session = request.session.clone();
            let _session = session.enter();
            let result = match (entry, &flushed) {
                (Ok(entry), Ok(())) => Ok(entry),
                (Ok(_), Err(e)) => Err(e.clone()),
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
            // A session that went away meanwhile: its message is spooled all the same.
            let _ = request.done.send(result);
        }
        for (session, entry, accepted) in settled {
            let _session = session.enter();
            let content: [&[u8]; 2] = [accepted.head.as_bytes(), &accepted.message.body];
            if !delivery::deliver_accepted(&self.spool, &self.maildir, &entry, &content, &self.sweep) {
                let _ = self.deliveries.send(Job::new(entry.id));
            }
        }
        // Earlier messages whose delivery this flush made durable give up their files.
        self.spool.release_flushed();
    }
}
