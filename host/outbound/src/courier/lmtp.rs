//! The LMTP courier (RFC 2033): hands local recipients' copies to a mail store that
//! speaks LMTP — Dovecot's `lmtp` service — instead of writing Maildirs ourselves.
//!
//! One session per batch: LHLO, then MAIL, every RCPT and DATA pipelined (LMTP servers
//! always take PIPELINING), the message, and one reply per accepted recipient after the
//! final dot: each recipient has its own fate (a 4xx for one is retried for that one alone,
//! a 5xx bounces that one alone). A junk message goes to `<user>+Junk@<domain>`, which
//! Dovecot files in the Junk folder with `lmtp_save_to_detail_mailbox = yes`. No
//! `Return-Path:` or `Delivered-To:` is added here: the LMTP server adds its own.

use std::path::PathBuf;
use std::time::Duration;

use portcullis_smtp::client::{Extensions, RecipientResult, ReplyParser, dot_stuff, mail_command};
use portcullis_smtp::{Enhanced, Folder, Reply};
use portcullis_spool::Entry;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::Semaphore;

use super::{Courier, Delivering, Outcome, Parcel};

/// Sessions to the LMTP server at once.
const PARALLEL: usize = 4;
/// Delays between attempts of a recipient the store deferred (over quota, store down).
const RETRY: [Duration; 5] = [
    Duration::from_secs(30),
    Duration::from_secs(60),
    Duration::from_secs(300),
    Duration::from_secs(900),
    Duration::from_secs(1800),
];

/// Where the LMTP server listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LmtpAddress {
    /// A Unix socket (`/run/dovecot/lmtp`).
    Unix(PathBuf),
    /// A TCP address (`127.0.0.1:24`).
    Tcp(std::net::SocketAddr),
}

impl std::fmt::Display for LmtpAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LmtpAddress::Unix(path) => write!(f, "unix:{}", path.display()),
            LmtpAddress::Tcp(address) => write!(f, "tcp:{address}"),
        }
    }
}

/// Delivers local recipients over LMTP.
pub struct LmtpCourier {
    address: LmtpAddress,
    hostname: String,
    connect_timeout: Duration,
    command_timeout: Duration,
    data_timeout: Duration,
    slots: Semaphore,
}

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<S: AsyncRead + AsyncWrite + Unpin + Send> Stream for S {}

/// Why a session ended before every recipient was answered.
struct Broken(String);

impl LmtpCourier {
    /// A courier to the LMTP server at `address`, greeting it as `hostname`.
    pub fn new(
        address: LmtpAddress,
        hostname: &str,
        connect_timeout: Duration,
        command_timeout: Duration,
        data_timeout: Duration,
    ) -> Self {
        LmtpCourier {
            address,
            hostname: hostname.to_string(),
            connect_timeout,
            command_timeout,
            data_timeout,
            slots: Semaphore::new(PARALLEL),
        }
    }

    async fn connect(&self) -> Result<Box<dyn Stream>, Broken> {
        let connecting = async {
            Ok::<Box<dyn Stream>, std::io::Error>(match &self.address {
                LmtpAddress::Unix(path) => Box::new(tokio::net::UnixStream::connect(path).await?),
                LmtpAddress::Tcp(address) => Box::new(tokio::net::TcpStream::connect(address).await?),
            })
        };
        match tokio::time::timeout(self.connect_timeout, connecting).await {
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(e)) => Err(Broken(format!("cannot connect: {e}"))),
            Err(_) => Err(Broken("connection timed out".into())),
        }
    }

    /// One session for the parcel: a result for each of its recipients, in order, or why
    /// the session broke (recipients it answered before keep their answers).
    async fn session(&self, parcel: &Parcel, results: &mut [Option<RecipientResult>]) -> Result<(), Broken> {
        let mut io = self.connect().await?;
        let mut parser = ReplyParser::new();
        let greeting = reply(&mut io, &mut parser, self.command_timeout).await?;
        if !greeting.is_positive() {
            return Err(Broken(format!("greeting: {greeting}")));
        }
        send(
            &mut io,
            format!("LHLO {}\r\n", self.hostname).as_bytes(),
            self.command_timeout,
        )
        .await?;
        let lhlo = reply(&mut io, &mut parser, self.command_timeout).await?;
        if !lhlo.is_positive() {
            return Err(Broken(format!("LHLO: {lhlo}")));
        }
        let ext = Extensions::from_ehlo(&lhlo);
        let entry = &parcel.entry;
        let envelope = &entry.envelope;

        // MAIL, the RCPTs and DATA in one write.
        let mut commands = mail_command(envelope, &ext, parcel.message.len() as u64);
        for &index in &parcel.recipients {
            commands.push_str(&format!("RCPT TO:<{}>\r\n", lmtp_recipient(entry, index)));
        }
        commands.push_str("DATA\r\n");
        send(&mut io, commands.as_bytes(), self.command_timeout).await?;
        let mail = reply(&mut io, &mut parser, self.command_timeout).await?;
        let mut accepted = Vec::new();
        for (slot, _) in parcel.recipients.iter().enumerate() {
            let rcpt = reply(&mut io, &mut parser, self.command_timeout).await?;
            if !mail.is_positive() {
                results[slot] = Some(RecipientResult::from_reply(&mail));
            } else if rcpt.is_positive() {
                accepted.push(slot);
            } else {
                results[slot] = Some(RecipientResult::from_reply(&rcpt));
            }
        }
        let data = reply(&mut io, &mut parser, self.command_timeout).await?;
        if data.code != 354 {
            // No recipient was taken (or DATA was refused for all): each keeps its answer.
            for slot in accepted {
                results[slot] = Some(RecipientResult::from_reply(&data));
            }
            let _ = send(&mut io, b"QUIT\r\n", self.command_timeout).await;
            return Ok(());
        }
        let content = if accepted.is_empty() {
            b".\r\n".to_vec()
        } else {
            dot_stuff(&parcel.message)
        };
        send(&mut io, &content, self.data_timeout).await?;
        // One reply per accepted recipient, in RCPT order (RFC 2033 4.2).
        for slot in accepted {
            let done = reply(&mut io, &mut parser, self.data_timeout).await?;
            results[slot] = Some(RecipientResult::from_reply(&done));
        }
        let _ = send(&mut io, b"QUIT\r\n", self.command_timeout).await;
        Ok(())
    }
}

