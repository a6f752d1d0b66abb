//! Starting a release daemon for a benchmark and talking SMTP to it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use base64::Engine as _;

/// Which pipeline a load generator talks to.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Path_ {
    /// Port 25: plain SMTP.
    Mx,
    /// Port 587: STARTTLS and AUTH PLAIN.
    Submission,
}

/// The bench account's password.
pub const PASSWORD: &str = "bench-password";

/// A release daemon started for a benchmark, killed when dropped.
pub struct Daemon {
    /// The process.
    pub child: Child,
    /// The MX listener.
    pub mx: SocketAddr,
    /// The submission listener.
    pub submission: SocketAddr,
    /// Its directory (config, data).
    pub dir: tempfile::TempDir,
    /// Its certificate, PEM.
    pub cert: String,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `command` with `input` on its standard input; asserts it succeeds.
pub fn run_with_input(command: &mut Command, input: &str) {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{command:?}: {e}"));
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("input");
    assert!(child.wait().expect("wait").success(), "{command:?} failed");
}

/// An argon2id hash of [`PASSWORD`], made by the daemon's own `user add`.
pub fn hash_for(binary: &Path, dir: &Path) -> String {
    let scratch = dir.join("scratch.toml");
    std::fs::write(
        &scratch,
        "[server]\ndata-dir = \"scratch\"\n[domains]\nlocal = [\"example.org\"]\n[[listener]]\nkind = \"mx\"\naddress = \"127.0.0.1:0\"\n[auth]\nusers-file = \"scratch-users.toml\"\n",
    )
    .expect("scratch config");
    run_with_input(
        Command::new(binary)
            .args(["user", "add", "bench", "--password-stdin", "--config"])
            .arg(&scratch),
        PASSWORD,
    );
    let users = std::fs::read_to_string(dir.join("scratch-users.toml")).expect("users");
    let start = users.find("$argon2id$").expect("hash");
    users[start..].split('"').next().expect("hash").to_string()
}

/// A DNS server on loopback that knows no names, shared by the daemons of one run.
fn empty_dns() -> SocketAddr {
    static DNS: std::sync::OnceLock<portcullis_testkit::dns::Dns> = std::sync::OnceLock::new();
    DNS.get_or_init(|| portcullis_testkit::dns::Dns::start(&[])).addr
}

/// Starts `binary` on loopback with the four example plugins on or off; `extra` is
/// appended to its config (a `[dns]` table of its own replaces the default one).
pub fn start(binary: &Path, plugins: bool, extra: &str) -> Daemon {
    start_with(binary, plugins, "", extra)
}

/// [`start`], with `server_keys` added to the `[server]` table.
pub fn start_with(binary: &Path, plugins: bool, server_keys: &str, extra: &str) -> Daemon {
    let dir = tempfile::tempdir().expect("tempdir");
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("cert");
    let cert = certified.cert.pem();
    std::fs::write(dir.path().join("cert.pem"), &cert).expect("cert");
    std::fs::write(dir.path().join("key.pem"), certified.signing_key.serialize_pem()).expect("key");
    let hash = hash_for(binary, dir.path());
    let mut config = format!(
        "[server]\nhostname = \"bench.example.org\"\ndata-dir = \"data\"\nrun-as-root = true\n{server_keys}\n[tls]\ncert = \"cert.pem\"\nkey = \"key.pem\"\n\
         [[listener]]\nkind = \"mx\"\naddress = \"127.0.0.1:0\"\n[[listener]]\nkind = \"submission\"\naddress = \"127.0.0.1:0\"\n\
         [domains]\nlocal = [\"example.org\"]\n[auth]\nusers-file = \"users.toml\"\n"
    );
    install_plugins(dir.path(), plugins, &hash, &mut config);
    config.push_str(extra);
    if !extra.contains("[dns]") {
        // Every lookup (the MX checks of mail authentication) goes to a DNS server on
        // loopback that knows no names, as a local caching resolver would answer: the
        // benchmark measures the server, not the network's resolver.
        config.push_str(&format!("\n[dns]\nnameservers = [\"{}\"]\n", empty_dns()));
    }
    std::fs::write(dir.path().join("portcullis.toml"), config).expect("config");
    // Compiled plugins are cached across restarts, as they are on a server: every daemon
    // started here shares one cache, so what is measured is the daemon under load, not the
    // compiler's leftovers after a cold start (docs/benchmarks.md, peak memory).
    let cache = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-plugin-cache");
    std::fs::create_dir_all(&cache).expect("plugin cache");
    std::fs::create_dir_all(dir.path().join("data")).expect("data dir");
    std::os::unix::fs::symlink(&cache, dir.path().join("data/plugin-cache")).expect("plugin cache link");
    let mut child = Command::new(binary)
        .args(["serve", "--config"])
        .arg(dir.path().join("portcullis.toml"))
        .env("PORTCULLIS_LOG", "warn,portcullis::server=info")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("start portcullis");
    let stderr = child.stderr.take().expect("stderr");
    let (mx, submission, lines) = listeners(stderr);
    // Keep draining the log so the daemon never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Daemon {
        child,
        mx,
        submission,
        dir,
        cert,
    }
}

