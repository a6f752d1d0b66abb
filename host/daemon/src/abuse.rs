//! The limits that keep one client from taking the server down, in the host, across
//! sessions (the session itself knows only its own): connections per listener and per
//! client address, and failed AUTHs per client address and per account name. Each limit is
//! one `[limits]` key, one reply, one metric and one line in docs/operations.md ("Limits
//! and abuse"); addresses in `[limits] exempt` are never held to the per-address ones.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::config::{LimitsSection, Network, Threshold};

/// Whether `ip` is in one of `exempt`.
pub fn is_exempt(exempt: &[Network], ip: IpAddr) -> bool {
    exempt.iter().any(|n| n.contains(ip))
}

/// Why a connection was turned away.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Crowded {
    /// The listener holds `[limits] connections` already.
    Listener,
    /// The client address holds `[limits] connections-per-ip` already.
    Address,
}

impl Crowded {
    /// For logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Crowded::Listener => "listener",
            Crowded::Address => "address",
        }
    }
}

/// Open connections, per listener and per client address.
#[derive(Debug)]
pub struct Connections {
    per_listener: Vec<AtomicUsize>,
    per_address: Mutex<HashMap<IpAddr, usize>>,
}

/// One admitted connection; it leaves the counts when dropped.
#[derive(Debug)]
pub struct Admitted {
    connections: Arc<Connections>,
    listener: usize,
    address: Option<IpAddr>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.connections.per_listener[self.listener].fetch_sub(1, Ordering::Relaxed);
        if let Some(ip) = self.address {
            let mut map = self
                .connections
                .per_address
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if let Some(count) = map.get_mut(&ip) {
                *count -= 1;
                if *count == 0 {
                    map.remove(&ip);
                }
            }
        }
    }
}

impl Connections {
    /// Counts for `listeners` listeners.
    pub fn new(listeners: usize) -> Arc<Connections> {
        Arc::new(Connections {
            per_listener: (0..listeners).map(|_| AtomicUsize::new(0)).collect(),
            per_address: Mutex::new(HashMap::new()),
        })
    }

    /// Admits a connection from `ip` on listener number `listener`, or says why not.
    pub fn admit(
        self: &Arc<Self>,
        listener: usize,
        ip: IpAddr,
        limits: &LimitsSection,
    ) -> Result<Admitted, Crowded> {
        let open = &self.per_listener[listener];
        if open.fetch_add(1, Ordering::Relaxed) >= limits.connections {
            open.fetch_sub(1, Ordering::Relaxed);
            return Err(Crowded::Listener);
        }
        let mut admitted = Admitted {
            connections: Arc::clone(self),
            listener,
            address: None,
        };
        if !is_exempt(&limits.exempt, ip) {
            let mut map = self.per_address.lock().unwrap_or_else(PoisonError::into_inner);
            let count = map.entry(ip).or_insert(0);
            if *count >= limits.connections_per_ip {
                // `admitted` leaves the listener's count as it drops.
                return Err(Crowded::Address);
            }
            *count += 1;
            admitted.address = Some(ip);
        }
        Ok(admitted)
    }

    /// Open connections from `ip`.
    #[cfg(test)]
    fn from(&self, ip: IpAddr) -> usize {
        self.per_address
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&ip)
            .copied()
            .unwrap_or(0)
    }
}

/// What an AUTH may do, given the failures before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthGate {
    /// Check the credentials.
    Open,
    /// Wait this long first: the account name has failed too often.
    Slow(Duration),
    /// Answer `454 4.7.0` without checking: the client address has failed too often.
    Closed,
}

/// The longest an AUTH waits for a name that keeps failing.
const MAX_SLOWDOWN: Duration = Duration::from_secs(30);

/// Failed AUTHs within their windows, per client address and per account name.
#[derive(Debug, Default)]
pub struct AuthFailures {
    by_address: Mutex<HashMap<IpAddr, VecDeque<Instant>>>,
    by_name: Mutex<HashMap<String, VecDeque<Instant>>>,
}

/// How many of `events` fall within `window` of `now`, dropping the older ones.
fn recent(events: &mut VecDeque<Instant>, now: Instant, window: Duration) -> u32 {
    while events.front().is_some_and(|at| now.duration_since(*at) >= window) {
        events.pop_front();
    }
    events.len() as u32
}

impl AuthFailures {
    /// What an AUTH from `ip` for `name` may do now.
    pub fn gate(&self, ip: IpAddr, name: &str, limits: &LimitsSection) -> AuthGate {
        let now = Instant::now();
        let Threshold { max, window } = limits.auth_failures_per_ip;
        if !is_exempt(&limits.exempt, ip) {
            let mut map = self.by_address.lock().unwrap_or_else(PoisonError::into_inner);
            if map
                .get_mut(&ip)
                .is_some_and(|events| recent(events, now, window.0) >= max)
            {
                return AuthGate::Closed;
            }
        }
        let Threshold { max, window } = limits.auth_failures_per_account;
        let mut map = self.by_name.lock().unwrap_or_else(PoisonError::into_inner);
        let failures = map
            .get_mut(&name.to_lowercase())
            .map_or(0, |events| recent(events, now, window.0));
        if failures >= max {
            // One second more for each failure past the limit, up to a cap.
            let over = failures - max + 1;
            return AuthGate::Slow(Duration::from_secs(u64::from(over)).min(MAX_SLOWDOWN));
        }
        AuthGate::Open
    }

