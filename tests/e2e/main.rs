//! End-to-end tests: the real `portcullis` binary on loopback, real clients, real TLS.
//!
//! Each test starts its own daemon on `127.0.0.1:0` ports in a fresh data directory and
//! learns the bound addresses from the daemon's own log.

mod abuse;
mod aliases;
mod auth_cache;
mod authentication;
mod capabilities;
mod cli;
mod durability;
mod harness;
mod hostile;
mod hot_swap;
mod interop;
mod languages;
mod outbound;
mod pipelines;
mod plugins;
mod privileges;
mod service;
mod shutdown;
mod sink;
mod stack;
