//! The host side of the hook points: who answers when the session stops in
//! `AwaitingVerdict` or `AwaitingAuth`.
//!
//! Plugins on a hook run in config order through one loop; how their verdicts make one is
//! the hook's [`Combine`] rule (for auth: the first that accepts or defers). A plugin
//! failure yields its `on-error` policy, logged with the plugin's name and content hash.
//! State stays here, in the host: the rate counters. What the daemon must do besides
//! answering the session (the notice to an account that sent a virus) comes back as an
//! [`Event`].

use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use portcullis_runtime::{LoadedPlugin, PluginError, PluginSet, ScanOutcome};
use portcullis_smtp::escape::Escaped;
use portcullis_smtp::session::{AuthOutcome, Credentials, PipelineKind, PluginVerdict, SessionInfo};
use portcullis_smtp::{Envelope, Hook, HookCall, Message, Verdict, replies};

use crate::accounts::Accounts;
use crate::dovecot::DovecotAuth;
use crate::rate::{RateStore, Reserve};

/// Answers hook calls for every session.
pub struct Hooks {
    plugins: ArcSwap<PluginSet>,
    counters: RateStore,
    /// Credential checks running at once: one per core. An argon2id verification holds
    /// ~19 MiB while it runs, so without a bound a burst of AUTHs from anyone is a burst
    /// of memory.
    checks: tokio::sync::Semaphore,
}

/// What a hook decided, and what the daemon must do about it besides.
pub struct Decision {
    /// For the session.
    pub verdict: Verdict,
    /// What each plugin decided, in order, for the plugins of later hooks.
    pub verdicts: Vec<PluginVerdict>,
    /// Names of the message's own header fields to leave out when it is delivered.
    pub remove: Vec<String>,
    /// For the daemon.
    pub event: Option<Event>,
}

/// Something a hook found that the daemon acts on.
#[derive(Debug)]
pub enum Event {
    /// An authenticated account sent malware: its machine or password is compromised, and
    /// it is told so in its own mailbox.
    VirusFromAccount {
        /// The account.
        account: String,
        /// The malware's name.
        virus: String,
        /// The message that carried it.
        message: Arc<Message>,
    },
}

/// What one plugin answered.
struct Answer {
    verdict: Verdict,
    /// Its score, on the spam hook.
    score: Option<f64>,
    /// The message's header fields it asked to remove (the spam hook).
    remove: Vec<String>,
}

impl Answer {
    fn verdict(verdict: Verdict) -> Self {
        Answer {
            verdict,
            score: None,
            remove: Vec::new(),
        }
    }
}

/// What the plugins of one hook decided together, and each of them.
struct Combined {
    verdict: Verdict,
    verdicts: Vec<PluginVerdict>,
    remove: Vec<String>,
}

/// How the verdicts of the plugins on one hook make one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Combine {
    /// The first verdict that is not an accept decides; headers of accepts are dropped.
    FirstDecision,
    /// Headers of every plugin add up, and so do the fields they remove; a junk verdict
    /// files with all of them, any other decision ends the loop.
    AddHeaders,
}

fn combine(hook: Hook) -> Combine {
    match hook {
        Hook::Spam | Hook::Virus => Combine::AddHeaders,
        Hook::Auth | Hook::Rate => Combine::FirstDecision,
    }
}

impl Hooks {
    /// Hooks answered by `plugins`, with the rate counters in `counters`.
    pub fn new(plugins: Arc<PluginSet>, counters: RateStore) -> Self {
        let cores = std::thread::available_parallelism().map_or(2, usize::from);
        Hooks {
            plugins: ArcSwap::new(plugins),
            counters,
            checks: tokio::sync::Semaphore::new(cores),
        }
    }

    /// The current plugin set; a call keeps the set it started with.
    pub fn plugins(&self) -> Arc<PluginSet> {
        self.plugins.load_full()
    }

    /// Puts a new plugin set (from a reloaded configuration) in service.
    pub fn replace_plugins(&self, plugins: Arc<PluginSet>) {
        self.plugins.store(plugins);
    }

