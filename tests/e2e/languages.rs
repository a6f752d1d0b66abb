//! Plugins written in other languages than Rust, built by their own scripts
//! (`plugins/python/build.sh`; `scripts/test.sh` runs it before the tests), loaded by the
//! real daemon on a hook, with their verdicts observed on real messages.

use std::path::PathBuf;

use crate::harness::*;

/// A component built by a language's build script.
fn language_plugin(lang: &str, file: &str) -> PathBuf {
    let dir = std::env::var_os("PORTCULLIS_LANG_PLUGINS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../target/plugins")));
    let path = dir.join(lang).join(file);
    assert!(
        path.is_file(),
        "{} is missing: build it with plugins/{lang}/build.sh (scripts/test.sh does)",
        path.display()
    );
    path
}

fn send_mx(daemon: &Daemon, subject: &str, body: &str) {
    let mut c = Raw::connect(daemon.addr("mx"));
    assert!(c.cmd("EHLO sender.example").starts_with("250"));
    assert!(c.cmd("MAIL FROM:<someone@far.example>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<alice@example.org>").starts_with("250"));
    assert!(c.cmd("DATA").starts_with("354"));
    let reply = c.cmd(&format!(
        "From: someone@far.example\r\nTo: alice@example.org\r\nSubject: {subject}\r\nMessage-ID: <{subject}@far.example>\r\n\r\n{body}\r\n."
    ));
    assert!(reply.starts_with("250"), "{reply}");
    assert!(c.cmd("QUIT").starts_with("221"));
}

fn read(path: &std::path::Path) -> String {
    String::from_utf8_lossy(&std::fs::read(path).expect("read")).into_owned()
}

#[test]
fn python_naive_bayes_spam_plugin_junks_spam_and_accepts_ham() {
    let plugin = language_plugin("python", "spam_bayes.wasm");
    let setup = Setup::new(&format!(
        "[[plugin]]\nhook = \"spam\"\npath = \"{}\"\n[plugin.config]\nprior = -1.0\ntag-at = 2.0\njunk-at = 4.0\n\
         [plugin.config.tokens]\nviagra = 3.0\ncheap = 1.5\nwinner = 2.0\nmeeting = -1.5\nagenda = -1.0\n",
        plugin.display()
    ));
    let mut daemon = setup.start();
    send_mx(&daemon, "You are a WINNER", "Cheap viagra, cheap!");
    send_mx(&daemon, "meeting", "The agenda for the meeting is attached.");

    let junk = wait_for_mail(&setup.junk("alice"), 1);
    let spam = read(&junk[0]);
    assert!(spam.contains("X-Spam-Score: 5.50"), "{spam}");
    assert!(spam.contains("X-Spam-Flag: YES"), "{spam}");
    assert!(spam.contains("X-Spam-Tokens: viagra, winner, cheap"), "{spam}");
    assert!(spam.contains("Subject: You are a WINNER"), "{spam}");

    let inbox = wait_for_mail(&setup.maildir("alice"), 1);
    let ham = read(&inbox[0]);
    assert!(ham.contains("X-Spam-Score: -3.50"), "{ham}");
    assert!(ham.contains("X-Spam-Flag: NO"), "{ham}");
    assert!(ham.contains("Subject: meeting"), "{ham}");
    daemon.wait_log_count("hook verdict", 2);
}

#[test]
fn a_python_plugin_that_reaches_for_files_and_sockets_gets_errors_inside_the_sandbox() {
    let plugin = language_plugin("python", "python_escape.wasm");
    // A real listener for the plugin to aim at: if the sandbox leaked, the connect would work.
    let target = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = target.local_addr().expect("addr").port();
    let setup = Setup::new(&format!(
        "[[plugin]]\nhook = \"spam\"\npath = \"{}\"\n[plugin.config]\nport = \"{port}\"\n",
        plugin.display()
    ));
    let mut daemon = setup.start();
    send_mx(&daemon, "escape", "Let me out.");
    let files = wait_for_mail(&setup.maildir("alice"), 1);
    let text = read(&files[0]);
    for (header, expected) in [
        ("X-Escape-File", "denied"),
        ("X-Escape-Dir", "denied"),
        ("X-Escape-Env", "ALLOWED []"),
        ("X-Escape-Lookup", "denied"),
        ("X-Escape-Tcp", "denied"),
    ] {
        let line = text
            .lines()
            .find(|l| l.starts_with(header))
            .unwrap_or_else(|| panic!("no {header} in\n{text}"));
        assert!(line.contains(expected), "{line}");
    }
    daemon.wait_log("hook verdict");
    // The host logged the plugin's verdict and nothing else about it: no warning, no error,
    // no trap — every refusal happened, and was handled, inside the component.
    let noise: Vec<String> = daemon
        .log()
        .into_iter()
        .filter(|l| l.contains("python_escape") && !l.contains("hook verdict") && !l.contains("loaded"))
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .collect();
    assert!(noise.is_empty(), "{noise:#?}");
}

