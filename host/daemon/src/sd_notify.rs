//! The systemd notify protocol: `READY=1` once every listener is bound, `RELOADING=1` and
//! `READY=1` around a SIGHUP reload, `STOPPING=1` when draining starts. Only when systemd
//! (or anything else) set `NOTIFY_SOCKET`; otherwise every call does nothing.

use std::os::unix::net::UnixDatagram;

/// Sends one notification; failures are logged, never fatal (the service runs either way).
fn send(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let result = UnixDatagram::unbound().and_then(|socket| {
        let bytes = path.as_encoded_bytes();
        match bytes.strip_prefix(b"@") {
            // An abstract socket (Linux): '@' stands for the leading NUL byte.
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                let address = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                socket.send_to_addr(state.as_bytes(), &address)
            }
            None => socket.send_to(state.as_bytes(), &path),
        }
    });
    if let Err(e) = result {
        tracing::warn!(socket = ?path, error = %e, "cannot notify the service manager");
    }
}

/// Every listener is bound and the daemon serves.
pub fn ready() {
    send(&format!(
        "READY=1\nSTATUS=serving\nMAINPID={}",
        std::process::id()
    ));
}

/// A reload (SIGHUP) starts; `ready` follows when it is done.
pub fn reloading() {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    let usec = now.tv_sec as u64 * 1_000_000 + now.tv_nsec as u64 / 1_000;
    send(&format!("RELOADING=1\nSTATUS=reloading\nMONOTONIC_USEC={usec}"));
}

/// Draining starts.
pub fn stopping() {
    send("STOPPING=1\nSTATUS=draining");
}
