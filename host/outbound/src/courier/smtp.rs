//! The SMTP courier: one transaction per destination domain, to the hosts its route names
//! (a route, the relay host, or MX), within the connection limits in all and per
//! destination.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use portcullis_smtp::client::RecipientResult;
use portcullis_smtp::envelope::Envelope;
use portcullis_smtp::{Enhanced, Reply};
use portcullis_spool::Entry;
use tokio::sync::Semaphore;

use super::{Courier, Delivering, Outcome, Parcel};
use crate::client::{self, Peer};
use crate::route::RouteError;
use crate::scheduler::Routing;

/// Delivers to other domains' servers.
pub struct SmtpCourier {
    routing: Arc<ArcSwap<Routing>>,
    /// Connections in all (`[delivery] max-connections` at start).
    slots: Semaphore,
    /// Connections per destination (a host, or a domain's MX set).
    destinations: Mutex<HashMap<String, Arc<Semaphore>>>,
}

impl SmtpCourier {
    /// A courier with the settings in `routing` (read afresh for every batch).
    pub fn new(routing: Arc<ArcSwap<Routing>>) -> Self {
        let slots = Semaphore::new(routing.load().settings.max_connections.max(1));
        SmtpCourier {
            routing,
            slots,
            destinations: Mutex::new(HashMap::new()),
        }
    }

    fn destination(&self, name: &str, per_destination: usize) -> Arc<Semaphore> {
        let mut map = self
            .destinations
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Arc::clone(
            map.entry(name.to_string())
                .or_insert_with(|| Arc::new(Semaphore::new(per_destination.max(1)))),
        )
    }

    /// Delivers `parcel`, whose recipients are all in `domain`.
    async fn carry_to(&self, parcel: &Parcel, domain: &str) -> Vec<Outcome> {
        let routing = self.routing.load_full();
        let settings = &routing.settings;
        let (id, recipients) = (&parcel.entry.id, &parcel.recipients);
        let plan = match routing.router.plan(settings, domain).await {
            Ok(plan) => plan,
            Err(RouteError::Permanent(reply)) => {
                tracing::warn!(queue_id = %id, %domain, reply = %reply.to_string().trim_end(), "no route to the domain");
                return Outcome::all(recipients, &RecipientResult::Fail(reply), None);
            }
            Err(RouteError::Temporary(reply)) => {
                tracing::info!(queue_id = %id, %domain, reply = %reply.to_string().trim_end(), "routing failed for now");
                return Outcome::all(recipients, &RecipientResult::Defer(reply), None);
            }
        };
        let destination = self.destination(&plan.destination, settings.per_destination);
        // Both semaphores live as long as the courier and are never closed.
        let (Ok(_slot), Ok(_dest)) = (self.slots.acquire().await, destination.acquire().await) else {
            let reply = Reply::new(451, Some(Enhanced(4, 3, 0)), "shutting down");
            return Outcome::all(recipients, &RecipientResult::Defer(reply), None);
        };
        let batch: Vec<_> = recipients
            .iter()
            .map(|&i| parcel.entry.envelope.recipients[i].clone())
            .collect();
        // A batch shares its sender and, for copies an alias forwards, its alias
        // ([`Courier::batches`]).
        let forwarded_by = batch.first().and_then(|r| r.alias.clone());
        let message = match &forwarded_by {
            Some(alias) => {
                if let Some(reply) = forwarding_loop(&parcel.message, alias) {
                    tracing::warn!(queue_id = %id, %alias, "mail forwarding loop: the message was delivered to this alias before");
                    return Outcome::all(recipients, &RecipientResult::Fail(reply), None);
                }
                // RFC 9228: the copy names the alias that forwarded it, so that it is
                // refused if it ever comes back.
                let mut copy = format!("Delivered-To: {alias}\r\n").into_bytes();
                copy.extend_from_slice(&parcel.message);
                Arc::new(copy)
            }
            None => Arc::clone(&parcel.message),
        };
        let envelope = Envelope {
            mail_from: match batch.first().and_then(|r| r.sender.clone()) {
                Some(sender) => Some(sender),
                None => parcel.entry.envelope.mail_from.clone(),
            },
            recipients: batch,
            ..parcel.entry.envelope.clone()
        };
        let mut last = None;
        for (n, host) in plan.hosts.iter().enumerate() {
            let peer = Peer {
                name: &host.name,
                addrs: &host.addrs,
                tls: plan.tls,
                auth: plan.auth.as_ref(),
            };
            tracing::debug!(queue_id = %id, host = %host.name, "connecting");
            match client::transact(settings, &peer, &envelope, &message).await {
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
                    tracing::info!(queue_id = %id, host = %host.name, tls = done.tls, "transaction finished");
                    return recipients
                        .iter()
                        .zip(done.results)
                        .map(|(&index, result)| Outcome {
                            index,
                            result,
                            host: Some(host.name.clone()),
                            peer_dsn: done.peer_dsn,
                        })
                        .collect();
                }
                Err(e) => {
                    tracing::info!(queue_id = %id, host = %host.name, error = %e, "host failed; trying the next one if any");
                    let reply = e.reply();
                    last = Some(if e.is_permanent() {
                        RecipientResult::Fail(reply)
                    } else {
                        RecipientResult::Defer(reply)
                    });
                }
            }
        }
        let last = last.unwrap_or_else(|| {
            RecipientResult::Defer(Reply::new(451, Some(Enhanced(4, 4, 1)), "no host could be tried"))
        });
        Outcome::all(recipients, &last, plan.hosts.last().map(|h| h.name.as_str()))
    }
}

impl Courier for SmtpCourier {
    fn batches(&self, entry: &Entry, recipients: Vec<usize>) -> Vec<Vec<usize>> {
        // One transaction per domain, and within it per sender and forwarding alias: an
        // alias's forwarded copies carry their own sender (SRS) and `Delivered-To:`.
        let mut batches: BTreeMap<(String, Option<String>, Option<String>), Vec<usize>> = BTreeMap::new();
        for i in recipients {
            if let Some(r) = entry.envelope.recipients.get(i) {
                let key = (
                    r.mailbox.domain_lower(),
                    r.sender.as_ref().map(ToString::to_string),
                    r.alias.as_ref().map(|a| a.to_string().to_lowercase()),
                );
                batches.entry(key).or_default().push(i);
            }
        }
        batches.into_values().collect()
    }

    fn carry(&self, parcel: Parcel) -> Delivering<'_> {
        Box::pin(async move {
            let domain = parcel
                .recipients
                .first()
                .and_then(|&i| parcel.entry.envelope.recipients.get(i))
                .map(|r| r.mailbox.domain_lower())
                .unwrap_or_default();
            self.carry_to(&parcel, &domain).await
        })
    }

    fn retry_after(&self, attempts: u32) -> Duration {
        self.routing.load().settings.retry_after(attempts)
    }
}

/// The refusal of a copy that `alias` would forward although the message was delivered to
/// it before: its header names the alias in a `Delivered-To:` field (Postfix's rule).
fn forwarding_loop(message: &[u8], alias: &portcullis_smtp::Mailbox) -> Option<Reply> {
    let alias = alias.to_string();
    portcullis_smtp::fields::fields(message)
        .iter()
        .any(|field| {
            field.is("Delivered-To")
                && field
                    .value()
                    .trim_matches(['<', '>'])
                    .eq_ignore_ascii_case(&alias)
        })
        .then(|| {
            Reply::new(
                554,
                Some(Enhanced(5, 4, 6)),
                format!("mail forwarding loop for {alias}"),
            )
        })
}
