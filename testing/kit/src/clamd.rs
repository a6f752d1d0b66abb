//! clamd (Debian's `clamav-daemon`) of a test's own: a private Unix socket, and a signature
//! database the test writes — clamd cannot fetch the official one here, and a test should
//! not depend on it. Stopped and started again on demand, as a scanner that goes away.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// What the test signature matches: a message carrying these octets (in any part, also
/// base64-encoded in an attachment) is infected.
pub const TEST_SIGNATURE: &[u8] = b"PORTCULLIS-TEST-SIGNATURE-7f3a";

/// The name clamd reports for [`TEST_SIGNATURE`] (a database of our own is "unofficial").
pub const TEST_SIGNATURE_NAME: &str = "Portcullis.Test.Signature.UNOFFICIAL";

/// A running clamd, killed when dropped.
pub struct Clamd {
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// Its socket, for `INSTREAM`.
    pub socket: PathBuf,
}

impl Clamd {
    /// Starts clamd with a database holding only [`TEST_SIGNATURE`]; returns once it answers
    /// `PING`. `max_size` is its `StreamMaxLength`: a longer stream is answered
    /// `INSTREAM size limit exceeded. ERROR`, and a part past clamd's own limits is reported
    /// `Heuristics.Limits.Exceeded` (`AlertExceedsMax`): never as clean.
    pub fn start(max_size: &str) -> Clamd {
        assert!(
            std::path::Path::new("/usr/sbin/clamd").exists(),
            "clamd is missing: apt-get install clamav-daemon (scripts/test.sh does)"
        );
        let dir = tempfile::Builder::new()
            .prefix("portcullis-clamd")
            .tempdir()
            .expect("tempdir");
        let d = dir.path();
        std::fs::create_dir_all(d.join("db")).expect("db dir");
        let hex: String = TEST_SIGNATURE.iter().map(|b| format!("{b:02x}")).collect();
        std::fs::write(
            d.join("db/portcullis.ndb"),
            format!("Portcullis.Test.Signature:0:*:{hex}\n"),
        )
        .expect("database");
        let socket = d.join("clamd.sock");
        std::fs::write(
            d.join("clamd.conf"),
            format!(
                "LocalSocket {socket}\nDatabaseDirectory {root}/db\nForeground yes\nUser root\n\
                 LogFile {root}/clamd.log\nTemporaryDirectory {root}\nStreamMaxLength {max_size}\n\
                 AlertExceedsMax yes\nScanMail yes\n",
                socket = socket.display(),
                root = d.display()
            ),
        )
        .expect("clamd.conf");
        let mut clamd = Clamd {
            dir,
            child: None,
            socket,
        };
        clamd.resume();
        clamd
    }

    /// Starts it again after [`Clamd::stop`] (or for the first time); returns once it
    /// answers `PING`.
    pub fn resume(&mut self) {
        let _ = std::fs::remove_file(&self.socket);
        let child = Command::new("/usr/sbin/clamd")
            .arg("-c")
            .arg(self.dir.path().join("clamd.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start clamd");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.command(b"zPING\0").as_deref() != Some("PONG") {
            assert!(
                Instant::now() < deadline,
                "clamd did not answer PING: {}",
                std::fs::read_to_string(self.dir.path().join("clamd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Kills it: its socket stops answering, as a scanner that went away.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(&self.socket);
    }

    /// Scans `data` with `INSTREAM`, as a client of clamd would; clamd's answer without the
    /// terminating NUL (`stream: OK`, `stream: <name> FOUND`), or `None` when it does not
    /// answer.
    pub fn scan(&self, data: &[u8]) -> Option<String> {
        let mut request = b"zINSTREAM\0".to_vec();
        for chunk in data.chunks(64 * 1024) {
            request.extend_from_slice(&(chunk.len() as u32).to_be_bytes());
            request.extend_from_slice(chunk);
        }
        request.extend_from_slice(&0u32.to_be_bytes());
        self.command(&request)
    }

    fn command(&self, request: &[u8]) -> Option<String> {
        let mut stream = UnixStream::connect(&self.socket).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
        // clamd answers and closes as soon as a stream passes its limit: what it said is
        // read even when the rest of the request could not be written.
        let _ = stream.write_all(request);
        let mut answer = Vec::new();
        let mut buf = [0u8; 4096];
        while !answer.ends_with(b"\0") {
            match stream.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
        if answer.is_empty() {
            return None;
        }
        Some(String::from_utf8_lossy(answer.strip_suffix(b"\0").unwrap_or(&answer)).into_owned())
    }
}

impl Drop for Clamd {
    fn drop(&mut self) {
        self.stop();
    }
}
