//! One hostile client must not take the server down or hide from it: connection caps,
//! deadlines that a dripping client cannot stretch, bounded password hashing, guessing
//! throttled across sessions, and log lines it cannot forge. Loopback is exempt from the
//! per-address limits by default, so these tests set `exempt = []` where that matters.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::harness::*;

/// The daemon's peak resident memory so far, in MiB (`VmHWM`).
fn peak_rss_mib(daemon: &Daemon) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", daemon.child.id())).expect("status");
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).expect("VmHWM");
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("kB");
    kib / 1024
}

/// Connects from `source` (a loopback address) with Python, and prints the greeting.
const GREETING_FROM: &str = r#"
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=10, source_address=(sys.argv[2], 0))
print(s.recv(200).decode().strip())
"#;

#[test]
fn connection_caps_answer_421_and_a_capped_client_locks_nobody_else_out() {
    let setup = Setup::new("[limits]\nconnections-per-ip = 3\nexempt = []\n");
    let daemon = setup.start();
    let mx = daemon.addr("mx");
    let held: Vec<Raw> = (0..3).map(|_| Raw::connect(mx)).collect();
    // The fourth from the same address: 421 at once, and closed.
    let mut fourth = TcpStream::connect(mx).expect("connect");
    fourth.set_read_timeout(Some(PATIENCE)).expect("timeout");
    let mut said = String::new();
    fourth.read_to_string(&mut said).expect("read until closed");
    assert!(
        said.starts_with("421 4.7.0 Too many connections from your address"),
        "{said}"
    );
    // Another address is served at once.
    let started = Instant::now();
    let greeting = python(GREETING_FROM, &[&mx.port().to_string(), "127.0.0.2"]);
    assert!(greeting.starts_with("220 "), "{greeting}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "served in {:?}",
        started.elapsed()
    );
    // A slot freed is a slot again.
    drop(held);
    let deadline = Instant::now() + PATIENCE;
    loop {
        let mut again = TcpStream::connect(mx).expect("connect");
        again.set_read_timeout(Some(PATIENCE)).expect("timeout");
        let mut buf = [0u8; 4];
        again.read_exact(&mut buf).expect("greeting");
        if &buf == b"220 " {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the freed connections were never counted out"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // The listener's own cap holds for everyone, exempt or not.
    let setup = Setup::new("[limits]\nconnections = 2\n");
    let daemon = setup.start();
    let held: Vec<Raw> = (0..2).map(|_| Raw::connect(daemon.addr("mx"))).collect();
    let mut third = TcpStream::connect(daemon.addr("mx")).expect("connect");
    third.set_read_timeout(Some(PATIENCE)).expect("timeout");
    let mut said = String::new();
    third.read_to_string(&mut said).expect("read until closed");
    assert!(
        said.starts_with("421 4.7.0 Too many connections, try again later"),
        "{said}"
    );
    // The submission listener has its own count.
    let mut other = Raw::connect(daemon.addr("submission"));
    assert!(other.cmd("QUIT").starts_with("221"));
    drop(held);
}

/// Sends `bytes` one at a time, `gap` apart, until the server closes; returns what it
/// said and how long after the first byte it closed.
fn drip(stream: &mut TcpStream, bytes: &[u8], gap: Duration) -> (String, Duration) {
    let started = Instant::now();
    for b in bytes {
        if stream.write_all(std::slice::from_ref(b)).is_err() {
            break;
        }
        std::thread::sleep(gap);
        if started.elapsed() > Duration::from_secs(15) {
            break;
        }
    }
    let mut said = String::new();
    let _ = stream.read_to_string(&mut said);
    (said, started.elapsed())
}

#[test]
fn a_dripping_client_cannot_stretch_the_timeouts() {
    let setup =
        Setup::new("[limits]\ncommand-timeout = \"2s\"\ndata-timeout = \"2s\"\nmin-data-rate = 500\n");
    let daemon = setup.start();
    // A command line one octet every 0.4 s: each read is quick, the line never completes.
    let mut c = TcpStream::connect(daemon.addr("mx")).expect("connect");
    c.set_read_timeout(Some(PATIENCE)).expect("timeout");
    let mut greeting = [0u8; 4];
    c.read_exact(&mut greeting).expect("greeting");
    let mut rest = [0u8; 256];
    let _ = c.read(&mut rest);
    let (said, took) = drip(&mut c, &[b'N'; 60], Duration::from_millis(400));
    assert!(said.contains("421 4.4.2"), "{said}");
    assert!(took < Duration::from_secs(5), "closed after {took:?}");

    // Content one octet every 0.3 s: after data-timeout, below 500 octets a second.
    let mut c = Raw::connect(daemon.addr("mx"));
    assert!(c.cmd("EHLO drip.example").starts_with("250"));
    assert!(c.cmd("MAIL FROM:<drip@far.example>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<alice@example.org>").starts_with("250"));
    assert!(c.cmd("DATA").starts_with("354"));
    let (said, took) = drip(&mut c.stream, &[b'x'; 60], Duration::from_millis(300));
    assert!(said.contains("421 4.4.2"), "{said}");
    assert!(took < Duration::from_secs(5), "closed after {took:?}");
    assert!(new_files(&setup.maildir("alice")).is_empty());
    let mut daemon = daemon;
    daemon.wait_log("client too slow");

    // An honest client on the same settings is unaffected.
    let mut c = Raw::connect(daemon.addr("mx"));
    assert!(c.cmd("EHLO honest.example").starts_with("250"));
    assert!(c.cmd("MAIL FROM:<friend@far.example>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<alice@example.org>").starts_with("250"));
    assert!(c.cmd("DATA").starts_with("354"));
    assert!(c.cmd("Subject: hi\r\n\r\nhello\r\n.").starts_with("250"));
}

/// `n` concurrent AUTH PLAIN attempts on 465 as `user`; prints each reply's code.
const AUTH_BURST: &str = r#"
import base64, smtplib, ssl, sys, threading
port, n, user, password = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
source = sys.argv[5] if len(sys.argv) > 5 else "127.0.0.1"
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
codes = []
def one():
    try:
        s = smtplib.SMTP_SSL("127.0.0.1", port, context=ctx, timeout=120, source_address=(source, 0))
        s.ehlo("burst.example")
        token = base64.b64encode(("\0" + user + "\0" + password).encode()).decode()
        codes.append(s.docmd("AUTH", "PLAIN " + token)[0])
        s.close()
    except Exception as e:
        codes.append(repr(e))
threads = [threading.Thread(target=one) for _ in range(n)]
for t in threads: t.start()
for t in threads: t.join()
print(" ".join(str(c) for c in codes))
"#;

#[test]
fn two_hundred_concurrent_failed_auths_stay_in_bounded_memory() {
    // The per-address limit is lifted, so that every attempt is really checked.
    let setup = Setup::new(
        "[limits]\nconnections-per-ip = 1000\nauth-failures-per-ip = { max = 100000, window = \"10m\" }\nauth-failures-per-account = { max = 100000, window = \"10m\" }\n",
    );
    let daemon = setup.start();
    let port = daemon.addr("submissions").port().to_string();
    let out = python(AUTH_BURST, &[&port, "200", "alice@example.org", "wrong"]);
    let codes: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(codes.len(), 200, "{out}");
    assert!(codes.iter().all(|c| *c == "535" || *c == "454"), "{out}");
    let peak = peak_rss_mib(&daemon);
    assert!(peak < 300, "the daemon's peak RSS was {peak} MiB");
    // It still answers.
    let ok = python(AUTH_BURST, &[&port, "1", "alice@example.org", PASSWORD]);
    assert_eq!(ok.trim(), "235");
}

#[test]
fn guessing_is_throttled_per_address_and_slowed_per_name() {
    let setup = Setup::new(
        "[limits]\nexempt = []\nauth-failures-per-ip = { max = 3, window = \"10m\" }\nauth-failures-per-account = { max = 5, window = \"10m\" }\n",
    );
    setup.add_user("bob", PASSWORD);
    let mut daemon = setup.start();
    let port = daemon.addr("submissions").port().to_string();
    // Three wrong passwords over fresh connections, then the right one: not even checked.
    let out = python(
        AUTH_BURST,
        &[&port, "3", "alice@example.org", "wrong", "127.0.0.1"],
    );
    assert_eq!(out.trim(), "535 535 535");
    let out = python(
        AUTH_BURST,
        &[&port, "1", "alice@example.org", PASSWORD, "127.0.0.1"],
    );
    assert_eq!(
        out.trim(),
        "454",
        "the right password from a guessing address is not checked"
    );
    daemon.wait_log("authentication refused unchecked");
    // Another address is not locked out, for alice or anyone.
    let out = python(
        AUTH_BURST,
        &[&port, "1", "alice@example.org", PASSWORD, "127.0.0.2"],
    );
    assert_eq!(out.trim(), "235");
    // Guessing against bob's name from many addresses slows bob's logins down, and never
    // refuses the right password.
    for source in ["127.0.0.3", "127.0.0.4"] {
        let out = python(AUTH_BURST, &[&port, "3", "bob@example.org", "wrong", source]);
        assert_eq!(out.trim(), "535 535 535", "{source}");
    }
    let started = Instant::now();
    let out = python(
        AUTH_BURST,
        &[&port, "1", "bob@example.org", PASSWORD, "127.0.0.5"],
    );
    assert_eq!(out.trim(), "235");
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "not slowed: {:?}",
        started.elapsed()
    );
    daemon.wait_log("slowing down authentication");
}

#[test]
fn client_supplied_text_cannot_forge_log_lines() {
    let setup = Setup::new("");
    let mut daemon = setup.start();
    let mut c = TlsRaw::connect(daemon.addr("submission"), &setup.cert_pem);
    let evil = "evil\r\n2026-12-01T00:00:00Z  INFO forged: root logged in\x1b[31m";
    let reply = c.cmd(&format!("AUTH PLAIN {}", base64_plain(evil, "x")));
    assert!(reply.starts_with("535"), "{reply}");
    let line = daemon.wait_log("authentication failed");
    assert!(
        line.contains(r"evil\r\n2026-12-01T00:00:00Z  INFO forged: root logged in\x1b[31m"),
        "{line}"
    );
    assert!(
        !daemon
            .log()
            .iter()
            .any(|l| l.starts_with("2026-12-01T00:00:00Z") || l.contains('\x1b'))
    );
}

/// Mode bits and group of `path`.
fn mode_and_group(path: &std::path::Path) -> (u32, u32) {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).expect("stat");
    (meta.mode() & 0o7777, meta.gid())
}

