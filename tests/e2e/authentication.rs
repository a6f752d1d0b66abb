//! Mail authentication checked by an independent implementation: submitted mail signed
//! with keys from `portcullis dkim keygen`, verified by Python's dkimpy against the
//! records keygen printed, served by a real DNS server on loopback.

use std::process::Command;

use crate::harness::*;
use portcullis_testkit::dns::{Answer, Dns};

/// The Python with dkimpy, dnspython and PyNaCl that scripts/test.sh installs.
fn verifier_python() -> std::path::PathBuf {
    let python = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/e2e-python/bin/python");
    assert!(
        python.exists(),
        "{} is missing: scripts/test.sh installs dkimpy there (python3 -m venv target/e2e-python && target/e2e-python/bin/pip install dkimpy dnspython pynacl)",
        python.display()
    );
    python
}

/// Verifies every DKIM signature of the message in `path` with dkimpy, asking the DNS
/// server at `dns_port` for the keys; prints one result per signature.
const VERIFY: &str = r#"
import sys, dkim, dns.resolver
path, port = sys.argv[1], int(sys.argv[2])
resolver = dns.resolver.Resolver(configure=False)
resolver.nameservers = ["127.0.0.1"]
resolver.port = port
def dnsfunc(name, timeout=5):
    answer = resolver.resolve(name.decode().rstrip("."), "TXT")
    return b"".join(b"".join(r.strings) for r in answer)
message = open(path, "rb").read()
signatures = [l for l in message.split(b"\r\n") if l.lower().startswith(b"dkim-signature:")]
verifier = dkim.DKIM(message)
for i in range(len(signatures)):
    try:
        ok = verifier.verify(idx=i, dnsfunc=dnsfunc)
    except dkim.DKIMException as e:
        print(f"signature {i}: {e}", file=sys.stderr)
        ok = False
    print("pass" if ok else "fail")
"#;

/// A key from `portcullis dkim keygen`: the TXT record's strings and the config section.
struct Generated {
    strings: Vec<String>,
    section: String,
}

fn keygen(setup: &Setup, selector: &str, algorithm: &str) -> Generated {
    let out = Command::new(binary())
        .args([
            "dkim",
            "keygen",
            "--domain",
            DOMAIN,
            "--selector",
            selector,
            "--algorithm",
            algorithm,
            "--config",
        ])
        .arg(setup.config())
        .output()
        .expect("run dkim keygen");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let record = text
        .lines()
        .find(|l| l.starts_with(&format!("{selector}._domainkey.{DOMAIN}. IN TXT (")))
        .unwrap_or_else(|| panic!("no record printed: {text}"));
    // The quoted character-strings, as a zone file would hold them.
    let strings: Vec<String> = record.split('"').skip(1).step_by(2).map(str::to_string).collect();
    assert!(strings.iter().all(|s| s.len() <= 255), "{record}");
    let section = text[text.find("[[dkim]]").expect("section printed")..]
        .trim()
        .to_string();
    Generated { strings, section }
}

