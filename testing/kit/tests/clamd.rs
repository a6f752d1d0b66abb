//! The test clamd is what the virus tests will rely on: it finds the test signature in a
//! base64 attachment of a message, passes a clean message, refuses to call a stream over its
//! limit clean, and comes back after a stop.

use base64::Engine as _;
use portcullis_testkit::clamd::{Clamd, TEST_SIGNATURE, TEST_SIGNATURE_NAME};

fn with_attachment(content: &[u8]) -> Vec<u8> {
    let encoded = base64::engine::general_purpose::STANDARD.encode(content);
    format!(
        "From: a@example.org\r\nSubject: attached\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n--b1\r\nContent-Type: text/plain\r\n\r\n\
         see attached\r\n--b1\r\nContent-Type: application/octet-stream\r\n\
         Content-Transfer-Encoding: base64\r\n\r\n{encoded}\r\n--b1--\r\n"
    )
    .into_bytes()
}

#[test]
fn clamd_finds_the_test_signature_in_an_attachment_and_comes_back_after_a_stop() {
    let mut clamd = Clamd::start("1M");
    let infected = with_attachment(&[b"before ", TEST_SIGNATURE, b" after"].concat());
    assert_eq!(
        clamd.scan(&infected).as_deref(),
        Some(format!("stream: {TEST_SIGNATURE_NAME} FOUND").as_str())
    );
    let clean = with_attachment(b"nothing to see");
    assert_eq!(clamd.scan(&clean).as_deref(), Some("stream: OK"));
    // Over StreamMaxLength: never "OK".
    let large = with_attachment(&vec![b'x'; 2 << 20]);
    let answer = clamd.scan(&large).unwrap_or_default();
    assert!(
        answer.contains("Exceeded") || answer.contains("ERROR"),
        "{answer}"
    );
    clamd.stop();
    assert_eq!(clamd.scan(&clean), None, "a stopped clamd answers nothing");
    clamd.resume();
    assert_eq!(
        clamd.scan(&infected).as_deref(),
        Some(format!("stream: {TEST_SIGNATURE_NAME} FOUND").as_str())
    );
}

/// One SMTP transaction to `addr` (plain, one recipient); the reply to the content.
fn send(addr: std::net::SocketAddr, message: &[u8]) -> String {
    use std::io::{BufRead, BufReader, Write};
    let stream = std::net::TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(60)))
        .expect("timeout");
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut writer = stream;
    let mut reply = || {
        let mut whole = String::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return whole;
            }
            whole.push_str(&line);
            if line.as_bytes().get(3) != Some(&b'-') {
                return whole;
            }
        }
    };
    assert!(reply().starts_with("220"));
    for command in [
        "EHLO client.test",
        "MAIL FROM:<a@example.org>",
        "RCPT TO:<b@example.net>",
        "DATA",
    ] {
        writer
            .write_all(format!("{command}\r\n").as_bytes())
            .expect("send");
        let answer = reply();
        assert!(
            answer.starts_with('2') || answer.starts_with('3'),
            "{command}: {answer}"
        );
    }
    writer.write_all(message).expect("content");
    writer.write_all(b".\r\n").expect("dot");
    let answer = reply();
    let _ = writer.write_all(b"QUIT\r\n");
    answer
}

#[test]
fn postfix_with_clamav_milter_refuses_the_test_signature_and_delivers_clean_mail() {
    use portcullis_testkit::clamav_milter::ClamavMilter;
    use portcullis_testkit::postfix::{Postfix, ensure_installed};
    ensure_installed();
    let clamd = Clamd::start("25M");
    let milter = ClamavMilter::start(&clamd);
    let postfix = Postfix::start("example.net", |_| {
        (
            format!(
                "smtpd_milters = inet:{}\nmilter_default_action = tempfail\n",
                milter.addr
            ),
            String::new(),
        )
    });
    let infected = with_attachment(&[b"x ", TEST_SIGNATURE, b" y"].concat());
    let answer = send(postfix.addr, &infected);
    assert!(answer.starts_with('5'), "infected mail was not refused: {answer}");
    let answer = send(postfix.addr, &with_attachment(b"nothing to see"));
    assert!(answer.starts_with("250"), "{answer}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let copy = loop {
        let copies: Vec<_> = std::fs::read_dir(postfix.maildir())
            .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
            .unwrap_or_default();
        if let Some(path) = copies.first() {
            break std::fs::read_to_string(path).expect("read");
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the clean message never arrived"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(
        copy.contains("X-Virus-Status: Clean") && copy.contains("X-Virus-Scanned: clamav-milter"),
        "{copy}"
    );
    assert!(milter.log().contains(TEST_SIGNATURE_NAME), "{}", milter.log());
}
