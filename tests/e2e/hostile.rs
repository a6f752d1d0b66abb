//! Hostile input sent raw over real sockets: SMTP smuggling and STARTTLS command injection,
//! and a message that would drive the terminal of the operator who looks at it.

use std::io::{BufRead, BufReader, Write};

use crate::harness::*;

/// Ends of DATA that some servers accept and that must never end a message here: with a
/// bare CR the session is refused and closed; with a bare LF (normalised, the default) the
/// "end" and everything smuggled after it are content of the one message.
const SMUGGLED_ENDS_CR: &[&[u8]] = &[b"\r.\r", b"\r.\r\n", b"\r\n.\r"];
const SMUGGLED_ENDS_LF: &[&[u8]] = &[b"\n.\n", b"\n.\r\n", b"\r\n.\n"];
const SMUGGLED: &[u8] =
    b"MAIL FROM:<ceo@example.org>\r\nRCPT TO:<alice@example.org>\r\nDATA\r\nSubject: smuggled\r\n\r\nevil\r\n.\r\n";

#[test]
fn smuggling_variants_never_make_a_second_message() {
    let setup = Setup::new("");
    let daemon = setup.start();
    for end in SMUGGLED_ENDS_CR {
        let mut c = open_data(&daemon);
        let mut payload = b"Subject: cover\r\n\r\nhello".to_vec();
        payload.extend_from_slice(end);
        payload.extend_from_slice(SMUGGLED);
        c.send(&payload);
        let reply = c.reply();
        assert!(reply.starts_with("554 5.5.2"), "{end:?}: {reply}");
        let rest = c.until_closed().expect("the server closes the session");
        assert!(rest.is_empty(), "{end:?}: nothing follows the refusal: {rest}");
    }
    // A bare LF in a command line closes the session too.
    let mut c = Raw::connect(daemon.addr("mx"));
    c.send(b"EHLO a\nMAIL FROM:<x@far.example>\r\n");
    assert!(c.reply().starts_with("554 5.5.2"));
    assert!(c.until_closed().is_some());

    // With a bare LF each attempt is exactly one message: the cover, the false end and the
    // smuggled commands all in its content, answered once.
    for (i, end) in SMUGGLED_ENDS_LF.iter().enumerate() {
        let mut c = open_data(&daemon);
        let mut payload = format!("Subject: cover {i}\r\n\r\nhello").into_bytes();
        payload.extend_from_slice(end);
        payload.extend_from_slice(SMUGGLED);
        c.send(&payload);
        let reply = c.reply();
        assert!(reply.starts_with("250 2.0.0"), "{end:?}: {reply}");
        assert!(c.cmd("QUIT").starts_with("221"), "{end:?}: one reply only");
    }

    // One honest message; then one file per attempt: never a smuggled message of its own.
    let mut c = Raw::connect(daemon.addr("mx"));
    assert!(c.cmd("EHLO honest.example").starts_with("250"));
    assert!(c.cmd("MAIL FROM:<friend@far.example>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<alice@example.org>").starts_with("250"));
    assert!(c.cmd("DATA").starts_with("354"));
    assert!(c.cmd("Subject: honest\r\n\r\nhi\r\n.").starts_with("250 2.0.0"));
    wait_spool_empty(&setup.data());
    let files = wait_for_mail(&setup.maildir("alice"), 4);
    assert_eq!(files.len(), 4);
    let texts: Vec<String> = files
        .iter()
        .map(|f| std::fs::read_to_string(f).expect("read"))
        .collect();
    assert_eq!(texts.iter().filter(|t| t.contains("Subject: honest")).count(), 1);
    for (i, _) in SMUGGLED_ENDS_LF.iter().enumerate() {
        let cover: Vec<&String> = texts
            .iter()
            .filter(|t| t.contains(&format!("Subject: cover {i}\r\n")))
            .collect();
        assert_eq!(cover.len(), 1, "attempt {i}");
        // The smuggled transaction is content of the cover message, CRLF only.
        assert!(
            cover[0].contains("hello\r\n.\r\nMAIL FROM:<ceo@example.org>\r\n"),
            "{}",
            cover[0]
        );
        assert!(!cover[0].replace("\r\n", "").contains('\n'));
    }
    // No delivered message has the smuggled one's headers as its own.
    for t in &texts {
        let headers = t.split("\r\n\r\n").next().unwrap_or_default();
        assert!(!headers.contains("Subject: smuggled"), "{t}");
    }
}

