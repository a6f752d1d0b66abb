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