#[test]
fn javascript_haraka_style_rate_policy_defers_the_third_message_of_a_minute() {
    let plugin = language_plugin("javascript", "rate_haraka.wasm");
    let setup = Setup::new(&format!(
        "[[plugin]]\nhook = \"rate\"\npath = \"{}\"\n[plugin.config]\nmessages-per-minute = 2\n",
        plugin.display()
    ));
    let mut daemon = setup.start();
    let mut c = TlsRaw::connect(daemon.addr("submission"), &setup.cert_pem);
    c.login("alice@example.org");
    for n in 0..2 {
        let reply = c.send_mail(
            "<alice@example.org>",
            &["<alice@example.org>"],
            &format!("Subject: note {n}\r\n\r\nhello"),
        );
        assert!(reply.starts_with("250"), "message {n}: {reply}");
    }
    // The third is refused at the end of the envelope, with the plugin's own words.
    assert!(c.cmd("MAIL FROM:<alice@example.org>").starts_with("250"));
    let rcpt = c.cmd("RCPT TO:<alice@example.org>");
    let data = if rcpt.starts_with("250") {
        c.cmd("DATA")
    } else {
        rcpt
    };
    assert!(
        data.starts_with("451 4.7.0 alice@example.org sent 2 messages this minute"),
        "{data}"
    );
    assert_eq!(wait_for_mail(&setup.maildir("alice"), 2).len(), 2);
    daemon.wait_log("rate-haraka: DENYSOFT");
}

#[test]
fn c_signature_scanner_refuses_eicar_and_signatures_split_across_reads() {
    let plugin = language_plugin("c", "virus_scan.wasm");
    // A 5,000-octet signature (50 lines): placed after 62,000 octets of text, it spans the
    // plugin's first 64 KiB read whatever the length of the headers before it.
    let line = |i: usize| format!("{i:02}-SIGNATURE-LINE-{}", "Q".repeat(79));
    let long: String = (0..50).map(|i| format!("{}\r\n", line(i))).collect();
    let setup = Setup::new(&format!(
        "[[plugin]]\nhook = \"virus\"\npath = \"{}\"\n[plugin.config]\nsignatures = \"Demo.Worm=WORM-TEST-STRING;Long.Split={}\"\n",
        plugin.display(),
        long.replace("\r\n", "\\r\\n")
    ));
    let mut daemon = setup.start();
    let send = |body: &str| -> String {
        let mut c = Raw::connect(daemon.addr("mx"));
        assert!(c.cmd("EHLO sender.example").starts_with("250"));
        assert!(c.cmd("MAIL FROM:<someone@far.example>").starts_with("250"));
        assert!(c.cmd("RCPT TO:<alice@example.org>").starts_with("250"));
        assert!(c.cmd("DATA").starts_with("354"));
        c.cmd(&format!(
            "From: someone@far.example\r\nTo: alice@example.org\r\nSubject: scan me\r\n\r\n{body}\r\n."
        ))
    };
    let eicar = send(r"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*");
    assert!(eicar.starts_with("554 5.7.1"), "{eicar}");
    assert!(eicar.contains("Eicar-Test-Signature"), "{eicar}");
    let worm = send("hello WORM-TEST-STRING there");
    assert!(worm.contains("Demo.Worm"), "{worm}");
    let filler: String = "filler text that is not a signature at all\r\n".repeat(62_000 / 44 + 1);
    let split = send(&format!("{filler}{}", long.trim_end()));
    assert!(
        split.starts_with("554 5.7.1") && split.contains("Long.Split"),
        "{split}"
    );
    let clean = send(&format!("{filler}nothing to see"));
    assert!(clean.starts_with("250"), "{clean}");
    assert_eq!(wait_for_mail(&setup.maildir("alice"), 1).len(), 1);
    daemon.wait_log_count("hook verdict", 4);
}

