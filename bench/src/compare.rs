//! Portcullis side by side with Postfix on this machine, in one run.
//!
//! Usage (as root: it installs Postfix from Debian's packages when missing, and both servers
//! write Maildirs owned by other users):
//!
//! ```text
//! cargo build --release -p portcullis -p portcullis-bench
//! ./target/release/compare [--seconds S] [--sessions 1,10,100] [--sizes 1024,10240,102400]
//!                          [--idle N] [--portcullis PATH]
//! ```
//!
//! `--sessions none` skips the MX and group-commit tables (`--sizes none` the MX table),
//! `--idle 0` the idle-connection count.
//!
//! For each scenario (sessions × message size) it runs, in turn, Postfix (MX to a Maildir,
//! its normal queue fsync), Portcullis with no plugins and Portcullis with all four example
//! plugins, each freshly started, loaded by Postfix's own `smtp-source` (one connection per
//! message). It reports messages per second, the Portcullis / Postfix ratio, server CPU
//! seconds per 1000 messages (Postfix: the whole process tree, exited children included),
//! p50 and p99 latency from the end of DATA to the 250 (a second, shorter pass with our own
//! client, because smtp-source does not time replies), and peak memory (PSS of the process
//! tree). It also measures the disk's own file + directory fsync rate in the same run, the
//! submission path against Postfix's submission listener with Cyrus SASL (STARTTLS + AUTH
//! PLAIN per session, a new TLS session per message versus reuse), and the memory per idle
//! connection.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use portcullis_bench::sample_message;
use portcullis_bench::server::{
    Daemon, PASSWORD, Path_, connect_to, cpu_of, run_with_input, start, start_with,
};

struct Args {
    seconds: f64,
    sessions: Vec<usize>,
    sizes: Vec<usize>,
    idle: usize,
    binary: PathBuf,
}

fn list(value: &str) -> Vec<usize> {
    if value == "none" {
        return Vec::new();
    }
    value
        .split(',')
        .map(|v| v.trim().parse().expect("a comma-separated list of numbers"))
        .collect()
}

fn args() -> Args {
    let mut a = Args {
        seconds: 5.0,
        sessions: vec![1, 10, 100],
        sizes: vec![1024, 10 * 1024, 100 * 1024],
        idle: 5000,
        binary: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release/portcullis"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_default();
        match flag.as_str() {
            "--seconds" => a.seconds = value.parse().expect("--seconds S"),
            "--sessions" => a.sessions = list(&value),
            "--sizes" => a.sizes = list(&value),
            "--idle" => a.idle = value.parse().expect("--idle N"),
            "--portcullis" => a.binary = PathBuf::from(value),
            other => panic!("unknown option {other}"),
        }
    }
    a
}

