//! Starts and stops the daemon, reads its log, and talks raw SMTP.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The bound for anything the tests wait on.
pub const PATIENCE: Duration = Duration::from_secs(20);

pub const DOMAIN: &str = "example.org";
pub const PASSWORD: &str = "correct horse";

/// A plugin component as the build script left it.
pub fn built_plugin(file: &str) -> PathBuf {
    Path::new(portcullis_runtime::builtin::BUILD_DIR).join(file)
}

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_portcullis")
}

/// A data directory with config, certificate and one account (alice@example.org).
pub struct Setup {
    pub dir: tempfile::TempDir,
    pub cert_pem: String,
    pub domain: String,
}

/// A DNS server on loopback that knows no names (every answer NXDOMAIN), shared by the
/// tests of this binary that bring no DNS server of their own.
pub fn empty_dns() -> SocketAddr {
    static DNS: std::sync::OnceLock<portcullis_testkit::dns::Dns> = std::sync::OnceLock::new();
    DNS.get_or_init(|| portcullis_testkit::dns::Dns::start(&[])).addr
}

impl Setup {
    pub fn new(extra: &str) -> Setup {
        Setup::for_domain(DOMAIN, extra)
    }

    /// A setup whose local domain is `domain` (a second server, as the next hop).
    pub fn for_domain(domain: &str, extra: &str) -> Setup {
        let dir = tempfile::tempdir().expect("tempdir");
        let certified =
            rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("certificate");
        let cert_pem = certified.cert.pem();
        std::fs::write(dir.path().join("cert.pem"), &cert_pem).expect("write cert");
        std::fs::write(dir.path().join("key.pem"), certified.signing_key.serialize_pem()).expect("write key");
        // Every lookup goes to a DNS server of the test's own (one per test binary, knowing
        // no names), unless the test brings its own.
        let dns = if extra.contains("[dns]") || extra.contains("resolver =") {
            String::new()
        } else {
            format!("[dns]\nnameservers = [\"{}\"]\n", empty_dns())
        };
        let config = format!(
            r#"
[server]
hostname = "mx.example.org"
data-dir = "data"
drain-timeout = "3s"
# The tests run as root in CI; the daemon refuses that unless told.
run-as-root = true

[tls]
cert = "cert.pem"
key = "key.pem"

[[listener]]
kind = "mx"
address = "127.0.0.1:0"

[[listener]]
kind = "submission"
address = "127.0.0.1:0"

[[listener]]
kind = "submissions"
address = "127.0.0.1:0"

[domains]
local = ["{domain}"]

[auth]
users-file = "users.toml"
{extra}
{dns}
"#
        );
        std::fs::write(dir.path().join("portcullis.toml"), config).expect("write config");
        let setup = Setup {
            dir,
            cert_pem,
            domain: domain.to_string(),
        };
        setup.add_user("alice", PASSWORD);
        setup
    }

    pub fn config(&self) -> PathBuf {
        self.dir.path().join("portcullis.toml")
    }

    pub fn add_user(&self, name: &str, password: &str) {
        let mut child = Command::new(binary())
            .args(["user", "add", name, "--password-stdin", "--config"])
            .arg(self.config())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("run user add");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(format!("{password}\n").as_bytes())
            .expect("write password");
        assert!(child.wait().expect("user add").success());
    }

    /// Copies a plugin built by the build script into this setup's `plugins/` folder.
    pub fn plugin(&self, file: &str) -> PathBuf {
        let dir = self.dir.path().join("plugins");
        std::fs::create_dir_all(&dir).expect("plugins dir");
        let dest = dir.join(file);
        std::fs::copy(built_plugin(file), &dest).expect("copy plugin");
        dest
    }

    pub fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn junk(&self, local: &str) -> PathBuf {
        self.maildir(local).join(".Junk")
    }

    pub fn maildir(&self, local: &str) -> PathBuf {
        self.data().join("mail").join(&self.domain).join(local)
    }

    pub fn start(&self) -> Daemon {
        Daemon::start(&self.config())
    }
}

/// A running daemon.
pub struct Daemon {
    pub child: Child,
    pub addrs: HashMap<String, SocketAddr>,
    log: Arc<Mutex<Vec<String>>>,
    lines: mpsc::Receiver<String>,
}

