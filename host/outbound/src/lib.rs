//! Outbound delivery of Portcullis: what the submission pipeline accepted for other domains
//! leaves here, the way a careful MTA sends it.
//!
//! # Layout
//!
//! - [`settings`]: the validated `[delivery]` settings (routes, relay host, retry schedule).
//! - [`route`]: where a domain's mail goes — a route, the relay host, or DNS (MX in
//!   preference order, A/AAAA fallback, null MX, IDN) through hickory-resolver.
//! - [`client`]: one SMTP client session (STARTTLS, AUTH at a smarthost, PIPELINING, SIZE),
//!   moving bytes for the core crate's sans-IO [`portcullis_smtp::client`].
//! - [`dsn`]: RFC 3464 delivery status notifications (bounce, delay, relayed).
//! - [`runner`]: the queue runner: schedule, attempts grouped by domain, per-destination
//!   connection limits, results written back to the spool before anything else.

#![forbid(unsafe_code)]

pub mod client;
pub mod dsn;
pub mod route;
pub mod runner;
pub mod settings;

pub use runner::{Handoff, Outbound, Routing};
pub use settings::{DeliverySettings, RelayLogin, Route, TlsPolicy};