/// The address the LMTP server gets for recipient `index`: the address as it was given
/// (with its `+detail`, for Sieve) when it names its mailbox, else the mailbox it resolved
/// to (`postmaster@` of `[domains] postmaster`, a role address an alias names); for a junk
/// message the mailbox with the `+Junk` detail.
fn lmtp_recipient(entry: &Entry, index: usize) -> String {
    let recipient = &entry.envelope.recipients[index];
    let owner = recipient
        .deliver_to
        .clone()
        .unwrap_or_else(|| recipient.mailbox.without_detail());
    match entry.folder {
        Folder::Junk => format!("{}+Junk@{}", owner.local, owner.domain),
        Folder::Inbox => {
            let named = recipient.mailbox.without_detail();
            if named.local.eq_ignore_ascii_case(&owner.local)
                && named.domain.eq_ignore_ascii_case(&owner.domain)
            {
                recipient.mailbox.to_string()
            } else {
                owner.to_string()
            }
        }
    }
}

async fn send(io: &mut Box<dyn Stream>, bytes: &[u8], timeout: Duration) -> Result<(), Broken> {
    let write = async {
        io.write_all(bytes).await?;
        io.flush().await
    };
    match tokio::time::timeout(timeout, write).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(Broken(format!("write failed: {e}"))),
        Err(_) => Err(Broken("write timed out".into())),
    }
}

async fn reply(io: &mut Box<dyn Stream>, parser: &mut ReplyParser, wait: Duration) -> Result<Reply, Broken> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut buf = [0u8; 4096];
    loop {
        match parser.next_reply() {
            Ok(Some(reply)) => return Ok(reply),
            Ok(None) => {}
            Err(e) => return Err(Broken(format!("protocol error: {e}"))),
        }
        match tokio::time::timeout_at(deadline, io.read(&mut buf)).await {
            Ok(Ok(0)) => return Err(Broken("connection closed by the server".into())),
            Ok(Ok(n)) => parser.feed(&buf[..n]),
            Ok(Err(e)) => return Err(Broken(format!("read failed: {e}"))),
            Err(_) => return Err(Broken("timed out waiting for a reply".into())),
        }
    }
}

impl Courier for LmtpCourier {
    fn batches(&self, _entry: &Entry, recipients: Vec<usize>) -> Vec<Vec<usize>> {
        vec![recipients]
    }

    fn carry(&self, parcel: Parcel) -> Delivering<'_> {
        Box::pin(async move {
            // Never closed: the courier lives as long as the scheduler.
            let _slot = self.slots.acquire().await.ok();
            let mut results = vec![None; parcel.recipients.len()];
            let broken = self.session(&parcel, &mut results).await.err();
            if let Some(Broken(why)) = &broken {
                tracing::warn!(queue_id = %parcel.entry.id, lmtp = %self.address, error = %why, "LMTP delivery broke off; unanswered recipients stay queued");
            }
            let host = Some(self.address.to_string());
            parcel
                .recipients
                .iter()
                .zip(results)
                .map(|(&index, result)| Outcome {
                    index,
                    // Unanswered: not delivered as far as we know; tried again (a copy the
                    // server stored before the break may then arrive twice).
                    result: result.unwrap_or_else(|| {
                        RecipientResult::Defer(Reply::new(
                            451,
                            Some(Enhanced(4, 4, 2)),
                            format!(
                                "LMTP at {}: {}",
                                self.address,
                                broken.as_ref().map_or("no answer", |b| b.0.as_str())
                            ),
                        ))
                    }),
                    host: host.clone(),
                    peer_dsn: false,
                })
                .collect()
        })
    }

    fn retry_after(&self, attempts: u32) -> Duration {
        RETRY[(attempts as usize).saturating_sub(1).min(RETRY.len() - 1)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_smtp::envelope::{Envelope, Recipient};

    #[test]
    fn the_lmtp_server_gets_the_address_that_names_the_mailbox() {
        let mb = |text: &str| portcullis_smtp::address::parse_mailbox(text).expect("address");
        let alice = mb("alice@example.org");
        let mut entry = Entry::new(
            portcullis_spool::QueueId::generate(),
            0,
            Envelope {
                mail_from: None,
                params: Default::default(),
                recipients: vec![
                    Recipient::local(mb("Alice+lists@example.org"), Default::default(), alice.clone()),
                    // A role address that resolves to another account's mailbox.
                    Recipient::local(mb("postmaster@example.org"), Default::default(), alice.clone()),
                ],
            },
            Folder::Inbox,
        );
        assert_eq!(lmtp_recipient(&entry, 0), "Alice+lists@example.org");
        assert_eq!(lmtp_recipient(&entry, 1), "alice@example.org");
        entry.folder = Folder::Junk;
        assert_eq!(lmtp_recipient(&entry, 0), "alice+Junk@example.org");
        assert_eq!(lmtp_recipient(&entry, 1), "alice+Junk@example.org");
    }
}