impl Daemon {
    pub fn start(config: &Path) -> Daemon {
        Daemon::start_with_env(config, &[])
    }

    pub fn start_with_env(config: &Path, env: &[(&str, &std::ffi::OsStr)]) -> Daemon {
        let mut child = Command::new(binary())
            .args(["serve", "--config"])
            .arg(config)
            .envs(env.iter().copied())
            .env("PORTCULLIS_LOG", "info")
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("start the daemon");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, lines) = mpsc::channel();
        let keep = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                keep.lock().expect("log").push(line.clone());
                let _ = tx.send(line);
            }
        });
        let mut daemon = Daemon {
            child,
            addrs: HashMap::new(),
            log,
            lines,
        };
        // Compiling an interpreted-language plugin (18 MB of Python) takes a while in a debug
        // build; the bound only matters when something is wrong.
        daemon.wait_log_within(" ready data_dir=", Duration::from_secs(240));
        for line in daemon.log() {
            if let (Some(kind), Some(address)) = (field(&line, "kind"), field(&line, "address"))
                && line.contains("listening")
            {
                daemon.addrs.insert(kind, address.parse().expect("address"));
            }
        }
        assert_eq!(
            daemon.addrs.len(),
            3,
            "three listeners reported: {:?}",
            daemon.log()
        );
        daemon
    }

    pub fn addr(&self, kind: &str) -> SocketAddr {
        self.addrs[kind]
    }

    pub fn log(&self) -> Vec<String> {
        self.log.lock().expect("log").clone()
    }

    /// Waits (bounded) for a log line containing `needle`, seen after the call or before.
    pub fn wait_log(&mut self, needle: &str) -> String {
        self.wait_log_within(needle, PATIENCE)
    }

    /// [`Daemon::wait_log`] with its own bound.
    pub fn wait_log_within(&mut self, needle: &str, patience: Duration) -> String {
        if let Some(line) = self.log().into_iter().find(|l| l.contains(needle)) {
            return line;
        }
        let deadline = Instant::now() + patience;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(_) => panic!(
                    "no log line with {needle:?} within {patience:?}; log: {:#?}",
                    self.log()
                ),
            }
        }
    }

    /// Waits (bounded) until the log holds at least `count` lines containing `needle`.
    pub fn wait_log_count(&mut self, needle: &str, count: usize) {
        let deadline = Instant::now() + PATIENCE;
        while self.log().iter().filter(|l| l.contains(needle)).count() < count {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "fewer than {count} log lines with {needle:?}: {:#?}",
                self.log()
            );
            let _ = self.lines.recv_timeout(left.min(Duration::from_millis(100)));
        }
    }

    /// The address of the metrics endpoint (`[metrics] address`), from the log.
    pub fn metrics_address(&mut self) -> SocketAddr {
        let line = self.wait_log("metrics endpoint serving");
        line.split("address=")
            .nth(1)
            .and_then(|r| r.split(' ').next())
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no address in {line}"))
    }

    pub fn kill9(&mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reap");
    }

    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    pub fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill -TERM");
        assert!(status.success());
    }

    /// Waits (bounded) for the process to exit.
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "the daemon did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn field(line: &str, name: &str) -> Option<String> {
    let start = line.find(&format!(" {name}="))? + name.len() + 2;
    let rest = &line[start..];
    let value = rest.split(' ').next()?;
    Some(value.trim_matches('"').to_string())
}

/// Runs a Python script (`python3 -c`) with `args`, asserts it succeeded, and returns what
/// it printed: Python's smtplib and imaplib are the real clients many tests need.
/// `portcullis check-config --config CONFIG`: its exit status and what it printed.
pub fn check_config(config: impl AsRef<Path>) -> std::process::Output {
    Command::new(binary())
        .args(["check-config", "--config"])
        .arg(config.as_ref())
        .output()
        .expect("run check-config")
}

/// What `check-config` printed for CONFIG, which it must accept.
pub fn checked(config: impl AsRef<Path>) -> String {
    let out = check_config(config);
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    said
}

pub fn python(script: &str, args: &[&str]) -> String {
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "python failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl Setup {
    /// Rewrites the config file: `from` (which must be there) becomes `to`.
    pub fn edit_config(&self, from: &str, to: &str) {
        let text = std::fs::read_to_string(self.config()).expect("config");
        assert!(text.contains(from), "{from:?} not in the config");
        std::fs::write(self.config(), text.replacen(from, to, 1)).expect("config");
    }
}

