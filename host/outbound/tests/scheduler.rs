//! The delivery scheduler against a real spool and Maildir: expiry returns the message to its sender, and a
//! message from the null sender is never bounced.

use std::sync::Arc;
use std::time::{Duration, Instant};

use portcullis_outbound::{Delivery, DeliverySettings, DnsSettings, Resolver, Route, Routing, TlsPolicy};
use portcullis_smtp::envelope::{Envelope, MailParams, Recipient};
use portcullis_smtp::{Folder, Mailbox};
use portcullis_spool::{Maildir, QueueId, Spool};

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
            alias: None,
            sender: None,
            reports_expansion: false,
        }],
    }
}

async fn run(sender: Option<Mailbox>) -> (tempfile::TempDir, Arc<Spool>, Vec<String>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let spool = Arc::new(Spool::open(&dir.path().join("spool")).expect("spool"));
    let entry = spool
        .store(
            QueueId::generate(),
            envelope(sender),
            Folder::Inbox,
            "",
            b"Subject: old news\r\n\r\nbody\r\n",
        )
        .expect("store");
    let mail = dir.path().join("mail");
    let (delivery, _sweep) = Delivery::start(
        Arc::clone(&spool),
        Maildir::new(mail.clone(), "mx.example.org"),
        Routing::new(
            settings(),
            Resolver::new(&DnsSettings::default()).expect("resolver"),
        ),
    );
    delivery.deliver(entry.id.clone());
    // The message leaves the queue, and the report it owes (delivered into the sender's
    // mailbox by the same scheduler) too.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !spool.list().expect("list").is_empty() {
        assert!(
            Instant::now() < deadline,
            "the expired message (or its report) never left the queue"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let inbox = mail.join("example.org").join("alice").join("new");
    let reports = match std::fs::read_dir(&inbox) {
        Ok(files) => files
            .map(|f| std::fs::read_to_string(f.expect("entry").path()).expect("read"))
            .collect(),
        Err(_) => Vec::new(),
    };
    (dir, spool, reports)
}

#[tokio::test]
async fn expiry_returns_the_message_to_a_local_sender() {
    let alice = Mailbox {
        local: "alice".into(),
        domain: "example.org".into(),
    };
    let (_dir, _spool, reports) = run(Some(alice.clone())).await;
    assert_eq!(reports.len(), 1, "one DSN delivered to the sender");
    let text = &reports[0];
    assert!(
        text.starts_with("Return-Path: <>\r\n"),
        "DSNs come from the null sender: {text}"
    );
    assert!(text.contains("Delivered-To: alice@example.org\r\n"), "{text}");
    assert!(
        text.contains("Status: 4.4.7") && text.contains("Subject: old news"),
        "{text}"
    );
}

#[tokio::test]
async fn a_bounce_is_never_bounced() {
    let (_dir, spool, reports) = run(None).await;
    assert!(reports.is_empty(), "a DSN was queued for a message from <>");
    assert!(spool.list().expect("list").is_empty());
}
