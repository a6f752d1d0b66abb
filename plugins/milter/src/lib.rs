//! `milter`: asks one existing milter about every message — rspamd's proxy in milter
//! mode, clamav-milter, OpenDKIM or OpenDMARC in verify mode — speaking the
//! milter protocol (version 6, as Postfix does) over a connection the operator granted.
//!
//! ```toml
//! [[plugin]]
//! hook = "spam"
//! path = "milter.wasm"
//! timeout = "30s"
//! on-error = "defer"              # milter down or answering nonsense: 451, nothing lost
//! grant-connect = ["tcp:127.0.0.1:11332"]
//! [plugin.config]
//! address = "tcp:127.0.0.1:11332"
//! hostname = "mx.example.org"     # the `j` macro; default: "localhost"
//! max-size = 20971520             # octets; a larger message is not sent
//! ```
//!
//! The milter sees the connection (the client's forward-confirmed reverse name, else
//! `[address]`), HELO, MAIL, each RCPT, the header fields and the body, with the macros
//! Postfix sends by default (`j`, `{daemon_name}`, `_`, `{client_addr}`, `{client_name}`,
//! `i`, `{auth_authen}`, `{mail_addr}`, `{rcpt_addr}`), and may skip any stage or answer
//! none of them, as it negotiates. It is offered header actions only (add, insert,
//! change — no recipient or body changes) and quarantine. One component serves both
//! content hooks (world `content-plugin`); `hook` in its `[[plugin]]` section decides:
//!
//! | the milter answers | on the spam hook | on the virus hook |
//! |---|---|---|
//! | accept, continue | accept, with its header changes | clean, with its header additions |
//! | reject, or a 5xx reply | reject (`550 5.7.1`, or its reply) | infected (named by its reply) |
//! | tempfail, or a 4xx reply | defer (`451 4.7.1`, or its reply) | error: `on-error` applies |
//! | discard | discard | infected |
//! | quarantine | junk | infected (named by its reason) |
//!
//! A message over `max-size` is not sent: accepted on the spam hook, an error (never clean)
//! on the virus hook. The virus hook removes no header field: a milter's change there only
//! adds the new value.
//!
//! A recipient refused at RCPT refuses the message when every recipient is refused; when
//! only some are, the contract decides per message: it goes on, and the refusal is
//! logged. A header change of the n-th field of a name changes every field of that name
//! (the contract removes by name). Trace and authentication fields are never added or
//! removed. The milter unreachable, closing early or answering what the protocol does not
//! allow is an `err`: the plugin's `on-error` applies.

wit_bindgen::generate!({ path: "../../wit", world: "content-plugin" });

use exports::portcullis::filter::spam::{self, SpamResult};
use exports::portcullis::filter::virus::{self, ScanReport, ScanResult};
use plugin_kit::{MAX_HEADERS, header_value, protected, valid_name};
use portcullis::filter::config;
use portcullis::filter::connect::{self, ConnectError, Connection};
use portcullis::filter::log::{self, Level};
use portcullis::filter::types::{EnhancedCode, Envelope, Header, Message, Reply, SessionInfo, Verdict};

/// The protocol version spoken (Postfix's, Sendmail 8.14's).
const VERSION: u32 = 6;
/// Actions offered: add headers, change or delete headers, quarantine.
const ACTIONS: u32 = 0x01 | 0x10 | 0x20;
/// Protocol steps the milter may skip (`SMFIP_NO*`) or leave unanswered (`SMFIP_NR_*`),
/// and `SMFIP_SKIP` (it may end the body early): everything but `SMFIP_RCPT_REJ` and
/// `SMFIP_HDR_LEADSPC`.
const PROTOCOL: u32 = 0x7FF | 0xF_F000;
const NO_CONNECT: u32 = 0x01;
const NO_HELO: u32 = 0x02;
const NO_MAIL: u32 = 0x04;
const NO_RCPT: u32 = 0x08;
const NO_BODY: u32 = 0x10;
const NO_HDRS: u32 = 0x20;
const NO_EOH: u32 = 0x40;
const NR_HDR: u32 = 0x80;
const NO_DATA: u32 = 0x200;
const NR_CONN: u32 = 0x1000;
const NR_HELO: u32 = 0x2000;
const NR_MAIL: u32 = 0x4000;
const NR_RCPT: u32 = 0x8000;
const NR_DATA: u32 = 0x1_0000;
const NR_EOH: u32 = 0x4_0000;
const NR_BODY: u32 = 0x8_0000;
/// The largest body chunk (`MILTER_CHUNK_SIZE`).
const BODY_CHUNK: usize = 65535;
/// The longest packet accepted from a milter.
const MAX_PACKET: usize = 1 << 20;
/// The default `max-size`.
const DEFAULT_MAX_SIZE: u64 = 20 << 20;