fn deliver_one(daemon: &Daemon, subject: &str) {
    let mut c = Raw::connect(daemon.addr("mx"));
    assert!(c.cmd("EHLO files.example").starts_with("250"));
    assert!(c.cmd("MAIL FROM:<friend@far.example>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<alice@example.org>").starts_with("250"));
    assert!(c.cmd("DATA").starts_with("354"));
    assert!(
        c.cmd(&format!("Subject: {subject}\r\n\r\nhi\r\n."))
            .starts_with("250")
    );
}

#[test]
fn files_are_private_or_shared_with_the_mail_readers_group_only() {
    // The test process's umask is the usual 022: the daemon sets its own.
    let setup = Setup::new("");
    let daemon = setup.start();
    deliver_one(&daemon, "private");
    let files = wait_for_mail(&setup.maildir("alice"), 1);
    wait_spool_empty(&setup.data());
    assert_eq!(mode_and_group(&files[0]).0, 0o600);
    assert_eq!(mode_and_group(&setup.maildir("alice").join("new")).0, 0o700);
    assert_eq!(mode_and_group(&setup.dir.path().join("users.toml")).0, 0o600);
    for dir in ["spool/queue", "spool/free"] {
        let dir = setup.data().join(dir);
        assert_eq!(mode_and_group(&dir).0, 0o700, "{dir:?}");
        for file in std::fs::read_dir(&dir).expect("dir") {
            let file = file.expect("entry").path();
            assert_eq!(mode_and_group(&file).0, 0o600, "{file:?}");
        }
    }
    drop(daemon);

    // With a mail reader's group: the Maildirs are the group's (2770, 0660), nothing else.
    let Some(group) = nix::unistd::Group::from_name("mail").ok().flatten() else {
        eprintln!("no group \"mail\" on this system: the shared half was not run");
        return;
    };
    let setup = Setup::new("");
    setup.edit_config("run-as-root = true", "run-as-root = true\ngroup = \"mail\"");
    let daemon = setup.start();
    deliver_one(&daemon, "shared");
    let files = wait_for_mail(&setup.maildir("alice"), 1);
    wait_spool_empty(&setup.data());
    let gid = group.gid.as_raw();
    assert_eq!(mode_and_group(&files[0]), (0o660, gid));
    for dir in [
        setup.data().join("mail"),
        setup.data().join("mail/example.org"),
        setup.maildir("alice"),
        setup.maildir("alice").join("new"),
    ] {
        assert_eq!(mode_and_group(&dir), (0o2770, gid), "{dir:?}");
    }
    for file in std::fs::read_dir(setup.data().join("spool/free")).expect("free") {
        let file = file.expect("entry").path();
        assert_eq!(mode_and_group(&file).0, 0o600, "{file:?}");
    }
    assert_eq!(mode_and_group(&setup.data().join("spool/queue")).0, 0o700);
}

