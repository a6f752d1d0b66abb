//! Portcullis in the mail stack operators run: Dovecot's authentication service checks
//! the passwords of submission (`[auth] dovecot`) and its user database the recipients of
//! MX (`[auth] dovecot-userdb`), against Debian's Dovecot started by the test with a
//! passwd-file of its own; and two nodes share their rate counters in Debian's
//! Redis (`[rate] store`), started by the test on its own port.

use std::process::Command;

use portcullis_testkit::dovecot::Dovecot;

use crate::harness::*;

fn login(daemon: &Daemon, setup: &Setup, user: &str, password: &str) -> (TlsRaw, String) {
    let mut c = TlsRaw::connect(daemon.addr("submission"), &setup.cert_pem);
    let reply = c.cmd(&format!("AUTH PLAIN {}", base64_plain(user, password)));
    (c, reply)
}

#[test]
fn dovecot_checks_passwords_and_recipients_and_nothing_passes_while_it_is_away() {
    let mut dovecot = Dovecot::start(
        &[("dave@example.org", "dave-secret"), ("erin", "erin-secret")],
        None,
    );
    let endpoint = format!("unix:{}", dovecot.auth_client.display());
    let userdb = format!("unix:{}", dovecot.auth_userdb.display());
    let setup = Setup::new(&format!(
        "dovecot = \"{endpoint}\"\ndovecot-userdb = \"{userdb}\"\n"
    ));
    let said = checked(setup.config());
    assert!(
        said.contains(&format!("the users file's accounts, then Dovecot at {endpoint}"))
            && said.contains(&format!("looked up in Dovecot's userdb at {userdb}")),
        "{said}"
    );
    let mut daemon = setup.start();

    // MX asks Dovecot's userdb about local addresses the users file does not hold: its
    // users (and their +detail forms) are accepted and delivered, others refused.
    let mut m = Raw::connect(daemon.addr("mx"));
    assert!(m.cmd("EHLO far.example").starts_with("250"));
    assert!(m.cmd("MAIL FROM:<carol@far.example>").starts_with("250"));
    for (rcpt, code) in [
        ("dave@example.org", "250"),
        ("Dave+lists@Example.org", "250"),
        ("nobody@example.org", "550 5.1.1"),
        ("alice@example.org", "250"),
    ] {
        let reply = m.cmd(&format!("RCPT TO:<{rcpt}>"));
        assert!(reply.starts_with(code), "{rcpt}: {reply}");
    }
    assert!(m.cmd("DATA").starts_with("354"));
    let reply = m.cmd("Subject: for dave\r\n\r\nhi\r\n.");
    assert!(reply.starts_with("250"), "{reply}");
    let dave = setup.data().join("mail/example.org/dave");
    let delivered = wait_for_mail(&dave, 2);
    assert!(
        delivered.iter().any(|p| std::fs::read_to_string(p)
            .expect("read")
            .contains("Delivered-To: Dave+lists@Example.org")),
        "{delivered:?}"
    );
    wait_for_mail(&setup.maildir("alice"), 1);

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
    let delivered = wait_for_mail(&setup.maildir("alice"), 2);
    assert!(
        delivered.iter().any(|p| std::fs::read_to_string(p)
            .expect("read")
            .contains("Subject: through dovecot")),
        "{delivered:?}"
    );
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
    // And RCPT to its users is 451, so the sender retries; the users file's still pass.
    let mut m = Raw::connect(daemon.addr("mx"));
    assert!(m.cmd("EHLO far.example").starts_with("250"));
    assert!(m.cmd("MAIL FROM:<carol@far.example>").starts_with("250"));
    let reply = m.cmd("RCPT TO:<dave@example.org>");
    assert!(reply.starts_with("451 4.3.0"), "{reply}");
    assert!(m.cmd("RCPT TO:<alice@example.org>").starts_with("250"));
    daemon.wait_log("Dovecot's userdb could not say whether the recipient exists");
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

/// A node whose rate counters live in `store`, with the rate-limit plugin allowing an
/// account three messages a minute, delivering to `dovecot` over LMTP.
fn node(store: &str, on_store_error: &str, dovecot: &Dovecot) -> Setup {
    let setup = Setup::new("");
    let extra = format!(
        "\n[rate]\nstore = \"{store}\"\non-store-error = \"{on_store_error}\"\n\n[delivery]\nlocal = \"lmtp\"\n\
         lmtp = \"unix:{}\"\n\n[[plugin]]\nhook = \"rate\"\npath = \"{}\"\n[plugin.config.account]\nmessages-per-minute = 3\n",
        dovecot.lmtp.display(),
        setup.plugin("rate_limit.wasm").display()
    );
    let config = std::fs::read_to_string(setup.config()).expect("config") + &extra;
    std::fs::write(setup.config(), config).expect("config");
    setup
}

/// alice submits one message through `daemon`; the reply to DATA (or to its end).
fn submit_one(daemon: &Daemon, setup: &Setup, n: usize) -> String {
    let mut c = TlsRaw::connect(daemon.addr("submission"), &setup.cert_pem);
    c.login("alice@example.org");
    assert!(c.cmd("MAIL FROM:<alice@example.org>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<alice@example.org>").starts_with("250"));
    let reply = c.cmd("DATA");
    if !reply.starts_with("354") {
        return reply;
    }
    c.cmd(&format!(
        "From: alice@example.org\r\nSubject: {n}\r\nDate: Mon, 07 Dec 2026 10:00:00 +0000\r\nMessage-ID: <{n}@example.org>\r\n\r\nhi\r\n."
    ))
}

fn zcard(redis: &portcullis_testkit::redis::Redis, key: &str) -> String {
    let out = Command::new("redis-cli")
        .args(["-p", &redis.addr.port().to_string(), "ZCARD", key])
        .output()
        .expect("redis-cli");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn two_nodes_sharing_redis_and_dovecot_count_one_allowance_and_lose_nothing() {
    let mut redis = portcullis_testkit::redis::Redis::start();
    let dovecot = Dovecot::start(&[("alice@example.org", "alice-imap")], None);
    let (a, b) = (
        node(&redis.url(), "defer", &dovecot),
        node(&redis.url(), "defer", &dovecot),
    );
    let (mut node_a, node_b) = (a.start(), b.start());

    // Spread over both nodes, the account gets three messages a minute, not six.
    for (n, (daemon, setup)) in [(&node_a, &a), (&node_b, &b), (&node_a, &a)]
        .into_iter()
        .enumerate()
    {
        let reply = submit_one(daemon, setup, n);
        assert!(reply.starts_with("250"), "message {n}: {reply}");
    }
    for (daemon, setup) in [(&node_b, &b), (&node_a, &a)] {
        let reply = submit_one(daemon, setup, 9);
        assert!(reply.starts_with("451 4.7.0"), "{reply}");
    }
    // The refused ones were given back: three messages counted, in one shared key.
    assert_eq!(zcard(&redis, "portcullis:rate:account:alice@example.org"), "3");

    // Redis gone: on-store-error = "defer" answers 451 without asking the plugin, and a
    // node told to count locally goes on alone.
    redis.stop();
    let reply = submit_one(&node_a, &a, 10);
    assert!(reply.starts_with("451 4.3.0"), "{reply}");
    node_a.wait_log("the rate store cannot be reached; deferring");
    let c = node(&redis.url(), "local", &dovecot);
    let mut node_c = c.start();
    let reply = submit_one(&node_c, &c, 11);
    assert!(reply.starts_with("250"), "{reply}");
    node_c.wait_log("counting in this node's memory");

    // Redis back (empty: it kept nothing): the nodes reconnect and count again.
    redis.resume();
    let reply = submit_one(&node_a, &a, 12);
    assert!(reply.starts_with("250"), "{reply}");
    assert_eq!(zcard(&redis, "portcullis:rate:account:alice@example.org"), "1");
    // Every accepted message reached the one Dovecot, whichever node took it: 3 before the
    // outage, 1 on c, 1 after; read over IMAP.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut inbox = imap_all(&dovecot, "alice@example.org", "alice-imap").0;
    while inbox.len() < 5 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(200));
        inbox = imap_all(&dovecot, "alice@example.org", "alice-imap").0;
    }
    let mut subjects: Vec<String> = inbox
        .iter()
        .filter_map(|m| {
            String::from_utf8_lossy(m)
                .lines()
                .find_map(|l| l.strip_prefix("Subject: ").map(str::to_string))
        })
        .collect();
    subjects.sort();
    assert_eq!(subjects, ["0", "1", "11", "12", "2"]);
}

