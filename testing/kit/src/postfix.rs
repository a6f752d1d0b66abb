//! A Postfix instance of a test's own (Debian's package; `ensure_installed` installs it):
//! its configuration, queue, log and Maildirs under a temporary directory, an MX listener on
//! a free loopback port, every message for its domain delivered to one virtual mailbox.

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs `cmd`, asserts it succeeded, and returns what it printed.
pub fn sh(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Installs Postfix (with smtp-source, and Cyrus SASL with a sasldb) from Debian's packages
/// when it is not there. Needs root.
pub fn ensure_installed() {
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
            "sasl2-bin",
            "libsasl2-modules",
        ]));
}

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The services of master.cf besides the listeners: Debian's defaults, unprivileged.
const SERVICES: &str = "\
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
lmtp      unix  -       -       n       -       -       lmtp
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

/// A running instance, stopped when dropped.
pub struct Postfix {
    /// Its directory: `etc/` (main.cf, master.cf), `queue/`, `vmail/`, `maillog`.
    pub dir: tempfile::TempDir,
    /// Its MX listener.
    pub addr: SocketAddr,
    /// Its domain.
    pub domain: String,
}

impl Postfix {
    /// Starts an instance receiving mail for `domain` on MX (from anyone on loopback), with
    /// what `prepare` returns added: lines for main.cf and for master.cf (further
    /// listeners). `prepare` gets the instance's directory, where it may write what those
    /// lines name.
    pub fn start(domain: &str, prepare: impl FnOnce(&Path) -> (String, String)) -> Postfix {
        let dir = tempfile::Builder::new()
            .prefix("portcullis-postfix")
            .tempdir()
            .expect("tempdir");
        let d = dir.path();
        for sub in ["etc", "queue", "data", "vmail"] {
            std::fs::create_dir_all(d.join(sub)).expect("mkdir");
        }
        sh(Command::new("chown").arg("postfix").arg(d.join("data")));
        sh(Command::new("chown").arg("65534:65534").arg(d.join("vmail")));
        let (main_extra, master_extra) = prepare(d);
        let port = free_port();
        let root = d.display();
        std::fs::write(
            d.join("etc/main.cf"),
            format!(
                "compatibility_level = 3.6\nqueue_directory = {root}/queue\ndata_directory = {root}/data\n\
                 inet_interfaces = 127.0.0.1\ninet_protocols = ipv4\nmyhostname = postfix.test\nmydestination =\n\
                 mynetworks = 127.0.0.0/8\nvirtual_mailbox_domains = {domain}\nvirtual_mailbox_base = {root}/vmail\n\
                 virtual_mailbox_maps = static:{domain}/postmaster/\nvirtual_uid_maps = static:65534\n\
                 virtual_gid_maps = static:65534\nmaillog_file = {root}/maillog\nmaillog_file_prefixes = {root}\n\
                 default_process_limit = 250\n{main_extra}"
            ),
        )
        .expect("main.cf");
        std::fs::write(
            d.join("etc/master.cf"),
            format!("127.0.0.1:{port} inet n - n - - smtpd\n{master_extra}{SERVICES}"),
        )
        .expect("master.cf");
        sh(Command::new("postfix").arg("-c").arg(d.join("etc")).arg("start"));
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(addr).is_err() {
            assert!(Instant::now() < deadline, "postfix did not start listening");
            std::thread::sleep(Duration::from_millis(50));
        }
        Postfix {
            dir,
            addr,
            domain: domain.to_string(),
        }
    }

    /// The master process's id (0 when it is not running).
    pub fn master_pid(&self) -> u32 {
        let text = std::fs::read_to_string(self.dir.path().join("queue/pid/master.pid")).unwrap_or_default();
        text.trim().parse().unwrap_or(0)
    }

    /// Where its messages arrive: the one virtual mailbox's `new/`.
    pub fn maildir(&self) -> PathBuf {
        self.dir
            .path()
            .join("vmail")
            .join(&self.domain)
            .join("postmaster/new")
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
