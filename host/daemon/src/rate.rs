//! The host's rate counters: messages and recipients per authenticated account and per
//! client IP over sliding windows of a minute, an hour and a day. Plugins never keep state;
//! the rate hook gets these numbers and only decides.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use portcullis_runtime::bindings::rate::exports::portcullis::filter::rate::{Counters, Usage, Window};

const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86_400);

/// Every message that passed the rate hook in the last day, per sender key.
#[derive(Debug, Default)]
pub struct RateCounters {
    events: Mutex<HashMap<String, VecDeque<(Instant, u32)>>>,
}

fn window(events: &VecDeque<(Instant, u32)>, now: Instant, span: Duration) -> Window {
    let mut w = Window {
        messages: 0,
        recipients: 0,
    };
    for (at, recipients) in events.iter().rev() {
        if now.duration_since(*at) >= span {
            break;
        }
        w.messages = w.messages.saturating_add(1);
        w.recipients = w.recipients.saturating_add(*recipients);
    }
    w
}

impl RateCounters {
    fn counters(&self, key: &str, now: Instant) -> Counters {
        let events = match self.events.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        let empty = VecDeque::new();
        let list = events.get(key).unwrap_or(&empty);
        Counters {
            minute: window(list, now, MINUTE),
            hour: window(list, now, HOUR),
            day: window(list, now, DAY),
        }
    }

    /// Usage before the message about to be decided on.
    pub fn usage(&self, account: &str, ip: &str) -> Usage {
        let now = Instant::now();
        Usage {
            account: self.counters(&format!("account:{account}"), now),
            client_ip: self.counters(&format!("ip:{ip}"), now),
        }
    }

    /// Counts a message that passed the rate hook.
    pub fn record(&self, account: &str, ip: &str, recipients: u32) {
        let now = Instant::now();
        let mut events = match self.events.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        for key in [format!("account:{account}"), format!("ip:{ip}")] {
            let list = events.entry(key).or_default();
            while list.front().is_some_and(|(at, _)| now.duration_since(*at) >= DAY) {
                list.pop_front();
            }
            list.push_back((now, recipients));
        }
        // Forget senders idle for a day, so the map does not grow without bound.
        events.retain(|_, list| list.back().is_some_and(|(at, _)| now.duration_since(*at) < DAY));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_account_and_ip() {
        let c = RateCounters::default();
        c.record("alice@example.org", "192.0.2.1", 3);
        c.record("alice@example.org", "192.0.2.2", 1);
        let u = c.usage("alice@example.org", "192.0.2.1");
        assert_eq!((u.account.minute.messages, u.account.day.recipients), (2, 4));
        assert_eq!((u.client_ip.hour.messages, u.client_ip.hour.recipients), (1, 3));
        let other = c.usage("bob@example.org", "192.0.2.9");
        assert_eq!(other.account.day.messages, 0);
    }
}
