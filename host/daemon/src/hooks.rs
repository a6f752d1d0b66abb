//! The host side of the hook points: who answers when the session stops in
//! `AwaitingVerdict(hook)` or `AwaitingAuth`.
//!
//! Plugins on a hook run in config order; the first verdict that is not accept decides (for
//! auth: the first that accepts or defers). A plugin failure yields its `on-error` policy,
//! logged with the plugin's name and content hash. State stays here, in the host: the rate
//! counters, and the notice an account gets when it sent a virus.

use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use portcullis_runtime::{HookKind, LoadedPlugin, PluginError, PluginSet, ScanOutcome};
use portcullis_smtp::session::{AuthOutcome, Credentials, Header, PipelineKind, SessionInfo};
use portcullis_smtp::{Enhanced, Envelope, Hook, Message, Reply, Verdict};
use portcullis_spool::{QueueId, Spool};
use tokio::sync::mpsc;

use crate::accounts::Accounts;
use crate::delivery::Job;
use crate::rate::RateCounters;

/// Answers hook calls for every session.
pub struct Hooks {
    plugins: ArcSwap<PluginSet>,
    counters: RateCounters,
    spool: Arc<Spool>,
    deliveries: mpsc::UnboundedSender<Job>,
    hostname: String,
}

fn describe(verdict: &Verdict) -> String {
    match verdict {
        Verdict::Accept => "accept".into(),
        Verdict::Tag(h) => format!("tag ({} headers)", h.len()),
        Verdict::Junk(_) => "junk".into(),
        Verdict::Reject(r) => format!("reject {}", r.code),
        Verdict::Defer(r) => format!("defer {}", r.code),
        Verdict::Discard => "discard".into(),
    }
}

