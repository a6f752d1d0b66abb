//! The configured plugins, per hook, in config order. Each sits in a [`Slot`] whose
//! current version is swapped atomically: a call takes the version it starts with (an
//! `Arc`), so sessions already in a hook finish on it while new calls get the new one.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use notify::{RecursiveMode, Watcher};

use crate::plugin::PluginSpec;
use crate::runtime::{LoadError, LoadedPlugin, Runtime};
use portcullis_smtp::Hook;

/// Changes to plugin files closer together than this are handled as one.
const SETTLE: Duration = Duration::from_millis(50);

/// One configured plugin and its current version.
pub struct Slot {
    /// Its configuration (fixed until the config itself is reloaded).
    pub spec: Arc<PluginSpec>,
    current: ArcSwap<LoadedPlugin>,
}

impl Slot {
    /// The version new calls use.
    pub fn current(&self) -> Arc<LoadedPlugin> {
        self.current.load_full()
    }
}

/// Every configured plugin, and the runtime that runs them.
pub struct PluginSet {
    runtime: Arc<Runtime>,
    slots: Vec<Arc<Slot>>,
}

impl PluginSet {
    /// Loads every plugin; any failure is a start-up error (never deferred to a message).
    pub fn load(runtime: Arc<Runtime>, specs: Vec<PluginSpec>) -> Result<PluginSet, LoadError> {
        let mut slots = Vec::new();
        for spec in specs {
            let spec = Arc::new(spec);
            let loaded = runtime.load(Arc::clone(&spec))?;
            tracing::info!(
                plugin = %loaded.meta.name,
                hook = spec.hook.name(),
                hash = %loaded.meta.hash,
                contract = loaded.contract().version(),
                grants = %spec.grants.describe().join(", "),
                cached = loaded.cached,
                load_ms = loaded.load_time.as_millis() as u64,
                "plugin loaded"
            );
            slots.push(Arc::new(Slot {
                spec,
                current: ArcSwap::from_pointee(loaded),
            }));
        }
        Ok(PluginSet { runtime, slots })
    }

    /// No plugins at all.
    pub fn empty(runtime: Arc<Runtime>) -> PluginSet {
        PluginSet {
            runtime,
            slots: Vec::new(),
        }
    }

    /// The runtime.
    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// Every plugin, in config order.
    pub fn all(&self) -> impl Iterator<Item = &Arc<Slot>> {
        self.slots.iter()
    }

    /// The plugins on `hook`, in config order.
    pub fn on(&self, hook: Hook) -> impl Iterator<Item = &Arc<Slot>> {
        self.slots.iter().filter(move |s| s.spec.hook == hook)
    }

    /// Reloads the plugins whose file is `path` (every plugin when `None`): a changed file
    /// is compiled and type-checked, then swapped in; one that fails keeps the old version.
    /// Blocking (compiles): run it off the async threads. Returns how many were swapped.
    pub fn reload(&self, path: Option<&Path>) -> usize {
        let mut swapped = 0;
        for slot in &self.slots {
            if path.is_some_and(|p| !same_file(p, &slot.spec.path)) {
                continue;
            }
            let old = slot.current();
            match self.runtime.probe(&slot.spec.path) {
                Ok(probe) if probe.hash == old.meta.hash => continue,
                Ok(probe) => tracing::info!(
                    plugin = %old.meta.name,
                    old_hash = %old.meta.hash,
                    new_hash = %probe.hash,
                    "new plugin version seen; {} (the old version serves meanwhile)",
                    if probe.cached { "loading it from the compile cache" } else { "compiling it" }
                ),
                Err(e) => {
                    tracing::error!(plugin = %old.meta.name, hash = %old.meta.hash, error = %e, "new plugin version refused; the old version stays in service");
                    continue;
                }
            }
            match self.runtime.load(Arc::clone(&slot.spec)) {
                Ok(new) if new.meta.hash == old.meta.hash => {}
                Ok(new) => {
                    tracing::info!(
                        plugin = %new.meta.name,
                        old_hash = %old.meta.hash,
                        new_hash = %new.meta.hash,
                        load_ms = new.load_time.as_millis() as u64,
                        "plugin swapped"
                    );
                    slot.current.store(Arc::new(new));
                    swapped += 1;
                }
                Err(e) => tracing::error!(
                    plugin = %old.meta.name,
                    hash = %old.meta.hash,
                    error = %e,
                    "new plugin version refused; the old version stays in service"
                ),
            }
        }
        swapped
    }

    /// Watches the plugin files and reloads a plugin when its file changes. The watcher
    /// stops when the returned value is dropped.
    pub fn watch(self: &Arc<Self>) -> notify::Result<notify::RecommendedWatcher> {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<PathBuf>();
        let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            if let Ok(event) = event
                && !matches!(event.kind, notify::EventKind::Access(_))
            {
                for path in event.paths {
                    let _ = tx.send(path);
                }
            }
        })?;
        let mut dirs: Vec<PathBuf> = self
            .slots
            .iter()
            .filter_map(|s| s.spec.path.parent().map(Path::to_path_buf))
            .collect();
        dirs.sort();
        dirs.dedup();
        for dir in &dirs {
            watcher.watch(dir, RecursiveMode::NonRecursive)?;
        }
        let files: Vec<String> = self
            .slots
            .iter()
            .map(|s| s.spec.path.display().to_string())
            .collect();
        if !files.is_empty() {
            tracing::info!(files = %files.join(", "), "watching plugin files: replacing one swaps it in live");
        }
        let set = Arc::clone(self);
        tokio::spawn(async move {
            let mut unconfigured = std::collections::HashSet::new();
            while let Some(first) = rx.recv().await {
                // Let a burst of events (write, then rename) settle, then reload once.
                tokio::time::sleep(SETTLE).await;
                let mut changed = HashMap::new();
                changed.insert(first.clone(), ());
                while let Ok(more) = rx.try_recv() {
                    changed.insert(more, ());
                }
                let (relevant, others): (Vec<PathBuf>, Vec<PathBuf>) = changed
                    .into_keys()
                    .partition(|p| set.slots.iter().any(|s| same_file(p, &s.spec.path)));
                for path in others {
                    // Only the files the config names are plugins: say so once for a new one.
                    if path.extension().is_some_and(|e| e == "wasm")
                        && path.is_file()
                        && unconfigured.insert(path.clone())
                    {
                        tracing::info!(
                            path = %path.display(),
                            "a .wasm file appeared beside the plugins, but no [[plugin]] names it, so it is not used; add a [[plugin]] with this path and send SIGHUP"
                        );
                    }
                }
                if relevant.is_empty() {
                    continue;
                }
                let set = Arc::clone(&set);
                let _ = tokio::task::spawn_blocking(move || {
                    for path in relevant {
                        set.reload(Some(&path));
                    }
                })
                .await;
            }
        });
        Ok(watcher)
    }

    /// Whether any plugin serves `hook`.
    pub fn has(&self, hook: Hook) -> bool {
        self.on(hook).next().is_some()
    }
}

fn same_file(a: &Path, b: &Path) -> bool {
    a == b
        || (a.file_name() == b.file_name()
            && a.parent().and_then(|p| p.canonicalize().ok())
                == b.parent().and_then(|p| p.canonicalize().ok()))
}
