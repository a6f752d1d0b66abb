//! A spam plugin that misbehaves on purpose, for the runtime's tests. Its config picks how:
//! `mode = "loop" | "memory" | "trap" | "stack" | "oversized" | "escape" | "read-granted" |
//! "lookups" | "connect" | "hold" | "facts" | "fine"`; the capability modes take `name` (a DNS name)
//! or `endpoint` (as in `grant-connect`).

wit_bindgen::generate!({ path: "../../../wit", world: "spam-plugin" });

use exports::portcullis::filter::spam::{Guest, SpamResult};
use portcullis::filter::types::{AuthMethod, AuthStatus, Envelope, Header, Message, SessionInfo, Verdict};
use portcullis::filter::{connect, dns};

/// Recursion that lives in wasm locals (not Rust's shadow stack in linear memory), so it
/// exhausts the engine's native stack limit. Nothing here takes an address (`black_box`
/// would put the value in linear memory), and the multiply-then-add after the call keeps it
/// from becoming a loop.
#[inline(never)]
fn recurse(depth: u64) -> u64 {
    if depth == u64::MAX {
        return 0;
    }
    recurse(depth + 1).wrapping_mul(31).wrapping_add(depth)
}

struct Hostile;

fn facts(session: &SessionInfo, envelope: &Envelope) -> Vec<Header> {
    use portcullis::filter::types::ListenerKind;
    let kind = match session.listener.kind {
        ListenerKind::Mx => "mx",
        ListenerKind::Submission => "submission",
        ListenerKind::Submissions => "submissions",
    };
    let mail = &envelope.mail_parameters;
    let shown = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let rcpt = envelope
        .rcpt_parameters
        .iter()
        .map(|r| format!("notify={} orcpt={}", r.notify.join(","), shown(&r.orcpt)))
        .collect::<Vec<_>>()
        .join("; ");
    let header = |name: &str, value: String| Header {
        name: name.into(),
        value,
    };
    vec![
        header("X-Facts-Client-Port", session.client_port.to_string()),
        header("X-Facts-Listener", format!("{kind} {}", session.listener.address)),
        header(
            "X-Facts-Mail",
            format!(
                "size={} body={} smtputf8={} ret={} envid={}",
                mail.size.map_or_else(|| "-".into(), |s| s.to_string()),
                mail.body,
                mail.smtputf8,
                shown(&mail.ret),
                shown(&mail.envid)
            ),
        ),
        header("X-Facts-Rcpt", rcpt),
        header("X-Facts-Mechanism", shown(&session.auth_mechanism)),
        header(
            "X-Facts-Tls",
            session.tls.as_ref().map_or_else(
                || "-".into(),
                |t| format!("{} peer={}", t.protocol, shown(&t.peer_subject)),
            ),
        ),
        header(
            "X-Facts-Auth",
            session
                .authentication
                .iter()
                .map(|r| format!("{}={}/{}", method(r.method), status(r.status), shown(&r.domain)))
                .collect::<Vec<_>>()
                .join(" "),
        ),
        header("X-Facts-Queue-Id", shown(&session.queue_id)),
        header(
            "X-Facts-Earlier",
            session
                .earlier
                .iter()
                .map(|v| {
                    let score = v.score.map_or_else(|| "-".into(), |s| format!("{s:.1}"));
                    format!(
                        "{}:{}={}/{score}/failed={}",
                        v.hook, v.plugin, v.verdict, v.failed
                    )
                })
                .collect::<Vec<_>>()
                .join(" "),
        ),
        header(
            "X-Facts-Reverse",
            format!(
                "{} confirmed={}",
                shown(&session.reverse_name),
                session.reverse_confirmed
            ),
        ),
    ]
}

fn method(m: AuthMethod) -> &'static str {
    match m {
        AuthMethod::Iprev => "iprev",
        AuthMethod::Spf => "spf",
        AuthMethod::Dkim => "dkim",
        AuthMethod::Arc => "arc",
        AuthMethod::Dmarc => "dmarc",
    }
}

fn status(s: AuthStatus) -> &'static str {
    match s {
        AuthStatus::Pass => "pass",
        AuthStatus::Fail => "fail",
        AuthStatus::Softfail => "softfail",
        AuthStatus::Neutral => "neutral",
        AuthStatus::None => "none",
        AuthStatus::Policy => "policy",
        AuthStatus::Temperror => "temperror",
        AuthStatus::Permerror => "permerror",
    }
}

