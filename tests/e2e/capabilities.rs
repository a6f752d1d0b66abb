//! Contract 0.2.0 on the real daemon: the shipped `clamav` plugin against a real clamd over
//! a granted socket, the sandbox around granted DNS and connections, the new facts, and a
//! plugin built against 0.1.0 still served as before beside 0.2.0 ones.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine as _;
use portcullis_testkit::clamd::{Clamd, TEST_SIGNATURE, TEST_SIGNATURE_NAME};

use crate::harness::*;

/// A message with `content` in a base64 attachment (where clamd's mail scanner decodes it).
fn with_attachment(subject: &str, content: &[u8]) -> String {
    let encoded = base64::engine::general_purpose::STANDARD.encode(content);
    let encoded = encoded
        .as_bytes()
        .chunks(76)
        .map(|line| std::str::from_utf8(line).expect("base64 is ASCII"))
        .collect::<Vec<_>>()
        .join("\r\n");
    format!(
        "From: carol@far.example\r\nTo: alice@example.org\r\nSubject: {subject}\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n--b1\r\nContent-Type: text/plain\r\n\r\n\
         see attached\r\n--b1\r\nContent-Type: application/octet-stream; name=\"a.bin\"\r\n\
         Content-Transfer-Encoding: base64\r\n\r\n{encoded}\r\n--b1--\r\n"
    )
}

fn infected(subject: &str) -> String {
    with_attachment(subject, &[b"before ", TEST_SIGNATURE, b" after"].concat())
}

/// Sends `message` from carol@far.example to alice over MX; the reply to its final dot.
fn mx_send(daemon: &Daemon, message: &str) -> String {
    let mut c = Raw::connect(daemon.addr("mx"));
    assert!(c.cmd("EHLO client.far.example").starts_with("250"));
    assert!(c.cmd("MAIL FROM:<carol@far.example>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<alice@example.org>").starts_with("250"));
    assert!(c.cmd("DATA").starts_with("354"));
    c.cmd(&format!("{message}."))
}

/// A setup whose config ends with `plugins`.
fn setup_with(plugins: impl FnOnce(&Setup) -> String) -> Setup {
    let setup = Setup::new("");
    let extra = plugins(&setup);
    let config = std::fs::read_to_string(setup.config()).expect("config") + &extra;
    std::fs::write(setup.config(), config).expect("config");
    setup
}

fn clamav_section(setup: &Setup, grant: &str, address: &str, extra: &str) -> String {
    format!(
        r#"
[[plugin]]
hook = "virus"
path = "{path}"
timeout = "5s"
grant-connect = [{grant}]
[plugin.config]
address = "{address}"
{extra}
"#,
        path = setup.plugin("clamav.wasm").display(),
    )
}

/// A `milter` plugin on `hook`, granted the milter at `addr`.
fn milter_setup(hook: &str, addr: std::net::SocketAddr) -> Setup {
    setup_with(|s| {
        format!(
            "\n[[plugin]]\nhook = \"{hook}\"\npath = \"{path}\"\ntimeout = \"30s\"\ngrant-connect = [\"tcp:{addr}\"]\n\
             [plugin.config]\naddress = \"tcp:{addr}\"\nhostname = \"mx.example.org\"\n",
            path = s.plugin("milter.wasm").display()
        )
    })
}

