//! Living under a service manager: the systemd notify protocol over a real socket.

use std::os::unix::net::UnixDatagram;

use crate::harness::*;

fn next(socket: &UnixDatagram) -> String {
    let mut buf = [0u8; 512];
    let n = socket.recv(&mut buf).expect("a notification within the bound");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn notify_socket_hears_ready_only_when_listening_then_reloading_and_stopping() {
    let setup = Setup::new("");
    let path = setup.dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
    socket.set_read_timeout(Some(PATIENCE)).expect("timeout");
    let daemon = Daemon::start_with_env(&setup.config(), &[("NOTIFY_SOCKET", path.as_os_str())]);

    let ready = next(&socket);
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready}");
    assert!(
        ready.contains(&format!("MAINPID={}", daemon.child.id())),
        "{ready}"
    );
    // READY means every listener accepts.
    for kind in ["mx", "submission", "submissions"] {
        std::net::TcpStream::connect(daemon.addr(kind)).expect("listening once READY");
    }

    daemon.signal("HUP");
    let reloading = next(&socket);
    assert!(reloading.lines().any(|l| l == "RELOADING=1"), "{reloading}");
    assert!(reloading.contains("MONOTONIC_USEC="), "{reloading}");
    assert!(
        next(&socket).lines().any(|l| l == "READY=1"),
        "READY again after the reload"
    );

    daemon.sigterm();
    assert!(next(&socket).lines().any(|l| l == "STOPPING=1"));
}

fn new_certificate(setup: &Setup) -> String {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("certificate");
    let pem = certified.cert.pem();
    std::fs::write(setup.dir.path().join("cert.pem"), &pem).expect("cert");
    std::fs::write(
        setup.dir.path().join("key.pem"),
        certified.signing_key.serialize_pem(),
    )
    .expect("key");
    pem
}

#[test]
fn sighup_swaps_the_certificate_for_new_sessions_and_keeps_open_ones() {
    let setup = Setup::new("");
    let mut daemon = setup.start();
    let addr = daemon.addr("submission");
    let mut open = TlsRaw::connect(addr, &setup.cert_pem);

    let new_pem = new_certificate(&setup);
    setup.add_user("newcomer", "fresh-pass");
    daemon.signal("HUP");
    daemon.wait_log("configuration reloaded");

    // New sessions get the new certificate (and the new account)...
    let mut fresh = TlsRaw::connect(addr, &new_pem);
    assert!(
        fresh
            .cmd(&format!("AUTH PLAIN {}", base64_plain("newcomer", "fresh-pass")))
            .starts_with("235")
    );
    let refused = std::panic::catch_unwind(|| TlsRaw::connect(addr, &setup.cert_pem));
    assert!(refused.is_err(), "the old certificate is no longer served");
    // ...and the session opened before the reload carries on.
    assert!(open.cmd("NOOP").starts_with("250"));
    assert!(
        open.cmd(&format!(
            "AUTH PLAIN {}",
            base64_plain("alice@example.org", PASSWORD)
        ))
        .starts_with("235")
    );
}

#[test]
fn a_broken_or_unreloadable_config_is_refused_and_the_old_one_stays() {
    let setup = Setup::new("");
    let mut daemon = setup.start();
    let good = std::fs::read_to_string(setup.config()).expect("config");

    std::fs::write(
        setup.config(),
        format!("{good}\n[limits]\nmessage-size = \"huge\"\n"),
    )
    .expect("break");
    daemon.signal("HUP");
    let line = daemon.wait_log("reload refused");
    assert!(line.contains("message-size"), "{line}");

    let moved = good.replacen(
        "kind = \"mx\"\naddress = \"127.0.0.1:0\"",
        "kind = \"mx\"\naddress = \"127.0.0.1:1\"",
        1,
    );
    std::fs::write(setup.config(), moved).expect("move");
    daemon.signal("HUP");
    daemon.wait_log_count("reload refused", 2);
    assert!(
        daemon
            .log()
            .iter()
            .any(|l| l.contains("listeners cannot change on reload"))
    );

    // Still serving, on the old configuration.
    let mut c = Raw::connect(daemon.addr("mx"));
    assert!(c.cmd("EHLO c").starts_with("250"));
    assert!(c.cmd("MAIL FROM:<x@far.example>").starts_with("250"));
}

