//! The daemon: everything is checked and bound before the first connection is accepted,
//! then one task per listener accepts and one task per connection runs its session.
//!
//! Shutdown (SIGTERM or SIGINT) goes through [`Phase`]s: `Draining` stops accepting and
//! closes idle sessions with 421 while open transactions finish; after `drain-timeout`,
//! `Closing` answers 421 to everyone still there. SIGHUP reloads the accounts file.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use portcullis_runtime::{PluginSet, Runtime, RuntimeConfig};
use portcullis_smtp::{Mx, Submission};
use portcullis_spool::{Maildir, Spool};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tracing::Instrument;

use crate::config::{Config, ListenerKind};
use crate::delivery::{self, Job};
use crate::hooks::Hooks;
use crate::live::{self, Live};
use crate::privileges;
use crate::tls;

/// Where the daemon is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Accepting and serving.
    Running,
    /// Not accepting; idle sessions are closed, transactions may finish.
    Draining,
    /// Everyone still connected gets 421.
    Closing,
}

/// What every connection shares.
pub struct Context {
    live: ArcSwap<Live>,
    /// Where the configuration came from (`None`: the embedded default).
    config_path: Option<PathBuf>,
    /// The durable queue.
    pub spool: Arc<Spool>,
    /// Writes accepted messages to the spool and publishes their local copies.
    pub writer: crate::accept::SpoolWriter,
    /// The outbound queue runner.
    pub outbound: portcullis_outbound::Outbound,
    /// Who answers hook points.
    pub hooks: Hooks,
    /// Writes the messages the server sends itself (the virus notice).
    pub notices: crate::notice::Notices,
    watcher: Mutex<Option<notify::RecommendedWatcher>>,
    users_watcher: Mutex<Option<notify::RecommendedWatcher>>,
}

impl Context {
    /// The current generation of the reloadable state; a session keeps the one it got.
    pub fn live(&self) -> Arc<Live> {
        self.live.load_full()
    }

