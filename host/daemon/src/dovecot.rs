//! Dovecot's authentication service as the password database of AUTH on submission, over
//! its client protocol (the `auth-client` socket), as Postfix's `smtpd_sasl_type = dovecot`
//! does: one password database serves IMAP and SMTP. And Dovecot's user database (the
//! `auth-userdb` socket, its master protocol's `USER` lookup) as the directory RCPT asks
//! about local addresses the users file does not hold.
//!
//! Written by hand: the protocol is a dozen tab-separated lines (Dovecot's
//! `auth_protocol` design document), and no maintained crate speaks it.
//!
//! One connection per check: the handshake (`VERSION`, `CPID`; Dovecot answers `VERSION`,
//! `MECH`…, `SPID`, `CUID`, `COOKIE`, `DONE`), then one `AUTH` of mechanism PLAIN with the
//! initial response (LOGIN is carried as PLAIN: the host has both strings), `service=smtp`,
//! `nologin` (we authenticate, nobody logs in), `secured` (the session is inside TLS), and
//! the client's and our addresses (`rip`, `lip`), so Dovecot's own throttling and logs see
//! the real client.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use base64::Engine as _;
use portcullis_runtime::capability::Endpoint;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};

/// How long one check may take, connection and handshake included. Dovecot delays a
/// failure by `auth_failure_delay` (2 s by default): well inside.
const TIMEOUT: Duration = Duration::from_secs(10);
/// The longest answer read, in all (Dovecot's lines are at most 16 KiB).
const MAX_ANSWER: u64 = 64 << 10;

/// `[auth] dovecot`: where Dovecot's authentication service listens.
#[derive(Clone, Debug)]
pub struct DovecotAuth {
    endpoint: Endpoint,
}

/// One check: the credentials and where the session runs.
pub struct Check<'a> {
    /// The user name as the client gave it.
    pub user: &'a str,
    /// The password.
    pub password: &'a str,
    /// The client's address (`rip`).
    pub client: IpAddr,
    /// The listener's address (`lip`).
    pub local: Option<SocketAddr>,
    /// The session is inside TLS (`secured`).
    pub secured: bool,
}

/// What Dovecot said.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    /// The password is right: the user name Dovecot gives (its canonical form).
    Accept(String),
    /// The password is wrong, or the user unknown or disabled.
    Reject,
    /// Dovecot could not be asked or could not decide: try again later, never a pass.
    Unavailable(String),
}

impl DovecotAuth {
    /// Dovecot's authentication service at `endpoint`.
    pub fn new(endpoint: Endpoint) -> DovecotAuth {
        DovecotAuth { endpoint }
    }

    /// Asks Dovecot whether the credentials are right.
    pub async fn verify(&self, check: &Check<'_>) -> Answer {
        match ask(&self.endpoint, "Dovecot", |stream| exchange(stream, check)).await {
            Ok(answer) => answer,
            Err(why) => Answer::Unavailable(why),
        }
    }
}

/// A connection to Dovecot, over either kind of endpoint.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<S: AsyncRead + AsyncWrite + Unpin + Send> Stream for S {}

/// Connects to `endpoint` and runs `talk` on the connection, all within [`TIMEOUT`]; what
/// went wrong, for `who`, otherwise.
async fn ask<'a, T, F>(
    endpoint: &Endpoint,
    who: &str,
    talk: impl FnOnce(Box<dyn Stream + 'a>) -> F,
) -> Result<T, String>
where
    F: std::future::Future<Output = std::io::Result<T>>,
{
    let asked = async {
        let stream: Box<dyn Stream> = match endpoint {
            Endpoint::Unix(path) => Box::new(tokio::net::UnixStream::connect(path).await?),
            Endpoint::Tcp(address) => Box::new(tokio::net::TcpStream::connect(address).await?),
        };
        talk(stream).await
    };
    match tokio::time::timeout(TIMEOUT, asked).await {
        Ok(Ok(answer)) => Ok(answer),
        Ok(Err(e)) => Err(format!("{who} at {endpoint}: {e}")),
        Err(_) => Err(format!("{who} at {endpoint} did not answer within {TIMEOUT:?}")),
    }
}

/// `[auth] dovecot-userdb`: Dovecot's user database (its `auth-userdb` socket), asked at
/// RCPT whether a local address the users file does not hold exists.
#[derive(Clone, Debug)]
pub struct DovecotUserdb {
    endpoint: Endpoint,
}

/// What Dovecot's user database said of a user.
#[derive(Debug, PartialEq, Eq)]
pub enum UserAnswer {
    /// The user exists, under this name.
    Exists(String),
    /// No such user.
    Unknown,
    /// Dovecot could not be asked or could not answer.
    Unavailable(String),
}

impl DovecotUserdb {
    /// Dovecot's user database at `endpoint`.
    pub fn new(endpoint: Endpoint) -> DovecotUserdb {
        DovecotUserdb { endpoint }
    }

    /// Asks whether `user` exists (`USER` with `service=smtp`, as Postfix's and chasquid's
    /// recipient checks do).
    pub async fn lookup(&self, user: &str) -> UserAnswer {
        match ask(&self.endpoint, "Dovecot's userdb", |stream| {
            user_lookup(stream, user)
        })
        .await
        {
            Ok(answer) => answer,
            Err(why) => UserAnswer::Unavailable(why),
        }
    }
}

