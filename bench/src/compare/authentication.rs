//! The MX path with mail authentication on and off, side by side: the same DKIM-signed
//! message from a domain with SPF, DKIM and DMARC records (and a PTR for the client), served
//! by a DNS server on loopback whose answers the daemon's resolver caches, as a local caching
//! resolver's would be.

use std::path::Path;
use std::process::Command;

use mail_auth::common::crypto::{RsaKey, Sha256};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::DkimSigner;
use portcullis_bench::server::start;
use portcullis_testkit::dns::{Answer, Dns};
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;

use crate::Args;
use crate::measure::{Mail, Measured, count_files, smtp_source_mail, tree_cpu, wait_delivered};

/// Every check off: what `[authentication]` looks like without them.
const OFF: &str =
    "[authentication]\nspf = false\ndkim = false\narc = false\niprev = false\ndmarc = \"off\"\n";

/// A key made by the daemon's own `dkim keygen` for `sender.test`: its PEM file and the TXT
/// record's strings.
fn keygen(binary: &Path, dir: &Path) -> (std::path::PathBuf, Vec<String>) {
    let config = dir.join("keygen.toml");
    std::fs::write(
        &config,
        "[server]\ndata-dir = \"keys\"\n[domains]\nlocal = [\"example.org\"]\n[[listener]]\nkind = \"mx\"\naddress = \"127.0.0.1:0\"\n",
    )
    .expect("keygen config");
    let out = Command::new(binary)
        .args([
            "dkim",
            "keygen",
            "--domain",
            "sender.test",
            "--selector",
            "s1",
            "--config",
        ])
        .arg(&config)
        .output()
        .expect("run dkim keygen");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let record = text
        .lines()
        .find(|l| l.starts_with("s1._domainkey.sender.test. IN TXT ("))
        .expect("record printed");
    let strings = record.split('"').skip(1).step_by(2).map(str::to_string).collect();
    (dir.join("keys/dkim/sender.test.s1.rsa.pem"), strings)
}

/// A message of `size` octets from `bob@sender.test`, signed with `key`, written for
/// smtp-source (lines without CR).
fn signed_message(key: &Path, size: usize, into: &Path) {
    let pem = std::fs::read(key).expect("key");
    let key =
        RsaKey::<Sha256>::from_key_der(PrivateKeyDer::from_pem_slice(&pem).expect("pem")).expect("rsa key");
    let signer = DkimSigner::from_key(key)
        .domain("sender.test")
        .selector("s1")
        .headers(["From", "From", "To", "Subject", "Date", "Message-ID"]);
    let mut message = b"From: Bob <bob@sender.test>\r\nTo: postmaster@example.org\r\nSubject: signed\r\n\
                        Date: Tue, 01 Dec 2026 10:00:00 +0000\r\nMessage-ID: <bench@sender.test>\r\n\r\n"
        .to_vec();
    while message.len() < size {
        message.extend_from_slice(b"All work and no play makes a signed message for the benchmark.\r\n");
    }
    let signature = signer.sign(&message).expect("sign").to_header();
    let whole = [signature.as_bytes(), &message].concat();
    std::fs::write(into, String::from_utf8_lossy(&whole).replace("\r\n", "\n")).expect("message file");
}

/// One measured run of a daemon started with `extra`, loaded with `mail`.
fn run(a: &Args, extra: &str, sessions: usize, mail: &Mail<'_>) -> Measured {
    let daemon = start(&a.binary, false, extra);
    let maildirs = [
        daemon.dir.path().join("data/mail/example.org/postmaster/new"),
        daemon
            .dir
            .path()
            .join("data/mail/example.org/postmaster/.Junk/new"),
    ];
    // Warm: the resolver's cache, the allocator, the spool's free files.
    let warm = (sessions * 20).max(100);
    smtp_source_mail(daemon.mx, sessions, warm, mail);
    wait_delivered(&maildirs, warm);
    let messages = ((a.seconds * 300.0) as usize).max(sessions * 50);
    let cpu_before = tree_cpu(daemon.child.id());
    let elapsed = smtp_source_mail(daemon.mx, sessions, messages, mail);
    wait_delivered(&maildirs, warm + messages);
    let cpu = tree_cpu(daemon.child.id()) - cpu_before;
    assert_eq!(
        count_files(&maildirs),
        warm + messages,
        "a message was refused or lost"
    );
    if !extra.contains("dmarc = \"off\"") {
        // What was measured is the whole path: every method passed.
        let one = std::fs::read_dir(&maildirs[0])
            .expect("maildir")
            .next()
            .expect("a copy")
            .expect("entry");
        let copy = std::fs::read_to_string(one.path()).expect("copy");
        for method in ["iprev=pass", "spf=pass", "dkim=pass", "dmarc=pass"] {
            assert!(
                copy.contains(method),
                "{method} missing from a delivered copy:\n{copy}"
            );
        }
    }
    Measured {
        per_second: messages as f64 / elapsed.as_secs_f64(),
        cpu_per_1000: cpu * 1000.0 / messages as f64,
        ..Measured::default()
    }
}

/// The table: three alternating rounds of off and on, at 10 sessions, 10 KiB.
pub(crate) fn authentication_cost(a: &Args) {
    println!("\n### MX with mail authentication on and off (no plugins, 10 sessions, 10 KiB, DKIM-signed)\n");
    let dir = tempfile::tempdir().expect("tempdir");
    let (key, record) = keygen(&a.binary, dir.path());
    let file = dir.path().join("signed.eml");
    signed_message(&key, 10 * 1024, &file);
    let dns = Dns::start(&[
        ("1.0.0.127.in-addr.arpa", Answer::Ptr("mail.sender.test.")),
        ("mail.sender.test", Answer::A(std::net::Ipv4Addr::LOCALHOST)),
        (
            "sender.test",
            Answer::Txt(vec!["v=spf1 ip4:127.0.0.1 -all".into()]),
        ),
        (
            "_dmarc.sender.test",
            Answer::Txt(vec!["v=DMARC1; p=reject".into()]),
        ),
        ("s1._domainkey.sender.test", Answer::Txt(record)),
    ]);
    let resolver = format!("[dns]\nnameservers = [\"{}\"]\n", dns.addr);
    let mail = Mail::File {
        from: "bob@sender.test",
        path: &file,
    };
    println!("| round | authentication | msgs/s | CPU s / 1000 msgs |");
    println!("|---|---|---|---|");
    let (mut off_total, mut on_total) = (0.0, 0.0);
    for round in 1..=3 {
        let off = run(a, &format!("{resolver}{OFF}"), 10, &mail);
        let on = run(a, &resolver, 10, &mail);
        println!(
            "| {round} | off | {:.0} | {:.2} |",
            off.per_second, off.cpu_per_1000
        );
        println!(
            "| {round} | on (iprev, spf, dkim, arc, dmarc) | {:.0} | {:.2} |",
            on.per_second, on.cpu_per_1000
        );
        off_total += off.per_second;
        on_total += on.per_second;
    }
    let queries = dns.queries.lock().map(|q| q.len()).unwrap_or(0);
    println!(
        "\nQuestions that reached the DNS server in the whole run: {queries} (the resolver's cache answered the rest)."
    );
    println!(
        "\nWith authentication on, MX keeps {:.0}% of its throughput (mean of the rounds).",
        100.0 * on_total / off_total
    );
}