fn failed(plugin: &LoadedPlugin, hook: HookKind, error: &PluginError) {
    metrics::counter!(
        "portcullis_plugin_errors_total",
        "plugin" => plugin.meta.name.clone(),
        "hook" => hook.name(),
        "kind" => error.kind()
    )
    .increment(1);
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

impl Hooks {
    /// Hooks answered by `plugins`, with the host state they need.
    pub fn new(
        plugins: Arc<PluginSet>,
        spool: Arc<Spool>,
        deliveries: mpsc::UnboundedSender<Job>,
        hostname: String,
    ) -> Self {
        Hooks {
            plugins: ArcSwap::new(plugins),
            counters: RateCounters::default(),
            spool,
            deliveries,
            hostname,
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

    /// Checks credentials: the users file first, then the auth plugins in order.
    pub async fn authenticate(
        &self,
        accounts: Arc<Accounts>,
        info: &SessionInfo,
        credentials: Credentials,
    ) -> AuthOutcome {
        let plugins = self.plugins();
        if accounts.knows(&credentials.username) || !plugins.has(HookKind::Auth) {
            // The users file decides for its own accounts (and, with no auth plugin, for
            // everyone: unknown names are checked against a decoy hash, in constant time).
            let checked = credentials.clone();
            return tokio::task::spawn_blocking(move || accounts.verify(&checked))
                .await
                .unwrap_or(AuthOutcome::TempFail);
        }
        let runtime = plugins.runtime();
        for slot in plugins.on(HookKind::Auth) {
            let plugin = slot.current();
            let started = Instant::now();
            let outcome = match runtime.authenticate(&plugin, info, &credentials).await {
                Ok(outcome) => outcome,
                Err(e) => {
                    failed(&plugin, HookKind::Auth, &e);
                    match plugin.spec.on_error {
                        portcullis_runtime::OnError::Defer => AuthOutcome::TempFail,
                        _ => AuthOutcome::Reject,
                    }
                }
            };
            tracing::info!(plugin = %plugin.meta.name, hash = %plugin.meta.hash, outcome = ?outcome_name(&outcome), micros = started.elapsed().as_micros() as u64, "auth plugin");
            if !matches!(outcome, AuthOutcome::Reject) {
                return outcome;
            }
        }
        AuthOutcome::Reject
    }

    /// The verdict of every plugin configured on `hook`, in order; `Accept` when none is.
    pub async fn call(
        &self,
        hook: Hook,
        info: &SessionInfo,
        envelope: Option<&Envelope>,
        message: Option<&Arc<Message>>,
    ) -> Verdict {
        let verdict = match (hook, envelope, message) {
            (Hook::Rate, Some(envelope), _) => self.rate(info, envelope).await,
            (Hook::Virus, _, Some(message)) => self.virus(info, message).await,
            (Hook::Spam, _, Some(message)) => self.spam(info, message).await,
            _ => Verdict::Accept,
        };
        let outcome = match &verdict {
            Verdict::Reject(_) => Some("refused"),
            Verdict::Defer(_) => Some("deferred"),
            Verdict::Discard => Some("discarded"),
            _ => None,
        };
        if let Some(outcome) = outcome {
            metrics::counter!("portcullis_messages_total", "outcome" => outcome, "reason" => hook.name())
                .increment(1);
        }
        verdict
    }

    async fn rate(&self, info: &SessionInfo, envelope: &Envelope) -> Verdict {
        let account = info.security.account.clone().unwrap_or_default();
        let ip = info.peer.to_string();
        let usage = self.counters.usage(&account, &ip);
        let plugins = self.plugins();
        let runtime = plugins.runtime();
        for slot in plugins.on(HookKind::Rate) {
            let plugin = slot.current();
            let started = Instant::now();
            let verdict = match runtime.rate(&plugin, info, envelope, &usage).await {
                Ok(v) => v,
                Err(e) => {
                    failed(&plugin, HookKind::Rate, &e);
                    plugin.spec.on_error.verdict()
                }
            };
            log_verdict(&plugin, "rate", &verdict, started);
            if !matches!(verdict, Verdict::Accept | Verdict::Tag(_)) {
                return verdict;
            }
        }
        self.counters
            .record(&account, &ip, envelope.recipients.len() as u32);
        Verdict::Accept
    }

    async fn virus(&self, info: &SessionInfo, message: &Arc<Message>) -> Verdict {
        let plugins = self.plugins();
        let runtime = plugins.runtime();
        for slot in plugins.on(HookKind::Virus) {
            let plugin = slot.current();
            let started = Instant::now();
            let verdict = match runtime.virus(&plugin, info, message).await {
                Ok(ScanOutcome::Clean) => Verdict::Accept,
                Ok(ScanOutcome::Infected(name)) => {
                    tracing::warn!(plugin = %plugin.meta.name, virus = %name, from = %message.envelope.reverse_path(), "virus found; refusing the message");
                    // DESIGN: on submission the account is told its machine or password is
                    // compromised; on MX the refusal is in-session and nothing is bounced.
                    if info.pipeline == PipelineKind::Submission {
                        self.notify_infected(info, message, &name).await;
                    }
                    Verdict::Reject(Reply::new(
                        554,
                        Some(Enhanced(5, 7, 1)),
                        format!("Message refused: virus found ({name})"),
                    ))
                }
                Err(e) => {
                    failed(&plugin, HookKind::Virus, &e);
                    plugin.spec.on_error.verdict()
                }
            };
            log_verdict(&plugin, "virus", &verdict, started);
            if !matches!(verdict, Verdict::Accept | Verdict::Tag(_)) {
                return verdict;
            }
        }
        Verdict::Accept
    }

    async fn spam(&self, info: &SessionInfo, message: &Arc<Message>) -> Verdict {
        let plugins = self.plugins();
        let runtime = plugins.runtime();
        let mut headers: Vec<Header> = Vec::new();
        for slot in plugins.on(HookKind::Spam) {
            let plugin = slot.current();
            let started = Instant::now();
            let verdict = match runtime.spam(&plugin, info, message).await {
                Ok(outcome) => {
                    tracing::info!(plugin = %plugin.meta.name, score = outcome.score, "spam score");
                    outcome.verdict
                }
                Err(e) => {
                    failed(&plugin, HookKind::Spam, &e);
                    plugin.spec.on_error.verdict()
                }
            };
            log_verdict(&plugin, "spam", &verdict, started);
            match verdict {
                Verdict::Accept => {}
                Verdict::Tag(more) => headers.extend(more),
                Verdict::Junk(more) => {
                    headers.extend(more);
                    return Verdict::Junk(headers);
                }
                decided => return decided,
            }
        }
        if headers.is_empty() {
            Verdict::Accept
        } else {
            Verdict::Tag(headers)
        }
    }

    /// Puts a notice into the account's own mailbox: a message it sent carried malware.
    async fn notify_infected(&self, info: &SessionInfo, message: &Arc<Message>, virus: &str) {
        let Some(account) = info.security.account.clone() else {
            return;
        };
        let Some((local, domain)) = account.rsplit_once('@') else {
            return;
        };
        let recipients: Vec<String> = message
            .envelope
            .recipients
            .iter()
            .map(|r| r.mailbox.to_string())
            .collect();
        let subject = crate::notice::header_value(&message.body, "subject").unwrap_or_default();
        let id = QueueId::generate();
        let text = crate::notice::virus_notice(&crate::notice::VirusNotice {
            hostname: &self.hostname,
            account: &account,
            virus,
            client_ip: &info.peer.to_string(),
            mail_from: &message.envelope.reverse_path(),
            recipients: &recipients,
            subject: &subject,
            id: id.as_str(),
        });
        let envelope = Envelope {
            mail_from: None,
            params: Default::default(),
            recipients: vec![portcullis_smtp::envelope::Recipient {
                mailbox: portcullis_smtp::Mailbox {
                    local: local.to_string(),
                    domain: domain.to_string(),
                },
                params: Default::default(),
                local: true,
                deliver_to: None,
            }],
        };
        let spool = Arc::clone(&self.spool);
        let stored = tokio::task::spawn_blocking(move || {
            spool.store(id, envelope, portcullis_smtp::Folder::Inbox, b"", text.as_bytes())
        })
        .await;
        match stored {
            Ok(Ok(entry)) => {
                tracing::info!(queue_id = %entry.id, %account, "virus notice queued for the account");
                let _ = self.deliveries.send(Job::new(entry.id));
            }
            Ok(Err(e)) => tracing::error!(error = %e, %account, "cannot queue the virus notice"),
            Err(e) => tracing::error!(error = %e, "virus notice task failed"),
        }
    }
}

fn outcome_name(outcome: &AuthOutcome) -> &'static str {
    match outcome {
        AuthOutcome::Accept { .. } => "accept",
        AuthOutcome::Reject => "reject",
        AuthOutcome::TempFail => "defer",
    }
}

fn log_verdict(plugin: &LoadedPlugin, hook: &'static str, verdict: &Verdict, started: Instant) {
    let kind = match verdict {
        Verdict::Accept => "accept",
        Verdict::Tag(_) => "tag",
        Verdict::Junk(_) => "junk",
        Verdict::Reject(_) => "reject",
        Verdict::Defer(_) => "defer",
        Verdict::Discard => "discard",
    };
    let name = plugin.meta.name.clone();
    metrics::counter!("portcullis_hook_verdicts_total", "hook" => hook, "plugin" => name.clone(), "verdict" => kind)
        .increment(1);
    metrics::histogram!("portcullis_plugin_call_seconds", "hook" => hook, "plugin" => name)
        .record(started.elapsed().as_secs_f64());
    tracing::info!(
        plugin = %plugin.meta.name,
        hash = %plugin.meta.hash,
        hook,
        verdict = %describe(verdict),
        micros = started.elapsed().as_micros() as u64,
        "hook verdict"
    );
}