    /// Counts a failed AUTH from `ip` for `name`.
    pub fn record(&self, ip: IpAddr, name: &str, limits: &LimitsSection) {
        let now = Instant::now();
        let windows = (
            limits.auth_failures_per_ip.window.0,
            limits.auth_failures_per_account.window.0,
        );
        {
            let mut map = self.by_address.lock().unwrap_or_else(PoisonError::into_inner);
            let events = map.entry(ip).or_default();
            recent(events, now, windows.0);
            events.push_back(now);
            map.retain(|_, events| {
                events
                    .back()
                    .is_some_and(|at| now.duration_since(*at) < windows.0)
            });
        }
        let mut map = self.by_name.lock().unwrap_or_else(PoisonError::into_inner);
        let events = map.entry(name.to_lowercase()).or_default();
        recent(events, now, windows.1);
        events.push_back(now);
        map.retain(|_, events| {
            events
                .back()
                .is_some_and(|at| now.duration_since(*at) < windows.1)
        });
    }
}

/// The open-file limit: raises the soft limit to the hard one, and returns it (`None` when
/// it cannot be read).
pub fn raise_open_files() -> Option<u64> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        limit.current = limit.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, limit) {
            tracing::warn!(error = %e, "cannot raise the open-file limit");
            return getrlimit(Resource::Nofile).current;
        }
    }
    limit.current
}

/// The descriptors the configured connection caps may need, with some to spare for
/// files, plugins and the spool.
fn descriptors_needed(limits: &LimitsSection, listeners: usize) -> u64 {
    (limits.connections as u64).saturating_mul(listeners as u64) + 256
}

/// A warning when the connection caps do not fit in the open-file limit `available`: the
/// system would refuse connections before the caps do (`accept` failing, every listener
/// stalling) instead of the caps answering 421.
pub fn descriptor_warning(
    limits: &LimitsSection,
    listeners: usize,
    available: Option<u64>,
) -> Option<String> {
    let available = available?;
    let needed = descriptors_needed(limits, listeners);
    (needed > available).then(|| {
        format!(
            "limits.connections ({} per listener, {listeners} listener(s)) needs about {needed} open files, but the limit is {available}: lower limits.connections or raise the limit (LimitNOFILE= in the systemd unit, ulimit -n)",
            limits.connections
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(exempt: &[&str]) -> LimitsSection {
        LimitsSection {
            connections: 3,
            connections_per_ip: 2,
            exempt: exempt.iter().map(|n| n.parse().unwrap()).collect(),
            auth_failures_per_ip: Threshold {
                max: 2,
                window: crate::config::Span(Duration::from_secs(60)),
            },
            auth_failures_per_account: Threshold {
                max: 3,
                window: crate::config::Span(Duration::from_secs(60)),
            },
            ..LimitsSection::default()
        }
    }

    #[test]
    fn connections_are_capped_per_listener_and_per_address() {
        let limits = limits(&["127.0.0.0/8"]);
        let counts = Connections::new(2);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let first = counts.admit(0, a, &limits).unwrap();
        let _second = counts.admit(0, a, &limits).unwrap();
        assert_eq!(counts.admit(0, a, &limits).unwrap_err(), Crowded::Address);
        // Another address still gets in; the listener's own cap then holds.
        let _third = counts.admit(0, b, &limits).unwrap();
        assert_eq!(counts.admit(0, b, &limits).unwrap_err(), Crowded::Listener);
        // Another listener has its own count.
        assert_eq!(counts.admit(1, a, &limits).unwrap_err(), Crowded::Address);
        let _other = counts.admit(1, b, &limits).unwrap();
        drop(first);
        assert_eq!(counts.from(a), 1);
        assert!(counts.admit(0, a, &limits).is_ok());
        // Exempt addresses count toward the listener only.
        let local: IpAddr = "127.0.0.1".parse().unwrap();
        let counts = Connections::new(1);
        let held: Vec<_> = (0..3).map(|_| counts.admit(0, local, &limits).unwrap()).collect();
        assert_eq!(counts.from(local), 0);
        assert_eq!(counts.admit(0, local, &limits).unwrap_err(), Crowded::Listener);
        drop(held);
    }

    #[test]
    fn auth_failures_close_an_address_and_slow_a_name() {
        let limits = limits(&["::1"]);
        let failures = AuthFailures::default();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        assert_eq!(failures.gate(a, "alice", &limits), AuthGate::Open);
        failures.record(a, "alice", &limits);
        failures.record(a, "Alice", &limits);
        assert_eq!(failures.gate(a, "bob", &limits), AuthGate::Closed);
        // From elsewhere, alice is still checked; one more failure and she is slowed down,
        // never refused.
        assert_eq!(failures.gate(b, "alice", &limits), AuthGate::Open);
        failures.record(b, "alice", &limits);
        assert_eq!(
            failures.gate(b, "alice", &limits),
            AuthGate::Slow(Duration::from_secs(1))
        );
        let c: IpAddr = "192.0.2.3".parse().unwrap();
        failures.record(c, "alice", &limits);
        assert_eq!(
            failures.gate(c, "ALICE", &limits),
            AuthGate::Slow(Duration::from_secs(2))
        );
        // An exempt address is never closed.
        let local: IpAddr = "::1".parse().unwrap();
        for _ in 0..5 {
            failures.record(local, "carol", &limits);
        }
        assert!(matches!(failures.gate(local, "dave", &limits), AuthGate::Open));
    }
}