fn sh(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Installs Postfix (with smtp-source) from Debian's packages if it is not there.
fn ensure_postfix() {
    if Path::new("/usr/sbin/postfix").exists()
        && Path::new("/usr/sbin/smtp-source").exists()
        && Path::new("/usr/sbin/saslpasswd2").exists()
    {
        return;
    }
    eprintln!("installing postfix from Debian's packages...");
    sh(Command::new("apt-get").args(["update", "-qq"]));
    let mut debconf = Command::new("debconf-set-selections")
        .stdin(Stdio::piped())
        .spawn()
        .expect("debconf-set-selections");
    debconf
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"postfix postfix/main_mailer_type select No configuration\n")
        .expect("debconf");
    assert!(debconf.wait().expect("debconf").success());
    sh(Command::new("apt-get")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args([
            "install",
            "-y",
            "-qq",
            "--no-install-recommends",
            "postfix",
            // Cyrus SASL with a sasldb: AUTH on Postfix's submission listener.
            "sasl2-bin",
            "libsasl2-modules",
        ]));
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A Postfix instance of our own: its own config, queue and Maildir under a temp dir; an
/// MX listener, and a submission listener (STARTTLS required, then AUTH through Cyrus SASL
/// against a sasldb holding `bench@example.org`).
struct Postfix {
    dir: tempfile::TempDir,
    addr: SocketAddr,
    submission: SocketAddr,
    cert: String,
}

const POSTFIX_SERVICES: &str = "\
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
";

impl Postfix {
    fn start() -> Postfix {
        let dir = tempfile::Builder::new()
            .prefix("pcbench-postfix")
            .tempdir()
            .expect("tempdir");
        let d = dir.path();
        for sub in ["etc/sasl", "queue", "data", "vmail"] {
            std::fs::create_dir_all(d.join(sub)).expect("mkdir");
        }
        sh(Command::new("chown").arg("postfix").arg(d.join("data")));
        sh(Command::new("chown").arg("65534:65534").arg(d.join("vmail")));
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("cert");
        let cert = certified.cert.pem();
        std::fs::write(d.join("cert.pem"), &cert).expect("cert");
        std::fs::write(d.join("key.pem"), certified.signing_key.serialize_pem()).expect("key");
        // The account, in a sasldb the unprivileged smtpd can read; Debian's Postfix reads
        // the Cyrus config from <config_directory>/sasl/smtpd.conf.
        let sasldb = d.join("sasldb2");
        run_with_input(
            Command::new("saslpasswd2")
                .args(["-c", "-p", "-u", "example.org", "-f"])
                .arg(&sasldb)
                .arg("bench"),
            PASSWORD,
        );
        sh(Command::new("chown").arg("postfix").arg(&sasldb));
        std::fs::write(
            d.join("etc/sasl/smtpd.conf"),
            format!(
                "pwcheck_method: auxprop\nauxprop_plugin: sasldb\nmech_list: PLAIN LOGIN\nsasldb_path: {}\n",
                sasldb.display()
            ),
        )
        .expect("smtpd.conf");
        let port = free_port();
        let submission_port = free_port();
        let root = d.display();
        std::fs::write(
            d.join("etc/main.cf"),
            format!(
                "compatibility_level = 3.6\nqueue_directory = {root}/queue\ndata_directory = {root}/data\n\
                 inet_interfaces = 127.0.0.1\ninet_protocols = ipv4\nmyhostname = bench.example\nmydestination =\n\
                 mynetworks = 127.0.0.0/8\nvirtual_mailbox_domains = example.org\nvirtual_mailbox_base = {root}/vmail\n\
                 virtual_mailbox_maps = static:example.org/postmaster/\nvirtual_uid_maps = static:65534\n\
                 virtual_gid_maps = static:65534\nmaillog_file = {root}/maillog\nmaillog_file_prefixes = {root}\n\
                 default_process_limit = 250\nsmtpd_tls_cert_file = {root}/cert.pem\nsmtpd_tls_key_file = {root}/key.pem\n\
                 cyrus_sasl_config_path = {root}/etc/sasl\nsmtpd_sasl_type = cyrus\nsmtpd_sasl_path = smtpd\n"
            ),
        )
        .expect("main.cf");
        std::fs::write(
            d.join("etc/master.cf"),
            format!(
                "127.0.0.1:{port} inet n - n - - smtpd\n\
                 127.0.0.1:{submission_port} inet n - n - - smtpd -o smtpd_tls_security_level=encrypt \
                 -o smtpd_sasl_auth_enable=yes -o smtpd_relay_restrictions=permit_sasl_authenticated,reject \
                 -o smtpd_recipient_restrictions=permit_sasl_authenticated,reject\n{POSTFIX_SERVICES}"
            ),
        )
        .expect("master.cf");
        sh(Command::new("postfix").arg("-c").arg(d.join("etc")).arg("start"));
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let submission: SocketAddr = format!("127.0.0.1:{submission_port}").parse().expect("addr");
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(addr).is_err() || TcpStream::connect(submission).is_err() {
            assert!(Instant::now() < deadline, "postfix did not start listening");
            std::thread::sleep(Duration::from_millis(50));
        }
        Postfix {
            dir,
            addr,
            submission,
            cert,
        }
    }

    fn master_pid(&self) -> u32 {
        let text = std::fs::read_to_string(self.dir.path().join("queue/pid/master.pid")).unwrap_or_default();
        text.trim().parse().unwrap_or(0)
    }

    fn maildir(&self) -> PathBuf {
        self.dir.path().join("vmail/example.org/postmaster/new")
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        let _ = Command::new("postfix")
            .arg("-c")
            .arg(self.dir.path().join("etc"))
            .arg("stop")
            .output();
        let pid = self.master_pid();
        let deadline = Instant::now() + Duration::from_secs(10);
        while pid != 0 && Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The processes of a server: the daemon, or Postfix's master and its descendants.
fn tree(root: u32) -> Vec<u32> {
    let mut parent: HashMap<u32, u32> = HashMap::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            if let Some(ppid) = stat
                .rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().nth(1))
                .and_then(|p| p.parse().ok())
            {
                parent.insert(pid, ppid);
            }
        }
    }
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() {
        let p = out[i];
        out.extend(parent.iter().filter(|(_, pp)| **pp == p).map(|(c, _)| *c));
        i += 1;
    }
    out
}

