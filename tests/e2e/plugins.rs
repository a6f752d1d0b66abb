//! The hook points answered by real Wasm plugins on the real daemon.

use std::process::Command;

use crate::harness::*;

const EICAR: &str = concat!(
    r"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-",
    r"ANTIVIRUS-TEST-FILE!$H+H*"
);

fn eicar_message() -> String {
    use base64::Engine as _;
    let encoded = base64::engine::general_purpose::STANDARD.encode(EICAR);
    format!(
        "From: alice@example.org\r\nTo: bob@far.example\r\nSubject: the invoice\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n--b1\r\nContent-Type: text/plain\r\n\r\nSee attached.\r\n\
         --b1\r\nContent-Type: application/octet-stream; name=\"invoice.com\"\r\nContent-Transfer-Encoding: base64\r\n\r\n\
         {encoded}\r\n--b1--\r\n"
    )
}

fn plugins_config(setup: &Setup) -> String {
    format!(
        r#"
[[plugin]]
hook = "rate"
path = "{rate}"
[plugin.config.account]
messages-per-minute = 2

[[plugin]]
hook = "virus"
path = "{virus}"

[[plugin]]
hook = "spam"
path = "{spam}"
[plugin.config]
tag-threshold = 3.0
junk-threshold = 6.0
"#,
        rate = setup.plugin("rate_limit.wasm").display(),
        virus = setup.plugin("virus_signatures.wasm").display(),
        spam = setup.plugin("spam_rules.wasm").display(),
    )
}

fn with_plugins() -> Setup {
    let setup = Setup::new("");
    let extra = plugins_config(&setup);
    let config = std::fs::read_to_string(setup.config()).expect("config") + &extra;
    std::fs::write(setup.config(), config).expect("config");
    setup
}

/// A submission session over STARTTLS, authenticated as alice, speaking raw SMTP.
fn submission(daemon: &Daemon, setup: &Setup) -> TlsRaw {
    let mut c = TlsRaw::connect(daemon.addr("submission"), &setup.cert_pem);
    let auth = base64_plain("alice@example.org", PASSWORD);
    assert!(c.cmd(&format!("AUTH PLAIN {auth}")).starts_with("235"));
    c
}

#[test]
fn eicar_is_refused_on_both_pipelines_with_a_notice_on_submission_only() {
    let setup = with_plugins();
    let mut daemon = setup.start();
    let message = eicar_message();

    let mut c = submission(&daemon, &setup);
    assert!(c.cmd("MAIL FROM:<alice@example.org>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<bob@far.example>").starts_with("250"));
    assert!(c.cmd("DATA").starts_with("354"));
    let reply = c.cmd(&format!("{message}."));
    assert!(reply.starts_with("554 5.7.1"), "{reply}");
    assert!(reply.contains("Eicar-Test-Signature"), "{reply}");

    // The account is told its machine or password is probably compromised.
    let notices = wait_for_mail(&setup.maildir("alice"), 1);
    let notice = std::fs::read_to_string(&notices[0]).expect("notice");
    assert!(
        notice.contains("Subject: Your message was refused: virus found (Eicar-Test-Signature)"),
        "{notice}"
    );
    assert!(notice.contains("password has been stolen"), "{notice}");
    assert!(notice.contains("bob@far.example"));

    // On MX: refused in the session, nothing bounced or delivered.
    let mut m = Raw::connect(daemon.addr("mx"));
    assert!(m.cmd("EHLO sender.example").starts_with("250"));
    assert!(m.cmd("MAIL FROM:<forged@far.example>").starts_with("250"));
    assert!(m.cmd("RCPT TO:<alice@example.org>").starts_with("250"));
    assert!(m.cmd("DATA").starts_with("354"));
    assert!(m.cmd(&format!("{message}.")).starts_with("554 5.7.1"));
    // An honest message after it is delivered normally; the infected one never is.
    assert!(m.cmd("MAIL FROM:<friend@far.example>").starts_with("250"));
    assert!(m.cmd("RCPT TO:<alice@example.org>").starts_with("250"));
    assert!(m.cmd("DATA").starts_with("354"));
    let honest = "From: friend@far.example\r\nTo: alice@example.org\r\nSubject: lunch\r\nDate: Sat, 28 Nov 2026 10:00:00 +0000\r\nMessage-ID: <l@far.example>\r\n\r\nNoon?\r\n.";
    assert!(m.cmd(honest).starts_with("250"));
    wait_spool_empty(&setup.data());
    let inbox = wait_for_mail(&setup.maildir("alice"), 2);
    assert_eq!(inbox.len(), 2, "the notice and the honest message, nothing else");
    assert!(
        !inbox
            .iter()
            .any(|f| std::fs::read_to_string(f).unwrap_or_default().contains(EICAR))
    );
    daemon.wait_log("virus notice queued");
}

