//! Outbound delivery: mail submitted for other domains leaves through routes, a smarthost
//! or MX records, retries on 4xx, bounces with a DSN on 5xx or expiry, and survives kill -9.

use std::time::Duration;

use crate::harness::*;
use crate::sink::{Script, Sink};
use portcullis_testkit::dns::{Answer, Dns};

fn message(subject: &str) -> String {
    format!(
        "From: Alice <alice@example.org>\r\nTo: bob@far.example\r\nSubject: {subject}\r\nMessage-ID: <{subject}@example.org>\r\n\r\nHello over there.\r\n.a line with a leading dot\r\nBye"
    )
}

/// What the next hop must receive: our Received: header, then exactly the submitted bytes.
fn assert_exact(data: &[u8], subject: &str) {
    let text = String::from_utf8_lossy(data);
    assert!(data.starts_with(b"Received: from "), "{text}");
    let sent = format!("{}\r\n", message(subject));
    assert!(text.ends_with(&sent), "bytes differ:\n{text}");
}

fn submit(setup: &Setup, daemon: &Daemon, to: &[&str], subject: &str) {
    let mut c = TlsRaw::connect(daemon.addr("submission"), &setup.cert_pem);
    let reply = c.submit("alice@example.org", "<alice@example.org>", to, &message(subject));
    assert!(reply.starts_with("250"), "{reply}");
}

fn read(path: &std::path::Path) -> String {
    String::from_utf8_lossy(&std::fs::read(path).expect("read")).into_owned()
}

#[test]
fn submission_reaches_a_second_portcullis_over_starttls_with_exact_bytes() {
    let far = Setup::for_domain("far.example", "");
    far.add_user("bob", PASSWORD);
    let far_daemon = far.start();
    let setup = Setup::new(&format!(
        "[delivery.routes]\n\"far.example\" = {{ host = \"{}\", tls = \"required\" }}\n",
        far_daemon.addr("mx")
    ));
    let mut daemon = setup.start();
    submit(
        &setup,
        &daemon,
        &["<bob@far.example>", "<alice@example.org>"],
        "leaving",
    );

    let files = wait_for_mail(&far.maildir("bob"), 1);
    let stored = std::fs::read(&files[0]).expect("read");
    let text = String::from_utf8_lossy(&stored);
    // The next hop's own delivery and trace headers say who it was for and that the hop
    // was encrypted, then ours follows.
    assert!(
        text.starts_with("Return-Path: <alice@example.org>\r\nDelivered-To: bob@far.example\r\nReceived: from mx.example.org"),
        "{text}"
    );
    assert!(text.contains("with ESMTPS id"), "{text}");
    assert!(text.contains("with ESMTPSA id"), "{text}");
    assert!(text.ends_with(&format!("{}\r\n", message("leaving"))), "{text}");
    // The local recipient got its copy directly.
    assert_eq!(wait_for_mail(&setup.maildir("alice"), 1).len(), 1);
    daemon.wait_log("delivered to the remote host");
    wait_spool_empty(&setup.data());
}

#[test]
fn a_4xx_then_2xx_destination_gets_the_message_on_retry_with_dsn_parameters() {
    let mut script = Script::default();
    script.data_replies.push_back("451 4.3.0 try again later".into());
    let sink = Sink::start(script);
    let setup = Setup::new(&format!(
        "[delivery]\nretry = [\"1s\"]\n[delivery.routes]\n\"far.example\" = \"{}\"\n",
        sink.addr
    ));
    let mut daemon = setup.start();
    let mut c = TlsRaw::connect(daemon.addr("submission"), &setup.cert_pem);
    c.login("alice@example.org");
    let reply = c.send_mail(
        "<alice@example.org> RET=HDRS ENVID=env+2B1",
        &["<bob@far.example> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;bob@far.example"],
        &message("retry"),
    );
    assert!(reply.starts_with("250"), "{reply}");

    daemon.wait_log("delivery deferred");
    let got = sink.wait(1);
    assert_eq!(got.len(), 1, "delivered once, on the second attempt");
    let t = &got[0];
    assert!(t.tls, "opportunistic STARTTLS was used");
    assert_eq!(t.helo, "mx.example.org");
    assert_exact(&t.data, "retry");
    // The DSN parameters travel on to a peer that announced DSN.
    assert!(
        t.mail_from.starts_with("<alice@example.org> SIZE="),
        "{}",
        t.mail_from
    );
    assert!(t.mail_from.contains(" RET=HDRS ENVID=env+2B1"), "{}", t.mail_from);
    assert_eq!(
        t.rcpts,
        ["<bob@far.example> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;bob@far.example"]
    );
}

