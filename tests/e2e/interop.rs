//! Mail that real senders send arrives where its reader looks: the exact bytes Python's
//! smtplib and raw clients send (plus addresses, postmaster, long lines, bare LF, DSN
//! parameters, lenient envelopes, SMTPUTF8, IPv6), and a real Dovecot reading the Maildir.

use std::path::Path;

use portcullis_testkit::dovecot::{Dovecot, Mail};

use crate::harness::*;
use crate::sink::{Script, Sink};

/// The files of `maildir/new` holding `needle`.
fn with_text(maildir: &Path, needle: &str) -> Vec<String> {
    new_files(maildir)
        .iter()
        .map(|f| String::from_utf8_lossy(&std::fs::read(f).expect("read")).into_owned())
        .filter(|text| text.contains(needle))
        .collect()
}

fn only(maildir: &Path, needle: &str) -> String {
    let found = with_text(maildir, needle);
    assert_eq!(
        found.len(),
        1,
        "one message with {needle:?} in {maildir:?}: {found:#?}"
    );
    found.into_iter().next().expect("one")
}

const SMTPLIB_MX: &str = r#"
import smtplib, sys
s = smtplib.SMTP(sys.argv[1], int(sys.argv[2]))
s.ehlo("client.example")
fr = "sender@far.example"
# Plus address, <Postmaster> without a domain, and a role address nobody receives.
refused = {}
try:
    refused = s.sendmail(fr, ["alice+news@example.org", "Postmaster", "abuse@example.org"],
                         b"From: sender@far.example\r\nSubject: plus\r\n\r\nplus body\r\n")
except smtplib.SMTPRecipientsRefused as e:
    refused = e.recipients
print("refused", sorted(refused))
# Lines of 2,000 and 10,000 characters, then one over the 64 KiB limit.
s.sendmail(fr, ["alice@example.org"], ("Subject: long\r\n\r\n" + "a" * 2000 + "\r\n" + "b" * 10000 + "\r\n").encode())
try:
    s.sendmail(fr, ["alice@example.org"], ("Subject: too long\r\n\r\n" + "c" * 70000 + "\r\n").encode())
    print("too-long accepted")
except smtplib.SMTPDataError as e:
    print("too-long", e.smtp_code)
# smtplib sends bytes as they are: bare LF line endings.
s.sendmail(fr, ["alice@example.org"], b"Subject: bare lf\n\nline one\nline two")
s.sendmail(fr, ["alice@example.org"], "Subject: utf8\r\n\r\nh\u00e9\r\n".encode(), mail_options=["SMTPUTF8", "BODY=8BITMIME"])
# RCPT with DSN parameters: 526 octets with its CRLF.
orcpt = "rfc822;" + "x" * 448 + "@example.org"
s.mail("sender@far.example", ["RET=HDRS", "ENVID=e+2B1"])
options = ["NOTIFY=SUCCESS,FAILURE", "ORCPT=" + orcpt]
line = "rcpt TO:<alice@example.org> " + " ".join(options) + "\r\n"
print("rcpt-line", len(line), s.rcpt("alice@example.org", options)[0])
print("data", s.data(b"Subject: dsn params\r\n\r\nhi\r\n")[0])
s.quit()
"#;

