//! `portcullis queue list | remove ID`: the operator's view of the spool (`queue flush`
//! talks to the running daemon, see [`crate::control`]).

use std::time::{SystemTime, UNIX_EPOCH};

use portcullis_spool::{QueueId, Spool};

use crate::config::Config;

fn open(config: &Config) -> Result<Spool, String> {
    Spool::open(&config.server.data_dir.join("spool")).map_err(|e| e.to_string())
}

/// Prints one line per queued message: id, age, size, sender and pending recipients.
pub fn list(config: &Config) -> Result<(), String> {
    let spool = open(config)?;
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
                        println!("    {}: {error}", r.mailbox);
                    }
                }
            }
            Err(e) => println!("{id}  unreadable: {e}"),
        }
    }
    println!("{} message(s) queued", ids.len());
    Ok(())
}

/// Removes one message from the queue for good.
pub fn remove(config: &Config, id: &str) -> Result<(), String> {
    let id = QueueId::parse(id).ok_or_else(|| format!("{id:?} is not a queue id"))?;
    let spool = open(config)?;
    if !spool.list().map_err(|e| e.to_string())?.contains(&id) {
        return Err(format!("no message {id} in the queue"));
    }
    spool.remove(&id).map_err(|e| e.to_string())?;
    println!("removed {id}");
    Ok(())
}
