//! The queue runner against a real spool: expiry returns the message to its sender, and a
//! message from the null sender is never bounced.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use portcullis_outbound::{DeliverySettings, Outbound, Route, Routing, TlsPolicy};
use portcullis_smtp::envelope::{Envelope, MailParams, Recipient};
use portcullis_smtp::{Folder, Mailbox};
use portcullis_spool::{QueueId, Spool};

fn settings() -> DeliverySettings {
    let mut s = DeliverySettings::new("mx.example.org");
    s.local_domains = vec!["example.org".into()];
    s.expire = Duration::ZERO;
    s.routes.insert(
        "far.example".into(),
        Route {
            host: "127.0.0.1".into(),
            port: 9,
            tls: TlsPolicy::Disabled,
            auth: None,
        },
    );
    s
}

fn envelope(sender: Option<Mailbox>) -> Envelope {
    Envelope {
        mail_from: sender,
        params: MailParams::default(),
        recipients: vec![Recipient {
            mailbox: Mailbox {
                local: "bob".into(),
                domain: "far.example".into(),
            },
            params: Default::default(),
            local: false,
            deliver_to: None,
        }],
    }
}

async fn run(sender: Option<Mailbox>) -> (tempfile::TempDir, Arc<Spool>, Vec<QueueId>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let spool = Arc::new(Spool::open(dir.path()).expect("spool"));
    let entry = spool
        .store(
            QueueId::generate(),
            envelope(sender),
            Folder::Inbox,
            "",
            b"Subject: old news\r\n\r\nbody\r\n",
        )
        .expect("store");
    let handed: Arc<Mutex<Vec<QueueId>>> = Arc::default();
    let seen = Arc::clone(&handed);
    let outbound = Outbound::start(
        Arc::clone(&spool),
        Routing::new(settings()).expect("context"),
        Arc::new(move |id| seen.lock().expect("lock").push(id)),
    );
    outbound.submit(entry.id.clone());
    let deadline = Instant::now() + Duration::from_secs(20);
    while spool.list().expect("list").contains(&entry.id) {
        assert!(
            Instant::now() < deadline,
            "the expired message never left the queue"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let handed = handed.lock().expect("lock").clone();
    (dir, spool, handed)
}

#[tokio::test]
async fn expiry_returns_the_message_to_a_local_sender() {
    let alice = Mailbox {
        local: "alice".into(),
        domain: "example.org".into(),
    };
    let (_dir, spool, handed) = run(Some(alice.clone())).await;
    assert_eq!(handed.len(), 1, "one DSN handed to local delivery");
    let (dsn, body) = spool.load(&handed[0]).expect("dsn in the spool");
    assert_eq!(dsn.envelope.mail_from, None, "DSNs come from the null sender");
    assert_eq!(dsn.envelope.recipients.len(), 1);
    assert_eq!(dsn.envelope.recipients[0].mailbox, alice);
    assert!(dsn.envelope.recipients[0].local);
    let text = String::from_utf8_lossy(&body);
    assert!(
        text.contains("Status: 4.4.7") && text.contains("Subject: old news"),
        "{text}"
    );
}

#[tokio::test]
async fn a_bounce_is_never_bounced() {
    let (_dir, spool, handed) = run(None).await;
    assert!(handed.is_empty(), "a DSN was queued for a message from <>");
    assert!(spool.list().expect("list").is_empty());
}
