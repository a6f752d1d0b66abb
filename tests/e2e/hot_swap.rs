//! Hot swap under load: while a client sends messages on one long session, the spam plugin
//! is swapped ten times between two versions with different verdicts.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::harness::*;

fn count(dir: &std::path::Path) -> usize {
    new_files(dir).len()
}

/// A setup whose spam hook is the probe plugin; returns it and the plugin's live path.
fn with_probe_on_spam() -> (Setup, std::path::PathBuf) {
    let setup = Setup::new("");
    let live = setup.plugin("probe.wasm");
    let extra = format!("\n[[plugin]]\nhook = \"spam\"\npath = \"{}\"\n", live.display());
    let config = std::fs::read_to_string(setup.config()).expect("config") + &extra;
    std::fs::write(setup.config(), config).expect("config");
    (setup, live)
}

#[test]
fn swapping_the_spam_plugin_under_load_drops_nothing() {
    let (setup, live) = with_probe_on_spam();
    let mut daemon = setup.start();

    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let addr = daemon.addr("mx");
    let client = {
        let (stop, sent) = (Arc::clone(&stop), Arc::clone(&sent));
        std::thread::spawn(move || -> Result<(), String> {
            // One session for the whole test: a swap must never drop it.
            let mut c = Raw::connect(addr);
            if !c.cmd("EHLO load.example").starts_with("250") {
                return Err("EHLO".into());
            }
            while !stop.load(Ordering::Relaxed) {
                let n = sent.load(Ordering::Relaxed);
                for (cmd, want) in [
                    ("MAIL FROM:<load@far.example>".to_string(), "250"),
                    ("RCPT TO:<alice@example.org>".to_string(), "250"),
                    ("DATA".to_string(), "354"),
                    (format!("Subject: load {n}\r\n\r\nmessage {n}\r\n."), "250"),
                ] {
                    let reply = c.cmd(&cmd);
                    if !reply.starts_with(want) {
                        return Err(format!("message {n}: {cmd:?} got {reply:?}"));
                    }
                }
                sent.fetch_add(1, Ordering::Relaxed);
            }
            if !c.cmd("QUIT").starts_with("221") {
                return Err("QUIT".into());
            }
            Ok(())
        })
    };

    let versions = [built_plugin("probe_b.wasm"), built_plugin("probe.wasm")];
    let mut worst = Duration::ZERO;
    for swap in 0..10 {
        // Version B files into Junk, version A into the inbox: a new file in the target
        // folder after the swap can only come from the new version.
        let (source, target) = if swap % 2 == 0 {
            (&versions[0], setup.junk("alice"))
        } else {
            (&versions[1], setup.maildir("alice"))
        };
        let before = count(&target);
        let staged = live.with_extension("staged");
        std::fs::copy(source, &staged).expect("stage");
        let swapped_at = Instant::now();
        std::fs::rename(&staged, &live).expect("swap");
        // The swap itself is logged before the next one starts: a message classified by
        // the previous version and delivered late must not pass for this swap's verdict
        // while the file is replaced again under a reload still in progress.
        daemon.wait_log_count("plugin swapped", swap + 1);
        let deadline = swapped_at + PATIENCE;
        while count(&target) == before {
            assert!(
                Instant::now() < deadline,
                "swap {swap}: the new version was never seen"
            );
            assert!(!client.is_finished(), "the client stopped");
            std::thread::sleep(Duration::from_millis(5));
        }
        let seen = swapped_at.elapsed();
        worst = worst.max(seen);
        assert!(
            seen < Duration::from_secs(1),
            "swap {swap}: new verdict seen after {seen:?}"
        );
    }
    stop.store(true, Ordering::Relaxed);
    client.join().expect("client thread").expect("no session failure");
    let total = sent.load(Ordering::Relaxed);
    wait_spool_empty(&setup.data());
    assert_eq!(
        count(&setup.maildir("alice")) + count(&setup.junk("alice")),
        total,
        "every message delivered once"
    );
    daemon.wait_log_count("plugin swapped", 10);
    eprintln!("{total} messages during 10 swaps; slowest swap seen after {worst:?}");
}

#[test]
fn a_swap_is_announced_before_it_compiles_and_stray_files_are_named() {
    let (setup, live) = with_probe_on_spam();
    let mut daemon = setup.start();
    let watched = daemon.wait_log("watching plugin files");
    assert!(watched.contains("probe.wasm"), "{watched}");

    // A new version: announced at once, then swapped.
    let staged = live.with_extension("staged");
    std::fs::copy(built_plugin("probe_b.wasm"), &staged).expect("stage");
    std::fs::rename(&staged, &live).expect("swap");
    daemon.wait_log("plugin swapped");
    let log = daemon.log();
    let seen = log
        .iter()
        .position(|l| l.contains("new plugin version seen"))
        .expect("announced");
    let swapped = log
        .iter()
        .position(|l| l.contains("plugin swapped"))
        .expect("swapped");
    assert!(seen < swapped, "announced before the swap");

    // A garbage file: refused in one line that names its hash; the old version serves on.
    std::fs::write(&staged, b"not wasm at all").expect("garbage");
    std::fs::rename(&staged, &live).expect("swap");
    let refused = daemon.wait_log("new plugin version refused");
    assert!(
        refused.contains("sha256") && refused.contains("not a WebAssembly file"),
        "{refused}"
    );
    let after = daemon.log();
    let at = after
        .iter()
        .position(|l| l.contains("new plugin version refused"))
        .expect("refused");
    assert!(
        after.get(at + 1).is_none_or(|next| next.contains(" INFO ")
            || next.contains(" WARN ")
            || next.contains(" ERROR ")),
        "the refusal is one line: {:?}",
        &after[at..]
    );

    // A .wasm that no [[plugin]] names: said once, not used.
    std::fs::copy(built_plugin("probe.wasm"), live.with_file_name("my-filter.wasm")).expect("copy");
    let stray = daemon.wait_log("no [[plugin]] names it");
    assert!(stray.contains("my-filter.wasm"), "{stray}");
}
