//! Why the daemon stops before it serves.

use std::net::SocketAddr;

use crate::tls;

/// A failure that stops the daemon before it serves.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The data directory cannot be created.
    #[error("data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// TLS set-up failed.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// The accounts file is broken.
    #[error(transparent)]
    Accounts(#[from] crate::accounts::AccountsError),
    /// The spool cannot be opened.
    #[error(transparent)]
    Spool(#[from] portcullis_spool::SpoolError),
    /// The signal handlers cannot be installed.
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    /// A DKIM key cannot be loaded.
    #[error(transparent)]
    Dkim(#[from] crate::dkim::DkimError),
    /// The rate store (`[rate] store`) cannot be set up.
    #[error("rate.store: {0}")]
    RateStore(String),
    /// A plugin cannot be loaded.
    #[error("plugin: {0}")]
    Plugin(#[from] portcullis_runtime::LoadError),
    /// Changing users failed, or the data directory is not usable.
    #[error(transparent)]
    Privileges(#[from] crate::privileges::PrivilegeError),
    /// The DNS resolver cannot be set up.
    #[error(transparent)]
    Dns(#[from] portcullis_outbound::dns::ResolverError),
    /// Delivery cannot be set up (the spool writer).
    #[error("delivery: {0}")]
    Delivery(String),
    /// A listener cannot bind.
    #[error("cannot listen on {address} ({kind}): {source}")]
    Bind {
        /// The address.
        address: SocketAddr,
        /// The listener kind.
        kind: &'static str,
        /// Why.
        source: std::io::Error,
    },
}