#[test]
fn clamav_plugin_asks_a_real_clamd_on_both_pipelines() {
    let mut clamd = Clamd::start("10M");
    let socket = format!("unix:{}", clamd.socket.display());
    let setup = setup_with(|s| clamav_section(s, &format!("{socket:?}"), &socket, "max-size = 200000"));
    let said = checked(setup.config());
    assert!(
        said.contains("virus: clamav (clamav.wasm, portcullis:filter@0.2.0) may connect to unix:"),
        "{said}"
    );
    let mut daemon = setup.start();
    daemon.wait_log("plugin loaded");

    // MX: refused in the session with clamd's signature name; nothing kept, nothing bounced.
    let reply = mx_send(&daemon, &infected("mx infected"));
    assert!(reply.starts_with("554 5.7.1"), "{reply}");
    assert!(reply.contains(TEST_SIGNATURE_NAME), "{reply}");
    // A clean message is delivered.
    let reply = mx_send(&daemon, &with_attachment("mx clean", b"nothing to see"));
    assert!(reply.starts_with("250"), "{reply}");
    let delivered = wait_for_mail(&setup.maildir("alice"), 1);
    let text = std::fs::read_to_string(&delivered[0]).expect("read");
    assert!(text.contains("Subject: mx clean"), "{text}");
    // With the header the virus hook added to a clean message.
    assert!(text.contains("X-Virus-Scanned: ClamAV\r\n"), "{text}");

    // Submission: refused too, and the account is told.
    let mut c = TlsRaw::connect(daemon.addr("submission"), &setup.cert_pem);
    assert!(
        c.cmd(&format!(
            "AUTH PLAIN {}",
            base64_plain("alice@example.org", PASSWORD)
        ))
        .starts_with("235")
    );
    let reply = c.send_mail(
        "alice@example.org",
        &["bob@far.example"],
        &infected("submitted infected").replace("carol@far.example", "alice@example.org"),
    );
    assert!(reply.starts_with("554 5.7.1"), "{reply}");
    assert!(reply.contains(TEST_SIGNATURE_NAME), "{reply}");
    let mail = wait_for_mail(&setup.maildir("alice"), 2);
    let notice = mail
        .iter()
        .map(|p| std::fs::read_to_string(p).expect("read"))
        .find(|t| !t.contains("Subject: mx clean"))
        .expect("the notice");
    assert!(notice.contains(TEST_SIGNATURE_NAME), "{notice}");

    // Over the plugin's max-size: not scanned, so never clean: on-error (defer) answers 451.
    let large = with_attachment("large", &vec![b'x'; 300_000]);
    let reply = mx_send(&daemon, &large);
    assert!(reply.starts_with("451"), "{reply}");

    // clamd stopped: 451, nothing lost; back: the same message is accepted.
    clamd.stop();
    let message = with_attachment("while clamd was away", b"a clean attachment");
    let reply = mx_send(&daemon, &message);
    assert!(reply.starts_with("451 4.3.0"), "{reply}");
    daemon.wait_log("kind=\"failed\"");
    clamd.resume();
    let reply = mx_send(&daemon, &message);
    assert!(reply.starts_with("250"), "{reply}");
    wait_for_mail(&setup.maildir("alice"), 3);
    // Nothing bounced: the queue empties and alice holds exactly the three.
    wait_spool_empty(&setup.data());
    assert_eq!(new_files(&setup.maildir("alice")).len(), 3);

    // The milter plugin, on Debian's clamav-milter asking the same clamd (OnInfected
    // Reject): the test signature is refused with its reply, clean mail delivered with the
    // milter's headers.
    let milter = portcullis_testkit::clamav_milter::ClamavMilter::start(&clamd);
    let setup = milter_setup("spam", milter.addr);
    let mut daemon = setup.start();
    let reply = mx_send(&daemon, &infected("through the milter"));
    assert!(reply.starts_with("550"), "{reply}");
    daemon.wait_log("milter: 550");
    let reply = mx_send(&daemon, &with_attachment("milter clean", b"nothing to see"));
    assert!(reply.starts_with("250"), "{reply}");
    let delivered = wait_for_mail(&setup.maildir("alice"), 1);
    let text = std::fs::read_to_string(&delivered[0]).expect("read");
    assert!(text.contains("Subject: milter clean"), "{text}");
    assert!(text.contains("X-Virus-Status: Clean"), "{text}");
    daemon.wait_log("milter: accept");
    // The refused one is nowhere: not delivered, not bounced.
    wait_spool_empty(&setup.data());
    assert_eq!(new_files(&setup.maildir("alice")).len(), 1);
    drop(daemon);

    // The same component on the virus hook: the milter's refusal is the finding (554, named
    // by its reply), and its headers come with clean mail.
    let setup = milter_setup("virus", milter.addr);
    let mut daemon = setup.start();
    let reply = mx_send(&daemon, &infected("virus hook, rejected"));
    assert!(reply.starts_with("554 5.7.1"), "{reply}");
    assert!(
        reply.contains(&format!("Virus found: {TEST_SIGNATURE_NAME}")),
        "{reply}"
    );
    let reply = mx_send(&daemon, &with_attachment("virus hook clean", b"nothing to see"));
    assert!(reply.starts_with("250"), "{reply}");
    let delivered = wait_for_mail(&setup.maildir("alice"), 1);
    let text = std::fs::read_to_string(&delivered[0]).expect("read");
    assert!(text.contains("X-Virus-Status: Clean"), "{text}");
    assert!(text.contains("X-Virus-Scanned: "), "{text}");
    // The milter gone: an error, so on-error (defer) answers 451 and nothing is kept.
    drop(milter);
    let reply = mx_send(&daemon, &with_attachment("milter away", b"nothing to see"));
    assert!(reply.starts_with("451"), "{reply}");
    daemon.wait_log("kind=\"failed\"");
    wait_spool_empty(&setup.data());
    assert_eq!(new_files(&setup.maildir("alice")).len(), 1);
    drop(daemon);

    // A milter that quarantines (clamav-milter's default): infected on the virus hook.
    let milter = portcullis_testkit::clamav_milter::ClamavMilter::start_with(&clamd, "Quarantine");
    let setup = milter_setup("virus", milter.addr);
    let mut daemon = setup.start();
    let reply = mx_send(&daemon, &infected("virus hook, quarantined"));
    assert!(reply.starts_with("554 5.7.1"), "{reply}");
    daemon.wait_log("milter: quarantine");
    wait_spool_empty(&setup.data());
    assert!(new_files(&setup.maildir("alice")).is_empty());
}

