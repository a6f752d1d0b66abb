//! Transcript tests: every row of the pipeline table and every refusal, without sockets.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::address::{Mailbox, Syntax};
use crate::data::BareLf;
use crate::envelope::Notify;
use crate::reply::Enhanced;

struct TestDirectory;

impl Directory for TestDirectory {
    fn primary_domain(&self) -> &str {
        "example.org"
    }
    fn is_local_domain(&self, domain: &str) -> bool {
        domain.eq_ignore_ascii_case("example.org")
    }
    fn resolve(&self, address: &Mailbox) -> Option<Destination> {
        let owner = address.without_detail();
        let local = |name: &str| Target::Local {
            address: mb(name, "example.org"),
            mailbox: mb(name, "example.org"),
        };
        match owner.local.to_ascii_lowercase().as_str() {
            "alice" | "bob" | "postmaster" => Some(Destination::Mailbox(owner)),
            // An alias of two mailboxes and an address elsewhere, and one of one mailbox.
            "team" => Some(Destination::Alias(vec![
                local("alice"),
                local("bob"),
                Target::Remote(mb("carol", "far.example")),
            ])),
            "solo" => Some(Destination::Alias(vec![local("alice")])),
            // Aliases of 600 addresses elsewhere each.
            name @ ("crowd" | "horde") => Some(Destination::Alias(
                (0..600)
                    .map(|i| Target::Remote(mb(&format!("{name}{i}"), "far.example")))
                    .collect(),
            )),
            _ => None,
        }
    }
    fn may_send_as(&self, account: &str, mailbox: &Mailbox) -> bool {
        account == format!("{}@{}", mailbox.local, mailbox.domain_lower())
    }
    fn forwarding_sender(&self, sender: &Mailbox, alias: &Mailbox) -> Option<Mailbox> {
        Some(mb(
            &format!("SRS0={}={}", sender.domain, sender.local),
            &alias.domain,
        ))
    }
}

fn mb(local: &str, domain: &str) -> Mailbox {
    Mailbox {
        local: local.into(),
        domain: domain.into(),
    }
}

/// The test directory, with an outside user database that knows `dave` and cannot answer
/// for `down`.
struct LookingDirectory;

impl Directory for LookingDirectory {
    fn primary_domain(&self) -> &str {
        TestDirectory.primary_domain()
    }
    fn is_local_domain(&self, domain: &str) -> bool {
        TestDirectory.is_local_domain(domain)
    }
    fn resolve(&self, address: &Mailbox) -> Option<Destination> {
        TestDirectory.resolve(address)
    }
    fn may_send_as(&self, account: &str, mailbox: &Mailbox) -> bool {
        TestDirectory.may_send_as(account, mailbox)
    }
    fn looks_up_unknown(&self) -> bool {
        true
    }
    /// `any…@` goes to alice when the user database does not know it.
    fn catch_all(&self, address: &Mailbox) -> Option<Destination> {
        address.local.starts_with("any").then(|| {
            Destination::Alias(vec![Target::Local {
                address: mb("alice", "example.org"),
                mailbox: mb("alice", "example.org"),
            }])
        })
    }
}

/// Plays the host: answers every request the way a test says, records what it saw.
struct Host<P: Pipeline> {
    session: Session<P>,
    verdicts: Vec<(Hook, Verdict)>,
    /// Header fields a hook's plugins ask to remove, given with its verdict.
    removals: Vec<(Hook, Vec<String>)>,
    /// What the authentication checks decide (MX), and how often they ran.
    checks: Verdict,
    checked: usize,
    /// What each hook saw of the header fields added before it.
    added_seen: Vec<Vec<Header>>,
    spooled: Vec<SpoolRequest>,
}

fn settings(tls_available: bool) -> Arc<Settings> {
    Arc::new(Settings {
        hostname: "mx.example.org".into(),
        limits: Limits::default(),
        tls_available,
        storage: Default::default(),
    })
}

fn tls_info() -> TlsInfo {
    TlsInfo {
        protocol: "TLSv1.3".into(),
        cipher: "TLS13_AES_128_GCM_SHA256".into(),
        peer_subject: None,
    }
}

fn show(reply: &Reply) -> String {
    match reply.enhanced {
        Some(e) => format!("{} {e}", reply.code),
        None => reply.code.to_string(),
    }
}

impl<P: Pipeline> Host<P> {
    fn new(settings: Arc<Settings>, tls: Option<TlsInfo>) -> Self {
        let peer = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7));
        let mut host = Host {
            session: Session::new(settings, Arc::new(TestDirectory), peer, tls),
            verdicts: Vec::new(),
            removals: Vec::new(),
            checks: Verdict::Accept,
            checked: 0,
            added_seen: Vec::new(),
            spooled: Vec::new(),
        };
        assert_eq!(host.run(), ["220"]);
        host
    }

    /// Runs the session until it needs input, answering every request.
    fn run(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        loop {
            match self.session.poll() {
                Action::Reply(r) => out.push(show(&r)),
                Action::Read => return out,
                Action::Close => {
                    out.push("close".into());
                    return out;
                }
                Action::Pause(d) => out.push(format!("pause {}", d.as_secs())),
                Action::StartTls => {
                    out.push("tls".into());
                    self.session.tls_established(tls_info()).unwrap();
                }
                Action::Authenticate(c) => {
                    out.push(format!("auth {}", c.username));
                    let outcome = if c.password == "secret" {
                        AuthOutcome::Accept { account: c.username }
                    } else {
                        AuthOutcome::Reject
                    };
                    self.session.resolve_auth(outcome).unwrap();
                }
                Action::CallHook(call) => {
                    let hook = call.hook();
                    out.push(format!("hook {}", hook.name()));
                    self.added_seen.push(self.session.info().added_headers.clone());
                    assert!(self.session.envelope().is_some());
                    // A content hook carries the message; the rate hook the envelope.
                    match &call {
                        HookCall::Rate(envelope) => assert!(!envelope.recipients.is_empty()),
                        HookCall::Virus(m) | HookCall::Spam(m) => {
                            assert!(self.session.message().is_some_and(|own| Arc::ptr_eq(own, m)))
                        }
                    }
                    let verdict = match self.verdicts.iter().position(|(h, _)| *h == hook) {
                        Some(i) => self.verdicts.remove(i).1,
                        None => Verdict::Accept,
                    };
                    if let Some(i) = self.removals.iter().position(|(h, _)| *h == hook) {
                        let names = self.removals.remove(i).1;
                        self.session.remove_header_fields(names);
                    }
                    self.session.resolve_hook(verdict).unwrap();
                }
                Action::LookUpRecipient(mailbox) => {
                    out.push(format!("lookup {mailbox}"));
                    let lookup = match mailbox.without_detail().local.as_str() {
                        "dave" => RecipientLookup::Exists(mailbox.without_detail()),
                        "down" => RecipientLookup::TempFail,
                        _ => RecipientLookup::Unknown,
                    };
                    self.session.resolve_recipient(lookup).unwrap();
                }
                Action::CheckAuthentication(message) => {
                    assert!(
                        self.session
                            .message()
                            .is_some_and(|own| Arc::ptr_eq(own, &message))
                    );
                    self.checked += 1;
                    let verdict = std::mem::replace(&mut self.checks, Verdict::Accept);
                    self.session.resolve_checks(verdict).unwrap();
                }
                Action::Spool(request) => {
                    out.push("spool".into());
                    self.spooled.push(request);
                    self.session.resolve_spool(Ok("Q1".into())).unwrap();
                }
            }
        }
    }

    fn send(&mut self, bytes: &[u8]) -> Vec<String> {
        self.session.feed(bytes);
        self.run()
    }

    /// Plays a table of (command line, expected outcome) rows.
    fn script(&mut self, rows: &[(&str, &[&str])]) {
        for (line, expected) in rows {
            let got = self.send(format!("{line}\r\n").as_bytes());
            assert_eq!(got, *expected, "after {line:?}");
        }
    }
}

