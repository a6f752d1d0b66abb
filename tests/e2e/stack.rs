//! Portcullis in the mail stack operators run: Dovecot's authentication service checks
//! the passwords of submission (`[auth] dovecot`), against Debian's Dovecot started by the
//! test with a passwd-file of its own.

use std::process::Command;

use portcullis_testkit::dovecot::Dovecot;

use crate::harness::*;

fn login(daemon: &Daemon, setup: &Setup, user: &str, password: &str) -> (TlsRaw, String) {
    let mut c = TlsRaw::connect(daemon.addr("submission"), &setup.cert_pem);
    let reply = c.cmd(&format!("AUTH PLAIN {}", base64_plain(user, password)));
    (c, reply)
}

#[test]
fn submission_checks_passwords_with_dovecot_and_never_passes_while_it_is_away() {
    let mut dovecot = Dovecot::start(
        &[("dave@example.org", "dave-secret"), ("erin", "erin-secret")],
        None,
    );
    let endpoint = format!("unix:{}", dovecot.auth_client.display());
    let setup = Setup::new(&format!("dovecot = \"{endpoint}\"\n"));
    let out = Command::new(binary())
        .args(["check-config", "--config"])
        .arg(setup.config())
        .output()
        .expect("check-config");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.contains(&format!("the users file's accounts, then Dovecot at {endpoint}")),
        "{said}"
    );
    let mut daemon = setup.start();

    // Dovecot's user with the right password: 235, and it sends as its own address and its
    // +detail forms, never as another account.
    let (mut c, reply) = login(&daemon, &setup, "dave@example.org", "dave-secret");
    assert!(reply.starts_with("235"), "{reply}");
    let reply = c.cmd("MAIL FROM:<alice@example.org>");
    assert!(reply.starts_with("553"), "{reply}");
    let reply = c.send_mail(
        "<dave+news@example.org>",
        &["<alice@example.org>"],
        "From: dave+news@example.org\r\nTo: alice@example.org\r\nSubject: through dovecot\r\n\r\nhello",
    );
    assert!(reply.starts_with("250"), "{reply}");
    let delivered = wait_for_mail(&setup.maildir("alice"), 1);
    let text = std::fs::read_to_string(&delivered[0]).expect("read");
    assert!(text.contains("Subject: through dovecot"), "{text}");
    daemon.wait_log("Dovecot accepted the password");

    // A wrong password, and a name Dovecot does not know: 535.
    for (user, password) in [
        ("dave@example.org", "dave-secreT"),
        ("nobody@example.org", "dave-secret"),
    ] {
        let (_, reply) = login(&daemon, &setup, user, password);
        assert!(reply.starts_with("535"), "{user}: {reply}");
    }
    // AUTH LOGIN is carried to Dovecot as PLAIN.
    let mut c = TlsRaw::connect(daemon.addr("submission"), &setup.cert_pem);
    use base64::Engine as _;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    assert!(c.cmd("AUTH LOGIN").starts_with("334"));
    assert!(c.cmd(&b64("dave@example.org")).starts_with("334"));
    let reply = c.cmd(&b64("dave-secret"));
    assert!(reply.starts_with("235"), "{reply}");
    // A user Dovecot names without a domain is an account of the primary domain.
    let (mut c, reply) = login(&daemon, &setup, "erin", "erin-secret");
    assert!(reply.starts_with("235"), "{reply}");
    assert!(c.cmd("MAIL FROM:<erin@example.org>").starts_with("250"));
    // The users file still decides for its own accounts.
    let (_, reply) = login(&daemon, &setup, "alice@example.org", PASSWORD);
    assert!(reply.starts_with("235"), "{reply}");

    // Dovecot gone: 454, never a pass; the users file's accounts are unaffected.
    dovecot.stop();
    let (_, reply) = login(&daemon, &setup, "dave@example.org", "dave-secret");
    assert!(reply.starts_with("454 4.7.0"), "{reply}");
    daemon.wait_log("Dovecot could not check the password");
    let (_, reply) = login(&daemon, &setup, "alice@example.org", PASSWORD);
    assert!(reply.starts_with("235"), "{reply}");
    // Back: accepted again.
    dovecot.resume();
    let (_, reply) = login(&daemon, &setup, "dave@example.org", "dave-secret");
    assert!(reply.starts_with("235"), "{reply}");
    // Dovecot saw the client's address (rip) with the failed check.
    assert!(
        dovecot.log().contains("(dave@example.org,127.0.0.1"),
        "{}",
        dovecot.log()
    );
}