#[test]
fn granted_connections_and_lookups_stay_inside_their_grants() {
    // A service the plugin is granted, and one beside it that it is not.
    let granted = TcpListener::bind("127.0.0.1:0").expect("bind");
    let other = TcpListener::bind("127.0.0.1:0").expect("bind");
    other.set_nonblocking(true).expect("nonblocking");
    let (granted_at, other_at) = (
        granted.local_addr().expect("addr"),
        other.local_addr().expect("addr"),
    );
    let setup = setup_with(|s| {
        let hostile = s.plugin("hostile.wasm");
        format!(
            r#"
# Reaches for an endpoint it was not granted.
[[plugin]]
name = "sneaky"
hook = "spam"
path = "{hostile}"
grant-connect = ["tcp:{granted_at}"]
[plugin.config]
mode = "connect"
endpoint = "tcp:{other_at}"

# Asks a thousand names.
[[plugin]]
name = "curious"
hook = "spam"
path = "{hostile}"
grant-dns = true
dns-lookups = 25
[plugin.config]
mode = "lookups"

# Was granted nothing at all.
[[plugin]]
name = "ungranted"
hook = "spam"
path = "{hostile}"
[plugin.config]
mode = "lookups"
"#,
            hostile = hostile.display()
        )
    });
    let said = checked(setup.config());
    assert!(
        said.contains(&format!(
            "spam: sneaky (hostile.wasm, portcullis:filter@0.2.0) may connect to tcp:{granted_at}"
        )),
        "{said}"
    );
    assert!(
        said.contains(
            "spam: curious (hostile.wasm, portcullis:filter@0.2.0) may look up DNS (25 lookups per call)"
        ),
        "{said}"
    );
    assert!(
        said.contains(
            "spam: ungranted (hostile.wasm, portcullis:filter@0.2.0) reaches nothing beyond the message"
        ),
        "{said}"
    );
    let mut daemon = setup.start();

    let reply = mx_send(&daemon, "Subject: reach\r\n\r\nhello\r\n");
    assert!(reply.starts_with("250"), "{reply}");
    let delivered = wait_for_mail(&setup.maildir("alice"), 1);
    let text = std::fs::read_to_string(&delivered[0]).expect("read");
    assert!(
        text.contains(&format!(
            "Denied(\"tcp:{other_at} is not granted to this plugin (grant-connect)\")"
        )),
        "{text}"
    );
    assert!(text.contains("X-Lookups: 25\r\n"), "stopped at its cap: {text}");
    assert!(
        text.contains("X-Lookups-Stopped: denied: over the limit of 25 lookups per call (dns-lookups)"),
        "{text}"
    );
    assert!(
        text.contains("X-Lookups: 0\r\n"),
        "no lookup without the grant: {text}"
    );
    assert!(
        text.contains("X-Lookups-Stopped: denied: DNS is not granted to this plugin (grant-dns)"),
        "{text}"
    );
    daemon.wait_log("capability refused");
    // No socket ever reached the endpoint that was not granted.
    assert!(
        matches!(other.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the ungranted endpoint was connected to"
    );
    drop(granted);
}

#[test]
fn a_connection_held_past_the_deadline_is_cut_and_closed() {
    let service = TcpListener::bind("127.0.0.1:0").expect("bind");
    let at = service.local_addr().expect("addr");
    let setup = setup_with(|s| {
        format!(
            r#"
[[plugin]]
hook = "spam"
path = "{hostile}"
timeout = "1s"
grant-connect = ["tcp:{at}"]
[plugin.config]
mode = "hold"
endpoint = "tcp:{at}"
"#,
            hostile = s.plugin("hostile.wasm").display()
        )
    });
    let mut daemon = setup.start();
    let sent = Instant::now();
    let client = std::thread::spawn({
        let mx = daemon.addr("mx");
        move || {
            let mut c = Raw::connect(mx);
            assert!(c.cmd("EHLO client.far.example").starts_with("250"));
            assert!(c.cmd("MAIL FROM:<carol@far.example>").starts_with("250"));
            assert!(c.cmd("RCPT TO:<alice@example.org>").starts_with("250"));
            assert!(c.cmd("DATA").starts_with("354"));
            c.cmd("Subject: hold\r\n\r\nhello\r\n.")
        }
    });
    let (mut held, _) = service.accept().expect("the plugin connects");
    // The plugin never writes nor reads; the host closes the connection at the deadline.
    held.set_read_timeout(Some(PATIENCE)).expect("timeout");
    let mut buf = [0u8; 16];
    let n = held.read(&mut buf).expect("end of file, not a timeout");
    assert_eq!(n, 0, "the plugin sent nothing");
    let closed_after = sent.elapsed();
    assert!(
        closed_after < Duration::from_secs(10),
        "closed after {closed_after:?}"
    );
    let reply = client.join().expect("client");
    assert!(reply.starts_with("451 4.3.0"), "{reply}");
    daemon.wait_log("kind=\"timeout\"");
    let _ = held.write_all(b"late");
}

#[test]
fn a_plugin_built_against_0_1_0_runs_beside_0_2_0_ones_and_sees_the_facts_it_knew() {
    let setup = setup_with(|s| {
        format!(
            r#"
[[plugin]]
hook = "virus"
path = "{virus}"

[[plugin]]
hook = "spam"
path = "{legacy}"

[[plugin]]
name = "facts"
hook = "spam"
path = "{hostile}"
[plugin.config]
mode = "facts"
"#,
            virus = s.plugin("virus_signatures.wasm").display(),
            legacy = s.plugin("legacy.wasm").display(),
            hostile = s.plugin("hostile.wasm").display()
        )
    });
    let said = checked(setup.config());
    assert!(
        said.contains("spam: legacy (legacy.wasm, portcullis:filter@0.1.0)"),
        "{said}"
    );
    assert!(
        said.contains("spam: facts (hostile.wasm, portcullis:filter@0.2.0)"),
        "{said}"
    );
    let mut daemon = setup.start();
    daemon.wait_log("contract=\"0.1.0\"");

    let mut c = Raw::connect(daemon.addr("mx"));
    assert!(c.cmd("EHLO client.far.example").starts_with("250"));
    assert!(
        c.cmd("MAIL FROM:<carol@far.example> BODY=8BITMIME SIZE=300 RET=HDRS ENVID=q1")
            .starts_with("250")
    );
    assert!(
        c.cmd("RCPT TO:<alice@example.org> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;alice@example.org")
            .starts_with("250")
    );
    assert!(c.cmd("DATA").starts_with("354"));
    let reply = c.cmd("Subject: both\r\n\r\nhello\r\n.");
    assert!(reply.starts_with("250"), "{reply}");
    let queued = reply.split_whitespace().last().expect("the queue id").to_string();
    let delivered = wait_for_mail(&setup.maildir("alice"), 1);
    let text = std::fs::read_to_string(&delivered[0]).expect("read");
    // What 0.1.0 told it, as before.
    for expected in [
        "X-Legacy-Contract: 0.1.0",
        "X-Legacy-Client: 127.0.0.1",
        "X-Legacy-Rcpt: alice@example.org",
    ] {
        assert!(text.contains(expected), "{expected}: {text}");
    }
    // What 0.2.0 adds.
    let mx = daemon.addr("mx");
    for expected in [
        format!("X-Facts-Listener: mx {mx}"),
        "X-Facts-Mail: size=300 body=8BITMIME smtputf8=false ret=HDRS envid=q1".to_string(),
        "X-Facts-Rcpt: notify=SUCCESS,FAILURE orcpt=rfc822;alice@example.org".to_string(),
        // The reverse name of a loopback client is `localhost` by RFC 6761 (the resolver
        // answers it without asking; host/outbound/tests/reverse.rs asks a DNS server).
        "X-Facts-Reverse: localhost confirmed=true".to_string(),
        // The id the 250 names, before the message was accepted.
        format!("X-Facts-Queue-Id: {queued}"),
        // Every plugin before it on this message, the virus hook's first.
        "X-Facts-Earlier: virus:virus_signatures=accept/-/failed=false spam:legacy=tag/1.5/failed=false"
            .to_string(),
        // The mail authentication checks, typed: the test's DNS server knows nothing.
        "X-Facts-Auth: iprev=pass/- spf=none/far.example dkim=none/- arc=none/- dmarc=permerror/-"
            .to_string(),
    ] {
        assert!(text.contains(&expected), "{expected}: {text}");
    }
    let port = text
        .lines()
        .find_map(|l| l.strip_prefix("X-Facts-Client-Port: "))
        .and_then(|p| p.trim().parse::<u16>().ok())
        .expect("the client's port");
    assert_ne!(port, 0);

    // Its refusals read as they did.
    let reply = mx_send(&daemon, "Subject: legacy-reject please\r\n\r\nhello\r\n");
    assert!(
        reply.starts_with("550 5.7.1 refused by a 0.1.0 plugin"),
        "{reply}"
    );
}

/// Sends `message` over MX from `source` (a loopback address) with Python's smtplib; prints
/// the reply to the final dot, whether it accepted or refused.
const SEND_FROM: &str = r#"
import smtplib, sys
port, source, message = int(sys.argv[1]), sys.argv[2], sys.argv[3]
with smtplib.SMTP("127.0.0.1", port, source_address=(source, 0), timeout=30) as s:
    s.ehlo("client.far.example")
    s.mail("carol@far.example")
    s.rcpt("alice@example.org")
    try:
        code, text = s.data(message.encode())
    except smtplib.SMTPDataError as e:
        code, text = e.smtp_code, e.smtp_error
    print(code, text.decode())
"#;

/// Sends a message over MX inside STARTTLS, presenting the certificate and key in the
/// files named (or none when they are `-`); prints the reply to the final dot.
const SEND_WITH_CERTIFICATE: &str = r#"
import smtplib, ssl, sys
port, cert, key, subject = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
context = ssl.create_default_context()
context.check_hostname = False
context.verify_mode = ssl.CERT_NONE
if cert != "-":
    context.load_cert_chain(cert, key)
with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
    s.ehlo("client.far.example")
    s.starttls(context=context)
    s.ehlo("client.far.example")
    refused = s.sendmail("carol@far.example", ["alice@example.org"],
                         f"From: carol@far.example\r\nSubject: {subject}\r\n\r\nhello\r\n")
    print("250 sent" if not refused else f"refused {refused}")
"#;

#[test]
fn a_client_certificate_the_host_asked_for_is_a_fact_for_the_plugins() {
    let setup = setup_with(|s| {
        format!(
            "\n[[plugin]]\nname = \"facts\"\nhook = \"spam\"\npath = \"{}\"\n[plugin.config]\nmode = \"facts\"\n",
            s.plugin("hostile.wasm").display()
        )
    });
    setup.edit_config("[tls]\n", "[tls]\nask-client-certificate = true\n");
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key) = (dir.path().join("client.pem"), dir.path().join("client.key"));
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ])
        .args([
            "-days",
            "2",
            "-subj",
            "/O=Far Example/CN=client.far.example",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl");
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let mut daemon = setup.start();
    let port = daemon.addr("mx").port().to_string();
    let send =
        |cert: &str, key: &str, subject: &str| python(SEND_WITH_CERTIFICATE, &[&port, cert, key, subject]);
    let (cert, key) = (cert.to_str().expect("utf-8"), key.to_str().expect("utf-8"));

    // With a certificate: its subject reaches the plugin and the log.
    assert!(send(cert, key, "with").contains("250"));
    // Asked, a client without one goes on as before.
    assert!(send("-", "-", "without").contains("250"));
    let delivered = wait_for_mail(&setup.maildir("alice"), 2);
    let texts: Vec<String> = delivered
        .iter()
        .map(|p| std::fs::read_to_string(p).expect("read"))
        .collect();
    let facts = |subject: &str| {
        let text = texts
            .iter()
            .find(|t| t.contains(&format!("Subject: {subject}")))
            .expect("delivered");
        text.lines()
            .find_map(|l| l.strip_prefix("X-Facts-Tls: "))
            .map(str::to_string)
            .unwrap_or_else(|| panic!("no X-Facts-Tls: {text}"))
    };
    let with = facts("with");
    assert!(
        with.starts_with("TLSv1.3 peer=")
            && with.contains("CN=client.far.example")
            && with.contains("O=Far Example"),
        "{with}"
    );
    assert_eq!(facts("without"), "TLSv1.3 peer=-");
    daemon.wait_log("the client presented a certificate");
}

fn send_from(daemon: &Daemon, source: &str, message: &str) -> String {
    let port = daemon.addr("mx").port().to_string();
    python(SEND_FROM, &[&port, source, message]).trim().to_string()
}

#[test]
fn dnsbl_plugin_refuses_listed_clients_and_domains_through_the_granted_resolver() {
    use portcullis_testkit::dns::{Answer, Dns};
    let ip = |s: &str| Answer::A(s.parse().expect("ip"));
    let dns = Dns::start(&[
        // 127.0.0.1 is listed, with a reason; 127.0.0.2 is not.
        ("1.0.0.127.bl.test", ip("127.0.0.2")),
        (
            "1.0.0.127.bl.test",
            Answer::Txt(vec!["Listed for testing, see https://bl.test/".into()]),
        ),
        // A list answering its error code ("queries refused"): never a listing.
        ("1.0.0.127.broken.test", ip("127.255.255.254")),
        ("2.0.0.127.broken.test", ip("127.255.255.254")),
        // A domain list knowing one link domain.
        ("evil.test.dbl.test", ip("127.0.1.2")),
    ]);
    let setup = Setup::new(&format!("[dns]\nnameservers = [\"{}\"]\n", dns.addr));
    let section = format!(
        r#"
[[plugin]]
hook = "spam"
path = "{path}"
grant-dns = true
[plugin.config]
zones = ["broken.test", "bl.test"]
domain-zones = ["dbl.test"]
action = "reject"
"#,
        path = setup.plugin("dnsbl.wasm").display()
    );
    let config = std::fs::read_to_string(setup.config()).expect("config") + &section;
    std::fs::write(setup.config(), config).expect("config");
    let said = checked(setup.config());
    assert!(
        said.contains(
            "spam: dnsbl (dnsbl.wasm, portcullis:filter@0.2.0) may look up DNS (100 lookups per call)"
        ),
        "{said}"
    );
    let mut daemon = setup.start();
    daemon.wait_log("plugin loaded");

    // Listed: refused with the zone and the list's reason; the error code of the broken list
    // was logged, not taken for a listing.
    let plain = "From: carol@far.example\r\nTo: alice@example.org\r\nSubject: hello\r\n\r\nhi\r\n";
    let reply = mx_send(&daemon, plain);
    assert!(
        reply.starts_with(
            "554 5.7.1 Service unavailable; client [127.0.0.1] blocked using bl.test; Listed for testing"
        ),
        "{reply}"
    );
    daemon.wait_log("broken.test answered 127.255.255.254");
    // Not listed (another source address): delivered, without an X-DNSBL header.
    let reply = send_from(&daemon, "127.0.0.2", &plain.replace("hello", "clean"));
    assert!(reply.starts_with("250"), "{reply}");
    let delivered = wait_for_mail(&setup.maildir("alice"), 1);
    let text = std::fs::read_to_string(&delivered[0]).expect("read");
    assert!(
        text.contains("Subject: clean") && !text.contains("X-DNSBL"),
        "{text}"
    );
    // A link to a listed domain, in quoted-printable HTML: refused, the domain named.
    let linked = "From: carol@far.example\r\nTo: alice@example.org\r\nSubject: deal\r\nMIME-Version: 1.0\r\n\
                  Content-Type: text/html\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n\
                  <a href=3D\"https://www.shop.test/\">shop</a> <a href=3D\"HTTPS://Evil.Test/=\r\nclaim\">claim</a>\r\n";
    let reply = send_from(&daemon, "127.0.0.2", linked);
    assert!(
        reply.starts_with("554 5.7.1 Service unavailable; domain evil.test blocked using dbl.test"),
        "{reply}"
    );
    let asked = dns.queries.lock().expect("lock").clone();
    for name in [
        "1.0.0.127.bl.test A",
        "1.0.0.127.bl.test TXT",
        "2.0.0.127.bl.test A",
        "far.example.dbl.test A",
        "www.shop.test.dbl.test A",
        "evil.test.dbl.test A",
    ] {
        assert!(asked.iter().any(|q| q == name), "{name} not asked: {asked:?}");
    }

    // Scored instead: the listed client's message goes to Junk, the listing in a header.
    setup.edit_config("action = \"reject\"", "action = \"score\"\njunk-threshold = 4.0");
    daemon.signal("HUP");
    daemon.wait_log("configuration reloaded");
    let reply = mx_send(&daemon, &plain.replace("hello", "scored"));
    assert!(reply.starts_with("250"), "{reply}");
    let junked = wait_for_mail(&setup.junk("alice"), 1);
    let text = std::fs::read_to_string(&junked[0]).expect("read");
    assert!(
        text.contains("X-DNSBL: 127.0.0.1 listed in bl.test (127.0.0.2)"),
        "{text}"
    );
    assert!(text.contains("X-DNSBL-Score: 5.0"), "{text}");
    assert_eq!(new_files(&setup.maildir("alice")).len(), 1);
}

#[test]
fn rspamd_plugin_asks_a_real_rspamd_and_applies_on_error_when_it_is_down() {
    use portcullis_testkit::rspamd::{GTUBE, REWRITE_ME, Rspamd};
    let mut rspamd = Rspamd::start(empty_dns());
    let setup = setup_with(|s| {
        format!(
            r#"
[[plugin]]
hook = "spam"
path = "{path}"
timeout = "20s"
on-error = "defer"
grant-connect = ["tcp:{at}"]
[plugin.config]
address = "tcp:{at}"
"#,
            path = s.plugin("rspamd.wasm").display(),
            at = rspamd.normal
        )
    });
    let said = checked(setup.config());
    assert!(
        said.contains(&format!(
            "spam: rspamd (rspamd.wasm, portcullis:filter@0.2.0) may connect to tcp:{}",
            rspamd.normal
        )),
        "{said}"
    );
    let mut daemon = setup.start();
    daemon.wait_log("plugin loaded");

    // GTUBE: rspamd says reject, the session refuses; nothing delivered.
    let gtube =
        format!("From: carol@far.example\r\nTo: alice@example.org\r\nSubject: gtube\r\n\r\n{GTUBE}\r\n");
    let reply = mx_send(&daemon, &gtube);
    assert!(reply.starts_with("554 5.7.1"), "{reply}");
    // A normal message: delivered with rspamd's score, symbols and its milter headers, in
    // place of the ones the sender forged.
    let plain = "From: Carol <carol@far.example>\r\nTo: alice@example.org\r\nSubject: plain\r\n\
                 Date: Tue, 01 Dec 2026 10:00:00 +0000\r\nMessage-ID: <plain@far.example>\r\n\
                 X-Spam-Flag: forged\r\nX-Spamd-Result: forged\r\n\tfolded on\r\n\r\n\
                 Just a normal message.\r\n";
    let reply = mx_send(&daemon, plain);
    assert!(reply.starts_with("250"), "{reply}");
    let delivered = wait_for_mail(&setup.maildir("alice"), 1);
    let text = std::fs::read_to_string(&delivered[0]).expect("read");
    let count = |name: &str| text.lines().filter(|l| l.starts_with(name)).count();
    assert!(text.contains("Subject: plain"), "{text}");
    assert!(text.contains("X-Spam-Status: No, score="), "{text}");
    assert!(text.contains("action=no action"), "{text}");
    assert!(text.contains("X-Spam-Flag: NO"), "{text}");
    assert!(text.contains("X-Spam-Symbols: "), "{text}");
    assert!(
        text.contains("X-Spamd-Result: "),
        "rspamd's milter headers: {text}"
    );
    assert!(!text.contains("forged") && !text.contains("folded on"), "{text}");
    assert_eq!(
        (count("X-Spam-Flag:"), count("X-Spamd-Result:")),
        (1, 1),
        "{text}"
    );
    assert!(text.contains("Just a normal message."), "{text}");
    daemon.wait_log("rspamd: no action");
    daemon.wait_log("removed header fields the hooks asked to remove");

    // rewrite subject: delivered (tagged) under rspamd's subject, the old one gone.
    let rewrite = plain
        .replace("Subject: plain", &format!("Subject: {REWRITE_ME} offer"))
        .replace("<plain@", "<rewrite@");
    let reply = mx_send(&daemon, &rewrite);
    assert!(reply.starts_with("250"), "{reply}");
    let delivered = wait_for_mail(&setup.maildir("alice"), 2);
    let newest = delivered
        .iter()
        .map(|p| std::fs::read_to_string(p).expect("read"))
        .find(|t| t.contains("<rewrite@far.example>"))
        .expect("the rewritten message");
    let subjects: Vec<&str> = newest.lines().filter(|l| l.starts_with("Subject:")).collect();
    assert_eq!(
        subjects,
        [format!("Subject: ***SPAM*** {REWRITE_ME} offer")],
        "{newest}"
    );
    assert!(newest.contains("action=rewrite subject"), "{newest}");
    assert!(newest.contains("X-Spam-Flag: YES"), "{newest}");

    // rspamd stopped: the plugin fails, on-error (defer) answers 451; back: accepted.
    rspamd.stop();
    let again = plain.replace("Subject: plain", "Subject: while rspamd was away");
    let reply = mx_send(&daemon, &again);
    assert!(reply.starts_with("451 4.3.0"), "{reply}");
    daemon.wait_log("kind=\"failed\"");
    rspamd.resume();
    let reply = mx_send(&daemon, &again);
    assert!(reply.starts_with("250"), "{reply}");
    wait_for_mail(&setup.maildir("alice"), 3);
    wait_spool_empty(&setup.data());
    assert_eq!(new_files(&setup.maildir("alice")).len(), 3);

    // The milter plugin, on the same rspamd's proxy worker in milter mode: GTUBE refused
    // with rspamd's reply; a normal message delivered with rspamd's milter headers, the
    // forged X-Spamd-Result deleted as rspamd asks (a change to an empty value).
    let setup = milter_setup("spam", rspamd.milter);
    let mut daemon = setup.start();
    let reply = mx_send(&daemon, &gtube);
    assert!(reply.starts_with("554 5.7.1"), "{reply}");
    daemon.wait_log("milter: 554");
    let reply = mx_send(&daemon, &plain.replace("<plain@", "<milter@"));
    assert!(reply.starts_with("250"), "{reply}");
    let delivered = wait_for_mail(&setup.maildir("alice"), 1);
    let text = std::fs::read_to_string(&delivered[0]).expect("read");
    assert!(text.contains("X-Spamd-Result: default: False"), "{text}");
    assert!(text.contains("X-Rspamd-Action: no action"), "{text}");
    assert!(
        !text.contains("X-Spamd-Result: forged") && !text.contains("folded on"),
        "{text}"
    );
    daemon.wait_log("milter: accept");
    wait_spool_empty(&setup.data());
    assert_eq!(new_files(&setup.maildir("alice")).len(), 1);
}
