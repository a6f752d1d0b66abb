//! The real programs Portcullis's tests and benchmarks start on loopback, each with its own
//! configuration: never mocks of what they stand for.
//!
//! - [`dns`]: a small authoritative DNS server, answering what the test chose.
//! - [`postfix`]: a Postfix instance from Debian's packages, under a directory of its own.
//! - [`clamd`]: Debian's clamd with a private socket and a signature database of the
//!   test's own.
//! - [`rspamd`]: Debian's rspamd on free loopback ports, asking the test's DNS server.
//! - [`clamav_milter`]: Debian's clamav-milter, asking a test clamd.
//! - [`redis`]: Debian's redis-server on a free loopback port, keeping nothing on disk.
//! - [`dovecot`]: Debian's Dovecot: IMAP over a test's Maildirs, and its authentication
//!   service with a passwd-file of the test's users.

pub mod clamav_milter;
pub mod clamd;
pub mod dns;
pub mod dovecot;
pub mod postfix;
pub mod redis;
pub mod rspamd;
