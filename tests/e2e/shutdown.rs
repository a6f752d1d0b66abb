//! SIGTERM drains: idle sessions get 421 at once, an open transaction may finish, then 421.

use std::io::BufRead;
use std::net::TcpStream;

use crate::harness::*;

#[test]
fn sigterm_closes_idle_sessions_and_lets_transactions_finish() {
    let setup = Setup::new("");
    let mut daemon = setup.start();
    let addr = daemon.addr("mx");
    let mut idle = Raw::connect(addr);
    assert!(idle.cmd("EHLO idle.example").starts_with("250"));
    let mut busy = Raw::connect(addr);
    assert!(busy.cmd("EHLO busy.example").starts_with("250"));
    assert!(busy.cmd("MAIL FROM:<friend@far.example>").starts_with("250"));
    assert!(busy.cmd("RCPT TO:<alice@example.org>").starts_with("250"));

    daemon.sigterm();
    assert!(idle.reply().starts_with("421 4.3.2"));
    assert!(idle.until_closed().is_some());
    daemon.wait_log("listeners closed");
    // No new session is served: the connection is refused, or (if the kernel completed
    // it just as the listener closed) reset without a greeting.
    if let Ok(stream) = TcpStream::connect(addr) {
        stream.set_read_timeout(Some(PATIENCE)).expect("timeout");
        let mut greeting = String::new();
        let _ = std::io::BufReader::new(stream).read_line(&mut greeting);
        assert!(greeting.is_empty(), "greeted while draining: {greeting}");
    }

    assert!(busy.cmd("DATA").starts_with("354"));
    assert!(
        busy.cmd("Subject: last\r\n\r\nfinished during the drain\r\n.")
            .starts_with("250 2.0.0")
    );
    assert!(busy.reply().starts_with("421 4.3.2"));
    assert!(daemon.wait_exit().success());
    assert_eq!(new_files(&setup.maildir("alice")).len() + spool_count(&setup), 1);
}

fn spool_count(setup: &Setup) -> usize {
    queued_messages(&setup.data())
}

#[test]
fn silent_clients_time_out_with_421() {
    let setup = Setup::new("[limits]\ncommand-timeout = \"300ms\"\n");
    let daemon = setup.start();
    let mut c = Raw::connect(daemon.addr("mx"));
    assert!(c.cmd("EHLO slow.example").starts_with("250"));
    // Say nothing: the server must give up, say why, and close.
    assert!(c.reply().starts_with("421 4.4.2"));
    assert!(c.until_closed().is_some());

    // Nor can a client hold an implicit-TLS connection by never starting the handshake.
    use std::io::Read;
    let mut silent = TcpStream::connect(daemon.addr("submissions")).expect("connect");
    silent.set_read_timeout(Some(PATIENCE)).expect("timeout");
    let mut buf = [0u8; 16];
    let closed = match silent.read(&mut buf) {
        Ok(0) => true,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
        Ok(_) => false,
    };
    assert!(closed, "the server closes a connection that never starts TLS");
}
