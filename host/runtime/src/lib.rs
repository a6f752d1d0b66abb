//! The WebAssembly plugin runtime of Portcullis.
//!
//! Every per-message decision is made by a sandboxed component: one fresh store and
//! instance for every hook call, so nothing a plugin does survives into the next message.
//! Plugins are compiled once (and cached on disk by content hash and engine), type-checked
//! against their hook's world at load, and swapped atomically while sessions run.
//!
//! # Layout
//!
//! - [`bindings`]: host bindings generated from `wit/`, one module per plugin world, for
//!   both versions of the contract (0.2.0 and the pinned 0.1.0).
//! - [`capability`]: what an operator may grant one plugin (DNS, connections), mediated.
//! - `compat`: contract 0.1.0 in terms of 0.2.0.
//! - [`host`]: the store data and the host side of the shared imports (log, config, clock,
//!   the message resource).
//! - [`plugin`]: a plugin's spec, failure policy and errors; checks on what it returns.
//! - [`runtime`]: the engine, loading with the compile cache, and the four hook calls.
//! - [`set`]: the configured plugins per hook, each in a slot that is swapped atomically,
//!   and the file watcher that does it.
//! - [`builtin`]: the example plugins built with the host, embedded in the binary.
//! - [`spec`]: what the configuration says of a plugin (all there is without the `engine`
//!   feature, which is on by default).

#[cfg(feature = "engine")]
pub mod bindings;
#[cfg(feature = "engine")]
pub mod builtin;
#[cfg(feature = "engine")]
pub mod capability;
#[cfg(feature = "engine")]
mod compat;
#[cfg(feature = "engine")]
pub mod host;
#[cfg(feature = "engine")]
pub mod plugin;
#[cfg(feature = "engine")]
pub mod runtime;
#[cfg(feature = "engine")]
pub mod set;
pub mod spec;

/// Without the `engine` feature: the capabilities a plugin may be granted, as types only.
#[cfg(not(feature = "engine"))]
pub mod capability {
    pub use crate::spec::{DEFAULT_CONNECT_BYTES, DEFAULT_DNS_LOOKUPS, Endpoint, Grants};
}

#[cfg(feature = "engine")]
pub use plugin::{PluginError, world};
pub use portcullis_smtp::Hook;
#[cfg(feature = "engine")]
pub use runtime::{Contract, LoadError, LoadedPlugin, Runtime, RuntimeConfig, ScanOutcome, SpamOutcome};
#[cfg(feature = "engine")]
pub use set::{PluginSet, Slot};
pub use spec::{OnError, PluginSpec};
