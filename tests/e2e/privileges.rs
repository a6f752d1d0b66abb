//! Privileges: started as root, the daemon binds, then runs as the configured user; it
//! refuses to go on as root unless told. These tests need root (CI runs as root); as any
//! other user they say so and check nothing.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Command;

use crate::harness::*;

fn root() -> bool {
    if nix::unistd::Uid::effective().is_root() {
        return true;
    }
    eprintln!("not root: the privilege-drop tests need root and were not run");
    false
}

fn nobody() -> nix::unistd::User {
    nix::unistd::User::from_name("nobody")
        .expect("passwd")
        .expect("a nobody user")
}

#[test]
fn started_as_root_it_serves_as_the_configured_user() {
    if !root() {
        return;
    }
    let setup = Setup::new("");
    let text = std::fs::read_to_string(setup.config()).expect("config");
    std::fs::write(
        setup.config(),
        text.replacen("run-as-root = true", "user = \"nobody\"", 1),
    )
    .expect("config");
    // nobody must be able to reach and own its data directory.
    std::fs::set_permissions(setup.dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::fs::create_dir_all(setup.data()).expect("mkdir");
    let who = nobody();
    std::os::unix::fs::chown(setup.data(), Some(who.uid.as_raw()), Some(who.gid.as_raw())).expect("chown");

    let mut daemon = setup.start();
    daemon.wait_log("dropped privileges");
    let status = std::fs::read_to_string(format!("/proc/{}/status", daemon.child.id())).expect("status");
    let uids = status.lines().find(|l| l.starts_with("Uid:")).expect("Uid line");
    let expected = who.uid.as_raw().to_string();
    assert!(uids.split_whitespace().skip(1).all(|u| u == expected), "{uids}");

    let mut c = Raw::connect(daemon.addr("mx"));
    assert!(c.cmd("EHLO c").starts_with("250"));
    assert!(c.cmd("MAIL FROM:<x@far.example>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<alice@example.org>").starts_with("250"));
    assert!(c.cmd("DATA").starts_with("354"));
    assert!(c.cmd("Subject: as nobody\r\n\r\nhi\r\n.").starts_with("250"));
    let files = wait_for_mail(&setup.maildir("alice"), 1);
    assert_eq!(
        std::fs::metadata(&files[0]).expect("stat").uid(),
        who.uid.as_raw()
    );
}

#[test]
fn it_refuses_root_unless_told_and_names_an_unwritable_data_dir() {
    if !root() {
        return;
    }
    let setup = Setup::new("");
    let text = std::fs::read_to_string(setup.config()).expect("config");
    std::fs::write(setup.config(), text.replacen("run-as-root = true\n", "", 1)).expect("config");
    let out = Command::new(binary())
        .args(["serve", "--config"])
        .arg(setup.config())
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("refusing to serve as root"));

    // A data directory nobody cannot write: a clear error, not a crash later.
    std::fs::write(
        setup.config(),
        text.replacen("run-as-root = true", "user = \"nobody\"", 1),
    )
    .expect("config");
    std::fs::set_permissions(setup.dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::fs::create_dir_all(setup.data()).expect("mkdir");
    let out = Command::new(binary())
        .args(["serve", "--config"])
        .arg(setup.config())
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is not writable by nobody"), "{err}");
}