#[test]
fn commands_pipelined_after_starttls_are_discarded() {
    let setup = Setup::new("");
    let daemon = setup.start();
    for kind in ["mx", "submission"] {
        let mut c = Raw::connect(daemon.addr(kind));
        assert!(c.cmd("EHLO client.example").starts_with("250"));
        // The injection rides in the same packet as STARTTLS (CVE-2011-0411).
        c.send(b"STARTTLS\r\nEHLO injected.example\r\nMAIL FROM:<alice@example.org>\r\n");
        assert!(c.reply().starts_with("220 2.0.0"));
        let connection = rustls::ClientConnection::new(
            TlsRaw::config(&setup.cert_pem),
            "localhost".try_into().expect("name"),
        )
        .expect("client");
        let tcp = c.stream.try_clone().expect("clone");
        let mut tls = rustls::StreamOwned::new(connection, tcp);
        // Inside TLS: had the injected commands run, a transaction would be open and this
        // RCPT would be answered 250 (mx) rather than refused.
        tls.write_all(b"RCPT TO:<alice@example.org>\r\n").expect("write");
        let mut reader = BufReader::new(tls);
        let mut line = String::new();
        reader.read_line(&mut line).expect("read");
        let expected = if kind == "mx" { "503 5.5.1" } else { "530 5.7.0" };
        assert!(line.starts_with(expected), "{kind}: {line}");
        let mut tls = reader.into_inner();
        tls.write_all(b"EHLO client.example\r\n").expect("write");
        let mut reader = BufReader::new(tls);
        let mut ehlo = String::new();
        loop {
            let mut l = String::new();
            reader.read_line(&mut l).expect("read");
            ehlo.push_str(&l);
            if l.as_bytes().get(3) != Some(&b'-') {
                break;
            }
        }
        assert!(!ehlo.contains("STARTTLS"), "not offered again inside TLS: {ehlo}");
        assert_eq!(ehlo.contains("AUTH PLAIN LOGIN"), kind == "submission", "{ehlo}");
    }
    let mut d = daemon;
    d.wait_log("discarded cleartext pipelined after STARTTLS");
}

#[test]
fn a_queued_message_shown_on_a_terminal_cannot_drive_it() {
    let setup = Setup::new("");
    // alice's Maildir blocked by a file: the message waits in the queue.
    std::fs::create_dir_all(setup.data().join("mail").join(DOMAIN)).expect("mkdir");
    std::fs::write(setup.maildir("alice"), b"in the way").expect("block");
    let mut daemon = setup.start();
    let mut c = open_data(&daemon);
    // A title change and a colour: what a terminal would obey; and a forged result,
    // which the host removes.
    let hostile = "Subject: look\r\n\r\n\x1b]0;owned\x07\x1b[31mred\r\n";
    let forged = "Authentication-Results: example.org; dkim=pass\r\n";
    assert!(c.cmd(&format!("{forged}{hostile}.")).starts_with("250"));
    daemon.wait_log("delivery failed");
    let id = queue(&setup, &["list"])
        .split_whitespace()
        .next()
        .expect("an id")
        .to_string();
    // Piped: the message exactly as it will be delivered.
    let piped = queue(&setup, &["show", &id]);
    let (_, message) = piped.split_once("\n\n").expect("a blank line after the entry");
    assert!(
        message.starts_with("Received: from attacker.example"),
        "{message:?}"
    );
    assert_eq!(message.matches("Received: ").count(), 1, "{message:?}");
    assert!(!message.contains("dkim=pass"), "{message:?}");
    assert!(message.ends_with(hostile), "{message:?}");
    // On a terminal (a pseudo-terminal here): escapes, no control character.
    let on_terminal = python(
        r#"
import os, pty, sys
pid, fd = pty.fork()
if pid == 0:
    os.execv(sys.argv[1], sys.argv[1:])
out = b""
while True:
    try:
        chunk = os.read(fd, 65536)
    except OSError:
        break
    if not chunk:
        break
    out += chunk
os.waitpid(pid, 0)
sys.stdout.write(out.decode("utf-8", "replace").replace("\r\n", "\n"))
"#,
        &[
            binary(),
            "queue",
            "show",
            &id,
            "--config",
            &setup.config().to_string_lossy(),
        ],
    );
    assert!(
        on_terminal.contains("\\x1b]0;owned\\x07\\x1b[31mred\n"),
        "{on_terminal:?}"
    );
    assert!(
        !on_terminal.chars().any(|c| c.is_control() && c != '\n'),
        "{on_terminal:?}"
    );
}
