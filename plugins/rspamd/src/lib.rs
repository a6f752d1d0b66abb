//! `rspamd`: asks a real rspamd about every message received on MX, over its HTTP protocol
//! (`POST /checkv2` to the normal worker, port 11333 by default), on a connection the
//! operator granted (`grant-connect`), and maps rspamd's action to a verdict.
//!
//! ```toml
//! [[plugin]]
//! hook = "spam"
//! path = "rspamd.wasm"
//! timeout = "10s"
//! on-error = "defer"               # rspamd down or answering nonsense: 451, nothing lost
//! grant-connect = ["tcp:127.0.0.1:11333"]
//! [plugin.config]
//! address = "tcp:127.0.0.1:11333"
//! add-header = "tag"               # rspamd's `add header` and `rewrite subject`: "tag" or "junk"
//! max-size = 20971520              # octets; a larger message is not sent, and accepted
//! ```
//!
//! | rspamd's action | verdict |
//! |---|---|
//! | `no action` | accept |
//! | `greylist`, `soft reject` | defer, `451 4.7.1` (rspamd's SMTP message when it gives one) |
//! | `add header`, `rewrite subject` | tag (or junk, per `add-header`) |
//! | `reject` | reject, `554 5.7.1` (rspamd's SMTP message when it gives one) |
//! | `discard` | discard |
//! | `quarantine` | junk |
//!
//! The facts go with the message as rspamd's request headers: `IP`, `Hostname` (the
//! forward-confirmed reverse name, else `unknown`), `Helo`, `From`, one `Rcpt` per
//! recipient, `User` (an authenticated account), `Queue-Id` (as in our log and Received:). Every message gets
//! `X-Spam-Status`, `X-Spam-Flag` and `X-Spam-Symbols` (rspamd's score, action and
//! symbols; fields of those names already in the message are removed, so a sender cannot
//! pass off its own), and the header changes of rspamd's `milter_headers` module: the
//! fields it adds, the fields it removes (every field of the name, whatever occurrence
//! rspamd names), and for `rewrite subject` the new `Subject:` in place of the old — trace
//! and authentication fields excepted both ways (the host writes and keeps those). rspamd
//! unreachable, an HTTP error or an answer that does not parse is an `err`, so the
//! plugin's `on-error` applies.

use serde_json::Value;

wit_bindgen::generate!({ path: "../../wit", world: "spam-plugin" });

use exports::portcullis::filter::spam::{Guest, SpamResult};
use plugin_kit::{MAX_HEADERS, header_value, protected, valid_name};
use portcullis::filter::config;
use portcullis::filter::connect::{self, ConnectError};
use portcullis::filter::log::{self, Level};
use portcullis::filter::types::{EnhancedCode, Envelope, Header, Message, Reply, SessionInfo, Verdict};

/// The default `max-size`: larger messages are not worth a spam scan (rspamd's own default
/// limit is 50 MB).
const DEFAULT_MAX_SIZE: u64 = 20 << 20;
/// Octets per write of the message.
const CHUNK: u32 = 256 << 10;
/// The longest answer read from rspamd.
const MAX_ANSWER: usize = 4 << 20;
/// The fields this plugin always writes, in place of any the message came with.
const OURS: [&str; 3] = ["X-Spam-Status", "X-Spam-Flag", "X-Spam-Symbols"];

fn failure(e: ConnectError) -> String {
    match e {
        ConnectError::Denied(why) => format!("not allowed: {why}"),
        ConnectError::Failed(why) => why,
    }
}

/// A request header value: one line, printable.
fn clean(value: &str) -> String {
    value.chars().filter(|c| !c.is_control()).collect()
}

/// The request line and headers for `message` and its facts.
fn request_head(session: &SessionInfo, envelope: &Envelope, size: u64) -> String {
    let mut head = format!(
        "POST /checkv2 HTTP/1.0\r\nContent-Length: {size}\r\nIP: {}\r\n",
        clean(&session.client_ip)
    );
    if let Some(helo) = &session.helo {
        head.push_str(&format!("Helo: {}\r\n", clean(helo)));
    }
    head.push_str(&format!(
        "From: <{}>\r\n",
        clean(envelope.mail_from.as_deref().unwrap_or(""))
    ));
    for rcpt in &envelope.rcpt_to {
        head.push_str(&format!("Rcpt: <{}>\r\n", clean(rcpt)));
    }
    // rspamd reads `unknown` as "no reverse name" (its RDNS_NONE); only a forward-confirmed
    // name is given as the client's host name.
    match (&session.reverse_name, session.reverse_confirmed) {
        (Some(name), true) => head.push_str(&format!("Hostname: {}\r\n", clean(name))),
        _ => head.push_str("Hostname: unknown\r\n"),
    }
    if let Some(id) = &session.queue_id {
        head.push_str(&format!("Queue-Id: {}\r\n", clean(id)));
    }
    if let Some(account) = &session.account {
        head.push_str(&format!("User: {}\r\n", clean(account)));
    }
    head.push_str("\r\n");
    head
}

