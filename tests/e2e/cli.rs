//! The operator commands: check-config and user add.

use std::process::Command;

use crate::harness::*;

#[test]
fn check_config_accepts_a_good_file_and_names_the_bad_key() {
    let setup = Setup::new("");
    let ok = Command::new(binary())
        .args(["check-config", "--config"])
        .arg(setup.config())
        .output()
        .expect("run");
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
        let out = Command::new(binary())
            .args(["check-config", "--config"])
            .arg(&path)
            .output()
            .expect("run");
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
    let out = Command::new(binary())
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .expect("run");
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
    let out = Command::new(binary())
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("missing.pem") && err.contains("virus-plugin") && err.contains("2 problem(s)"),
        "{err}"
    );
}