/// `plugin new` writes a starter that builds with its own script and works, in every
/// language (reusing the toolchains the language build scripts installed).
#[test]
fn plugin_new_starters_build_and_junk_the_configured_word_in_every_language() {
    let toolchains = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../target/toolchains"));
    assert!(
        toolchains.join("python").is_dir()
            && toolchains.join("javascript").is_dir()
            && toolchains.join("c").is_dir(),
        "the language toolchains are missing: run plugins/{{python,javascript,c}}/build.sh (scripts/test.sh does)"
    );
    let pinned = include_str!("../../rust-toolchain.toml");
    let channel = pinned
        .lines()
        .find_map(|l| l.trim().strip_prefix("channel"))
        .and_then(|v| v.split('"').nth(1))
        .expect("channel in rust-toolchain.toml")
        .to_string();
    let dir = tempfile::tempdir().expect("tempdir");
    let message = dir.path().join("m.eml");
    std::fs::write(
        &message,
        "From: a@far.example\r\nTo: alice@example.org\r\nSubject: Great CRYPTO deal\r\n\r\nBuy.\r\n",
    )
    .expect("message");
    std::fs::write(dir.path().join("cfg.toml"), "word = \"deal\"\n").expect("config");
    for lang in ["rust", "python", "javascript", "c"] {
        let name = format!("my-{lang}");
        let out = std::process::Command::new(binary())
            .args(["plugin", "new", "--lang", lang, "--hook", "spam", &name])
            .current_dir(dir.path())
            .output()
            .expect("plugin new");
        assert!(
            out.status.success(),
            "{lang}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let build = std::process::Command::new(dir.path().join(&name).join("build.sh"))
            // Outside the repository no rust-toolchain.toml applies: use the pinned one,
            // which scripts/test.sh gave the wasm32-wasip2 target.
            .env("RUSTUP_TOOLCHAIN", &channel)
            .env("PORTCULLIS_PYTHON_VENV", toolchains.join("python"))
            .env("PORTCULLIS_JS_TOOLS", toolchains.join("javascript"))
            .env("PORTCULLIS_C_TOOLS", toolchains.join("c"))
            .output()
            .expect("build.sh");
        assert!(
            build.status.success(),
            "{lang} starter did not build: {}{}",
            String::from_utf8_lossy(&build.stdout),
            String::from_utf8_lossy(&build.stderr)
        );
        let test = std::process::Command::new(binary())
            .args(["plugin", "test", "--hook", "spam"])
            .arg(dir.path().join(&name).join(format!("{name}.wasm")))
            .arg(&message)
            .arg("--plugin-config")
            .arg(dir.path().join("cfg.toml"))
            .output()
            .expect("plugin test");
        let text = String::from_utf8_lossy(&test.stdout);
        assert!(
            test.status.success(),
            "{lang}: {text}{}",
            String::from_utf8_lossy(&test.stderr)
        );
        assert!(
            text.contains("junk") && text.contains("X-Starter: hit"),
            "{lang}: {text}"
        );
    }
    // A template folder copied out of the repository builds too: its script asks the
    // portcullis binary for the WIT contract.
    let copied = dir.path().join("copied-c");
    std::fs::create_dir_all(&copied).expect("mkdir");
    let template = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../plugins/templates/c"));
    for file in ["plugin.c", "build.sh"] {
        std::fs::copy(template.join(file), copied.join(file)).expect("copy template");
    }
    let bin_dir = std::path::Path::new(binary()).parent().expect("bin dir");
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let build = std::process::Command::new(copied.join("build.sh"))
        .env("PATH", path)
        .env("PORTCULLIS_C_TOOLS", toolchains.join("c"))
        .output()
        .expect("build.sh");
    assert!(
        build.status.success(),
        "{}",
        String::from_utf8_lossy(&build.stderr)
    );
    assert!(copied.join("wit/worlds.wit").is_file() && copied.join("copied-c.wasm").is_file());

    // Hooks without a starter yet say so instead of writing something half right.
    let out = std::process::Command::new(binary())
        .args(["plugin", "new", "--lang", "c", "--hook", "virus", "nope"])
        .current_dir(dir.path())
        .output()
        .expect("plugin new");
    assert!(!out.status.success());
    assert!(!dir.path().join("nope").exists());
}