/// Sends the message and returns rspamd's JSON answer.
fn ask(address: &str, head: &str, message: &Message) -> Result<Value, String> {
    let rspamd = connect::open(address).map_err(|e| format!("rspamd at {address}: {}", failure(e)))?;
    rspamd.write(head.as_bytes()).map_err(failure)?;
    let mut offset = 0u64;
    loop {
        let chunk = message.read(offset, CHUNK);
        if chunk.is_empty() {
            break;
        }
        offset += chunk.len() as u64;
        rspamd.write(&chunk).map_err(failure)?;
    }
    let mut answer = Vec::new();
    loop {
        let got = rspamd.read(64 << 10).map_err(failure)?;
        if got.is_empty() {
            break;
        }
        answer.extend_from_slice(&got);
        if answer.len() > MAX_ANSWER {
            return Err(format!("rspamd's answer is longer than {MAX_ANSWER} octets"));
        }
    }
    let text = String::from_utf8_lossy(&answer);
    let (status_and_headers, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("rspamd answered no HTTP response ({} octets)", answer.len()))?;
    let status = status_and_headers.lines().next().unwrap_or("");
    if !(status.starts_with("HTTP/1.") && status.split(' ').nth(1) == Some("200")) {
        return Err(format!(
            "rspamd answered {:?}: {}",
            clean(status),
            clean(&body.chars().take(200).collect::<String>())
        ));
    }
    serde_json::from_str(body).map_err(|e| format!("rspamd's answer is not JSON: {e}"))
}

fn header(name: &str, value: String) -> Header {
    Header {
        name: name.into(),
        value: header_value(&value),
    }
}

fn reply(code: u16, class: u8, answer: &Value, default: &str) -> Reply {
    let text = answer
        .pointer("/messages/smtp_message")
        .and_then(Value::as_str)
        .map(clean)
        .filter(|t| !t.trim().is_empty())
        .unwrap_or_else(|| default.to_string());
    Reply {
        code,
        enhanced: Some(EnhancedCode {
            class,
            subject: 7,
            detail: 1,
        }),
        text,
    }
}