    /// (Re)starts watching the plugin files of the current plugin set.
    fn watch_plugins(&self) {
        let watcher = match self.hooks.plugins().watch() {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch plugin files; reload them with SIGHUP");
                None
            }
        };
        match self.watcher.lock() {
            Ok(mut guard) => *guard = watcher,
            Err(poisoned) => *poisoned.into_inner() = watcher,
        }
    }

    /// Re-reads the users file into the current generation (the rest of it unchanged);
    /// returns how many accounts are in force. A broken file keeps the accounts there were.
    async fn reload_accounts(&self) -> Result<usize, String> {
        let current = self.live();
        let fresh = tokio::task::spawn_blocking(move || current.reload_accounts())
            .await
            .map_err(|e| e.to_string())?;
        match fresh {
            Ok(live) => {
                let count = live.accounts.len();
                // Swapped into whatever generation is current now (a SIGHUP may have
                // come meanwhile; its own accounts are as fresh).
                let accounts = Arc::clone(&live.accounts);
                self.live.rcu(|now| Live {
                    config: now.config.clone(),
                    settings: Arc::clone(&now.settings),
                    tls: now.tls.clone(),
                    accounts: Arc::clone(&accounts),
                });
                tracing::info!(accounts = count, users_file = %live.config.users_file.display(), "accounts reloaded");
                Ok(count)
            }
            Err(e) => {
                tracing::error!(error = %e, "the users file changed but cannot be read; the accounts in force stay");
                Err(e.to_string())
            }
        }
    }

    /// (Re)starts watching the users file: a change (`portcullis user ...`, an edit) is in
    /// force within a second, without a SIGHUP.
    fn watch_users(self: &Arc<Self>) {
        let file = self.live().config.users_file.clone();
        let watcher = match watch_file(&file, Arc::downgrade(self)) {
            Ok(w) => {
                tracing::info!(users_file = %file.display(), "watching the users file");
                Some(w)
            }
            Err(e) => {
                tracing::warn!(users_file = %file.display(), error = %e, "cannot watch the users file; reload it with SIGHUP");
                None
            }
        };
        match self.users_watcher.lock() {
            Ok(mut guard) => *guard = watcher,
            Err(poisoned) => *poisoned.into_inner() = watcher,
        }
    }

    /// SIGHUP: re-reads the configuration and everything built from it, validates it all,
    /// and swaps it in only if every part is good. Listeners cannot change this way.
    async fn reload(self: &Arc<Self>) -> Result<String, String> {
        let path = self.config_path.clone();
        let old = self.live();
        type Fresh = (Live, Option<PluginSet>, portcullis_outbound::Context);
        let fresh = tokio::task::spawn_blocking(move || -> Result<Fresh, String> {
            let config = match &path {
                Some(p) => Config::load(p),
                None => Config::embedded(),
            }
            .map_err(|e| e.to_string())?;
            if let Some(why) = live::unchangeable(&old.config, &config) {
                return Err(why);
            }
            let plugins = if config.plugins == old.config.plugins {
                None
            } else {
                Some(load_plugins(&config).map_err(|e| e.to_string())?)
            };
            let outbound =
                portcullis_outbound::Context::new(config.delivery.clone()).map_err(|e| e.to_string())?;
            let live = Live::build(config).map_err(|e| e.to_string())?;
            Ok((live, plugins, outbound))
        })
        .await
        .map_err(|e| e.to_string())??;
        let (live, plugins, outbound) = fresh;
        let summary = format!(
            "{} account(s), local domains {:?}, tls {}",
            live.accounts.len(),
            live.config.local_domains,
            if live.tls.is_some() { "on" } else { "off" }
        );
        self.live.store(Arc::new(live));
        self.watch_users();
        self.outbound.reload(outbound);
        match plugins {
            Some(set) => {
                self.hooks.replace_plugins(Arc::new(set));
                self.watch_plugins();
                Ok(format!("{summary}, new plugin set"))
            }
            None => {
                let plugins = Arc::clone(&self.hooks.plugins());
                let swapped = tokio::task::spawn_blocking(move || plugins.reload(None))
                    .await
                    .unwrap_or(0);
                Ok(format!("{summary}, {swapped} plugin(s) swapped"))
            }
        }
    }
}

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
    /// A plugin cannot be loaded.
    #[error("plugin: {0}")]
    Plugin(#[from] portcullis_runtime::LoadError),
    /// Changing users failed, or the data directory is not usable.
    #[error(transparent)]
    Privileges(#[from] crate::privileges::PrivilegeError),
    /// Outbound delivery cannot be set up (the resolver).
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

/// Checks everything, binds every listener, then serves until SIGTERM/SIGINT has drained.
pub async fn serve(config: Config, config_path: Option<PathBuf>) -> Result<(), StartError> {
    let signals = Signals::install().map_err(StartError::Signals)?;
    // As root (if started so): read the certificate and accounts, bind the ports...
    let live = Live::build(config)?;
    let config = &live.config;
    let mut inherited = inherited_sockets();
    let mut bound = Vec::new();
    for listener in &config.listeners {
        let bind_error = |source| StartError::Bind {
            address: listener.address,
            kind: listener.kind.name(),
            source,
        };
        // A socket passed by the service manager (socket activation) for this address is
        // used as it is; any other address is bound here.
        let socket = match inherited
            .iter()
            .position(|(address, _)| *address == listener.address)
        {
            Some(i) => {
                let (_, socket) = inherited.swap_remove(i);
                socket.set_nonblocking(true).map_err(bind_error)?;
                tracing::info!(kind = listener.kind.name(), address = %listener.address, "using a socket passed by the service manager");
                TcpListener::from_std(socket).map_err(bind_error)?
            }
            None => TcpListener::bind(listener.address).await.map_err(bind_error)?,
        };
        bound.push((listener.kind, socket));
    }
    for (address, _) in inherited {
        tracing::warn!(%address, "a socket passed by the service manager matches no [[listener]]; closing it");
    }
    // ...then become the unprivileged user before touching the data directory.
    privileges::drop_to(config.server.user.as_deref(), config.server.run_as_root)?;
    let data_dir = &config.server.data_dir;
    privileges::check_data_dir(data_dir)?;
    for warning in config.warnings() {
        tracing::warn!("{warning}");
    }
    if live.accounts.is_empty() {
        tracing::warn!(users_file = %config.users_file.display(), "no accounts yet: add one with `portcullis user add NAME --password-stdin`");
    }
    let spool = Arc::new(Spool::open_with(
        &data_dir.join("spool"),
        config.server.spool_sync.mode(),
    )?);
    let recovered = spool.list()?;
    let plugins = Arc::new(load_plugins(config)?);
    let mail_root = data_dir.join("mail");
    portcullis_spool::fsync::create_dir_durable(&mail_root).map_err(|source| StartError::DataDir {
        path: mail_root.display().to_string(),
        source,
    })?;
    // With group commit and the mailboxes on the spool's file system, a message's local
    // copies are written before the spool's flush and share it (docs/architecture.md).
    let maildir =
        Maildir::new(mail_root.clone(), &config.server.hostname).sharing_spool_flush(spool.flush_device());

    let outbound_context = portcullis_outbound::Context::new(config.delivery.clone())
        .map_err(|e| StartError::Delivery(e.to_string()))?;
    let (deliveries, outbound, retire_sweep) =
        delivery::start(Arc::clone(&spool), maildir.clone(), outbound_context);
    let writer = crate::accept::SpoolWriter::start(
        Arc::clone(&spool),
        maildir.clone(),
        deliveries.clone(),
        retire_sweep,
    )
    .map_err(|e| StartError::Delivery(format!("cannot start the spool writer: {e}")))?;
    let hooks = Hooks::new(Arc::clone(&plugins));
    let notices = crate::notice::Notices::new(Arc::clone(&spool), deliveries.clone());
    if !recovered.is_empty() {
        tracing::info!(
            messages = recovered.len(),
            "recovering messages found in the spool"
        );
    }
    for id in recovered {
        let _ = deliveries.send(Job {
            id,
            recovering: true,
            attempts: 0,
        });
    }

    let ctx = Arc::new(Context {
        live: ArcSwap::from_pointee(live),
        config_path,
        spool,
        writer,
        outbound,
        hooks,
        notices,
        watcher: Mutex::new(None),
        users_watcher: Mutex::new(None),
    });
    // Replacing a plugin file swaps the plugin in, live; so does a change of the users file.
    ctx.watch_plugins();
    ctx.watch_users();
    let data_dir = ctx.live().config.server.data_dir.clone();
    let control = Arc::downgrade(&ctx);
    let handler: crate::control::Handler = Arc::new(move |request| {
        let ctx = control.upgrade();
        Box::pin(async move {
            let ctx = ctx.ok_or_else(|| "the daemon is stopping".to_string())?;
            match request {
                crate::control::Request::Flush => {
                    let n = ctx.outbound.flush().await;
                    tracing::info!(
                        messages = n,
                        "queue flush requested: every queued message is tried now"
                    );
                    Ok(n.to_string())
                }
                crate::control::Request::Accounts => ctx.reload_accounts().await.map(|n| n.to_string()),
                crate::control::Request::Remove(id) => {
                    let spool = Arc::clone(&ctx.spool);
                    let target = id.clone();
                    match tokio::task::spawn_blocking(move || spool.discard(&target)).await {
                        Ok(Ok(true)) => {
                            tracing::warn!(queue_id = %id, "removed from the queue by the operator");
                            Ok("removed".into())
                        }
                        Ok(Ok(false)) => Err(format!("no message {id} in the queue")),
                        Ok(Err(e)) => Err(e.to_string()),
                        Err(e) => Err(e.to_string()),
                    }
                }
            }
        })
    });
    crate::control::serve(&data_dir, handler).map_err(|source| StartError::DataDir {
        path: crate::control::path(&data_dir).display().to_string(),
        source,
    })?;

    if let Some(address) = ctx.live().config.metrics.address {
        match crate::metrics::serve(address, Arc::clone(&ctx.spool)).await {
            Ok(bound) => tracing::info!(address = %bound, "metrics endpoint serving GET /metrics"),
            Err(source) => {
                return Err(StartError::Bind {
                    address,
                    kind: "metrics",
                    source,
                });
            }
        }
    }

    let (phase_tx, phase_rx) = watch::channel(Phase::Running);
    let (alive_tx, mut alive_rx) = mpsc::channel::<()>(1);
    let mut acceptors: Vec<tokio::task::JoinHandle<()>> = Vec::new();
    for (kind, socket) in bound {
        let address = socket.local_addr().map_err(|source| StartError::Bind {
            address: SocketAddr::from(([0, 0, 0, 0], 0)),
            kind: kind.name(),
            source,
        })?;
        tracing::info!(kind = kind.name(), %address, "listening");
        acceptors.push(tokio::spawn(accept_loop(
            Arc::clone(&ctx),
            kind,
            socket,
            phase_rx.clone(),
            alive_tx.clone(),
        )));
    }
    drop(alive_tx);
    tracing::info!(
        data_dir = %ctx.live().config.server.data_dir.display(),
        mail = %mail_root.display(),
        users_file = %ctx.live().config.users_file.display(),
        "ready"
    );
    crate::sd_notify::ready();

    wait_for_stop(&ctx, signals).await;
    let drain = ctx.live().config.server.drain_timeout.0;
    tracing::info!(drain_timeout = ?drain, "shutting down: no new connections, finishing open transactions");
    crate::sd_notify::stopping();
    let _ = phase_tx.send(Phase::Draining);
    for acceptor in acceptors {
        let _ = acceptor.await;
    }
    tracing::info!("listeners closed; draining open sessions");
    if tokio::time::timeout(drain, alive_rx.recv()).await.is_err() {
        tracing::warn!("drain timeout reached: answering 421 to the remaining sessions");
        let _ = phase_tx.send(Phase::Closing);
        let _ = tokio::time::timeout(Duration::from_secs(5), alive_rx.recv()).await;
    }
    // Delivered messages whose spool files wait for a flush: release them now rather than
    // leave them for recovery at the next start (once the writer has published the last
    // ones it answered).
    ctx.writer.settled().await;
    let spool = Arc::clone(&ctx.spool);
    if let Ok(Err(e)) = tokio::task::spawn_blocking(move || spool.flush_retiring(Duration::ZERO)).await {
        tracing::warn!(error = %e, "cannot flush the spool at shutdown; recovery will settle delivered messages");
    }
    tracing::info!("stopped");
    Ok(())
}

/// Watches `file` (through its directory, since editors and `portcullis user` replace it by
/// rename) and reloads the accounts of `ctx` when it changes, once a burst of events has
/// settled. The watch ends when the returned watcher is dropped.
fn watch_file(
    file: &std::path::Path,
    ctx: std::sync::Weak<Context>,
) -> notify::Result<notify::RecommendedWatcher> {
    use notify::{RecursiveMode, Watcher};
    let (tx, mut rx) = mpsc::unbounded_channel::<()>();
    let name = file.file_name().map(std::ffi::OsStr::to_os_string);
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event
            && !matches!(event.kind, notify::EventKind::Access(_))
            && event.paths.iter().any(|p| p.file_name() == name.as_deref())
        {
            let _ = tx.send(());
        }
    })?;
    let dir = file
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    watcher.watch(dir, RecursiveMode::NonRecursive)?;
    tokio::spawn(async move {
        while rx.recv().await.is_some() {
            tokio::time::sleep(Duration::from_millis(50)).await;
            while rx.try_recv().is_ok() {}
            let Some(ctx) = ctx.upgrade() else { return };
            let _ = ctx.reload_accounts().await;
        }
    });
    Ok(watcher)
}

