//! Messages per second of the release daemon, with the four example plugins off and on,
//! side by side in one run, on the MX path (virus + spam) and the submission path
//! (STARTTLS, AUTH through auth-table, rate + virus).
//!
//! Usage: `cargo run --release -p portcullis-bench --bin throughput -- [--messages N]
//! [--sessions C] [--size BYTES] [--portcullis PATH]`. Prints a Markdown table.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use portcullis_bench::sample_message;
use portcullis_bench::server::{Client, Daemon, Path_, connect, cpu_seconds, start};

const USAGE: &str = "usage: throughput [--messages N] [--sessions C] [--size BYTES] [--portcullis PATH]";

struct Args {
    messages: usize,
    sessions: usize,
    size: usize,
    binary: PathBuf,
}

fn args() -> Args {
    let mut a = Args {
        messages: 2000,
        sessions: 10,
        size: 10 * 1024,
        binary: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release/portcullis"),
    };
    for (flag, value) in portcullis_bench::options(USAGE) {
        match flag.as_str() {
            "--messages" => a.messages = value.parse().expect("--messages N"),
            "--sessions" => a.sessions = value.parse().expect("--sessions C"),
            "--size" => a.size = value.parse().expect("--size BYTES"),
            "--portcullis" => a.binary = PathBuf::from(value),
            other => portcullis_bench::unknown_option(other, USAGE),
        }
    }
    a
}

struct Result_ {
    per_second: f64,
    cpu_per_1000: f64,
}

fn run(daemon: &Daemon, path: Path_, a: &Args) -> Result_ {
    let body = Arc::new(sample_message(a.size, 0));
    let next = Arc::new(AtomicUsize::new(0));
    let cpu_before = cpu_seconds(daemon.child.id());
    let clients: Vec<Client> = (0..a.sessions).map(|_| connect(daemon, path)).collect();
    let started = Instant::now();
    let workers: Vec<_> = clients
        .into_iter()
        .map(|mut client| {
            let (body, next, total) = (Arc::clone(&body), Arc::clone(&next), a.messages);
            std::thread::spawn(move || {
                while next.fetch_add(1, Ordering::Relaxed) < total {
                    let from = if path == Path_::Mx {
                        "bob@far.example"
                    } else {
                        "bench@example.org"
                    };
                    assert!(client.cmd(&format!("MAIL FROM:<{from}>")).starts_with("250"));
                    // postmaster exists in every local domain, whichever source the accounts use.
                    let rcpt = client.cmd("RCPT TO:<postmaster@example.org>");
                    assert!(rcpt.starts_with("250"), "{rcpt}");
                    let data = client.cmd("DATA");
                    assert!(data.starts_with("354"), "{data}");
                    let reply = client.cmd(&format!("{body}."));
                    assert!(reply.starts_with("250"), "{reply}");
                }
                client.cmd("QUIT");
            })
        })
        .collect();
    for w in workers {
        w.join().expect("worker");
    }
    let elapsed = started.elapsed();
    let cpu = cpu_seconds(daemon.child.id()) - cpu_before;
    Result_ {
        per_second: a.messages as f64 / elapsed.as_secs_f64(),
        cpu_per_1000: cpu * 1000.0 / a.messages as f64,
    }
}

fn main() {
    let a = args();
    assert!(
        a.binary.is_file(),
        "{} not found: cargo build --release -p portcullis",
        a.binary.display()
    );
    println!(
        "{} messages of {} bytes per run, {} concurrent sessions\n",
        a.messages, a.size, a.sessions
    );
    println!("| path | plugins | messages/s | daemon CPU s / 1000 msgs | on / off |");
    println!("|---|---|---|---|---|");
    for (path, name) in [
        (Path_::Mx, "mx (virus, spam)"),
        (Path_::Submission, "submission (auth, rate, virus)"),
    ] {
        // The disk's state drifts as the spool creates and deletes files, so the two
        // configurations run in turns (off, on, on, off) and each keeps its best run.
        let mut off: Option<Result_> = None;
        let mut on: Option<Result_> = None;
        for plugins in [false, true, true, false] {
            let daemon = start(&a.binary, plugins, "");
            std::thread::sleep(Duration::from_millis(200));
            let result = run(&daemon, path, &a);
            let best = if plugins { &mut on } else { &mut off };
            if best.as_ref().is_none_or(|b| result.per_second > b.per_second) {
                *best = Some(result);
            }
        }
        let (off, on) = (off.expect("ran"), on.expect("ran"));
        println!(
            "| {name} | off | {:.0} | {:.2} | |",
            off.per_second, off.cpu_per_1000
        );
        println!(
            "| {name} | on | {:.0} | {:.2} | {:.0}% |",
            on.per_second,
            on.cpu_per_1000,
            100.0 * on.per_second / off.per_second
        );
    }
}
