//! Portcullis side by side with Postfix on this machine, in one run.
//!
//! Usage (as root: it installs Postfix from Debian's packages when missing, and both servers
//! write Maildirs owned by other users):
//!
//! ```text
//! cargo build --release -p portcullis -p portcullis-bench
//! ./target/release/compare [--seconds S] [--sessions 1,10,100] [--sizes 1024,10240,102400]
//!                          [--rounds N] [--idle N] [--portcullis PATH]
//!                          [--tables all|mx,group,submission,idle,authentication,services,lmtp]
//! ```
//!
//! `services` (MX with clamd and rspamd behind both servers, `services.rs`) and `lmtp` (local
//! delivery over LMTP to Dovecot, `lmtp.rs`) are not part of `all`: they need clamav-daemon,
//! clamav-milter, rspamd and Dovecot (`scripts/test.sh` installs them).
//!
//! `--sessions none` skips the MX and group-commit tables (`--sizes none` the MX table),
//! `--idle 0` the idle-connection count. `--rounds N` (default 1) measures each MX scenario
//! N times, the servers taking turns (Postfix, no plugins, plugins, smtp-sink, then again),
//! and reports each figure's median and each ratio's median over the rounds, with the
//! on/off ratio of every round: on a shared machine one round can fall on a noisy moment.
//!
//! For each scenario (sessions × message size) it runs, in turn, Postfix (MX to a Maildir,
//! its normal queue fsync), Portcullis with no plugins and Portcullis with all four example
//! plugins, each freshly started, loaded by Postfix's own `smtp-source` (one connection per
//! message). It reports messages per second, the Portcullis / Postfix ratio, server CPU
//! seconds per 1000 messages (Postfix: the whole process tree, exited children included),
//! p50 and p99 latency from the end of DATA to the 250 (a second, shorter pass with our own
//! client, because smtp-source does not time replies), and peak memory (PSS of the process
//! tree). It also measures the disk's own file + directory fsync rate in the same run, the
//! submission path against Postfix's submission listener with Cyrus SASL (STARTTLS + AUTH
//! PLAIN per session, a new TLS session per message versus reuse), and the memory per idle
//! connection.

mod authentication;
mod lmtp;
mod measure;
mod postfix;
mod services;

use std::path::PathBuf;
use std::process::Command;

use portcullis_bench::server::{start, start_with};

use measure::*;
use postfix::*;

const USAGE: &str = "\
usage: compare [--seconds S] [--sessions 1,10,100] [--sizes 1024,10240,102400]
               [--rounds N] [--idle N] [--portcullis PATH]
               [--tables all|mx,group,submission,idle,authentication,services,lmtp]
(as root; bench/src/compare/main.rs says what each table measures)";

struct Args {
    seconds: f64,
    sessions: Vec<usize>,
    sizes: Vec<usize>,
    idle: usize,
    binary: PathBuf,
    tables: Vec<String>,
    rounds: usize,
}

impl Args {
    fn wants(&self, table: &str) -> bool {
        self.tables.iter().any(|t| t == table || t == "all")
    }
}

fn list(value: &str) -> Vec<usize> {
    if value == "none" {
        return Vec::new();
    }
    value
        .split(',')
        .map(|v| v.trim().parse().expect("a comma-separated list of numbers"))
        .collect()
}

fn args() -> Args {
    let mut a = Args {
        seconds: 5.0,
        sessions: vec![1, 10, 100],
        sizes: vec![1024, 10 * 1024, 100 * 1024],
        idle: 5000,
        binary: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release/portcullis"),
        tables: vec!["all".into()],
        rounds: 1,
    };
    for (flag, value) in portcullis_bench::options(USAGE) {
        match flag.as_str() {
            "--seconds" => a.seconds = value.parse().expect("--seconds S"),
            "--sessions" => a.sessions = list(&value),
            "--sizes" => a.sizes = list(&value),
            "--idle" => a.idle = value.parse().expect("--idle N"),
            "--rounds" => a.rounds = value.parse::<usize>().expect("--rounds N").max(1),
            "--portcullis" => a.binary = PathBuf::from(value),
            "--tables" => a.tables = value.split(',').map(|t| t.trim().to_string()).collect(),
            other => portcullis_bench::unknown_option(other, USAGE),
        }
    }
    a
}

