//! The happy path on all three listener kinds with a real client library over real TLS:
//! the Maildir file holds exactly the bytes sent, after our Received: header.

use lettre::address::Envelope;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{SmtpTransport, Transport};

use crate::harness::*;

fn tls_parameters(setup: &Setup) -> TlsParameters {
    TlsParameters::builder("localhost".into())
        .add_root_certificate(Certificate::from_pem(setup.cert_pem.as_bytes()).expect("cert"))
        .build_rustls()
        .expect("tls parameters")
}

fn envelope(from: &str, to: &[&str]) -> Envelope {
    Envelope::new(
        Some(from.parse().expect("from")),
        to.iter().map(|t| t.parse().expect("to")).collect(),
    )
    .expect("envelope")
}

fn message(subject: &str) -> Vec<u8> {
    format!(
        "From: Alice <alice@example.org>\r\nTo: bob@far.example\r\nSubject: {subject}\r\nMessage-ID: <{subject}@example.org>\r\n\r\nHello,\r\n.leading dot line\r\n\r\nBye"
    )
    .into_bytes()
}

/// The delivered file is our Received: header followed by exactly the sent bytes.
///
/// lettre ends DATA with `CRLF.CRLF` after the bytes it is given, so the message it
/// transmits is `sent` plus the CRLF that ends its last line; that is what must be stored.
fn assert_delivered_exactly(file: &std::path::Path, sent: &[u8], protocol: &str) {
    let sent = [sent, b"\r\n"].concat();
    let sent = sent.as_slice();
    let copy = std::fs::read(file).expect("read delivered message");
    let copy = String::from_utf8_lossy(&copy);
    let stored = after_delivery_headers(&copy).as_bytes();
    assert!(
        stored.starts_with(b"Received: from "),
        "{}",
        String::from_utf8_lossy(stored)
    );
    let text = String::from_utf8_lossy(stored);
    assert!(text.contains(&format!(" with {protocol} id ")), "{text}");
    assert!(stored.ends_with(sent), "delivered bytes differ:\n{text}");
    let header_end = stored.len() - sent.len();
    let header = &text[..header_end];
    assert_eq!(
        header.matches("\r\n").count(),
        header.lines().count(),
        "CRLF only"
    );
}

#[test]
fn submission_with_starttls_and_auth_delivers_exact_bytes() {
    let setup = Setup::new("");
    let daemon = setup.start();
    let addr = daemon.addr("submission");
    let transport = SmtpTransport::builder_dangerous(addr.ip().to_string())
        .port(addr.port())
        .tls(Tls::Required(tls_parameters(&setup)))
        .credentials(Credentials::new("alice@example.org".into(), PASSWORD.into()))
        .authentication(vec![Mechanism::Plain])
        .build();
    let sent = message("submission");
    let response = transport
        .send_raw(&envelope("alice@example.org", &["alice@example.org"]), &sent)
        .expect("accepted");
    assert!(response.is_positive());
    let files = wait_for_mail(&setup.maildir("alice"), 1);
    assert_eq!(files.len(), 1);
    assert_delivered_exactly(&files[0], &sent, "ESMTPSA");
}

#[test]
fn submissions_with_implicit_tls_and_login_delivers_exact_bytes() {
    // far.example's next hop refuses connections: its recipient stays queued.
    let setup =
        Setup::new("[delivery]\nretry = [\"1h\"]\n[delivery.routes]\n\"far.example\" = \"127.0.0.1:9\"\n");
    let daemon = setup.start();
    let addr = daemon.addr("submissions");
    let transport = SmtpTransport::builder_dangerous(addr.ip().to_string())
        .port(addr.port())
        .tls(Tls::Wrapper(tls_parameters(&setup)))
        .credentials(Credentials::new("alice".into(), PASSWORD.into()))
        .authentication(vec![Mechanism::Login])
        .build();
    let sent = message("submissions");
    transport
        .send_raw(
            &envelope("alice@example.org", &["alice@example.org", "bob@far.example"]),
            &sent,
        )
        .expect("accepted");
    let files = wait_for_mail(&setup.maildir("alice"), 1);
    assert_delivered_exactly(&files[0], &sent, "ESMTPSA");
    // The remote recipient stays queued for a later attempt, durable in the spool.
    let mut d = daemon;
    d.wait_log("message stays queued for another attempt");
    assert_eq!(queued_messages(&setup.data()), 1);

    // The operator sees it, and can remove it.
    let list = std::process::Command::new(binary())
        .args(["queue", "list", "--config"])
        .arg(setup.config())
        .output()
        .expect("queue list");
    let text = String::from_utf8_lossy(&list.stdout);
    assert!(
        text.contains("-> bob@far.example") && text.contains("1 message(s) queued"),
        "{text}"
    );
    let id = text.split_whitespace().next().expect("an id").to_string();
    let removed = std::process::Command::new(binary())
        .args(["queue", "remove", &id, "--config"])
        .arg(setup.config())
        .output()
        .expect("queue remove");
    assert!(
        removed.status.success(),
        "{}",
        String::from_utf8_lossy(&removed.stderr)
    );
    assert_eq!(
        std::fs::read_dir(setup.data().join("spool/queue"))
            .expect("spool")
            .count(),
        0,
        "the message and its state are gone"
    );
    let again = std::process::Command::new(binary())
        .args(["queue", "remove", &id, "--config"])
        .arg(setup.config())
        .output()
        .expect("queue remove");
    assert!(!again.status.success());
}

