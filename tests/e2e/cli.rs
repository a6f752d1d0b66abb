//! The operator commands: check-config and user add.

use std::process::Command;

use crate::harness::*;

#[test]
fn check_config_accepts_a_good_file_and_names_the_bad_key() {
    let setup = Setup::new("");
    let ok = check_config(setup.config());
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    assert!(String::from_utf8_lossy(&ok.stdout).contains("OK"));

    let cases = [
        (
            "[server]\ndata-dir = \"d\"\n[domains]\nlocal = [\"x.org\"]\n[[listener]]\nkind = \"submission\"\naddress = \"127.0.0.1:1\"\n",
            "listener[0].kind",
        ),
        ("[server]\ndata-dir = \"d\"\nmystery = 1\n", "mystery"),
        (
            "[server]\ndata-dir = \"d\"\n[domains]\nlocal = [\"x.org\"]\n[[listener]]\nkind = \"mx\"\naddress = \"127.0.0.1:1\"\n[limits]\ndata-timeout = \"eventually\"\n",
            "data-timeout",
        ),
    ];
    for (text, needle) in cases {
        let path = setup.dir.path().join("bad.toml");
        std::fs::write(&path, text).expect("write");
        let out = check_config(&path);
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{err:?} should mention {needle:?}");
    }
}

#[test]
fn user_add_writes_an_argon2id_hash_and_refuses_foreign_domains() {
    let setup = Setup::new("");
    let users = std::fs::read_to_string(setup.dir.path().join("users.toml")).expect("users");
    assert!(users.contains("[accounts.\"alice@example.org\"]"), "{users}");
    assert!(users.contains("$argon2id$"), "{users}");
    assert!(!users.contains(PASSWORD));
    let out = Command::new(binary())
        .args([
            "user",
            "add",
            "mallory@elsewhere.example",
            "--password-stdin",
            "--config",
        ])
        .arg(setup.config())
        .output()
        .expect("run");
    assert!(!out.status.success());
}

#[test]
fn check_config_reports_every_problem_at_once() {
    let setup = Setup::new("");
    let path = setup.dir.path().join("many.toml");
    std::fs::write(
        &path,
        "[server]\ndata-dir = \"d\"\n[domains]\nlocal = [\"a/b\"]\n[[listener]]\nkind = \"submission\"\naddress = \"127.0.0.1:1\"\n\
         [limits]\nrecipients = 0\n[[plugin]]\nhook = \"antivirus\"\npath = \"x.wasm\"\n",
    )
    .expect("write");
    let out = check_config(&path);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    for key in [
        "listener[0].kind",
        "domains.local",
        "limits.recipients",
        "plugin[0].hook",
    ] {
        assert!(err.contains(key), "{key} missing from:\n{err}");
    }

    // A well-formed file whose certificate is missing and whose plugin is of the wrong world.
    let text = std::fs::read_to_string(setup.config()).expect("config")
        + &format!(
            "\n[[plugin]]\nhook = \"virus\"\npath = \"{}\"\n",
            built_plugin("spam_rules.wasm").display()
        );
    let text = text.replacen("cert = \"cert.pem\"", "cert = \"missing.pem\"", 1);
    std::fs::write(&path, text).expect("write");
    let out = check_config(&path);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("missing.pem") && err.contains("virus-plugin") && err.contains("2 problem(s)"),
        "{err}"
    );
}

/// Runs `portcullis user ARGS --config CONFIG`, the password (if any) on stdin.
fn user(config: &std::path::Path, args: &[&str], password: Option<&str>) -> std::process::Output {
    use std::io::Write as _;
    let mut child = Command::new(binary())
        .arg("user")
        .args(args)
        .arg("--config")
        .arg(config)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run user");
    let mut stdin = child.stdin.take().expect("stdin");
    if let Some(password) = password {
        stdin
            .write_all(format!("{password}\n").as_bytes())
            .expect("password");
    }
    drop(stdin);
    child.wait_with_output().expect("user")
}

fn auth_reply(daemon: &Daemon, setup: &Setup, user: &str, password: &str) -> String {
    let mut c = TlsRaw::connect(daemon.addr("submission"), &setup.cert_pem);
    c.cmd(&format!("AUTH PLAIN {}", base64_plain(user, password)))
}