#[test]
fn eicar_nested_nine_messages_deep_is_refused_not_delivered() {
    use base64::Engine as _;
    let setup = Setup::new("");
    let virus = setup.plugin("virus_signatures.wasm");
    let config = std::fs::read_to_string(setup.config()).expect("config")
        + &format!("[[plugin]]\nhook = \"virus\"\npath = \"{}\"\n", virus.display());
    std::fs::write(setup.config(), config).expect("config");
    let daemon = setup.start();
    let eicar = concat!(
        r"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-",
        r"ANTIVIRUS-TEST-FILE!$H+H*"
    );
    let mut message = format!(
        "Subject: payload\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n{}\r\n",
        base64::engine::general_purpose::STANDARD.encode(eicar)
    );
    for level in 0..9 {
        message = format!(
            "Subject: fwd {level}\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"n{level}\"\r\n\r\n--n{level}\r\nContent-Type: message/rfc822\r\n\r\n{message}\r\n--n{level}--\r\n"
        );
    }
    let mut c = Raw::connect(daemon.addr("mx"));
    assert!(c.cmd("EHLO nest.example").starts_with("250"));
    assert!(c.cmd("MAIL FROM:<nest@far.example>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<alice@example.org>").starts_with("250"));
    assert!(c.cmd("DATA").starts_with("354"));
    let reply = c.cmd(&format!("{}.", message.replace("\r\n.", "\r\n..")));
    assert!(
        reply.starts_with("554 5.7.1") && reply.contains("Unscannable.NestedTooDeep"),
        "{reply}"
    );
    assert!(new_files(&setup.maildir("alice")).is_empty());
}

