//! The engine, the loading of plugins (compile once, cached on disk; type-check against the
//! hook's world) and the calls themselves: a fresh store and instance for every call.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use portcullis_smtp::session::{
    AuthMethod, AuthOutcome, AuthResult, AuthStatus, Credentials, PipelineKind, SessionInfo,
};
use portcullis_smtp::{Envelope, Message, Verdict};
use sha2::{Digest, Sha256};
use wasmtime::component::{Component, InstancePre, Linker, Resource};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, Trap};
use wasmtime_wasi::{FsPerms, HostMonotonicClock, HostWallClock, WasiCtxBuilder};

use crate::bindings::{auth, rate, spam, types, v1, virus};
use crate::capability::Resolver;
use crate::compat;
use crate::host::{MessageHandle, PluginMeta, State};
use crate::plugin::{self, PluginError, PluginSpec};
use portcullis_smtp::Hook;

/// How often the epoch ticks; a running plugin yields to other tasks at each tick.
const TICK: Duration = Duration::from_millis(5);

/// Sizing of the engine, from the configured plugins.
#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    /// The largest memory cap of any plugin.
    pub max_memory: usize,
    /// Plugin instances that may exist at once (concurrent hook calls).
    pub instances: u32,
    /// Where compiled plugins are cached (`None`: no cache).
    pub cache_dir: Option<PathBuf>,
}

/// Why a plugin could not be loaded; the old version (if any) stays in service.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// The file cannot be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Not a valid WebAssembly component.
    #[error("{path} (sha256 {hash}): not a valid WebAssembly component: {message}")]
    Compile {
        /// The file.
        path: PathBuf,
        /// The first 12 hex digits of its SHA-256, to tell versions apart in logs.
        hash: String,
        /// What wasmtime said, on one line.
        message: String,
    },
    /// It imports something the host does not provide, or does not export the hook's
    /// interface.
    #[error("{path}: does not fit the {world} world: {message}")]
    World {
        /// The file.
        path: PathBuf,
        /// The world it should target.
        world: &'static str,
        /// What wasmtime said.
        message: String,
    },
    /// Its granted directory holds what cannot be granted (a FIFO, a socket, a device).
    #[error("{path}: grant-dir: {message}")]
    Grant {
        /// The plugin.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The engine itself could not be set up.
    #[error("cannot create the plugin engine: {0}")]
    Engine(String),
}

/// The version of the plugin contract a component was built against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Contract {
    /// `portcullis:filter@0.1.0`: the first contract; no capabilities, fewer facts.
    V0_1,
    /// `portcullis:filter@0.2.0`: the current one.
    V0_2,
}

impl Contract {
    /// The package version, as WIT writes it.
    pub fn version(self) -> &'static str {
        match self {
            Contract::V0_1 => "0.1.0",
            Contract::V0_2 => "0.2.0",
        }
    }

    /// The version a component targets, from the names of what it imports and exports: a
    /// component of 0.1.0 names `portcullis:filter/...@0.1.0`; anything else is checked
    /// against the current contract (and its errors name that one).
    fn of(engine: &Engine, component: &Component) -> Contract {
        let ty = component.component_type();
        let old = ty
            .exports(engine)
            .map(|(name, _)| name)
            .chain(ty.imports(engine).map(|(name, _)| name))
            .any(|name| name.starts_with("portcullis:filter/") && name.ends_with("@0.1.0"));
        if old { Contract::V0_1 } else { Contract::V0_2 }
    }
}

enum Pre {
    Auth(auth::AuthPluginPre<State>),
    Rate(rate::RatePluginPre<State>),
    Virus(virus::VirusPluginPre<State>),
    Spam(spam::SpamPluginPre<State>),
    AuthV1(v1::auth::AuthPluginPre<State>),
    RateV1(v1::rate::RatePluginPre<State>),
    VirusV1(v1::virus::VirusPluginPre<State>),
    SpamV1(v1::spam::SpamPluginPre<State>),
}

impl Pre {
    fn contract(&self) -> Contract {
        match self {
            Pre::Auth(_) | Pre::Rate(_) | Pre::Virus(_) | Pre::Spam(_) => Contract::V0_2,
            Pre::AuthV1(_) | Pre::RateV1(_) | Pre::VirusV1(_) | Pre::SpamV1(_) => Contract::V0_1,
        }
    }
}

