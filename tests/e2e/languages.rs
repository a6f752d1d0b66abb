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

/// The toolchains the language build scripts installed (reused by the starters' scripts).
fn toolchains() -> PathBuf {
    let toolchains = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../target/toolchains"));
    assert!(
        toolchains.join("python").is_dir()
            && toolchains.join("javascript").is_dir()
            && toolchains.join("c").is_dir(),
        "the language toolchains are missing: run plugins/{{python,javascript,c}}/build.sh (scripts/test.sh does)"
    );
    toolchains
}

/// `portcullis plugin new --lang LANG --hook HOOK NAME` in `dir`, then the starter's own
/// build script; returns the component.
fn build_starter(dir: &std::path::Path, lang: &str, hook: &str) -> PathBuf {
    let name = format!("my-{lang}-{hook}");
    let out = std::process::Command::new(binary())
        .args(["plugin", "new", "--lang", lang, "--hook", hook, &name])
        .current_dir(dir)
        .output()
        .expect("plugin new");
    assert!(
        out.status.success(),
        "{lang} {hook}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pinned = include_str!("../../rust-toolchain.toml");
    let channel = pinned
        .lines()
        .find_map(|l| l.trim().strip_prefix("channel"))
        .and_then(|v| v.split('"').nth(1))
        .expect("channel in rust-toolchain.toml");
    let toolchains = toolchains();
    let build = std::process::Command::new(dir.join(&name).join("build.sh"))
        // Outside the repository no rust-toolchain.toml applies: use the pinned one, which
        // scripts/test.sh gave the wasm32-wasip2 target. The Rust starters of one test
        // share a target directory so wit-bindgen is compiled once.
        .env("RUSTUP_TOOLCHAIN", channel)
        .env("CARGO_TARGET_DIR", dir.join("rust-target"))
        .env("PORTCULLIS_PYTHON_VENV", toolchains.join("python"))
        .env("PORTCULLIS_JS_TOOLS", toolchains.join("javascript"))
        .env("PORTCULLIS_C_TOOLS", toolchains.join("c"))
        .output()
        .expect("build.sh");
    assert!(
        build.status.success(),
        "{lang} {hook} starter did not build: {}{}",
        String::from_utf8_lossy(&build.stdout),
        String::from_utf8_lossy(&build.stderr)
    );
    let wasm = dir.join(&name).join(format!("{name}.wasm"));
    assert!(wasm.is_file(), "{}", wasm.display());
    wasm
}

/// `portcullis plugin test` of `wasm` on `hook` with `config` (TOML) and extra arguments;
/// returns what it printed.
fn plugin_test(
    dir: &std::path::Path,
    wasm: &std::path::Path,
    hook: &str,
    config: &str,
    args: &[&str],
) -> String {
    let cfg = dir.join(format!("{hook}.toml"));
    std::fs::write(&cfg, config).expect("config");
    let test = std::process::Command::new(binary())
        .args(["plugin", "test", "--hook", hook])
        .arg(wasm)
        .arg("--plugin-config")
        .arg(&cfg)
        .arg("--cache-dir")
        .arg(dir.join("cache"))
        .args(args)
        .output()
        .expect("plugin test");
    // The verdict (stdout), then what the plugin logged (stderr).
    let text = String::from_utf8_lossy(&test.stdout).into_owned() + &String::from_utf8_lossy(&test.stderr);
    assert!(test.status.success(), "{}: {text}", wasm.display());
    text
}

/// Every starter `plugin new` writes for `lang` builds with its own script and does what
/// its comment says, on each of the four hooks.
fn starters_work(lang: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let dir = dir.path();
    let file = |name: &str, text: &[u8]| {
        let path = dir.join(name);
        std::fs::write(&path, text).expect("message");
        path.to_str().expect("utf-8 path").to_string()
    };
    let spam = file(
        "spam.eml",
        b"From: a@far.example\r\nTo: alice@example.org\r\nSubject: Great CRYPTO deal\r\n\r\nBuy.\r\n",
    );
    let ham = file(
        "ham.eml",
        b"From: a@far.example\r\nTo: alice@example.org\r\nSubject: Lunch\r\n\r\nNoon?\r\n",
    );
    // The signature straddles the first 64 KiB read.
    let mut split = b"From: a@far.example\r\nTo: alice@example.org\r\nSubject: x\r\n\r\n".to_vec();
    split.resize(65536 - 6, b'a');
    split.extend_from_slice(b"X5O!WORM-TEST\r\n");
    let split = file("split.eml", &split);

    // spam: junk when the subject holds the configured word.
    let wasm = build_starter(dir, lang, "spam");
    let out = plugin_test(dir, &wasm, "spam", "word = \"deal\"\n", &[&spam]);
    assert!(
        out.contains("junk") && out.contains("X-Starter: hit"),
        "{lang}: {out}"
    );
    // Its header replaces any the message came with.
    let removed = out
        .lines()
        .skip_while(|l| !l.contains("removing the message's header fields:"))
        .nth(1)
        .map(str::trim);
    assert_eq!(removed, Some("X-Starter"), "{lang}: {out}");
    let out = plugin_test(dir, &wasm, "spam", "word = \"deal\"\n", &[&ham]);
    assert!(
        out.contains("accept") && out.contains("X-Starter: miss"),
        "{lang}: {out}"
    );
    // With a DNSBL zone and the DNS grant, asked through the host's resolver of a real DNS
    // server: a listed client is junk, another is not; without the grant the lookup is
    // denied, logged, and the rule skipped.
    let dns = portcullis_testkit::dns::Dns::start(&[(
        "1.2.0.192.dnsbl.test",
        portcullis_testkit::dns::Answer::A(std::net::Ipv4Addr::new(127, 0, 0, 2)),
    )]);
    let ns = dns.addr.to_string();
    let zone = "word = \"deal\"\ndnsbl = \"dnsbl.test\"\n";
    let granted = ["--grant-dns", "--nameserver", ns.as_str()];
    let out = plugin_test(
        dir,
        &wasm,
        "spam",
        zone,
        &[&granted[..], &[ham.as_str()]].concat(),
    );
    assert!(
        out.contains("junk") && out.contains("X-Starter: listed"),
        "{lang}: {out}"
    );
    let other = ["--client-ip", "192.0.2.2", ham.as_str()];
    let out = plugin_test(dir, &wasm, "spam", zone, &[&granted[..], &other[..]].concat());
    assert!(
        out.contains("accept") && out.contains("X-Starter: miss"),
        "{lang}: {out}"
    );
    let asked = dns.queries.lock().expect("lock").clone();
    assert!(
        asked.contains(&"1.2.0.192.dnsbl.test A".to_string())
            && asked.contains(&"2.2.0.192.dnsbl.test A".to_string()),
        "{lang}: {asked:?}"
    );
    let out = plugin_test(dir, &wasm, "spam", zone, &[&ham]);
    assert!(
        out.contains("accept")
            && out.contains("X-Starter: miss")
            && out.contains("dnsbl.test: DNS is not granted to this plugin"),
        "{lang}: {out}"
    );
    assert_eq!(
        dns.queries.lock().expect("lock").len(),
        asked.len(),
        "{lang}: asked without the grant"
    );

    // auth: the configured password and nothing else.
    let wasm = build_starter(dir, lang, "auth");
    let accounts = "\"alice@example.org\" = \"s3cret pass\"\n";
    let login = |user: &str, password: &str| {
        plugin_test(
            dir,
            &wasm,
            "auth",
            accounts,
            &["--user", user, "--password", password],
        )
    };
    let out = login("alice@example.org", "s3cret pass");
    assert!(out.contains("accept as alice@example.org"), "{lang}: {out}");
    for (user, password) in [
        ("alice@example.org", "s3cret pas"),
        ("alice@example.org", "s3cret pass2"),
        ("alice@example.org", ""),
        ("bob@example.org", "s3cret pass"),
    ] {
        let out = login(user, password);
        assert!(
            out.contains("reject (535 5.7.8)"),
            "{lang} {user} {password:?}: {out}"
        );
    }

    // rate: defer at the configured count in the last minute.
    let wasm = build_starter(dir, lang, "rate");
    let out = plugin_test(dir, &wasm, "rate", "per-minute = 5\n", &["--usage", "4", &ham]);
    assert!(out.contains("verdict  accept"), "{lang}: {out}");
    let out = plugin_test(dir, &wasm, "rate", "per-minute = 5\n", &["--usage", "5", &ham]);
    assert!(
        out.contains("defer: 451 4.7.0 Too many messages this minute"),
        "{lang}: {out}"
    );

    // virus: the EICAR string by default; a configured signature, even across two reads.
    let wasm = build_starter(dir, lang, "virus");
    let eicar = file(
        "eicar.eml",
        b"Subject: test\r\n\r\nX5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*\r\n",
    );
    let out = plugin_test(dir, &wasm, "virus", "", &[&eicar]);
    assert!(out.contains("infected: Eicar-Test-Signature"), "{lang}: {out}");
    let worm = "signature = \"X5O!WORM-TEST\"\nname = \"Demo.Worm\"\n";
    let out = plugin_test(dir, &wasm, "virus", worm, &[&split]);
    assert!(out.contains("infected: Demo.Worm"), "{lang}: {out}");
    let out = plugin_test(dir, &wasm, "virus", worm, &[&ham]);
    assert!(
        out.contains("clean (accept), adding headers:") && out.contains("X-Starter-Scan: clean"),
        "{lang}: {out}"
    );
}

#[test]
fn plugin_new_rust_starters_work_on_every_hook() {
    starters_work("rust");
}

#[test]
fn plugin_new_python_starters_work_on_every_hook() {
    starters_work("python");
}

#[test]
fn plugin_new_javascript_starters_work_on_every_hook() {
    starters_work("javascript");
}

#[test]
fn plugin_new_c_starters_work_on_every_hook() {
    starters_work("c");
}

/// A template folder copied out of the repository builds with its own script, which asks
/// the portcullis binary for the WIT contract; unknown languages and hooks write nothing.
#[test]
fn a_copied_template_builds_and_plugin_new_refuses_what_it_does_not_know() {
    let toolchains = toolchains();
    let dir = tempfile::tempdir().expect("tempdir");
    let copied = dir.path().join("copied-c");
    let template = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../plugins/templates/c"));
    let cp = std::process::Command::new("cp")
        .arg("-r")
        .arg(&template)
        .arg(&copied)
        .status()
        .expect("cp");
    assert!(cp.success());
    // Left over from building in place, the copy would not need portcullis for its WIT.
    let _ = std::fs::remove_dir_all(copied.join("wit"));
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

    for (lang, hook) in [("c", "dkim"), ("cobol", "spam")] {
        let out = std::process::Command::new(binary())
            .args(["plugin", "new", "--lang", lang, "--hook", hook, "nope"])
            .current_dir(dir.path())
            .output()
            .expect("plugin new");
        assert!(!out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("is not one of"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!dir.path().join("nope").exists());
    }
}

/// A PATH holding only the shell tools the build scripts use before their checks, so that
/// each language's own toolchain is missing.
fn bare_path(dir: &std::path::Path) -> PathBuf {
    let bin = dir.join("bare-bin");
    std::fs::create_dir_all(&bin).expect("bin");
    for tool in [
        "sh", "dirname", "basename", "sed", "grep", "cat", "mkdir", "tr", "head",
    ] {
        let found = ["/usr/bin", "/bin"]
            .iter()
            .map(|d| std::path::Path::new(d).join(tool))
            .find(|p| p.exists())
            .unwrap_or_else(|| panic!("{tool} not found"));
        std::os::unix::fs::symlink(found, bin.join(tool)).expect("symlink");
    }
    bin
}

#[test]
fn starters_check_their_toolchain_first_and_name_the_install_command() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bin = bare_path(dir.path());
    for (lang, needle) in [
        ("c", "apt-get install -y --no-install-recommends clang-19 lld-19"),
        (
            "python",
            "apt-get install -y --no-install-recommends python3 python3-venv",
        ),
        (
            "javascript",
            "apt-get install -y --no-install-recommends nodejs npm",
        ),
        ("rust", "rustup target add wasm32-wasip2"),
    ] {
        let name = format!("fast-{lang}");
        let new = std::process::Command::new(binary())
            .args(["plugin", "new", "--lang", lang, "--hook", "auth", &name])
            .current_dir(dir.path())
            .output()
            .expect("plugin new");
        let said = String::from_utf8_lossy(&new.stdout);
        assert!(new.status.success(), "{}", String::from_utf8_lossy(&new.stderr));
        // plugin new names the prerequisites and the auth hook's own test options.
        assert!(
            said.contains("needs ") && said.contains("--user alice@example.org --password"),
            "{said}"
        );
        assert!(!said.contains("MESSAGE.eml"), "{said}");
        let started = std::time::Instant::now();
        let build = std::process::Command::new(dir.path().join(&name).join("build.sh"))
            .env("PATH", &bin)
            .output()
            .expect("build.sh");
        let err = String::from_utf8_lossy(&build.stderr);
        assert!(!build.status.success(), "{lang}: built without its toolchain?");
        assert!(err.contains(needle), "{lang}: {err}");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "{lang}: not fast"
        );
        // The starter's comments name the plugin's own file.
        let read_all = |d: PathBuf| -> String {
            std::fs::read_dir(d)
                .map(|rd| {
                    rd.filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
                        .collect()
                })
                .unwrap_or_default()
        };
        let sources = read_all(dir.path().join(&name)) + &read_all(dir.path().join(&name).join("src"));
        assert!(sources.contains(&format!("{name}.wasm")), "{lang}");
        assert!(!sources.contains("starter.wasm"), "{lang}");
    }
}