#[test]
fn mx_plain_and_with_starttls_delivers_exact_bytes() {
    let setup = Setup::new("");
    let daemon = setup.start();
    let addr = daemon.addr("mx");
    let plain = SmtpTransport::builder_dangerous(addr.ip().to_string())
        .port(addr.port())
        .tls(Tls::None)
        .build();
    let sent_plain = message("mx-plain");
    plain
        .send_raw(
            &envelope("someone@far.example", &["alice@example.org"]),
            &sent_plain,
        )
        .expect("accepted");
    let tls = SmtpTransport::builder_dangerous(addr.ip().to_string())
        .port(addr.port())
        .tls(Tls::Required(tls_parameters(&setup)))
        .build();
    let sent_tls = message("mx-tls");
    tls.send_raw(
        &envelope("someone@far.example", &["alice@example.org"]),
        &sent_tls,
    )
    .expect("accepted");
    let files = wait_for_mail(&setup.maildir("alice"), 2);
    assert_eq!(files.len(), 2);
    let (mut plain_file, mut tls_file) = (None, None);
    for f in &files {
        let text = std::fs::read_to_string(f).expect("read");
        if text.contains("Subject: mx-plain") {
            plain_file = Some(f.clone());
        } else {
            tls_file = Some(f.clone());
        }
    }
    assert_delivered_exactly(&plain_file.expect("plain message"), &sent_plain, "ESMTP");
    assert_delivered_exactly(&tls_file.expect("tls message"), &sent_tls, "ESMTPS");
}

#[test]
fn mx_refuses_relay_and_unknown_users_and_auth() {
    let setup = Setup::new("");
    let mut daemon = setup.start();
    let mut c = Raw::connect(daemon.addr("mx"));
    let ehlo = c.cmd("EHLO client.example");
    assert!(ehlo.contains("STARTTLS") && !ehlo.contains("AUTH"), "{ehlo}");
    assert!(c.cmd("AUTH PLAIN AGFsaWNlAHNlY3JldA==").starts_with("502 5.5.1"));
    assert!(c.cmd("MAIL FROM:<x@far.example>").starts_with("250"));
    assert!(
        c.cmd("RCPT TO:<victim@elsewhere.example>")
            .starts_with("550 5.7.1")
    );
    assert!(
        c.cmd("RCPT TO:<victim%elsewhere.example@example.org>")
            .starts_with("550 5.7.1")
    );
    assert!(c.cmd("RCPT TO:<nobody@example.org>").starts_with("550 5.1.1"));
    assert!(c.cmd("RCPT TO:<alice@example.org>").starts_with("250"));
    assert!(c.cmd("QUIT").starts_with("221"));
    // One summary line per session, in the style of Postfix.
    daemon.wait_log("disconnect from [127.0.0.1] ehlo=1 auth=1 mail=1 rcpt=4 quit=1 commands=8");
}

#[test]
fn submission_refuses_cleartext_and_wrong_sender() {
    let setup = Setup::new("");
    let daemon = setup.start();
    let mut c = Raw::connect(daemon.addr("submission"));
    let ehlo = c.cmd("EHLO client.example");
    assert!(ehlo.contains("STARTTLS") && !ehlo.contains("AUTH"), "{ehlo}");
    assert!(c.cmd("AUTH PLAIN AGFsaWNlAHNlY3JldA==").starts_with("530 5.7.0"));
    assert!(c.cmd("MAIL FROM:<alice@example.org>").starts_with("530 5.7.0"));

    setup.add_user("bob", "bobpw");
    // Accounts are read at start; a restart (or SIGHUP) picks bob up.
    drop(daemon);
    let daemon = setup.start();
    let addr = daemon.addr("submission");
    let transport = SmtpTransport::builder_dangerous(addr.ip().to_string())
        .port(addr.port())
        .tls(Tls::Required(tls_parameters(&setup)))
        .credentials(Credentials::new("bob@example.org".into(), "bobpw".into()))
        .authentication(vec![Mechanism::Plain])
        .build();
    let err = transport
        .send_raw(
            &envelope("alice@example.org", &["alice@example.org"]),
            &message("forged"),
        )
        .expect_err("bob may not send as alice");
    assert!(err.to_string().contains("553"), "{err}");
    let wrong = SmtpTransport::builder_dangerous(addr.ip().to_string())
        .port(addr.port())
        .tls(Tls::Required(tls_parameters(&setup)))
        .credentials(Credentials::new("bob@example.org".into(), "nope".into()))
        .authentication(vec![Mechanism::Plain])
        .build();
    let err = wrong
        .send_raw(
            &envelope("bob@example.org", &["alice@example.org"]),
            &message("x"),
        )
        .expect_err("wrong password");
    assert!(err.to_string().contains("535"), "{err}");
}
