//! Redis (Debian's `redis-server`) of a test's own: a free loopback port, no persistence,
//! a directory of its own. It can be stopped and started again, as an outage.

use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::postfix::free_port;

/// A running redis-server, killed when dropped.
pub struct Redis {
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl Redis {
    /// Starts it; returns once it accepts connections.
    pub fn start() -> Redis {
        assert!(
            std::path::Path::new("/usr/bin/redis-server").exists(),
            "redis-server is missing: apt-get install redis-server (scripts/test.sh does)"
        );
        let dir = tempfile::Builder::new()
            .prefix("portcullis-redis")
            .tempdir()
            .expect("tempdir");
        let mut redis = Redis {
            dir,
            child: None,
            addr: SocketAddr::from(([127, 0, 0, 1], free_port())),
        };
        redis.resume();
        redis
    }

    /// Its URL, database 0.
    pub fn url(&self) -> String {
        format!("redis://{}/0", self.addr)
    }

    /// Starts it again after [`Redis::stop`] (empty: it keeps nothing on disk).
    pub fn resume(&mut self) {
        let child = Command::new("/usr/bin/redis-server")
            .args(["--port", &self.addr.port().to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(self.addr).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops it at once, as a crash would.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}
