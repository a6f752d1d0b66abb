//! What every connection shares ([`Context`]), and where the daemon is in its life
//! ([`Phase`]). The reloadable state lives here: a SIGHUP, a changed plugin file and a
//! changed users file each swap in a new generation without touching open sessions.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use portcullis_runtime::PluginSet;
use portcullis_spool::Spool;
use tokio::sync::mpsc;

use crate::config::Config;
use crate::hooks::Hooks;
use crate::live::{self, Live};
use crate::plugins::load_plugins;

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

/// What a [`Context`] is made of at start.
pub struct Parts {
    /// The first generation of the reloadable state.
    pub live: Live,
    /// Where the configuration came from (`None`: the embedded default).
    pub config_path: Option<PathBuf>,
    /// The durable queue.
    pub spool: Arc<Spool>,
    /// The spool writer.
    pub writer: crate::spool_writer::SpoolWriter,
    /// The delivery scheduler (Maildir and SMTP).
    pub delivery: portcullis_outbound::Delivery,
    /// Who answers hook points.
    pub hooks: Hooks,
    /// The messages the server writes itself.
    pub notices: crate::notice::Notices,
    /// Open connections, per listener and per client address.
    pub connections: Arc<crate::abuse::Connections>,
    /// Where this server listens: outbound delivery never connects there.
    pub own_addresses: Vec<std::net::SocketAddr>,
}

/// What every connection shares.
pub struct Context {
    live: ArcSwap<Live>,
    /// Where the configuration came from (`None`: the embedded default).
    config_path: Option<PathBuf>,
    /// The durable queue.
    pub spool: Arc<Spool>,
    /// Writes accepted messages to the spool and publishes their local copies.
    pub writer: crate::spool_writer::SpoolWriter,
    /// The delivery scheduler (Maildir and SMTP).
    pub delivery: portcullis_outbound::Delivery,
    /// Who answers hook points.
    pub hooks: Hooks,
    /// Writes the messages the server sends itself (the virus notice).
    pub notices: crate::notice::Notices,
    /// Open connections, per listener and per client address.
    pub connections: Arc<crate::abuse::Connections>,
    /// Failed AUTHs per client address and per account name.
    pub auth_failures: crate::abuse::AuthFailures,
    own_addresses: Vec<std::net::SocketAddr>,
    watcher: Mutex<Option<notify::RecommendedWatcher>>,
    /// The watchers of the users file and of the aliases file.
    users_watcher: Mutex<Vec<notify::RecommendedWatcher>>,
}

impl Context {
    /// The shared state, from what start-up built.
    pub fn new(parts: Parts) -> Arc<Context> {
        Arc::new(Context {
            live: ArcSwap::from_pointee(parts.live),
            config_path: parts.config_path,
            spool: parts.spool,
            writer: parts.writer,
            delivery: parts.delivery,
            hooks: parts.hooks,
            notices: parts.notices,
            connections: parts.connections,
            own_addresses: parts.own_addresses,
            auth_failures: crate::abuse::AuthFailures::default(),
            watcher: Mutex::new(None),
            users_watcher: Mutex::new(Vec::new()),
        })
    }

    /// The current generation of the reloadable state; a session keeps the one it got.
    pub fn live(&self) -> Arc<Live> {
        self.live.load_full()
    }

    /// (Re)starts watching the plugin files of the current plugin set.
    pub fn watch_plugins(&self) {
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

    /// Re-reads the users file and the aliases file into the current generation (the rest
    /// of it unchanged); returns how many accounts are in force. A broken file keeps the
    /// accounts and aliases there were.
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
                self.live.rcu(|now| now.with_accounts(Arc::clone(&accounts)));
                tracing::info!(accounts = count, aliases = live.accounts.alias_count(), users_file = %live.config.users_file.display(), "accounts reloaded");
                Ok(count)
            }
            Err(e) => {
                tracing::error!(error = %e, "the users file or the aliases file changed but cannot be read; the accounts and aliases in force stay");
                Err(e.to_string())
            }
        }
    }

    /// (Re)starts watching the users file and the aliases file: a change (`portcullis user
    /// ...`, an edit) is in force within a second, without a SIGHUP.
    pub fn watch_users(self: &Arc<Self>) {
        let config = &self.live().config;
        let files = [
            ("users file", Some(config.users_file.clone())),
            ("aliases file", config.aliases.file.clone()),
        ];
        let mut watchers = Vec::new();
        for (what, file) in files {
            let Some(file) = file else { continue };
            match watch_file(&file, Arc::downgrade(self)) {
                Ok(w) => {
                    tracing::info!(file = %file.display(), "watching the {what}");
                    watchers.push(w);
                }
                Err(e) => {
                    tracing::warn!(file = %file.display(), error = %e, "cannot watch the {what}; reload it with SIGHUP");
                }
            }
        }
        match self.users_watcher.lock() {
            Ok(mut guard) => *guard = watchers,
            Err(poisoned) => *poisoned.into_inner() = watchers,
        }
    }

    /// SIGHUP: re-reads the configuration and everything built from it, validates it all,
    /// and swaps it in only if every part is good. Listeners cannot change this way.
    pub async fn reload(self: &Arc<Self>) -> Result<String, String> {
        let path = self.config_path.clone();
        let old = self.live();
        let own = self.own_addresses.clone();
        type Fresh = (Live, Option<PluginSet>, portcullis_outbound::Routing);
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
            let mut delivery = config.delivery.clone();
            delivery.own_addresses = own;
            // Contents keep the server's memory budget and spool across generations.
            let live = Live::build(config)
                .map_err(|e| e.to_string())?
                .with_storage(&old.settings.storage);
            let outbound = portcullis_outbound::Routing::new(delivery, live.resolver.clone());
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
        // DNS-granted plugins look up through the resolver of the new `[dns]`.
        let resolver = Some(live.resolver.hickory().clone());
        match &plugins {
            Some(set) => set.runtime().set_resolver(resolver),
            None => self.hooks.plugins().runtime().set_resolver(resolver),
        }
        self.live.store(Arc::new(live));
        self.watch_users();
        self.delivery.reload(outbound);
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

/// What the control socket's requests do to this daemon.
pub fn control_handler(ctx: &Arc<Context>) -> crate::control::Handler {
    use crate::control::Request;
    let ctx = Arc::downgrade(ctx);
    Arc::new(move |request| {
        let ctx = ctx.upgrade();
        Box::pin(async move {
            let ctx = ctx.ok_or_else(|| "the daemon is stopping".to_string())?;
            match request {
                Request::Flush => {
                    let n = ctx.delivery.flush().await;
                    tracing::info!(
                        messages = n,
                        "queue flush requested: every queued message is tried now"
                    );
                    Ok(n.to_string())
                }
                Request::Accounts => ctx.reload_accounts().await.map(|n| n.to_string()),
                Request::Remove(id) => {
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
    })
}