#[test]
fn spam_lands_in_junk_with_headers_and_ham_is_tagged_no() {
    let setup = with_plugins();
    let daemon = setup.start();
    let mut m = Raw::connect(daemon.addr("mx"));
    assert!(m.cmd("EHLO sender.example").starts_with("250"));
    for (subject, body) in [
        (
            "YOU HAVE WON THE LOTTERY!!!",
            "CLICK HERE TO CLAIM YOUR VIAGRA PRIZE NOW, 100% FREE, ACT NOW BEFORE IT IS TOO LATE",
        ),
        ("Minutes of the meeting", "Attached are the minutes."),
    ] {
        assert!(m.cmd("MAIL FROM:<someone@far.example>").starts_with("250"));
        assert!(m.cmd("RCPT TO:<alice@example.org>").starts_with("250"));
        assert!(m.cmd("DATA").starts_with("354"));
        let text = format!(
            "From: someone@far.example\r\nTo: alice@example.org\r\nSubject: {subject}\r\nDate: Sat, 28 Nov 2026 10:00:00 +0000\r\nMessage-ID: <{}@far.example>\r\n\r\n{body}\r\n.",
            subject.len()
        );
        assert!(m.cmd(&text).starts_with("250"));
    }
    let junk = wait_for_mail(&setup.junk("alice"), 1);
    let spam = std::fs::read_to_string(&junk[0]).expect("junk");
    assert!(
        spam.contains("X-Spam-Flag: YES") && spam.contains("X-Spam-Score: "),
        "{spam}"
    );
    assert!(spam.contains("LOTTERY"));
    let inbox = wait_for_mail(&setup.maildir("alice"), 1);
    let ham = std::fs::read_to_string(&inbox[0]).expect("inbox");
    assert!(ham.contains("X-Spam-Status: No"), "{ham}");
    // Delivery headers first, the trace header, then the plugin's headers, then the message.
    assert!(after_delivery_headers(&ham).starts_with("Received: "));
    assert!(ham.find("X-Spam-Status").expect("tag") < ham.find("From: someone").expect("from"));
}

#[test]
fn the_rate_plugin_defers_the_message_past_the_limit() {
    let setup = with_plugins();
    let daemon = setup.start();
    let mut c = submission(&daemon, &setup);
    for i in 0..3 {
        assert!(c.cmd("MAIL FROM:<alice@example.org>").starts_with("250"));
        assert!(c.cmd("RCPT TO:<alice@example.org>").starts_with("250"));
        let reply = c.cmd("DATA");
        if i < 2 {
            assert!(reply.starts_with("354"), "message {i}: {reply}");
            let sent = c.cmd(&format!("Subject: {i}\r\nDate: Sat, 28 Nov 2026 10:00:00 +0000\r\nMessage-ID: <{i}@example.org>\r\nFrom: alice@example.org\r\n\r\nhi\r\n."));
            assert!(sent.starts_with("250"), "{sent}");
        } else {
            assert!(
                reply.starts_with("451 4.7.0"),
                "the 3rd message in a minute: {reply}"
            );
            assert!(reply.contains("2 messages per minute"), "{reply}");
        }
    }
    // The session is still usable after the deferral.
    assert!(c.cmd("RSET").starts_with("250"));
}

#[test]
fn auth_table_accounts_can_log_in() {
    use argon2::password_hash::PasswordHasher;
    let hash = argon2::Argon2::default()
        .hash_password(b"table-pass")
        .expect("hash")
        .to_string();
    let setup = Setup::new("");
    let extra = format!(
        "\n[[plugin]]\nhook = \"auth\"\npath = \"{}\"\n[plugin.config]\ndefault-domain = \"example.org\"\n[plugin.config.accounts]\n\"carol@example.org\" = \"{hash}\"\n",
        setup.plugin("auth_table.wasm").display()
    );
    let config = std::fs::read_to_string(setup.config()).expect("config") + &extra;
    std::fs::write(setup.config(), config).expect("config");
    let daemon = setup.start();
    let mut c = TlsRaw::connect(daemon.addr("submission"), &setup.cert_pem);
    assert!(
        c.cmd(&format!("AUTH PLAIN {}", base64_plain("carol", "wrong")))
            .starts_with("535")
    );
    assert!(
        c.cmd(&format!("AUTH PLAIN {}", base64_plain("carol", "table-pass")))
            .starts_with("235")
    );
    assert!(
        c.cmd("MAIL FROM:<carol@example.org>").starts_with("250"),
        "carol sends as herself"
    );
    // The users file still works alongside.
    let mut a = TlsRaw::connect(daemon.addr("submission"), &setup.cert_pem);
    assert!(
        a.cmd(&format!(
            "AUTH PLAIN {}",
            base64_plain("alice@example.org", PASSWORD)
        ))
        .starts_with("235")
    );
}

