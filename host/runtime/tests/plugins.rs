//! The runtime against real components: the four example plugins and a hostile one, built
//! from `plugins/` by the build script.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use portcullis_runtime::bindings::rate::exports::portcullis::filter::rate::{Counters, Usage, Window};
use portcullis_runtime::builtin::BUILD_DIR;
use portcullis_runtime::{Hook, OnError, PluginError, PluginSpec, Runtime, RuntimeConfig, ScanOutcome};
use portcullis_smtp::envelope::{MailParams, Recipient};
use portcullis_smtp::session::{AuthOutcome, Credentials, Greeting, PipelineKind, Security, SessionInfo};
use portcullis_smtp::{Envelope, Mailbox, Message, Verdict};

fn runtime(cache: Option<PathBuf>) -> Runtime {
    Runtime::new(&RuntimeConfig {
        max_memory: 256 << 20,
        instances: 16,
        cache_dir: cache,
    })
    .expect("runtime")
}

fn spec(file: &str, hook: Hook, config: serde_json::Value) -> Arc<PluginSpec> {
    let serde_json::Value::Object(config) = config else {
        panic!("config must be an object");
    };
    Arc::new(PluginSpec {
        name: file.trim_end_matches(".wasm").into(),
        hook,
        path: PathBuf::from(BUILD_DIR).join(file),
        timeout: Duration::from_millis(500),
        memory: 64 << 20,
        on_error: OnError::Defer,
        config,
        grant_dir: None,
        grants: Default::default(),
        cache: None,
    })
}

fn session(pipeline: PipelineKind) -> SessionInfo {
    SessionInfo {
        greeting: Some(Greeting::Ehlo("client.example".into())),
        security: Security {
            tls: None,
            account: (pipeline == PipelineKind::Submission).then(|| "alice@example.org".to_string()),
            mechanism: None,
        },
        ..SessionInfo::new(pipeline, IpAddr::V4(Ipv4Addr::new(192, 0, 2, 9)))
    }
}

fn message(body: &str) -> Arc<Message> {
    Arc::new(message_with(portcullis_smtp::Content::from_bytes(
        body.replace('\n', "\r\n").into_bytes(),
    )))
}

