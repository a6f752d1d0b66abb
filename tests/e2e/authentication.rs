//! Mail authentication checked by an independent implementation: submitted mail signed
//! with keys from `portcullis dkim keygen`, verified by Python's dkimpy against the
//! records keygen printed, served by a real DNS server on loopback.

use std::process::Command;

use crate::dns::{Answer, Dns};
use crate::harness::*;

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
    let mut c = TlsRaw::connect(daemon.addr("submission"), &setup.cert_pem);
    let message = "From: Alice <alice@example.org>\r\nTo: alice@example.org\r\nSubject: signed\r\n\
                   Date: Tue, 01 Dec 2026 10:00:00 +0000\r\nMessage-ID: <signed.1@example.org>\r\n\r\n\
                   Signed on submission.\r\n";
    let reply = c.submit(
        "alice@example.org",
        "<alice@example.org>",
        &["<alice@example.org>"],
        message,
    );
    assert!(reply.starts_with("250"), "{reply}");
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
    let reply = c.send_mail("<alice@example.org>", &["<alice@example.org>"], other);
    assert!(reply.starts_with("250"), "{reply}");
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
    let out = Command::new(binary())
        .args(["check-config", "--config"])
        .arg(setup.config())
        .output()
        .expect("run check-config");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("dkim") && stderr.contains("missing.pem"),
        "{stderr}"
    );
}