#[test]
fn a_5xx_recipient_bounces_to_the_sender_while_the_other_is_delivered() {
    let sink = Sink::start(Script {
        rcpt: |addr| (addr == "bob@far.example").then(|| "550 5.1.1 no such user here".to_string()),
        ..Script::default()
    });
    let setup = Setup::new(&format!(
        "[delivery.routes]\n\"far.example\" = \"{}\"\n",
        sink.addr
    ));
    let _daemon = setup.start();
    submit(
        &setup,
        &_daemon,
        &["<bob@far.example>", "<carol@far.example>"],
        "bounce",
    );

    let got = sink.wait(1);
    assert_eq!(got[0].rcpts.len(), 1);
    assert!(got[0].rcpts[0].starts_with("<carol@far.example>"));
    let dsn = wait_for_mail(&setup.maildir("alice"), 1);
    let text = read(&dsn[0]);
    for needle in [
        "From: Mail Delivery System <MAILER-DAEMON@mx.example.org>",
        "Content-Type: multipart/report; report-type=delivery-status;",
        "Final-Recipient: rfc822; bob@far.example",
        "\r\nAction: failed",
        "Status: 5.1.1",
        "Diagnostic-Code: smtp; 550 5.1.1 no such user here",
        "Content-Type: message/rfc822",
        "Subject: bounce",
        "Message-ID: <bounce@example.org>",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in the DSN:\n{text}");
    }
    assert!(
        !text.contains("carol@far.example\r\nAction"),
        "carol was delivered, not bounced"
    );
    wait_spool_empty(&setup.data());
}

#[test]
fn an_unreachable_destination_sends_a_delay_notice_then_expires_into_a_dsn() {
    // Nothing listens on port 9 of loopback: every attempt is refused.
    let setup = Setup::new(
        "[delivery]\nretry = [\"1s\"]\nexpire = \"4s\"\ndelay-notice = \"1s\"\nconnect-timeout = \"2s\"\n[delivery.routes]\n\"far.example\" = \"127.0.0.1:9\"\n",
    );
    let mut daemon = setup.start();
    submit(&setup, &daemon, &["<bob@far.example>"], "expiry");
    daemon.wait_log("host failed");
    let mut reports: Vec<String> = wait_for_mail(&setup.maildir("alice"), 2)
        .iter()
        .map(|f| read(f))
        .collect();
    reports.sort_by_key(|t| !t.contains("\r\nAction: delayed"));
    let delay = &reports[0];
    assert!(
        delay.contains("Subject: Delayed Mail (still being retried)"),
        "{delay}"
    );
    assert!(
        delay.contains("\r\nAction: delayed") && delay.contains("Will-Retry-Until:"),
        "{delay}"
    );
    assert!(
        delay.contains("Connection refused") || delay.contains("connection refused"),
        "{delay}"
    );
    let text = &reports[1];
    assert!(text.contains("\r\nAction: failed"), "{text}");
    assert!(text.contains("Status: 4.4.7"), "{text}");
    assert!(text.contains("delivery time expired"), "{text}");
    assert!(text.contains("Subject: expiry"), "{text}");
    daemon.wait_log("delivery time expired");
    wait_spool_empty(&setup.data());
}