/// How a conversation with the milter ended.
enum End {
    Accept,
    Reject(Reply),
    Defer(Reply),
    Discard,
}

/// The milter's header changes and quarantine, collected while it answers.
#[derive(Default)]
struct Changes {
    add: Vec<Header>,
    remove: Vec<String>,
    quarantine: Option<String>,
}

/// One milter session over a granted connection.
struct Milter {
    conn: Connection,
    buffer: Vec<u8>,
    /// The steps the milter asked to skip or not answer (its protocol mask).
    protocol: u32,
}

fn failure(e: ConnectError) -> String {
    match e {
        ConnectError::Denied(why) => format!("not allowed: {why}"),
        ConnectError::Failed(why) => why,
    }
}

impl Milter {
    fn send(&self, command: u8, data: &[u8]) -> Result<(), String> {
        let mut packet = Vec::with_capacity(5 + data.len());
        packet.extend_from_slice(&(data.len() as u32 + 1).to_be_bytes());
        packet.push(command);
        packet.extend_from_slice(data);
        self.conn.write(&packet).map_err(failure)
    }

    /// The next packet: its command and data.
    fn packet(&mut self) -> Result<(u8, Vec<u8>), String> {
        self.fill(4)?;
        let len =
            u32::from_be_bytes([self.buffer[0], self.buffer[1], self.buffer[2], self.buffer[3]]) as usize;
        if len == 0 || len > MAX_PACKET {
            return Err(format!("the milter sent a packet of {len} octets"));
        }
        self.fill(4 + len)?;
        let packet: Vec<u8> = self.buffer.drain(..4 + len).skip(4).collect();
        Ok((packet[0], packet[1..].to_vec()))
    }

    fn fill(&mut self, want: usize) -> Result<(), String> {
        while self.buffer.len() < want {
            let got = self.conn.read(64 << 10).map_err(failure)?;
            if got.is_empty() {
                return Err("the milter closed the connection".into());
            }
            self.buffer.extend_from_slice(&got);
        }
        Ok(())
    }

    /// Sends a step unless the milter skips it, and reads its answer unless it gives
    /// none: `Some` ends the conversation.
    fn step(
        &mut self,
        skip: u32,
        no_reply: u32,
        command: u8,
        data: &[u8],
        changes: &mut Changes,
    ) -> Result<Option<End>, String> {
        if self.protocol & skip != 0 {
            return Ok(None);
        }
        self.send(command, data)?;
        if self.protocol & no_reply != 0 {
            return Ok(None);
        }
        self.answer(false, changes)
    }

    /// Sends macros for the step `command`.
    fn macros(&self, command: u8, pairs: &[(&str, String)]) -> Result<(), String> {
        let mut data = vec![command];
        // As Postfix: a macro without a value is not sent.
        for (name, value) in pairs.iter().filter(|(_, value)| !value.is_empty()) {
            data.extend_from_slice(name.as_bytes());
            data.push(0);
            data.extend_from_slice(value.as_bytes());
            data.push(0);
        }
        self.send(b'D', &data)
    }

    /// Reads answers until one decides this step: `None` goes on (continue, or skip in
    /// the body), `Some` ends. At the end of the message (`final_answer`) header changes
    /// and quarantine may come first.
    fn answer(&mut self, final_answer: bool, changes: &mut Changes) -> Result<Option<End>, String> {
        loop {
            let (command, data) = self.packet()?;
            match command {
                b'c' | b's' => return Ok(None),
                b'a' => return Ok(Some(End::Accept)),
                b'r' => return Ok(Some(End::Reject(reply(550, 5, "Message refused by the milter")))),
                b't' => return Ok(Some(End::Defer(reply(451, 4, "Try again later")))),
                b'd' => return Ok(Some(End::Discard)),
                b'y' => return Ok(Some(coded(&data)?)),
                b'p' => {}
                b'h' | b'i' | b'm' | b'q' if final_answer => change(command, &data, changes)?,
                other => {
                    return Err(format!(
                        "the milter answered {:?} where the protocol does not allow it",
                        other as char
                    ));
                }
            }
        }
    }
}

fn reply(code: u16, class: u8, text: &str) -> Reply {
    Reply {
        code,
        enhanced: Some(EnhancedCode {
            class,
            subject: 7,
            detail: 1,
        }),
        text: text.into(),
    }
}