#[test]
fn an_oversized_bdat_is_refused_up_front_and_a_disguised_ehlo_never_reaches_received() {
    let setup = Setup::new("[limits]\nmessage-size = \"1KiB\"\n");
    let daemon = setup.start();
    let mut c = Raw::connect(daemon.addr("mx"));
    // A right-to-left override would reorder what an operator reads in Received:.
    assert!(c.cmd("EHLO evil\u{202e}elpmaxe.com").starts_with("501"));
    assert!(c.cmd("EHLO honest.example").starts_with("250"));
    assert!(c.cmd("MAIL FROM:<big@far.example>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<alice@example.org>").starts_with("250"));
    // 2,000 octets announced past a 1 KiB limit: refused at once, the octets (which look
    // like a second transaction) read and dropped.
    let smuggled = "MAIL FROM:<x@far.example>\r\nRCPT TO:<alice@example.org>\r\nDATA\r\n";
    let chunk = format!("{smuggled}{}", "z".repeat(2000 - smuggled.len()));
    c.send(format!("BDAT {} LAST\r\n{chunk}", chunk.len()).as_bytes());
    assert!(c.reply().starts_with("552 5.3.4"));
    assert!(c.cmd("NOOP").starts_with("250"));
    assert!(c.cmd("QUIT").starts_with("221"));
    assert!(new_files(&setup.maildir("alice")).is_empty());
}

/// Opens an MX transaction for alice and starts its DATA.
fn open_data(daemon: &Daemon) -> Raw {
    let mut c = Raw::connect(daemon.addr("mx"));
    assert!(c.cmd("EHLO client.example").starts_with("250"));
    assert!(c.cmd("MAIL FROM:<big@far.example>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<alice@example.org>").starts_with("250"));
    c
}

/// `lines` lines of 78 letters and CRLF: 80 octets each.
fn filler(lines: usize) -> Vec<u8> {
    let line = format!("{}\r\n", "abcdefghijklmnopqrstuvwxyz".repeat(3));
    line.repeat(lines).into_bytes()
}

