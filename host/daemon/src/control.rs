//! The control socket, `<data-dir>/control.sock`: how `portcullis queue flush` reaches the
//! running daemon. One line in (`flush`), one line out (`ok N` or `error ...`). The socket
//! is mode 0600 in the data directory, so only the daemon's user (and root) may use it.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use portcullis_outbound::Outbound;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;

/// The socket's path in `data_dir`.
pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join("control.sock")
}

/// Binds the socket (replacing a stale one left by a crash) and serves it.
pub fn serve(data_dir: &Path, outbound: Outbound) -> std::io::Result<()> {
    let path = path(data_dir);
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let outbound = outbound.clone();
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut line = String::new();
                // One short line is all a client may make us buffer.
                let mut reader = BufReader::new(read.take(256));
                if reader.read_line(&mut line).await.is_err() {
                    return;
                }
                let answer = match line.trim() {
                    "flush" => {
                        let n = outbound.flush().await;
                        tracing::info!(
                            messages = n,
                            "queue flush requested: every queued message is tried now"
                        );
                        format!("ok {n}\n")
                    }
                    other => format!(
                        "error unknown command {:?}\n",
                        other.chars().take(40).collect::<String>()
                    ),
                };
                let _ = write.write_all(answer.as_bytes()).await;
            });
        }
    });
    Ok(())
}

/// `portcullis queue flush`: asks the running daemon to try every queued message now.
pub fn flush(data_dir: &Path) -> Result<usize, String> {
    use std::io::{BufRead, Write};
    let path = path(data_dir);
    let mut stream = std::os::unix::net::UnixStream::connect(&path).map_err(|e| {
        format!(
            "cannot reach the daemon at {}: {e} (is it running?)",
            path.display()
        )
    })?;
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    stream.write_all(b"flush\n").map_err(|e| e.to_string())?;
    let mut answer = String::new();
    std::io::BufReader::new(stream)
        .read_line(&mut answer)
        .map_err(|e| format!("no answer from the daemon: {e}"))?;
    answer
        .trim()
        .strip_prefix("ok ")
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("the daemon said {:?}", answer.trim()))
}
