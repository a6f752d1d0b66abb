//! `portcullis plugin test PLUGIN.wasm --hook HOOK MESSAGE.eml`: runs one plugin on one
//! message, in the same sandbox and with the same limits as the server, and prints its
//! verdict and how long it took. The filter author's inner loop.
//!
//! Exit code: 0 when the plugin gave a verdict (whatever it is), 1 when the plugin failed
//! (trap, timeout, memory, malformed answer), 2 when the input was wrong (no such file, not
//! a component, a bad option).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use portcullis_runtime::bindings::rate::exports::portcullis::filter::rate::{Counters, Usage, Window};
use portcullis_runtime::{Hook, OnError, PluginSpec, Runtime, RuntimeConfig, ScanOutcome};
use portcullis_smtp::envelope::{MailParams, Recipient};
use portcullis_smtp::session::{
    AuthOutcome, Credentials, Greeting, PipelineKind, Security, SessionInfo, TlsInfo,
};
use portcullis_smtp::{Envelope, Mailbox, Message, Verdict, replies};

/// What `plugin test` was asked to do.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Exit code: 0 when the plugin gave a verdict (any verdict), 1 when the plugin failed \
(trap, timeout, memory, malformed answer), 2 when the input was wrong (a missing file, not a component, \
a bad option)."
)]
pub struct TestArgs {
    /// The plugin component (.wasm).
    pub plugin: PathBuf,
    /// The hook to call: auth, rate, virus or spam.
    #[arg(long)]
    pub hook: String,
    /// The message (.eml); required for virus and spam.
    pub message: Option<PathBuf>,
    /// A TOML file holding the plugin's own config: the keys of its [plugin.config]
    /// table, with or without that header.
    #[arg(long)]
    pub plugin_config: Option<PathBuf>,
    /// Envelope sender (default: the message's From:).
    #[arg(long)]
    pub from: Option<String>,
    /// Envelope recipient, repeatable (default: the message's To:).
    #[arg(long)]
    pub to: Vec<String>,
    /// User name, for the auth hook.
    #[arg(long)]
    pub user: Option<String>,
    /// Password, for the auth hook.
    #[arg(long)]
    pub password: Option<String>,
    /// The client's address the plugin sees.
    #[arg(long, default_value = "192.0.2.1")]
    pub client_ip: IpAddr,
    /// Time limit of the call.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Messages already sent in each window, for the rate hook.
    #[arg(long, default_value_t = 0)]
    pub usage: u32,
    /// Where compiled plugins are kept between runs, so the second test of an unchanged
    /// plugin does not compile it again (default: $XDG_CACHE_HOME/portcullis, else
    /// ~/.cache/portcullis; none when neither is set).
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Grant the plugin DNS lookups (as `grant-dns = true`), through the system's resolver
    /// or the `--nameserver`s.
    #[arg(long)]
    pub grant_dns: bool,
    /// A DNS server (IP:PORT) for a DNS-granted plugin, repeatable (default: the system's).
    #[arg(long)]
    pub nameserver: Vec<std::net::SocketAddr>,
    /// Grant the plugin a connection to this endpoint (as in `grant-connect`:
    /// `unix:/path` or `tcp:IP:PORT`), repeatable.
    #[arg(long)]
    pub grant_connect: Vec<String>,
}

/// The user's cache folder for compiled plugins, by the XDG base directory rules.
fn default_cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))?;
    Some(base.join("portcullis"))
}

fn mailbox(text: &str) -> Option<Mailbox> {
    let text = text.trim();
    let inner = match (text.rfind('<'), text.rfind('>')) {
        (Some(a), Some(b)) if a < b => &text[a + 1..b],
        _ => text,
    };
    portcullis_smtp::address::parse_mailbox(inner.trim()).ok()
}

/// Runs the test; the exit code is 0 for a verdict, 1 for a plugin failure, 2 for bad input.
pub fn run(args: TestArgs) -> u8 {
    // What the plugin logs goes to stderr, so that its author sees it (stdout keeps the
    // verdict, for scripts).
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PORTCULLIS_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .without_time()
        .with_target(false)
        .with_writer(std::io::stderr)
        .try_init();
    match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt.block_on(test(args)).unwrap_or_else(|e| {
            eprintln!("portcullis plugin test: {e}");
            2
        }),
        Err(e) => {
            eprintln!("portcullis plugin test: {e}");
            2
        }
    }
}

