//! The daemon: everything is checked and bound before the first connection is accepted,
//! then one task per listener accepts and one task per connection runs its session.
//!
//! Start-up is a sequence of named steps: bind, drop privileges, open storage, start the
//! workers, serve the operator's sockets, accept. Shutdown (SIGTERM or SIGINT) goes through
//! [`Phase`]s: `Draining` stops accepting and closes idle sessions with 421 while open
//! transactions finish; after `drain-timeout`, `Closing` answers 421 to everyone still
//! there. SIGHUP reloads the configuration ([`Context`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use portcullis_smtp::{Mx, Submission};
use portcullis_spool::{Maildir, Spool};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tracing::Instrument;

use crate::config::{Config, ListenerKind};
use crate::context::{Context, Phase};
use crate::hooks::Hooks;
use crate::live::Live;
use crate::plugins::load_plugins;
use crate::privileges;
use crate::start_error::StartError;

/// Checks everything, binds every listener, then serves until SIGTERM/SIGINT has drained.
/// The start-up is a sequence of named steps; any failure stops it before the first
/// connection is accepted.
pub async fn serve(config: Config, config_path: Option<PathBuf>) -> Result<(), StartError> {
    let signals = Signals::install().map_err(StartError::Signals)?;
    // Every connection is a descriptor: take all the system allows.
    let open_files = crate::abuse::raise_open_files();
    if let Some(limit) = open_files {
        tracing::info!(open_files = limit, "open-file limit");
    }
    // As root (if started so): read the certificate and accounts, bind the ports...
    let live = Live::build(config)?;
    let bound = bind_listeners(&live.config).await?;
    let own = own_addresses(&bound);
    // ...then become the unprivileged user before touching the data directory.
    let config = &live.config;
    privileges::drop_to(config.server.user.as_deref(), config.server.run_as_root)?;
    privileges::set_umask(config.server.group.is_some());
    privileges::check_data_dir(&config.server.data_dir)?;
    let descriptors = crate::abuse::descriptor_warning(&config.limits, config.listeners.len(), open_files);
    for warning in config.warnings().into_iter().chain(descriptors) {
        tracing::warn!("{warning}");
    }
    if live.accounts.is_empty() {
        tracing::warn!(users_file = %config.users_file.display(), "no accounts yet: add one with `portcullis user add NAME --password-stdin`");
    }
    let storage = open_storage(config)?;
    let ctx = start_workers(live, config_path, storage, own)?;
    serve_operators(&ctx).await?;
    let (phase, mut alive, acceptors) = accept_connections(&ctx, bound)?;
    tracing::info!(
        data_dir = %ctx.live().config.server.data_dir.display(),
        users_file = %ctx.live().config.users_file.display(),
        "ready"
    );
    crate::sd_notify::ready();
    wait_for_stop(&ctx, signals).await;
    drain(&ctx, &phase, &mut alive, acceptors).await;
    tracing::info!("stopped");
    Ok(())
}