fn message_with(body: portcullis_smtp::Content) -> Message {
    Message::new(
        Envelope {
            mail_from: Some(Mailbox {
                local: "sender".into(),
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
        body,
    )
}

const EICAR: &str = concat!(
    r"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-",
    r"ANTIVIRUS-TEST-FILE!$H+H*"
);

fn eicar_attachment() -> String {
    let encoded = base64::engine::general_purpose::STANDARD.encode(EICAR);
    format!(
        "From: a@far.example\nTo: alice@example.org\nSubject: invoice\nMIME-Version: 1.0\n\
         Content-Type: multipart/mixed; boundary=\"b1\"\n\n--b1\nContent-Type: text/plain\n\nSee attached.\n\
         --b1\nContent-Type: application/octet-stream; name=\"invoice.com\"\nContent-Transfer-Encoding: base64\n\n{encoded}\n--b1--\n"
    )
}

#[tokio::test]
async fn virus_signatures_finds_eicar_in_a_base64_attachment_and_configured_signatures() {
    let rt = runtime(None);
    let config = serde_json::json!({ "signatures": [{ "name": "Test-Hex", "hex": "deadbeef" }, { "name": "Test-Text", "text": "evil macro" }] });
    let plugin = rt
        .load(spec("virus_signatures.wasm", Hook::Virus, config))
        .expect("load");
    let mx = session(PipelineKind::Mx);
    let infected = rt
        .virus(&plugin, &mx, &message(&eicar_attachment()))
        .await
        .expect("scan");
    assert_eq!(infected, ScanOutcome::Infected("Eicar-Test-Signature".into()));
    let qp = "Subject: x\nContent-Type: text/plain\nContent-Transfer-Encoding: quoted-printable\n\nrun the evil=\n macro now\n";
    let found = rt.virus(&plugin, &mx, &message(qp)).await.expect("scan");
    assert_eq!(found, ScanOutcome::Infected("Test-Text".into()));
    let clean = rt
        .virus(&plugin, &mx, &message("Subject: hi\n\nhello\n"))
        .await
        .expect("scan");
    assert_eq!(clean, ScanOutcome::Clean(Vec::new()));
    // Plain text needs no decoding: the raw search finds it.
    let plain = "Subject: x\nContent-Type: text/plain; charset=utf-8\n\nplease run the evil macro\n";
    let found = rt.virus(&plugin, &mx, &message(plain)).await.expect("scan");
    assert_eq!(found, ScanOutcome::Infected("Test-Text".into()));
    // A text part in UTF-16 hides the signature from the raw search; the declared charset
    // makes the plugin decode it.
    let utf16: String = "evil macro".chars().flat_map(|c| [c, '\0']).collect();
    let hidden = format!("Subject: x\nContent-Type: text/plain; charset=\"UTF-16LE\"\n\n{utf16}\n");
    let found = rt.virus(&plugin, &mx, &message(&hidden)).await.expect("scan");
    assert_eq!(found, ScanOutcome::Infected("Test-Text".into()));
    let clean16: String = "good macro".chars().flat_map(|c| [c, '\0']).collect();
    let clean16 = format!("Subject: x\nContent-Type: text/plain; charset=utf-16le\n\n{clean16}\n");
    let clean = rt.virus(&plugin, &mx, &message(&clean16)).await.expect("scan");
    assert_eq!(clean, ScanOutcome::Clean(Vec::new()));
}

/// The raw message is searched for all signatures at once, sixteen bytes a step in Wasm: a
/// signature is found at every offset within a step and at the very end, byte for byte
/// (another case is not a match); an encoding named in any case still makes it decode.
#[tokio::test]
async fn virus_signatures_finds_a_signature_wherever_it_starts() {
    let rt = runtime(None);
    let config = serde_json::json!({ "signatures": [{ "name": "Test-Text", "text": "evil macro" }] });
    let plugin = rt
        .load(spec("virus_signatures.wasm", Hook::Virus, config))
        .expect("load");
    let mx = session(PipelineKind::Mx);
    for offset in 0..17 {
        let pad = "x".repeat(offset);
        for (body, expected) in [
            (format!("{pad}{EICAR}"), Some("Eicar-Test-Signature")),
            (format!("{pad}evil macro\n"), Some("Test-Text")),
            (format!("{pad}EVIL MACRO\n"), None),
            (format!("{pad}evil macr\n"), None),
        ] {
            let text = format!("Subject: x\nContent-Type: text/plain; charset=utf-8\n\n{body}");
            let outcome = rt.virus(&plugin, &mx, &message(&text)).await.expect("scan");
            let expected = match expected {
                Some(name) => ScanOutcome::Infected(name.into()),
                None => ScanOutcome::Clean(Vec::new()),
            };
            assert_eq!(outcome, expected, "{body:?}");
        }
    }
    let qp = "Subject: x\nCONTENT-TRANSFER-ENCODING: Quoted-Printable\n\nrun the evil=\n macro now\n";
    let found = rt.virus(&plugin, &mx, &message(qp)).await.expect("scan");
    assert_eq!(found, ScanOutcome::Infected("Test-Text".into()));
}

/// `inner` wrapped in `levels` message/rfc822 parts.
/// Spill files in a temporary directory, content at offset 63 as in the spool.
#[derive(Debug)]
struct TempSpill(tempfile::TempDir);

impl portcullis_smtp::content::SpillSource for TempSpill {
    fn open(&self) -> std::io::Result<portcullis_smtp::content::SpillFile> {
        let file = tempfile::NamedTempFile::new_in(self.0.path())?;
        let (file, path) = file.keep().map_err(|e| e.error)?;
        Ok(portcullis_smtp::content::SpillFile::new(file, path, 63))
    }
}

#[tokio::test]
async fn a_plugin_reads_a_large_message_from_its_file_as_from_memory() {
    let rt = runtime(None);
    let plugin = rt
        .load(spec("virus_signatures.wasm", Hook::Virus, serde_json::json!({})))
        .expect("load");
    let storage = portcullis_smtp::content::Storage {
        budget: None,
        spill: Some(Arc::new(TempSpill(tempfile::tempdir().unwrap()))),
        room: None,
    };
    // EICAR after 3 MiB of text: far past the 64 KiB kept in memory.
    let padding = "All work and no play makes a long report.\n".repeat(75_000);
    let text = eicar_attachment()
        .replace("See attached.\n", &padding)
        .replace('\n', "\r\n");
    let mut content = storage.content(64 * 1024).unwrap();
    for piece in text.as_bytes().chunks(8192) {
        content.push(piece);
    }
    content.finish().unwrap();
    assert!(content.spilled().is_some());
    let found = rt
        .virus(
            &plugin,
            &session(PipelineKind::Mx),
            &Arc::new(message_with(content)),
        )
        .await
        .expect("scan");
    assert_eq!(found, ScanOutcome::Infected("Eicar-Test-Signature".into()));
}

/// The content filters are built for wasm32-unknown-unknown with an arena that never
/// reuses what is freed out of order (plugins/kit/src/arena.rs): on the largest message the
/// server accepts by default (25 MiB), decoded and parsed, both must still answer within
/// the memory a plugin gets by default (128 MiB).
#[tokio::test]
async fn the_content_filters_take_the_largest_default_message_within_the_default_memory() {
    use base64::Engine;
    let rt = runtime(None);
    let load = |file: &str, hook: Hook| {
        let mut spec = (*spec(file, hook, serde_json::json!({}))).clone();
        spec.memory = 128 << 20;
        spec.timeout = Duration::from_secs(20);
        rt.load(Arc::new(spec)).expect("load")
    };
    let (virus, spam) = (
        load("virus_signatures.wasm", Hook::Virus),
        load("spam_rules.wasm", Hook::Spam),
    );
    // 16 MiB of binary attachment (EICAR at its very end), and 3 MiB of quoted-printable
    // text saying "click here" now and then: over 24 MiB once encoded.
    let mut binary: Vec<u8> = (0..16u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    binary.extend_from_slice(EICAR.as_bytes());
    let encoded = base64::engine::general_purpose::STANDARD.encode(&binary);
    let lines: Vec<&str> = encoded
        .as_bytes()
        .chunks(76)
        .map(|line| std::str::from_utf8(line).unwrap())
        .collect();
    let text = "Dear customer, please click here to see the offer =E2=82=AC.=\nSee you.\n".repeat(40_000);
    let body = format!(
        "From: a@far.example\nTo: alice@example.org\nSubject: big\nMIME-Version: 1.0\n\
         Content-Type: multipart/mixed; boundary=\"b1\"\n\n--b1\nContent-Type: text/plain; charset=utf-8\n\
         Content-Transfer-Encoding: quoted-printable\n\n{text}\n--b1\nContent-Type: application/octet-stream\n\
         Content-Transfer-Encoding: base64\n\n{}\n--b1--\n",
        lines.join("\n")
    );
    assert!(body.len() > 24 << 20 && body.len() < 25 << 20, "{}", body.len());
    let big = message(&body);
    let mx = session(PipelineKind::Mx);
    let found = rt.virus(&virus, &mx, &big).await.expect("scan");
    assert_eq!(found, ScanOutcome::Infected("Eicar-Test-Signature".into()));
    let scored = rt.spam(&spam, &mx, &big).await.expect("classify");
    assert!(scored.score > 0.0, "{scored:?}");
}

fn nested(inner: &str, levels: usize) -> String {
    (0..levels).fold(inner.to_string(), |message, level| {
        format!(
            "From: a@far.example\nSubject: forward {level}\nMIME-Version: 1.0\n\
             Content-Type: multipart/mixed; boundary=\"n{level}\"\n\n--n{level}\nContent-Type: text/plain\n\nSee below.\n\
             --n{level}\nContent-Type: message/rfc822\n\n{message}\n--n{level}--\n"
        )
    })
}

#[tokio::test]
async fn virus_signatures_never_calls_what_it_cannot_scan_clean() {
    let rt = runtime(None);
    let plugin = rt
        .load(spec(
            "virus_signatures.wasm",
            Hook::Virus,
            serde_json::json!({ "max-size": 100_000 }),
        ))
        .expect("load");
    let mx = session(PipelineKind::Mx);
    // Within the depth followed, EICAR is found however deep.
    let seven = rt
        .virus(&plugin, &mx, &message(&nested(&eicar_attachment(), 7)))
        .await
        .expect("scan");
    assert_eq!(seven, ScanOutcome::Infected("Eicar-Test-Signature".into()));
    // Beyond it: unscannable, which is refused, never clean.
    let nine = rt
        .virus(&plugin, &mx, &message(&nested(&eicar_attachment(), 9)))
        .await
        .expect("scan");
    assert_eq!(nine, ScanOutcome::Infected("Unscannable.NestedTooDeep".into()));
    let harmless = nested("Subject: hi\nContent-Transfer-Encoding: base64\n\naGVsbG8=\n", 9);
    let deep = rt.virus(&plugin, &mx, &message(&harmless)).await.expect("scan");
    assert_eq!(deep, ScanOutcome::Infected("Unscannable.NestedTooDeep".into()));
    // Larger than max-size: an error, so that the plugin's on-error policy decides.
    let large = format!("Subject: big\n\n{}\n", "x".repeat(200_000));
    let failed = rt.virus(&plugin, &mx, &message(&large)).await;
    assert!(
        matches!(&failed, Err(portcullis_runtime::PluginError::Failed(why)) if why.contains("max-size")),
        "{failed:?}"
    );
}

#[tokio::test]
async fn spam_rules_tags_clean_mail_and_junks_spam() {
    let rt = runtime(None);
    let plugin = rt
        .load(spec(
            "spam_rules.wasm",
            Hook::Spam,
            serde_json::json!({ "tag-threshold": 3.0, "junk-threshold": 6.0 }),
        ))
        .expect("load");
    let mx = session(PipelineKind::Mx);
    let clean = "From: Bob <bob@far.example>\nTo: alice@example.org\nSubject: Lunch tomorrow?\nDate: Sat, 28 Nov 2026 10:00:00 +0000\nMessage-ID: <1@far.example>\n\nShall we meet at noon?\n";
    let outcome = rt.spam(&plugin, &mx, &message(clean)).await.expect("classify");
    // Its fields replace any the message came with.
    assert_eq!(
        outcome.remove,
        ["X-Spam-Score", "X-Spam-Status", "X-Spam-Flag"],
        "{outcome:?}"
    );
    let Verdict::Tag(headers) = outcome.verdict else {
        panic!("clean mail is accepted with headers: {outcome:?}");
    };
    assert!(
        headers
            .iter()
            .any(|h| h.name == "X-Spam-Status" && h.value.starts_with("No"))
    );
    let spam = "To: alice@example.org\nSubject: YOU HAVE WON THE LOTTERY!!!\n\nCLICK HERE TO CLAIM YOUR VIAGRA PRIZE NOW, 100% FREE, ACT NOW BEFORE IT IS TOO LATE FOR YOU\n";
    let outcome = rt.spam(&plugin, &mx, &message(spam)).await.expect("classify");
    let Verdict::Junk(headers) = &outcome.verdict else {
        panic!("spam goes to Junk: {outcome:?}");
    };
    assert!(outcome.score >= 6.0);
    assert!(
        headers
            .iter()
            .any(|h| h.name == "X-Spam-Flag" && h.value == "YES")
    );
}

#[tokio::test]
async fn spam_rules_counts_capitals_and_links() {
    let rt = runtime(None);
    let plugin = rt
        .load(spec("spam_rules.wasm", Hook::Spam, serde_json::json!({})))
        .expect("load");
    let mx = session(PipelineKind::Mx);
    let tests = async |body: &str| {
        let text = format!(
            "From: Bob <bob@far.example>\nTo: alice@example.org\nSubject: Notes\nDate: Sat, 28 Nov 2026 10:00:00 +0000\nMessage-ID: <2@far.example>\n\n{body}\n"
        );
        let outcome = rt.spam(&plugin, &mx, &message(&text)).await.expect("classify");
        let Verdict::Tag(headers) = outcome.verdict else {
            panic!("tagged: {outcome:?}");
        };
        headers
            .into_iter()
            .find(|h| h.name == "X-Spam-Status")
            .expect("status")
            .value
    };
    // Eleven links ("HTTP://" in capitals is not one) and mostly capitals: both rules hit.
    // Ten links and the same words in small letters: neither does.
    let words = "PLEASE READ THESE NOTES BEFORE THE MEETING ON MONDAY MORNING ".repeat(3);
    for (words, last_links, hit) in [
        (words.clone(), "http://C/ HTTP://D/", true),
        (words.to_lowercase(), "HTTP://D/", false),
    ] {
        let body = format!("{words} {}{last_links}", "http://A/ https://B/ ".repeat(5));
        let status = tests(&body).await;
        assert_eq!(status.contains("BODY_SHOUTING"), hit, "{status}");
        assert_eq!(status.contains("MANY_URLS"), hit, "{status}");
    }
}

/// All phrases are searched for in one pass over the body, sixteen bytes a step in Wasm:
/// each is found in any case, at every offset within a step and at the very end, and a near
/// miss is not a hit.
#[tokio::test]
async fn spam_rules_finds_a_phrase_wherever_it_starts_in_any_case() {
    let rt = runtime(None);
    let config = serde_json::json!({ "rules": [
        { "name": "CUSTOM_DROPSHIP", "in": "body", "contains": "Drop-Ship", "score": 0.1 }
    ] });
    let plugin = rt
        .load(spec("spam_rules.wasm", Hook::Spam, config))
        .expect("load");
    let mx = session(PipelineKind::Mx);
    let phrases = [
        ("PHRASE_VIAGRA", "ViAgRa"),
        ("PHRASE_YOU_HAVE_WON", "you HAVE won"),
        ("PHRASE_LOTTERY", "LOTTERY"),
        ("PHRASE_ACT_NOW", "Act now"),
        ("PHRASE_100_FREE", "100% Free"),
        ("PHRASE_WIRE_TRANSFER", "wire transfer"),
        ("PHRASE_CLICK_HERE", "Click Here"),
        ("PHRASE_RISK_FREE", "RISK-free"),
        ("CUSTOM_DROPSHIP", "drop-SHIP"),
    ];
    for (rule, phrase) in phrases {
        for offset in 0..17 {
            let near_miss = &phrase[..phrase.len() - 1];
            for (body, hit) in [(phrase, true), (near_miss, false)] {
                let text = format!(
                    "From: Bob <bob@far.example>\nSubject: Notes\nDate: Sat, 28 Nov 2026 10:00:00 +0000\n\
                     Message-ID: <3@far.example>\n\n{}{body}",
                    "x".repeat(offset)
                );
                let outcome = rt.spam(&plugin, &mx, &message(&text)).await.expect("classify");
                let (Verdict::Tag(headers) | Verdict::Junk(headers)) = &outcome.verdict else {
                    panic!("tagged: {outcome:?}");
                };
                let status = headers
                    .iter()
                    .find(|h| h.name == "X-Spam-Status")
                    .expect("status")
                    .value
                    .clone();
                let named = phrases.iter().filter(|(name, _)| status.contains(name)).count();
                assert_eq!(
                    (status.contains(rule), named),
                    (hit, usize::from(hit)),
                    "{text:?}: {status}"
                );
            }
        }
    }
}

#[tokio::test]
async fn rate_limit_defers_past_the_threshold() {
    let rt = runtime(None);
    let plugin = rt
        .load(spec(
            "rate_limit.wasm",
            Hook::Rate,
            serde_json::json!({ "account": { "messages-per-minute": 3 } }),
        ))
        .expect("load");
    let submission = session(PipelineKind::Submission);
    let window = |messages| Window {
        messages,
        recipients: messages,
    };
    let usage = |messages| Usage {
        account: Counters {
            minute: window(messages),
            hour: window(messages),
            day: window(messages),
        },
        client_ip: Counters {
            minute: window(0),
            hour: window(0),
            day: window(0),
        },
    };
    let envelope = message("x").envelope.clone();
    assert_eq!(
        rt.rate(&plugin, &submission, &envelope, &usage(2))
            .await
            .expect("rate"),
        Verdict::Accept
    );
    let Verdict::Defer(reply) = rt
        .rate(&plugin, &submission, &envelope, &usage(3))
        .await
        .expect("rate")
    else {
        panic!("the 4th message in a minute is deferred");
    };
    assert_eq!(
        (reply.code, reply.enhanced.map(|e| e.to_string())),
        (451, Some("4.7.0".into()))
    );
}

#[tokio::test]
async fn auth_table_checks_argon2_hashes() {
    use argon2::password_hash::PasswordHasher;
    let hash = argon2::Argon2::default()
        .hash_password(b"hunter2")
        .expect("hash")
        .to_string();
    let rt = runtime(None);
    let config =
        serde_json::json!({ "default-domain": "example.org", "accounts": { "carol@example.org": hash } });
    let plugin = rt
        .load(spec("auth_table.wasm", Hook::Auth, config))
        .expect("load");
    let s = session(PipelineKind::Submission);
    let creds = |user: &str, password: &str| Credentials {
        mechanism: portcullis_smtp::command::Mechanism::Plain,
        authzid: None,
        username: user.into(),
        password: password.into(),
    };
    assert_eq!(
        rt.authenticate(&plugin, &s, &creds("carol", "hunter2"))
            .await
            .expect("auth"),
        AuthOutcome::Accept {
            account: "carol@example.org".into()
        }
    );
    assert_eq!(
        rt.authenticate(&plugin, &s, &creds("carol", "wrong"))
            .await
            .expect("auth"),
        AuthOutcome::Reject
    );
    assert_eq!(
        rt.authenticate(&plugin, &s, &creds("dave", "hunter2"))
            .await
            .expect("auth"),
        AuthOutcome::Reject
    );
}

#[tokio::test]
async fn hostile_plugins_fail_within_their_limits_and_the_runtime_carries_on() {
    let rt = runtime(None);
    let mx = session(PipelineKind::Mx);
    let cases: [(&str, &str); 6] = [
        ("loop", "timeout"),
        ("memory", "memory"),
        ("trap", "trap"),
        ("stack", "trap"),
        ("oversized", "malformed"),
        ("remove-trace", "malformed"),
    ];
    let fine = rt
        .load(spec(
            "hostile.wasm",
            Hook::Spam,
            serde_json::json!({ "mode": "fine" }),
        ))
        .expect("load");
    for (mode, kind) in cases {
        let plugin = rt
            .load(spec(
                "hostile.wasm",
                Hook::Spam,
                serde_json::json!({ "mode": mode }),
            ))
            .expect("load");
        let started = Instant::now();
        let error = rt
            .spam(&plugin, &mx, &message("Subject: x\n\nx\n"))
            .await
            .expect_err(mode);
        let took = started.elapsed();
        assert_eq!(error.kind(), kind, "{mode}: {error}");
        assert!(took < Duration::from_secs(2), "{mode} took {took:?}");
        if mode == "stack" {
            assert!(
                matches!(&error, PluginError::Trap(t) if t.contains("stack")),
                "{error}"
            );
        }
        // The next call is served normally.
        let ok = rt
            .spam(&fine, &mx, &message("Subject: x\n\nx\n"))
            .await
            .expect("a well-behaved call");
        assert!(matches!(ok.verdict, Verdict::Tag(_)));
    }
}

#[tokio::test]
async fn the_sandbox_grants_nothing_but_what_the_operator_gave() {
    let rt = runtime(None);
    let mx = session(PipelineKind::Mx);
    let plugin = rt
        .load(spec(
            "hostile.wasm",
            Hook::Spam,
            serde_json::json!({ "mode": "escape" }),
        ))
        .expect("load");
    let outcome = rt
        .spam(&plugin, &mx, &message("Subject: x\n\nx\n"))
        .await
        .expect("classify");
    let Verdict::Tag(headers) = outcome.verdict else {
        panic!("{outcome:?}")
    };
    let get = |name: &str| {
        headers
            .iter()
            .find(|h| h.name == name)
            .map(|h| h.value.clone())
            .unwrap_or_default()
    };
    assert!(get("X-Escape-Fs").starts_with("denied"), "{}", get("X-Escape-Fs"));
    assert!(
        get("X-Escape-Net").starts_with("denied"),
        "{}",
        get("X-Escape-Net")
    );
    assert_eq!(get("X-Escape-Env"), "0");
    assert_eq!(
        get("X-Escape-Clock"),
        "0",
        "WASI clocks read zero; the host clock import is the only clock"
    );

    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("hello.txt"), "granted data\n").expect("write");
    let mut granted = (*spec(
        "hostile.wasm",
        Hook::Spam,
        serde_json::json!({ "mode": "read-granted" }),
    ))
    .clone();
    granted.grant_dir = Some(dir.path().to_path_buf());
    let plugin = rt.load(Arc::new(granted)).expect("load");
    let outcome = rt
        .spam(&plugin, &mx, &message("Subject: x\n\nx\n"))
        .await
        .expect("classify");
    let Verdict::Tag(headers) = outcome.verdict else {
        panic!("{outcome:?}")
    };
    assert_eq!(headers[0].value, "granted data");

    // A FIFO in the granted directory would hold a host thread in open(2) forever: refused
    // before every call (and at load).
    let fifo = dir.path().join("hello.fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo");
    assert!(made.success());
    let refused = rt.spam(&plugin, &mx, &message("Subject: x\n\nx\n")).await;
    assert!(
        matches!(&refused, Err(PluginError::Unavailable(why)) if why.contains("FIFO")),
        "{refused:?}"
    );
    let mut again = (*spec(
        "hostile.wasm",
        Hook::Spam,
        serde_json::json!({ "mode": "read-granted" }),
    ))
    .clone();
    again.grant_dir = Some(dir.path().to_path_buf());
    let load = rt.load(Arc::new(again));
    assert!(
        matches!(&load, Err(portcullis_runtime::LoadError::Grant { message, .. }) if message.contains("hello.fifo")),
        "{load:?}"
    );
}

#[tokio::test]
async fn wrong_world_is_refused_at_load_and_the_compile_cache_is_used() {
    let rt = runtime(None);
    let error = rt
        .load(spec("spam_rules.wasm", Hook::Virus, serde_json::json!({})))
        .expect_err("a spam plugin is not a virus plugin");
    assert!(error.to_string().contains("virus-plugin"), "{error}");
    let garbage = tempfile::NamedTempFile::new().expect("tmp");
    std::fs::write(garbage.path(), b"not wasm").expect("write");
    let mut bad = (*spec("x.wasm", Hook::Spam, serde_json::json!({}))).clone();
    bad.path = garbage.path().to_path_buf();
    assert!(rt.load(Arc::new(bad)).is_err());

    let cache = tempfile::tempdir().expect("cache");
    let first = runtime(Some(cache.path().to_path_buf()))
        .load(spec("spam_rules.wasm", Hook::Spam, serde_json::json!({})))
        .expect("load");
    assert!(!first.cached);
    let rt2 = runtime(Some(cache.path().to_path_buf()));
    let second = rt2
        .load(spec("spam_rules.wasm", Hook::Spam, serde_json::json!({})))
        .expect("load");
    assert!(second.cached, "a restart does not recompile");
    let outcome = rt2
        .spam(&second, &session(PipelineKind::Mx), &message("Subject: x\n\nx\n"))
        .await
        .expect("call");
    assert!(matches!(outcome.verdict, Verdict::Tag(_)));
}

/// spam-rules reads plain-text mail without a MIME parse. The same messages, made to need
/// the parse by a `Content-Transfer-Encoding` that changes nothing here, must score the same.
#[tokio::test]
async fn spam_rules_scores_plain_text_as_a_full_parse_does() {
    let rt = runtime(None);
    let plugin = rt
        .load(spec("spam_rules.wasm", Hook::Spam, serde_json::json!({})))
        .expect("load");
    let mx = session(PipelineKind::Mx);
    let status = async |text: String| {
        let outcome = rt.spam(&plugin, &mx, &message(&text)).await.expect("classify");
        let (Verdict::Tag(headers) | Verdict::Junk(headers)) = outcome.verdict else {
            panic!("tagged or junked: {outcome:?}");
        };
        let status = headers
            .into_iter()
            .find(|h| h.name == "X-Spam-Status")
            .expect("status");
        status.value
    };
    let shouting = "PLEASE READ THESE NOTES BEFORE THE MEETING ON MONDAY MORNING ".repeat(3);
    let links = "see http://a.example/ and https://b.example/ ".repeat(6);
    let cases = [
        (
            "From: Bob <bob@far.example>",
            "Subject: Lunch tomorrow?",
            "Shall we meet at noon?",
            "",
        ),
        (
            "From: bob@Far.Example",
            "Subject: YOU HAVE WON THE LOTTERY!!!",
            "Click here",
            "",
        ),
        (
            "From: Alice <alice@example.org>",
            "Subject: notes",
            &*shouting,
            "",
        ),
        (
            "From: Bob <bob@far.example>",
            "Subject: you have\n won",
            &*links,
            "",
        ),
        (
            "From: Bob <bob@far.example>",
            "Subject: plain",
            "wire transfer, risk-free",
            "Date: x\n",
        ),
        (
            "From: Bob <bob@far.example>",
            "Subject: plain",
            "nothing",
            "Message-ID: <1@far.example>\n",
        ),
        ("To: alice@example.org", "Subject: no from", "100% FREE", ""),
        ("From: Bob <bob@far.example>", "X-Note: no subject", "act now", ""),
        (
            "From: Bob <bob@far.example>",
            "Subject: typed",
            "viagra",
            "Content-Type: text/plain; charset=\"UTF-8\"; format=flowed\n",
        ),
    ];
    for (from, subject, body, extra) in cases {
        let plain = format!("{from}\n{subject}\n{extra}\n{body}\n");
        let parsed =
            format!("{from}\n{subject}\n{extra}Content-Transfer-Encoding: quoted-printable\n\n{body}\n");
        let (plain, parsed) = (status(plain).await, status(parsed).await);
        assert_eq!(plain, parsed, "{from} / {subject} / {body}");
    }
    // The rules the table leans on do fire on the plain-text path.
    assert!(
        status(format!("Subject: x\n\n{shouting}\n"))
            .await
            .contains("BODY_SHOUTING")
    );
    assert!(
        status(format!("Subject: x\n\n{links}\n"))
            .await
            .contains("MANY_URLS")
    );
}
