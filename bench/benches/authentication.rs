//! The cost per message of each mail authentication method and of DKIM signing, native,
//! with the library the daemon uses (mail-auth) on the daemon's resolver settings, asking a
//! DNS server on loopback whose answers the resolver caches (as a local caching resolver's
//! would be): what is left is the work of the method itself.
//!
//! `cargo bench -p portcullis-bench --bench authentication`

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::process::Command;

use criterion::{Criterion, criterion_group, criterion_main};
use mail_auth::common::crypto::{Ed25519Key, RsaKey, Sha256};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::DkimSigner;
use mail_auth::dmarc::verify::DmarcParameters;
use mail_auth::spf::verify::SpfParameters;
use mail_auth::{AuthenticatedMessage, MessageAuthenticator};
use portcullis_outbound::{DnsSettings, Resolver};
use portcullis_testkit::dns::{Answer, Dns};
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;

const CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// Runs `openssl` with `args`; its standard output.
fn openssl(args: &[&str], dir: &Path) -> Vec<u8> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

/// A DKIM TXT record's character-strings.
fn record(key_type: &str, public: &[u8]) -> Answer {
    use base64::Engine as _;
    let text = format!(
        "v=DKIM1; k={key_type}; p={}",
        base64::engine::general_purpose::STANDARD.encode(public)
    );
    Answer::Txt(
        text.as_bytes()
            .chunks(255)
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect(),
    )
}

/// A 10 KiB message from `bob@sender.test`.
fn message() -> Vec<u8> {
    let mut m = b"From: Bob <bob@sender.test>\r\nTo: alice@example.org\r\nSubject: bench\r\n\
                  Date: Tue, 01 Dec 2026 10:00:00 +0000\r\nMessage-ID: <bench@sender.test>\r\n\r\n"
        .to_vec();
    while m.len() < 10 * 1024 {
        m.extend_from_slice(b"All work and no play makes a message of ten kibibytes.\r\n");
    }
    m
}

/// The keys (made by OpenSSL) and the DNS server publishing them with SPF, DMARC and PTR.
struct Keys {
    /// Keeps the key files.
    _dir: tempfile::TempDir,
    dns: Dns,
    rsa: DkimSigner<RsaKey<Sha256>, mail_auth::dkim::Done>,
    ed: DkimSigner<Ed25519Key, mail_auth::dkim::Done>,
}

fn keys() -> Keys {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    openssl(&["genrsa", "-out", "rsa.pem", "2048"], d);
    openssl(&["genpkey", "-algorithm", "ed25519", "-out", "ed.pem"], d);
    let rsa_public = openssl(&["pkey", "-in", "rsa.pem", "-pubout", "-outform", "DER"], d);
    let ed_public = openssl(&["pkey", "-in", "ed.pem", "-pubout", "-outform", "DER"], d);
    // An Ed25519 SubjectPublicKeyInfo ends with the 32-octet key DKIM publishes.
    let ed_raw = ed_public[ed_public.len() - 32..].to_vec();
    let dns = Dns::start(&[
        ("1.0.0.127.in-addr.arpa", Answer::Ptr("mail.sender.test.")),
        ("mail.sender.test", Answer::A(Ipv4Addr::LOCALHOST)),
        (
            "sender.test",
            Answer::Txt(vec!["v=spf1 ip4:127.0.0.1 -all".into()]),
        ),
        (
            "_dmarc.sender.test",
            Answer::Txt(vec!["v=DMARC1; p=reject".into()]),
        ),
        ("rs._domainkey.sender.test", record("rsa", &rsa_public)),
        ("ed._domainkey.sender.test", record("ed25519", &ed_raw)),
    ]);
    let pem = |name: &str| std::fs::read(d.join(name)).expect("key");
    let rsa = RsaKey::<Sha256>::from_key_der(PrivateKeyDer::from_pem_slice(&pem("rsa.pem")).expect("pem"))
        .expect("rsa key");
    let PrivateKeyDer::Pkcs8(ed) = PrivateKeyDer::from_pem_slice(&pem("ed.pem")).expect("pem") else {
        panic!("openssl wrote no PKCS#8 key");
    };
    let ed = Ed25519Key::from_pkcs8_maybe_unchecked_der(ed.secret_pkcs8_der()).expect("ed25519 key");
    let headers = ["From", "From", "To", "Subject", "Date", "Message-ID"];
    Keys {
        _dir: dir,
        dns,
        rsa: DkimSigner::from_key(rsa)
            .domain("sender.test")
            .selector("rs")
            .headers(headers),
        ed: DkimSigner::from_key(ed)
            .domain("sender.test")
            .selector("ed")
            .headers(headers),
    }
}