fn mx() -> Host<Mx> {
    Host::new(settings(true), None)
}

/// An MX session in DATA, its envelope from a@b.example to alice.
fn mx_in_data() -> Host<Mx> {
    let mut h = mx();
    h.script(&[
        ("EHLO c", &["250"]),
        ("MAIL FROM:<a@b.example>", &["250 2.1.0"]),
        ("RCPT TO:<alice@example.org>", &["250 2.1.5"]),
        ("DATA", &["354"]),
    ]);
    h
}

/// A submission session that has done STARTTLS, EHLO and AUTH as alice.
fn submission_ready() -> Host<Submission> {
    let mut h = Host::<Submission>::new(settings(true), None);
    h.script(&[
        ("EHLO c", &["250"]),
        ("STARTTLS", &["220 2.0.0", "tls"]),
        ("EHLO c", &["250"]),
        (
            "AUTH PLAIN AGFsaWNlQGV4YW1wbGUub3JnAHNlY3JldA==",
            &["auth alice@example.org", "235 2.7.0"],
        ),
    ]);
    h
}

fn ehlo_lines<P: Pipeline>(h: &mut Host<P>) -> Vec<String> {
    h.session.feed(b"EHLO client.example\r\n");
    match h.session.poll() {
        Action::Reply(r) => r.text.split('\n').map(str::to_string).collect(),
        other => panic!("expected the EHLO reply, got {other:?}"),
    }
}

#[test]
fn submission_refuses_everything_but_the_basics_before_starttls() {
    let mut h = Host::<Submission>::new(settings(true), None);
    h.script(&[
        ("MAIL FROM:<alice@example.org>", &["530 5.7.0"]),
        ("EHLO c", &["250"]),
        ("NOOP", &["250 2.0.0"]),
        ("RSET", &["250 2.0.0"]),
        ("MAIL FROM:<alice@example.org>", &["530 5.7.0"]),
        ("RCPT TO:<bob@example.org>", &["530 5.7.0"]),
        ("DATA", &["530 5.7.0"]),
        ("BDAT 0 LAST", &["530 5.7.0"]),
        ("AUTH PLAIN AGFsaWNlAHNlY3JldA==", &["530 5.7.0"]),
        ("VRFY alice", &["530 5.7.0"]),
        ("HELP", &["530 5.7.0"]),
        ("QUIT", &["221 2.0.0", "close"]),
    ]);
}

#[test]
fn submission_never_advertises_auth_in_cleartext() {
    let mut h = Host::<Submission>::new(settings(true), None);
    let lines = ehlo_lines(&mut h);
    assert!(lines.iter().any(|l| l == "STARTTLS"));
    assert!(!lines.iter().any(|l| l.starts_with("AUTH")));
    h.run();
    h.script(&[("STARTTLS", &["220 2.0.0", "tls"])]);
    let lines = ehlo_lines(&mut h);
    assert!(lines.iter().any(|l| l == "AUTH PLAIN LOGIN"));
    assert!(
        !lines.iter().any(|l| l == "STARTTLS"),
        "STARTTLS is not offered inside TLS"
    );
}

#[test]
fn submission_requires_auth_after_tls() {
    let mut h = Host::<Submission>::new(settings(true), None);
    h.script(&[
        ("STARTTLS", &["220 2.0.0", "tls"]),
        ("MAIL FROM:<alice@example.org>", &["530 5.7.0"]),
        ("EHLO c", &["250"]),
        ("MAIL FROM:<alice@example.org>", &["530 5.7.0"]),
        ("RCPT TO:<bob@example.org>", &["530 5.7.0"]),
        ("DATA", &["530 5.7.0"]),
        ("STARTTLS", &["530 5.7.0"]),
        ("AUTH LOGIN", &["334"]),
        ("YWxpY2VAZXhhbXBsZS5vcmc=", &["334"]),
        ("c2VjcmV0", &["auth alice@example.org", "235 2.7.0"]),
        ("AUTH PLAIN AGFsaWNlAHNlY3JldA==", &["503 5.5.1"]),
        ("STARTTLS", &["503 5.5.1"]),
    ]);
}

#[test]
fn submission_happy_path_runs_rate_then_virus_then_spools() {
    let mut h = submission_ready();
    h.script(&[
        ("MAIL FROM:<alice@example.org> RET=HDRS ENVID=abc", &["250 2.1.0"]),
        (
            "RCPT TO:<friend@remote.example> NOTIFY=FAILURE ORCPT=rfc822;friend@remote.example",
            &["250 2.1.5"],
        ),
        ("RCPT TO:<bob@example.org>", &["250 2.1.5"]),
        ("RCPT TO:<nobody@example.org>", &["550 5.1.1"]),
        ("DATA", &["hook rate", "354"]),
    ]);
    assert_eq!(
        h.send(b"Subject: hi\r\n\r\nbody\r\n.\r\n"),
        ["hook virus", "spool", "250 2.0.0"]
    );
    let message = &h.spooled[0].message;
    assert_eq!(message.body.to_vec().unwrap(), b"Subject: hi\r\n\r\nbody\r\n");
    let envelope = &message.envelope;
    assert_eq!(envelope.params.envid.as_deref(), Some("abc"));
    assert_eq!(envelope.recipients.len(), 2);
    assert!(!envelope.recipients[0].local && envelope.recipients[1].local);
    assert_eq!(
        envelope.recipients[0].params.notify,
        Some(Notify {
            failure: true,
            ..Notify::default()
        })
    );
}

#[test]
fn submission_sender_must_belong_to_the_account() {
    let mut h = submission_ready();
    h.script(&[
        ("MAIL FROM:<bob@example.org>", &["553 5.7.1"]),
        ("MAIL FROM:<>", &["553 5.7.1"]),
        ("MAIL FROM:<alice@EXAMPLE.org>", &["250 2.1.0"]),
        ("AUTH PLAIN AGFsaWNlAHNlY3JldA==", &["503 5.5.1"]),
        ("MAIL FROM:<alice@example.org>", &["503 5.5.1"]),
    ]);
}

#[test]
fn failed_auth_slows_down_then_closes() {
    let mut h = Host::<Submission>::new(settings(true), Some(tls_info()));
    let bad = "AUTH PLAIN AGFsaWNlQGV4YW1wbGUub3JnAHdyb25n";
    h.script(&[
        ("EHLO c", &["250"]),
        (bad, &["auth alice@example.org", "pause 1", "535 5.7.8"]),
        (bad, &["auth alice@example.org", "pause 2", "535 5.7.8"]),
        (
            bad,
            &["auth alice@example.org", "535 5.7.8", "421 4.7.0", "close"],
        ),
    ]);
}

