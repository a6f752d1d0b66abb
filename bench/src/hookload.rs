//! Hook calls under concurrency, without sockets or disks: `tasks` tokio tasks on a
//! multi-thread runtime call the virus and spam plugins back to back, as the daemon's
//! sessions do. Compares with the single-threaded criterion numbers to show what
//! concurrency costs (memory-mapping changes are process-wide: TLB shoot-downs).
//!
//! Usage: `hookload [--workers W] [--tasks T] [--calls N] [--kib K] [--hooks virus,spam]
//! [--virus FILE] [--spam FILE] [--mime yes]`. `--spam probe.wasm` (a plugin with a fixed
//! verdict) measures what a hook costs by itself: the fresh instance, the call and the
//! teardown. `--mime yes` sends a MIME message that needs decoding (quoted-printable text,
//! a base64 attachment) instead of plain text. Each message is a new one, as in the daemon:
//! what the host derives from a message (its MIME structure) is shared by the plugins of
//! that message only. A FILE with a `/` is a path (an earlier build, to compare).
//! `--message PATH` sends that file's content instead (say, a copy the daemon delivered,
//! to measure the plugins on the very message they saw there; `--kib` is then ignored).

use std::sync::Arc;
use std::time::Instant;

use portcullis_bench::{message_of, session};
use portcullis_runtime::{Hook, PluginSpec, Runtime, RuntimeConfig};
use portcullis_smtp::session::PipelineKind;

const USAGE: &str = "\
usage: hookload [--workers W] [--tasks T] [--calls N] [--kib K] [--hooks virus,spam]
                [--virus FILE] [--spam FILE] [--mime yes] [--message PATH]";

fn spec(file: &str, hook: Hook) -> Arc<PluginSpec> {
    portcullis_bench::spec(file, hook, serde_json::Map::new())
}

fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let ticks: f64 = fields.get(11).and_then(|u| u.parse().ok()).unwrap_or(0.0)
        + fields.get(12).and_then(|s| s.parse().ok()).unwrap_or(0.0);
    ticks / 100.0
}

fn main() {
    let mut workers = 2;
    let mut tasks = 10;
    let mut calls = 1000;
    let mut kib = 10;
    let (mut run_virus, mut run_spam) = (true, true);
    let mut spam_plugin = "spam_rules.wasm".to_string();
    let mut virus_plugin = "virus_signatures.wasm".to_string();
    let mut mime = false;
    let mut message_file = None;
    for (flag, value) in portcullis_bench::options(USAGE) {
        let number = || -> usize { value.parse().expect("a number after each of these options") };
        match flag.as_str() {
            "--workers" => workers = number(),
            "--tasks" => tasks = number(),
            "--calls" => calls = number(),
            "--kib" => kib = number(),
            "--spam" => spam_plugin = value,
            "--virus" => virus_plugin = value,
            "--mime" => mime = value == "yes",
            "--message" => message_file = Some(value),
            "--hooks" => {
                run_virus = value.split(',').any(|h| h == "virus");
                run_spam = value.split(',').any(|h| h == "spam");
            }
            other => portcullis_bench::unknown_option(other, USAGE),
        }
    }
    let runtime = Arc::new(
        Runtime::new(&RuntimeConfig {
            max_memory: 128 << 20,
            instances: 256,
            cache_dir: None,
        })
        .expect("runtime"),
    );
    let virus = Arc::new(runtime.load(spec(&virus_plugin, Hook::Virus)).expect("load"));
    let spam = Arc::new(runtime.load(spec(&spam_plugin, Hook::Spam)).expect("load"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .expect("tokio");
    let content = if let Some(path) = &message_file {
        String::from_utf8_lossy(&std::fs::read(path).expect("--message file"))
            .replace("\r\n", "\n")
            .replace('\n', "\r\n")
    } else if mime {
        portcullis_bench::mime_message(kib * 1024, 1)
    } else {
        portcullis_bench::sample_message(kib * 1024, 1)
    };
    let cpu = cpu_seconds();
    let started = Instant::now();
    rt.block_on(async {
        let handles: Vec<_> = (0..tasks)
            .map(|_| {
                let (runtime, virus, spam, content) = (
                    Arc::clone(&runtime),
                    Arc::clone(&virus),
                    Arc::clone(&spam),
                    content.clone(),
                );
                tokio::spawn(async move {
                    let mx = session(PipelineKind::Mx);
                    for _ in 0..calls / tasks {
                        let msg = message_of(content.clone());
                        if run_virus {
                            runtime.virus(&virus, &mx, &msg).await.expect("scan");
                        }
                        if run_spam {
                            runtime.spam(&spam, &mx, &msg).await.expect("classify");
                        }
                    }
                })
            })
            .collect();
        for h in handles {
            h.await.expect("task");
        }
    });
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu;
    println!(
        "{workers} workers, {tasks} tasks, {kib} KiB, mime {mime}, virus {run_virus} spam {run_spam}: {:.0} messages/s, {:.0} µs CPU per message",
        calls as f64 / elapsed,
        cpu * 1e6 / calls as f64
    );
}
