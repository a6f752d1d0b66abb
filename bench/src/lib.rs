//! Shared pieces of the benchmarks: sample messages and sessions.
//!
//! # Layout
//!
//! - `benches/hooks.rs` (criterion): one hook call, instantiation included, per example
//!   plugin.
//! - `src/throughput.rs` (binary): the release daemon's messages per second on the MX and
//!   submission paths, with the four example plugins on and off, side by side in one run.
//! - `src/compare/` (binary): Portcullis side by side with Postfix (installed from
//!   Debian's packages when missing), loaded by `smtp-source`; latency, CPU, memory, the
//!   disk's fsync rate, group commit versus per-message fsync, submission, idle memory.
//! - `src/hookload.rs` (binary): hook calls under concurrency, without sockets or disk.
//! - [`server`]: starting a release daemon for a benchmark and talking SMTP to it.

pub mod server;

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use portcullis_runtime::builtin::BUILD_DIR;
use portcullis_runtime::{Hook, OnError, PluginSpec};

use portcullis_smtp::envelope::{MailParams, Recipient};
use portcullis_smtp::session::{Greeting, PipelineKind, Security, SessionInfo};
use portcullis_smtp::{Envelope, Mailbox, Message};

/// A plausible message of about `size` bytes (headers, a text body, CRLF lines).
pub fn sample_message(size: usize, n: usize) -> String {
    let mut text = format!(
        "From: Bob <bob@far.example>\r\nTo: alice@example.org\r\nSubject: Quarterly report {n}\r\n\
         Date: Sat, 28 Nov 2026 10:00:00 +0000\r\nMessage-ID: <{n}.bench@far.example>\r\n\
         MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
    );
    let line = "The quick brown fox jumps over the lazy dog, and the report is attached below.\r\n";
    while text.len() < size {
        text.push_str(line);
    }
    text
}

/// A MIME message of about `size` octets that needs decoding: a quoted-printable text part
/// in ISO-8859-1, an HTML alternative, and a base64 attachment taking most of the size.
pub fn mime_message(size: usize, n: usize) -> String {
    let mut text = format!(
        "From: Bob <bob@far.example>\r\nTo: alice@example.org\r\nSubject: =?UTF-8?Q?Quarterly_r=C3=A9port?= {n}\r\n\
         Date: Sat, 28 Nov 2026 10:00:00 +0000\r\nMessage-ID: <{n}.mime@far.example>\r\n\
         MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"outer\"\r\n\r\n\
         --outer\r\nContent-Type: multipart/alternative; boundary=\"inner\"\r\n\r\n\
         --inner\r\nContent-Type: text/plain; charset=ISO-8859-1\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
    );
    let line =
        "The quick brown fox jumps over the lazy dog; le r=E9sum=E9 est ci-joint, voir ci-dessous.\r\n";
    for _ in 0..20 {
        text.push_str(line);
    }
    text.push_str("\r\n--inner\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>The quarterly report is attached.</p>\r\n--inner--\r\n");
    text.push_str(
        "--outer\r\nContent-Type: application/pdf; name=\"report.pdf\"\r\n\
         Content-Disposition: attachment; filename=\"report.pdf\"\r\nContent-Transfer-Encoding: base64\r\n\r\n",
    );
    let encoded = "JVBERi0xLjQKJcfsj6IKNSAwIG9iago8PC9MZW5ndGggNiAwIFIvRmlsdGVyIC9GbGF0ZURlY29k\r\n";
    while text.len() + 12 < size {
        text.push_str(encoded);
    }
    text.push_str("--outer--\r\n");
    text
}

/// A received message of `content` as the hooks see it.
pub fn message_of(content: String) -> Arc<Message> {
    let message = message(0);
    Arc::new(Message::new(
        message.envelope.clone(),
        portcullis_smtp::Content::from_bytes(content.into_bytes()),
    ))
}

/// A received message as the hooks see it.
pub fn message(size: usize) -> Arc<Message> {
    Arc::new(Message::new(
        Envelope {
            mail_from: Some(Mailbox {
                local: "bob".into(),
                domain: "far.example".into(),
            }),
            params: MailParams::default(),
            recipients: vec![Recipient {
                mailbox: Mailbox {
                    local: "alice".into(),
                    domain: "example.org".into(),
                },
                params: Default::default(),
                local: true,
                deliver_to: None,
                alias: None,
                sender: None,
                reports_expansion: false,
            }],
        },
        portcullis_smtp::Content::from_bytes(sample_message(size, 1).into_bytes()),
    ))
}

/// A session of `pipeline`, authenticated on submission.
pub fn session(pipeline: PipelineKind) -> SessionInfo {
    SessionInfo {
        greeting: Some(Greeting::Ehlo("client.example".into())),
        security: Security {
            tls: None,
            account: (pipeline == PipelineKind::Submission).then(|| "alice@example.org".to_string()),
            mechanism: None,
        },
        ..SessionInfo::new(pipeline, IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)))
    }
}

/// A spec for one of the plugins the build script built, with the daemon's defaults.
pub fn spec(file: &str, hook: Hook, config: serde_json::Map<String, serde_json::Value>) -> Arc<PluginSpec> {
    Arc::new(PluginSpec {
        name: file.into(),
        hook,
        // A bare name is one of the plugins built with the host; a path is taken as it is.
        path: if file.contains('/') {
            PathBuf::from(file)
        } else {
            PathBuf::from(BUILD_DIR).join(file)
        },
        timeout: Duration::from_secs(5),
        memory: 128 << 20,
        on_error: OnError::Defer,
        config,
        grant_dir: None,
        grants: Default::default(),
        cache: None,
    })
}

/// The harnesses' command line as `--flag value` pairs. `--help`, `-h` or anything else
/// that is not a `--flag` ends the program there ([`unknown_option`]).
pub fn options(usage: &str) -> Vec<(String, String)> {
    let mut pairs = Vec::new();
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if !flag.starts_with("--") || flag == "--help" {
            unknown_option(&flag, usage);
        }
        pairs.push((flag, it.next().unwrap_or_default()));
    }
    pairs
}

/// A flag no harness knows. `--help` (or `-h`) prints `usage` and exits with 0; anything
/// else is reported with it, exit code 2.
pub fn unknown_option(flag: &str, usage: &str) -> ! {
    if flag == "--help" || flag == "-h" {
        println!("{usage}");
        std::process::exit(0);
    }
    eprintln!("unknown option {flag}\n\n{usage}");
    std::process::exit(2);
}