/// The plugins (all four, with bench@ authenticating through auth-table) or the users file.
fn install_plugins(dir: &Path, plugins: bool, hash: &str, config: &mut String) {
    if plugins {
        let built = Path::new(portcullis_runtime::builtin::BUILD_DIR);
        for (file, hook) in [
            ("auth_table.wasm", "auth"),
            ("rate_limit.wasm", "rate"),
            ("virus_signatures.wasm", "virus"),
            ("spam_rules.wasm", "spam"),
        ] {
            std::fs::copy(built.join(file), dir.join(file)).expect("plugin");
            config.push_str(&format!("\n[[plugin]]\nhook = \"{hook}\"\npath = \"{file}\"\n"));
            match hook {
                // Its accepts are remembered, as an operator whose clients log in for
                // every message would configure it (docs/plugins.md).
                "auth" => config.push_str(&format!(
                    "cache = \"5m\"\n[plugin.config.accounts]\n\"bench@example.org\" = \"{hash}\"\n"
                )),
                "rate" => config.push_str("[plugin.config.account]\nmessages-per-minute = 1000000\n"),
                _ => {}
            }
        }
        // No account in the users file: bench@ authenticates through auth-table.
        std::fs::write(dir.join("users.toml"), "[accounts]\n").expect("users");
    } else {
        std::fs::write(
            dir.join("users.toml"),
            format!("[accounts.\"bench@example.org\"]\npassword = \"{hash}\"\n"),
        )
        .expect("users");
    }
}

/// Reads the daemon's log up to "ready": its MX and submission addresses, and the rest of
/// the log to keep draining.
fn listeners(
    stderr: std::process::ChildStderr,
) -> (
    SocketAddr,
    SocketAddr,
    std::io::Lines<BufReader<std::process::ChildStderr>>,
) {
    let mut lines = BufReader::new(stderr).lines();
    let (mut mx, mut submission) = (None, None);
    for line in lines.by_ref() {
        let line = line.expect("log");
        if line.contains("listening") {
            let address = line
                .split("address=")
                .nth(1)
                .and_then(|r| r.split(' ').next())
                .expect("address");
            let address: SocketAddr = address.parse().expect("address");
            if line.contains("kind=\"mx\"") {
                mx = Some(address);
            } else {
                submission = Some(address);
            }
        }
        if line.contains(" ready ") {
            break;
        }
    }
    (
        mx.expect("mx listener"),
        submission.expect("submission listener"),
        lines,
    )
}

/// A byte stream a client can use.
pub trait Conn: Read + Write + Send {}
impl<T: Read + Write + Send> Conn for T {}

/// A blocking SMTP client over plain TCP or TLS.
pub struct Client {
    reader: BufReader<Box<dyn Conn>>,
}

impl Client {
    /// One whole reply.
    pub fn reply(&mut self) -> String {
        let mut whole = String::new();
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line).unwrap_or(0) == 0 {
                return whole;
            }
            whole.push_str(&line);
            if line.len() < 4 || line.as_bytes()[3] != b'-' {
                return whole;
            }
        }
    }

    /// Sends `line` and CRLF, returns the reply.
    pub fn cmd(&mut self, line: &str) -> String {
        let stream = self.reader.get_mut();
        stream.write_all(line.as_bytes()).expect("write");
        stream.write_all(b"\r\n").expect("write");
        stream.flush().expect("flush");
        self.reply()
    }
}

/// A session to `daemon`: EHLO, and on submission STARTTLS, EHLO and AUTH PLAIN.
pub fn connect(daemon: &Daemon, path: Path_) -> Client {
    let addr = if path == Path_::Mx {
        daemon.mx
    } else {
        daemon.submission
    };
    connect_to(addr, &daemon.cert, path)
}

/// A session to any server at `addr` whose certificate is `cert` (PEM), logging in as
/// `bench@example.org` with [`PASSWORD`] on submission; a full TLS handshake.
pub fn connect_to(addr: SocketAddr, cert: &str, path: Path_) -> Client {
    connect_with(addr, &client_tls(cert), path).0
}

/// A TLS client configuration trusting `cert` (PEM). Sessions made with one configuration
/// resume those of earlier ones, as Thunderbird's and Postfix's clients do.
pub fn client_tls(cert: &str) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    use rustls::pki_types::pem::PemObject;
    roots
        .add(rustls::pki_types::CertificateDer::from_pem_slice(cert.as_bytes()).expect("pem"))
        .expect("root");
    Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// [`connect_to`] with the TLS sessions of `tls`; also whether the handshake resumed one.
pub fn connect_with(addr: SocketAddr, tls: &Arc<rustls::ClientConfig>, path: Path_) -> (Client, bool) {
    let mut tcp = TcpStream::connect(addr).expect("connect");
    tcp.set_nodelay(true).expect("nodelay");
    let mut plain = Client {
        reader: BufReader::new(Box::new(tcp.try_clone().expect("clone"))),
    };
    assert!(plain.reply().starts_with("220"));
    assert!(plain.cmd("EHLO bench.client").starts_with("250"));
    if path == Path_::Mx {
        return (plain, false);
    }
    assert!(plain.cmd("STARTTLS").starts_with("220"));
    let mut conn =
        rustls::ClientConnection::new(Arc::clone(tls), "localhost".try_into().expect("name")).expect("tls");
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp).expect("handshake");
    }
    let resumed = conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    let tls = rustls::StreamOwned::new(conn, tcp);
    let mut client = Client {
        reader: BufReader::new(Box::new(tls)),
    };
    assert!(client.cmd("EHLO bench.client").starts_with("250"));
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("\0bench@example.org\0{PASSWORD}"));
    let reply = client.cmd(&format!("AUTH PLAIN {auth}"));
    assert!(reply.starts_with("235"), "{reply}");
    (client, resumed)
}

/// User + system CPU seconds of process `pid` (its threads included; with `children`,
/// also of its reaped children).
pub fn cpu_seconds(pid: u32) -> f64 {
    cpu_of(pid, false)
}

/// See [`cpu_seconds`].
pub fn cpu_of(pid: u32, children: bool) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let field = |i: usize| -> f64 { fields.get(i).and_then(|v| v.parse().ok()).unwrap_or(0.0) };
    let mut ticks = field(11) + field(12);
    if children {
        ticks += field(13) + field(14);
    }
    ticks / 100.0
}