/// A `SMFIR_REPLYCODE` answer: `"550 5.7.1 text"`.
fn coded(data: &[u8]) -> Result<End, String> {
    let text = String::from_utf8_lossy(data.strip_suffix(&[0]).unwrap_or(data)).replace(['\r', '\n'], " ");
    let code: u16 = text
        .get(..3)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("the milter's reply {text:?} has no code"))?;
    let rest = text.get(3..).unwrap_or("").trim();
    let (enhanced, text) = match rest.split_once(' ') {
        Some((code, text)) if enhanced_code(code).is_some() => (enhanced_code(code), text.trim().to_string()),
        _ => (None, rest.to_string()),
    };
    let reply = Reply { code, enhanced, text };
    match code / 100 {
        5 => Ok(End::Reject(reply)),
        4 => Ok(End::Defer(reply)),
        _ => Err(format!("the milter replied {code}, neither 4xx nor 5xx")),
    }
}

fn enhanced_code(text: &str) -> Option<EnhancedCode> {
    let mut parts = text.split('.').map(|p| p.parse::<u16>().ok());
    let (class, subject, detail) = (parts.next()??, parts.next()??, parts.next()??);
    Some(EnhancedCode {
        class: u8::try_from(class).ok()?,
        subject,
        detail,
    })
}

