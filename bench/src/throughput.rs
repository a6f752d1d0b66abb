//! Messages per second of the release daemon, with the four example plugins off and on,
//! side by side in one run, on the MX path (virus + spam) and the submission path
//! (STARTTLS, AUTH through auth-table, rate + virus).
//!
//! Usage: `cargo run --release -p portcullis-bench --bin throughput -- [--messages N]
//! [--sessions C] [--size BYTES] [--portcullis PATH]`. Prints a Markdown table.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use portcullis_bench::sample_message;

struct Args {
    messages: usize,
    sessions: usize,
    size: usize,
    binary: PathBuf,
}

fn args() -> Args {
    let mut a = Args {
        messages: 2000,
        sessions: 10,
        size: 10 * 1024,
        binary: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release/portcullis"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_default();
        match flag.as_str() {
            "--messages" => a.messages = value.parse().expect("--messages N"),
            "--sessions" => a.sessions = value.parse().expect("--sessions C"),
            "--size" => a.size = value.parse().expect("--size BYTES"),
            "--portcullis" => a.binary = PathBuf::from(value),
            other => panic!("unknown option {other}"),
        }
    }
    a
}

#[derive(Clone, Copy, PartialEq)]
enum Path_ {
    Mx,
    Submission,
}

const PASSWORD: &str = "bench-password";

struct Daemon {
    child: Child,
    mx: SocketAddr,
    submission: SocketAddr,
    _dir: tempfile::TempDir,
    cert: String,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn hash_for(binary: &Path, dir: &Path) -> String {
    let scratch = dir.join("scratch.toml");
    std::fs::write(
        &scratch,
        "[server]\ndata-dir = \"scratch\"\n[domains]\nlocal = [\"example.org\"]\n[[listener]]\nkind = \"mx\"\naddress = \"127.0.0.1:0\"\n[auth]\nusers-file = \"scratch-users.toml\"\n",
    )
    .expect("scratch config");
    let mut child = Command::new(binary)
        .args(["user", "add", "bench", "--password-stdin", "--config"])
        .arg(&scratch)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("user add");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(PASSWORD.as_bytes())
        .expect("password");
    assert!(child.wait().expect("user add").success());
    let users = std::fs::read_to_string(dir.join("scratch-users.toml")).expect("users");
    let start = users.find("$argon2id$").expect("hash");
    users[start..].split('"').next().expect("hash").to_string()
}

fn start(binary: &Path, plugins: bool) -> Daemon {
    let dir = tempfile::tempdir().expect("tempdir");
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("cert");
    let cert = certified.cert.pem();
    std::fs::write(dir.path().join("cert.pem"), &cert).expect("cert");
    std::fs::write(dir.path().join("key.pem"), certified.signing_key.serialize_pem()).expect("key");
    let hash = hash_for(binary, dir.path());
    let mut config = String::from(
        "[server]\nhostname = \"bench.example.org\"\ndata-dir = \"data\"\nrun-as-root = true\n[tls]\ncert = \"cert.pem\"\nkey = \"key.pem\"\n\
         [[listener]]\nkind = \"mx\"\naddress = \"127.0.0.1:0\"\n[[listener]]\nkind = \"submission\"\naddress = \"127.0.0.1:0\"\n\
         [domains]\nlocal = [\"example.org\"]\n[auth]\nusers-file = \"users.toml\"\n",
    );
    if plugins {
        let built = Path::new(portcullis_runtime::builtin::BUILD_DIR);
        for (file, hook) in [
            ("auth_table.wasm", "auth"),
            ("rate_limit.wasm", "rate"),
            ("virus_signatures.wasm", "virus"),
            ("spam_rules.wasm", "spam"),
        ] {
            std::fs::copy(built.join(file), dir.path().join(file)).expect("plugin");
            config.push_str(&format!("\n[[plugin]]\nhook = \"{hook}\"\npath = \"{file}\"\n"));
            match hook {
                "auth" => config.push_str(&format!(
                    "[plugin.config.accounts]\n\"bench@example.org\" = \"{hash}\"\n"
                )),
                "rate" => config.push_str("[plugin.config.account]\nmessages-per-minute = 1000000\n"),
                _ => {}
            }
        }
        // No account in the users file: bench@ authenticates through auth-table.
        std::fs::write(dir.path().join("users.toml"), "[accounts]\n").expect("users");
    } else {
        std::fs::write(
            dir.path().join("users.toml"),
            format!("[accounts.\"bench@example.org\"]\npassword = \"{hash}\"\n"),
        )
        .expect("users");
    }
    std::fs::write(dir.path().join("portcullis.toml"), config).expect("config");
    let mut child = Command::new(binary)
        .args(["serve", "--config"])
        .arg(dir.path().join("portcullis.toml"))
        .env("PORTCULLIS_LOG", "warn,portcullis::server=info")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("start portcullis");
    let stderr = child.stderr.take().expect("stderr");
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
    // Keep draining the log so the daemon never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Daemon {
        child,
        mx: mx.expect("mx listener"),
        submission: submission.expect("submission listener"),
        _dir: dir,
        cert,
    }
}

trait Conn: Read + Write + Send {}
impl<T: Read + Write + Send> Conn for T {}

struct Client {
    reader: BufReader<Box<dyn Conn>>,
}