#[test]
fn json_logs_are_one_object_per_line_with_the_session_span() {
    use std::io::BufRead;
    let setup = Setup::new("");
    let text = std::fs::read_to_string(setup.config()).expect("config");
    let text = text.replacen(
        "drain-timeout = \"3s\"",
        "drain-timeout = \"3s\"\nlog-format = \"json\"",
        1,
    );
    std::fs::write(setup.config(), text).expect("config");
    let mut child = std::process::Command::new(binary())
        .args(["serve", "--config"])
        .arg(setup.config())
        .env("PORTCULLIS_LOG", "info")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start");
    let mut lines = std::io::BufReader::new(child.stderr.take().expect("stderr")).lines();
    let mut next_json = || -> serde_json::Value {
        let line = lines.next().expect("a log line").expect("utf-8");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
    };
    let mx = loop {
        let event = next_json();
        if event["fields"]["message"] == "listening" && event["fields"]["kind"] == "mx" {
            break event["fields"]["address"]
                .as_str()
                .expect("address")
                .parse()
                .expect("addr");
        }
    };
    let mut c = Raw::connect(mx);
    assert!(c.cmd("EHLO json.example").starts_with("250"));
    assert!(c.cmd("QUIT").starts_with("221"));
    let disconnect = loop {
        let event = next_json();
        let message = event["fields"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if message.starts_with("disconnect from") {
            break event;
        }
    };
    assert_eq!(disconnect["span"]["kind"], "mx", "{disconnect}");
    assert!(disconnect["span"]["id"].is_string(), "{disconnect}");
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn the_metrics_endpoint_counts_what_happened() {
    let setup = Setup::new("\n[metrics]\naddress = \"127.0.0.1:0\"\n");
    let extra = format!(
        "\n[[plugin]]\nhook = \"spam\"\npath = \"{}\"\n\n[[plugin]]\nhook = \"spam\"\npath = \"{}\"\non-error = \"accept\"\n[plugin.config]\nmode = \"trap\"\n",
        setup.plugin("spam_rules.wasm").display(),
        setup.plugin("hostile.wasm").display()
    );
    let config = std::fs::read_to_string(setup.config()).expect("config") + &extra;
    std::fs::write(setup.config(), config).expect("config");
    let mut daemon = setup.start();
    let metrics_addr = daemon.metrics_address();

    let mut m = Raw::connect(daemon.addr("mx"));
    assert!(m.cmd("EHLO c").starts_with("250"));
    for _ in 0..2 {
        assert!(m.cmd("MAIL FROM:<x@far.example>").starts_with("250"));
        assert!(m.cmd("RCPT TO:<alice@example.org>").starts_with("250"));
        assert!(m.cmd("DATA").starts_with("354"));
        assert!(m.cmd("Subject: metered\r\n\r\nhi\r\n.").starts_with("250"));
    }
    let mut s = TlsRaw::connect(daemon.addr("submission"), &setup.cert_pem);
    assert!(
        s.cmd(&format!(
            "AUTH PLAIN {}",
            base64_plain("alice@example.org", "nope")
        ))
        .starts_with("535")
    );
    assert!(
        s.cmd(&format!(
            "AUTH PLAIN {}",
            base64_plain("alice@example.org", PASSWORD)
        ))
        .starts_with("235")
    );

    daemon.signal("HUP");
    daemon.wait_log("configuration reloaded");
    let body = scrape(metrics_addr);
    assert!(value(&body, "portcullis_sessions_total{listener=\"mx\"}") >= 1.0);
    assert!(value(&body, "portcullis_sessions_active{listener=\"mx\"}") >= 1.0);
    assert_eq!(
        value(
            &body,
            "portcullis_messages_total{listener=\"mx\",outcome=\"accepted\",reason=\"\"}"
        ),
        2.0
    );
    assert_eq!(
        value(
            &body,
            "portcullis_hook_verdicts_total{hook=\"spam\",plugin=\"spam_rules\",verdict=\"tag\"}"
        ),
        2.0
    );
    assert!(body.contains("portcullis_plugin_call_seconds"), "{body}");
    assert_eq!(
        value(
            &body,
            "portcullis_tls_handshakes_total{listener=\"submission\",result=\"ok\"}"
        ),
        1.0
    );
    assert_eq!(value(&body, "portcullis_auth_total{result=\"rejected\"}"), 1.0);
    assert_eq!(value(&body, "portcullis_auth_total{result=\"accepted\"}"), 1.0);
    assert_eq!(
        value(
            &body,
            "portcullis_plugin_errors_total{plugin=\"hostile\",hook=\"spam\",kind=\"trap\"}"
        ),
        2.0
    );
    assert_eq!(value(&body, "portcullis_reloads_total{result=\"ok\"}"), 1.0);
    // far.example is unknown to the test's DNS server (no SPF record), and the messages
    // have no From field (DMARC cannot apply; loopback is exempt, so they are delivered).
    for (method, result) in [("spf", "none"), ("dmarc", "permerror")] {
        let series = format!("portcullis_authentication_total{{method=\"{method}\",result=\"{result}\"}}");
        assert_eq!(value(&body, &series), 2.0, "{series}");
    }
    assert!(value(&body, "portcullis_queue_messages") >= 0.0);
    assert!(body.contains("portcullis_queue_oldest_seconds"));
}

#[test]
fn sockets_passed_by_socket_activation_are_used() {
    use std::io::BufRead;
    let setup = Setup::new("");
    // A launcher in the manner of systemd: bind, put the socket at fd 3, set LISTEN_FDS and
    // LISTEN_PID, exec the daemon (which keeps the pid).
    let launcher = r#"
import os, socket, sys
binary, config = sys.argv[1], sys.argv[2]
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen(128)
port = s.getsockname()[1]
text = open(config).read().replace('address = "127.0.0.1:0"', 'address = "127.0.0.1:%d"' % port, 1)
open(config, "w").write(text)
os.dup2(s.fileno(), 3)
os.set_inheritable(3, True)
os.environ["LISTEN_FDS"] = "1"
os.environ["LISTEN_PID"] = str(os.getpid())
os.execv(binary, [binary, "serve", "--config", config])
"#;
    let mut child = std::process::Command::new("python3")
        .args(["-c", launcher, binary()])
        .arg(setup.config())
        .env("PORTCULLIS_LOG", "info")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("launcher");
    let mut lines = std::io::BufReader::new(child.stderr.take().expect("stderr")).lines();
    let mut passed = None;
    for line in lines.by_ref() {
        let line = line.expect("log");
        if line.contains("using a socket passed by the service manager") {
            passed = line
                .split("address=")
                .nth(1)
                .and_then(|r| r.split(' ').next())
                .map(str::to_string);
        }
        if line.contains(" ready data_dir=") {
            break;
        }
    }
    let address: std::net::SocketAddr = passed
        .expect("the passed socket was used")
        .parse()
        .expect("address");
    let mut c = Raw::connect(address);
    assert!(c.cmd("EHLO activated.example").starts_with("250"));
    let _ = child.kill();
    let _ = child.wait();
}
