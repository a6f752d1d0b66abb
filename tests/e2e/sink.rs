//! A scripted SMTP server for outbound tests: it answers as the test says (4xx, 5xx, a
//! held reply), speaks STARTTLS with a throwaway certificate, and records every transaction
//! it acknowledged, with the exact content bytes.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::harness::PATIENCE;

/// What the sink recorded of one acknowledged transaction.
#[derive(Clone, Debug)]
pub struct Transaction {
    pub helo: String,
    pub mail_from: String,
    pub rcpts: Vec<String>,
    /// The message as sent, dot-unstuffed, without the terminating `.` line.
    pub data: Vec<u8>,
    pub tls: bool,
    pub auth: Option<String>,
}

/// How the sink behaves.
pub struct Script {
    pub bind: SocketAddr,
    pub starttls: bool,
    /// Replies to end of DATA, one per transaction; when empty, `250 2.0.0 queued`.
    pub data_replies: VecDeque<String>,
    /// The reply to RCPT TO for a given address; `None`: 250.
    pub rcpt: fn(&str) -> Option<String>,
    /// Hold the end-of-DATA reply this long (a slow peer, for crash tests).
    pub hold: Duration,
    /// Require AUTH PLAIN with this user and password before MAIL.
    pub auth: Option<(String, String)>,
    /// Offer the DSN extension (a next hop that reports deliveries itself).
    pub dsn: bool,
}

impl Default for Script {
    fn default() -> Self {
        Script {
            bind: "127.0.0.1:0".parse().expect("addr"),
            starttls: true,
            data_replies: VecDeque::new(),
            rcpt: |_| None,
            hold: Duration::ZERO,
            auth: None,
            dsn: true,
        }
    }
}

pub struct Sink {
    pub addr: SocketAddr,
    pub received: Arc<Mutex<Vec<Transaction>>>,
    /// Every end-of-DATA seen (acknowledged or not), for waiting on a held reply.
    pub data_seen: Arc<Mutex<usize>>,
}

trait Io: Read + Write + Send {}
impl<T: Read + Write + Send> Io for T {}

impl Sink {
    pub fn start(script: Script) -> Sink {
        let listener = TcpListener::bind(script.bind).expect("bind sink");
        let addr = listener.local_addr().expect("sink addr");
        let received = Arc::new(Mutex::new(Vec::new()));
        let data_seen = Arc::new(Mutex::new(0));
        let script = Arc::new(Mutex::new(script));
        let (rec, seen) = (Arc::clone(&received), Arc::clone(&data_seen));
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let (script, rec, seen) = (Arc::clone(&script), Arc::clone(&rec), Arc::clone(&seen));
                std::thread::spawn(move || {
                    let _ = serve(stream, &script, &rec, &seen);
                });
            }
        });
        Sink {
            addr,
            received,
            data_seen,
        }
    }

    /// Waits (bounded) for `count` acknowledged transactions and returns them all.
    pub fn wait(&self, count: usize) -> Vec<Transaction> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let got = self.received.lock().expect("lock").clone();
            if got.len() >= count {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "sink expected {count} transaction(s), got {}",
                got.len()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn count(&self) -> usize {
        self.received.lock().expect("lock").len()
    }
}

fn tls_config() -> Arc<rustls::ServerConfig> {
    let cert = rcgen::generate_simple_self_signed(vec!["sink.test".to_string()]).expect("cert");
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .expect("server config");
    Arc::new(config)
}

/// One client's conversation with the sink: what it said so far and how the script answers.
struct Conversation<'a> {
    reader: BufReader<Box<dyn Io>>,
    raw: TcpStream,
    script: &'a Mutex<Script>,
    data_seen: &'a Mutex<usize>,
    tls: bool,
    helo: String,
    authed: Option<String>,
    mail_from: String,
    rcpts: Vec<String>,
    /// A transaction acknowledged with 250 is recorded only once the client proves it saw
    /// the reply by sending its next command: a client killed before that never learnt of it.
    unconfirmed: Option<Transaction>,
}

/// What to do after a command.
enum Next {
    Continue,
    Close,
}

fn serve(
    stream: TcpStream,
    script: &Mutex<Script>,
    received: &Mutex<Vec<Transaction>>,
    data_seen: &Mutex<usize>,
) -> std::io::Result<()> {
    stream.set_read_timeout(Some(PATIENCE))?;
    let raw = stream.try_clone()?;
    let mut talk = Conversation {
        reader: BufReader::new(Box::new(stream)),
        raw,
        script,
        data_seen,
        tls: false,
        helo: String::new(),
        authed: None,
        mail_from: String::new(),
        rcpts: Vec::new(),
        unconfirmed: None,
    };
    talk.write("220 sink.test ESMTP test sink\r\n")?;
    loop {
        let mut line = String::new();
        if talk.reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        if let Some(t) = talk.unconfirmed.take() {
            received.lock().expect("lock").push(t);
        }
        if let Next::Close = talk.command(line.trim_end())? {
            return Ok(());
        }
    }
}