    /// Checks credentials: the users file for its own accounts, then Dovecot (`[auth]
    /// dovecot`) when configured, then the auth plugins in order; at most one check of our
    /// own (argon2, a plugin) per core at a time, an AUTH waiting longer than `wait` for
    /// its turn gets a temporary failure. Dovecot's checks take no turn: they cost us
    /// nothing but a socket, and a refusal Dovecot delays (`auth_failure_delay`) must not
    /// hold a turn other clients wait for.
    pub async fn authenticate(
        &self,
        accounts: Arc<Accounts>,
        dovecot: Option<&DovecotAuth>,
        info: &SessionInfo,
        credentials: Credentials,
        wait: std::time::Duration,
    ) -> AuthOutcome {
        let plugins = self.plugins();
        if let Some(dovecot) = dovecot
            && !accounts.knows(&credentials.username)
        {
            // A PLAIN authzid different from the user is impersonation: never asked.
            if credentials.authzid.is_some() {
                return AuthOutcome::Reject;
            }
            let started = Instant::now();
            let answer = dovecot
                .verify(&crate::dovecot::Check {
                    user: &credentials.username,
                    password: &credentials.password,
                    client: info.peer,
                    local: info.local,
                    secured: info.security.tls.is_some() || info.implicit_tls,
                })
                .await;
            let micros = started.elapsed().as_micros() as u64;
            match answer {
                crate::dovecot::Answer::Accept(user) => {
                    tracing::info!(user = %Escaped(&user), micros, "Dovecot accepted the password");
                    return AuthOutcome::Accept {
                        account: accounts.account_name(&user),
                    };
                }
                crate::dovecot::Answer::Unavailable(why) => {
                    tracing::warn!(error = %why, micros, "Dovecot could not check the password; answering a temporary failure");
                    crate::metrics::dovecot_unavailable("auth");
                    return AuthOutcome::TempFail;
                }
                crate::dovecot::Answer::Reject if !plugins.has(Hook::Auth) => return AuthOutcome::Reject,
                crate::dovecot::Answer::Reject => {}
            }
        }
        if accounts.knows(&credentials.username) || (dovecot.is_none() && !plugins.has(Hook::Auth)) {
            // The users file decides for its own accounts (and, with neither Dovecot nor an
            // auth plugin, for everyone: unknown names are checked against a decoy hash, in
            // constant time). What it accepted lately needs no turn.
            if let Some(account) = accounts.cached(&credentials) {
                return cache_hit("users file", account);
            }
            let Some(_turn) = self.turn(wait).await else {
                return AuthOutcome::TempFail;
            };
            let checked = credentials.clone();
            return tokio::task::spawn_blocking(move || accounts.verify(&checked))
                .await
                .unwrap_or(AuthOutcome::TempFail);
        }
        let runtime = plugins.runtime();
        let mut turn = None;
        for slot in plugins.on(Hook::Auth) {
            let plugin = slot.current();
            if plugin.spec.cache.is_some()
                && let Some(account) = accounts.cached_by_plugin(&credentials, &plugin.meta.hash)
            {
                return cache_hit(&plugin.meta.name, account);
            }
            // A turn is taken once, by the first plugin that must be asked.
            if turn.is_none() {
                let Some(permit) = self.turn(wait).await else {
                    return AuthOutcome::TempFail;
                };
                turn = Some(permit);
            }
            let started = Instant::now();
            let outcome = match runtime.authenticate(&plugin, info, &credentials).await {
                Ok(outcome) => outcome,
                Err(e) => {
                    failed(&plugin, Hook::Auth, &e);
                    match plugin.spec.on_error {
                        portcullis_runtime::OnError::Defer => AuthOutcome::TempFail,
                        _ => AuthOutcome::Reject,
                    }
                }
            };
            tracing::info!(plugin = %plugin.meta.name, hash = %plugin.meta.hash, outcome = ?outcome_name(&outcome), micros = started.elapsed().as_micros() as u64, "auth plugin");
            if let (AuthOutcome::Accept { account }, Some(ttl)) = (&outcome, plugin.spec.cache) {
                accounts.remember_plugin_accept(&credentials, &plugin.meta.hash, account, ttl);
            }
            if !matches!(outcome, AuthOutcome::Reject) {
                return outcome;
            }
        }
        AuthOutcome::Reject
    }

