//! What a run measures: load from smtp-source and our own client, CPU and memory of a
//! process tree, latencies, the disk's fsync rate, submission and idle connections.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use portcullis_bench::sample_message;
use portcullis_bench::server::{Daemon, Path_, client_tls, connect_with, cpu_of};

use crate::postfix::sh;

/// The processes of a server: the daemon, or Postfix's master and its descendants.
pub(crate) fn tree(root: u32) -> Vec<u32> {
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
pub(crate) fn tree_cpu(root: u32) -> f64 {
    tree(root).into_iter().map(|pid| cpu_of(pid, pid == root)).sum()
}

/// Proportional memory of the tree, bytes (shared pages counted once, split among users).
pub(crate) fn tree_pss(root: u32) -> u64 {
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

pub(crate) fn rss(pid: u32) -> u64 {
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
pub(crate) struct PeakMemory {
    pub(crate) stop: Arc<AtomicBool>,
    pub(crate) handle: std::thread::JoinHandle<u64>,
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

/// What smtp-source sends.
pub(crate) enum Mail<'a> {
    /// Its own messages of this many octets, from `bench@far.example`.
    Generated(usize),
    /// The content of a file (lines without CR: smtp-source ends each with CRLF), from
    /// `from`.
    File { from: &'a str, path: &'a Path },
}

/// Runs smtp-source with its own messages of `size` octets; returns the wall time.
pub(crate) fn smtp_source(addr: SocketAddr, sessions: usize, messages: usize, size: usize) -> Duration {
    smtp_source_mail(addr, sessions, messages, &Mail::Generated(size))
}

/// Runs smtp-source sending `mail`; returns the wall time.
pub(crate) fn smtp_source_mail(
    addr: SocketAddr,
    sessions: usize,
    messages: usize,
    mail: &Mail<'_>,
) -> Duration {
    let started = Instant::now();
    let mut command = Command::new("smtp-source");
    command
        .args(["-s", &sessions.to_string()])
        .args(["-m", &messages.to_string()])
        .args(["-t", "postmaster@example.org"]);
    match mail {
        Mail::Generated(size) => command.args(["-l", &size.to_string(), "-f", "bench@far.example"]),
        Mail::File { from, path } => command.args(["-f", from, "-F"]).arg(path),
    };
    sh(command.arg(addr.to_string()));
    started.elapsed()
}

/// Messages per second into Postfix's `smtp-sink`, which answers SMTP and stores nothing:
/// the ceiling of the load path (smtp-source and the loopback) on this machine, measured
/// like the servers (a calibration run, then about `seconds` of load).
pub(crate) fn sink_rate(sessions: usize, size: usize, seconds: f64) -> f64 {
    let port = portcullis_testkit::postfix::free_port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut sink = Command::new("smtp-sink")
        .args(["-u", "nobody", "-c", &addr.to_string(), "1000"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("smtp-sink (from Postfix's package)");
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "smtp-sink did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let warm = (sessions * 20).max(100);
    let t = smtp_source(addr, sessions, warm, size);
    let messages = ((warm as f64 / t.as_secs_f64() * seconds) as usize)
        .max(sessions * 5)
        .max(200);
    let elapsed = smtp_source(addr, sessions, messages, size);
    let _ = sink.kill();
    let _ = sink.wait();
    messages as f64 / elapsed.as_secs_f64()
}

pub(crate) fn count_files(dirs: &[PathBuf]) -> usize {
    dirs.iter()
        .map(|dir| std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0))
        .sum()
}

pub(crate) fn wait_delivered(dirs: &[PathBuf], count: usize) {
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

pub(crate) fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Our own plain-SMTP client: `sessions` connections, `messages` in all; returns the time
/// from sending the end of DATA to reading the 250, per message, sorted.
pub(crate) fn latencies(addr: SocketAddr, sessions: usize, messages: usize, size: usize) -> Vec<Duration> {
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
#[derive(Default)]
pub(crate) struct Measured {
    pub(crate) per_second: f64,
    pub(crate) cpu_per_1000: f64,
    pub(crate) p50: Duration,
    pub(crate) p99: Duration,
    pub(crate) peak: u64,
}

impl Measured {
    /// Each figure's median over `rounds`.
    pub(crate) fn median(rounds: &[&Measured]) -> Measured {
        Measured {
            per_second: median(rounds.iter().map(|m| m.per_second).collect()),
            cpu_per_1000: median(rounds.iter().map(|m| m.cpu_per_1000).collect()),
            p50: median(rounds.iter().map(|m| m.p50).collect()),
            p99: median(rounds.iter().map(|m| m.p99).collect()),
            peak: median(rounds.iter().map(|m| m.peak).collect()),
        }
    }
}

/// The median of `values` (the upper one of an even count).
pub(crate) fn median<T: PartialOrd + Copy + Default>(mut values: Vec<T>) -> T {
    values.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    values.get(values.len() / 2).copied().unwrap_or_default()
}

/// What a scenario needs from a server.
pub(crate) trait Server {
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
pub(crate) struct Kept(Vec<PathBuf>);

impl Kept {
    pub(crate) fn keep(&mut self, server: &mut dyn Server) {
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
pub(crate) fn measure(
    server: &mut dyn Server,
    kept: &mut Kept,
    sessions: usize,
    size: usize,
    seconds: f64,
) -> Measured {
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
pub(crate) fn disk_rates(dir: &Path) -> (f64, f64) {
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

pub(crate) fn mib(bytes: u64) -> String {
    format!("{:.0}", bytes as f64 / (1024.0 * 1024.0))
}

pub(crate) fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

/// How a submission client connects for its messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Connection {
    /// One session per client thread, kept for all its messages.
    Reused,
    /// A new connection, TLS handshake and AUTH per message, resuming the TLS session of
    /// an earlier connection (Thunderbird, Postfix's client).
    NewResumed,
    /// A new connection per message with a full TLS handshake each time (Python's
    /// smtplib, which keeps no session).
    NewFull,
}

impl Connection {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Connection::Reused => "reused",
            Connection::NewResumed => "new per message, TLS resumed",
            Connection::NewFull => "new per message, full handshake",
        }
    }
}

/// Submission: STARTTLS + AUTH PLAIN, then messages, connecting as `connection` says.
/// Returns messages per second, the DATA latencies, and how many handshakes resumed.
pub(crate) fn submission(
    addr: SocketAddr,
    cert: &str,
    sessions: usize,
    messages: usize,
    size: usize,
    connection: Connection,
) -> (f64, Vec<Duration>, usize) {
    let body = Arc::new(sample_message(size, 0));
    let next = Arc::new(AtomicUsize::new(0));
    let all = Arc::new(Mutex::new(Vec::new()));
    let resumed = Arc::new(AtomicUsize::new(0));
    // One client configuration shared by every thread: what it keeps of one session lets
    // the next resume it.
    let shared = client_tls(cert);
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..sessions {
            let (body, next, all, resumed, shared) = (
                Arc::clone(&body),
                Arc::clone(&next),
                Arc::clone(&all),
                Arc::clone(&resumed),
                Arc::clone(&shared),
            );
            scope.spawn(move || {
                let open = || {
                    let tls = match connection {
                        Connection::NewFull => client_tls(cert),
                        _ => Arc::clone(&shared),
                    };
                    let (client, was_resumed) = connect_with(addr, &tls, Path_::Submission);
                    if was_resumed {
                        resumed.fetch_add(1, Ordering::Relaxed);
                    }
                    client
                };
                let mut client = None;
                let mut mine = Vec::new();
                while next.fetch_add(1, Ordering::Relaxed) < messages {
                    let c = match &mut client {
                        Some(c) => c,
                        None => client.insert(open()),
                    };
                    assert!(c.cmd("MAIL FROM:<bench@example.org>").starts_with("250"));
                    assert!(c.cmd("RCPT TO:<postmaster@example.org>").starts_with("250"));
                    assert!(c.cmd("DATA").starts_with("354"));
                    let sent = Instant::now();
                    let reply = c.cmd(&format!("{body}."));
                    mine.push(sent.elapsed());
                    assert!(reply.starts_with("250"), "{reply}");
                    if connection != Connection::Reused {
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
    (rate, all, resumed.load(Ordering::Relaxed))
}

/// Opens `count` idle sessions (greeting read, nothing sent) and returns the daemon's RSS
/// growth per session, in bytes, how many were opened, and what `meanwhile` returned while
/// they were all open.
pub(crate) fn idle_memory<T>(
    daemon: &Daemon,
    count: usize,
    meanwhile: impl FnOnce() -> T,
) -> (f64, usize, T) {
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
    let during = meanwhile();
    drop(open);
    ((after.saturating_sub(before)) as f64 / n.max(1) as f64, n, during)
}

pub(crate) fn raise_fd_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    limit.current = limit.maximum;
    let _ = setrlimit(Resource::Nofile, limit);
}

/// Rows of a table comparing servers in one scenario, each against the first (the
/// reference): `| sessions | size | server | msgs/s | vs first | CPU s / 1000 | p50 | p99 |`.
pub(crate) fn print_rows(sessions: usize, size: usize, rows: &[(&str, &Measured)]) {
    let Some((_, first)) = rows.first() else {
        return;
    };
    for (i, (name, m)) in rows.iter().enumerate() {
        let ratio = if i == 0 {
            String::new()
        } else {
            format!("{:.2}×", m.per_second / first.per_second)
        };
        println!(
            "| {sessions} | {} KiB | {name} | {:.0} | {ratio} | {:.2} | {} | {} |",
            size / 1024,
            m.per_second,
            m.cpu_per_1000,
            ms(m.p50),
            ms(m.p99),
        );
    }
}