impl Client {
    fn reply(&mut self) -> String {
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

    fn cmd(&mut self, line: &str) -> String {
        let stream = self.reader.get_mut();
        stream.write_all(line.as_bytes()).expect("write");
        stream.write_all(b"\r\n").expect("write");
        stream.flush().expect("flush");
        self.reply()
    }
}

fn connect(daemon: &Daemon, path: Path_) -> Client {
    let addr = if path == Path_::Mx {
        daemon.mx
    } else {
        daemon.submission
    };
    let tcp = TcpStream::connect(addr).expect("connect");
    tcp.set_nodelay(true).expect("nodelay");
    let mut plain = Client {
        reader: BufReader::new(Box::new(tcp.try_clone().expect("clone"))),
    };
    assert!(plain.reply().starts_with("220"));
    assert!(plain.cmd("EHLO bench.client").starts_with("250"));
    if path == Path_::Mx {
        return plain;
    }
    assert!(plain.cmd("STARTTLS").starts_with("220"));
    let mut roots = rustls::RootCertStore::empty();
    use rustls::pki_types::pem::PemObject;
    roots
        .add(rustls::pki_types::CertificateDer::from_pem_slice(daemon.cert.as_bytes()).expect("pem"))
        .expect("root");
    let config =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
    let conn =
        rustls::ClientConnection::new(Arc::new(config), "localhost".try_into().expect("name")).expect("tls");
    let tls = rustls::StreamOwned::new(conn, tcp);
    let mut client = Client {
        reader: BufReader::new(Box::new(tls)),
    };
    assert!(client.cmd("EHLO bench.client").starts_with("250"));
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("\0bench@example.org\0{PASSWORD}"));
    let reply = client.cmd(&format!("AUTH PLAIN {auth}"));
    assert!(reply.starts_with("235"), "{reply}");
    client
}

fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let ticks: f64 = fields.get(11).and_then(|u| u.parse().ok()).unwrap_or(0.0)
        + fields.get(12).and_then(|s| s.parse().ok()).unwrap_or(0.0);
    ticks / 100.0
}

struct Result_ {
    per_second: f64,
    cpu_per_1000: f64,
}

fn run(daemon: &Daemon, path: Path_, a: &Args) -> Result_ {
    let body = Arc::new(sample_message(a.size, 0));
    let next = Arc::new(AtomicUsize::new(0));
    let cpu_before = cpu_seconds(daemon.child.id());
    let clients: Vec<Client> = (0..a.sessions).map(|_| connect(daemon, path)).collect();
    let started = Instant::now();
    let workers: Vec<_> = clients
        .into_iter()
        .map(|mut client| {
            let (body, next, total) = (Arc::clone(&body), Arc::clone(&next), a.messages);
            std::thread::spawn(move || {
                while next.fetch_add(1, Ordering::Relaxed) < total {
                    let from = if path == Path_::Mx {
                        "bob@far.example"
                    } else {
                        "bench@example.org"
                    };
                    assert!(client.cmd(&format!("MAIL FROM:<{from}>")).starts_with("250"));
                    // postmaster exists in every local domain, whichever source the accounts use.
                    let rcpt = client.cmd("RCPT TO:<postmaster@example.org>");
                    assert!(rcpt.starts_with("250"), "{rcpt}");
                    let data = client.cmd("DATA");
                    assert!(data.starts_with("354"), "{data}");
                    let reply = client.cmd(&format!("{body}."));
                    assert!(reply.starts_with("250"), "{reply}");
                }
                client.cmd("QUIT");
            })
        })
        .collect();
    for w in workers {
        w.join().expect("worker");
    }
    let elapsed = started.elapsed();
    let cpu = cpu_seconds(daemon.child.id()) - cpu_before;
    Result_ {
        per_second: a.messages as f64 / elapsed.as_secs_f64(),
        cpu_per_1000: cpu * 1000.0 / a.messages as f64,
    }
}

fn main() {
    let a = args();
    assert!(
        a.binary.is_file(),
        "{} not found: cargo build --release -p portcullis",
        a.binary.display()
    );
    println!(
        "{} messages of {} bytes per run, {} concurrent sessions\n",
        a.messages, a.size, a.sessions
    );
    println!("| path | plugins | messages/s | daemon CPU s / 1000 msgs | on / off |");
    println!("|---|---|---|---|---|");
    for (path, name) in [
        (Path_::Mx, "mx (virus, spam)"),
        (Path_::Submission, "submission (auth, rate, virus)"),
    ] {
        // The disk's state drifts as the spool creates and deletes files, so the two
        // configurations run in turns (off, on, on, off) and each keeps its best run.
        let mut off: Option<Result_> = None;
        let mut on: Option<Result_> = None;
        for plugins in [false, true, true, false] {
            let daemon = start(&a.binary, plugins);
            std::thread::sleep(Duration::from_millis(200));
            let result = run(&daemon, path, &a);
            let best = if plugins { &mut on } else { &mut off };
            if best.as_ref().is_none_or(|b| result.per_second > b.per_second) {
                *best = Some(result);
            }
        }
        let (off, on) = (off.expect("ran"), on.expect("ran"));
        println!(
            "| {name} | off | {:.0} | {:.2} | |",
            off.per_second, off.cpu_per_1000
        );
        println!(
            "| {name} | on | {:.0} | {:.2} | {:.0}% |",
            on.per_second,
            on.cpu_per_1000,
            100.0 * on.per_second / off.per_second
        );
    }
}