fn main() {
    let a = args();
    assert!(
        a.binary.is_file(),
        "{} not found: cargo build --release -p portcullis",
        a.binary.display()
    );
    raise_fd_limit();
    ensure_postfix();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    println!(
        "Machine: {cores} cores, {}; Postfix {}; Portcullis {}\n",
        version(Command::new("uname").args(["-sr"])),
        version(Command::new("postconf").args(["-h", "-d", "mail_version"])),
        env!("CARGO_PKG_VERSION"),
    );
    let scratch = tempfile::tempdir().expect("tempdir");
    let (fsyncs, syncfs) = disk_rates(scratch.path());
    let mut kept = Kept::default();
    // Compile the plugins into the shared cache once, so that no measured start is a cold
    // one (bench/src/server.rs).
    drop(start(&a.binary, true, ""));
    println!("Disk: {fsyncs:.0} file+directory fsyncs/s, {syncfs:.0} syncfs/s\n");

    if a.wants("mx") {
        mx_path(&a, &mut kept, fsyncs);
    }
    if a.wants("group") {
        group_commit(&a, &mut kept);
    }
    if a.wants("submission") {
        submission_path(&a, &mut kept);
    }
    if a.wants("idle") {
        idle_connections(&a);
    }
    if a.wants("authentication") {
        authentication::authentication_cost(&a);
    }
    if a.tables.iter().any(|t| t == "services") {
        services::services_path(&a, &mut kept);
    }
    if a.tables.iter().any(|t| t == "lmtp") {
        lmtp::lmtp_path(&a, &mut kept);
    }
}

