//! `portcullis`: the mail server daemon and its operator commands.
//!
//! # Layout
//!
//! - [`abuse`]: connection caps and AUTH failure counts, across sessions.
//! - [`config`]: the TOML configuration, validated at start; the embedded default.
//! - [`server`]: start-up in named steps (bind, storage, workers, accept), drain on SIGTERM.
//! - [`context`]: what every connection shares, and its reloads (SIGHUP, plugin files, the
//!   users file).
//! - [`start_error`]: why the daemon stops before it serves.
//! - [`plugins`]: the Wasm engine and the configured plugins, loaded at start.
//! - [`connection`]: the driver between a socket and the sans-IO `Session<P>`.
//! - [`spool_writer`]: the spool writer: accepted messages written, flushed together, published.
//! - [`tls`]: certificates (loaded or self-signed) and the rustls configuration.
//! - [`accounts`]: the users file, argon2id checks, the mailbox directory.
//! - [`dkim`]: DKIM signing of submitted mail, and `portcullis dkim keygen`.
//! - [`live`]: the reloadable state (config, TLS, accounts) as one swappable snapshot.
//! - [`hooks`]: who answers the session's hook points (plugins, in config order).
//! - [`rate`]: the host's rate counters, passed to the rate hook.
//! - [`notice`]: messages the server writes itself (the virus notice).
//! - [`plugin_test`]: `portcullis plugin test`, the filter author's inner loop.
//! - [`plugin_new`]: `portcullis plugin new`, a working starter in any supported language.
//! - [`privileges`]: bind as root, then run as the configured user.
//! - [`metrics`]: the Prometheus endpoint.
//! - [`queue_cmd`]: `portcullis queue list | show | flush | remove`.
//! - [`control`]: the control socket through which `queue flush` reaches the daemon.
//! - [`sd_notify`]: READY / RELOADING / STOPPING for systemd's `Type=notify`.
//!
//! Delivery of every spooled message (Maildir and SMTP) is `portcullis-outbound`'s
//! scheduler; the daemon starts it and hands it what it spools.

use std::io::{IsTerminal, Read};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod abuse;
mod accounts;
mod auth_cache;
mod authentication;
mod config;
mod connection;
mod context;
mod control;
mod dkim;
mod dovecot;
mod hooks;
mod live;
mod metrics;
mod notice;
mod plugin_new;
mod plugin_test;
mod plugins;
mod privileges;
mod queue_cmd;
mod rate;
mod room;
mod sd_notify;
mod server;
mod spool_writer;
mod srs;
mod start_error;
mod tls;

use config::Config;