/// Listening TCP sockets passed by systemd socket activation (`LISTEN_FDS`), by address.
fn inherited_sockets() -> Vec<(SocketAddr, std::net::TcpListener)> {
    let mut fds = listenfd::ListenFd::from_env();
    let mut sockets = Vec::new();
    for index in 0..fds.len() {
        match fds.take_tcp_listener(index) {
            Ok(Some(socket)) => match socket.local_addr() {
                Ok(address) => sockets.push((address, socket)),
                Err(e) => tracing::warn!(index, error = %e, "ignoring a passed socket without an address"),
            },
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(index, error = %e, "ignoring a passed file descriptor that is not a TCP listener")
            }
        }
    }
    sockets
}

/// Builds the Wasm engine and loads every configured plugin (installing the bundled
/// examples first for the embedded default). Any failure stops the start.
pub fn load_plugins(config: &Config) -> Result<PluginSet, StartError> {
    if config.server.install_example_plugins {
        let dir = config.server.data_dir.join("plugins");
        std::fs::create_dir_all(&dir).map_err(|source| StartError::DataDir {
            path: dir.display().to_string(),
            source,
        })?;
        for (file, bytes) in portcullis_runtime::builtin::ALL {
            let path = dir.join(file);
            if !path.exists() {
                std::fs::write(&path, bytes).map_err(|source| StartError::DataDir {
                    path: path.display().to_string(),
                    source,
                })?;
                tracing::info!(path = %path.display(), "installed a bundled example plugin");
            }
        }
    }
    let max_memory = config.plugins.iter().map(|p| p.memory).max().unwrap_or(1 << 20);
    let runtime = Arc::new(Runtime::new(&RuntimeConfig {
        max_memory,
        instances: PLUGIN_INSTANCES,
        cache_dir: Some(config.server.data_dir.join("plugin-cache")),
    })?);
    Ok(PluginSet::load(runtime, config.plugins.clone())?)
}