fn load_message(path: Option<&Path>) -> Result<Vec<u8>, String> {
    let Some(path) = path else {
        return Ok(b"Subject: (no message given)\r\n\r\n".to_vec());
    };
    let raw = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    // .eml files are often saved with bare LF; the server only ever hands plugins CRLF.
    let mut crlf = Vec::with_capacity(raw.len() + raw.len() / 40);
    for (i, b) in raw.iter().enumerate() {
        if *b == b'\n' && (i == 0 || raw[i - 1] != b'\r') {
            crlf.push(b'\r');
        }
        crlf.push(*b);
    }
    Ok(crlf)
}

/// The message to test on, with its envelope: `--from`/`--to`, else the message's From:
/// and To:.
fn test_message(args: &TestArgs) -> Result<Arc<Message>, String> {
    let body = load_message(args.message.as_deref())?;
    let header = |name: &str| crate::notice::header_value(&body, name);
    let mail_from = match &args.from {
        Some(f) => Some(mailbox(f).ok_or_else(|| format!("--from {f:?} is not an address"))?),
        None => header("from").as_deref().and_then(mailbox),
    };
    let mut recipients: Vec<String> = args.to.clone();
    if recipients.is_empty() {
        recipients = header("to")
            .map(|t| t.split(',').map(str::to_string).collect())
            .unwrap_or_default();
    }
    let recipients = recipients
        .iter()
        .filter_map(|r| mailbox(r))
        .map(|mailbox| Recipient {
            local: true,
            ..Recipient::remote(mailbox, Default::default())
        })
        .collect();
    Ok(Arc::new(Message::new(
        Envelope {
            mail_from,
            params: MailParams::default(),
            recipients,
        },
        portcullis_smtp::Content::from_bytes(body),
    )))
}

/// A session the hook would run in: submission (authenticated as the sender) for auth and
/// rate, MX for virus and spam; TLS up.
fn session_for(hook: Hook, message: &Message, client: IpAddr) -> SessionInfo {
    let pipeline = match hook {
        Hook::Auth | Hook::Rate => PipelineKind::Submission,
        Hook::Virus | Hook::Spam => PipelineKind::Mx,
    };
    SessionInfo {
        greeting: Some(Greeting::Ehlo("client.example".into())),
        security: Security {
            tls: Some(TlsInfo {
                protocol: "TLSv1.3".into(),
                cipher: "TLS13_AES_256_GCM_SHA384".into(),
                peer_subject: None,
            }),
            account: (pipeline == PipelineKind::Submission).then(|| {
                message
                    .envelope
                    .mail_from
                    .as_ref()
                    .map_or("user@example.org".into(), ToString::to_string)
            }),
            mechanism: (pipeline == PipelineKind::Submission)
                .then_some(portcullis_smtp::command::Mechanism::Plain),
        },
        client_port: 49152,
        local: Some(match pipeline {
            PipelineKind::Mx => "192.0.2.25:25".parse().expect("a socket address"),
            PipelineKind::Submission => "192.0.2.25:587".parse().expect("a socket address"),
        }),
        ..SessionInfo::new(pipeline, client)
    }
}

/// The engine and the plugin, compiled (or from the cache) and type-checked; says what it
/// did.
fn load_plugin(
    args: &TestArgs,
    spec: &Arc<PluginSpec>,
) -> Result<(Runtime, portcullis_runtime::LoadedPlugin), String> {
    let runtime = Runtime::new(&RuntimeConfig {
        max_memory: spec.memory,
        instances: 4,
        cache_dir: args.cache_dir.clone().or_else(default_cache_dir),
    })
    .map_err(|e| e.to_string())?;
    if runtime.probe(&spec.path).is_ok_and(|p| !p.cached) {
        // Python and JavaScript components take tens of seconds here, once.
        eprintln!(
            "compiling {} for the first time (a Python or JavaScript plugin takes a while); later runs use the compiled cache",
            spec.path.display()
        );
    }
    let plugin = runtime.load(Arc::clone(spec)).map_err(|e| e.to_string())?;
    println!(
        "plugin   {} (sha256 {}), {} hook, portcullis:filter@{}",
        spec.path.display(),
        plugin.meta.hash,
        spec.hook.name(),
        plugin.contract().version()
    );
    for grant in spec.grants.describe() {
        println!("granted  {grant}");
    }
    println!(
        "loaded   in {:.1} ms ({} and type-checked against {})",
        plugin.load_time.as_secs_f64() * 1e3,
        if plugin.cached {
            "compiled code from the cache"
        } else {
            "compiled"
        },
        portcullis_runtime::world(spec.hook)
    );
    Ok((runtime, plugin))
}

