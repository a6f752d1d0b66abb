//! The control socket, `<data-dir>/control.sock`: how the operator commands reach the
//! running daemon. One line in, one line out (`ok ...` or `error ...`):
//!
//! - `flush`: try every queued message now (`portcullis queue flush`); answers `ok N`.
//! - `accounts`: re-read the users file now (`portcullis user ...`); answers `ok N`, the
//!   accounts in force.
//! - `remove ID`: remove a queued message for good (`portcullis queue remove`), under the
//!   same lock as delivery; answers `ok removed` or an error.
//!
//! The socket is mode 0600 in the data directory, so only the daemon's user (and root)
//! may use it.

use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;

/// What a client may ask.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// Try every queued message now.
    Flush,
    /// Re-read the users file.
    Accounts,
    /// Remove this queued message.
    Remove(portcullis_spool::QueueId),
}

/// The daemon's side: answers a request with the text after `ok `, or an error.
pub type Handler =
    Arc<dyn Fn(Request) -> Pin<Box<dyn Future<Output = Result<String, String>> + Send>> + Send + Sync>;

/// The socket's path in `data_dir`.
pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join("control.sock")
}

/// Binds the socket (replacing a stale one left by a crash) and serves it.
pub fn serve(data_dir: &Path, handler: Handler) -> std::io::Result<()> {
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
            let handler = Arc::clone(&handler);
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut line = String::new();
                // One short line is all a client may make us buffer.
                let mut reader = BufReader::new(read.take(256));
                if reader.read_line(&mut line).await.is_err() {
                    return;
                }
                let request = match line.trim().split_once(' ') {
                    None if line.trim() == "flush" => Some(Request::Flush),
                    None if line.trim() == "accounts" => Some(Request::Accounts),
                    Some(("remove", id)) => portcullis_spool::QueueId::parse(id).map(Request::Remove),
                    _ => None,
                };
                let answer = match request {
                    Some(request) => match handler(request).await {
                        Ok(text) => format!("ok {text}\n"),
                        Err(e) => format!("error {}\n", e.replace('\n', " ")),
                    },
                    None => format!(
                        "error unknown command {:?}\n",
                        line.trim().chars().take(40).collect::<String>()
                    ),
                };
                let _ = write.write_all(answer.as_bytes()).await;
            });
        }
    });
    Ok(())
}

/// Sends `command` to the daemon of `data_dir`; `Ok(None)` when none is running there.
fn ask(data_dir: &Path, command: &str) -> Result<Option<String>, String> {
    use std::io::{BufRead, Write};
    let path = path(data_dir);
    let mut stream = match std::os::unix::net::UnixStream::connect(&path) {
        Ok(stream) => stream,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None);
        }
        Err(e) => return Err(format!("cannot reach the daemon at {}: {e}", path.display())),
    };
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(format!("{command}\n").as_bytes())
        .map_err(|e| e.to_string())?;
    let mut answer = String::new();
    std::io::BufReader::new(stream)
        .read_line(&mut answer)
        .map_err(|e| format!("no answer from the daemon: {e}"))?;
    match answer.trim().strip_prefix("ok ") {
        Some(text) => Ok(Some(text.to_string())),
        None => Err(format!("the daemon said {:?}", answer.trim())),
    }
}

/// `portcullis queue flush`: asks the running daemon to try every queued message now.
pub fn flush(data_dir: &Path) -> Result<usize, String> {
    let answer = ask(data_dir, "flush")?.ok_or_else(|| {
        format!(
            "no daemon answers at {} (is it running?)",
            path(data_dir).display()
        )
    })?;
    answer.parse().map_err(|_| format!("the daemon said {answer:?}"))
}

/// `portcullis queue remove ID` with a daemon running: asks it to remove the message.
/// `Ok(None)` when no daemon runs on this data directory.
pub fn remove(data_dir: &Path, id: &portcullis_spool::QueueId) -> Result<Option<()>, String> {
    Ok(ask(data_dir, &format!("remove {id}"))?.map(|_| ()))
}

/// After `portcullis user ...`: asks a running daemon to re-read the users file now.
/// `Ok(None)` when no daemon runs on this data directory; else the accounts in force.
pub fn reload_accounts(data_dir: &Path) -> Result<Option<usize>, String> {
    match ask(data_dir, "accounts")? {
        None => Ok(None),
        Some(answer) => answer
            .parse()
            .map(Some)
            .map_err(|_| format!("the daemon said {answer:?}")),
    }
}