/// Waits (bounded) for the copy in `folder` whose subject is `subject`, and returns it.
fn copy_with_subject(folder: &std::path::Path, subject: &str) -> String {
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let found = new_files(folder)
            .into_iter()
            .filter_map(|p| std::fs::read_to_string(p).ok())
            .find(|t| t.contains(&format!("Subject: {subject}\r\n")));
        if let Some(copy) = found {
            return copy;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no copy of {subject:?} in {}",
            folder.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Submits `message` as alice (STARTTLS, AUTH) to `to`; asserts the 250.
fn submit_as_alice(setup: &Setup, submission: std::net::SocketAddr, to: &str, message: &str) {
    let mut c = TlsRaw::connect(submission, &setup.cert_pem);
    let reply = c.submit("alice@example.org", "<alice@example.org>", &[to], message);
    assert!(reply.starts_with("250"), "{reply}");
}

#[test]
fn submitted_mail_is_signed_with_every_key_of_its_domain_and_dkimpy_verifies_both() {
    let python = verifier_python();
    let setup = Setup::new("");
    let ed = keygen(&setup, "ed", "ed25519");
    let rsa = keygen(&setup, "rs", "rsa");
    let config = std::fs::read_to_string(setup.config()).expect("config");
    std::fs::write(
        setup.config(),
        format!("{config}\n{}\n\n{}\n", ed.section, rsa.section),
    )
    .expect("config");
    let dns = Dns::start(&[
        ("ed._domainkey.example.org", Answer::Txt(ed.strings)),
        ("rs._domainkey.example.org", Answer::Txt(rsa.strings)),
    ]);
    let daemon = setup.start();
    let message = "From: Alice <alice@example.org>\r\nTo: alice@example.org\r\nSubject: signed\r\n\
                   Date: Tue, 01 Dec 2026 10:00:00 +0000\r\nMessage-ID: <signed.1@example.org>\r\n\r\n\
                   Signed on submission.\r\n";
    submit_as_alice(&setup, daemon.addr("submission"), "<alice@example.org>", message);
    let copy = wait_for_mail(&setup.maildir("alice"), 1).remove(0);
    let text = std::fs::read_to_string(&copy).expect("read");
    let signatures: Vec<&str> = text
        .split("\r\n")
        .filter(|l| l.starts_with("DKIM-Signature:"))
        .collect();
    assert_eq!(signatures.len(), 2, "{text}");
    assert!(
        signatures.iter().any(|s| s.contains("a=ed25519-sha256")),
        "{text}"
    );
    assert!(signatures.iter().any(|s| s.contains("a=rsa-sha256")), "{text}");
    let port = dns.addr.port().to_string();
    let verify = |path: &std::path::Path| {
        let out = Command::new(&python)
            .args(["-c", VERIFY])
            .arg(path)
            .arg(&port)
            .output()
            .expect("run dkimpy");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        eprintln!("dkimpy: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    assert_eq!(verify(&copy), ["pass", "pass"], "dkimpy refused a signature");
    // The verifier does check: the same copy with its body changed fails both.
    let tampered = setup.dir.path().join("tampered.eml");
    std::fs::write(
        &tampered,
        text.replace("Signed on submission.", "Changed on the way."),
    )
    .expect("write");
    assert_eq!(verify(&tampered), ["fail", "fail"]);

    // Mail whose From: domain has no key goes unsigned, and says so once.
    let other = "From: someone@example.net\r\nSubject: unsigned\r\n\r\nx\r\n";
    submit_as_alice(&setup, daemon.addr("submission"), "<alice@example.org>", other);
    let copies = wait_for_mail(&setup.maildir("alice"), 2);
    let unsigned = copies
        .iter()
        .map(|p| std::fs::read_to_string(p).expect("read"))
        .find(|t| t.contains("Subject: unsigned"))
        .expect("second copy");
    assert!(!unsigned.contains("DKIM-Signature:"), "{unsigned}");
    assert!(
        daemon
            .log()
            .iter()
            .any(|l| l.contains("no [[dkim]] key for this From: domain"))
    );
}

#[test]
fn a_dkim_key_that_does_not_load_is_a_check_config_problem() {
    let setup = Setup::new("[[dkim]]\ndomain = \"example.org\"\nselector = \"s1\"\nkey = \"missing.pem\"\n");
    let out = check_config(setup.config());
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("dkim") && stderr.contains("missing.pem"),
        "{stderr}"
    );
}

/// Signs the message in `path` with dkimpy (an independent signer) and prints the signed
/// message: the key, selector and domain are the arguments.
const SIGN: &str = r#"
import sys, dkim
key, selector, domain, path = sys.argv[1:5]
message = open(path, "rb").read()
signature = dkim.sign(message, selector.encode(), domain.encode(), open(key, "rb").read(),
                      include_headers=[b"from", b"to", b"subject", b"date", b"message-id"])
sys.stdout.buffer.write(signature + message)
"#;

/// Runs a dkimpy `script` (SIGN or ARC_SEAL) with `key` as `(selector, domain)` over
/// `text`; what it printed.
fn dkimpy(script: &str, key: &std::path::Path, (selector, domain): (&str, &str), text: &str) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("message.eml");
    std::fs::write(&path, text).expect("write");
    let out = Command::new(verifier_python())
        .args(["-c", script])
        .arg(key)
        .args([selector, domain])
        .arg(&path)
        .output()
        .expect("run dkimpy");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8")
}

/// An RSA key made by OpenSSL (not by us), and its public half as DKIM TXT strings.
fn openssl_key(dir: &std::path::Path) -> (std::path::PathBuf, Vec<String>) {
    let key = dir.join("sender.pem");
    let made = Command::new("openssl")
        .args(["genrsa", "-traditional", "-out"])
        .arg(&key)
        .arg("2048")
        .output()
        .expect("run openssl genrsa");
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let public = Command::new("openssl")
        .args(["rsa", "-pubout", "-outform", "DER", "-in"])
        .arg(&key)
        .output()
        .expect("run openssl rsa");
    assert!(
        public.status.success(),
        "{}",
        String::from_utf8_lossy(&public.stderr)
    );
    use base64::Engine as _;
    let record = format!(
        "v=DKIM1; k=rsa; p={}",
        base64::engine::general_purpose::STANDARD.encode(&public.stdout)
    );
    let strings = record
        .as_bytes()
        .chunks(255)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect();
    (key, strings)
}

/// Sends `message` on MX as `mail.sender.test` and returns the reply to its content (or the
/// first refusal).
fn send_on_mx(addr: std::net::SocketAddr, from: &str, message: &str) -> String {
    let mut c = Raw::connect(addr);
    assert!(c.cmd("EHLO mail.sender.test").starts_with("250"));
    let reply = c.cmd(&format!("MAIL FROM:{from}"));
    assert!(reply.starts_with("250"), "{reply}");
    let reply = c.cmd("RCPT TO:<alice@example.org>");
    assert!(reply.starts_with("250"), "{reply}");
    assert!(c.cmd("DATA").starts_with("354"));
    // The message's last line ending is the one before the final dot.
    let stuffed = message
        .strip_suffix("\r\n")
        .unwrap_or(message)
        .replace("\r\n.", "\r\n..");
    c.cmd(&format!("{stuffed}\r\n."))
}

/// The `Authentication-Results` fields of a delivered copy.
fn results_of(copy: &str) -> Vec<&str> {
    copy.split("\r\n\r\n")
        .next()
        .unwrap_or_default()
        .split("\r\n")
        .filter(|l| l.to_ascii_lowercase().starts_with("authentication-results:"))
        .collect()
}

fn message(from: &str, subject: &str) -> String {
    format!(
        "From: {from}\r\nTo: alice@example.org\r\nSubject: {subject}\r\n\
         Date: Tue, 01 Dec 2026 10:00:00 +0000\r\nMessage-ID: <{subject}@sender.test>\r\n\r\n\
         A message about {subject}.\r\n"
    )
}

#[test]
fn mail_arriving_on_mx_is_checked_and_dmarc_decides() {
    let keys = tempfile::tempdir().expect("tempdir");
    let (key, public) = openssl_key(keys.path());
    let spf_pass = || Answer::Txt(vec!["v=spf1 ip4:127.0.0.1 -all".into()]);
    let spf_fail = || Answer::Txt(vec!["v=spf1 -all".into()]);
    let dmarc = |p: &str| Answer::Txt(vec![format!("v=DMARC1; p={p}")]);
    let dns = Dns::start(&[
        ("1.0.0.127.in-addr.arpa", Answer::Ptr("mail.sender.test.")),
        ("mail.sender.test", Answer::A("127.0.0.1".parse().expect("ip"))),
        ("sender.test", spf_pass()),
        ("_dmarc.sender.test", dmarc("reject")),
        ("s1._domainkey.sender.test", Answer::Txt(public.clone())),
        ("reject.test", spf_fail()),
        ("_dmarc.reject.test", dmarc("reject")),
        ("s1._domainkey.reject.test", Answer::Txt(public.clone())),
        ("quarantine.test", spf_fail()),
        ("_dmarc.quarantine.test", dmarc("quarantine")),
        ("s1._domainkey.quarantine.test", Answer::Txt(public.clone())),
        ("later.test", spf_pass()),
        ("_dmarc.later.test", dmarc("reject")),
    ]);
    // A spam plugin that writes the typed results it is given into a header.
    let setup = Setup::new(&format!(
        "[dns]\nnameservers = [\"{}\"]\ntimeout = \"1s\"\n[limits]\nexempt = []\n[authentication]\ntimeout = \"3s\"\n\
         [[plugin]]\nhook = \"spam\"\npath = \"{}\"\n[plugin.config]\nmode = \"facts\"\n",
        dns.addr,
        built_plugin("hostile.wasm").display()
    ));
    let mut daemon = setup.start();
    let mx = daemon.addr("mx");
    let signed = |domain: &str, text: &str| dkimpy(SIGN, &key, ("s1", domain), text);
    let inbox = setup.maildir("alice");
    let mut delivered = 0;
    let mut next_copy = |folder: &std::path::Path, subject: &str| -> String {
        delivered += 1;
        copy_with_subject(folder, subject)
    };

    // Signed by dkimpy, SPF pass, aligned: every method passes, in one header of ours.
    let reply = send_on_mx(
        mx,
        "<bob@sender.test>",
        &signed("sender.test", &message("bob@sender.test", "genuine")),
    );
    assert!(reply.starts_with("250"), "{reply}");
    let copy = next_copy(&inbox, "genuine");
    let results = results_of(&copy);
    assert_eq!(results.len(), 1, "{copy}");
    let results = results[0];
    assert!(
        results.starts_with("Authentication-Results: example.org;"),
        "{results}"
    );
    for method in ["iprev=pass", "spf=pass", "dkim=pass", "dmarc=pass"] {
        assert!(results.contains(method), "{method} missing: {results}");
    }
    assert!(results.contains("header.i=@sender.test header.s=s1"), "{results}");
    assert!(
        results.contains("(example.org: domain of bob@sender.test designates 127.0.0.1"),
        "{results}"
    );
    // The plugins after the checks got the same results, typed, with their domains.
    assert!(
        copy.contains(
            "X-Facts-Auth: iprev=pass/- spf=pass/sender.test dkim=pass/sender.test arc=none/- dmarc=pass/sender.test"
        ),
        "{copy}"
    );

    // Signed for a p=reject domain whose SPF fails: DKIM alone carries DMARC.
    let reply = send_on_mx(
        mx,
        "<bob@reject.test>",
        &signed("reject.test", &message("bob@reject.test", "dkim-only")),
    );
    assert!(reply.starts_with("250"), "{reply}");
    let copy = next_copy(&inbox, "dkim-only");
    let results = results_of(&copy)[0];
    assert!(
        results.contains("spf=fail") && results.contains("dkim=pass") && results.contains("dmarc=pass"),
        "{results}"
    );

    // The body changed after signing: dkim=fail, and p=reject refuses it in the session.
    let tampered = signed("reject.test", &message("bob@reject.test", "tampered"))
        .replace("A message about", "A changed message about");
    let reply = send_on_mx(mx, "<bob@reject.test>", &tampered);
    assert!(
        reply.starts_with("550 5.7.1") && reply.contains("DMARC"),
        "{reply}"
    );
    // With p=quarantine, it goes to Junk.
    let tampered = signed("quarantine.test", &message("bob@quarantine.test", "quarantined"))
        .replace("A message about", "A changed message about");
    let reply = send_on_mx(mx, "<bob@quarantine.test>", &tampered);
    assert!(reply.starts_with("250"), "{reply}");
    let copy = next_copy(&setup.junk("alice"), "quarantined");
    let results = results_of(&copy)[0];
    // A body changed after signing is reported as OpenDKIM does: the signature is not
    // counted (RFC 6376 6.3, PERMFAIL), "neutral (body hash did not verify)".
    assert!(
        results.contains("dkim=neutral (body hash did not verify)"),
        "{results}"
    );
    assert!(
        results.contains("dmarc=fail") && results.contains("policy.dmarc=quarantine"),
        "{results}"
    );

    // A forged From: of a p=reject domain, unsigned, SPF -all: refused.
    let reply = send_on_mx(mx, "<ceo@reject.test>", &message("ceo@reject.test", "forged"));
    assert!(reply.starts_with("550 5.7.1"), "{reply}");
    // Two From fields: refused, whatever else passes.
    let two = message("bob@sender.test", "two-froms").replacen("From:", "From: eve@sender.test\r\nFrom:", 1);
    let reply = send_on_mx(mx, "<bob@sender.test>", &two);
    assert!(
        reply.starts_with("550 5.7.1") && reply.contains("From"),
        "{reply}"
    );

    // Authentication-Results claiming to be ours arrive forged: left out. Another
    // server's stay.
    let forged = format!(
        "Authentication-Results: example.org; dkim=pass header.d=bank.test\r\n\
         Authentication-Results: (comment) mx.example.org; spf=pass\r\n\
         Authentication-Results: elsewhere.test; spf=pass\r\n{}",
        message("bob@sender.test", "forged-results")
    );
    let reply = send_on_mx(mx, "<bob@sender.test>", &forged);
    assert!(reply.starts_with("250"), "{reply}");
    let copy = next_copy(&inbox, "forged-results");
    let results = results_of(&copy);
    assert_eq!(results.len(), 2, "{copy}");
    assert!(
        results
            .iter()
            .any(|r| r.starts_with("Authentication-Results: elsewhere.test;")),
        "{copy}"
    );
    assert!(
        !copy.contains("bank.test") && !copy.contains("mx.example.org; spf"),
        "{copy}"
    );
    assert!(copy.ends_with("A message about forged-results.\r\n"), "{copy}");

    // The DNS server stops: the message is deferred (451), never lost or refused; once it
    // answers again, the same message is accepted.
    dns.silent.store(true, std::sync::atomic::Ordering::SeqCst);
    let later = message("bob@later.test", "dns-down");
    let reply = send_on_mx(mx, "<bob@later.test>", &later);
    assert!(reply.starts_with("451 4.7.0"), "{reply}");
    dns.silent.store(false, std::sync::atomic::Ordering::SeqCst);
    let reply = send_on_mx(mx, "<bob@later.test>", &later);
    assert!(reply.starts_with("250"), "{reply}");
    let copy = next_copy(&inbox, "dns-down");
    assert!(results_of(&copy)[0].contains("dmarc=pass"), "{copy}");

    // A bounce (MAIL FROM:<>): SPF is checked for the HELO name.
    let reply = send_on_mx(mx, "<>", &message("mailer-daemon@elsewhere.test", "bounce"));
    assert!(reply.starts_with("250"), "{reply}");
    let copy = next_copy(&inbox, "bounce");
    assert!(
        results_of(&copy)[0].contains("smtp.helo=mail.sender.test"),
        "{copy}"
    );

    // dmarc = "report": the forged From is delivered, and the header says it failed.
    setup.edit_config("[authentication]", "[authentication]\ndmarc = \"report\"");
    daemon.signal("HUP");
    daemon.wait_log("configuration reloaded");
    let reply = send_on_mx(mx, "<ceo@reject.test>", &message("ceo@reject.test", "reported"));
    assert!(reply.starts_with("250"), "{reply}");
    let copy = next_copy(&inbox, "reported");
    let results = results_of(&copy)[0];
    assert!(
        results.contains("dmarc=fail") && results.contains("policy.dmarc=reject"),
        "{results}"
    );
    assert!(delivered >= 6);
    // What was refused was neither delivered nor bounced: nothing of it anywhere, and
    // nothing left in the queue.
    for folder in [setup.maildir("alice"), setup.junk("alice")] {
        for file in new_files(&folder) {
            let copy = std::fs::read_to_string(&file).expect("read");
            for refused in [
                "Subject: tampered\r\n",
                "Subject: forged\r\n",
                "Subject: two-froms\r\n",
            ] {
                assert!(!copy.contains(refused), "{refused:?} was delivered: {copy}");
            }
        }
    }
    wait_spool_empty(&setup.data());
    assert!(
        daemon.log().iter().any(|l| l.contains("authentication checked")),
        "the results are logged"
    );
}

#[test]
fn forged_results_are_removed_on_submission_too() {
    let setup = Setup::new("");
    let daemon = setup.start();
    let message = "Authentication-Results: example.org; dkim=pass\r\nFrom: alice@example.org\r\n\
                   To: alice@example.org\r\nSubject: submitted\r\n\r\nbody\r\n";
    submit_as_alice(&setup, daemon.addr("submission"), "<alice@example.org>", message);
    let text = copy_with_subject(&setup.maildir("alice"), "submitted");
    assert!(
        !text.to_ascii_lowercase().contains("authentication-results"),
        "{text}"
    );
    assert!(
        text.contains("From: alice@example.org\r\n") && text.contains("\r\n\r\nbody\r\n"),
        "{text}"
    );
}

#[test]
fn a_reload_rotates_the_signing_keys() {
    let setup = Setup::new("");
    let old = keygen(&setup, "old", "ed25519");
    let new = keygen(&setup, "new", "rsa");
    let config = std::fs::read_to_string(setup.config()).expect("config");
    std::fs::write(setup.config(), format!("{config}\n{}\n", old.section)).expect("config");
    let mut daemon = setup.start();
    let submission = daemon.addr("submission");
    let send = |subject: &str| -> String {
        let message =
            format!("From: alice@example.org\r\nTo: alice@example.org\r\nSubject: {subject}\r\n\r\nx\r\n");
        submit_as_alice(&setup, submission, "<alice@example.org>", &message);
        copy_with_subject(&setup.maildir("alice"), subject)
    };
    let selectors = |copy: &str| -> Vec<String> {
        copy.split("\r\n")
            .filter(|l| l.starts_with("DKIM-Signature:"))
            .map(|l| {
                let s = l.split("s=").nth(1).unwrap_or_default();
                s.split(';').next().unwrap_or_default().trim().to_string()
            })
            .collect()
    };
    assert_eq!(selectors(&send("before")), ["old"]);
    // Step 2 of a rotation: both keys sign.
    std::fs::write(
        setup.config(),
        format!("{config}\n{}\n\n{}\n", old.section, new.section),
    )
    .expect("config");
    daemon.signal("HUP");
    daemon.wait_log_count("configuration reloaded", 1);
    let mut both = selectors(&send("during"));
    both.sort();
    assert_eq!(both, ["new", "old"]);
    // Step 3: the old key is gone.
    std::fs::write(setup.config(), format!("{config}\n{}\n", new.section)).expect("config");
    daemon.signal("HUP");
    daemon.wait_log_count("configuration reloaded", 2);
    assert_eq!(selectors(&send("after")), ["new"]);
}

#[test]
fn a_signed_message_relayed_through_a_real_postfix_still_verifies() {
    let python = verifier_python();
    portcullis_testkit::postfix::ensure_installed();
    let postfix =
        portcullis_testkit::postfix::Postfix::start("example.net", |_| (String::new(), String::new()));
    let setup = Setup::new(&format!(
        "[delivery.routes]\n\"example.net\" = \"{}\"\n",
        postfix.addr
    ));
    let key = keygen(&setup, "relay", "rsa");
    let config = std::fs::read_to_string(setup.config()).expect("config");
    std::fs::write(setup.config(), format!("{config}\n{}\n", key.section)).expect("config");
    let dns = Dns::start(&[("relay._domainkey.example.org", Answer::Txt(key.strings))]);
    let daemon = setup.start();
    let message = "From: Alice <alice@example.org>\r\nTo: bob@example.net\r\nSubject: across\r\n\
                   Date: Tue, 01 Dec 2026 10:00:00 +0000\r\nMessage-ID: <across.1@example.org>\r\n\r\n\
                   Signed here, delivered by Postfix.\r\n";
    submit_as_alice(&setup, daemon.addr("submission"), "<bob@example.net>", message);
    let copy = wait_for_mail(postfix.maildir().parent().expect("mailbox"), 1).remove(0);
    let text = std::fs::read_to_string(&copy).expect("read");
    assert!(
        text.contains("DKIM-Signature:") && text.contains("Signed here"),
        "{text}"
    );
    // Postfix's Maildir files end lines with LF alone (the Unix form); the message as it
    // travelled, and as DKIM signs it, has CRLF.
    let wire = setup.dir.path().join("from-postfix.eml");
    std::fs::write(&wire, text.replace("\r\n", "\n").replace('\n', "\r\n")).expect("write");
    let out = Command::new(&python)
        .args(["-c", VERIFY])
        .arg(&wire)
        .arg(dns.addr.port().to_string())
        .output()
        .expect("run dkimpy");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["pass"],
        "dkimpy on Postfix's copy: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Forwards the message in `path` as a mailing list would: records the forwarder's own
/// results, then seals it with ARC (dkimpy). Arguments: key, selector, sealer domain, path.
const ARC_SEAL: &str = r#"
import sys, dkim
key, selector, domain, path = sys.argv[1:5]
message = open(path, "rb").read()
message = ("Authentication-Results: %s; dkim=pass header.d=reject.test; spf=pass smtp.mailfrom=ceo@reject.test\r\n" % domain).encode() + message
seal = dkim.arc_sign(message, selector.encode(), domain.encode(), open(key, "rb").read(), domain.encode())
assert seal, "dkimpy made no ARC set"
sys.stdout.buffer.write(b"".join(seal) + message)
"#;

#[test]
fn an_arc_seal_of_a_trusted_forwarder_overrides_a_dmarc_failure() {
    let keys = tempfile::tempdir().expect("tempdir");
    let (key, public) = openssl_key(keys.path());
    let dns = Dns::start(&[
        ("reject.test", Answer::Txt(vec!["v=spf1 -all".into()])),
        (
            "_dmarc.reject.test",
            Answer::Txt(vec!["v=DMARC1; p=reject".into()]),
        ),
        ("arc._domainkey.lists.test", Answer::Txt(public.clone())),
        ("arc._domainkey.other.test", Answer::Txt(public)),
    ]);
    let setup = Setup::new(&format!(
        "[dns]\nnameservers = [\"{}\"]\n[limits]\nexempt = []\n[authentication]\ntrusted-arc-sealers = [\"lists.test\"]\n",
        dns.addr
    ));
    let daemon = setup.start();
    let sealed = |sealer: &str, subject: &str| {
        dkimpy(
            ARC_SEAL,
            &key,
            ("arc", sealer),
            &message("ceo@reject.test", subject),
        )
    };
    // Through a trusted list: DMARC fails (the list is not the author), the seal vouches.
    let reply = send_on_mx(
        daemon.addr("mx"),
        "<bounce@lists.test>",
        &sealed("lists.test", "via-list"),
    );
    assert!(reply.starts_with("250"), "{reply}");
    let copy = copy_with_subject(&setup.maildir("alice"), "via-list");
    let ours = results_of(&copy)
        .into_iter()
        .find(|r| r.starts_with("Authentication-Results: example.org;"))
        .unwrap_or_else(|| panic!("no results of ours: {copy}"));
    assert!(ours.contains("arc=pass"), "{ours}");
    assert!(
        ours.contains("dmarc=fail") && ours.contains("ARC sealed by trusted forwarder lists.test"),
        "{ours}"
    );
    // The same through a forwarder nobody trusts: refused, as without a seal.
    let reply = send_on_mx(
        daemon.addr("mx"),
        "<bounce@other.test>",
        &sealed("other.test", "via-other"),
    );
    assert!(reply.starts_with("550 5.7.1"), "{reply}");
}