#[test]
fn hostile_plugins_get_their_policy_and_the_server_carries_on() {
    let setup = Setup::new("");
    let hostile = setup.plugin("hostile.wasm");
    // One plugin per failure, each accepting on error, then one deferring.
    let mut extra = String::new();
    for mode in ["loop", "memory", "trap", "stack", "oversized"] {
        extra.push_str(&format!(
            "\n[[plugin]]\nname = \"hostile-{mode}\"\nhook = \"spam\"\npath = \"{}\"\ntimeout = \"1s\"\nmemory = \"32MiB\"\non-error = \"accept\"\n[plugin.config]\nmode = \"{mode}\"\n",
            hostile.display()
        ));
    }
    let config = std::fs::read_to_string(setup.config()).expect("config") + &extra;
    std::fs::write(setup.config(), config).expect("config");
    let mut daemon = setup.start();
    let mut m = Raw::connect(daemon.addr("mx"));
    assert!(m.cmd("EHLO c").starts_with("250"));
    for i in 0..2 {
        assert!(m.cmd("MAIL FROM:<x@far.example>").starts_with("250"));
        assert!(m.cmd("RCPT TO:<alice@example.org>").starts_with("250"));
        assert!(m.cmd("DATA").starts_with("354"));
        let reply = m.cmd(&format!("Subject: {i}\r\n\r\nhello\r\n."));
        assert!(
            reply.starts_with("250"),
            "every failure accepted per policy: {reply}"
        );
    }
    for kind in ["timeout", "memory", "stack overflow", "malformed"] {
        daemon.wait_log(kind);
    }
    assert_eq!(wait_for_mail(&setup.maildir("alice"), 2).len(), 2);

    // The default policy defers: the client is told to come back, nothing is lost.
    let setup = Setup::new("");
    let extra = format!(
        "\n[[plugin]]\nhook = \"spam\"\npath = \"{}\"\ntimeout = \"300ms\"\n[plugin.config]\nmode = \"trap\"\n",
        setup.plugin("hostile.wasm").display()
    );
    let config = std::fs::read_to_string(setup.config()).expect("config") + &extra;
    std::fs::write(setup.config(), config).expect("config");
    let daemon = setup.start();
    let mut m = Raw::connect(daemon.addr("mx"));
    assert!(m.cmd("EHLO c").starts_with("250"));
    assert!(m.cmd("MAIL FROM:<x@far.example>").starts_with("250"));
    assert!(m.cmd("RCPT TO:<alice@example.org>").starts_with("250"));
    assert!(m.cmd("DATA").starts_with("354"));
    assert!(m.cmd("Subject: x\r\n\r\nhello\r\n.").starts_with("451 4.3.0"));
    assert!(m.cmd("NOOP").starts_with("250"));
}

#[test]
fn a_plugin_that_does_not_fit_its_world_stops_the_start_with_a_clear_error() {
    let setup = Setup::new("");
    let extra = format!(
        "\n[[plugin]]\nhook = \"virus\"\npath = \"{}\"\n",
        setup.plugin("spam_rules.wasm").display()
    );
    let config = std::fs::read_to_string(setup.config()).expect("config") + &extra;
    std::fs::write(setup.config(), config).expect("config");
    let out = Command::new(binary())
        .args(["serve", "--config"])
        .arg(setup.config())
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("virus-plugin"), "{err}");
}

#[test]
fn plugin_test_prints_the_verdict_and_the_time() {
    let dir = tempfile::tempdir().expect("dir");
    let message = dir.path().join("spam.eml");
    std::fs::write(&message, "To: a@example.org\nSubject: YOU HAVE WON THE LOTTERY!!!\n\nCLICK HERE FOR VIAGRA, 100% FREE, ACT NOW OR MISS OUT FOREVER AND EVER\n").expect("write");
    let cache = dir.path().join("cache");
    let run = |plugin: &str, hook: &str| {
        let out = Command::new(binary())
            .args(["plugin", "test"])
            .arg(built_plugin(plugin))
            .args(["--hook", hook])
            .arg(&message)
            .arg("--cache-dir")
            .arg(&cache)
            .output()
            .expect("run");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
    };
    let text = run("spam_rules.wasm", "spam");
    assert!(text.contains("junk"), "{text}");
    assert!(text.contains("took "), "{text}");
    assert!(!text.contains("from the cache"), "{text}");
    // The second run of the same plugin takes the compiled code from the cache.
    let text = run("spam_rules.wasm", "spam");
    assert!(text.contains("junk") && text.contains("from the cache"), "{text}");
    assert!(run("virus_signatures.wasm", "virus").contains("clean"));
}