/// The symbols, strongest first, as `NAME(score)`.
fn symbols(answer: &Value) -> String {
    let mut list: Vec<(String, f64)> = answer
        .get("symbols")
        .and_then(Value::as_object)
        .map(|symbols| {
            symbols
                .iter()
                .map(|(name, s)| {
                    (
                        name.clone(),
                        s.get("score").and_then(Value::as_f64).unwrap_or(0.0),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    list.sort_by(|a, b| b.1.abs().total_cmp(&a.1.abs()).then_with(|| a.0.cmp(&b.0)));
    let text: Vec<String> = list
        .iter()
        .map(|(name, score)| format!("{name}({score:.2})"))
        .collect();
    if text.is_empty() {
        "NONE".into()
    } else {
        text.join(", ")
    }
}

/// The headers rspamd's `milter_headers` asks to add: a value is a string, an object with
/// a `value`, or a list of either.
fn milter_headers(answer: &Value, room: usize, into: &mut Vec<Header>) {
    let Some(add) = answer.pointer("/milter/add_headers").and_then(Value::as_object) else {
        return;
    };
    for (name, spec) in add {
        if protected(name) || !valid_name(name) {
            log::log(
                Level::Info,
                &format!(
                    "rspamd asked to add {:?}: not a field a plugin may add; left out",
                    clean(name)
                ),
            );
            continue;
        }
        let values: Vec<&Value> = match spec {
            Value::Array(list) => list.iter().collect(),
            other => vec![other],
        };
        for v in values {
            let value = match v {
                Value::String(s) => Some(s.as_str()),
                Value::Object(o) => o.get("value").and_then(Value::as_str),
                _ => None,
            };
            if let Some(value) = value {
                if into.len() >= room {
                    log::log(
                        Level::Warn,
                        &format!("more headers than a verdict may add; {name} left out"),
                    );
                    return;
                }
                into.push(header(name, value.to_string()));
            }
        }
    }
}

/// The fields rspamd's `milter_headers` asks to remove (a name and which occurrence: all
/// of them are removed, the contract removes by name), protected ones excepted, up to the
/// host's limit.
fn milter_removals(answer: &Value, into: &mut Vec<String>) {
    let Some(remove) = answer
        .pointer("/milter/remove_headers")
        .and_then(Value::as_object)
    else {
        return;
    };
    for name in remove.keys() {
        if into.iter().any(|n| n.eq_ignore_ascii_case(name)) {
            continue;
        }
        if protected(name) || !valid_name(name) {
            log::log(
                Level::Info,
                &format!(
                    "rspamd asked to remove {:?}: the host keeps those; left in",
                    clean(name)
                ),
            );
        } else if into.len() >= MAX_HEADERS {
            log::log(
                Level::Warn,
                &format!("more removals than a verdict may ask; {name} left in"),
            );
            return;
        } else {
            into.push(name.clone());
        }
    }
}

struct Rspamd;

impl Guest for Rspamd {
    fn classify(session: SessionInfo, envelope: Envelope, message: &Message) -> Result<SpamResult, String> {
        let address =
            config::get("address").ok_or("no address in [plugin.config] (such as tcp:127.0.0.1:11333)")?;
        let junk_on_add_header = match config::get("add-header").as_deref() {
            None | Some("tag") => false,
            Some("junk") => true,
            Some(other) => return Err(format!("add-header is {other:?}: \"tag\" or \"junk\"")),
        };
        let max_size = config::get("max-size")
            .and_then(|v| v.parse().ok())
            .unwrap_or(DEFAULT_MAX_SIZE);
        let size = message.size();
        if size > max_size {
            log::log(
                Level::Info,
                &format!("{size} octets, over max-size ({max_size}): not asked"),
            );
            return Ok(SpamResult {
                score: 0.0,
                verdict: Verdict::Accept,
                headers: vec![header(
                    "X-Spam-Status",
                    format!("Unknown, not scanned ({size} octets)"),
                )],
                remove_headers: vec!["X-Spam-Status".into()],
            });
        }
        let answer = ask(&address, &request_head(&session, &envelope, size), message)?;
        let action = answer
            .get("action")
            .and_then(Value::as_str)
            .ok_or("rspamd's answer has no action")?;
        let score = answer.get("score").and_then(Value::as_f64).unwrap_or(0.0);
        let required = answer
            .get("required_score")
            .and_then(Value::as_f64)
            .unwrap_or(0.0);
        let verdict = match action {
            "no action" => Verdict::Accept,
            "greylist" | "soft reject" => Verdict::Defer(reply(451, 4, &answer, "Try again later")),
            "add header" | "rewrite subject" if junk_on_add_header => Verdict::Junk,
            "add header" | "rewrite subject" => Verdict::Accept,
            "reject" => Verdict::Reject(reply(554, 5, &answer, "Message refused as spam")),
            "discard" => Verdict::Discard,
            "quarantine" => Verdict::Junk,
            other => {
                return Err(format!(
                    "rspamd answered an action this plugin does not know: {other:?}"
                ));
            }
        };
        let spam = !matches!(action, "no action" | "greylist");
        let mut headers = vec![
            header(
                "X-Spam-Status",
                format!(
                    "{}, score={score:.2} required={required:.2} action={action}",
                    if spam { "Yes" } else { "No" }
                ),
            ),
            header("X-Spam-Flag", if spam { "YES" } else { "NO" }.into()),
            header("X-Spam-Symbols", symbols(&answer)),
        ];
        let mut remove: Vec<String> = OURS.iter().map(|name| name.to_string()).collect();
        if action == "rewrite subject"
            && let Some(subject) = answer.get("subject").and_then(Value::as_str)
        {
            headers.push(header("Subject", clean(subject)));
            remove.push("Subject".into());
        }
        milter_headers(&answer, MAX_HEADERS, &mut headers);
        milter_removals(&answer, &mut remove);
        log::log(
            Level::Info,
            &format!("rspamd: {action}, score {score:.2} of {required:.2}"),
        );
        Ok(SpamResult {
            score,
            verdict,
            headers,
            remove_headers: remove,
        })
    }
}

export!(Rspamd);