/// A delivered copy without the two lines final delivery puts on top (`Return-Path:`, then
/// `Delivered-To:`), which it asserts are there.
pub fn after_delivery_headers(copy: &str) -> &str {
    let mut lines = copy.splitn(3, "\r\n");
    let (first, second, rest) = (
        lines.next().unwrap_or_default(),
        lines.next().unwrap_or_default(),
        lines.next().unwrap_or_default(),
    );
    assert!(
        first.starts_with("Return-Path: <") && first.ends_with('>'),
        "Return-Path first: {copy}"
    );
    assert!(
        second.starts_with("Delivered-To: "),
        "Delivered-To second: {copy}"
    );
    rest
}

/// Files in `dir/new` (empty when the folder does not exist yet).
pub fn new_files(maildir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(maildir.join("new"))
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.sort();
    files
}

/// Waits (bounded) until `maildir/new` holds at least `count` files, and returns them.
pub fn wait_for_mail(maildir: &Path, count: usize) -> Vec<PathBuf> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let files = new_files(maildir);
        if files.len() >= count {
            return files;
        }
        assert!(
            Instant::now() < deadline,
            "{count} message(s) expected in {maildir:?}, found {}",
            files.len()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits (bounded) until the spool queue is empty.
/// The messages in the spool's queue (a message's `.state` file, its metadata once
/// changed, is not one).
pub fn queued_messages(data: &Path) -> usize {
    std::fs::read_dir(data.join("spool/queue"))
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter(|f| !f.file_name().to_string_lossy().ends_with(".state"))
                .count()
        })
        .unwrap_or(0)
}

pub fn wait_spool_empty(data: &Path) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let count = std::fs::read_dir(data.join("spool/queue"))
            .map(|rd| rd.count())
            .unwrap_or(0);
        if count == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "spool still holds {count} message(s)");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// An MX session from a stranger, its DATA just answered 354: a message for alice.
pub fn open_data(daemon: &Daemon) -> Raw {
    let mut c = Raw::connect(daemon.addr("mx"));
    assert!(c.cmd("EHLO attacker.example").starts_with("250"));
    assert!(c.cmd("MAIL FROM:<attacker@far.example>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<alice@example.org>").starts_with("250"));
    assert!(c.cmd("DATA").starts_with("354"));
    c
}

/// A raw SMTP client over plain TCP, for what no well-behaved client library would send.
pub struct Raw {
    pub stream: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Raw {
    pub fn connect(addr: SocketAddr) -> Raw {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(PATIENCE)).expect("timeout");
        let reader = BufReader::new(stream.try_clone().expect("clone"));
        let mut raw = Raw { stream, reader };
        assert!(raw.reply().starts_with("220 "));
        raw
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("send");
    }

    /// One whole reply (all its lines), or "" when the server closed the connection.
    pub fn reply(&mut self) -> String {
        let mut whole = String::new();
        loop {
            let mut line = String::new();
            match self.reader.read_line(&mut line) {
                Ok(0) | Err(_) => return whole,
                Ok(_) => {}
            }
            whole.push_str(&line);
            if line.len() < 4 || line.as_bytes()[3] != b'-' {
                return whole;
            }
        }
    }

    /// Sends a command line and returns the reply.
    pub fn cmd(&mut self, line: &str) -> String {
        self.send(format!("{line}\r\n").as_bytes());
        self.reply()
    }

    /// Reads until the server closes the connection (within the bound) and returns what
    /// came before the close; `None` if the connection stayed open.
    pub fn until_closed(&mut self) -> Option<String> {
        let mut rest = Vec::new();
        match self.reader.read_to_end(&mut rest) {
            Ok(_) => Some(String::from_utf8_lossy(&rest).into_owned()),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted
                ) =>
            {
                Some(String::from_utf8_lossy(&rest).into_owned())
            }
            Err(_) => None,
        }
    }
}

/// `AUTH PLAIN` initial response for `user` / `password`.
pub fn base64_plain(user: &str, password: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}"))
}

/// A raw SMTP client that did EHLO and STARTTLS, verifying our test certificate.
pub struct TlsRaw {
    stream: BufReader<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>,
}