/// Reads `--plugin-config`: the keys of a `[plugin.config]` table, written bare or under
/// that header (as copied from a server config); a file holding anything else besides
/// the header is refused rather than nested where the plugin would not look.
fn plugin_config(path: &Path) -> Result<serde_json::Map<String, serde_json::Value>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut table: toml::Table = toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    if let Some(toml::Value::Table(plugin)) = table.get("plugin") {
        let only_config = plugin.len() == 1 && matches!(plugin.get("config"), Some(toml::Value::Table(_)));
        if table.len() != 1 || !only_config {
            return Err(format!(
                "{}: holds a [plugin] table with more than [plugin.config]; give the plugin's own keys, bare or under [plugin.config]",
                path.display()
            ));
        }
        if let Some(toml::Value::Table(plugin)) = table.remove("plugin")
            && let Some(toml::Value::Table(config)) = plugin.get("config")
        {
            table = config.clone();
        }
    }
    match serde_json::to_value(table) {
        Ok(serde_json::Value::Object(map)) => Ok(map),
        _ => Err("the plugin config must be a table".into()),
    }
}

/// The capabilities given on the command line.
fn grants(args: &TestArgs) -> Result<portcullis_runtime::capability::Grants, String> {
    let connect = args
        .grant_connect
        .iter()
        .map(|text| {
            portcullis_runtime::capability::Endpoint::parse(text).map_err(|e| format!("--grant-connect {e}"))
        })
        .collect::<Result<_, _>>()?;
    Ok(portcullis_runtime::capability::Grants {
        dns: args.grant_dns,
        connect,
        ..Default::default()
    })
}

async fn test(args: TestArgs) -> Result<u8, String> {
    let hook = Hook::parse(&args.hook)
        .ok_or_else(|| format!("--hook {:?}: use auth, rate, virus or spam", args.hook))?;
    if matches!(hook, Hook::Virus | Hook::Spam) && args.message.is_none() {
        return Err(format!("the {} hook needs a MESSAGE.eml", hook.name()));
    }
    let config = match &args.plugin_config {
        Some(path) => plugin_config(path)?,
        None => serde_json::Map::new(),
    };
    let message = test_message(&args)?;
    let info = session_for(hook, &message, args.client_ip);

    let spec = Arc::new(PluginSpec {
        name: args
            .plugin
            .file_stem()
            .map_or("plugin".into(), |s| s.to_string_lossy().into_owned()),
        hook,
        path: args.plugin.clone(),
        timeout: args.timeout,
        memory: 128 << 20,
        on_error: OnError::Defer,
        config,
        grant_dir: None,
        grants: grants(&args)?,
        cache: None,
    });
    let (runtime, plugin) = load_plugin(&args, &spec)?;
    if args.grant_dns {
        let settings = portcullis_outbound::dns::DnsSettings {
            nameservers: args.nameserver.clone(),
            ..Default::default()
        };
        let resolver = portcullis_outbound::Resolver::new(&settings).map_err(|e| e.to_string())?;
        runtime.set_resolver(Some(resolver.hickory().clone()));
    }

    let started = Instant::now();
    let outcome = call(&runtime, &plugin, &args, &info, &message).await;
    let took = started.elapsed();
    match outcome {
        Ok(lines) => {
            for (i, line) in lines.iter().enumerate() {
                println!("{}{line}", if i == 0 { "verdict  " } else { "         " });
            }
            println!(
                "took     {:.3} ms (fresh instance + call)",
                took.as_secs_f64() * 1e3
            );
            Ok(0)
        }
        Err(e) => {
            println!(
                "failed   {} ({}) after {:.3} ms",
                e,
                e.kind(),
                took.as_secs_f64() * 1e3
            );
            println!(
                "policy   with on-error = \"defer\" the server would answer {}",
                code(&replies::HOOK_DEFERRED)
            );
            Ok(1)
        }
    }
}