/// Binds one socket per `[[listener]]`, or takes the one the service manager passed for
/// its address (socket activation).
async fn bind_listeners(config: &Config) -> Result<Vec<(ListenerKind, TcpListener)>, StartError> {
    let mut inherited = inherited_sockets();
    let mut bound = Vec::new();
    for listener in &config.listeners {
        let bind_error = |source| StartError::Bind {
            address: listener.address,
            kind: listener.kind.name(),
            source,
        };
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
    Ok(bound)
}

/// Where this server listens, as concrete addresses (a wildcard listener stands for every
/// local interface and loopback): outbound delivery never connects to them.
fn own_addresses(bound: &[(ListenerKind, TcpListener)]) -> Vec<SocketAddr> {
    let interfaces: Vec<std::net::IpAddr> = nix::ifaddrs::getifaddrs()
        .map(|all| {
            all.filter_map(|i| i.address)
                .filter_map(|a| {
                    a.as_sockaddr_in()
                        .map(|v4| std::net::IpAddr::V4(v4.ip()))
                        .or_else(|| a.as_sockaddr_in6().map(|v6| std::net::IpAddr::V6(v6.ip())))
                })
                .collect()
        })
        .unwrap_or_default();
    let mut own = Vec::new();
    for (_, socket) in bound {
        let Ok(address) = socket.local_addr() else {
            continue;
        };
        if address.ip().is_unspecified() {
            let loopback = [
                std::net::Ipv4Addr::LOCALHOST.into(),
                std::net::Ipv6Addr::LOCALHOST.into(),
            ];
            for ip in interfaces.iter().copied().chain(loopback) {
                own.push(SocketAddr::new(ip, address.port()));
            }
        } else {
            own.push(address);
        }
    }
    own.sort();
    own.dedup();
    own
}

/// The spool (its lock taken; what it holds is to be recovered) and the mailboxes.
struct Storage {
    spool: Arc<Spool>,
    maildir: Maildir,
    recovered: Vec<portcullis_spool::QueueId>,
}

fn open_storage(config: &Config) -> Result<Storage, StartError> {
    let data_dir = &config.server.data_dir;
    let spool = Arc::new(Spool::open_with(
        &data_dir.join("spool"),
        config.server.spool_sync.mode(),
    )?);
    let recovered = spool.list()?;
    let mail_root = data_dir.join("mail");
    portcullis_spool::fsync::create_dir_durable(&mail_root, portcullis_spool::fsync::SHARED_DIR).map_err(
        |source| StartError::DataDir {
            path: mail_root.display().to_string(),
            source,
        },
    )?;
    if let Some(group) = &config.server.group {
        privileges::share_mail_root(&mail_root, group)?;
    }
    tracing::info!(mail = %mail_root.display(), "mailboxes");
    // With group commit and the mailboxes on the spool's file system, a message's local
    // copies are written before the spool's flush and share it (docs/architecture.md).
    // Over LMTP no copy is written here: the scheduler hands every local recipient to the
    // LMTP courier.
    let maildir = Maildir::new(mail_root, &config.server.hostname);
    let maildir = match config.delivery.lmtp {
        None => maildir.sharing_spool_flush(spool.flush_device()),
        Some(_) => maildir,
    };
    Ok(Storage {
        spool,
        maildir,
        recovered,
    })
}

/// Loads the plugins and starts delivery, the outbound queue and the spool writer; hands
/// what the spool holds to delivery; watches plugin files and the users file.
fn start_workers(
    live: Live,
    config_path: Option<PathBuf>,
    storage: Storage,
    own: Vec<SocketAddr>,
) -> Result<Arc<Context>, StartError> {
    let config = &live.config;
    let Storage {
        spool,
        maildir,
        recovered,
    } = storage;
    let plugins = Arc::new(load_plugins(config)?);
    plugins
        .runtime()
        .set_resolver(Some(live.resolver.hickory().clone()));
    // Contents over [limits] memory-per-message go to the spool as they arrive, within
    // one memory budget for every session (the cap is set from the config by with_storage);
    // MAIL FROM waits while the spool's disk is short of [limits] spool-min-free.
    let spool_dir = config.server.data_dir.join("spool");
    let room = crate::room::SpoolRoom::open(&spool_dir).map_err(|source| StartError::DataDir {
        path: spool_dir.display().to_string(),
        source,
    })?;
    room.report(config.limits.spool_min_free());
    let live = live.with_storage(&portcullis_smtp::content::Storage {
        budget: Some(portcullis_smtp::content::Budget::new(0)),
        spill: Some(Arc::clone(&spool) as Arc<dyn portcullis_smtp::content::SpillSource>),
        room: Some(Arc::new(room)),
    });
    let config = &live.config;
    let mut delivery_settings = config.delivery.clone();
    delivery_settings.own_addresses = own.clone();
    let outbound_context = portcullis_outbound::Routing::new(delivery_settings, live.resolver.clone());
    let (delivery, retire_sweep) = match &config.delivery.lmtp {
        None => portcullis_outbound::Delivery::start(Arc::clone(&spool), maildir.clone(), outbound_context),
        Some(address) => {
            tracing::info!(lmtp = %address, "local recipients are delivered over LMTP");
            let settings = &config.delivery;
            let courier = portcullis_outbound::courier::lmtp::LmtpCourier::new(
                address.clone(),
                &settings.hostname,
                settings.connect_timeout,
                settings.command_timeout,
                settings.data_timeout,
            );
            portcullis_outbound::Delivery::start_with_local(
                Arc::clone(&spool),
                Arc::new(courier),
                outbound_context,
            )
        }
    };
    let writer =
        crate::spool_writer::SpoolWriter::start(Arc::clone(&spool), maildir, delivery.clone(), retire_sweep)
            .map_err(|e| StartError::Delivery(format!("cannot start the spool writer: {e}")))?;
    let notices = crate::notice::Notices::new(Arc::clone(&spool), delivery.clone());
    if !recovered.is_empty() {
        tracing::info!(
            messages = recovered.len(),
            "recovering messages found in the spool"
        );
    }
    for id in recovered {
        delivery.recover(id);
    }
    let connections = crate::abuse::Connections::new(config.listeners.len());
    let rate = crate::rate::RateStore::new(&config.rate).map_err(StartError::RateStore)?;
    let ctx = Context::new(crate::context::Parts {
        live,
        config_path,
        spool,
        writer,
        delivery,
        hooks: Hooks::new(plugins, rate),
        notices,
        connections,
        own_addresses: own,
    });
    // Replacing a plugin file swaps the plugin in, live; so does a change of the users file.
    ctx.watch_plugins();
    ctx.watch_users();
    Ok(ctx)
}

/// The control socket (`portcullis queue` and `user` commands) and, when configured, the
/// metrics endpoint.
async fn serve_operators(ctx: &Arc<Context>) -> Result<(), StartError> {
    let data_dir = ctx.live().config.server.data_dir.clone();
    crate::control::serve(&data_dir, crate::context::control_handler(ctx)).map_err(|source| {
        StartError::DataDir {
            path: crate::control::path(&data_dir).display().to_string(),
            source,
        }
    })?;
    if let Some(address) = ctx.live().config.metrics.address {
        let bound = crate::metrics::serve(address, Arc::downgrade(ctx))
            .await
            .map_err(|source| StartError::Bind {
                address,
                kind: "metrics",
                source,
            })?;
        tracing::info!(address = %bound, "metrics endpoint serving GET /metrics");
    }
    Ok(())
}

/// One accepting task per listener; the returned receiver yields `None` once every
/// session has ended.
#[allow(clippy::type_complexity)]
fn accept_connections(
    ctx: &Arc<Context>,
    bound: Vec<(ListenerKind, TcpListener)>,
) -> Result<
    (
        watch::Sender<Phase>,
        mpsc::Receiver<()>,
        Vec<tokio::task::JoinHandle<()>>,
    ),
    StartError,
> {
    let (phase_tx, phase_rx) = watch::channel(Phase::Running);
    let (alive_tx, alive_rx) = mpsc::channel::<()>(1);
    let mut acceptors = Vec::new();
    for (index, (kind, socket)) in bound.into_iter().enumerate() {
        let address = socket.local_addr().map_err(|source| StartError::Bind {
            address: SocketAddr::from(([0, 0, 0, 0], 0)),
            kind: kind.name(),
            source,
        })?;
        tracing::info!(kind = kind.name(), %address, "listening");
        acceptors.push(tokio::spawn(accept_loop(
            Arc::clone(ctx),
            (index, kind),
            socket,
            phase_rx.clone(),
            alive_tx.clone(),
        )));
    }
    Ok((phase_tx, alive_rx, acceptors))
}

/// Stops accepting, lets open transactions finish within `drain-timeout`, then closes the
/// rest with 421; settles the spool writer and releases the delivered messages' files.
async fn drain(
    ctx: &Arc<Context>,
    phase: &watch::Sender<Phase>,
    alive: &mut mpsc::Receiver<()>,
    acceptors: Vec<tokio::task::JoinHandle<()>>,
) {
    let timeout = ctx.live().config.server.drain_timeout.0;
    tracing::info!(drain_timeout = ?timeout, "shutting down: no new connections, finishing open transactions");
    crate::sd_notify::stopping();
    let _ = phase.send(Phase::Draining);
    for acceptor in acceptors {
        let _ = acceptor.await;
    }
    tracing::info!("listeners closed; draining open sessions");
    if tokio::time::timeout(timeout, alive.recv()).await.is_err() {
        tracing::warn!("drain timeout reached: answering 421 to the remaining sessions");
        let _ = phase.send(Phase::Closing);
        let _ = tokio::time::timeout(Duration::from_secs(5), alive.recv()).await;
    }
    // Delivered messages whose spool files wait for a flush: release them now rather than
    // leave them for recovery at the next start (once the writer has published the last
    // ones it answered).
    ctx.writer.settled().await;
    let spool = Arc::clone(&ctx.spool);
    if let Ok(Err(e)) = tokio::task::spawn_blocking(move || spool.flush_retiring(Duration::ZERO)).await {
        tracing::warn!(error = %e, "cannot flush the spool at shutdown; recovery will settle delivered messages");
    }
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
    (index, kind): (usize, ListenerKind),
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
        let admitted = match ctx.connections.admit(index, peer.ip(), &ctx.live().config.limits) {
            Ok(admitted) => admitted,
            Err(crowded) => {
                turn_away(tcp, peer, kind, crowded);
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
                drop(admitted);
                drop(guard);
            }
            .instrument(span),
        );
    }
}

/// Answers a connection beyond a cap with `421 4.7.0` and closes it, off the accepting
/// task (a client that does not read cannot hold it up).
fn turn_away(mut tcp: TcpStream, peer: SocketAddr, kind: ListenerKind, crowded: crate::abuse::Crowded) {
    use tokio::io::AsyncWriteExt;
    crate::metrics::connection_refused(kind.name(), crowded.name());
    tracing::debug!(kind = kind.name(), %peer, reason = crowded.name(), "connection refused: too many");
    let reply = match crowded {
        crate::abuse::Crowded::Listener => portcullis_smtp::replies::TOO_MANY_CONNECTIONS,
        crate::abuse::Crowded::Address => portcullis_smtp::replies::TOO_MANY_CONNECTIONS_FROM_YOU,
    };
    tokio::spawn(async move {
        let mut out = Vec::new();
        reply.write_to(&mut out);
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            let _ = tcp.write_all(&out).await;
            let _ = tcp.shutdown().await;
        })
        .await;
    });
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