/// Every message of `user`'s INBOX and Junk over IMAP (Python's imaplib), as JSON:
/// `{"inbox": [base64…], "junk": [base64…]}`.
const IMAP_ALL: &str = r#"
import base64, imaplib, json, sys
c = imaplib.IMAP4("127.0.0.1", int(sys.argv[1]))
c.login(sys.argv[2], sys.argv[3])
out = {}
for folder in ["INBOX", "Junk"]:
    typ, data = c.select(folder, readonly=True)
    messages = []
    if typ == "OK" and int(data[0]) > 0:
        typ, data = c.fetch("1:*", "(BODY.PEEK[])")
        messages = [base64.b64encode(part[1]).decode() for part in data if isinstance(part, tuple)]
    out[folder.lower()] = messages
c.logout()
print(json.dumps(out))
"#;

/// `user`'s messages over IMAP: (INBOX, Junk).
fn imap_all(dovecot: &Dovecot, user: &str, password: &str) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    use base64::Engine as _;
    let out = python(IMAP_ALL, &[&dovecot.imap.port().to_string(), user, password]);
    let seen: serde_json::Value = serde_json::from_str(out.trim()).expect("json");
    let folder = |key: &str| -> Vec<Vec<u8>> {
        seen[key]
            .as_array()
            .expect("list")
            .iter()
            .map(|m| {
                base64::engine::general_purpose::STANDARD
                    .decode(m.as_str().expect("base64 text"))
                    .expect("base64")
            })
            .collect()
    };
    (folder("inbox"), folder("junk"))
}