impl Conversation<'_> {
    fn write(&mut self, text: &str) -> std::io::Result<()> {
        self.reader.get_mut().write_all(text.as_bytes())?;
        self.reader.get_mut().flush()
    }

    fn command(&mut self, line: &str) -> std::io::Result<Next> {
        let upper = line.to_ascii_uppercase();
        let verb = upper.split([' ', ':']).next().unwrap_or("");
        let starttls = self.script.lock().expect("lock").starttls;
        match verb {
            "EHLO" => self.ehlo(line)?,
            "STARTTLS" if starttls && !self.tls => self.starttls()?,
            "AUTH" => self.auth(line)?,
            "MAIL" => self.mail(line)?,
            "RCPT" => self.rcpt(line)?,
            "DATA" => return self.data(),
            "RSET" => {
                self.rcpts.clear();
                self.write("250 2.0.0 ok\r\n")?;
            }
            "QUIT" => {
                self.write("221 2.0.0 bye\r\n")?;
                return Ok(Next::Close);
            }
            _ => self.write("502 5.5.2 unknown command\r\n")?,
        }
        Ok(Next::Continue)
    }

    fn ehlo(&mut self, line: &str) -> std::io::Result<()> {
        self.helo = line[5..].to_string();
        let (starttls, auth, dsn) = {
            let s = self.script.lock().expect("lock");
            (s.starttls, s.auth.is_some(), s.dsn)
        };
        let mut ext = vec!["sink.test", "PIPELINING", "SIZE 10485760", "8BITMIME", "SMTPUTF8"];
        if dsn {
            ext.push("DSN");
        }
        if starttls && !self.tls {
            ext.push("STARTTLS");
        }
        if auth && self.tls {
            ext.push("AUTH PLAIN");
        }
        let n = ext.len();
        let text: String = ext
            .iter()
            .enumerate()
            .map(|(i, e)| format!("250{}{e}\r\n", if i + 1 == n { ' ' } else { '-' }))
            .collect();
        self.write(&text)
    }

    fn starttls(&mut self) -> std::io::Result<()> {
        self.write("220 2.0.0 go ahead\r\n")?;
        assert!(self.reader.buffer().is_empty(), "client pipelined after STARTTLS");
        let conn = rustls::ServerConnection::new(tls_config()).expect("server conn");
        let stream = rustls::StreamOwned::new(conn, self.raw.try_clone()?);
        self.reader = BufReader::new(Box::new(stream));
        self.tls = true;
        self.helo.clear();
        Ok(())
    }

    fn auth(&mut self, line: &str) -> std::io::Result<()> {
        use base64::Engine as _;
        let token = line.split_whitespace().nth(2).unwrap_or("");
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(token)
            .unwrap_or_default();
        let parts: Vec<String> = decoded
            .split(|b| *b == 0)
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .collect();
        let needed = self.script.lock().expect("lock").auth.clone();
        match needed {
            Some((u, p)) if parts.len() == 3 && parts[1] == u && parts[2] == p && self.tls => {
                self.authed = Some(u);
                self.write("235 2.7.0 ok\r\n")
            }
            _ => self.write("535 5.7.8 bad credentials\r\n"),
        }
    }

    fn mail(&mut self, line: &str) -> std::io::Result<()> {
        let auth_needed = self.script.lock().expect("lock").auth.is_some();
        if auth_needed && self.authed.is_none() {
            return self.write("530 5.7.0 authentication required\r\n");
        }
        self.mail_from = line[10..].to_string();
        self.rcpts.clear();
        self.write("250 2.1.0 ok\r\n")
    }

    fn rcpt(&mut self, line: &str) -> std::io::Result<()> {
        let addr = line[8..]
            .split('>')
            .next()
            .unwrap_or("")
            .trim_start_matches('<')
            .to_string();
        let rcpt_reply = self.script.lock().expect("lock").rcpt;
        match rcpt_reply(&addr) {
            Some(reply) => self.write(&format!("{reply}\r\n")),
            None => {
                self.rcpts.push(line[8..].to_string());
                self.write("250 2.1.5 ok\r\n")
            }
        }
    }

    fn data(&mut self) -> std::io::Result<Next> {
        if self.rcpts.is_empty() {
            self.write("554 5.5.1 no valid recipients\r\n")?;
            return Ok(Next::Continue);
        }
        self.write("354 go ahead\r\n")?;
        let mut data = Vec::new();
        loop {
            let mut l = Vec::new();
            if self.reader.read_until(b'\n', &mut l)? == 0 {
                return Ok(Next::Close);
            }
            assert!(l.ends_with(b"\r\n"), "bare line ending in DATA: {l:?}");
            if l == b".\r\n" {
                break;
            }
            let l = if l.starts_with(b".") { &l[1..] } else { &l[..] };
            data.extend_from_slice(l);
        }
        *self.data_seen.lock().expect("lock") += 1;
        let hold = self.script.lock().expect("lock").hold;
        std::thread::sleep(hold);
        let reply = self
            .script
            .lock()
            .expect("lock")
            .data_replies
            .pop_front()
            .unwrap_or_else(|| "250 2.0.0 queued".into());
        self.write(&format!("{reply}\r\n"))?;
        if reply.starts_with('2') {
            self.unconfirmed = Some(Transaction {
                helo: self.helo.clone(),
                mail_from: self.mail_from.clone(),
                rcpts: std::mem::take(&mut self.rcpts),
                data,
                tls: self.tls,
                auth: self.authed.clone(),
            });
        }
        Ok(Next::Continue)
    }
}
