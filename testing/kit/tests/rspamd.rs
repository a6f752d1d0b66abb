//! The test rspamd is what the spam tests will rely on: GTUBE is rejected, a plain message
//! passes, and it answers again after a stop.

use portcullis_testkit::dns::Dns;
use portcullis_testkit::rspamd::{GTUBE, Rspamd};

#[test]
fn rspamd_rejects_gtube_passes_a_plain_message_and_comes_back_after_a_stop() {
    let dns = Dns::start(&[]);
    let mut rspamd = Rspamd::start(dns.addr);
    let gtube = format!("From: a@sender.test\r\nTo: b@example.org\r\nSubject: test\r\n\r\n{GTUBE}\r\n");
    let answer = rspamd.check(&gtube, "127.0.0.1").expect("an answer");
    assert!(answer.contains("\"action\":\"reject\""), "{answer}");
    assert!(answer.contains("GTUBE"), "{answer}");
    let plain = "From: Alice <a@sender.test>\r\nTo: b@example.org\r\nSubject: hello\r\n\
                 Date: Tue, 01 Dec 2026 10:00:00 +0000\r\nMessage-ID: <plain@sender.test>\r\n\r\n\
                 Just a normal message.\r\n";
    let answer = rspamd.check(plain, "127.0.0.1").expect("an answer");
    assert!(answer.contains("\"action\":\"no action\""), "{answer}");
    // Its checks ran for a loopback client (local_addrs emptied): symbols are there.
    assert!(answer.contains("\"symbols\""), "{answer}");
    assert!(
        std::net::TcpStream::connect(rspamd.milter).is_ok(),
        "the milter worker listens"
    );
    rspamd.stop();
    assert_eq!(
        rspamd.check(plain, "127.0.0.1"),
        None,
        "a stopped rspamd answers nothing"
    );
    rspamd.resume();
    let answer = rspamd.check(&gtube, "127.0.0.1").expect("an answer");
    assert!(answer.contains("\"action\":\"reject\""), "{answer}");
}