    /// A turn for a credential check of our own (argon2, a plugin): one per core at a
    /// time; `None` when none came within `wait`.
    async fn turn(&self, wait: std::time::Duration) -> Option<tokio::sync::SemaphorePermit<'_>> {
        // The semaphore lives as long as the hooks and is never closed.
        match tokio::time::timeout(wait, self.checks.acquire()).await {
            Ok(Ok(permit)) => Some(permit),
            _ => {
                tracing::warn!("no credential check could start in time; answering a temporary failure");
                None
            }
        }
    }

    /// The verdict of every plugin configured on the call's hook, in order; `Accept` when
    /// none is.
    pub async fn call(&self, call: &HookCall, info: &SessionInfo) -> Decision {
        let hook = call.hook();
        let mut event = None;
        let combined = match call {
            HookCall::Rate(envelope) => self.rate(info, envelope).await,
            HookCall::Virus(message) => {
                let found = self.virus(info, message).await;
                if let (Some(virus), PipelineKind::Submission) = (&found.1, info.pipeline)
                    && let Some(account) = &info.security.account
                {
                    // DESIGN: on submission the account is told its machine or password is
                    // compromised; on MX the refusal is in-session and nothing is bounced.
                    event = Some(Event::VirusFromAccount {
                        account: account.clone(),
                        virus: virus.clone(),
                        message: Arc::clone(message),
                    });
                }
                found.0
            }
            HookCall::Spam(message) => {
                let plugins = self.plugins();
                let runtime = plugins.runtime();
                self.run(&plugins, hook, info, |plugin, info| async move {
                    let outcome = runtime.spam(&plugin, &info, message).await?;
                    tracing::info!(plugin = %plugin.meta.name, score = outcome.score, remove = ?outcome.remove, "spam score");
                    Ok(Answer {
                        verdict: outcome.verdict,
                        score: Some(outcome.score),
                        remove: outcome.remove,
                    })
                })
                .await
            }
        };
        Decision {
            verdict: combined.verdict,
            verdicts: combined.verdicts,
            remove: combined.remove,
            event,
        }
    }

    async fn rate(&self, info: &SessionInfo, envelope: &Envelope) -> Combined {
        let account = info.security.account.clone().unwrap_or_default();
        let ip = info.peer.to_string();
        // Counted before the hook, so that sessions deciding together (on this node or
        // another sharing the store) see each other; given back unless accepted.
        let recipients = envelope.recipients.len() as u32;
        let (usage, reservation) = match self.counters.reserve(&account, &ip, recipients).await {
            Reserve::Counted(usage, reservation) => (usage, reservation),
            Reserve::Unavailable => {
                return Combined {
                    verdict: Verdict::Defer(replies::HOOK_DEFERRED),
                    verdicts: Vec::new(),
                    remove: Vec::new(),
                };
            }
        };
        let plugins = self.plugins();
        let runtime = plugins.runtime();
        let usage = &usage;
        let combined = self
            .run(&plugins, Hook::Rate, info, |plugin, info| async move {
                Ok(Answer::verdict(
                    runtime.rate(&plugin, &info, envelope, usage).await?,
                ))
            })
            .await;
        if !matches!(combined.verdict, Verdict::Accept | Verdict::Tag(_)) {
            self.counters.release(reservation).await;
        }
        combined
    }

    /// The virus hook's verdict, each plugin's, and the malware's name when one was found.
    async fn virus(&self, info: &SessionInfo, message: &Arc<Message>) -> (Combined, Option<String>) {
        let plugins = self.plugins();
        let runtime = plugins.runtime();
        let found = std::sync::Mutex::new(None);
        let seen = &found;
        let combined = self
            .run(&plugins, Hook::Virus, info, |plugin, info| async move {
                let verdict = match runtime.virus(&plugin, &info, message).await? {
                    ScanOutcome::Clean(headers) if headers.is_empty() => Verdict::Accept,
                    ScanOutcome::Clean(headers) => Verdict::Tag(headers),
                    ScanOutcome::Infected(name) => {
                        tracing::warn!(plugin = %plugin.meta.name, virus = %name, from = %message.envelope.reverse_path(), "virus found; refusing the message");
                        let reply = replies::virus_found(&name);
                        *seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(name);
                        Verdict::Reject(reply)
                    }
                };
                Ok(Answer::verdict(verdict))
            })
            .await;
        let found = found
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        (combined, found)
    }

    /// The one loop over the plugins of `hook`: calls each with `call` (and the session as
    /// it stands: the verdicts and headers of the plugins before it included), applies its
    /// `on-error` policy when it fails, logs and counts each verdict, and combines them by
    /// the hook's rule. Returns the combined verdict and each plugin's.
    async fn run<F, Fut>(&self, plugins: &PluginSet, hook: Hook, info: &SessionInfo, mut call: F) -> Combined
    where
        F: FnMut(Arc<LoadedPlugin>, Arc<SessionInfo>) -> Fut,
        Fut: std::future::Future<Output = Result<Answer, PluginError>> + Send,
    {
        let rule = combine(hook);
        let mut headers = Vec::new();
        let mut remove: Vec<String> = Vec::new();
        let mut verdicts = Vec::new();
        let mut now = info.clone();
        for slot in plugins.on(hook) {
            let plugin = slot.current();
            let started = Instant::now();
            let (answer, failure) = match call(Arc::clone(&plugin), Arc::new(now.clone())).await {
                Ok(answer) => (answer, false),
                Err(e) => {
                    failed(&plugin, hook, &e);
                    (Answer::verdict(plugin.spec.on_error.verdict()), true)
                }
            };
            let Answer {
                verdict,
                score,
                remove: removed,
            } = answer;
            log_verdict(&plugin, hook, &verdict, started);
            let said = PluginVerdict {
                hook,
                plugin: plugin.meta.name.clone(),
                verdict: verdict_kind(&verdict),
                score,
                failed: failure,
            };
            now.earlier.push(said.clone());
            verdicts.push(said);
            if rule == Combine::AddHeaders
                && matches!(verdict, Verdict::Accept | Verdict::Tag(_) | Verdict::Junk(_))
            {
                for name in removed {
                    if !remove.iter().any(|n| n.eq_ignore_ascii_case(&name)) {
                        remove.push(name);
                    }
                }
            }
            match verdict {
                Verdict::Accept => {}
                Verdict::Tag(more) if rule == Combine::AddHeaders => {
                    now.added_headers.extend(more.iter().cloned());
                    headers.extend(more);
                }
                Verdict::Tag(_) => {}
                Verdict::Junk(more) => {
                    headers.extend(more);
                    return Combined {
                        verdict: Verdict::Junk(headers),
                        verdicts,
                        remove,
                    };
                }
                decided => {
                    return Combined {
                        verdict: decided,
                        verdicts,
                        remove: Vec::new(),
                    };
                }
            }
        }
        let verdict = if headers.is_empty() {
            Verdict::Accept
        } else {
            Verdict::Tag(headers)
        };
        Combined {
            verdict,
            verdicts,
            remove,
        }
    }
}