#[test]
fn auth_exchange_errors() {
    let mut h = Host::<Submission>::new(settings(true), Some(tls_info()));
    h.script(&[
        ("AUTH PLAIN AGFsaWNlAHNlY3JldA==", &["503 5.5.1"]),
        ("EHLO c", &["250"]),
        ("AUTH PLAIN", &["334"]),
        ("*", &["501 5.0.0"]),
        ("AUTH PLAIN", &["334"]),
        ("%%%", &["501 5.5.2"]),
        ("AUTH CRAM-MD5", &["504 5.5.4"]),
        (
            "AUTH PLAIN AGFsaWNlQGV4YW1wbGUub3JnAHNlY3JldA==",
            &["auth alice@example.org", "235 2.7.0"],
        ),
    ]);
}

#[test]
fn implicit_tls_is_the_submission_policy_without_starttls() {
    let mut h = Host::<Submission>::new(settings(true), Some(tls_info()));
    let lines = ehlo_lines(&mut h);
    assert!(lines.iter().any(|l| l == "AUTH PLAIN LOGIN"));
    assert!(!lines.iter().any(|l| l == "STARTTLS"));
    h.run();
    h.script(&[
        ("MAIL FROM:<alice@example.org>", &["530 5.7.0"]),
        ("STARTTLS", &["530 5.7.0"]),
    ]);
}

#[test]
fn starttls_discards_pipelined_cleartext() {
    let mut h = Host::<Submission>::new(settings(true), None);
    h.script(&[("EHLO c", &["250"])]);
    let injected = b"STARTTLS\r\nEHLO evil\r\nAUTH PLAIN AGFsaWNlQGV4YW1wbGUub3JnAHNlY3JldA==\r\n";
    assert_eq!(h.send(injected), ["220 2.0.0", "tls"]);
    assert!(h.session.discarded_after_starttls() > 0);
    assert_eq!(
        h.session.info().greeting,
        None,
        "EHLO from before TLS is forgotten"
    );
    assert_eq!(h.session.info().security.account, None);
    h.script(&[("MAIL FROM:<alice@example.org>", &["530 5.7.0"])]);
}

#[test]
fn mx_offers_starttls_only_with_a_certificate_and_never_auth() {
    let mut h = Host::<Mx>::new(settings(false), None);
    let lines = ehlo_lines(&mut h);
    assert!(!lines.iter().any(|l| l == "STARTTLS" || l.starts_with("AUTH")));
    for ext in [
        "PIPELINING",
        "8BITMIME",
        "ENHANCEDSTATUSCODES",
        "SMTPUTF8",
        "CHUNKING",
        "DSN",
    ] {
        assert!(lines.iter().any(|l| l == ext), "{ext} advertised");
    }
    assert!(lines.iter().any(|l| l == &format!("SIZE {}", 25 * 1024 * 1024)));
    h.run();
    h.script(&[("STARTTLS", &["454 4.7.0"])]);

    let mut h = mx();
    assert!(ehlo_lines(&mut h).iter().any(|l| l == "STARTTLS"));
    h.run();
    h.script(&[
        ("AUTH PLAIN AGFsaWNlAHNlY3JldA==", &["502 5.5.1"]),
        ("STARTTLS", &["220 2.0.0", "tls"]),
    ]);
    let lines = ehlo_lines(&mut h);
    assert!(!lines.iter().any(|l| l == "STARTTLS" || l.starts_with("AUTH")));
    h.run();
    h.script(&[("AUTH PLAIN AGFsaWNlAHNlY3JldA==", &["502 5.5.1"])]);
}

#[test]
fn mx_accepts_only_existing_local_mailboxes() {
    let mut h = mx();
    h.script(&[
        ("EHLO c", &["250"]),
        ("MAIL FROM:<anyone@far.example>", &["250 2.1.0"]),
        ("RCPT TO:<someone@elsewhere.example>", &["550 5.7.1"]),
        ("RCPT TO:<alice%elsewhere.example@example.org>", &["550 5.7.1"]),
        ("RCPT TO:<@example.org:alice@elsewhere.example>", &["550 5.7.1"]),
        ("RCPT TO:<@example.org:alice@example.org>", &["550 5.7.1"]),
        (
            "RCPT TO:<\"alice@elsewhere.example\"@example.org>",
            &["550 5.7.1"],
        ),
        ("RCPT TO:<elsewhere.example!alice@example.org>", &["550 5.7.1"]),
        ("RCPT TO:<alice@[192.0.2.1]>", &["550 5.7.1"]),
        ("RCPT TO:<nobody@example.org>", &["550 5.1.1"]),
        ("RCPT TO:<>", &["501 5.1.3"]),
        ("RCPT TO:<Alice@EXAMPLE.ORG>", &["250 2.1.5"]),
        ("RCPT TO:<Postmaster>", &["250 2.1.5"]),
        ("DATA", &["354"]),
    ]);
    assert_eq!(
        h.send(b"x\r\n.\r\n"),
        ["hook virus", "hook spam", "spool", "250 2.0.0"]
    );
    let recipients = &h.spooled[0].message.envelope.recipients;
    assert_eq!(recipients[1].mailbox.to_string(), "postmaster@example.org");
}

#[test]
fn an_unknown_local_recipient_is_looked_up_before_the_answer() {
    let mut h = mx();
    h.session = Session::new(
        settings(true),
        Arc::new(LookingDirectory),
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)),
        None,
    );
    assert_eq!(h.run(), ["220"]);
    // Pipelined: each RCPT is answered in order, the lookups in between.
    assert_eq!(
        h.send(
            b"EHLO c\r\nMAIL FROM:<a@far.example>\r\nRCPT TO:<alice@example.org>\r\nRCPT TO:<dave+news@example.org>\r\n\
              RCPT TO:<nobody@example.org>\r\nRCPT TO:<down@example.org>\r\nRCPT TO:<x@far.example>\r\n\
              RCPT TO:<anyone@example.org>\r\n"
        )[1..],
        [
            "250 2.1.0",
            "250 2.1.5",
            "lookup dave+news@example.org",
            "250 2.1.5",
            "lookup nobody@example.org",
            "550 5.1.1",
            "lookup down@example.org",
            "451 4.3.0",
            "550 5.7.1",
            // Unknown there too, but the domain has a catch-all.
            "lookup anyone@example.org",
            "250 2.1.5"
        ]
    );
    h.script(&[("DATA", &["354"])]);
    h.send(b"x\r\n.\r\n");
    let recipients = &h.spooled[0].message.envelope.recipients;
    // alice was named already: the catch-all adds no second copy.
    assert_eq!(recipients.len(), 2);
    assert_eq!(recipients[1].mailbox.to_string(), "dave+news@example.org");
    assert_eq!(
        recipients[1]
            .deliver_to
            .as_ref()
            .map(ToString::to_string)
            .as_deref(),
        Some("dave@example.org")
    );
}

