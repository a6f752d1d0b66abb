//! rspamd (Debian's package) of a test's own: Debian's configuration with a local directory
//! of the test's overriding the workers' addresses (free loopback ports), its log, run and
//! database directories, and its DNS (the test's server, so nothing waits on the
//! internet); `local_addrs` emptied so that its checks run for 127.0.0.1. It starts in
//! tens of seconds (rspamd compiles its maps): start it once per test binary.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::postfix::free_port;

/// The GTUBE line: rspamd rejects any message that carries it.
pub const GTUBE: &str = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X";

/// A word that, in a subject, makes this rspamd answer `rewrite subject` (score 9 of the
/// `rewrite_subject` threshold 8; `reject` stays at 15).
pub const REWRITE_ME: &str = "portcullis-rewrite-me";

/// A running rspamd, killed when dropped.
pub struct Rspamd {
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// The normal worker: HTTP, `POST /checkv2`.
    pub normal: SocketAddr,
    /// The proxy worker in milter mode, asking the normal worker (Debian's upstream
    /// `local` points at port 11333, which a test's rspamd does not use).
    pub milter: SocketAddr,
    /// The controller (HTTP, statistics and learning).
    pub controller: SocketAddr,
}

impl Rspamd {
    /// Starts rspamd asking `dns` for every lookup; returns once its normal worker answers.
    pub fn start(dns: SocketAddr) -> Rspamd {
        assert!(
            std::path::Path::new("/usr/bin/rspamd").exists(),
            "rspamd is missing: apt-get install rspamd (scripts/test.sh does)"
        );
        let dir = tempfile::Builder::new()
            .prefix("portcullis-rspamd")
            .tempdir()
            .expect("tempdir");
        let d = dir.path();
        for sub in ["local/override.d", "local/local.d", "run", "db", "log"] {
            std::fs::create_dir_all(d.join(sub)).expect("mkdir");
        }
        let [normal, controller, milter] =
            [free_port(), free_port(), free_port()].map(|p| SocketAddr::from(([127, 0, 0, 1], p)));
        let write = |name: &str, text: String| std::fs::write(d.join("local").join(name), text).expect(name);
        write(
            "override.d/worker-normal.inc",
            format!("bind_socket = \"{normal}\";\ncount = 1;\n"),
        );
        write(
            "override.d/worker-controller.inc",
            format!("bind_socket = \"{controller}\";\ncount = 1;\n"),
        );
        write(
            "override.d/worker-proxy.inc",
            format!(
                "bind_socket = \"{milter}\";\nmilter = yes;\ncount = 1;\ntimeout = 120s;\n\
                 upstream \"local\" {{\n  default = yes;\n  hosts = \"{normal}\";\n}}\n"
            ),
        );
        write(
            "local.d/options.inc",
            format!(
                "local_addrs = [];\ndisable_hyperscan = true;\ndns {{\n  nameserver = [\"{dns}\"];\n  timeout = 1s;\n  retransmits = 1;\n}}\n"
            ),
        );
        // The headers rspamd's HTTP clients are asked to add, for local clients too.
        write(
            "local.d/milter_headers.conf",
            "extended_spam_headers = true;\nskip_local = false;\nskip_authenticated = false;\n".to_string(),
        );
        // A subject holding REWRITE_ME scores past `rewrite_subject` (and below `reject`),
        // so a test can see rspamd's `rewrite subject` action.
        write(
            "local.d/regexp.conf",
            format!("PORTCULLIS_REWRITE_ME {{\n  re = 'Subject=/{REWRITE_ME}/i';\n  score = 9.0;\n}}\n"),
        );
        write(
            "local.d/actions.conf",
            "rewrite_subject = 8;\nsubject = \"***SPAM*** %s\";\n".to_string(),
        );
        write(
            "override.d/logging.inc",
            format!(
                "type = \"file\";\nfilename = \"{}/log/rspamd.log\";\nlevel = \"info\";\n",
                d.display()
            ),
        );
        let mut rspamd = Rspamd {
            dir,
            child: None,
            normal,
            milter,
            controller,
        };
        rspamd.resume();
        rspamd
    }

    /// Starts it again after [`Rspamd::stop`] (or for the first time); returns once its
    /// normal worker answers `/ping`.
    pub fn resume(&mut self) {
        let d = self.dir.path();
        let var = |name: &str, sub: &str| format!("--var={name}={}", d.join(sub).display());
        let child = Command::new("/usr/bin/rspamd")
            .args([
                "-f",
                "-i",
                "-u",
                "root",
                "-g",
                "root",
                "-c",
                "/etc/rspamd/rspamd.conf",
            ])
            .args([
                var("LOCAL_CONFDIR", "local"),
                var("RUNDIR", "run"),
                var("DBDIR", "db"),
                var("LOGDIR", "log"),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start rspamd");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(180);
        while self.http(self.normal, "GET /ping HTTP/1.0\r\n\r\n").as_deref() != Some("pong") {
            assert!(
                Instant::now() < deadline,
                "rspamd did not answer /ping: {}",
                std::fs::read_to_string(d.join("log/rspamd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Kills it (all its processes: the main one takes its workers along).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Asks the normal worker about `message` (from `ip`) as a client of `/checkv2`
    /// would; the JSON answer, or `None` when it does not answer.
    pub fn check(&self, message: &str, ip: &str) -> Option<String> {
        let request = format!(
            "POST /checkv2 HTTP/1.0\r\nIP: {ip}\r\nContent-Length: {}\r\n\r\n{message}",
            message.len()
        );
        self.http(self.normal, &request)
    }

    fn http(&self, addr: SocketAddr, request: &str) -> Option<String> {
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
        stream.write_all(request.as_bytes()).ok()?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer).ok()?;
        let (head, body) = answer.split_once("\r\n\r\n")?;
        head.starts_with("HTTP/1.").then(|| body.trim().to_string())
    }
}

impl Drop for Rspamd {
    fn drop(&mut self) {
        self.stop();
    }
}