#[test]
fn a_running_daemon_picks_up_user_changes_at_once_and_keeps_the_file_owner() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let setup = Setup::new("");
    let users_file = setup.dir.path().join("users.toml");
    let mut daemon = setup.start();

    // Through the control socket: in force when the command returns.
    let out = user(
        &setup.config(),
        &["add", "bob", "--password-stdin"],
        Some("bob's pw"),
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        said.contains("added bob@example.org")
            && said.contains("the running daemon picked it up (2 account(s)"),
        "{said}"
    );
    assert!(auth_reply(&daemon, &setup, "bob@example.org", "bob's pw").starts_with("235"));

    // passwd and remove likewise.
    let out = user(
        &setup.config(),
        &["passwd", "bob", "--password-stdin"],
        Some("new pw"),
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(auth_reply(&daemon, &setup, "bob@example.org", "bob's pw").starts_with("535"));
    assert!(auth_reply(&daemon, &setup, "bob@example.org", "new pw").starts_with("235"));
    let out = user(
        &setup.config(),
        &["passwd", "nobody-here", "--password-stdin"],
        Some("x"),
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no account"));
    let out = user(&setup.config(), &["list"], None);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "alice@example.org\nbob@example.org\n"
    );
    let out = user(&setup.config(), &["remove", "bob"], None);
    assert!(out.status.success());
    assert!(auth_reply(&daemon, &setup, "bob@example.org", "new pw").starts_with("535"));

    // Another way of changing the file (here: a config for another data directory naming
    // the same users file, so no daemon is told): the watcher picks it up by itself.
    let other = setup.dir.path().join("other.toml");
    let text = std::fs::read_to_string(setup.config()).expect("config");
    std::fs::write(
        &other,
        text.replacen("data-dir = \"data\"", "data-dir = \"other-data\"", 1),
    )
    .expect("other");
    let reloads = daemon
        .log()
        .iter()
        .filter(|l| l.contains("accounts reloaded"))
        .count();
    let out = user(&other, &["add", "carol", "--password-stdin"], Some("carol pw"));
    assert!(String::from_utf8_lossy(&out.stdout).contains("no daemon is running"));
    daemon.wait_log_count("accounts reloaded", reloads + 1);
    assert!(auth_reply(&daemon, &setup, "carol", "carol pw").starts_with("235"));

    // Run as root, an edit keeps the owner, group and mode it found.
    if nix::unistd::Uid::effective().is_root() {
        let nobody = nix::unistd::User::from_name("nobody")
            .expect("passwd")
            .expect("nobody");
        std::os::unix::fs::chown(&users_file, Some(nobody.uid.as_raw()), Some(nobody.gid.as_raw()))
            .expect("chown");
        std::fs::set_permissions(&users_file, std::fs::Permissions::from_mode(0o640)).expect("chmod");
        assert!(
            user(&setup.config(), &["add", "dave", "--password-stdin"], Some("pw"))
                .status
                .success()
        );
        let meta = std::fs::metadata(&users_file).expect("stat");
        assert_eq!(
            (meta.uid(), meta.gid(), meta.mode() & 0o777),
            (nobody.uid.as_raw(), nobody.gid.as_raw(), 0o640)
        );
    }
}

#[test]
fn the_example_configs_are_what_they_say() {
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let check = |file: &str| check_config(examples.join(file));
    // dev.toml is the embedded default: valid on a fresh checkout, with all four plugins.
    let dev = check("dev.toml");
    let said = String::from_utf8_lossy(&dev.stdout);
    assert!(dev.status.success(), "{}", String::from_utf8_lossy(&dev.stderr));
    assert!(said.contains("4 plugin(s)"), "{said}");
    assert!(
        said.contains(
            "mail authentication on MX: iprev, spf, dkim, arc, dmarc (enforced); authserv-id localhost"
        ),
        "{said}"
    );
    // portcullis.toml fails only for what a real installation provides.
    let production = check("portcullis.toml");
    assert_eq!(production.status.code(), Some(1));
    let err = String::from_utf8_lossy(&production.stderr);
    let problems: Vec<&str> = err
        .lines()
        .filter(|l| !l.contains("problem(s)") && !l.contains("warning:"))
        .collect();
    assert_eq!(problems.len(), 6, "{err}");
    for line in problems {
        assert!(
            line.contains("/etc/portcullis/tls/")
                || line.contains("server.user: no user \"portcullis\"")
                || line.contains("/usr/local/lib/portcullis/plugins/"),
            "unexpected: {line}"
        );
    }
}