#[test]
fn an_alias_adds_its_targets_once_and_counts_as_one_recipient() {
    let mut h = mx();
    h.session = Session::new(
        Arc::new(Settings {
            limits: Limits {
                recipients: 2,
                ..Limits::default()
            },
            ..Settings::clone(&settings(true))
        }),
        Arc::new(TestDirectory),
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)),
        None,
    );
    assert_eq!(h.run(), ["220"]);
    h.script(&[
        ("EHLO c", &["250"]),
        ("MAIL FROM:<dan@far.example>", &["250 2.1.0"]),
        ("RCPT TO:<bob@example.org>", &["250 2.1.5"]),
        (
            "RCPT TO:<team@example.org> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;team@example.org",
            &["250 2.1.5"],
        ),
        // Three targets, but two RCPTs: the limit counts what the client named.
        ("RCPT TO:<solo@example.org>", &["452 4.5.3"]),
        ("DATA", &["354"]),
    ]);
    h.send(b"x\r\n.\r\n");
    let recipients = &h.spooled[0].message.envelope.recipients;
    let named: Vec<String> = recipients.iter().map(|r| r.mailbox.to_string()).collect();
    // bob was named already: the alias adds alice and the address elsewhere.
    assert_eq!(
        named,
        ["bob@example.org", "alice@example.org", "carol@far.example"]
    );
    let (bob, alice, carol) = (&recipients[0], &recipients[1], &recipients[2]);
    assert_eq!(bob.alias, None);
    assert_eq!(alice.alias, Some(mb("team", "example.org")));
    assert!(alice.local && !carol.local);
    // The alias's success report is `expanded`, carried by its first target; the targets
    // ask only for failures, and keep the original recipient.
    assert!(alice.reports_expansion && !carol.reports_expansion);
    let notify = alice.params.notify.expect("notify");
    assert!(!notify.success && notify.failure && !notify.never);
    assert_eq!(carol.params.orcpt.as_deref(), Some("rfc822;team@example.org"));
    // The copy forwarded elsewhere has its sender rewritten; local copies do not.
    assert_eq!(carol.sender, Some(mb("SRS0=far.example=dan", "example.org")));
    assert_eq!(alice.sender, None);
    assert_eq!(
        carol.reverse_path(&h.spooled[0].message.envelope),
        "<SRS0=far.example=dan@example.org>"
    );
}

#[test]
fn aliases_never_take_a_transaction_past_a_thousand_deliveries() {
    let mut h = mx();
    h.script(&[
        ("EHLO c", &["250"]),
        ("MAIL FROM:<dan@far.example>", &["250 2.1.0"]),
        ("RCPT TO:<crowd@example.org>", &["250 2.1.5"]),
        ("RCPT TO:<team@example.org>", &["250 2.1.5"]),
        // 603 + 600 > 1000: the client is told to send this one later.
        ("RCPT TO:<horde@example.org>", &["452 4.5.3"]),
        ("RCPT TO:<bob@example.org>", &["250 2.1.5"]),
        ("DATA", &["354"]),
    ]);
    h.send(b"x\r\n.\r\n");
    // bob came with the team already.
    assert_eq!(h.spooled[0].message.envelope.recipients.len(), 603);
}

#[test]
fn a_one_target_alias_keeps_the_notify_of_its_recipient() {
    let mut h = mx();
    h.script(&[
        ("EHLO c", &["250"]),
        ("MAIL FROM:<>", &["250 2.1.0"]),
        ("RCPT TO:<solo@example.org> NOTIFY=SUCCESS", &["250 2.1.5"]),
        ("DATA", &["354"]),
    ]);
    h.send(b"x\r\n.\r\n");
    let recipients = &h.spooled[0].message.envelope.recipients;
    assert_eq!(recipients.len(), 1);
    assert!(!recipients[0].reports_expansion);
    assert!(recipients[0].params.notify.is_some_and(|n| n.success));
    assert_eq!(recipients[0].deliver_to, Some(mb("alice", "example.org")));
}

#[test]
fn sequence_errors() {
    let mut h = mx();
    h.script(&[
        ("MAIL FROM:<a@b.example>", &["503 5.5.1"]),
        ("HELO c", &["250"]),
        ("RCPT TO:<alice@example.org>", &["503 5.5.1"]),
        ("DATA", &["503 5.5.1"]),
        ("MAIL FROM:<a@b.example>", &["250 2.1.0"]),
        ("MAIL FROM:<a@b.example>", &["503 5.5.1"]),
        ("DATA", &["554 5.5.1"]),
        ("RSET", &["250 2.0.0"]),
        ("RCPT TO:<alice@example.org>", &["503 5.5.1"]),
        ("VRFY alice", &["252 2.5.0"]),
        ("EXPN list", &["502 5.5.1"]),
        ("HELP", &["214 2.0.0"]),
    ]);
}

