//! `portcullis queue list | show ID | remove ID`: the operator's view of the spool (`queue
//! flush` talks to the running daemon, see [`crate::control`]).
//!
//! None may hurt a running daemon: `list` and `show` read the queue through a read-only view
//! (it never removes, renames or takes a file), and `remove` asks the daemon to do it
//! when one runs (it owns the spool's lock); only with none running does it act on the
//! files itself, holding the lock meanwhile, so a daemon starting then waits for it.

use std::io::{IsTerminal, Write};
use std::time::{SystemTime, UNIX_EPOCH};

use portcullis_smtp::escape::Escaped;
use portcullis_spool::{Entry, QueueId, Spool, SpoolError, SpoolView};

use crate::config::Config;

/// The spool's read-only view, or `None` when there is no spool yet.
fn view(config: &Config) -> Result<Option<SpoolView>, String> {
    let dir = config.server.data_dir.join("spool");
    match SpoolView::open(&dir) {
        Ok(view) => Ok(Some(view)),
        Err(SpoolError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Prints one line per queued message: id, age, size, sender and pending recipients.
pub fn list(config: &Config) -> Result<(), String> {
    let Some(spool) = view(config)? else {
        let dir = config.server.data_dir.join("spool");
        println!("0 message(s) queued (no spool at {} yet)", dir.display());
        return Ok(());
    };
    let ids = spool.list().map_err(|e| e.to_string())?;
    let now = now();
    for id in &ids {
        match spool.entry(id) {
            Ok(entry) => describe(&entry, now),
            // Delivered between the listing and the read: not queued any more.
            Err(SpoolError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => println!("{id}  unreadable: {e}"),
        }
    }
    println!("{} message(s) queued", ids.len());
    Ok(())
}

/// What `queue list` prints of one message: id, age, size, sender, pending recipients,
/// then the attempts and each recipient's last error.
fn describe(entry: &Entry, now: u64) {
    let pending: Vec<String> = entry
        .pending
        .iter()
        .filter_map(|i| entry.envelope.recipients.get(*i))
        .map(|r| r.mailbox.to_string())
        .collect();
    println!(
        "{}  {:>6}s  {:>8}  {}  -> {}",
        entry.id,
        now.saturating_sub(entry.received_at),
        entry.size,
        entry.envelope.reverse_path(),
        pending.join(", ")
    );
    if entry.attempts > 0 {
        println!(
            "    {} attempt(s), next in {}s",
            entry.attempts,
            entry.next_attempt.saturating_sub(now)
        );
    }
    for (index, error) in &entry.last_error {
        if let Some(r) = entry.envelope.recipients.get(*index) {
            // A remote server wrote that text: no control character reaches the terminal.
            let text = error.to_string();
            println!("    {}: {}", r.mailbox, Escaped(text.trim_end()));
        }
    }
}

/// Prints one queued message as `queue list` describes it, a blank line, then the message
/// as it will be delivered (the trace and hook headers in front, removed fields left
/// out); with `headers_only`, its header section alone. Piped, the message is written
/// exactly; on a terminal, with its control characters escaped.
pub fn show(config: &Config, id: &str, headers_only: bool) -> Result<(), String> {
    let id = QueueId::parse(id).ok_or_else(|| format!("{id:?} is not a queue id"))?;
    let missing = || format!("no message {id} in the queue");
    let spool = view(config)?.ok_or_else(missing)?;
    let (entry, content) = match spool.load(&id) {
        Ok(loaded) => loaded,
        Err(SpoolError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            return Err(missing());
        }
        Err(e) => return Err(e.to_string()),
    };
    describe(&entry, now());
    println!();
    // Read as delivery reads it: the head in front, the fields the host removed left out.
    let message = content;
    let shown = if headers_only {
        let end = message.windows(4).position(|w| w == b"\r\n\r\n");
        end.map_or(&message[..], |end| &message[..end + 2])
    } else {
        &message[..]
    };
    let mut out = std::io::stdout().lock();
    let written = if out.is_terminal() {
        // A stranger wrote the message: on a terminal its control characters are shown
        // as escapes (lines end as the terminal expects); piped, it is written exactly.
        shown.split(|&b| b == b'\n').try_for_each(|line| {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            writeln!(out, "{}", Escaped(&String::from_utf8_lossy(line)))
        })
    } else {
        out.write_all(shown)
    };
    written
        .and_then(|()| out.flush())
        .map_err(|e| format!("cannot write the message: {e}"))
}

/// Removes one message from the queue for good.
pub fn remove(config: &Config, id: &str) -> Result<(), String> {
    let id = QueueId::parse(id).ok_or_else(|| format!("{id:?} is not a queue id"))?;
    let data_dir = &config.server.data_dir;
    if crate::control::remove(data_dir, &id)?.is_some() {
        println!("removed {id} (by the running daemon)");
        return Ok(());
    }
    let spool = Spool::open_if_unlocked(&data_dir.join("spool"))
        .map_err(|e| e.to_string())?
        .ok_or_else(|| {
            format!(
                "a daemon holds the spool in {} but its control socket does not answer; try again, or stop it first",
                data_dir.display()
            )
        })?;
    if !spool.discard(&id).map_err(|e| e.to_string())? {
        return Err(format!("no message {id} in the queue"));
    }
    println!("removed {id}");
    Ok(())
}
