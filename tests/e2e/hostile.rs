//! Hostile input sent raw over real sockets: SMTP smuggling and STARTTLS command injection.

use std::io::{BufRead, BufReader, Write};
use std::sync::Arc;

use crate::harness::*;

/// Ends of DATA that some servers accept and that must never end a message here.
const SMUGGLED_ENDS: &[&[u8]] = &[b"\n.\n", b"\n.\r\n", b"\r\n.\n", b"\r.\r", b"\r.\r\n", b"\r\n.\r"];

#[test]
fn smuggling_variants_are_refused_and_nothing_extra_is_delivered() {
    let setup = Setup::new("");
    let daemon = setup.start();
    for end in SMUGGLED_ENDS {
        let mut c = Raw::connect(daemon.addr("mx"));
        assert!(c.cmd("EHLO attacker.example").starts_with("250"));
        assert!(c.cmd("MAIL FROM:<attacker@far.example>").starts_with("250"));
        assert!(c.cmd("RCPT TO:<alice@example.org>").starts_with("250"));
        assert!(c.cmd("DATA").starts_with("354"));
        let mut payload = b"Subject: cover\r\n\r\nhello".to_vec();
        payload.extend_from_slice(end);
        payload.extend_from_slice(
            b"MAIL FROM:<ceo@example.org>\r\nRCPT TO:<alice@example.org>\r\nDATA\r\nSubject: smuggled\r\n\r\nevil\r\n.\r\n",
        );
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

    // One honest message, then exactly one file: the cover and smuggled messages never appear.
    let mut c = Raw::connect(daemon.addr("mx"));
    assert!(c.cmd("EHLO honest.example").starts_with("250"));
    assert!(c.cmd("MAIL FROM:<friend@far.example>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<alice@example.org>").starts_with("250"));
    assert!(c.cmd("DATA").starts_with("354"));
    assert!(c.cmd("Subject: honest\r\n\r\nhi\r\n.").starts_with("250 2.0.0"));
    wait_spool_empty(&setup.data());
    let files = wait_for_mail(&setup.maildir("alice"), 1);
    assert_eq!(files.len(), 1);
    let text = std::fs::read_to_string(&files[0]).expect("read");
    assert!(text.contains("Subject: honest") && !text.contains("smuggled") && !text.contains("cover"));
}

fn tls_client(setup: &Setup) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    let der = rustls::pki_types::CertificateDer::from_pem_slice(setup.cert_pem.as_bytes()).expect("pem");
    roots.add(der).expect("root");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

use rustls::pki_types::pem::PemObject;

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
        let connection =
            rustls::ClientConnection::new(tls_client(&setup), "localhost".try_into().expect("name"))
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