#[test]
fn check_config_warns_about_an_mx_without_checks_and_refuses_an_unknown_user() {
    let setup = Setup::new("");
    let out = check_config(setup.config());
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for what in ["virus", "spam"] {
        assert!(
            err.contains(&format!("warning: the MX pipeline runs with NO {what} check")),
            "{err}"
        );
    }
    // serve says the same, loudly, at start.
    let mut daemon = setup.start();
    daemon.wait_log("the MX pipeline runs with NO virus check");

    setup.edit_config("run-as-root = true", "user = \"no-such-user-here\"");
    let out = check_config(setup.config());
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("server.user: no user \"no-such-user-here\""));
}

#[test]
fn queue_commands_under_load_never_hurt_the_running_daemon() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let setup = Setup::new("");
    let daemon = setup.start();
    let mx = daemon.addr("mx");
    let body = format!("Subject: load\r\n\r\n{}\r\n", "x".repeat(76)).repeat(52); // ~4 KiB
    let (sessions, per_session) = (10, 60);
    let clients: Vec<_> = (0..sessions)
        .map(|s| {
            let body = body.clone();
            std::thread::spawn(move || -> Result<usize, String> {
                let mut c = Raw::connect(mx);
                if !c.cmd("EHLO load.example").starts_with("250") {
                    return Err("EHLO".into());
                }
                for n in 0..per_session {
                    for (cmd, want) in [
                        ("MAIL FROM:<load@far.example>".to_string(), "250"),
                        ("RCPT TO:<alice@example.org>".to_string(), "250"),
                        ("DATA".to_string(), "354"),
                        (format!("Message-ID: <{s}.{n}@far.example>\r\n{body}."), "250"),
                    ] {
                        let reply = c.cmd(&cmd);
                        if !reply.starts_with(want) {
                            return Err(format!("session {s} message {n}: {cmd:.40?} got {reply:?}"));
                        }
                    }
                }
                Ok(per_session)
            })
        })
        .collect();
    // The operator's routine look at the queue, in a loop beside the load.
    let stop = Arc::new(AtomicBool::new(false));
    let looker = {
        let (stop, config) = (Arc::clone(&stop), setup.config());
        std::thread::spawn(move || {
            let mut runs = 0;
            while !stop.load(Ordering::Relaxed) {
                let out = Command::new(binary())
                    .args(["queue", "list", "--config"])
                    .arg(&config)
                    .output()
                    .expect("queue list");
                assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
                runs += 1;
            }
            runs
        })
    };
    let mut sent = 0;
    for client in clients {
        sent += client.join().expect("client").expect("every message got its 250");
    }
    stop.store(true, Ordering::Relaxed);
    let runs = looker.join().expect("looker");
    assert!(runs > 3, "queue list ran {runs} times during the load");
    wait_spool_empty(&setup.data());
    let files = wait_for_mail(&setup.maildir("alice"), sent);
    assert_eq!(files.len(), sent, "every message delivered exactly once");
    let mut ids: Vec<String> = files
        .iter()
        .map(|f| {
            let text = std::fs::read_to_string(f).expect("read");
            text.lines()
                .find(|l| l.starts_with("Message-ID:"))
                .expect("id")
                .to_string()
        })
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), sent, "no message twice");
    let log = daemon.log();
    assert!(
        !log.iter()
            .any(|l| l.contains("ERROR") || l.contains("spool I/O error")),
        "{:#?}",
        log.iter()
            .filter(|l| l.contains("ERROR") || l.contains("I/O"))
            .collect::<Vec<_>>()
    );
}
