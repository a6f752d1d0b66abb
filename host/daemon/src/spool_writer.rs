//! The async side of the spool writer (`portcullis_spool::writer`): a session hands its
//! accepted message over and awaits the answer, which comes only once the message is
//! durable. Large messages and per-message sync are written by a blocking task of their
//! own; everything else by the writer's thread, flushed together.

use std::sync::Arc;

use portcullis_spool::writer::{Handoff, Request, Writer};
use portcullis_spool::{Accepted, Entry, Maildir, Spool};
use tokio::sync::{Notify, oneshot};

use portcullis_outbound::Delivery;

/// The handle sessions use; the thread ends when it is dropped.
pub struct SpoolWriter {
    writer: Arc<Writer>,
}

const STOPPED: &str = "the spool writer has stopped";

impl SpoolWriter {
    /// Starts the writer: what it cannot settle goes to `delivery`; `sweep` wakes the
    /// sweeper that releases delivered messages' spool files.
    pub fn start(
        spool: Arc<Spool>,
        maildir: Maildir,
        delivery: Delivery,
        sweep: Arc<Notify>,
    ) -> std::io::Result<Self> {
        let handoff = Handoff {
            deliver: Box::new(move |id| {
                delivery.deliver(id);
            }),
            retiring: Box::new(move || sweep.notify_one()),
        };
        Ok(SpoolWriter {
            writer: Arc::new(Writer::start(spool, maildir, handoff)?),
        })
    }

    /// Writes `accepted` to the spool; returns its entry once it is durable, or why not.
    pub async fn store(&self, accepted: Accepted) -> Result<Entry, String> {
        let (done, answer) = oneshot::channel();
        let alone = self.writer.is_alone(&accepted);
        let request = Request {
            accepted,
            span: tracing::Span::current(),
            answer: Box::new(move |result| {
                let _ = done.send(result);
            }),
        };
        if alone {
            let writer = Arc::clone(&self.writer);
            tokio::task::spawn_blocking(move || writer.write_alone(request));
        } else if self.writer.submit(request).is_err() {
            return Err(STOPPED.into());
        }
        answer.await.unwrap_or_else(|_| Err(STOPPED.into()))
    }

    /// Returns once every message handed to the thread so far is written, answered and
    /// its copies published: at shutdown, after the sessions have drained, so that the
    /// spool files waiting for a flush are all known to `Spool::flush_retiring`.
    pub async fn settled(&self) {
        let (done, answer) = oneshot::channel();
        self.writer.barrier(Box::new(move || {
            let _ = done.send(());
        }));
        let _ = answer.await;
    }
}