fn failed(plugin: &LoadedPlugin, hook: Hook, error: &PluginError) {
    crate::metrics::plugin_failed(&plugin.meta.name, hook, error.kind());
    tracing::warn!(
        plugin = %plugin.meta.name,
        hash = %plugin.meta.hash,
        hook = hook.name(),
        kind = error.kind(),
        error = %error,
        on_error = ?plugin.spec.on_error,
        "plugin failed; applying its on-error policy"
    );
}

fn outcome_name(outcome: &AuthOutcome) -> &'static str {
    match outcome {
        AuthOutcome::Accept { .. } => "accept",
        AuthOutcome::Reject => "reject",
        AuthOutcome::TempFail => "defer",
        AuthOutcome::Throttled => "throttled",
    }
}

/// The verdict's kind, for logs and metrics.
pub fn verdict_kind(verdict: &Verdict) -> &'static str {
    match verdict {
        Verdict::Accept => "accept",
        Verdict::Tag(_) => "tag",
        Verdict::Junk(_) => "junk",
        Verdict::Reject(_) => "reject",
        Verdict::Defer(_) => "defer",
        Verdict::Discard => "discard",
    }
}

fn describe(verdict: &Verdict) -> String {
    match verdict {
        Verdict::Tag(h) => format!("tag ({} headers)", h.len()),
        Verdict::Reject(r) => format!("reject {}", r.code),
        Verdict::Defer(r) => format!("defer {}", r.code),
        other => verdict_kind(other).into(),
    }
}

fn log_verdict(plugin: &LoadedPlugin, hook: Hook, verdict: &Verdict, started: Instant) {
    crate::metrics::hook_verdict(&plugin.meta.name, hook, verdict_kind(verdict), started.elapsed());
    tracing::info!(
        plugin = %plugin.meta.name,
        hash = %plugin.meta.hash,
        hook = hook.name(),
        verdict = %describe(verdict),
        micros = started.elapsed().as_micros() as u64,
        "hook verdict"
    );
}

/// An accept found in the auth cache: counted and logged, and answered without a check.
fn cache_hit(source: &str, account: String) -> AuthOutcome {
    tracing::info!(source, account = %Escaped(&account), "credentials accepted from the auth cache");
    crate::metrics::auth_cache_hit();
    AuthOutcome::Accept { account }
}