impl TlsRaw {
    pub fn connect(addr: SocketAddr, cert_pem: &str) -> TlsRaw {
        TlsRaw::connect_with(addr, &TlsRaw::config(cert_pem))
    }

    /// A client configuration trusting our test certificate. Connections made with one
    /// configuration resume the TLS sessions of earlier ones, as mail clients do.
    pub fn config(cert_pem: &str) -> Arc<rustls::ClientConfig> {
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(rustls::pki_types::CertificateDer::from_pem_slice(cert_pem.as_bytes()).expect("pem"))
            .expect("root");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        Arc::new(
            rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .expect("versions")
                .with_root_certificates(roots)
                .with_no_client_auth(),
        )
    }

    /// [`TlsRaw::connect`] with `config`.
    pub fn connect_with(addr: SocketAddr, config: &Arc<rustls::ClientConfig>) -> TlsRaw {
        let mut plain = Raw::connect(addr);
        assert!(plain.cmd("EHLO client.example").starts_with("250"));
        assert!(plain.cmd("STARTTLS").starts_with("220"));
        let connection =
            rustls::ClientConnection::new(Arc::clone(config), "localhost".try_into().expect("name"))
                .expect("client");
        let tls = rustls::StreamOwned::new(connection, plain.stream.try_clone().expect("clone"));
        let mut c = TlsRaw {
            stream: BufReader::new(tls),
        };
        assert!(c.cmd("EHLO client.example").starts_with("250"));
        c
    }

    /// Whether the TLS handshake resumed an earlier session.
    pub fn resumed(&self) -> bool {
        self.stream.get_ref().conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed)
    }

    /// AUTH PLAIN as `user@domain`, then MAIL, RCPT for each of `to` and DATA with `message`
    /// (CRLF lines, without the final CRLF); returns the reply to the end of DATA.
    pub fn submit(&mut self, user: &str, from: &str, to: &[&str], message: &str) -> String {
        self.login(user);
        self.send_mail(from, to, message)
    }

    /// AUTH PLAIN as `user` with the test password; asserts 235.
    pub fn login(&mut self, user: &str) {
        let auth = self.cmd(&format!("AUTH PLAIN {}", base64_plain(user, PASSWORD)));
        assert!(auth.starts_with("235"), "{auth}");
    }

    /// MAIL (with `from` as written, parameters allowed), RCPTs and DATA.
    pub fn send_mail(&mut self, from: &str, to: &[&str], message: &str) -> String {
        let mail = self.cmd(&format!("MAIL FROM:{from}"));
        assert!(mail.starts_with("250"), "{mail}");
        for rcpt in to {
            let reply = self.cmd(&format!("RCPT TO:{rcpt}"));
            assert!(reply.starts_with("250"), "{rcpt}: {reply}");
        }
        assert!(self.cmd("DATA").starts_with("354"));
        let stuffed = message.replace("\r\n.", "\r\n..");
        self.cmd(&format!("{stuffed}\r\n."))
    }

    pub fn cmd(&mut self, line: &str) -> String {
        self.stream
            .get_mut()
            .write_all(format!("{line}\r\n").as_bytes())
            .expect("send");
        let mut whole = String::new();
        loop {
            let mut l = String::new();
            if self.stream.read_line(&mut l).unwrap_or(0) == 0 {
                return whole;
            }
            whole.push_str(&l);
            if l.len() < 4 || l.as_bytes()[3] != b'-' {
                return whole;
            }
        }
    }
}

/// `portcullis queue ARGS --config <setup's>`; asserts success, returns what it printed.
pub fn queue(setup: &Setup, args: &[&str]) -> String {
    let out = Command::new(binary())
        .arg("queue")
        .args(args)
        .arg("--config")
        .arg(setup.config())
        .output()
        .expect("run queue");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The Prometheus text of the metrics endpoint at `addr`.
pub fn scrape(addr: std::net::SocketAddr) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("metrics endpoint");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("request");
    let mut body = String::new();
    s.read_to_string(&mut body).expect("response");
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    body
}

/// The value of `series` (its name and labels, as printed) in a scraped `body`.
pub fn value(body: &str, series: &str) -> f64 {
    body.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no series {series} in:\n{body}"))
}
