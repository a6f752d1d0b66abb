//! Delivery of Portcullis: every accepted message leaves the spool here, into our own
//! mailboxes or to other domains' servers, the way a careful MTA does it.
//!
//! # Layout
//!
//! - [`scheduler`]: one scheduler over every queued message's pending recipients: when
//!   each message is tried (a timetable rebuilt from the spool), which recipients are due.
//! - `attempt`: one attempt at one message: batches handed to couriers, reports owed,
//!   results written back to the spool before anything else.
//! - [`courier`]: what carries a batch — [`courier::maildir`] into our mailboxes,
//!   [`courier::smtp`] to other domains (connection limits in all and per destination).
//! - [`settings`]: the validated `[delivery]` settings (routes, relay host, retry schedule).
//! - [`dns`]: the server's one resolver (`[dns]`), shared with the authentication checks.
//! - [`route`]: where a domain's mail goes — a route, the relay host, or DNS (MX in
//!   preference order, A/AAAA fallback, null MX, IDN) through hickory-resolver.
//! - [`client`]: one SMTP client session (STARTTLS, AUTH at a smarthost, PIPELINING, SIZE),
//!   moving bytes for the core crate's sans-IO [`portcullis_smtp::client`].
//! - [`dsn`]: RFC 3464 delivery status notifications (bounce, delay, relayed, delivered).

#![forbid(unsafe_code)]

mod attempt;
pub mod client;
pub mod courier;
pub mod dns;
pub mod dsn;
pub mod route;
pub mod scheduler;
pub mod settings;

pub use dns::{DnsSettings, Resolver};
pub use scheduler::{Delivery, Routing};
pub use settings::{DeliverySettings, RelayLogin, Route, TlsPolicy};
