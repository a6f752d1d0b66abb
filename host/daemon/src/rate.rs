//! The host's rate counters: messages and recipients per authenticated account and per
//! client IP over sliding windows of a minute, an hour and a day. Plugins never keep state;
//! the rate hook gets these numbers and only decides. They live in this process's memory,
//! or in Redis (`[rate] store`) so that several nodes count one allowance.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use portcullis_runtime::bindings::rate::exports::portcullis::filter::rate::{Counters, Usage, Window};

pub use crate::config::rate::{OnStoreError, RateSettings};

const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86_400);

/// Every message that passed (or is before) the rate hook in the last day, per sender key:
/// when it came, its recipients, and the reservation it belongs to.
#[derive(Debug, Default)]
pub struct RateCounters {
    events: Mutex<HashMap<String, Events>>,
    next: AtomicU64,
}

/// One sender's messages, oldest first: when, how many recipients, which reservation.
type Events = VecDeque<(Instant, u32, u64)>;

fn window(events: &Events, now: Instant, span: Duration) -> Window {
    let mut w = Window {
        messages: 0,
        recipients: 0,
    };
    for (at, recipients, _) in events.iter().rev() {
        if now.duration_since(*at) >= span {
            break;
        }
        w.messages = w.messages.saturating_add(1);
        w.recipients = w.recipients.saturating_add(*recipients);
    }
    w
}

fn counters(list: &Events, now: Instant) -> Counters {
    Counters {
        minute: window(list, now, MINUTE),
        hour: window(list, now, HOUR),
        day: window(list, now, DAY),
    }
}

fn keys(account: &str, ip: &str) -> [String; 2] {
    [format!("account:{account}"), format!("ip:{ip}")]
}

impl RateCounters {
    /// The usage before this message, and the message counted at once (so that two
    /// sessions deciding together both see each other); [`RateCounters::release`] takes it
    /// back when the hook does not accept it.
    pub fn reserve(&self, account: &str, ip: &str, recipients: u32) -> (Usage, u64) {
        let now = Instant::now();
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let mut events = self
            .events
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let [by_account, by_ip] = keys(account, ip).map(|key| {
            let list = events.entry(key).or_default();
            while list
                .front()
                .is_some_and(|(at, _, _)| now.duration_since(*at) >= DAY)
            {
                list.pop_front();
            }
            let before = counters(list, now);
            list.push_back((now, recipients, id));
            before
        });
        // Forget senders idle for a day, so the map does not grow without bound.
        events.retain(|_, list| {
            list.back()
                .is_some_and(|(at, _, _)| now.duration_since(*at) < DAY)
        });
        (
            Usage {
                account: by_account,
                client_ip: by_ip,
            },
            id,
        )
    }

    /// Takes back the reservation `id` of `account` and `ip`.
    pub fn release(&self, account: &str, ip: &str, id: u64) {
        let mut events = self
            .events
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for key in keys(account, ip) {
            if let Some(list) = events.get_mut(&key) {
                list.retain(|(_, _, of)| *of != id);
            }
        }
    }
}

/// Where the counters live.
pub struct RateStore {
    local: RateCounters,
    redis: Option<Redis>,
    on_store_error: OnStoreError,
}

/// A reserved count: given back if the message is not accepted.
pub struct Reservation {
    account: String,
    ip: String,
    kind: Reserved,
}

enum Reserved {
    Local(u64),
    Redis(String),
}

/// What [`RateStore::reserve`] found.
pub enum Reserve {
    /// The usage before this message, and the reservation.
    Counted(Usage, Reservation),
    /// The shared store could not be reached, and `on-store-error = "defer"`.
    Unavailable,
}

impl RateStore {
    /// The store `settings` name (a Redis client connects at its first use).
    pub fn new(settings: &RateSettings) -> Result<RateStore, String> {
        let redis = match &settings.redis {
            Some(url) => Some(Redis::new(url)?),
            None => None,
        };
        Ok(RateStore {
            local: RateCounters::default(),
            redis,
            on_store_error: settings.on_store_error,
        })
    }

