//! clamav-milter (Debian's package) of a test's own, on a free loopback port, asking a test
//! [`crate::clamd::Clamd`]: infected mail is refused (`OnInfected Reject`, with the reply
//! "Virus found: NAME") or quarantined ([`ClamavMilter::start_with`]), clean mail
//! accepted with its `X-Virus-Scanned` and `X-Virus-Status` headers, and a clamd that does not answer means
//! "try again later" (`OnFail Defer`). The milter the comparison with Postfix uses, and one
//! a milter plugin can be tested against.

use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::clamd::Clamd;
use crate::postfix::free_port;

/// A running clamav-milter, killed when dropped.
pub struct ClamavMilter {
    dir: tempfile::TempDir,
    child: Child,
    /// Where it speaks the milter protocol.
    pub addr: SocketAddr,
}

impl ClamavMilter {
    /// Starts it for `clamd`, refusing infected mail; returns once it listens.
    pub fn start(clamd: &Clamd) -> ClamavMilter {
        ClamavMilter::start_with(clamd, "Reject")
    }

    /// Starts it for `clamd` with `on_infected` (`Reject`, `Quarantine`, `Blackhole`,
    /// `Accept`); returns once it listens.
    pub fn start_with(clamd: &Clamd, on_infected: &str) -> ClamavMilter {
        assert!(
            std::path::Path::new("/usr/sbin/clamav-milter").exists(),
            "clamav-milter is missing: apt-get install clamav-milter (scripts/test.sh does)"
        );
        let dir = tempfile::Builder::new()
            .prefix("portcullis-clamav-milter")
            .tempdir()
            .expect("tempdir");
        let d = dir.path();
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        std::fs::write(
            d.join("clamav-milter.conf"),
            format!(
                "MilterSocket inet:{port}@127.0.0.1\nClamdSocket unix:{clamd}\nUser root\nForeground true\n\
                 OnClean Accept\nOnInfected {on_infected}\nRejectMsg Virus found: %v\nOnFail Defer\n\
                 AddHeader Replace\n\
                 LogFile {root}/milter.log\nLogInfected Basic\nTemporaryDirectory {root}\n\
                 PidFile {root}/milter.pid\nMaxFileSize 25M\n",
                port = addr.port(),
                clamd = clamd.socket.display(),
                root = d.display()
            ),
        )
        .expect("clamav-milter.conf");
        let child = Command::new("/usr/sbin/clamav-milter")
            .arg("-c")
            .arg(d.join("clamav-milter.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start clamav-milter");
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "clamav-milter did not listen: {}",
                std::fs::read_to_string(d.join("milter.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        ClamavMilter { dir, child, addr }
    }

    /// Its log (infected messages are logged).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("milter.log")).unwrap_or_default()
    }
}

impl Drop for ClamavMilter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