#[test]
fn mail_real_senders_send_on_mx_arrives_where_its_reader_looks() {
    let setup = Setup::new("");
    // MX on IPv6 loopback, for the address literal of the trace header.
    setup.edit_config(
        "kind = \"mx\"\naddress = \"127.0.0.1:0\"",
        "kind = \"mx\"\naddress = \"[::1]:0\"",
    );
    let mut daemon = setup.start();
    let mx = daemon.addr("mx");
    let out = python(SMTPLIB_MX, &["::1", &mx.port().to_string()]);
    assert!(out.contains("refused ['abuse@example.org']"), "{out}");
    assert!(out.contains("too-long 500"), "{out}");
    assert!(out.contains("rcpt-line 526 250"), "{out}");
    assert!(out.contains("data 250"), "{out}");

    // Raw bytes: lenient envelope syntax, one good recipient among ten unknown ones, and a
    // BDAT chunk with bare LF line endings.
    let mut c = Raw::connect(mx);
    assert!(c.cmd("EHLO client.example (Some MUA 1.0)").starts_with("250"));
    assert!(c.cmd("MAIL FROM:sender@far.example").starts_with("250"));
    assert!(c.cmd("RCPT TO:alice@example.org.").starts_with("250"));
    for i in 0..10 {
        assert!(
            c.cmd(&format!("RCPT TO:<nobody{i}@example.org>"))
                .starts_with("550 5.1.1")
        );
    }
    assert!(c.cmd("DATA").starts_with("354"));
    assert!(c.cmd("Subject: lenient\r\n\r\nhi\r\n.").starts_with("250 2.0.0"));
    assert!(c.cmd("MAIL FROM:<sender@far.example>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<alice@example.org>").starts_with("250"));
    let chunk = b"Subject: bdat\n\nbare\nlf\n";
    c.send(format!("BDAT {} LAST\r\n", chunk.len()).as_bytes());
    c.send(chunk);
    assert!(c.reply().starts_with("250 2.0.0"));
    assert!(c.cmd("QUIT").starts_with("221"));

    let inbox = setup.maildir("alice");
    wait_for_mail(&inbox, 7);
    wait_spool_empty(&setup.data());

    // 1. Plus-addressed mail is in alice's INBOX, never in a folder named after the detail.
    let plus = only(&inbox, "Subject: plus");
    assert!(
        plus.starts_with(
            "Return-Path: <sender@far.example>\r\nDelivered-To: alice+news@example.org\r\nReceived: from client.example ([IPv6:::1])\r\n"
        ),
        "{plus}"
    );
    assert!(plus.ends_with("\r\n\r\nplus body\r\n"), "{plus}");
    assert!(!setup.data().join("mail/example.org/alice+news").exists());
    // Postmaster mail is kept where docs/operations.md says, as nobody is named for it.
    let postmaster = setup.data().join("mail/example.org/postmaster");
    assert!(only(&postmaster, "Subject: plus").contains("Delivered-To: postmaster@example.org\r\n"));
    // 4. Long lines, stored as received.
    let long = only(&inbox, "Subject: long");
    assert!(
        long.ends_with(&format!(
            "\r\n\r\n{}\r\n{}\r\n",
            "a".repeat(2000),
            "b".repeat(10000)
        )),
        "long lines changed"
    );
    assert!(with_text(&inbox, "too long").is_empty());
    // 5. Bare LF, in DATA and in BDAT: stored with CRLF.
    let bare = only(&inbox, "Subject: bare lf");
    assert!(
        bare.ends_with("Subject: bare lf\r\n\r\nline one\r\nline two\r\n"),
        "{bare}"
    );
    let bdat = only(&inbox, "Subject: bdat");
    assert!(bdat.ends_with("Subject: bdat\r\n\r\nbare\r\nlf\r\n"), "{bdat}");
    for text in [&bare, &bdat] {
        assert!(!text.replace("\r\n", "").contains(['\r', '\n']), "{text}");
    }
    // 6 and 7. The long DSN line and the lenient envelope were accepted.
    only(&inbox, "Subject: dsn params");
    let lenient = only(&inbox, "Subject: lenient");
    assert!(lenient.starts_with("Return-Path: <sender@far.example>\r\nDelivered-To: alice@example.org\r\n"));
    // 9. RFC 6531 protocol type for an SMTPUTF8 transaction.
    assert!(only(&inbox, "Subject: utf8").contains(" with UTF8SMTP id "));
    daemon.wait_log("saved to maildir");
}

