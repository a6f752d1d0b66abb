//! A spam plugin that misbehaves on purpose, for the runtime's tests. Its config picks how:
//! `mode = "loop" | "memory" | "trap" | "stack" | "oversized" | "escape" | "read-granted" | "fine"`.

wit_bindgen::generate!({ path: "../../../wit", world: "spam-plugin" });

use exports::portcullis::filter::spam::{Guest, SpamResult};
use portcullis::filter::types::{Envelope, Header, Message, SessionInfo, Verdict};

/// Recursion that lives in wasm locals (not Rust's shadow stack in linear memory), so it
/// exhausts the engine's native stack limit.
#[inline(never)]
fn recurse(depth: u64) -> u64 {
    if depth == u64::MAX {
        return 0;
    }
    std::hint::black_box(recurse(std::hint::black_box(depth + 1))).wrapping_add(depth)
}

struct Hostile;

impl Guest for Hostile {
    fn classify(_session: SessionInfo, _envelope: Envelope, _message: &Message) -> SpamResult {
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
                let _ = std::hint::black_box(recurse(0));
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
        SpamResult {
            score: 0.0,
            verdict: Verdict::Accept,
            headers,
        }
    }
}

export!(Hostile);