fn authentication(c: &mut Criterion) {
    let Keys { _dir, dns, rsa, ed } = keys();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let resolver = {
        let _enter = runtime.enter();
        Resolver::new(&DnsSettings {
            nameservers: vec![dns.addr],
            ..DnsSettings::default()
        })
        .expect("resolver")
    };
    let auth = MessageAuthenticator(resolver.hickory().clone());
    let plain = message();

    let mut sign = c.benchmark_group("dkim sign, 10 KiB");
    sign.bench_function("rsa-2048", |b| b.iter(|| rsa.sign(&plain).expect("sign")));
    sign.bench_function("ed25519", |b| b.iter(|| ed.sign(&plain).expect("sign")));
    sign.finish();

    let signed = |signature: String| [signature.as_bytes(), &plain].concat();
    let by_rsa = signed(rsa.sign(&plain).expect("sign").to_header());
    let by_ed = signed(ed.sign(&plain).expect("sign").to_header());
    let mut verify = c.benchmark_group("verify, 10 KiB, answers cached");
    verify.bench_function("iprev", |b| {
        b.to_async(&runtime)
            .iter(|| async { auth.verify_iprev(CLIENT).await })
    });
    verify.bench_function("spf", |b| {
        b.to_async(&runtime).iter(|| async {
            auth.verify_spf(SpfParameters::verify_mail_from(
                CLIENT,
                "mail.sender.test",
                "mx.example.org",
                "bob@sender.test",
            ))
            .await
        })
    });
    for (name, bytes) in [
        ("dkim rsa-2048 (parse + verify)", &by_rsa),
        ("dkim ed25519 (parse + verify)", &by_ed),
    ] {
        verify.bench_function(name, |b| {
            b.to_async(&runtime).iter(|| async {
                let parsed = AuthenticatedMessage::parse(bytes).expect("parse");
                let found = auth.verify_dkim(&parsed).await;
                assert!(found.iter().all(|d| *d.result() == mail_auth::DkimResult::Pass));
            })
        });
    }
    verify.bench_function("arc (no chain; parse)", |b| {
        b.to_async(&runtime).iter(|| async {
            let parsed = AuthenticatedMessage::parse(&by_rsa).expect("parse");
            auth.verify_arc(&parsed).await.result().clone()
        })
    });
    let parsed = AuthenticatedMessage::parse(&by_rsa).expect("parse");
    let dkim = runtime.block_on(auth.verify_dkim(&parsed));
    let spf = runtime.block_on(auth.verify_spf(SpfParameters::verify_mail_from(
        CLIENT,
        "mail.sender.test",
        "mx.example.org",
        "bob@sender.test",
    )));
    verify.bench_function("dmarc (given spf and dkim)", |b| {
        b.to_async(&runtime).iter(|| async {
            let out = auth
                .verify_dmarc(DmarcParameters::new(&parsed, &dkim, "sender.test", &spf))
                .await;
            assert_eq!(out.result(), mail_auth::DmarcResult::Pass);
        })
    });
    verify.finish();
}

criterion_group!(benches, authentication);
criterion_main!(benches);