#[test]
fn hook_verdicts_decide_the_outcome() {
    /// (verdicts to give, what the host sees, the folder of the spooled copy if any)
    type Case = (Vec<(Hook, Verdict)>, Vec<&'static str>, Option<Folder>);
    let cases: Vec<Case> = vec![
        (
            vec![(
                Hook::Virus,
                Verdict::Reject(Reply::fixed(554, Some(Enhanced(5, 7, 1)), "virus")),
            )],
            vec!["hook virus", "554 5.7.1"],
            None,
        ),
        (
            vec![(
                Hook::Spam,
                Verdict::Defer(Reply::fixed(451, Some(Enhanced(4, 7, 1)), "later")),
            )],
            vec!["hook virus", "hook spam", "451 4.7.1"],
            None,
        ),
        (
            vec![(Hook::Spam, Verdict::Discard)],
            vec!["hook virus", "hook spam", "250 2.0.0"],
            None,
        ),
        (
            vec![(
                Hook::Spam,
                Verdict::Junk(vec![Header {
                    name: "X-Spam".into(),
                    value: "yes".into(),
                }]),
            )],
            vec!["hook virus", "hook spam", "spool", "250 2.0.0"],
            Some(Folder::Junk),
        ),
        (
            vec![(
                Hook::Spam,
                Verdict::Tag(vec![Header {
                    name: "X-Spam-Score".into(),
                    value: "3".into(),
                }]),
            )],
            vec!["hook virus", "hook spam", "spool", "250 2.0.0"],
            Some(Folder::Inbox),
        ),
        (
            // A plugin that answers "reject" with a 2xx reply cannot make the server lie.
            vec![(Hook::Virus, Verdict::Reject(Reply::fixed(250, None, "ok")))],
            vec!["hook virus", "554 5.7.1"],
            None,
        ),
    ];
    for (verdicts, expected, folder) in cases {
        let mut h = mx_in_data();
        h.verdicts = verdicts;
        assert_eq!(h.send(b"x\r\n.\r\n"), expected);
        assert_eq!(h.spooled.first().map(|s| s.folder), folder);
        if let Some(request) = h.spooled.first() {
            assert_eq!(request.headers.len(), 1);
        }
        // The session is clean afterwards: a new transaction works.
        h.script(&[("MAIL FROM:<a@b.example>", &["250 2.1.0"])]);
    }
}

#[test]
fn header_removals_go_with_the_message_once_and_only_with_it() {
    let names = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let mut h = mx_in_data();
    h.removals = vec![(Hook::Spam, names(&["X-Spam-Flag", "x-spam-flag", "X-Other"]))];
    assert_eq!(
        h.send(b"x\r\n.\r\n"),
        ["hook virus", "hook spam", "spool", "250 2.0.0"]
    );
    assert_eq!(h.spooled[0].remove, names(&["X-Spam-Flag", "X-Other"]));
    // A refused message takes its removals with it; the next one starts clean.
    h.script(&[
        ("MAIL FROM:<a@b.example>", &["250 2.1.0"]),
        ("RCPT TO:<alice@example.org>", &["250 2.1.5"]),
        ("DATA", &["354"]),
    ]);
    h.removals = vec![(Hook::Spam, names(&["X-Gone"]))];
    h.verdicts = vec![(Hook::Spam, Verdict::Reject(Reply::fixed(550, None, "spam")))];
    assert_eq!(h.send(b"x\r\n.\r\n"), ["hook virus", "hook spam", "550"]);
    h.script(&[
        ("MAIL FROM:<a@b.example>", &["250 2.1.0"]),
        ("RCPT TO:<alice@example.org>", &["250 2.1.5"]),
        ("DATA", &["354"]),
    ]);
    assert_eq!(
        h.send(b"x\r\n.\r\n"),
        ["hook virus", "hook spam", "spool", "250 2.0.0"]
    );
    assert_eq!(h.spooled.len(), 2);
    assert!(h.spooled[1].remove.is_empty());
}

#[test]
fn authentication_checks_run_on_mx_before_the_content_hooks() {
    let results = || Header {
        name: "Authentication-Results".into(),
        value: "example.org; spf=pass".into(),
    };
    /// (what the checks decide, what the host sees, the folder of the spooled copy if any)
    type Case = (Verdict, Vec<&'static str>, Option<Folder>);
    let cases: Vec<Case> = vec![
        (
            Verdict::Tag(vec![results()]),
            vec!["hook virus", "hook spam", "spool", "250 2.0.0"],
            Some(Folder::Inbox),
        ),
        (
            Verdict::Junk(vec![results()]),
            vec!["hook virus", "hook spam", "spool", "250 2.0.0"],
            Some(Folder::Junk),
        ),
        (
            Verdict::Reject(Reply::fixed(550, Some(Enhanced(5, 7, 1)), "DMARC")),
            vec!["550 5.7.1"],
            None,
        ),
        (
            Verdict::Defer(Reply::fixed(451, Some(Enhanced(4, 7, 0)), "DNS")),
            vec!["451 4.7.0"],
            None,
        ),
    ];
    for (checks, expected, folder) in cases {
        let mut h = mx_in_data();
        h.checks = checks;
        assert_eq!(h.send(b"x\r\n.\r\n"), expected);
        assert_eq!(h.checked, 1);
        assert_eq!(h.spooled.first().map(|s| s.folder), folder);
        if let Some(request) = h.spooled.first() {
            assert_eq!(request.headers, [results()], "the results go first, once");
            // Each content hook sees them in front of the message.
            assert_eq!(h.added_seen, [vec![results()], vec![results()]]);
        }
        h.script(&[("MAIL FROM:<a@b.example>", &["250 2.1.0"])]);
    }
    // Submission: the sender is our account; nothing to check.
    let mut h = submission_ready();
    h.script(&[
        ("MAIL FROM:<alice@example.org>", &["250 2.1.0"]),
        ("RCPT TO:<bob@example.org>", &["250 2.1.5"]),
        ("DATA", &["hook rate", "354"]),
    ]);
    assert_eq!(h.send(b"x\r\n.\r\n"), ["hook virus", "spool", "250 2.0.0"]);
    assert_eq!(h.checked, 0);
}

#[test]
fn rate_refusal_answers_data_and_consumes_bdat_chunks() {
    let mut h = submission_ready();
    h.verdicts = vec![(
        Hook::Rate,
        Verdict::Defer(Reply::fixed(451, Some(Enhanced(4, 7, 0)), "slow down")),
    )];
    h.script(&[
        ("MAIL FROM:<alice@example.org>", &["250 2.1.0"]),
        ("RCPT TO:<bob@example.org>", &["250 2.1.5"]),
        ("DATA", &["hook rate", "451 4.7.0"]),
    ]);
    h.verdicts = vec![(
        Hook::Rate,
        Verdict::Defer(Reply::fixed(451, Some(Enhanced(4, 7, 0)), "slow down")),
    )];
    h.script(&[
        ("MAIL FROM:<alice@example.org>", &["250 2.1.0"]),
        ("RCPT TO:<bob@example.org>", &["250 2.1.5"]),
    ]);
    // The chunk holds what looks like commands: they must be read as content and dropped.
    assert_eq!(
        h.send(b"BDAT 18 LAST\r\nRSET\r\nQUIT\r\nNOOP\r\n"),
        ["hook rate", "451 4.7.0"]
    );
    h.script(&[("NOOP", &["250 2.0.0"])]);
    assert!(h.spooled.is_empty());
}

#[test]
fn bdat_chunks_make_one_message() {
    let mut h = mx();
    h.script(&[
        ("EHLO c", &["250"]),
        ("MAIL FROM:<a@b.example> BODY=8BITMIME", &["250 2.1.0"]),
        ("RCPT TO:<alice@example.org>", &["250 2.1.5"]),
    ]);
    assert_eq!(h.send(b"BDAT 6\r\nline1\r"), ["250 2.0.0"]);
    assert_eq!(
        h.send(b"BDAT 9 LAST\r\n\n.\r\nend\r\n"),
        ["hook virus", "hook spam", "spool", "250 2.0.0"]
    );
    assert_eq!(
        h.spooled[0].message.body.to_vec().unwrap(),
        b"line1\r\n.\r\nend\r\n"
    );
    // BDAT without a transaction still reads its octets.
    assert_eq!(h.send(b"BDAT 12\r\nQUIT\r\nQUIT\r\n"), ["503 5.5.1"]);
    h.script(&[("NOOP", &["250 2.0.0"])]);
    // DATA after BDAT in one transaction is refused; a bare CR in a chunk fails it.
    h.script(&[
        ("MAIL FROM:<a@b.example>", &["250 2.1.0"]),
        ("RCPT TO:<alice@example.org>", &["250 2.1.5"]),
    ]);
    assert_eq!(h.send(b"BDAT 3\r\na\rb"), ["550 5.6.0"]);
    assert_eq!(h.send(b"BDAT 0 LAST\r\n"), ["503 5.5.1"]);
    assert_eq!(h.spooled.len(), 1);
    h.script(&[
        ("MAIL FROM:<a@b.example>", &["250 2.1.0"]),
        ("RCPT TO:<alice@example.org>", &["250 2.1.5"]),
    ]);
    assert_eq!(h.send(b"BDAT 1\r\na"), ["250 2.0.0"]);
    h.script(&[("DATA", &["503 5.5.1"])]);
}

fn strict(limits: impl FnOnce(&mut Limits)) -> Arc<Settings> {
    let mut settings = (*settings(true)).clone();
    limits(&mut settings.limits);
    Arc::new(settings)
}

#[test]
fn smuggling_in_data_closes_the_session_and_spools_nothing() {
    let with_bare_cr: &[&[u8]] = &[
        b"a\r\r.\r\rMAIL FROM:<x@y.example>\r\n",
        b"a\r\n.\rMAIL FROM:<x@y.example>\r\n",
        b"a\r.\r\nMAIL FROM:<x@y.example>\r\n",
    ];
    let with_bare_lf: &[&[u8]] = &[
        b"a\r\n\n.\n\nMAIL FROM:<x@y.example>\r\n",
        b"a\r\n.\nMAIL FROM:<x@y.example>\r\n",
        b"a\n.\r\nMAIL FROM:<x@y.example>\r\n",
    ];
    let reject = strict(|l| l.bare_lf = BareLf::Reject);
    let cases = with_bare_cr
        .iter()
        .map(|v| (v, settings(true)))
        .chain(with_bare_lf.iter().map(|v| (v, Arc::clone(&reject))));
    for (variant, settings) in cases {
        let mut h = Host::<Mx>::new(settings, None);
        h.script(&[
            ("EHLO c", &["250"]),
            ("MAIL FROM:<a@b.example>", &["250 2.1.0"]),
            ("RCPT TO:<alice@example.org>", &["250 2.1.5"]),
            ("DATA", &["354"]),
        ]);
        assert_eq!(h.send(variant), ["554 5.5.2", "close"], "{variant:?}");
        assert!(h.spooled.is_empty());
    }
}

#[test]
fn bare_lf_smuggling_is_content_of_one_message() {
    let variants: &[&[u8]] = &[b"\n.\n", b"\n.\r\n", b"\r\n.\n"];
    for end in variants {
        let mut h = mx();
        h.script(&[
            ("EHLO c", &["250"]),
            ("MAIL FROM:<a@b.example>", &["250 2.1.0"]),
            ("RCPT TO:<alice@example.org>", &["250 2.1.5"]),
            ("DATA", &["354"]),
        ]);
        let mut input = b"Subject: cover\r\n\r\nhello".to_vec();
        input.extend_from_slice(end);
        input.extend_from_slice(
            b"MAIL FROM:<ceo@example.org>\r\nRCPT TO:<alice@example.org>\r\nDATA\r\nevil\r\n.\r\n",
        );
        assert_eq!(
            h.send(&input),
            ["hook virus", "hook spam", "spool", "250 2.0.0"],
            "{end:?}"
        );
        assert_eq!(h.spooled.len(), 1, "{end:?}");
        let body = h.spooled[0].message.body.to_vec().unwrap();
        assert!(body.ends_with(
            b"hello\r\n.\r\nMAIL FROM:<ceo@example.org>\r\nRCPT TO:<alice@example.org>\r\nDATA\r\nevil\r\n"
        ));
        assert!(
            !body.windows(2).any(|w| w[1] == b'\n' && w[0] != b'\r'),
            "{end:?}: bare LF stored"
        );
    }
}

#[test]
fn bare_line_endings_in_commands_close_the_session() {
    for input in [&b"NOOP\n"[..], b"NOOP\rQUIT\r\n", b"EHLO c\r\nNOOP\n"] {
        let mut h = mx();
        let got = h.send(input);
        assert_eq!(got.last().map(String::as_str), Some("close"), "{input:?}");
        assert!(got.contains(&"554 5.5.2".to_string()));
    }
}

#[test]
fn limits() {
    let mut h = mx();
    h.script(&[
        ("EHLO c", &["250"]),
        ("MAIL FROM:<a@b.example> SIZE=26214401", &["552 5.3.4"]),
        ("MAIL FROM:<a@b.example> SIZE=1000", &["250 2.1.0"]),
    ]);
    for _ in 0..99 {
        h.script(&[("RCPT TO:<alice@example.org>", &["250 2.1.5"])]);
    }
    // Duplicates are kept once; the limit counts distinct recipients.
    h.script(&[("RCPT TO:<bob@example.org>", &["250 2.1.5"])]);
    let mut settings = (*settings(true)).clone();
    settings.limits.recipients = 2;
    settings.limits.message_size = 20;
    settings.limits.line_length = 10;
    let mut h = Host::<Mx>::new(Arc::new(settings), None);
    h.script(&[
        ("EHLO c", &["250"]),
        ("MAIL FROM:<a@b.example>", &["250 2.1.0"]),
        ("RCPT TO:<alice@example.org>", &["250 2.1.5"]),
        ("RCPT TO:<bob@example.org>", &["250 2.1.5"]),
        ("RCPT TO:<postmaster@example.org>", &["452 4.5.3"]),
        ("DATA", &["354"]),
    ]);
    assert_eq!(h.send(b"0123456789\r\n0123456789\r\n.\r\n"), ["500 5.5.6"]);
    h.script(&[
        ("MAIL FROM:<a@b.example>", &["250 2.1.0"]),
        ("RCPT TO:<alice@example.org>", &["250 2.1.5"]),
        ("DATA", &["354"]),
    ]);
    assert_eq!(h.send(b"1234567\r\n1234567\r\n1234567\r\n.\r\n"), ["552 5.3.4"]);
    assert_eq!(
        h.send(format!("NOOP {}\r\n", "x".repeat(2100)).as_bytes()),
        ["500 5.5.2"]
    );
    // An over-long line split across reads is skipped to its end.
    assert_eq!(h.send("y".repeat(2100).as_bytes()), ["500 5.5.2"]);
    assert_eq!(h.send(b"yyy\r\nNOOP\r\n"), ["250 2.0.0"]);
    assert!(h.spooled.is_empty());
}

#[test]
fn garbage_closes_the_session() {
    let mut h = mx();
    let mut last = Vec::new();
    for _ in 0..20 {
        last = h.send(b"XYZZY\r\n");
    }
    assert_eq!(last, ["500 5.5.1", "421 4.7.0", "close"]);

    let mut h = mx();
    assert_eq!(h.send(b"GET / HTTP/1.1\r\n"), ["554 5.7.0", "close"]);
}

#[test]
fn command_counts_read_like_postfix() {
    let mut h = mx();
    h.script(&[
        ("EHLO c", &["250"]),
        ("MAIL FROM:<a@b.example>", &["250 2.1.0"]),
        ("RCPT TO:<alice@example.org>", &["250 2.1.5"]),
        ("RCPT TO:<x@far.example>", &["550 5.7.1"]),
        ("XYZZY", &["500 5.5.1"]),
        ("QUIT", &["221 2.0.0", "close"]),
    ]);
    let counts = h.session.command_counts();
    assert_eq!(
        counts.to_string(),
        "ehlo=1 mail=1 rcpt=2 quit=1 unknown=1 commands=6"
    );
    assert_eq!(counts.get(Verb::Rcpt), 2);
}

#[test]
fn pipelined_commands_are_answered_in_order() {
    let mut h = mx();
    let got = h.send(
        b"EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<alice@example.org>\r\nRCPT TO:<x@far.example>\r\nDATA\r\n",
    );
    assert_eq!(got, ["250", "250 2.1.0", "250 2.1.5", "550 5.7.1", "354"]);
    assert_eq!(
        h.send(b"hi\r\n.\r\nQUIT\r\n"),
        [
            "hook virus",
            "hook spam",
            "spool",
            "250 2.0.0",
            "221 2.0.0",
            "close"
        ]
    );
}

#[test]
fn utf8_addresses_need_smtputf8() {
    let mut h = mx();
    h.script(&[
        ("EHLO c", &["250"]),
        ("MAIL FROM:<δοκιμή@far.example>", &["553 5.6.7"]),
        ("MAIL FROM:<δοκιμή@far.example> SMTPUTF8", &["250 2.1.0"]),
        ("MAIL FROM:<a@b.example> FOO=BAR", &["555 5.5.4"]),
        ("MAIL FROM:<a@b.example>", &["503 5.5.1"]),
    ]);
}

#[test]
fn timeout_and_shutdown_say_421() {
    let mut h = mx();
    h.session.timed_out();
    assert_eq!(h.run(), ["421 4.4.2", "close"]);
    let mut h = mx();
    assert!(h.session.is_idle());
    h.script(&[("EHLO c", &["250"]), ("MAIL FROM:<a@b.example>", &["250 2.1.0"])]);
    assert!(!h.session.is_idle());
    h.session.shut_down();
    assert_eq!(h.run(), ["421 4.3.2", "close"]);
}

#[test]
fn resolving_what_was_not_asked_is_a_usage_error() {
    let mut h = mx();
    assert!(h.session.resolve_hook(Verdict::Accept).is_err());
    assert!(h.session.resolve_spool(Ok("x".into())).is_err());
    assert!(h.session.resolve_auth(AuthOutcome::Reject).is_err());
    assert!(h.session.tls_established(tls_info()).is_err());
    assert_eq!(h.session.read_timeout(), ReadTimeout::Command);
    let _ = Duration::ZERO;
}

#[test]
fn received_header_names_everything_known() {
    let mut h = submission_ready();
    h.script(&[
        ("MAIL FROM:<alice@example.org>", &["250 2.1.0"]),
        ("RCPT TO:<bob@example.org>", &["250 2.1.5"]),
        ("DATA", &["hook rate", "354"]),
    ]);
    h.send(b"x\r\n.\r\n");
    let envelope = &h.spooled[0].message.envelope;
    let header = crate::received::received_header(
        h.session.info(),
        "mx.example.org",
        "Q1",
        envelope,
        "Sat, 28 Nov 2026 15:00:00 +0000",
    );
    assert_eq!(
        header,
        "Received: from c ([192.0.2.7])\r\n\tby mx.example.org (Portcullis) with ESMTPSA id Q1\r\n\t\
         (version=TLSv1.3 cipher=TLS13_AES_128_GCM_SHA256)\r\n\tfor <bob@example.org>;\r\n\t\
         Sat, 28 Nov 2026 15:00:00 +0000\r\n"
    );
}

/// A small deterministic generator, so the random test is the same on every run.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn strict_crlf(body: &[u8]) -> bool {
    body.iter().enumerate().all(|(i, b)| match b {
        b'\r' => body.get(i + 1) == Some(&b'\n'),
        b'\n' => i > 0 && body[i - 1] == b'\r',
        _ => true,
    })
}

/// Plays random sessions; returns how many messages were spooled.
fn random_sessions<P: Pipeline>(rng: &mut XorShift, rounds: usize) -> usize {
    let mut spooled = 0;
    let long = format!("NOOP {}\r\n", "z".repeat(700));
    let fragments: Vec<&[u8]> = vec![
        b"EHLO x\r\n",
        b"HELO y\r\n",
        b"MAIL FROM:<alice@example.org>\r\n",
        b"MAIL FROM:<a@b.example> SIZE=99999999999\r\n",
        b"RCPT TO:<alice@example.org>\r\n",
        b"RCPT TO:<x@far.example>\r\n",
        b"RCPT TO:<Postmaster>\r\n",
        b"DATA\r\n",
        b"BDAT 5\r\n",
        b"BDAT 3 LAST\r\n",
        b"BDAT 0 LAST\r\n",
        b"STARTTLS\r\n",
        b"AUTH PLAIN\r\n",
        b"AUTH LOGIN\r\n",
        b"AGFsaWNlQGV4YW1wbGUub3JnAHNlY3JldA==\r\n",
        b"*\r\n",
        b"RSET\r\n",
        b"NOOP\r\n",
        b".\r\n",
        b"..\r\n",
        b"\r\n",
        b"\n",
        b"\r",
        b".",
        b"text",
        b"\r\n.\r\n",
        b"\n.\n",
        b"\r.\r",
        b"\0",
        b"\xff\xfe",
        long.as_bytes(),
        b"GET / HTTP/1.0\r\n",
    ];
    for round in 0..rounds {
        // Half the rounds start from a valid envelope, so content handling is reached often.
        let primed = round % 2 == 1;
        let tls = primed.then(tls_info);
        let mut h = Host::<P>::new(settings(true), tls);
        let mut input = Vec::new();
        if primed {
            input.extend_from_slice(b"EHLO x\r\n");
            if P::OFFERS_AUTH {
                input.extend_from_slice(b"AUTH PLAIN AGFsaWNlQGV4YW1wbGUub3JnAHNlY3JldA==\r\n");
            }
            input.extend_from_slice(b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<alice@example.org>\r\n");
            input.extend_from_slice(if rng.below(2) == 0 {
                b"DATA\r\n"
            } else {
                b"BDAT 7\r\n"
            });
        }
        for _ in 0..1 + rng.below(40) {
            input.extend_from_slice(fragments[rng.below(fragments.len())]);
        }
        let mut rest = input.as_slice();
        while !rest.is_empty() {
            let take = 1 + rng.below(rest.len().min(64));
            let outcome = h.send(&rest[..take]);
            rest = &rest[take..];
            if outcome.last().map(String::as_str) == Some("close") {
                break;
            }
        }
        for request in &h.spooled {
            assert!(
                strict_crlf(&request.message.body.to_vec().unwrap()),
                "spooled a bare line ending from {input:?}"
            );
            assert!(!request.message.envelope.recipients.is_empty());
        }
        spooled += h.spooled.len();
    }
    spooled
}

#[test]
fn random_input_never_panics_and_never_spools_a_bare_line_ending() {
    let mut rng = XorShift(0x5eed_cafe_f00d_d00d);
    let mx = random_sessions::<Mx>(&mut rng, 3000);
    let submission = random_sessions::<Submission>(&mut rng, 3000);
    // The generator must reach the spool, or the invariant above was never tested.
    assert!(
        mx > 50 && submission > 50,
        "spooled: mx {mx}, submission {submission}"
    );
}

#[test]
fn real_senders_envelopes_are_accepted() {
    // Lenient syntax (the default): no brackets, a trailing dot, words after the EHLO name,
    // and a RCPT line with DSN parameters far past 512 octets.
    let mut h = mx();
    let orcpt = format!("rfc822;{}@example.org", "x".repeat(60));
    let long_rcpt = format!(
        "RCPT TO:<alice+{}@example.org> NOTIFY=SUCCESS,FAILURE,DELAY ORCPT={orcpt}{}",
        "l".repeat(40),
        " ".repeat(380)
    );
    assert!(long_rcpt.len() > 512 && long_rcpt.len() < 2046);
    h.script(&[
        ("EHLO client.example (some MUA 1.0)", &["250"]),
        ("MAIL FROM:a@b.example SIZE=100", &["250 2.1.0"]),
        ("RCPT TO:bob@example.org.", &["250 2.1.5"]),
        (&long_rcpt, &["250 2.1.5"]),
        ("DATA", &["354"]),
        ("hi\r\n.", &["hook virus", "hook spam", "spool", "250 2.0.0"]),
    ]);
    let envelope = &h.spooled[0].message.envelope;
    let recipients: Vec<(String, Option<String>)> = envelope
        .recipients
        .iter()
        .map(|r| {
            (
                r.mailbox.to_string(),
                r.deliver_to.as_ref().map(ToString::to_string),
            )
        })
        .collect();
    assert_eq!(
        recipients,
        [
            ("bob@example.org".to_string(), Some("bob@example.org".to_string())),
            (
                format!("alice+{}@example.org", "l".repeat(40)),
                Some("alice@example.org".to_string())
            ),
        ]
    );

    // strict-syntax brings RFC 5321 to the letter back.
    let mut h = Host::<Mx>::new(strict(|l| l.syntax = Syntax::Strict), None);
    h.script(&[
        ("EHLO client.example extra", &["501 5.5.4"]),
        ("EHLO client.example", &["250"]),
        ("MAIL FROM:a@b.example", &["501 5.1.7"]),
        ("MAIL FROM:<a@b.example>", &["250 2.1.0"]),
        ("RCPT TO:<bob@example.org.>", &["501 5.1.7"]),
    ]);
}

#[test]
fn one_good_recipient_survives_ten_unknown_ones() {
    let mut h = mx();
    h.script(&[
        ("EHLO c", &["250"]),
        ("MAIL FROM:<a@b.example>", &["250 2.1.0"]),
        ("RCPT TO:<alice@example.org>", &["250 2.1.5"]),
    ]);
    for i in 0..10 {
        h.script(&[(&format!("RCPT TO:<nobody{i}@example.org>"), &["550 5.1.1"])]);
    }
    h.script(&[
        ("DATA", &["354"]),
        ("hi\r\n.", &["hook virus", "hook spam", "spool", "250 2.0.0"]),
    ]);
    assert_eq!(h.spooled.len(), 1);
}

#[test]
fn a_bdat_chunk_over_the_size_limit_is_refused_up_front_and_its_octets_discarded() {
    let mut h = Host::<Mx>::new(strict(|l| l.message_size = 10), None);
    h.script(&[
        ("EHLO c", &["250"]),
        ("MAIL FROM:<a@b.example>", &["250 2.1.0"]),
        ("RCPT TO:<alice@example.org>", &["250 2.1.5"]),
    ]);
    // The chunk's 16 octets look like commands; they are read and dropped, no hook runs.
    assert_eq!(h.send(b"BDAT 16 LAST\r\nRSET\r\nQUIT\r\nNOOP"), ["552 5.3.4"]);
    assert!(h.verdicts.is_empty() && h.spooled.is_empty());
    h.script(&[
        ("NOOP", &["250 2.0.0"]),
        ("RCPT TO:<alice@example.org>", &["503 5.5.1"]),
    ]);
}

/// Spill files in a directory of its own under the system's temporary directory.
#[derive(Debug)]
struct TempSpill(std::path::PathBuf);

impl crate::content::SpillSource for TempSpill {
    fn open(&self) -> std::io::Result<crate::content::SpillFile> {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = self.0.join(format!("spill-{n}"));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        Ok(crate::content::SpillFile::new(file, path, 0))
    }
}

fn with_storage(storage: crate::content::Storage, memory: usize) -> Arc<Settings> {
    Arc::new(Settings {
        hostname: "mx.example.org".into(),
        limits: Limits {
            memory_per_message: memory,
            ..Limits::default()
        },
        tls_available: false,
        storage,
    })
}

/// A message for alice, from MAIL FROM to its 250.
const ONE_MESSAGE: &[(&str, &[&str])] = &[
    ("MAIL FROM:<a@b.example>", &["250 2.1.0"]),
    ("RCPT TO:<alice@example.org>", &["250 2.1.5"]),
    ("DATA", &["354"]),
    ("hi\r\n.", &["hook virus", "hook spam", "spool", "250 2.0.0"]),
];

/// A disk with `free` octets free.
#[derive(Debug)]
struct Disk {
    free: std::sync::atomic::AtomicU64,
}

impl crate::content::Room for Disk {
    fn has(&self, octets: u64) -> bool {
        octets <= self.free.load(std::sync::atomic::Ordering::Relaxed)
    }
}

#[test]
fn mail_waits_while_the_disk_is_short_of_its_reserve_and_a_declared_size_must_fit() {
    let disk = Arc::new(Disk { free: 11_000.into() });
    let storage = crate::content::Storage {
        room: Some(disk.clone()),
        ..Default::default()
    };
    let mut settings = with_storage(storage, 1 << 20);
    Arc::get_mut(&mut settings).unwrap().limits.spool_min_free = 10_000;
    let mut h = Host::<Mx>::new(settings, None);
    h.script(&[
        ("EHLO c", &["250"]),
        ("MAIL FROM:<a@b.example> SIZE=1001", &["452 4.3.1"]),
        ("RCPT TO:<alice@example.org>", &["503 5.5.1"]),
        ("MAIL FROM:<a@b.example> SIZE=1000", &["250 2.1.0"]),
        ("RSET", &["250 2.0.0"]),
    ]);
    disk.free.store(9_999, std::sync::atomic::Ordering::Relaxed);
    // The server's own shortage: never counted toward the error limit, however often.
    for _ in 0..Limits::default().errors + 5 {
        h.script(&[("MAIL FROM:<a@b.example>", &["452 4.3.1"])]);
    }
    disk.free.store(10_000, std::sync::atomic::Ordering::Relaxed);
    h.script(ONE_MESSAGE);
    assert_eq!(h.spooled.len(), 1);
}

#[test]
fn data_and_bdat_wait_when_the_memory_for_contents_is_spent() {
    let budget = crate::content::Budget::new(100);
    let storage = crate::content::Storage {
        budget: Some(Arc::clone(&budget)),
        spill: None,
        room: None,
    };
    let mut h = Host::<Mx>::new(with_storage(storage, 100), None);
    let held = budget.reserve(100).unwrap();
    h.script(&[
        ("EHLO c", &["250"]),
        ("MAIL FROM:<a@b.example>", &["250 2.1.0"]),
        ("RCPT TO:<alice@example.org>", &["250 2.1.5"]),
        ("DATA", &["452 4.3.1"]),
    ]);
    // The chunk's octets are read and dropped, never taken as commands; its transaction
    // is gone with them.
    assert_eq!(h.send(b"BDAT 6 LAST\r\nQUIT\r\n"), ["452 4.3.1"]);
    h.script(&[("RCPT TO:<alice@example.org>", &["503 5.5.1"])]);
    drop(held);
    h.script(ONE_MESSAGE);
    assert_eq!(h.spooled.len(), 1);
    drop(h);
    assert_eq!(budget.used(), 0, "every reservation given back");
}

#[test]
fn content_over_its_memory_goes_to_the_hosts_file_by_data_and_by_bdat() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().to_path_buf();
    let storage = crate::content::Storage {
        budget: Some(crate::content::Budget::new(1000)),
        spill: Some(Arc::new(TempSpill(dir.clone()))),
        room: None,
    };
    let mut h = Host::<Mx>::new(with_storage(storage, 64), None);
    let body: String = (0..40)
        .map(|i| format!("line {i} of a long message\r\n"))
        .collect();
    h.script(&[
        ("EHLO c", &["250"]),
        ("MAIL FROM:<a@b.example>", &["250 2.1.0"]),
        ("RCPT TO:<alice@example.org>", &["250 2.1.5"]),
        ("DATA", &["354"]),
    ]);
    let sent = h.send(format!("{body}.\r\n").as_bytes());
    assert_eq!(sent, ["hook virus", "hook spam", "spool", "250 2.0.0"]);
    h.script(&[
        ("MAIL FROM:<a@b.example>", &["250 2.1.0"]),
        ("RCPT TO:<alice@example.org>", &["250 2.1.5"]),
    ]);
    let (first, second) = body.as_bytes().split_at(500);
    assert_eq!(
        h.send(format!("BDAT {}\r\n", first.len()).as_bytes()),
        Vec::<String>::new()
    );
    assert_eq!(h.send(first), ["250 2.0.0"]);
    let mut last = format!("BDAT {} LAST\r\n", second.len()).into_bytes();
    last.extend_from_slice(second);
    assert_eq!(h.send(&last), ["hook virus", "hook spam", "spool", "250 2.0.0"]);
    for request in &h.spooled {
        let content = &request.message.body;
        assert!(content.spilled().is_some(), "over 64 octets: in a file");
        assert_eq!(content.to_vec().unwrap(), body.as_bytes());
        assert_eq!(content.checksum(), crc32fast::hash(body.as_bytes()));
    }
    assert_eq!(h.spooled.len(), 2);
    let files = |dir: &std::path::Path| std::fs::read_dir(dir).unwrap().count();
    assert_eq!(files(&dir), 2);
    drop(h);
    assert_eq!(
        files(&dir),
        0,
        "files the host did not keep are removed with the message"
    );
}