/// A compiled, type-checked plugin, ready to be instantiated for each call.
pub struct LoadedPlugin {
    /// Its configuration.
    pub spec: Arc<PluginSpec>,
    /// Its identity, as logs show it.
    pub meta: Arc<PluginMeta>,
    /// How long compiling (or loading from the cache) took.
    pub load_time: Duration,
    /// Whether the compiled code came from the on-disk cache.
    pub cached: bool,
    pre: Pre,
}

impl LoadedPlugin {
    /// The contract version the component was built against.
    pub fn contract(&self) -> Contract {
        self.pre.contract()
    }
}

impl std::fmt::Debug for LoadedPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedPlugin")
            .field("name", &self.meta.name)
            .field("hash", &self.meta.hash)
            .field("hook", &self.spec.hook)
            .field("contract", &self.contract().version())
            .finish()
    }
}

/// What the virus hook found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScanOutcome {
    /// Nothing; these headers to add.
    Clean(Vec<portcullis_smtp::session::Header>),
    /// Malware, by name.
    Infected(String),
}

/// The spam hook's answer.
#[derive(Clone, Debug, PartialEq)]
pub struct SpamOutcome {
    /// The score, for logs.
    pub score: f64,
    /// The verdict, with the headers to add.
    pub verdict: Verdict,
    /// Names of the message's own header fields to leave out when it is delivered
    /// (checked: none of the trace or authentication fields).
    pub remove: Vec<String>,
}

/// Clocks that always read zero: a plugin's only clock is the host's `clock` import.
struct ZeroClock;

impl HostWallClock for ZeroClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

impl HostMonotonicClock for ZeroClock {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }
    fn now(&self) -> u64 {
        0
    }
}

/// What [`Runtime::probe`] finds in a plugin file before loading it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Probe {
    /// The first 12 hex digits of its SHA-256 (as [`PluginMeta::hash`]).
    pub hash: String,
    /// Whether its compiled code is in the cache (no compile needed).
    pub cached: bool,
}

/// Folds a multi-line error (wasmtime's parser prints byte arrays one per line) into one
/// line, so that one failure is one log line.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The SHA-256 of `bytes` in hex.
fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// The Wasm engine and everything shared by all plugins.
pub struct Runtime {
    engine: Engine,
    linker: Linker<State>,
    cache_dir: Option<PathBuf>,
    cache_key: String,
    resolver: arc_swap::ArcSwapOption<Resolver>,
}

