//! Postfix from Debian, started on loopback with its own configuration, as the reference.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use portcullis_bench::server::{PASSWORD, run_with_input};

use crate::measure::Server;

pub(crate) fn sh(cmd: &mut Command) -> String {
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
pub(crate) fn ensure_postfix() {
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

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A Postfix instance of our own: its own config, queue and Maildir under a temp dir; an
/// MX listener, and a submission listener (STARTTLS required, then AUTH through Cyrus SASL
/// against a sasldb holding `bench@example.org`).
pub(crate) struct Postfix {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) addr: SocketAddr,
    pub(crate) submission: SocketAddr,
    pub(crate) cert: String,
}

pub(crate) const POSTFIX_SERVICES: &str = "\
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
    pub(crate) fn start() -> Postfix {
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

    pub(crate) fn master_pid(&self) -> u32 {
        let text = std::fs::read_to_string(self.dir.path().join("queue/pid/master.pid")).unwrap_or_default();
        text.trim().parse().unwrap_or(0)
    }

    pub(crate) fn maildir(&self) -> PathBuf {
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

pub(crate) fn version(cmd: &mut Command) -> String {
    cmd.output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}