impl Guest for Hostile {
    fn classify(session: SessionInfo, envelope: Envelope, _message: &Message) -> Result<SpamResult, String> {
        let mode = portcullis::filter::config::get("mode").unwrap_or_default();
        let headers = match mode.as_str() {
            "loop" => {
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            "memory" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "trap" => panic!("this plugin traps on purpose"),
            "stack" => {
                let seed = portcullis::filter::clock::now() & 1;
                let _ = std::hint::black_box(recurse(seed));
                Vec::new()
            }
            // Tries to leave the sandbox; reports what happened instead of failing.
            "escape" => {
                let fs = match std::fs::read("/etc/passwd") {
                    Ok(_) => "read".to_string(),
                    Err(e) => format!("denied ({e})"),
                };
                let net = match std::net::TcpStream::connect("127.0.0.1:25") {
                    Ok(_) => "connected".to_string(),
                    Err(e) => format!("denied ({e})"),
                };
                let env = std::env::vars().count();
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(u64::MAX);
                vec![
                    Header {
                        name: "X-Escape-Fs".into(),
                        value: fs,
                    },
                    Header {
                        name: "X-Escape-Net".into(),
                        value: net,
                    },
                    Header {
                        name: "X-Escape-Env".into(),
                        value: env.to_string(),
                    },
                    Header {
                        name: "X-Escape-Clock".into(),
                        value: now.to_string(),
                    },
                ]
            }
            // Reads a file from the directory the operator granted (seen as /data).
            "read-granted" => {
                let text =
                    std::fs::read_to_string("/data/hello.txt").unwrap_or_else(|e| format!("error: {e}"));
                vec![Header {
                    name: "X-Granted".into(),
                    value: text.trim().to_string(),
                }]
            }
            // A thousand lookups: how many were answered, and what stopped the rest.
            "lookups" => {
                let name = portcullis::filter::config::get("name").unwrap_or_else(|| "example.test".into());
                let mut answered = 0;
                let mut stopped = "not stopped".to_string();
                for _ in 0..1000 {
                    match dns::lookup(&name, dns::RecordType::A) {
                        Ok(_) | Err(dns::LookupError::Nxdomain) => answered += 1,
                        Err(dns::LookupError::Failed(why)) => stopped = format!("failed: {why}"),
                        Err(dns::LookupError::Denied(why)) => {
                            stopped = format!("denied: {why}");
                            break;
                        }
                    }
                }
                vec![
                    Header {
                        name: "X-Lookups".into(),
                        value: answered.to_string(),
                    },
                    Header {
                        name: "X-Lookups-Stopped".into(),
                        value: stopped,
                    },
                ]
            }
            // Connects, writes a line and reads the answer; reports what happened.
            "connect" => {
                let endpoint = portcullis::filter::config::get("endpoint").unwrap_or_default();
                let outcome = match connect::open(&endpoint) {
                    Ok(connection) => match connection.write(b"PING\r\n").and_then(|()| connection.read(100))
                    {
                        Ok(answer) => format!("answered {}", String::from_utf8_lossy(&answer).trim()),
                        Err(e) => format!("{e:?}"),
                    },
                    Err(e) => format!("{e:?}"),
                };
                vec![Header {
                    name: "X-Connect".into(),
                    value: outcome,
                }]
            }
            // Opens a connection and then never reads from it, nor returns.
            "hold" => {
                let endpoint = portcullis::filter::config::get("endpoint").unwrap_or_default();
                let _held = connect::open(&endpoint);
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            // Reports the facts of contract 0.2.0 (not hostile: it only tells).
            "facts" => facts(&session, &envelope),
            // 100 headers of 100 KB each: far past what the host accepts.
            "oversized" => (0..100)
                .map(|i| Header {
                    name: format!("X-Flood-{i}"),
                    value: "x".repeat(100_000),
                })
                .collect(),
            _ => vec![Header {
                name: "X-Hostile".into(),
                value: "behaved".into(),
            }],
        };
        // Asks to remove the client's trace: the host must refuse the result.
        let remove_headers = match mode.as_str() {
            "remove-trace" => vec!["X-Anything".into(), "Received".into()],
            _ => Vec::new(),
        };
        Ok(SpamResult {
            score: 0.0,
            verdict: Verdict::Accept,
            headers,
            remove_headers,
        })
    }
}

export!(Hostile);