/// Whether `path` is an example plugin that `[server] install-example-plugins` writes into
/// `<data-dir>/plugins/` at start when it is missing.
pub fn installs_example_plugin(config: &Config, path: &std::path::Path) -> bool {
    config.server.install_example_plugins
        && path.parent() == Some(config.server.data_dir.join("plugins").as_path())
        && portcullis_runtime::builtin::ALL
            .iter()
            .any(|(file, _)| path.file_name() == Some(std::ffi::OsStr::new(file)))
}

/// Plugin instances that may exist at once: concurrent hook calls beyond this wait for
/// the pool (and fail with the plugin's on-error policy if it stays full).
const PLUGIN_INSTANCES: u32 = 256;

/// The signals the daemon answers, installed before it reports ready: a SIGHUP sent the
/// moment the service manager hears READY must reload, not kill (its default action).
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }
}

/// Serves SIGHUP reloads until SIGTERM or SIGINT.
async fn wait_for_stop(ctx: &Arc<Context>, mut signals: Signals) {
    loop {
        tokio::select! {
            _ = signals.term.recv() => return,
            _ = signals.int.recv() => return,
            _ = signals.hup.recv() => {
                crate::sd_notify::reloading();
                match ctx.reload().await {
                    Ok(summary) => {
                        crate::metrics::reload("ok");
                        tracing::info!(%summary, "configuration reloaded")
                    }
                    Err(e) => {
                        // One log line per event: fold the parser's multi-line report.
                        let e = e.split('\n').map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" | ");
                        crate::metrics::reload("refused");
                        tracing::error!(error = %e, "reload refused; the running configuration stays")
                    }
                }
                crate::sd_notify::ready();
            }
        }
    }
}