/// NUL-terminated strings.
fn strings(data: &[u8]) -> Vec<String> {
    data.split(|&b| b == 0)
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

fn header(name: &str, value: &str) -> Header {
    Header {
        name: name.into(),
        value: header_value(value),
    }
}

/// Applies one header action or quarantine of the milter's final answer.
fn change(command: u8, data: &[u8], changes: &mut Changes) -> Result<(), String> {
    if command == b'q' {
        changes.quarantine = Some(strings(data).into_iter().next().unwrap_or_default());
        return Ok(());
    }
    // `h`: name, value; `i` and `m`: an index first.
    let fields = if command == b'h' {
        strings(data)
    } else {
        strings(data.get(4..).ok_or("a header action without its index")?)
    };
    let (name, value) = match fields.as_slice() {
        [name, value, ..] => (name.as_str(), value.as_str()),
        _ => return Err("a header action without a name and value".into()),
    };
    if protected(name) || !valid_name(name) {
        log::log(
            Level::Info,
            &format!(
                "the milter changed {:?}: not a field a plugin may change; left as it is",
                name.escape_debug().to_string()
            ),
        );
        return Ok(());
    }
    if command == b'm' && !changes.remove.iter().any(|n| n.eq_ignore_ascii_case(name)) {
        if changes.remove.len() >= MAX_HEADERS {
            log::log(
                Level::Warn,
                &format!("more removals than a verdict may ask; {name} left in"),
            );
        } else {
            changes.remove.push(name.to_string());
        }
    }
    // A change to an empty value deletes the field.
    if command != b'm' || !value.is_empty() {
        if changes.add.len() >= MAX_HEADERS {
            log::log(
                Level::Warn,
                &format!("more headers than a verdict may add; {name} left out"),
            );
        } else {
            changes.add.push(header(name, value));
        }
    }
    Ok(())
}

/// Where the body starts: after the empty line that ends the header section.
fn body_start(raw: &[u8]) -> usize {
    if raw.starts_with(b"\r\n") {
        return 2;
    }
    raw.windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(raw.len(), |at| at + 4)
}

fn with_nul(parts: &[&str]) -> Vec<u8> {
    let mut data = Vec::new();
    for part in parts {
        data.extend_from_slice(part.as_bytes());
        data.push(0);
    }
    data
}

/// Talks the message through with the milter; how it ended and what it changed.
fn converse(
    session: &SessionInfo,
    envelope: &Envelope,
    message: &Message,
    address: &str,
) -> Result<(End, Changes), String> {
    let conn = connect::open(address).map_err(|e| format!("the milter at {address}: {}", failure(e)))?;
    let mut milter = Milter {
        conn,
        buffer: Vec::new(),
        protocol: 0,
    };
    let mut changes = Changes::default();
    let mut offer = Vec::with_capacity(12);
    for word in [VERSION, ACTIONS, PROTOCOL] {
        offer.extend_from_slice(&word.to_be_bytes());
    }
    milter.send(b'O', &offer)?;
    let (command, data) = milter.packet()?;
    if command != b'O' || data.len() < 12 {
        return Err(format!(
            "the milter did not negotiate (answered {:?})",
            command as char
        ));
    }
    let word = |at: usize| u32::from_be_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]]);
    if word(0) < 2 {
        return Err(format!("the milter speaks version {}", word(0)));
    }
    milter.protocol = word(8) & PROTOCOL;

    let hostname = config::get("hostname").unwrap_or_else(|| "localhost".into());
    let ip = session.client_ip.clone();
    let client_name = match (&session.reverse_name, session.reverse_confirmed) {
        (Some(name), true) => name.clone(),
        _ => format!("[{ip}]"),
    };
    milter.macros(
        b'C',
        &[
            ("j", hostname),
            ("{daemon_name}", "portcullis".into()),
            ("_", format!("{client_name} [{ip}]")),
            ("{client_addr}", ip.clone()),
            ("{client_name}", client_name.clone()),
        ],
    )?;
    let family = if ip.contains(':') { b'6' } else { b'4' };
    let mut connect = with_nul(&[&client_name]);
    connect.push(family);
    connect.extend_from_slice(&session.client_port.to_be_bytes());
    connect.extend_from_slice(&with_nul(&[&ip]));
    let steps: Result<Option<End>, String> = (|| {
        if let Some(end) = milter.step(NO_CONNECT, NR_CONN, b'C', &connect, &mut changes)? {
            return Ok(Some(end));
        }
        let helo = session.helo.clone().unwrap_or_default();
        if let Some(end) = milter.step(NO_HELO, NR_HELO, b'H', &with_nul(&[&helo]), &mut changes)? {
            return Ok(Some(end));
        }
        let from = envelope.mail_from.clone().unwrap_or_default();
        milter.macros(
            b'M',
            &[
                ("i", session.queue_id.clone().unwrap_or_default()),
                ("{auth_authen}", session.account.clone().unwrap_or_default()),
                ("{mail_addr}", from.clone()),
            ],
        )?;
        if let Some(end) = milter.step(
            NO_MAIL,
            NR_MAIL,
            b'M',
            &with_nul(&[&format!("<{from}>")]),
            &mut changes,
        )? {
            return Ok(Some(end));
        }
        let mut refused = Vec::new();
        for rcpt in &envelope.rcpt_to {
            milter.macros(b'R', &[("{rcpt_addr}", rcpt.clone())])?;
            match milter.step(
                NO_RCPT,
                NR_RCPT,
                b'R',
                &with_nul(&[&format!("<{rcpt}>")]),
                &mut changes,
            )? {
                None | Some(End::Accept) => {}
                Some(End::Reject(reply) | End::Defer(reply)) => refused.push((rcpt.clone(), reply)),
                Some(End::Discard) => return Ok(Some(End::Discard)),
            }
        }
        if !refused.is_empty() && refused.len() == envelope.rcpt_to.len() {
            let (_, reply) = refused.swap_remove(0);
            return Ok(Some(if reply.code >= 500 {
                End::Reject(reply)
            } else {
                End::Defer(reply)
            }));
        }
        for (rcpt, reply) in &refused {
            log::log(
                Level::Warn,
                &format!(
                    "the milter refused {rcpt} ({} {}); the message goes on for the others",
                    reply.code, reply.text
                ),
            );
        }
        if let Some(end) = milter.step(NO_DATA, NR_DATA, b'T', &[], &mut changes)? {
            return Ok(Some(end));
        }
        let raw = plugin_kit::read_all(message.size(), |at, max| message.read(at, max));
        if milter.protocol & NO_HDRS == 0 {
            for h in message.headers() {
                if let Some(end) =
                    milter.step(0, NR_HDR, b'L', &with_nul(&[&h.name, &h.value]), &mut changes)?
                {
                    return Ok(Some(end));
                }
            }
        }
        milter.macros(b'N', &[("i", session.queue_id.clone().unwrap_or_default())])?;
        if let Some(end) = milter.step(NO_EOH, NR_EOH, b'N', &[], &mut changes)? {
            return Ok(Some(end));
        }
        if milter.protocol & NO_BODY == 0 {
            for chunk in raw[body_start(&raw)..].chunks(BODY_CHUNK) {
                milter.send(b'B', chunk)?;
                if milter.protocol & NR_BODY == 0 {
                    // `s` (skip) ends the body early; `c` goes on.
                    let (command, data) = milter.packet()?;
                    match command {
                        b'c' | b'p' => {}
                        b's' => break,
                        _ => return decide_early(command, &data),
                    }
                }
            }
        }
        milter.send(b'E', &[])?;
        Ok(Some(milter.answer(true, &mut changes)?.unwrap_or(End::Accept)))
    })();
    let end = steps?.unwrap_or(End::Accept);
    let _ = milter.send(b'Q', &[]);
    Ok((end, changes))
}