impl Runtime {
    /// Builds the engine (pooling allocator, copy-on-write images, epoch interruption) and
    /// starts the one epoch ticker thread.
    pub fn new(config: &RuntimeConfig) -> Result<Runtime, LoadError> {
        let engine_err = |e: wasmtime::Error| LoadError::Engine(format!("{e:#}"));
        let mut pool = PoolingAllocationConfig::default();
        let instances = config.instances.max(1);
        pool.total_component_instances(instances)
            .total_core_instances(instances * 16)
            .total_memories(instances * 4)
            .total_tables(instances * 8)
            .max_core_instances_per_component(16)
            .max_memories_per_component(4)
            .max_tables_per_component(8)
            .max_memory_size(config.max_memory)
            // Reset a used memory by scanning which pages were touched (PAGEMAP_SCAN, Linux
            // 6.7+) and zeroing those in place, up to 4 MiB, and batch what must still be
            // decommitted: fewer madvise calls, so fewer page faults and TLB shoot-downs
            // per message (docs/benchmarks.md).
            .linear_memory_keep_resident(4 << 20)
            .table_keep_resident(64 << 10)
            .pagemap_scan(wasmtime::Enabled::Auto)
            .decommit_batch_size(16);
        let mut wasm = Config::new();
        wasm.wasm_component_model(true)
            .epoch_interruption(true)
            .memory_init_cow(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        // For `perf`: name the compiled plugin functions in /tmp/perf-PID.map
        // (docs/benchmarks.md, "Profiling").
        if std::env::var_os("PORTCULLIS_PERFMAP").is_some_and(|v| v == "1") {
            wasm.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        let engine = Engine::new(&wasm).map_err(engine_err)?;
        let mut linker = Linker::<State>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(engine_err)?;
        // Both contracts: their interface names differ by version, so they sit side by side.
        virus::VirusPlugin::add_to_linker::<State, wasmtime::component::HasSelf<State>>(&mut linker, |s| s)
            .map_err(engine_err)?;
        v1::virus::VirusPlugin::add_to_linker::<State, wasmtime::component::HasSelf<State>>(
            &mut linker,
            |s| s,
        )
        .map_err(engine_err)?;

        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let cache_key = format!("{:016x}", hasher.finish());

        let weak = engine.weak();
        std::thread::Builder::new()
            .name("wasm-epoch".into())
            .spawn(move || {
                while let Some(engine) = weak.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(TICK);
                }
            })
            .map_err(|e| LoadError::Engine(e.to_string()))?;
        Ok(Runtime {
            engine,
            linker,
            cache_dir: config.cache_dir.clone(),
            cache_key,
            resolver: arc_swap::ArcSwapOption::empty(),
        })
    }

    /// Sets the resolver that DNS-granted plugins look up through (the `[dns]` one; set
    /// again after a reload that changed it). Without one, their lookups fail.
    pub fn set_resolver(&self, resolver: Option<Resolver>) {
        self.resolver.store(resolver.map(Arc::new));
    }

    /// Reads a plugin file's hash and whether it is compiled already, without loading it:
    /// so that a caller can tell an operator "new version, compiling" before a compile that
    /// may take many seconds (Python and JavaScript components).
    pub fn probe(&self, path: &Path) -> Result<Probe, LoadError> {
        let bytes = std::fs::read(path).map_err(|source| LoadError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let hash = sha256_hex(&bytes);
        let cached = self
            .cache_dir
            .as_ref()
            .is_some_and(|dir| dir.join(format!("{hash}-{}.cwasm", self.cache_key)).is_file());
        Ok(Probe {
            hash: hash[..12].to_string(),
            cached,
        })
    }

    /// Loads a plugin: reads, compiles (or loads from the cache) and type-checks it against
    /// its hook's world. CPU-heavy on a cache miss: call it off the async threads.
    pub fn load(&self, spec: Arc<PluginSpec>) -> Result<LoadedPlugin, LoadError> {
        let started = Instant::now();
        let path = &spec.path;
        if let Some(dir) = &spec.grant_dir {
            plugin::check_granted(dir).map_err(|message| LoadError::Grant {
                path: path.clone(),
                message,
            })?;
        }
        let bytes = std::fs::read(path).map_err(|source| LoadError::Io {
            path: path.clone(),
            source,
        })?;
        let hash = sha256_hex(&bytes);
        let (component, cached) = self.compile(path, &bytes, &hash)?;
        let contract = Contract::of(&self.engine, &component);
        let world = |e: wasmtime::Error| LoadError::World {
            path: path.clone(),
            world: plugin::world(spec.hook),
            message: format!(
                "{} (portcullis:filter@{})",
                one_line(&format!("{e:#}")),
                contract.version()
            ),
        };
        let instance_pre: InstancePre<State> = self.linker.instantiate_pre(&component).map_err(world)?;
        let pre = match (contract, spec.hook) {
            (Contract::V0_2, Hook::Auth) => Pre::Auth(auth::AuthPluginPre::new(instance_pre).map_err(world)?),
            (Contract::V0_2, Hook::Rate) => Pre::Rate(rate::RatePluginPre::new(instance_pre).map_err(world)?),
            (Contract::V0_2, Hook::Virus) => {
                Pre::Virus(virus::VirusPluginPre::new(instance_pre).map_err(world)?)
            }
            (Contract::V0_2, Hook::Spam) => Pre::Spam(spam::SpamPluginPre::new(instance_pre).map_err(world)?),
            (Contract::V0_1, Hook::Auth) => {
                Pre::AuthV1(v1::auth::AuthPluginPre::new(instance_pre).map_err(world)?)
            }
            (Contract::V0_1, Hook::Rate) => {
                Pre::RateV1(v1::rate::RatePluginPre::new(instance_pre).map_err(world)?)
            }
            (Contract::V0_1, Hook::Virus) => {
                Pre::VirusV1(v1::virus::VirusPluginPre::new(instance_pre).map_err(world)?)
            }
            (Contract::V0_1, Hook::Spam) => {
                Pre::SpamV1(v1::spam::SpamPluginPre::new(instance_pre).map_err(world)?)
            }
        };
        let meta = Arc::new(PluginMeta {
            name: spec.name.clone(),
            hash: hash[..12].to_string(),
            config_json: serde_json::Value::Object(spec.config.clone()).to_string(),
            config: spec.config.clone(),
            grants: spec.grants.clone(),
            counters: Default::default(),
        });
        Ok(LoadedPlugin {
            spec,
            meta,
            load_time: started.elapsed(),
            cached,
            pre,
        })
    }

    fn compile(&self, path: &Path, bytes: &[u8], hash: &str) -> Result<(Component, bool), LoadError> {
        let compile_err = |e: wasmtime::Error| LoadError::Compile {
            path: path.to_path_buf(),
            hash: hash[..12].to_string(),
            message: if bytes.starts_with(b"\0asm") {
                one_line(&format!("{e:#}"))
            } else {
                let start: Vec<String> = bytes.iter().take(4).map(|b| format!("{b:02x}")).collect();
                format!(
                    "not a WebAssembly file at all (it starts with {}, not the magic 00 61 73 6d)",
                    start.join(" ")
                )
            },
        };
        let Some(dir) = &self.cache_dir else {
            return Ok((Component::new(&self.engine, bytes).map_err(compile_err)?, false));
        };
        let cached = dir.join(format!("{hash}-{}.cwasm", self.cache_key));
        if cached.is_file() {
            match load_precompiled(&self.engine, &cached) {
                Ok(component) => return Ok((component, true)),
                Err(e) => {
                    tracing::warn!(file = %cached.display(), error = %e, "ignoring an unusable compiled-plugin cache file")
                }
            }
        }
        let component = Component::new(&self.engine, bytes).map_err(compile_err)?;
        if let Ok(serialized) = component.serialize() {
            let tmp = dir.join(format!(".{hash}-{}.tmp", std::process::id()));
            let written = std::fs::create_dir_all(dir)
                .and_then(|()| std::fs::write(&tmp, serialized))
                .and_then(|()| std::fs::rename(&tmp, &cached));
            if let Err(e) = written {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot cache the compiled plugin");
                let _ = std::fs::remove_file(&tmp);
            }
        }
        Ok((component, false))
    }

    fn store(&self, plugin: &LoadedPlugin) -> Result<Store<State>, PluginError> {
        let mut wasi = WasiCtxBuilder::new();
        wasi.allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .wall_clock(ZeroClock)
            .monotonic_clock(ZeroClock);
        if let Some(dir) = &plugin.spec.grant_dir {
            plugin::check_granted(dir).map_err(PluginError::Unavailable)?;
            wasi.preopened_dir(dir, "/data", FsPerms::ReadOnly).map_err(|e| {
                PluginError::Unavailable(format!("granted directory {}: {e:#}", dir.display()))
            })?;
        }
        // Shared, not copied: a resolver's clone is its config and cache handles, made for
        // every call whether the plugin may look anything up or not.
        let resolver = self.resolver.load_full();
        let state = State::new(
            Arc::clone(&plugin.meta),
            wasi.build(),
            plugin.spec.memory,
            resolver,
        );
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limits);
        // Yield to the async runtime at every tick, so a busy plugin never holds a thread;
        // the wall-clock limit is enforced around the call.
        store.set_epoch_deadline(1);
        store.epoch_deadline_async_yield_and_update(1);
        Ok(store)
    }

    /// A fresh store holding `message` as a resource the plugin can borrow.
    fn store_with_message(
        &self,
        plugin: &LoadedPlugin,
        message: &Arc<Message>,
        added: &[portcullis_smtp::session::Header],
    ) -> Result<(Store<State>, Resource<MessageHandle>), PluginError> {
        let mut store = self.store(plugin)?;
        let handle = store
            .data_mut()
            .table
            .push(MessageHandle::new(Arc::clone(message), added.to_vec()))
            .map_err(|e| PluginError::Unavailable(e.to_string()))?;
        Ok((store, handle))
    }

    /// Runs `call` on a fresh store within the plugin's time limit, and names the failure.
    async fn guarded<R>(
        &self,
        plugin: &LoadedPlugin,
        mut store: Store<State>,
        call: impl AsyncFnOnce(&mut Store<State>) -> wasmtime::Result<R>,
    ) -> Result<R, PluginError> {
        let limit = plugin.spec.timeout;
        let outcome = tokio::time::timeout(limit, call(&mut store)).await;
        match outcome {
            Err(_) => Err(PluginError::Timeout(limit)),
            Ok(Ok(result)) => Ok(result),
            Ok(Err(_)) if store.data().limits.memory_denied => Err(PluginError::Memory(plugin.spec.memory)),
            Ok(Err(e)) => Err(match e.downcast_ref::<Trap>() {
                Some(Trap::StackOverflow) => PluginError::Trap("stack overflow".into()),
                Some(trap) => PluginError::Trap(trap.to_string()),
                None if format!("{e:#}").contains("instantiat") => PluginError::Unavailable(format!("{e:#}")),
                None => PluginError::Trap(format!("{e:#}")),
            }),
        }
    }

    /// The auth hook.
    pub async fn authenticate(
        &self,
        plugin: &LoadedPlugin,
        session: &SessionInfo,
        credentials: &Credentials,
    ) -> Result<AuthOutcome, PluginError> {
        use auth::exports::portcullis::filter::auth::{AuthResult, Mechanism};
        let store = self.store(plugin)?;
        let mechanism = match credentials.mechanism {
            portcullis_smtp::command::Mechanism::Plain => Mechanism::Plain,
            portcullis_smtp::command::Mechanism::Login => Mechanism::Login,
        };
        let (user, password) = (&credentials.username, &credentials.password);
        let result = match &plugin.pre {
            Pre::Auth(pre) => {
                let session = session_info(session);
                self.guarded(plugin, store, async move |store: &mut Store<State>| {
                    let instance = pre.instantiate_async(&mut *store).await?;
                    let auth = instance.portcullis_filter_auth();
                    auth.call_authenticate(&mut *store, &session, mechanism, user, password)
                        .await
                })
                .await?
            }
            Pre::AuthV1(pre) => {
                let (session, mechanism) = (compat::session_info(session), compat::mechanism(mechanism));
                let result = self
                    .guarded(plugin, store, async move |store: &mut Store<State>| {
                        let instance = pre.instantiate_async(&mut *store).await?;
                        let auth = instance.portcullis_filter_auth();
                        auth.call_authenticate(&mut *store, &session, mechanism, user, password)
                            .await
                    })
                    .await?;
                compat::auth_result(result)
            }
            _ => return Err(PluginError::Unavailable("not an auth plugin".into())),
        };
        Ok(match result {
            AuthResult::Accept(account) => {
                let account = account.trim().to_lowercase();
                let valid = account.len() <= 320
                    && account.split_once('@').is_some_and(|(l, d)| {
                        !l.is_empty() && !d.is_empty() && !account.contains(char::is_whitespace)
                    });
                if !valid {
                    return Err(PluginError::Malformed(format!(
                        "accepted account {:?} is not local@domain",
                        account.chars().take(80).collect::<String>()
                    )));
                }
                AuthOutcome::Accept { account }
            }
            AuthResult::Reject => AuthOutcome::Reject,
            AuthResult::Defer => AuthOutcome::TempFail,
        })
    }

    /// The rate hook.
    pub async fn rate(
        &self,
        plugin: &LoadedPlugin,
        session: &SessionInfo,
        envelope: &Envelope,
        usage: &rate::exports::portcullis::filter::rate::Usage,
    ) -> Result<Verdict, PluginError> {
        let store = self.store(plugin)?;
        let result = match &plugin.pre {
            Pre::Rate(pre) => {
                let (session, envelope) = (session_info(session), wit_envelope(envelope, 0));
                self.guarded(plugin, store, async move |store: &mut Store<State>| {
                    let instance = pre.instantiate_async(&mut *store).await?;
                    let rate = instance.portcullis_filter_rate();
                    rate.call_check(&mut *store, &session, &envelope, *usage).await
                })
                .await?
            }
            Pre::RateV1(pre) => {
                let (session, envelope) = (compat::session_info(session), compat::envelope(envelope, 0));
                let usage = compat::usage(usage);
                let result = self
                    .guarded(plugin, store, async move |store: &mut Store<State>| {
                        let instance = pre.instantiate_async(&mut *store).await?;
                        let rate = instance.portcullis_filter_rate();
                        rate.call_check(&mut *store, &session, &envelope, usage).await
                    })
                    .await?;
                compat::verdict(result)
            }
            _ => return Err(PluginError::Unavailable("not a rate plugin".into())),
        };
        Ok(plugin::verdict(result, Vec::new()))
    }

    /// The virus hook.
    pub async fn virus(
        &self,
        plugin: &LoadedPlugin,
        session: &SessionInfo,
        message: &Arc<Message>,
    ) -> Result<ScanOutcome, PluginError> {
        use virus::exports::portcullis::filter::virus::ScanResult;
        let (store, handle) = self.store_with_message(plugin, message, &session.added_headers)?;
        let size = message.body.len();
        let result = match &plugin.pre {
            Pre::Virus(pre) => {
                let (session, envelope) = (session_info(session), wit_envelope(&message.envelope, size));
                self.guarded(plugin, store, async move |store: &mut Store<State>| {
                    let instance = pre.instantiate_async(&mut *store).await?;
                    let virus = instance.portcullis_filter_virus();
                    virus.call_scan(&mut *store, &session, &envelope, handle).await
                })
                .await?
            }
            Pre::VirusV1(pre) => {
                let session = compat::session_info(session);
                let envelope = compat::envelope(&message.envelope, size);
                let result = self
                    .guarded(plugin, store, async move |store: &mut Store<State>| {
                        let instance = pre.instantiate_async(&mut *store).await?;
                        let virus = instance.portcullis_filter_virus();
                        virus.call_scan(&mut *store, &session, &envelope, handle).await
                    })
                    .await?;
                compat::scan_result(result)
            }
            _ => return Err(PluginError::Unavailable("not a virus plugin".into())),
        };
        match result.found {
            ScanResult::Clean => Ok(ScanOutcome::Clean(plugin::headers(result.headers)?)),
            ScanResult::Infected(name) => {
                let name: String = name.chars().filter(|c| !c.is_control()).take(100).collect();
                Ok(ScanOutcome::Infected(if name.is_empty() {
                    "unnamed".into()
                } else {
                    name
                }))
            }
            ScanResult::Error(reason) => Err(PluginError::Failed(reason.chars().take(200).collect())),
        }
    }

    /// The spam hook.
    pub async fn spam(
        &self,
        plugin: &LoadedPlugin,
        session: &SessionInfo,
        message: &Arc<Message>,
    ) -> Result<SpamOutcome, PluginError> {
        let (store, handle) = self.store_with_message(plugin, message, &session.added_headers)?;
        let size = message.body.len();
        let result = match &plugin.pre {
            Pre::Spam(pre) => {
                let (session, envelope) = (session_info(session), wit_envelope(&message.envelope, size));
                self.guarded(plugin, store, async move |store: &mut Store<State>| {
                    let instance = pre.instantiate_async(&mut *store).await?;
                    let spam = instance.portcullis_filter_spam();
                    spam.call_classify(&mut *store, &session, &envelope, handle).await
                })
                .await?
            }
            Pre::SpamV1(pre) => {
                let session = compat::session_info(session);
                let envelope = compat::envelope(&message.envelope, size);
                let result = self
                    .guarded(plugin, store, async move |store: &mut Store<State>| {
                        let instance = pre.instantiate_async(&mut *store).await?;
                        let spam = instance.portcullis_filter_spam();
                        spam.call_classify(&mut *store, &session, &envelope, handle).await
                    })
                    .await?;
                Ok(compat::spam_result(result))
            }
            _ => return Err(PluginError::Unavailable("not a spam plugin".into())),
        };
        let result = result.map_err(|reason| PluginError::Failed(reason.chars().take(200).collect()))?;
        if !result.score.is_finite() {
            return Err(PluginError::Malformed("the score is not a finite number".into()));
        }
        let headers = plugin::headers(result.headers)?;
        let remove = plugin::removals(result.remove_headers)?;
        Ok(SpamOutcome {
            score: result.score,
            verdict: plugin::verdict(result.verdict, headers),
            remove,
        })
    }
}

/// Loads a compiled artefact from our own cache directory.
#[allow(unsafe_code)]
fn load_precompiled(engine: &Engine, path: &Path) -> wasmtime::Result<Component> {
    // SAFETY: `deserialize_file` trusts its input to be code wasmtime compiled. Files in
    // the cache directory are only ever written by `Runtime::compile` above, from
    // `Component::serialize`, under a name keyed by the engine's compatibility hash; the
    // directory lives in the operator's data directory, which only the daemon writes.
    unsafe { Component::deserialize_file(engine, path) }
}

/// The session as contract 0.2.0 shows it.
fn session_info(info: &SessionInfo) -> types::SessionInfo {
    let kind = match (info.pipeline, info.implicit_tls) {
        (PipelineKind::Mx, _) => types::ListenerKind::Mx,
        (PipelineKind::Submission, false) => types::ListenerKind::Submission,
        (PipelineKind::Submission, true) => types::ListenerKind::Submissions,
    };
    types::SessionInfo {
        pipeline: match info.pipeline {
            PipelineKind::Mx => types::Pipeline::Mx,
            PipelineKind::Submission => types::Pipeline::Submission,
        },
        client_ip: info.peer.to_string(),
        client_port: info.client_port,
        listener: types::Listener {
            address: info.local.map(|a| a.to_string()).unwrap_or_default(),
            kind,
        },
        helo: info.greeting.as_ref().map(|g| g.name().to_string()),
        tls: info.security.tls.as_ref().map(|t| types::TlsInfo {
            protocol: t.protocol.clone(),
            cipher: t.cipher.clone(),
            peer_subject: t.peer_subject.clone(),
        }),
        account: info.security.account.clone(),
        auth_mechanism: info.security.mechanism.map(|m| m.name().to_string()),
        reverse_name: info.reverse.as_ref().and_then(|r| r.name.clone()),
        reverse_confirmed: info.reverse.as_ref().is_some_and(|r| r.confirmed),
        queue_id: info.queue_id.clone(),
        earlier: info
            .earlier
            .iter()
            .map(|v| types::PluginVerdict {
                hook: v.hook.name().to_string(),
                plugin: v.plugin.clone(),
                verdict: v.verdict.to_string(),
                score: v.score,
                failed: v.failed,
            })
            .collect(),
        authentication: info.authentication.iter().map(auth_result).collect(),
    }
}

fn auth_result(result: &AuthResult) -> types::AuthResult {
    types::AuthResult {
        method: match result.method {
            AuthMethod::Iprev => types::AuthMethod::Iprev,
            AuthMethod::Spf => types::AuthMethod::Spf,
            AuthMethod::Dkim => types::AuthMethod::Dkim,
            AuthMethod::Arc => types::AuthMethod::Arc,
            AuthMethod::Dmarc => types::AuthMethod::Dmarc,
        },
        status: match result.status {
            AuthStatus::Pass => types::AuthStatus::Pass,
            AuthStatus::Fail => types::AuthStatus::Fail,
            AuthStatus::Softfail => types::AuthStatus::Softfail,
            AuthStatus::Neutral => types::AuthStatus::Neutral,
            AuthStatus::None => types::AuthStatus::None,
            AuthStatus::Policy => types::AuthStatus::Policy,
            AuthStatus::Temperror => types::AuthStatus::Temperror,
            AuthStatus::Permerror => types::AuthStatus::Permerror,
        },
        domain: result.domain.clone(),
        text: result.text.clone(),
    }
}

/// The envelope as contract 0.2.0 shows it, with its ESMTP parameters.
fn wit_envelope(envelope: &Envelope, size: u64) -> types::Envelope {
    use portcullis_smtp::envelope::{BodyType, Ret};
    let params = &envelope.params;
    types::Envelope {
        mail_from: envelope.mail_from.as_ref().map(ToString::to_string),
        rcpt_to: envelope
            .recipients
            .iter()
            .map(|r| r.mailbox.to_string())
            .collect(),
        size,
        mail_parameters: types::MailParameters {
            size: params.size,
            body: match params.body {
                BodyType::SevenBit => "7BIT",
                BodyType::EightBitMime => "8BITMIME",
            }
            .to_string(),
            smtputf8: params.smtputf8,
            ret: params.ret.map(|ret| {
                match ret {
                    Ret::Full => "FULL",
                    Ret::Hdrs => "HDRS",
                }
                .to_string()
            }),
            envid: params.envid.clone(),
        },
        rcpt_parameters: envelope
            .recipients
            .iter()
            .map(|r| types::RcptParameters {
                notify: r.params.notify.map(notify_names).unwrap_or_default(),
                orcpt: r.params.orcpt.clone(),
            })
            .collect(),
    }
}

fn notify_names(notify: portcullis_smtp::envelope::Notify) -> Vec<String> {
    if notify.never {
        return vec!["NEVER".into()];
    }
    [
        (notify.success, "SUCCESS"),
        (notify.failure, "FAILURE"),
        (notify.delay, "DELAY"),
    ]
    .into_iter()
    .filter(|(on, _)| *on)
    .map(|(_, name)| name.to_string())
    .collect()
}