async fn accept_loop(
    ctx: Arc<Context>,
    kind: ListenerKind,
    socket: TcpListener,
    mut phase: watch::Receiver<Phase>,
    alive: mpsc::Sender<()>,
) {
    static SESSIONS: AtomicU64 = AtomicU64::new(1);
    loop {
        let accepted = tokio::select! {
            accepted = socket.accept() => accepted,
            _ = phase.changed() => break,
        };
        let (tcp, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // Out of descriptors and the like: back off instead of spinning.
                tracing::warn!(kind = kind.name(), error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let id = SESSIONS.fetch_add(1, Ordering::Relaxed);
        let span = tracing::info_span!("session", id = %format_args!("{id:x}"), kind = kind.name());
        let guard = alive.clone();
        let task = run_session(Arc::clone(&ctx), kind, tcp, peer, phase.clone());
        tokio::spawn(
            async move {
                task.await;
                drop(guard);
            }
            .instrument(span),
        );
    }
}

/// The one place where a listener's kind becomes a pipeline type.
async fn run_session(
    ctx: Arc<Context>,
    kind: ListenerKind,
    tcp: TcpStream,
    peer: SocketAddr,
    phase: watch::Receiver<Phase>,
) {
    match kind {
        ListenerKind::Mx => crate::connection::run::<Mx>(ctx, tcp, peer, false, phase).await,
        ListenerKind::Submission => crate::connection::run::<Submission>(ctx, tcp, peer, false, phase).await,
        ListenerKind::Submissions => crate::connection::run::<Submission>(ctx, tcp, peer, true, phase).await,
    }
}
