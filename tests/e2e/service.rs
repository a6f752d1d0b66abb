//! Living under a service manager: the systemd notify protocol over a real socket.

use std::os::unix::net::UnixDatagram;

use crate::harness::*;

fn next(socket: &UnixDatagram) -> String {
    let mut buf = [0u8; 512];
    let n = socket.recv(&mut buf).expect("a notification within the bound");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn notify_socket_hears_ready_only_when_listening_then_reloading_and_stopping() {
    let setup = Setup::new("");
    let path = setup.dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
    socket.set_read_timeout(Some(PATIENCE)).expect("timeout");
    let daemon = Daemon::start_with_env(&setup.config(), &[("NOTIFY_SOCKET", path.as_os_str())]);

    let ready = next(&socket);
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready}");
    assert!(
        ready.contains(&format!("MAINPID={}", daemon.child.id())),
        "{ready}"
    );
    // READY means every listener accepts.
    for kind in ["mx", "submission", "submissions"] {
        std::net::TcpStream::connect(daemon.addr(kind)).expect("listening once READY");
    }

    daemon.signal("HUP");
    let reloading = next(&socket);
    assert!(reloading.lines().any(|l| l == "RELOADING=1"), "{reloading}");
    assert!(reloading.contains("MONOTONIC_USEC="), "{reloading}");
    assert!(
        next(&socket).lines().any(|l| l == "READY=1"),
        "READY again after the reload"
    );

    daemon.sigterm();
    assert!(next(&socket).lines().any(|l| l == "STOPPING=1"));
}