/// Calls the hook once; the verdict as the lines to print.
async fn call(
    runtime: &Runtime,
    plugin: &portcullis_runtime::LoadedPlugin,
    args: &TestArgs,
    info: &SessionInfo,
    message: &Arc<Message>,
) -> Result<Vec<String>, portcullis_runtime::PluginError> {
    match plugin.spec.hook {
        Hook::Auth => {
            let credentials = Credentials {
                mechanism: portcullis_smtp::command::Mechanism::Plain,
                authzid: None,
                username: args.user.clone().unwrap_or_default(),
                password: args.password.clone().unwrap_or_default(),
            };
            runtime.authenticate(plugin, info, &credentials).await.map(|o| {
                vec![match o {
                    AuthOutcome::Accept { account } => {
                        format!("accept as {account} ({})", code(&replies::AUTH_OK))
                    }
                    AuthOutcome::Reject => format!("reject ({})", code(&replies::AUTH_FAILED)),
                    AuthOutcome::TempFail | AuthOutcome::Throttled => {
                        format!("defer ({})", code(&replies::AUTH_TEMPFAIL))
                    }
                }]
            })
        }
        Hook::Rate => {
            let w = Window {
                messages: args.usage,
                recipients: args.usage,
            };
            let counters = Counters {
                minute: w,
                hour: w,
                day: w,
            };
            let usage = Usage {
                account: counters,
                client_ip: counters,
            };
            runtime
                .rate(plugin, info, &message.envelope, &usage)
                .await
                .map(|v| describe(&v))
        }
        Hook::Virus => runtime.virus(plugin, info, message).await.map(|o| match o {
            ScanOutcome::Clean(headers) if headers.is_empty() => vec!["clean (accept)".into()],
            ScanOutcome::Clean(headers) => describe(&Verdict::Tag(headers))
                .into_iter()
                .map(|line| line.replacen("accept,", "clean (accept),", 1))
                .collect(),
            ScanOutcome::Infected(name) => {
                vec![format!(
                    "infected: {name} (reject {})",
                    code(&replies::virus_found(&name))
                )]
            }
        }),
        Hook::Spam => runtime.spam(plugin, info, message).await.map(|o| {
            // `+ 0.0` turns a negative zero into zero: no "score -0.00".
            let mut lines = vec![format!("score {:.2}", o.score + 0.0)];
            lines.extend(describe(&o.verdict));
            if !o.remove.is_empty()
                && matches!(o.verdict, Verdict::Accept | Verdict::Tag(_) | Verdict::Junk(_))
            {
                lines.push("removing the message's header fields:".into());
                lines.extend(o.remove.iter().map(|name| format!("  {name}")));
            }
            lines
        }),
    }
}

/// A reply's code and enhanced code, as the server would send them.
fn code(reply: &portcullis_smtp::Reply) -> String {
    match reply.enhanced {
        Some(enhanced) => format!("{} {enhanced}", reply.code),
        None => reply.code.to_string(),
    }
}

fn describe(verdict: &Verdict) -> Vec<String> {
    let headers = |h: &[portcullis_smtp::session::Header]| {
        h.iter()
            .map(|h| format!("  {}: {}", h.name, h.value))
            .collect::<Vec<_>>()
    };
    match verdict {
        Verdict::Accept => vec!["accept".into()],
        Verdict::Tag(h) => [vec!["accept, adding headers:".to_string()], headers(h)].concat(),
        Verdict::Junk(h) => [
            vec!["junk (deliver to .Junk), adding headers:".to_string()],
            headers(h),
        ]
        .concat(),
        Verdict::Reject(r) => vec![format!("reject: {}", r.to_string().trim_end())],
        Verdict::Defer(r) => vec![format!("defer: {}", r.to_string().trim_end())],
        Verdict::Discard => vec!["discard (answer 250, deliver nothing)".into()],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugin_config_is_read_bare_or_under_its_header() {
        let dir = tempfile::tempdir().unwrap();
        let read = |text: &str| {
            let path = dir.path().join("c.toml");
            std::fs::write(&path, text).unwrap();
            plugin_config(&path)
        };
        let bare = read("tag-threshold = 2.0\n[accounts]\na = \"b\"\n").unwrap();
        let under =
            read("[plugin.config]\ntag-threshold = 2.0\n[plugin.config.accounts]\na = \"b\"\n").unwrap();
        assert_eq!(bare, under);
        assert_eq!(bare["tag-threshold"], serde_json::json!(2.0));
        assert!(read("[plugin]\nhook = \"spam\"\n[plugin.config]\nx = 1\n").is_err());
        assert!(read("[plugin.config]\nx = 1\n[other]\ny = 2\n").is_err());
    }
}