/// The MX table: Postfix, Portcullis without and with plugins, per size and sessions.
fn mx_path(a: &Args, kept: &mut Kept, fsyncs: f64) {
    println!("### MX path (smtp-source, one connection per message)\n");
    println!(
        "| sessions | size | server | msgs/s | vs Postfix | CPU s / 1000 msgs | p50 ms | p99 ms | peak MiB |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut single = None;
    for &size in &a.sizes {
        for &sessions in &a.sessions {
            let mut rounds = Vec::new();
            for _ in 0..a.rounds {
                let postfix = {
                    let mut p = Postfix::start();
                    measure(&mut p, kept, sessions, size, a.seconds)
                };
                let off = {
                    let mut d = start(&a.binary, false, "");
                    measure(&mut d, kept, sessions, size, a.seconds)
                };
                let on = {
                    let mut d = start(&a.binary, true, "");
                    measure(&mut d, kept, sessions, size, a.seconds)
                };
                let sink = sink_rate(sessions, size, a.seconds);
                rounds.push((postfix, off, on, sink));
            }
            let of = |pick: fn(&(Measured, Measured, Measured, f64)) -> &Measured| {
                Measured::median(&rounds.iter().map(pick).collect::<Vec<_>>())
            };
            let (postfix, off, on) = (of(|r| &r.0), of(|r| &r.1), of(|r| &r.2));
            let sink = median(rounds.iter().map(|r| r.3).collect());
            let ratio =
                |f: fn(&(Measured, Measured, Measured, f64)) -> f64| median(rounds.iter().map(f).collect());
            let on_off: Vec<String> = rounds
                .iter()
                .map(|r| format!("{:.0}%", 100.0 * r.2.per_second / r.1.per_second))
                .collect();
            if sessions == 1 && single.is_none() {
                single = Some(off.per_second);
            }
            let vs_postfix = (
                ratio(|r| r.1.per_second / r.0.per_second),
                ratio(|r| r.2.per_second / r.0.per_second),
            );
            for (name, m) in [
                ("Postfix", &postfix),
                ("Portcullis, no plugins", &off),
                ("Portcullis, 4 plugins", &on),
            ] {
                let ratio = if std::ptr::eq(m, &postfix) {
                    String::new()
                } else if std::ptr::eq(m, &off) {
                    format!("{:.2}×", vs_postfix.0)
                } else {
                    format!("{:.2}×", vs_postfix.1)
                };
                println!(
                    "| {sessions} | {} KiB | {name} | {:.0} | {ratio} | {:.2} | {} | {} | {} |",
                    size / 1024,
                    m.per_second,
                    m.cpu_per_1000,
                    ms(m.p50),
                    ms(m.p99),
                    mib(m.peak)
                );
            }
            println!(
                "| {sessions} | {} KiB | smtp-sink (stores nothing) | {sink:.0} | {:.2}× | | | | |",
                size / 1024,
                ratio(|r| r.3 / r.0.per_second)
            );
            let rounds_note = if rounds.len() > 1 {
                format!(" (rounds: {})", on_off.join(", "))
            } else {
                String::new()
            };
            println!(
                "| {sessions} | {} KiB | plugins on / off | {:.0}%{rounds_note} | | | | | |",
                size / 1024,
                100.0 * ratio(|r| r.2.per_second / r.1.per_second)
            );
            println!(
                "| {sessions} | {} KiB | of smtp-sink: no plugins, 4 plugins | {:.2}×, {:.2}× | | | | | |",
                size / 1024,
                ratio(|r| r.1.per_second / r.3),
                ratio(|r| r.2.per_second / r.3)
            );
        }
    }
    if let Some(rate) = single {
        println!(
            "\nSingle session, smallest size, no plugins: {rate:.0} msgs/s = {:.0}% of the disk's file+directory fsync rate.",
            100.0 * rate / fsyncs
        );
    }
}

/// Group commit against one fsync per message.
fn group_commit(a: &Args, kept: &mut Kept) {
    println!("\n### Group commit versus one fsync per message (no plugins, 10 KiB)\n");
    println!("| sessions | spool-sync | msgs/s | p50 ms | p99 ms | group / per-message |");
    println!("|---|---|---|---|---|---|");
    for &sessions in &a.sessions {
        let per = {
            let mut d = start_with(&a.binary, false, "spool-sync = \"per-message\"", "");
            measure(&mut d, kept, sessions, 10 * 1024, a.seconds)
        };
        let group = {
            let mut d = start_with(&a.binary, false, "spool-sync = \"group\"", "");
            measure(&mut d, kept, sessions, 10 * 1024, a.seconds)
        };
        println!(
            "| {sessions} | per-message | {:.0} | {} | {} | |",
            per.per_second,
            ms(per.p50),
            ms(per.p99)
        );
        println!(
            "| {sessions} | group | {:.0} | {} | {} | {:.2}× |",
            group.per_second,
            ms(group.p50),
            ms(group.p99),
            group.per_second / per.per_second
        );
    }
}

/// Submission: STARTTLS + AUTH, a new TLS session per message and a reused one.
fn submission_path(a: &Args, kept: &mut Kept) {
    println!("\n### Submission path (STARTTLS + AUTH PLAIN, 10 KiB, 10 sessions)\n");
    println!(
        "Portcullis with plugins authenticates through auth-table (`cache = \"5m\"`); without, through the users file (`cache-ttl` at its default, 10 minutes).\n"
    );
    println!("| connection | server | msgs/s | vs Postfix | p50 ms | p99 ms | TLS resumed |");
    println!("|---|---|---|---|---|---|---|");
    for connection in [Connection::NewFull, Connection::NewResumed, Connection::Reused] {
        let name = connection.name();
        let messages = if connection == Connection::Reused {
            3000
        } else {
            1000
        };
        let mut postfix = Postfix::start();
        let (reference, lat, resumed) = submission(
            postfix.submission,
            &postfix.cert,
            10,
            messages,
            10 * 1024,
            connection,
        );
        kept.keep(&mut postfix);
        drop(postfix);
        println!(
            "| {name} | Postfix | {reference:.0} | | {} | {} | {resumed} |",
            ms(percentile(&lat, 0.5)),
            ms(percentile(&lat, 0.99))
        );
        for plugins in [false, true] {
            let mut d = start(&a.binary, plugins, "");
            let (rate, lat, resumed) = submission(d.submission, &d.cert, 10, messages, 10 * 1024, connection);
            kept.keep(&mut d);
            println!(
                "| {name} | Portcullis, {} | {rate:.0} | {:.2}× | {} | {} | {resumed} |",
                if plugins { "4 plugins" } else { "no plugins" },
                rate / reference,
                ms(percentile(&lat, 0.5)),
                ms(percentile(&lat, 0.99))
            );
        }
    }
}

/// Memory per idle MX connection.
fn idle_connections(a: &Args) {
    println!("\n### Idle connections\n");
    // Loopback is exempt from the per-address cap; the cap per listener is raised.
    let d = start(
        &a.binary,
        true,
        &format!("\n[limits]\nconnections = {}\n", a.idle + 100),
    );
    // A normal client's 10 KiB message, end of DATA to the 250: unloaded, then with every
    // idle session open.
    let p50 = || percentile(&latencies(d.mx, 1, 50, 10 * 1024), 0.5);
    let unloaded = p50();
    let (per, n, loaded) = idle_memory(&d, a.idle, p50);
    println!(
        "{n} idle MX sessions: {:.1} KiB of daemon RSS per session; a message's p50 {} ms with them open, {} ms without ({:.2}×).",
        per / 1024.0,
        ms(loaded),
        ms(unloaded),
        loaded.as_secs_f64() / unloaded.as_secs_f64()
    );
}