    /// Counts a message of `recipients` for `account` (empty on MX) and `ip` before its
    /// rate hook, and returns the usage before it.
    pub async fn reserve(&self, account: &str, ip: &str, recipients: u32) -> Reserve {
        if let Some(redis) = &self.redis {
            match redis.reserve(account, ip, recipients).await {
                Ok((usage, member)) => {
                    return Reserve::Counted(
                        usage,
                        Reservation {
                            account: account.into(),
                            ip: ip.into(),
                            kind: Reserved::Redis(member),
                        },
                    );
                }
                Err(e) => {
                    crate::metrics::rate_store_error();
                    match self.on_store_error {
                        OnStoreError::Defer => {
                            tracing::warn!(error = %e, "the rate store cannot be reached; deferring (on-store-error = \"defer\")");
                            return Reserve::Unavailable;
                        }
                        OnStoreError::Local => {
                            tracing::warn!(error = %e, "the rate store cannot be reached; counting in this node's memory (on-store-error = \"local\")");
                        }
                    }
                }
            }
        }
        let (usage, id) = self.local.reserve(account, ip, recipients);
        Reserve::Counted(
            usage,
            Reservation {
                account: account.into(),
                ip: ip.into(),
                kind: Reserved::Local(id),
            },
        )
    }

    /// Takes a reservation back: the message was not accepted.
    pub async fn release(&self, reservation: Reservation) {
        match (&reservation.kind, &self.redis) {
            (Reserved::Local(id), _) => self.local.release(&reservation.account, &reservation.ip, *id),
            (Reserved::Redis(member), Some(redis)) => {
                if let Err(e) = redis.release(&reservation.account, &reservation.ip, member).await {
                    // Counted a message that was not accepted: the sender's allowance is
                    // one smaller for a day at most; never a message let through.
                    tracing::warn!(error = %e, "a refused message stays counted in the rate store");
                }
            }
            (Reserved::Redis(_), None) => {}
        }
    }
}

/// The counters in Redis: one sorted set per sender key (`portcullis:rate:account:…`,
/// `portcullis:rate:ip:…`), a member per message (`<node>-<n>:<recipients>`) scored by the
/// Redis server's clock in milliseconds, so that nodes with different clocks agree. One
/// script trims the day's window, counts the three windows and adds the message, atomically.
struct Redis {
    client: redis::Client,
    connection: tokio::sync::Mutex<Option<redis::aio::MultiplexedConnection>>,
    reserve: redis::Script,
    node: String,
    next: AtomicU64,
}

/// How long one operation on the store may take before it counts as unreachable.
const REDIS_TIMEOUT: Duration = Duration::from_secs(2);

const RESERVE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {}
for _, key in ipairs(KEYS) do
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - 86400000)
  local c = {0, 0, 0, 0, 0, 0}
  local entries = redis.call('ZRANGE', key, 0, -1, 'WITHSCORES')
  for i = 1, #entries, 2 do
    local recipients = tonumber(string.match(entries[i], ':(%d+)$')) or 0
    local age = now - tonumber(entries[i + 1])
    if age < 60000 then c[1] = c[1] + 1; c[2] = c[2] + recipients end
    if age < 3600000 then c[3] = c[3] + 1; c[4] = c[4] + recipients end
    c[5] = c[5] + 1; c[6] = c[6] + recipients
  end
  redis.call('ZADD', key, now, ARGV[1])
  redis.call('PEXPIRE', key, 86400000)
  for _, n in ipairs(c) do table.insert(out, n) end
end
return out
";

fn redis_keys(account: &str, ip: &str) -> [String; 2] {
    keys(account, ip).map(|key| format!("portcullis:rate:{key}"))
}