/// A decision the milter gives to a body chunk.
fn decide_early(command: u8, data: &[u8]) -> Result<Option<End>, String> {
    match command {
        b'a' => Ok(Some(End::Accept)),
        b'r' => Ok(Some(End::Reject(reply(550, 5, "Message refused by the milter")))),
        b't' => Ok(Some(End::Defer(reply(451, 4, "Try again later")))),
        b'd' => Ok(Some(End::Discard)),
        b'y' => Ok(Some(coded(data)?)),
        other => Err(format!("the milter answered {:?} to the body", other as char)),
    }
}

struct MilterPlugin;

/// The plugin's `address` and `max-size`.
fn settings() -> Result<(String, u64), String> {
    let address =
        config::get("address").ok_or("no address in [plugin.config] (such as tcp:127.0.0.1:11332)")?;
    let max_size = config::get("max-size")
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_MAX_SIZE);
    Ok((address, max_size))
}

/// What the milter said, for the log.
fn said(end: &End, changes: &Changes) -> String {
    let what = match end {
        End::Accept => match &changes.quarantine {
            Some(why) => format!("quarantine ({why})"),
            None => "accept".to_string(),
        },
        End::Reject(r) | End::Defer(r) => format!("{} {}", r.code, r.text),
        End::Discard => "discard".into(),
    };
    format!(
        "milter: {what}; {} header(s) added, {} removed",
        changes.add.len(),
        changes.remove.len()
    )
}

impl spam::Guest for MilterPlugin {
    fn classify(session: SessionInfo, envelope: Envelope, message: &Message) -> Result<SpamResult, String> {
        let (address, max_size) = settings()?;
        let size = message.size();
        if size > max_size {
            log::log(
                Level::Info,
                &format!("{size} octets, over max-size ({max_size}): not asked"),
            );
            return Ok(SpamResult {
                score: 0.0,
                verdict: Verdict::Accept,
                headers: Vec::new(),
                remove_headers: Vec::new(),
            });
        }
        let (end, changes) = converse(&session, &envelope, message, &address)?;
        log::log(Level::Info, &said(&end, &changes));
        let verdict = match end {
            End::Accept if changes.quarantine.is_some() => Verdict::Junk,
            End::Accept => Verdict::Accept,
            End::Reject(reply) => Verdict::Reject(reply),
            End::Defer(reply) => Verdict::Defer(reply),
            End::Discard => Verdict::Discard,
        };
        Ok(SpamResult {
            score: 0.0,
            verdict,
            headers: changes.add,
            remove_headers: changes.remove,
        })
    }
}

/// On the virus hook the milter's refusal is the finding: a reject, a quarantine or a
/// discard is `infected` (named by the milter's reply or quarantine reason), a tempfail is
/// `error` (the plugin's `on-error` applies), and a message over `max-size` is `error`,
/// never clean. Header additions are kept with `clean`; the virus hook removes nothing.
impl virus::Guest for MilterPlugin {
    fn scan(session: SessionInfo, envelope: Envelope, message: &Message) -> ScanReport {
        let report = |found| ScanReport {
            found,
            headers: Vec::new(),
        };
        let (address, max_size) = match settings() {
            Ok(settings) => settings,
            Err(why) => return report(ScanResult::Error(why)),
        };
        let size = message.size();
        if size > max_size {
            return report(ScanResult::Error(format!(
                "{size} octets, over max-size ({max_size}): not scanned"
            )));
        }
        let (end, changes) = match converse(&session, &envelope, message, &address) {
            Ok(answer) => answer,
            Err(why) => return report(ScanResult::Error(why)),
        };
        log::log(Level::Info, &said(&end, &changes));
        if !changes.remove.is_empty() {
            log::log(
                Level::Info,
                &format!(
                    "the virus hook removes no header field; {} left in",
                    changes.remove.join(", ")
                ),
            );
        }
        match end {
            End::Accept => match changes.quarantine {
                Some(why) if why.is_empty() => {
                    report(ScanResult::Infected("quarantined by the milter".into()))
                }
                Some(why) => report(ScanResult::Infected(why)),
                None => ScanReport {
                    found: ScanResult::Clean,
                    headers: changes.add,
                },
            },
            End::Reject(reply) => report(ScanResult::Infected(reply.text)),
            End::Discard => report(ScanResult::Infected("discarded by the milter".into())),
            End::Defer(reply) => report(ScanResult::Error(format!(
                "the milter answered {} {}",
                reply.code, reply.text
            ))),
        }
    }
}

export!(MilterPlugin);