#[test]
fn mx_records_from_a_loopback_dns_server_in_preference_order_with_null_mx_and_idn() {
    // Sink A on 127.0.0.1 and sink B on 127.0.0.3 share one port (mx-port); nothing listens
    // on 127.0.0.2 at that port.
    let a = Sink::start(Script::default());
    let port = a.addr.port();
    let b = Sink::start(Script {
        bind: format!("127.0.0.3:{port}").parse().expect("addr"),
        ..Script::default()
    });
    let dns = Dns::start(&[
        // Preference 10 is dead, 20 answers: the runner falls through in order.
        ("far.example", Answer::Mx(20, "mx2.far.example.")),
        ("far.example", Answer::Mx(10, "mx1.far.example.")),
        ("mx1.far.example", Answer::A("127.0.0.2".parse().expect("ip"))),
        ("mx2.far.example", Answer::A("127.0.0.1".parse().expect("ip"))),
        // The preferred exchanger answers and gets it; the other never sees it.
        ("pref.example", Answer::Mx(5, "mxb.pref.example.")),
        ("pref.example", Answer::Mx(50, "mxa.pref.example.")),
        ("mxb.pref.example", Answer::A("127.0.0.3".parse().expect("ip"))),
        ("mxa.pref.example", Answer::A("127.0.0.1".parse().expect("ip"))),
        // No MX: the domain's own address is the implicit exchanger.
        ("plain.example", Answer::A("127.0.0.1".parse().expect("ip"))),
        // RFC 7505 null MX.
        ("null.example", Answer::Mx(0, ".")),
        // An IDN domain is looked up by its A-label.
        ("xn--bcher-kva.example", Answer::Mx(10, "mx2.far.example.")),
    ]);
    // The older name of [dns] nameservers still works, with a warning naming the new one.
    let setup = Setup::new(&format!(
        "[delivery]\nresolver = \"{}\"\nmx-port = {port}\nconnect-timeout = \"2s\"\n",
        dns.addr
    ));
    let mut daemon = setup.start();
    daemon.wait_log("delivery.resolver is the older name of dns.nameservers");
    for (to, subject) in [
        ("<bob@far.example>", "far"),
        ("<bob@pref.example>", "pref"),
        ("<bob@plain.example>", "plain"),
        ("<bob@null.example>", "null"),
    ] {
        submit(&setup, &daemon, &[to], subject);
    }
    let mut c = TlsRaw::connect(daemon.addr("submission"), &setup.cert_pem);
    c.login("alice@example.org");
    let reply = c.send_mail(
        "<alice@example.org> SMTPUTF8",
        &["<bob@bücher.example>"],
        &message("idn"),
    );
    assert!(reply.starts_with("250"), "{reply}");

    let got_a = a.wait(3);
    let got_b = b.wait(1);
    let subjects = |ts: &[crate::sink::Transaction]| -> Vec<String> {
        let mut s: Vec<String> = ts
            .iter()
            .map(|t| {
                let text = String::from_utf8_lossy(&t.data).into_owned();
                text.split("Subject: ")
                    .nth(1)
                    .unwrap_or("")
                    .split("\r\n")
                    .next()
                    .unwrap_or("")
                    .to_string()
            })
            .collect();
        s.sort();
        s
    };
    assert_eq!(subjects(&got_a), ["far", "idn", "plain"]);
    assert_eq!(subjects(&got_b), ["pref"]);
    let idn = got_a
        .iter()
        .find(|t| String::from_utf8_lossy(&t.data).contains("Subject: idn"))
        .expect("idn");
    assert!(
        idn.rcpts[0].starts_with("<bob@bücher.example>"),
        "{:?}",
        idn.rcpts
    );
    assert!(idn.mail_from.contains("SMTPUTF8"), "{}", idn.mail_from);
    let queries = dns.queries.lock().expect("lock").clone();
    assert!(
        queries.contains(&"xn--bcher-kva.example MX".to_string()),
        "{queries:?}"
    );

    let dsn = wait_for_mail(&setup.maildir("alice"), 1);
    let text = read(&dsn[0]);
    assert!(
        text.contains("Final-Recipient: rfc822; bob@null.example"),
        "{text}"
    );
    assert!(text.contains("Status: 5.1.10"), "{text}");
    wait_spool_empty(&setup.data());
}

#[test]
fn relay_host_with_auth_over_required_tls() {
    let sink = Sink::start(Script {
        auth: Some(("relay-user".into(), "relay secret".into())),
        ..Script::default()
    });
    // The password file must exist before the config is loaded (even by `user add`).
    let secrets = tempfile::tempdir().expect("tempdir");
    let password = secrets.path().join("relay-password");
    std::fs::write(&password, "relay secret\n").expect("write");
    let setup = Setup::new(&format!(
        "[delivery]\nrelay-host = \"{}\"\nrelay-username = \"relay-user\"\nrelay-password-file = \"{}\"\n",
        sink.addr,
        password.display()
    ));
    let _daemon = setup.start();
    submit(&setup, &_daemon, &["<bob@anywhere.example>"], "smarthost");
    let got = sink.wait(1);
    assert!(got[0].tls);
    assert_eq!(got[0].auth.as_deref(), Some("relay-user"));
    assert_exact(&got[0].data, "smarthost");
    wait_spool_empty(&setup.data());
}