/// CPU seconds of the server so far: every live process of the tree, and what the root
/// reaped of its exited children.
fn tree_cpu(root: u32) -> f64 {
    tree(root).into_iter().map(|pid| cpu_of(pid, pid == root)).sum()
}

/// Proportional memory of the tree, bytes (shared pages counted once, split among users).
fn tree_pss(root: u32) -> u64 {
    tree(root)
        .into_iter()
        .map(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
                .unwrap_or_default()
                .lines()
                .find(|l| l.starts_with("Pss:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
                .unwrap_or(0)
                * 1024
        })
        .sum()
}

fn rss(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

/// Samples the tree's memory until stopped; returns the peak.
struct PeakMemory {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<u64>,
}

impl PeakMemory {
    fn watch(root: u32) -> PeakMemory {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let handle = std::thread::spawn(move || {
            let mut peak = 0;
            while !flag.load(Ordering::Relaxed) {
                peak = peak.max(tree_pss(root));
                std::thread::sleep(Duration::from_millis(100));
            }
            peak
        });
        PeakMemory { stop, handle }
    }

    fn peak(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap_or(0)
    }
}

/// Runs smtp-source; returns the wall time.
fn smtp_source(addr: SocketAddr, sessions: usize, messages: usize, size: usize) -> Duration {
    let started = Instant::now();
    sh(Command::new("smtp-source")
        .args(["-s", &sessions.to_string()])
        .args(["-m", &messages.to_string()])
        .args(["-l", &size.to_string()])
        .args(["-f", "bench@far.example", "-t", "postmaster@example.org"])
        .arg(addr.to_string()));
    started.elapsed()
}

fn count_files(dirs: &[PathBuf]) -> usize {
    dirs.iter()
        .map(|dir| std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0))
        .sum()
}

fn wait_delivered(dirs: &[PathBuf], count: usize) {
    let deadline = Instant::now() + Duration::from_secs(300);
    while count_files(dirs) < count {
        assert!(
            Instant::now() < deadline,
            "only {} of {count} delivered to {dirs:?}",
            count_files(dirs),
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Our own plain-SMTP client: `sessions` connections, `messages` in all; returns the time
/// from sending the end of DATA to reading the 250, per message, sorted.
fn latencies(addr: SocketAddr, sessions: usize, messages: usize, size: usize) -> Vec<Duration> {
    let body = Arc::new(sample_message(size, 0));
    let next = Arc::new(AtomicUsize::new(0));
    let all = Arc::new(Mutex::new(Vec::with_capacity(messages)));
    let workers: Vec<_> = (0..sessions)
        .map(|_| {
            let (body, next, all) = (Arc::clone(&body), Arc::clone(&next), Arc::clone(&all));
            std::thread::spawn(move || {
                let tcp = TcpStream::connect(addr).expect("connect");
                tcp.set_nodelay(true).expect("nodelay");
                let mut w = tcp.try_clone().expect("clone");
                let mut r = BufReader::new(tcp);
                let mut reply = || {
                    let mut whole = String::new();
                    loop {
                        let mut line = String::new();
                        if r.read_line(&mut line).unwrap_or(0) == 0 {
                            return whole;
                        }
                        whole.push_str(&line);
                        if line.len() < 4 || line.as_bytes()[3] != b'-' {
                            return whole;
                        }
                    }
                };
                assert!(reply().starts_with("220"));
                let mut mine = Vec::new();
                w.write_all(b"EHLO bench.client\r\n").expect("write");
                assert!(reply().starts_with("250"));
                while next.fetch_add(1, Ordering::Relaxed) < messages {
                    w.write_all(b"MAIL FROM:<bench@far.example>\r\n").expect("write");
                    assert!(reply().starts_with("250"));
                    w.write_all(b"RCPT TO:<postmaster@example.org>\r\n")
                        .expect("write");
                    assert!(reply().starts_with("250"));
                    w.write_all(b"DATA\r\n").expect("write");
                    assert!(reply().starts_with("354"));
                    w.write_all(body.as_bytes()).expect("write");
                    let sent = Instant::now();
                    w.write_all(b".\r\n").expect("write");
                    let done = reply();
                    mine.push(sent.elapsed());
                    assert!(done.starts_with("250"), "{done}");
                }
                w.write_all(b"QUIT\r\n").expect("write");
                let _ = reply();
                all.lock().expect("lock").extend(mine);
            })
        })
        .collect();
    for w in workers {
        w.join().expect("latency worker");
    }
    let mut all = Arc::try_unwrap(all)
        .expect("sole owner")
        .into_inner()
        .expect("lock");
    all.sort();
    all
}

/// One server under one scenario.
struct Measured {
    per_second: f64,
    cpu_per_1000: f64,
    p50: Duration,
    p99: Duration,
    peak: u64,
}

/// What a scenario needs from a server.
trait Server {
    fn addr(&self) -> SocketAddr;
    fn root_pid(&self) -> u32;
    /// Where delivered copies appear (inbox and Junk).
    fn maildirs(&self) -> Vec<PathBuf>;
    /// Its directory (queue, Maildir), deleted when it is dropped unless kept.
    fn dir(&mut self) -> &mut tempfile::TempDir;
}

/// The servers' directories, deleted at the end of the run instead of between servers:
/// deleting thousands of files makes ext4 scan past the freed inodes at every file creation
/// for the next minutes (`recently_deleted`, up to a sixth of the daemon's samples), which
/// slowed whichever server ran next.
#[derive(Default)]
struct Kept(Vec<PathBuf>);

impl Kept {
    fn keep(&mut self, server: &mut dyn Server) {
        let dir = server.dir();
        dir.disable_cleanup(true);
        self.0.push(dir.path().to_path_buf());
    }
}

impl Drop for Kept {
    fn drop(&mut self) {
        for dir in &self.0 {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

impl Server for Postfix {
    fn addr(&self) -> SocketAddr {
        self.addr
    }
    fn root_pid(&self) -> u32 {
        self.master_pid()
    }
    fn maildirs(&self) -> Vec<PathBuf> {
        vec![self.maildir()]
    }
    fn dir(&mut self) -> &mut tempfile::TempDir {
        &mut self.dir
    }
}

impl Server for Daemon {
    fn addr(&self) -> SocketAddr {
        self.mx
    }
    fn root_pid(&self) -> u32 {
        self.child.id()
    }
    fn maildirs(&self) -> Vec<PathBuf> {
        let base = self.dir.path().join("data/mail/example.org/postmaster");
        vec![base.join("new"), base.join(".Junk/new")]
    }
    fn dir(&mut self) -> &mut tempfile::TempDir {
        &mut self.dir
    }
}

/// Measures one server, then keeps its files (in `kept`) until the end of the run.
fn measure(server: &mut dyn Server, kept: &mut Kept, sessions: usize, size: usize, seconds: f64) -> Measured {
    let root = server.root_pid();
    // Calibrate: a short run tells how many messages make `seconds` of load.
    let warm = (sessions * 20).max(100);
    let t = smtp_source(server.addr(), sessions, warm, size);
    let rate = warm as f64 / t.as_secs_f64();
    let messages = ((rate * seconds) as usize).max(sessions * 5).max(200);
    wait_delivered(&server.maildirs(), warm);

    let memory = PeakMemory::watch(root);
    let cpu_before = tree_cpu(root);
    let elapsed = smtp_source(server.addr(), sessions, messages, size);
    // Delivery is part of the work: the CPU is counted once the Maildir has it all.
    wait_delivered(&server.maildirs(), warm + messages);
    let cpu = tree_cpu(root) - cpu_before;
    let latency_messages = (messages / 4).max(sessions * 2).max(100);
    let lat = latencies(server.addr(), sessions, latency_messages, size);
    wait_delivered(&server.maildirs(), warm + messages + latency_messages);
    kept.keep(server);
    Measured {
        per_second: messages as f64 / elapsed.as_secs_f64(),
        cpu_per_1000: cpu * 1000.0 / messages as f64,
        p50: percentile(&lat, 0.50),
        p99: percentile(&lat, 0.99),
        peak: memory.peak(),
    }
}

/// The disk's own limits, measured where the servers write: file + directory fsyncs per
/// second, and syncfs calls per second. The probe files stay (in `dir`, deleted at the end
/// of the run): deleting them here would slow the file creations measured next (see
/// [`Kept`]).
fn disk_rates(dir: &Path) -> (f64, f64) {
    let probe = dir.join("fsync-probe");
    std::fs::create_dir_all(&probe).expect("probe dir");
    let d = std::fs::File::open(&probe).expect("open dir");
    let started = Instant::now();
    let mut n = 0u64;
    while started.elapsed() < Duration::from_secs(2) {
        let path = probe.join(format!("f{n}"));
        let mut f = std::fs::File::create(&path).expect("create");
        f.write_all(&[b'x'; 1024]).expect("write");
        f.sync_all().expect("fsync");
        d.sync_all().expect("dir fsync");
        n += 1;
    }
    let fsyncs = n as f64 / started.elapsed().as_secs_f64();
    let started = Instant::now();
    let mut m = 0u64;
    while started.elapsed() < Duration::from_secs(2) {
        let path = probe.join(format!("g{m}"));
        std::fs::write(&path, [b'x'; 1024]).expect("write");
        rustix::fs::syncfs(&d).expect("syncfs");
        m += 1;
    }
    let syncfs = m as f64 / started.elapsed().as_secs_f64();
    (fsyncs, syncfs)
}

fn mib(bytes: u64) -> String {
    format!("{:.0}", bytes as f64 / (1024.0 * 1024.0))
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

/// Submission: STARTTLS + AUTH PLAIN, then messages; `reuse` keeps one TLS session per
/// client thread, otherwise every message gets a new connection, TLS handshake and AUTH.
fn submission(
    addr: SocketAddr,
    cert: &str,
    sessions: usize,
    messages: usize,
    size: usize,
    reuse: bool,
) -> (f64, Vec<Duration>) {
    let body = Arc::new(sample_message(size, 0));
    let next = Arc::new(AtomicUsize::new(0));
    let all = Arc::new(Mutex::new(Vec::new()));
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..sessions {
            let (body, next, all) = (Arc::clone(&body), Arc::clone(&next), Arc::clone(&all));
            scope.spawn(move || {
                let mut client = reuse.then(|| connect_to(addr, cert, Path_::Submission));
                let mut mine = Vec::new();
                while next.fetch_add(1, Ordering::Relaxed) < messages {
                    let c = match &mut client {
                        Some(c) => c,
                        None => client.insert(connect_to(addr, cert, Path_::Submission)),
                    };
                    assert!(c.cmd("MAIL FROM:<bench@example.org>").starts_with("250"));
                    assert!(c.cmd("RCPT TO:<postmaster@example.org>").starts_with("250"));
                    assert!(c.cmd("DATA").starts_with("354"));
                    let sent = Instant::now();
                    let reply = c.cmd(&format!("{body}."));
                    mine.push(sent.elapsed());
                    assert!(reply.starts_with("250"), "{reply}");
                    if !reuse {
                        c.cmd("QUIT");
                        client = None;
                    }
                }
                all.lock().expect("lock").extend(mine);
            });
        }
    });
    let rate = messages as f64 / started.elapsed().as_secs_f64();
    let mut all = Arc::try_unwrap(all)
        .expect("sole owner")
        .into_inner()
        .expect("lock");
    all.sort();
    (rate, all)
}

/// Opens `count` idle sessions (greeting read, nothing sent) and returns the daemon's RSS
/// growth per session, in bytes.
fn idle_memory(daemon: &Daemon, count: usize) -> (f64, usize) {
    let before = rss(daemon.child.id());
    let mut open = Vec::with_capacity(count);
    for _ in 0..count {
        let Ok(tcp) = TcpStream::connect(daemon.mx) else {
            break;
        };
        let mut r = BufReader::new(tcp);
        let mut line = String::new();
        if r.read_line(&mut line).is_err() || !line.starts_with("220") {
            break;
        }
        open.push(r);
    }
    std::thread::sleep(Duration::from_secs(1));
    let after = rss(daemon.child.id());
    let n = open.len();
    drop(open);
    ((after.saturating_sub(before)) as f64 / n.max(1) as f64, n)
}

fn raise_fd_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    limit.current = limit.maximum;
    let _ = setrlimit(Resource::Nofile, limit);
}

fn version(cmd: &mut Command) -> String {
    cmd.output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn main() {
    let a = args();
    assert!(
        a.binary.is_file(),
        "{} not found: cargo build --release -p portcullis",
        a.binary.display()
    );
    raise_fd_limit();
    ensure_postfix();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    println!(
        "Machine: {cores} cores, {}; Postfix {}; Portcullis {}\n",
        version(Command::new("uname").args(["-sr"])),
        version(Command::new("postconf").args(["-h", "-d", "mail_version"])),
        env!("CARGO_PKG_VERSION"),
    );
    let scratch = tempfile::tempdir().expect("tempdir");
    let (fsyncs, syncfs) = disk_rates(scratch.path());
    let mut kept = Kept::default();
    // Compile the plugins into the shared cache once, so that no measured start is a cold
    // one (bench/src/server.rs).
    drop(start(&a.binary, true, ""));
    println!("Disk: {fsyncs:.0} file+directory fsyncs/s, {syncfs:.0} syncfs/s\n");

    println!("### MX path (smtp-source, one connection per message)\n");
    println!(
        "| sessions | size | server | msgs/s | vs Postfix | CPU s / 1000 msgs | p50 ms | p99 ms | peak MiB |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut single = None;
    for &size in &a.sizes {
        for &sessions in &a.sessions {
            let postfix = {
                let mut p = Postfix::start();
                measure(&mut p, &mut kept, sessions, size, a.seconds)
            };
            let off = {
                let mut d = start(&a.binary, false, "");
                measure(&mut d, &mut kept, sessions, size, a.seconds)
            };
            let on = {
                let mut d = start(&a.binary, true, "");
                measure(&mut d, &mut kept, sessions, size, a.seconds)
            };
            if sessions == 1 && single.is_none() {
                single = Some(off.per_second);
            }
            for (name, m) in [
                ("Postfix", &postfix),
                ("Portcullis, no plugins", &off),
                ("Portcullis, 4 plugins", &on),
            ] {
                let ratio = if std::ptr::eq(m, &postfix) {
                    String::new()
                } else {
                    format!("{:.2}×", m.per_second / postfix.per_second)
                };
                println!(
                    "| {sessions} | {} KiB | {name} | {:.0} | {ratio} | {:.2} | {} | {} | {} |",
                    size / 1024,
                    m.per_second,
                    m.cpu_per_1000,
                    ms(m.p50),
                    ms(m.p99),
                    mib(m.peak)
                );
            }
            println!(
                "| {sessions} | {} KiB | plugins on / off | {:.0}% | | | | | |",
                size / 1024,
                100.0 * on.per_second / off.per_second
            );
        }
    }
    if let Some(rate) = single {
        println!(
            "\nSingle session, smallest size, no plugins: {rate:.0} msgs/s = {:.0}% of the disk's file+directory fsync rate.",
            100.0 * rate / fsyncs
        );
    }

    println!("\n### Group commit versus one fsync per message (no plugins, 10 KiB)\n");
    println!("| sessions | spool-sync | msgs/s | p50 ms | p99 ms | group / per-message |");
    println!("|---|---|---|---|---|---|");
    for &sessions in &a.sessions {
        let per = {
            let mut d = start_with(&a.binary, false, "spool-sync = \"per-message\"", "");
            measure(&mut d, &mut kept, sessions, 10 * 1024, a.seconds)
        };
        let group = {
            let mut d = start_with(&a.binary, false, "spool-sync = \"group\"", "");
            measure(&mut d, &mut kept, sessions, 10 * 1024, a.seconds)
        };
        println!(
            "| {sessions} | per-message | {:.0} | {} | {} | |",
            per.per_second,
            ms(per.p50),
            ms(per.p99)
        );
        println!(
            "| {sessions} | group | {:.0} | {} | {} | {:.2}× |",
            group.per_second,
            ms(group.p50),
            ms(group.p99),
            group.per_second / per.per_second
        );
    }

    println!("\n### Submission path (STARTTLS + AUTH PLAIN, 10 KiB, 10 sessions)\n");
    println!("| connection | server | msgs/s | vs Postfix | p50 ms | p99 ms |");
    println!("|---|---|---|---|---|---|");
    for reuse in [false, true] {
        let connection = if reuse { "reused" } else { "new per message" };
        let messages = if reuse { 3000 } else { 1000 };
        let mut postfix = Postfix::start();
        let (reference, lat) = submission(postfix.submission, &postfix.cert, 10, messages, 10 * 1024, reuse);
        kept.keep(&mut postfix);
        drop(postfix);
        println!(
            "| {connection} | Postfix | {reference:.0} | | {} | {} |",
            ms(percentile(&lat, 0.5)),
            ms(percentile(&lat, 0.99))
        );
        for plugins in [false, true] {
            let mut d = start(&a.binary, plugins, "");
            let (rate, lat) = submission(d.submission, &d.cert, 10, messages, 10 * 1024, reuse);
            kept.keep(&mut d);
            println!(
                "| {connection} | Portcullis, {} | {rate:.0} | {:.2}× | {} | {} |",
                if plugins { "4 plugins" } else { "no plugins" },
                rate / reference,
                ms(percentile(&lat, 0.5)),
                ms(percentile(&lat, 0.99))
            );
        }
    }

    println!("\n### Idle connections\n");
    let d = start(&a.binary, true, "");
    let (per, n) = idle_memory(&d, a.idle);
    println!(
        "{n} idle MX sessions: {:.1} KiB of daemon RSS per session.",
        per / 1024.0
    );
}