#[test]
fn a_named_postmaster_strict_syntax_and_bare_lf_rejected() {
    // The default config warns that nobody reads postmaster mail.
    let plain = Setup::new("");
    let check = |setup: &Setup| check_config(setup.config());
    let out = check(&plain);
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("warning: domains.postmaster is not set"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let setup = Setup::new("[limits]\nstrict-syntax = true\nbare-lf = \"reject\"\n");
    setup.edit_config(
        "local = [\"example.org\"]",
        "local = [\"example.org\", \"example.net\"]\npostmaster = \"alice@example.org\"",
    );
    let out = check(&setup);
    assert!(out.status.success());
    assert!(!String::from_utf8_lossy(&out.stderr).contains("postmaster"));

    let daemon = setup.start();
    let mut c = Raw::connect(daemon.addr("mx"));
    assert!(c.cmd("EHLO client.example extra").starts_with("501"));
    assert!(c.cmd("EHLO client.example").starts_with("250"));
    assert!(c.cmd("MAIL FROM:sender@far.example").starts_with("501"));
    assert!(c.cmd("MAIL FROM:<sender@far.example>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<alice@example.org.>").starts_with("501"));
    assert!(c.cmd("RCPT TO:<Postmaster>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<abuse@example.net>").starts_with("250"));
    assert!(c.cmd("DATA").starts_with("354"));
    assert!(c.cmd("Subject: roles\r\n\r\nhi\r\n.").starts_with("250"));
    // Both role addresses reach the named account, each copy saying who it was for.
    let inbox = setup.maildir("alice");
    wait_for_mail(&inbox, 2);
    assert_eq!(
        with_text(&inbox, "Delivered-To: postmaster@example.org\r\n").len(),
        1
    );
    assert_eq!(with_text(&inbox, "Delivered-To: abuse@example.net\r\n").len(), 1);
    assert!(!setup.data().join("mail/example.org/postmaster").exists());

    assert!(c.cmd("MAIL FROM:<sender@far.example>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<alice@example.org>").starts_with("250"));
    assert!(c.cmd("DATA").starts_with("354"));
    c.send(b"Subject: bare\n\nhi\r\n.\r\n");
    assert!(c.reply().starts_with("554 5.5.2"));
    assert!(c.until_closed().is_some());
    wait_spool_empty(&setup.data());
    assert_eq!(new_files(&inbox).len(), 2);
}

#[test]
fn success_reports_on_submission_relayed_reports_and_none_on_mx() {
    // A next hop that does not offer DSN: the relay is reported by us.
    let sink = Sink::start(Script {
        dsn: false,
        starttls: false,
        ..Script::default()
    });
    let setup = Setup::new(&format!(
        "[delivery.routes]\n\"far.example\" = {{ host = \"{}\", tls = \"none\" }}\n",
        sink.addr
    ));
    setup.add_user("bob", PASSWORD);
    let daemon = setup.start();
    let mut c = TlsRaw::connect(daemon.addr("submission"), &setup.cert_pem);
    let long_line = "z".repeat(10_000);
    let message = format!("Subject: reports\r\n\r\nsecret body\r\n{long_line}");
    let reply = c.submit(
        "alice@example.org",
        "<alice@example.org> RET=FULL ENVID=env+2B1",
        &[
            "<bob@example.org> NOTIFY=SUCCESS",
            "<carol@far.example> NOTIFY=SUCCESS,FAILURE",
        ],
        &message,
    );
    assert!(reply.starts_with("250"), "{reply}");
    // A 10,000-character line leaves as it came: folding it would break DKIM signatures.
    let sent = sink.wait(1);
    assert!(
        String::from_utf8_lossy(&sent[0].data).ends_with(&format!("\r\n\r\nsecret body\r\n{long_line}\r\n")),
        "the long line was changed on its way out"
    );
    let bob = setup.maildir("bob");
    wait_for_mail(&bob, 1);
    let alice = setup.maildir("alice");
    wait_for_mail(&alice, 2);
    let delivered = only(&alice, "\r\nAction: delivered");
    for needle in [
        "Subject: Successful Mail Delivery Report",
        "Original-Envelope-Id: env+1",
        "Final-Recipient: rfc822; bob@example.org",
        "Status: 2.0.0",
        "Content-Type: text/rfc822-headers",
        "Subject: reports",
    ] {
        assert!(delivered.contains(needle), "{needle:?} in {delivered}");
    }
    assert!(!delivered.contains("secret body") && !delivered.contains("carol@far.example"));
    let relayed = only(&alice, "\r\nAction: relayed");
    assert!(
        relayed.contains("Final-Recipient: rfc822; carol@far.example"),
        "{relayed}"
    );
    assert!(relayed.starts_with("Return-Path: <>\r\nDelivered-To: alice@example.org\r\n"));

    // On MX the sender is only claimed: no success report (it would be backscatter).
    let mut m = Raw::connect(daemon.addr("mx"));
    assert!(m.cmd("EHLO far.example").starts_with("250"));
    assert!(m.cmd("MAIL FROM:<alice@example.org>").starts_with("250"));
    assert!(
        m.cmd("RCPT TO:<bob@example.org> NOTIFY=SUCCESS")
            .starts_with("250")
    );
    assert!(m.cmd("DATA").starts_with("354"));
    assert!(m.cmd("Subject: via mx\r\n\r\nhi\r\n.").starts_with("250"));
    wait_for_mail(&bob, 2);
    wait_spool_empty(&setup.data());
    assert_eq!(new_files(&alice).len(), 2, "no report for the MX message");
}

const IMAP_READ: &str = r#"
import base64, imaplib, json, sys
c = imaplib.IMAP4("127.0.0.1", int(sys.argv[1]))
c.login("alice@example.org", "imap-secret")
out = {}
out["list"] = [l.decode() for l in c.list()[1]]
out["lsub"] = [l.decode() for l in c.lsub()[1] if l]
out["inbox"] = int(c.select("INBOX", readonly=True)[1][0])
out["first"] = base64.b64encode(c.fetch("1", "(BODY.PEEK[])")[1][0][1]).decode()
out["junk"] = int(c.select("Junk", readonly=True)[1][0])
c.logout()
print(json.dumps(out))
"#;

#[test]
fn dovecot_lists_inbox_and_junk_and_fetches_a_plus_addressed_message_byte_for_byte() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("not root: Dovecot needs the daemon to run as another user; not run");
        return;
    }
    let setup = Setup::new("");
    let spam = setup.plugin("spam_rules.wasm");
    let config = std::fs::read_to_string(setup.config()).expect("config")
        + &format!(
            "[[plugin]]\nhook = \"spam\"\npath = \"{}\"\n[plugin.config]\ntag-threshold = 3.0\njunk-threshold = 6.0\n",
            spam.display()
        );
    std::fs::write(setup.config(), config).expect("config");
    // Dovecot refuses mail access as root: the daemon runs as nobody, and so do mailboxes.
    setup.edit_config("run-as-root = true", "user = \"nobody\"");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(setup.dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::fs::create_dir_all(setup.data()).expect("mkdir");
    let nobody = nix::unistd::User::from_name("nobody")
        .expect("passwd")
        .expect("nobody");
    std::os::unix::fs::chown(setup.data(), Some(nobody.uid.as_raw()), Some(nobody.gid.as_raw()))
        .expect("chown");
    let group = nix::unistd::Group::from_gid(nobody.gid)
        .expect("group")
        .expect("nobody's group")
        .name;

    let daemon = setup.start();
    let mx = daemon.addr("mx");
    python(
        r#"
import smtplib, sys
s = smtplib.SMTP("127.0.0.1", int(sys.argv[1]))
s.sendmail("friend@far.example", ["alice+news@example.org"],
    b"From: friend@far.example\r\nTo: alice+news@example.org\r\nSubject: Minutes of the meeting\r\nDate: Sat, 28 Nov 2026 10:00:00 +0000\r\nMessage-ID: <m@far.example>\r\n\r\nAttached are the minutes.\r\n")
s.sendmail("someone@far.example", ["alice@example.org"],
    b"From: someone@far.example\r\nTo: alice@example.org\r\nSubject: YOU HAVE WON THE LOTTERY!!!\r\nDate: Sat, 28 Nov 2026 10:00:00 +0000\r\nMessage-ID: <w@far.example>\r\n\r\nCLICK HERE TO CLAIM YOUR VIAGRA PRIZE NOW, 100% FREE, ACT NOW BEFORE IT IS TOO LATE\r\n")
s.quit()
"#,
        &[&mx.port().to_string()],
    );
    let inbox = wait_for_mail(&setup.maildir("alice"), 1);
    wait_for_mail(&setup.junk("alice"), 1);
    wait_spool_empty(&setup.data());
    let on_disk = std::fs::read(&inbox[0]).expect("read");
    assert!(
        on_disk.starts_with(b"Return-Path: <friend@far.example>\r\nDelivered-To: alice+news@example.org\r\n")
    );
    assert!(setup.junk("alice").join("maildirfolder").is_file());

    let mail = setup.data().join("mail");
    let dovecot = Dovecot::start(
        &[("alice@example.org", "imap-secret")],
        Some(Mail {
            root: &mail,
            user: &nobody.name,
            group: &group,
        }),
    );
    let out = python(IMAP_READ, &[&dovecot.imap.port().to_string()]);
    let seen: serde_json::Value = serde_json::from_str(out.trim()).expect("json");
    let names = |key: &str| -> Vec<String> {
        seen[key]
            .as_array()
            .expect("list")
            .iter()
            .filter_map(|l| l.as_str()?.rsplit(' ').next().map(str::to_string))
            .collect()
    };
    let mut listed = names("list");
    listed.sort();
    assert_eq!(listed, ["INBOX", "Junk"], "{out}");
    assert_eq!(names("lsub"), ["Junk"], "{out}");
    assert_eq!(
        (seen["inbox"].as_u64(), seen["junk"].as_u64()),
        (Some(1), Some(1)),
        "{out}"
    );
    use base64::Engine as _;
    let fetched = base64::engine::general_purpose::STANDARD
        .decode(seen["first"].as_str().expect("first"))
        .expect("base64");
    assert_eq!(
        String::from_utf8_lossy(&fetched),
        String::from_utf8_lossy(&on_disk),
        "IMAP gives the Maildir file byte for byte"
    );
    // And Dovecot had nothing to say about our file names, folders or permissions.
    let log = dovecot.log();
    assert!(!log.contains("Error:") && !log.contains("Warning:"), "{log}");
}
