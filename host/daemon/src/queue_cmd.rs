//! `portcullis queue list | remove ID`: the operator's view of the spool (`queue flush`
//! talks to the running daemon, see [`crate::control`]).
//!
//! Neither may hurt a running daemon: `list` reads the queue through a read-only view
//! (it never removes, renames or takes a file), and `remove` asks the daemon to do it
//! when one runs (it owns the spool's lock); only with none running does it act on the
//! files itself, holding the lock meanwhile, so a daemon starting then waits for it.

use std::time::{SystemTime, UNIX_EPOCH};

use portcullis_spool::{QueueId, Spool, SpoolError, SpoolView};

use crate::config::Config;

/// Prints one line per queued message: id, age, size, sender and pending recipients.
pub fn list(config: &Config) -> Result<(), String> {
    let dir = config.server.data_dir.join("spool");
    let spool = match SpoolView::open(&dir) {
        Ok(view) => view,
        Err(SpoolError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            println!("0 message(s) queued (no spool at {} yet)", dir.display());
            return Ok(());
        }
        Err(e) => return Err(e.to_string()),
    };
    let ids = spool.list().map_err(|e| e.to_string())?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    for id in &ids {
        match spool.load(id) {
            Ok((entry, _)) => {
                let pending: Vec<String> = entry
                    .pending
                    .iter()
                    .filter_map(|i| entry.envelope.recipients.get(*i))
                    .map(|r| r.mailbox.to_string())
                    .collect();
                println!(
                    "{id}  {:>6}s  {:>8}  {}  -> {}",
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
                        println!("    {}: {}", r.mailbox, error.to_string().trim_end());
                    }
                }
            }
            // Delivered between the listing and the read: not queued any more.
            Err(SpoolError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => println!("{id}  unreadable: {e}"),
        }
    }
    println!("{} message(s) queued", ids.len());
    Ok(())
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