#[test]
fn lmtp_delivers_into_dovecot_per_recipient_and_nothing_acknowledged_is_lost() {
    let mut dovecot = Dovecot::start_with_full(
        &[
            ("alice@example.org", "alice-imap"),
            ("dave@example.org", "dave-secret"),
            ("erin@example.org", "erin-secret"),
            ("full@example.org", "full-secret"),
        ],
        None,
        &["full@example.org"],
    );
    // An alias of two of Dovecot's users, whom the users file does not hold.
    let setup = Setup::new(&format!(
        "dovecot-userdb = \"unix:{}\"\n\n[delivery]\nlocal = \"lmtp\"\nlmtp = \"unix:{}\"\n\n\
         [aliases]\n\"team@example.org\" = [\"dave@example.org\", \"erin@example.org\"]\n",
        dovecot.auth_userdb.display(),
        dovecot.lmtp.display()
    ));
    let spam = format!(
        "\n[[plugin]]\nhook = \"spam\"\npath = \"{}\"\n[plugin.config]\ntag-threshold = 3.0\njunk-threshold = 6.0\n",
        setup.plugin("spam_rules.wasm").display()
    );
    let config = std::fs::read_to_string(setup.config()).expect("config") + &spam;
    std::fs::write(setup.config(), config).expect("config");
    let mut daemon = setup.start();
    daemon.wait_log("local recipients are delivered over LMTP");

    // One message to three users: two are delivered, the one over quota is deferred alone.
    let original = "From: carol@far.example\r\nTo: dave@example.org\r\nSubject: Minutes of the meeting\r\n\
                    Date: Mon, 07 Dec 2026 10:00:00 +0000\r\nMessage-ID: <lmtp-1@far.example>\r\n\r\n\
                    Attached are the minutes.\r\n..and a line that starts with a dot.\r\n";
    let mut m = Raw::connect(daemon.addr("mx"));
    assert!(m.cmd("EHLO far.example").starts_with("250"));
    assert!(m.cmd("MAIL FROM:<carol@far.example>").starts_with("250"));
    for rcpt in ["dave@example.org", "erin@example.org", "full@example.org"] {
        assert!(m.cmd(&format!("RCPT TO:<{rcpt}>")).starts_with("250"), "{rcpt}");
    }
    assert!(m.cmd("DATA").starts_with("354"));
    let reply = m.cmd(&format!("{}.", original.replace("\r\n.", "\r\n..")));
    assert!(reply.starts_with("250"), "{reply}");
    daemon.wait_log_count("delivered over LMTP", 2);
    daemon.wait_log("LMTP delivery deferred");

    // Read back over IMAP: what follows Dovecot's own header lines is our trace fields,
    // then byte for byte what was sent.
    let (inbox, junk) = imap_all(&dovecot, "dave@example.org", "dave-secret");
    assert_eq!((inbox.len(), junk.len()), (1, 0));
    let got = String::from_utf8_lossy(&inbox[0]).into_owned();
    assert!(got.ends_with(original), "{got}");
    let ours = got.find("Received: from far.example").expect("our Received:");
    assert!(got[ours..].contains("by mx.example.org (Portcullis)"), "{got}");
    assert!(
        !got[ours..].contains("Delivered-To:"),
        "no Delivered-To of ours: {got}"
    );
    assert_eq!(imap_all(&dovecot, "erin@example.org", "erin-secret").0.len(), 1);
    // full@ stays queued; a retry now tries it alone (dave and erin get no second copy).
    assert_eq!(queued_messages(&setup.data()), 1);
    queue(&setup, &["flush"]);
    daemon.wait_log_count("LMTP delivery deferred", 2);
    assert_eq!(imap_all(&dovecot, "dave@example.org", "dave-secret").0.len(), 1);
    assert_eq!(imap_all(&dovecot, "erin@example.org", "erin-secret").0.len(), 1);

    // A junk verdict lands in the user's Junk folder, through the +Junk detail.
    let mut m = Raw::connect(daemon.addr("mx"));
    assert!(m.cmd("EHLO far.example").starts_with("250"));
    assert!(m.cmd("MAIL FROM:<someone@far.example>").starts_with("250"));
    assert!(m.cmd("RCPT TO:<dave@example.org>").starts_with("250"));
    assert!(m.cmd("DATA").starts_with("354"));
    let reply = m.cmd(
        "From: someone@far.example\r\nTo: dave@example.org\r\nSubject: YOU HAVE WON THE LOTTERY!!!\r\n\
         Date: Mon, 07 Dec 2026 10:00:00 +0000\r\nMessage-ID: <w@far.example>\r\n\r\n\
         CLICK HERE TO CLAIM YOUR VIAGRA PRIZE NOW, 100% FREE, ACT NOW BEFORE IT IS TOO LATE\r\n.",
    );
    assert!(reply.starts_with("250"), "{reply}");
    daemon.wait_log_count("delivered over LMTP", 3);
    let (inbox, junk) = imap_all(&dovecot, "dave@example.org", "dave-secret");
    assert_eq!((inbox.len(), junk.len()), (1, 1));

    // Dovecot down: a message acknowledged with 250 waits in the queue, and arrives once
    // Dovecot is back.
    dovecot.stop();
    let mut c = TlsRaw::connect(daemon.addr("submission"), &setup.cert_pem);
    let reply = c.submit(
        "alice@example.org",
        "<alice@example.org>",
        &["<alice@example.org>"],
        "From: alice@example.org\r\nTo: alice@example.org\r\nSubject: while dovecot was away\r\n\r\nhello",
    );
    assert!(reply.starts_with("250"), "{reply}");
    daemon.wait_log("LMTP delivery broke off");
    dovecot.resume();
    queue(&setup, &["flush"]);
    daemon.wait_log_count("delivered over LMTP", 4);
    let (inbox, _) = imap_all(&dovecot, "alice@example.org", "alice-imap");
    assert_eq!(inbox.len(), 1);
    assert!(String::from_utf8_lossy(&inbox[0]).contains("Subject: while dovecot was away"));

    // The alias: one RCPT, a copy for each of its targets over LMTP.
    let mut m = Raw::connect(daemon.addr("mx"));
    assert!(m.cmd("EHLO far.example").starts_with("250"));
    assert!(m.cmd("MAIL FROM:<carol@far.example>").starts_with("250"));
    assert!(m.cmd("RCPT TO:<team@example.org>").starts_with("250"));
    assert!(m.cmd("DATA").starts_with("354"));
    let reply =
        m.cmd("From: carol@far.example\r\nTo: team@example.org\r\nSubject: to the team\r\n\r\nhi\r\n.");
    assert!(reply.starts_with("250"), "{reply}");
    daemon.wait_log_count("delivered over LMTP", 6);
    for (user, password) in [
        ("dave@example.org", "dave-secret"),
        ("erin@example.org", "erin-secret"),
    ] {
        let (inbox, _) = imap_all(&dovecot, user, password);
        assert!(
            inbox
                .iter()
                .any(|m| String::from_utf8_lossy(m).contains("Subject: to the team")),
            "{user}"
        );
    }
    // Nothing was written into Maildirs of ours.
    assert!(!setup.data().join("mail/example.org/dave").exists());
}