/// The handshake of the master protocol and one `USER` lookup on `stream`.
async fn user_lookup<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    user: &str,
) -> std::io::Result<UserAnswer> {
    let (read, mut write) = tokio::io::split(stream);
    let mut lines = BufReader::new(read.take(MAX_ANSWER));
    write
        .write_all(format!("VERSION\t1\t0\nUSER\t1\t{}\tservice=smtp\n", escape(user)).as_bytes())
        .await?;
    loop {
        let line = next_line(&mut lines).await?;
        let fields: Vec<&str> = line.split('\t').collect();
        match fields.as_slice() {
            ["VERSION", major, ..] if *major != "1" => {
                return Err(protocol_error(format!(
                    "Dovecot speaks version {major} of its userdb protocol; we speak 1"
                )));
            }
            ["VERSION", ..] | ["SPID", ..] => {}
            ["USER", "1", name, ..] => return Ok(UserAnswer::Exists(unescape(name))),
            ["NOTFOUND", "1", ..] => return Ok(UserAnswer::Unknown),
            ["FAIL", "1", rest @ ..] => {
                let reason = rest
                    .iter()
                    .find_map(|f| f.strip_prefix("reason="))
                    .map(unescape)
                    .unwrap_or_else(|| "no reason given".into());
                return Ok(UserAnswer::Unavailable(format!(
                    "Dovecot's userdb failed: {reason}"
                )));
            }
            _ => {
                return Err(protocol_error(format!(
                    "Dovecot answered {:?} to USER",
                    line.chars().take(200).collect::<String>()
                )));
            }
        }
    }
}

/// Dovecot's tab-escaping of a value we send.
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\0' => out.push_str("\x010"),
            '\x01' => out.push_str("\x011"),
            '\t' => out.push_str("\x01t"),
            '\r' => out.push_str("\x01r"),
            '\n' => out.push_str("\x01n"),
            c => out.push(c),
        }
    }
    out
}

fn protocol_error(what: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what)
}

/// The handshake and one AUTH on `stream`.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    check: &Check<'_>,
) -> std::io::Result<Answer> {
    let (read, mut write) = tokio::io::split(stream);
    let mut lines = BufReader::new(read.take(MAX_ANSWER));
    write
        .write_all(format!("VERSION\t1\t2\nCPID\t{}\n", std::process::id()).as_bytes())
        .await?;

    let mut plain = false;
    loop {
        let line = next_line(&mut lines).await?;
        let fields: Vec<&str> = line.split('\t').collect();
        match fields.as_slice() {
            ["VERSION", major, ..] if *major != "1" => {
                return Err(protocol_error(format!(
                    "Dovecot speaks version {major} of its auth protocol; we speak 1"
                )));
            }
            ["MECH", mechanism, ..] if mechanism.eq_ignore_ascii_case("PLAIN") => plain = true,
            ["DONE", ..] => break,
            _ => {}
        }
    }
    if !plain {
        return Err(protocol_error(
            "Dovecot does not offer PLAIN (auth_mechanisms)".into(),
        ));
    }

    let response =
        base64::engine::general_purpose::STANDARD.encode(format!("\0{}\0{}", check.user, check.password));
    let mut auth = String::from("AUTH\t1\tPLAIN\tservice=smtp\tnologin");
    if check.secured {
        auth.push_str("\tsecured");
    }
    auth.push_str(&format!("\trip={}", check.client));
    if let Some(local) = check.local {
        auth.push_str(&format!("\tlip={}", local.ip()));
    }
    auth.push_str(&format!("\tresp={response}\n"));
    write.write_all(auth.as_bytes()).await?;

    let line = next_line(&mut lines).await?;
    let fields: Vec<&str> = line.split('\t').collect();
    let parameter = |name: &str| {
        fields
            .iter()
            .skip(2)
            .find_map(|f| f.strip_prefix(name).and_then(|v| v.strip_prefix('=')))
            .map(unescape)
    };
    let flag = |name: &str| fields.iter().skip(2).any(|f| *f == name);
    match fields.as_slice() {
        ["OK", "1", ..] => Ok(Answer::Accept(
            parameter("user").unwrap_or_else(|| check.user.to_string()),
        )),
        ["FAIL", "1", ..] if flag("temp") || parameter("code").as_deref() == Some("temp_fail") => {
            Ok(Answer::Unavailable(format!(
                "Dovecot could not check the password now{}",
                parameter("reason").map(|r| format!(": {r}")).unwrap_or_default()
            )))
        }
        ["FAIL", "1", ..] => Ok(Answer::Reject),
        _ => Err(protocol_error(format!(
            "Dovecot answered {:?} to AUTH",
            line.chars().take(200).collect::<String>()
        ))),
    }
}

/// One line without its LF; end of stream is an error.
async fn next_line<R: tokio::io::AsyncBufRead + Unpin>(lines: &mut R) -> std::io::Result<String> {
    let mut line = String::new();
    if lines.read_line(&mut line).await? == 0 || !line.ends_with('\n') {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "Dovecot closed the connection",
        ));
    }
    line.pop();
    Ok(line)
}

/// Dovecot's tab-escaping: `\x01` then `0`, `1`, `t`, `r`, `n` (or `l`) for NUL, `\x01`,
/// TAB, CR, LF; anything else stands for itself.
fn unescape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c != '\x01' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('0') => out.push('\0'),
            Some('1') => out.push('\x01'),
            Some('t') => out.push('\t'),
            Some('r') => out.push('\r'),
            Some('n' | 'l') => out.push('\n'),
            Some(other) => out.push(other),
            None => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tab_escaping_is_undone() {
        assert_eq!(unescape("alice@example.org"), "alice@example.org");
        assert_eq!(unescape("a\x01tb\x011c\x010"), "a\tb\x01c\0");
        assert_eq!(unescape("x\x01"), "x");
        let odd = "a\tb\nc\x01d\0";
        assert!(!escape(odd).contains(['\t', '\n', '\0']));
        assert_eq!(unescape(&escape(odd)), odd);
    }
}