impl Redis {
    fn new(url: &str) -> Result<Redis, String> {
        let client = redis::Client::open(url).map_err(|e| format!("{url:?}: {e}"))?;
        Ok(Redis {
            client,
            connection: tokio::sync::Mutex::new(None),
            reserve: redis::Script::new(RESERVE),
            // A random name for this process: std's hasher keys are random per process.
            node: format!(
                "{:016x}",
                std::hash::BuildHasher::hash_one(
                    &std::collections::hash_map::RandomState::new(),
                    std::process::id()
                )
            ),
            next: AtomicU64::new(0),
        })
    }

    /// The shared connection, opened (again) when there is none.
    async fn connection(&self) -> Result<redis::aio::MultiplexedConnection, String> {
        let mut held = self.connection.lock().await;
        if let Some(connection) = held.as_ref() {
            return Ok(connection.clone());
        }
        let opened = self
            .client
            .get_multiplexed_async_connection()
            .await
            .map_err(|e| e.to_string())?;
        *held = Some(opened.clone());
        Ok(opened)
    }

    /// Forgets a connection that failed, so that the next operation opens a new one.
    async fn drop_connection(&self) {
        *self.connection.lock().await = None;
    }

    async fn reserve(&self, account: &str, ip: &str, recipients: u32) -> Result<(Usage, String), String> {
        let member = format!(
            "{}-{}:{recipients}",
            self.node,
            self.next.fetch_add(1, Ordering::Relaxed)
        );
        let asked = async {
            let mut connection = self.connection().await?;
            let mut invocation = self.reserve.prepare_invoke();
            for key in redis_keys(account, ip) {
                invocation.key(key);
            }
            invocation.arg(&member);
            invocation
                .invoke_async::<Vec<u32>>(&mut connection)
                .await
                .map_err(|e| e.to_string())
        };
        let counts = match tokio::time::timeout(REDIS_TIMEOUT, asked).await {
            Ok(Ok(counts)) if counts.len() == 12 => counts,
            Ok(Ok(counts)) => return Err(format!("the rate script answered {} numbers", counts.len())),
            Ok(Err(e)) => {
                self.drop_connection().await;
                return Err(e);
            }
            Err(_) => {
                self.drop_connection().await;
                return Err(format!("no answer within {REDIS_TIMEOUT:?}"));
            }
        };
        let window = |at: usize| Window {
            messages: counts[at],
            recipients: counts[at + 1],
        };
        let of = |at: usize| Counters {
            minute: window(at),
            hour: window(at + 2),
            day: window(at + 4),
        };
        Ok((
            Usage {
                account: of(0),
                client_ip: of(6),
            },
            member,
        ))
    }

    async fn release(&self, account: &str, ip: &str, member: &str) -> Result<(), String> {
        let asked = async {
            let mut connection = self.connection().await?;
            let mut pipe = redis::pipe();
            for key in redis_keys(account, ip) {
                pipe.zrem(key, member).ignore();
            }
            pipe.query_async::<()>(&mut connection)
                .await
                .map_err(|e| e.to_string())
        };
        match tokio::time::timeout(REDIS_TIMEOUT, asked).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                self.drop_connection().await;
                Err(e)
            }
            Err(_) => {
                self.drop_connection().await;
                Err(format!("no answer within {REDIS_TIMEOUT:?}"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_account_and_ip_and_gives_back_what_was_refused() {
        let c = RateCounters::default();
        let (before, _) = c.reserve("alice@example.org", "192.0.2.1", 3);
        assert_eq!(before.account.day.messages, 0);
        c.reserve("alice@example.org", "192.0.2.2", 1);
        let (u, refused) = c.reserve("alice@example.org", "192.0.2.1", 5);
        assert_eq!((u.account.minute.messages, u.account.day.recipients), (2, 4));
        assert_eq!((u.client_ip.hour.messages, u.client_ip.hour.recipients), (1, 3));
        c.release("alice@example.org", "192.0.2.1", refused);
        let (u, _) = c.reserve("alice@example.org", "192.0.2.1", 1);
        assert_eq!((u.account.minute.messages, u.account.day.recipients), (2, 4));
        let (other, _) = c.reserve("bob@example.org", "192.0.2.9", 1);
        assert_eq!(other.account.day.messages, 0);
    }
}