/// mimalloc instead of glibc's malloc: a hook call builds and drops a whole Wasm store
/// (WASI context, resource table, instance) per message, and glibc spent ~5% of the
/// daemon's samples in `malloc`/`free`/`malloc_consolidate` under load.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Portcullis: a mail server whose per-message decisions are sandboxed WebAssembly plugins.
#[derive(Parser, Debug)]
#[command(name = "portcullis", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand, Debug)]
enum Task {
    /// Run the server (on the embedded default config when --config is not given).
    Serve {
        /// The configuration file.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Validate a configuration file and explain the first problem.
    CheckConfig {
        /// The configuration file.
        #[arg(long)]
        config: PathBuf,
    },
    /// Manage accounts.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Work with plugins.
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
    },
    /// DKIM keys for the domains whose submitted mail is signed.
    Dkim {
        #[command(subcommand)]
        command: DkimCommand,
    },
    /// Look at and act on the queue.
    Queue {
        #[command(subcommand)]
        command: QueueCommand,
        /// The configuration file naming the data directory (default: the embedded default).
        #[arg(long, global = true)]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
enum DkimCommand {
    /// Generate a key under the data directory (mode 0600) and print the DNS record to
    /// publish and the [[dkim]] section to add.
    Keygen {
        /// The domain whose mail the key signs.
        #[arg(long)]
        domain: String,
        /// The selector to publish the key under (for example the month: 2026-12).
        #[arg(long)]
        selector: String,
        /// rsa (2048 bits, verified everywhere) or ed25519.
        #[arg(long, value_enum, default_value = "rsa")]
        algorithm: dkim::Algorithm,
        /// The configuration file naming the data directory (default: the embedded default).
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
enum QueueCommand {
    /// List queued messages: id, age, size, sender, recipients still pending, attempts and
    /// the last error of each.
    List,
    /// Print one queued message: what `list` says of it, then the message as it will be
    /// delivered (the trace and hook headers in front).
    Show {
        /// The queue id, as `queue list` shows it.
        id: String,
        /// The header section only.
        #[arg(long)]
        headers: bool,
    },
    /// Ask the running daemon to try every queued message now, ignoring the schedule.
    Flush,
    /// Remove a message from the queue for good.
    Remove {
        /// The queue id, as `queue list` shows it.
        id: String,
    },
}

#[derive(Subcommand, Debug)]
enum PluginCommand {
    /// Run one plugin on one message and print its verdict and how long it took.
    Test(Box<plugin_test::TestArgs>),
    /// Write a working starter plugin into a new folder NAME.
    New {
        /// rust, python, javascript or c.
        #[arg(long)]
        lang: String,
        /// The hook it serves: auth, rate, virus or spam.
        #[arg(long, default_value = "spam")]
        hook: String,
        /// The folder to create; also the plugin's name.
        name: String,
    },
    /// Write the WIT contract (portcullis:filter@0.2.0) into DIR.
    Wit {
        /// The folder to write the .wit files into.
        dir: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
enum UserCommand {
    /// Add an account (or replace its password) in the users file.
    Add {
        /// `local@domain`, or a bare local part in the primary local domain.
        name: String,
        /// Read the password from standard input (its first line).
        #[arg(long, required = true)]
        password_stdin: bool,
        /// The configuration file naming the users file (default: the embedded default).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Set the password of an existing account.
    Passwd {
        /// `local@domain`, or a bare local part in the primary local domain.
        name: String,
        /// Read the password from standard input (its first line).
        #[arg(long, required = true)]
        password_stdin: bool,
        /// The configuration file naming the users file (default: the embedded default).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Remove an account (its Maildir is left as it is).
    Remove {
        /// `local@domain`, or a bare local part in the primary local domain.
        name: String,
        /// The configuration file naming the users file (default: the embedded default).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// List the accounts of the users file.
    List {
        /// The configuration file naming the users file (default: the embedded default).
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

/// `portcullis user ...`: edits the users file, then tells a running daemon (which also
/// watches the file) so that the change is in force when this returns.
fn user_command(command: UserCommand) -> Result<(), String> {
    let (config, password) = match &command {
        UserCommand::Add { config, .. } | UserCommand::Passwd { config, .. } => {
            let mut input = String::new();
            std::io::stdin()
                .read_to_string(&mut input)
                .map_err(|e| format!("cannot read the password from standard input: {e}"))?;
            (config, input.lines().next().unwrap_or("").to_string())
        }
        UserCommand::Remove { config, .. } | UserCommand::List { config } => (config, String::new()),
    };
    let config = load(config.as_ref()).map_err(|e| e.to_string())?;
    // A new users file made by root belongs to the user the daemon runs as, so that it can
    // still read it after dropping privileges.
    let owner = config
        .server
        .user
        .as_deref()
        .filter(|_| nix::unistd::Uid::effective().is_root())
        .and_then(|name| {
            nix::unistd::User::from_name(name)
                .ok()
                .flatten()
                .map(|u| (u.uid.as_raw(), u.gid.as_raw()))
        });
    let users = accounts::UsersEditor::new(&config.users_file, &config.local_domains, owner);
    let file = config.users_file.display();
    let done = match &command {
        UserCommand::List { .. } => {
            for name in users.list().map_err(|e| e.to_string())? {
                println!("{name}");
            }
            return Ok(());
        }
        UserCommand::Add { name, .. } => format!(
            "added {} to {file}",
            users.add(name, &password).map_err(|e| e.to_string())?
        ),
        UserCommand::Passwd { name, .. } => format!(
            "changed the password of {} in {file}",
            users.passwd(name, &password).map_err(|e| e.to_string())?
        ),
        UserCommand::Remove { name, .. } => {
            format!(
                "removed {} from {file}",
                users.remove(name).map_err(|e| e.to_string())?
            )
        }
    };
    println!("{done}");
    match control::reload_accounts(&config.server.data_dir) {
        Ok(Some(count)) => println!("the running daemon picked it up ({count} account(s) in force)"),
        Ok(None) => println!(
            "no daemon is running on {}: it reads the file when it starts",
            config.server.data_dir.display()
        ),
        Err(e) => println!(
            "the running daemon did not confirm ({e}); it watches the file and picks up changes within a second"
        ),
    }
    Ok(())
}

fn load(path: Option<&PathBuf>) -> Result<Config, config::ConfigError> {
    match path {
        Some(p) => Config::load(p),
        None => Config::embedded(),
    }
}

/// What check-config verifies beyond the file itself: the certificate, the accounts and
/// every plugin (compiled and type-checked against its world). Every problem is reported.
fn check_files(c: &Config) -> Result<(accounts::Accounts, Vec<String>), Vec<String>> {
    let mut problems = Vec::new();
    let mut loaded = Vec::new();
    if let Some(section) = &c.tls {
        let will_generate = section.self_signed && !section.cert.exists() && !section.key.exists();
        if !will_generate && let Err(e) = tls::acceptor(section) {
            problems.push(format!("tls: {e}"));
        }
    }
    let accounts = accounts::Accounts::for_config(c)
        .map_err(|e| match e {
            accounts::AccountsError::Aliases(e) => problems.push(e),
            e => problems.push(format!("auth.users-file: {e}")),
        })
        .ok();
    if let Err(e) = dkim::Signers::load(&c.dkim) {
        problems.push(format!("dkim: {e}"));
    }
    if let Err(e) = rate::RateStore::new(&c.rate) {
        problems.push(format!("rate.store: {e}"));
    }
    if let Some(user) = &c.server.user
        && nix::unistd::User::from_name(user).ok().flatten().is_none()
    {
        problems.push(format!(
            "server.user: no user {user:?} on this system (serve would refuse to start; create it with useradd --system {user})"
        ));
    }
    if let Some(group) = &c.server.group
        && nix::unistd::Group::from_name(group).ok().flatten().is_none()
    {
        problems.push(format!("server.group: no group {group:?} on this system"));
    }
    // An example plugin the start will install is checked once it is there.
    let plugins: Vec<_> = c
        .plugins
        .iter()
        .enumerate()
        .filter(|(_, p)| p.path.exists() || !plugins::installs_example_plugin(c, &p.path))
        .collect();
    if !plugins.is_empty() {
        let max_memory = plugins.iter().map(|(_, p)| p.memory).max().unwrap_or(1 << 20);
        let config = portcullis_runtime::RuntimeConfig {
            max_memory,
            instances: 4,
            cache_dir: None,
        };
        match portcullis_runtime::Runtime::new(&config) {
            Ok(runtime) => {
                for (i, spec) in plugins {
                    match runtime.load(std::sync::Arc::new(spec.clone())) {
                        Ok(plugin) => loaded.push(plugins::describe(&plugin)),
                        Err(e) => problems.push(format!("plugin[{i}] ({}): {e}", spec.name)),
                    }
                }
            }
            Err(e) => problems.push(format!("plugins: {e}")),
        }
    }
    match accounts {
        Some(a) if problems.is_empty() => Ok((a, loaded)),
        _ => Err(problems),
    }
}

fn init_logging(format: config::LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PORTCULLIS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        config::LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        config::LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (what, result) = match cli.command {
        Task::Serve { config } => ("portcullis", serve(config)),
        Task::CheckConfig { config } => return check_config(&config),
        Task::Plugin {
            command: PluginCommand::Test(args),
        } => return ExitCode::from(plugin_test::run(*args)),
        Task::Plugin {
            command: PluginCommand::Wit { dir },
        } => ("portcullis plugin wit", plugin_new::write_wit(&dir)),
        Task::Plugin {
            command: PluginCommand::New { lang, hook, name },
        } => ("portcullis plugin new", new_plugin(&lang, &hook, &name)),
        Task::Queue { command, config } => ("portcullis queue", queue(command, config)),
        Task::User { command } => ("portcullis user", user_command(command)),
        Task::Dkim {
            command:
                DkimCommand::Keygen {
                    domain,
                    selector,
                    algorithm,
                    config,
                },
        } => (
            "portcullis dkim keygen",
            dkim_keygen(&domain, &selector, algorithm, config),
        ),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{what}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `portcullis serve`: runs until SIGTERM has drained.
fn serve(path: Option<PathBuf>) -> Result<(), String> {
    let config = load(path.as_ref()).map_err(|e| e.to_string())?;
    init_logging(config.server.log_format);
    tracing::info!(config = %config.origin, "starting");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    runtime.block_on(server::serve(config, path)).map_err(|e| {
        tracing::error!(error = %e, "cannot start");
        e.to_string()
    })
}

/// `portcullis check-config`: every problem, or OK with the warnings; exit 1 on problems.
fn check_config(path: &std::path::Path) -> ExitCode {
    let c = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    match check_files(&c) {
        Ok((a, plugins)) => {
            let open_files = abuse::raise_open_files();
            let descriptors = abuse::descriptor_warning(&c.limits, c.listeners.len(), open_files);
            let disk = room::disk_warning(&c.server.data_dir, c.limits.spool_min_free());
            for warning in c.warnings().into_iter().chain(descriptors).chain(disk) {
                eprintln!("{}: warning: {warning}", c.origin);
            }
            println!(
                "{}: OK ({} listener(s), local domains {:?}, {} account(s), {} plugin(s))",
                c.origin,
                c.listeners.len(),
                c.local_domains,
                a.len(),
                c.plugins.len()
            );
            println!("{}: {}", c.origin, c.authentication_summary());
            if let Some(endpoint) = &c.dovecot {
                println!(
                    "{}: AUTH: the users file's accounts, then Dovecot at {endpoint} for every other name",
                    c.origin
                );
                if let Err(e) = reachable(endpoint) {
                    eprintln!(
                        "{}: warning: auth.dovecot: {endpoint} cannot be reached now ({e}); AUTH will answer 454 until it can",
                        c.origin
                    );
                }
            }
            if let Some(endpoint) = &c.dovecot_userdb {
                println!(
                    "{}: RCPT: local addresses outside the users file are looked up in Dovecot's userdb at {endpoint}",
                    c.origin
                );
                if let Err(e) = reachable(endpoint) {
                    eprintln!(
                        "{}: warning: auth.dovecot-userdb: {endpoint} cannot be reached now ({e}); RCPT to such addresses will answer 451 until it can",
                        c.origin
                    );
                }
            }
            if a.alias_count() > 0 {
                println!(
                    "{}: {} alias(es){}",
                    c.origin,
                    a.alias_count(),
                    if c.aliases.srs_secret.is_some() {
                        "; copies forwarded elsewhere are sent with the sender rewritten by SRS"
                    } else {
                        ""
                    }
                );
            }
            for (alias, target) in a.stray_alias_targets() {
                eprintln!(
                    "{}: warning: aliases.{alias:?}: {target} is no account, alias or catch-all; that target is skipped",
                    c.origin
                );
            }
            for plugin in plugins {
                println!("{}: {plugin}", c.origin);
            }
            ExitCode::SUCCESS
        }
        Err(problems) => {
            for problem in &problems {
                eprintln!("{}: {problem}", c.origin);
            }
            eprintln!("{}: {} problem(s)", c.origin, problems.len());
            ExitCode::FAILURE
        }
    }
}

/// Whether a connection to `endpoint` opens now.
fn reachable(endpoint: &portcullis_runtime::capability::Endpoint) -> std::io::Result<()> {
    use portcullis_runtime::capability::Endpoint;
    match endpoint {
        Endpoint::Unix(path) => std::os::unix::net::UnixStream::connect(path).map(drop),
        Endpoint::Tcp(address) => {
            std::net::TcpStream::connect_timeout(address, std::time::Duration::from_secs(2)).map(drop)
        }
    }
}

/// `portcullis plugin new`: the starter, and what to do next.
fn new_plugin(lang: &str, hook: &str, name: &str) -> Result<(), String> {
    let written = plugin_new::run(lang, hook, name)?;
    let dir = written.dir.display();
    println!("wrote {dir}");
    println!("needs  {}", written.needs);
    println!("build  {dir}/build.sh");
    println!("try    {}", written.try_it);
    Ok(())
}

/// `portcullis dkim keygen`: the key, then what to publish and configure.
fn dkim_keygen(
    domain: &str,
    selector: &str,
    algorithm: dkim::Algorithm,
    config: Option<PathBuf>,
) -> Result<(), String> {
    let c = load(config.as_ref()).map_err(|e| e.to_string())?;
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    let generated = dkim::keygen(&c.server.data_dir.join("dkim"), &domain, selector, algorithm)?;
    println!("wrote {}", generated.path.display());
    println!(
        "\npublish this record in the DNS zone of {domain}:\n\n{}",
        generated.record
    );
    println!(
        "\nthen add to the configuration (and reload):\n\n{}",
        generated.section
    );
    Ok(())
}

/// `portcullis queue list | show | flush | remove`.
fn queue(command: QueueCommand, config: Option<PathBuf>) -> Result<(), String> {
    let c = load(config.as_ref()).map_err(|e| e.to_string())?;
    match command {
        QueueCommand::List => queue_cmd::list(&c),
        QueueCommand::Show { id, headers } => queue_cmd::show(&c, &id, headers),
        QueueCommand::Flush => {
            control::flush(&c.server.data_dir).map(|n| println!("{n} queued message(s) will be tried now"))
        }
        QueueCommand::Remove { id } => queue_cmd::remove(&c, &id),
    }
}