#[test]
fn queue_list_shows_the_deferral_and_flush_retries_at_once() {
    let mut script = Script::default();
    script.data_replies.push_back("452 4.2.2 mailbox full".into());
    let sink = Sink::start(script);
    let setup = Setup::new(&format!(
        "[delivery]\nretry = [\"1h\"]\n[delivery.routes]\n\"far.example\" = \"{}\"\n",
        sink.addr
    ));
    let mut daemon = setup.start();
    submit(&setup, &daemon, &["<bob@far.example>"], "flush");
    daemon.wait_log("message stays queued for another attempt");
    let listing = queue(&setup, &["list"]);
    assert!(listing.contains("1 attempt(s), next in"), "{listing}");
    assert!(
        listing.contains("bob@far.example: 452 4.2.2 mailbox full"),
        "{listing}"
    );
    assert_eq!(sink.count(), 0);
    // queue show: what the listing says of it, then the message as it will be sent.
    let id = listing.split_whitespace().next().expect("an id");
    let shown = queue(&setup, &["show", id]);
    let (entry, message_shown) = shown.split_once("\n\n").expect("a blank line after the entry");
    assert!(entry.starts_with(id), "{shown}");
    assert!(
        entry.contains("bob@far.example: 452 4.2.2 mailbox full"),
        "{shown}"
    );
    assert!(message_shown.starts_with("Received: from "), "{shown}");
    assert_eq!(message_shown.matches("Received: ").count(), 1, "{shown}");
    assert!(
        message_shown.ends_with(&format!("{}\r\n", message("flush"))),
        "{shown}"
    );
    let headers = queue(&setup, &["show", "--headers", id]);
    assert!(
        headers.ends_with("Message-ID: <flush@example.org>\r\n"),
        "{headers}"
    );
    // An id that is not queued is an error that says so.
    let other = format!(
        "{}{}",
        &id[..id.len() - 1],
        if id.ends_with('0') { '1' } else { '0' }
    );
    let out = std::process::Command::new(binary())
        .args(["queue", "show", &other, "--config"])
        .arg(setup.config())
        .output()
        .expect("run queue show");
    assert!(!out.status.success());
    let error = String::from_utf8_lossy(&out.stderr);
    assert!(
        error.contains(&format!("no message {other} in the queue")),
        "{error}"
    );

    let flushed = queue(&setup, &["flush"]);
    assert!(
        flushed.contains("1 queued message(s) will be tried now"),
        "{flushed}"
    );
    assert_exact(&sink.wait(1)[0].data, "flush");
    wait_spool_empty(&setup.data());
    assert!(queue(&setup, &["list"]).contains("0 message(s) queued"));
}

#[test]
fn kill9_during_delivery_loses_nothing() {
    // The sink holds its reply to the first message's content for long enough to kill the
    // daemon while it waits: that transaction never completes.
    let sink = Sink::start(Script {
        hold: Duration::from_secs(3),
        ..Script::default()
    });
    let extra = format!(
        "[delivery]\nretry = [\"1s\"]\n[delivery.routes]\n\"far.example\" = \"{}\"\n",
        sink.addr
    );
    let setup = Setup::new(&extra);
    let mut daemon = setup.start();
    for i in 0..3 {
        submit(
            &setup,
            &daemon,
            &["<bob@far.example>", "<alice@example.org>"],
            &format!("crash{i}"),
        );
    }
    // Wait until the sink holds content, then kill.
    let deadline = std::time::Instant::now() + PATIENCE;
    while *sink.data_seen.lock().expect("lock") == 0 {
        assert!(std::time::Instant::now() < deadline, "no delivery started");
        std::thread::sleep(Duration::from_millis(10));
    }
    daemon.kill9();
    let before = sink.count();
    let _daemon = setup.start();
    wait_spool_empty(&setup.data());

    // Every message reached the next hop; the one in flight during the kill exactly once
    // (the sink never confirmed it), and none more than twice (RFC 5321 6.1's window).
    let got = sink.wait(3);
    for i in 0..3 {
        let subject = format!("Subject: crash{i}\r\n");
        let copies = got
            .iter()
            .filter(|t| String::from_utf8_lossy(&t.data).contains(&subject))
            .count();
        assert!(
            (1..=2).contains(&copies),
            "crash{i}: {copies} copies (before restart: {before})"
        );
    }
    // Local copies: exactly once each.
    assert_eq!(wait_for_mail(&setup.maildir("alice"), 3).len(), 3);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(new_files(&setup.maildir("alice")).len(), 3);
}

#[test]
fn mail_whose_mx_is_this_server_itself_bounces_as_a_loop_and_is_never_sent_to_ourselves() {
    // The MX listener on a port chosen now, and DNS sending loop.example there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let dns = Dns::start(&[
        ("loop.example", Answer::Mx(10, "mx.loop.example.")),
        ("mx.loop.example", Answer::A("127.0.0.1".parse().expect("ip"))),
    ]);
    let setup = Setup::new(&format!(
        "[dns]\nnameservers = [\"{}\"]\n[delivery]\nmx-port = {port}\nconnect-timeout = \"2s\"\n",
        dns.addr
    ));
    setup.edit_config(
        "kind = \"mx\"\naddress = \"127.0.0.1:0\"",
        &format!("kind = \"mx\"\naddress = \"127.0.0.1:{port}\""),
    );
    let mut daemon = setup.start();
    submit(&setup, &daemon, &["<bob@loop.example>"], "loop");
    let bounce = wait_for_mail(&setup.maildir("alice"), 1);
    let text = read(&bounce[0]);
    assert!(
        text.contains("Status: 5.4.6") && text.contains("loops back to myself"),
        "{text}"
    );
    daemon.wait_log("no route to the domain");
    wait_spool_empty(&setup.data());
    // Nothing ever connected to our own MX listener.
    assert!(
        !daemon
            .log()
            .iter()
            .any(|l| l.contains("session{") && l.contains("kind=\"mx\"")),
        "{:#?}",
        daemon.log()
    );
}
