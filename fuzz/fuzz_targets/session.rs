//! Feeds arbitrary bytes, in arbitrary chunks, to sessions of both pipelines, answering
//! every host request; the session must never panic and never spool a bare CR or LF.
//!
//! Run: `cargo +nightly fuzz run session` (from `fuzz/`, with cargo-fuzz installed).

#![no_main]

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use portcullis_smtp::session::{AuthOutcome, Target, TlsInfo};
use portcullis_smtp::{
    Action, Destination, Directory, Limits, Mailbox, Mx, Pipeline, Session, Settings, Submission, Verdict,
};

struct Everyone;

impl Directory for Everyone {
    fn primary_domain(&self) -> &str {
        "example.org"
    }
    fn is_local_domain(&self, domain: &str) -> bool {
        domain == "example.org"
    }
    /// alice's mailbox, and `team@`, an alias of alice and an address elsewhere.
    fn resolve(&self, address: &Mailbox) -> Option<Destination> {
        let owner = address.without_detail();
        match owner.local.as_str() {
            "alice" => Some(Destination::Mailbox(owner)),
            "team" => Some(Destination::Alias(vec![
                Target::Local {
                    address: Mailbox {
                        local: "alice".into(),
                        domain: "example.org".into(),
                    },
                    mailbox: Mailbox {
                        local: "alice".into(),
                        domain: "example.org".into(),
                    },
                },
                Target::Remote(Mailbox {
                    local: "bob".into(),
                    domain: "far.example".into(),
                }),
            ])),
            _ => None,
        }
    }
    fn forwarding_sender(&self, sender: &Mailbox, alias: &Mailbox) -> Option<Mailbox> {
        Some(Mailbox {
            local: format!("SRS0={}", sender.local),
            domain: alias.domain.clone(),
        })
    }
    fn may_send_as(&self, _: &str, _: &Mailbox) -> bool {
        true
    }
}

fn run<P: Pipeline>(data: &[u8]) {
    let settings = Arc::new(Settings {
        hostname: "fuzz.example".into(),
        limits: Limits {
            message_size: 4096,
            memory_per_message: 4096,
            ..Limits::default()
        },
        tls_available: true,
        // Room for one content at a time: a reservation not given back shows as a 452.
        storage: portcullis_smtp::content::Storage {
            budget: Some(portcullis_smtp::content::Budget::new(4096)),
            spill: None,
            room: None,
        },
    });
    let peer = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let mut session = Session::<P>::new(settings, Arc::new(Everyone), peer, None);
    let chunk = 1 + data.first().copied().unwrap_or(0) as usize % 97;
    let mut chunks = data.chunks(chunk);
    loop {
        match session.poll() {
            Action::Read => match chunks.next() {
                Some(bytes) => session.feed(bytes),
                None => return,
            },
            Action::Close => return,
            Action::Reply(reply) => assert!(
                reply != portcullis_smtp::replies::INSUFFICIENT_STORAGE,
                "one session alone never runs out: a content's memory was not given back"
            ),
            Action::Pause(_) => {}
            Action::StartTls => {
                let info = TlsInfo {
                    protocol: "TLSv1.3".into(),
                    cipher: "x".into(),
                    peer_subject: None,
                };
                session.tls_established(info).expect("waiting for TLS");
            }
            Action::Authenticate(c) => {
                let outcome = if c.password == "pw" {
                    AuthOutcome::Accept { account: c.username }
                } else {
                    AuthOutcome::Reject
                };
                session.resolve_auth(outcome).expect("waiting for auth");
            }
            Action::CallHook(_) => session
                .resolve_hook(Verdict::Accept)
                .expect("waiting for a verdict"),
            Action::LookUpRecipient(_) => session
                .resolve_recipient(portcullis_smtp::session::RecipientLookup::Unknown)
                .expect("waiting for a lookup"),
            Action::CheckAuthentication(_) => session
                .resolve_checks(Verdict::Accept)
                .expect("waiting for the checks"),
            Action::Spool(request) => {
                let body = request
                    .message
                    .body
                    .in_memory()
                    .expect("without a spill source, content stays in memory");
                for (i, b) in body.iter().enumerate() {
                    match b {
                        b'\r' => assert_eq!(body.get(i + 1), Some(&b'\n')),
                        b'\n' => assert!(i > 0 && body[i - 1] == b'\r'),
                        _ => {}
                    }
                }
                session
                    .resolve_spool(Ok("F1".into()))
                    .expect("waiting for the spool");
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    run::<Mx>(data);
    run::<Submission>(data);
});