#[test]
fn a_hundred_unfinished_large_messages_cost_disk_not_memory() {
    let setup = Setup::new("");
    let daemon = setup.start();
    // 20 MiB each, in 256 KiB writes, never ended by the dot.
    let chunk = filler(256 * 1024 / 80);
    let writes = 20 * 1024 * 1024 / chunk.len();
    let clients: Vec<_> = (0..100)
        .map(|_| {
            let mut c = open_data(&daemon);
            std::thread::spawn({
                let chunk = chunk.clone();
                move || {
                    assert!(c.cmd("DATA").starts_with("354"));
                    for _ in 0..writes {
                        c.send(&chunk);
                    }
                    c
                }
            })
        })
        .collect();
    let clients: Vec<Raw> = clients.into_iter().map(|t| t.join().expect("client")).collect();
    // Everything sent is in the spool's files, none of it finished.
    let tmp = setup.data().join("spool/tmp");
    let deadline = Instant::now() + PATIENCE;
    let expected = (writes * chunk.len()) as u64;
    loop {
        let sizes: Vec<u64> = std::fs::read_dir(&tmp)
            .expect("spool/tmp")
            .map(|f| f.expect("entry").metadata().expect("metadata").len())
            .collect();
        // Each file: the first line's room, then the content (less what is buffered).
        let written = sizes.iter().filter(|s| **s + 256 * 1024 >= expected).count();
        if sizes.len() == 100 && written == 100 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} files, {written} nearly whole",
            sizes.len()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let peak = peak_rss_mib(&daemon);
    eprintln!("peak RSS {peak} MiB for 100 sessions of 20 MiB");
    assert!(peak < 300, "peak RSS {peak} MiB for 100 sessions of 20 MiB");
    // Gone with their sessions, leaving nothing behind.
    drop(clients);
    let deadline = Instant::now() + PATIENCE;
    while std::fs::read_dir(&tmp).expect("spool/tmp").count() > 0 {
        assert!(Instant::now() < deadline, "abandoned contents left in spool/tmp");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(std::fs::read_dir(setup.maildir("alice").join("new")).map_or(true, |d| d.count() == 0));
}

#[test]
fn large_messages_arrive_whole_and_data_waits_when_the_memory_for_contents_is_spent() {
    let setup = Setup::new("[limits]\nmemory-per-message = \"64KiB\"\nbuffered-content = \"128KiB\"\n");
    let mut daemon = setup.start();
    // Two contents in transit take all the memory there is: a third DATA waits.
    let mut first = open_data(&daemon);
    let mut second = open_data(&daemon);
    let mut third = open_data(&daemon);
    assert!(first.cmd("DATA").starts_with("354"));
    assert!(second.cmd("DATA").starts_with("354"));
    let refused = third.cmd("DATA");
    assert!(refused.starts_with("452 4.3.1"), "{refused}");
    let mut bdat = open_data(&daemon);
    bdat.send(b"BDAT 10 LAST\r\nQUIT\r\nNOOP");
    let refused = bdat.reply();
    assert!(refused.starts_with("452 4.3.1"), "{refused}");
    assert!(bdat.cmd("NOOP").starts_with("250"), "the chunk was read, not run");

    // The first ends: 3 MiB, past its 64 KiB of memory, in the spool file as it came.
    let large = filler(3 * 1024 * 1024 / 80);
    first.send(b"Subject: large\r\n\r\n");
    first.send(&large);
    let ended = first.cmd(".");
    assert!(ended.starts_with("250"), "{ended}");
    // Its memory given back, the third may go on (with BDAT, over two chunks).
    let mut sent = b"Subject: chunked\r\n\r\n".to_vec();
    sent.extend_from_slice(&large);
    let half = sent.len() / 2;
    third.send(format!("BDAT {half}\r\n").as_bytes());
    third.send(&sent[..half]);
    assert!(third.reply().starts_with("250"));
    third.send(format!("BDAT {} LAST\r\n", sent.len() - half).as_bytes());
    third.send(&sent[half..]);
    let ended = third.reply();
    assert!(ended.starts_with("250"), "{ended}");
    drop(second);

    let copies = wait_for_mail(&setup.maildir("alice"), 2);
    let mut bodies: Vec<Vec<u8>> = copies
        .iter()
        .map(|f| {
            let text = std::fs::read(f).expect("copy");
            let at = text
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .expect("header end");
            text[at + 4..].to_vec()
        })
        .collect();
    bodies.sort();
    assert_eq!(bodies, vec![large.clone(), large], "both arrived octet for octet");
    wait_spool_empty(&setup.data());
    daemon.wait_log("delivered");
    assert_eq!(
        std::fs::read_dir(setup.data().join("spool/tmp"))
            .expect("tmp")
            .count(),
        0
    );
}
