//! Aliases (`[aliases]`, `aliases-file`): fan-out to mailboxes of ours and to another
//! domain's server — Debian's Postfix, started by the test — with the sender rewritten by
//! SRS as Debian's postsrsd rewrites and reverses it; bounces to rewritten addresses sent
//! back; forwarding loops stopped by `Delivered-To:`; the catch-all; the file watched;
//! loops refused by `check-config`; the `expanded` report.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use portcullis_testkit::postfix::{Postfix, free_port};

use crate::harness::*;

const SECRET: &str = "a shared secret for SRS, not short";

/// Debian's postsrsd 1.10 with our secret, rewriting into `example.org`: its TCP lookup
/// tables answer `get ADDRESS` with the address forwarded (one port) or reversed (the
/// other).
struct PostSrsd {
    child: Child,
    forward: SocketAddr,
    reverse: SocketAddr,
    _dir: tempfile::TempDir,
}

impl PostSrsd {
    fn start() -> PostSrsd {
        if Command::new("postsrsd").arg("-v").output().is_err() {
            let out = Command::new("apt-get")
                .args(["install", "-y", "--no-install-recommends", "postsrsd"])
                .output()
                .expect("apt-get");
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let secret = dir.path().join("secret");
        std::fs::write(&secret, format!("{SECRET}\n")).expect("secret");
        let (forward, reverse) = (free_port(), free_port());
        let child = Command::new("postsrsd")
            .arg("-s")
            .arg(&secret)
            .args(["-d", "example.org", "-l", "127.0.0.1", "-u", "nobody"])
            .args(["-f", &forward.to_string(), "-r", &reverse.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("postsrsd");
        let at = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(at(reverse)).is_err() {
            assert!(Instant::now() < deadline, "postsrsd did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        PostSrsd {
            child,
            forward: at(forward),
            reverse: at(reverse),
            _dir: dir,
        }
    }

    /// Its answer to `get ADDRESS`: the code, and the address decoded.
    fn get(table: SocketAddr, address: &str) -> (String, String) {
        let mut stream = TcpStream::connect(table).expect("connect postsrsd");
        writeln!(stream, "get {address}").expect("ask");
        let mut line = String::new();
        BufReader::new(stream).read_line(&mut line).expect("answer");
        let (code, value) = line.trim_end().split_once(' ').unwrap_or((&line, ""));
        (code.to_string(), percent_decode(value))
    }
}

impl Drop for PostSrsd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn percent_decode(text: &str) -> String {
    let mut out = Vec::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(Ok(b)) = text.get(i + 1..i + 3).map(|h| u8::from_str_radix(h, 16))
        {
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).expect("utf8")
}

/// Sends `message` over MX from `from` to `to`; the reply to its end.
fn mx_send(daemon: &Daemon, from: &str, to: &[&str], message: &str) -> String {
    let mut m = Raw::connect(daemon.addr("mx"));
    assert!(m.cmd("EHLO far.example").starts_with("250"));
    assert!(m.cmd(&format!("MAIL FROM:<{from}>")).starts_with("250"));
    for rcpt in to {
        let reply = m.cmd(&format!("RCPT TO:<{rcpt}>"));
        assert!(reply.starts_with("250"), "{rcpt}: {reply}");
    }
    assert!(m.cmd("DATA").starts_with("354"));
    m.cmd(&format!("{message}\r\n."))
}

/// The copies in `maildir` whose text contains `needle`.
fn copies_with(maildir: &Path, needle: &str) -> Vec<String> {
    new_files(maildir)
        .iter()
        .map(|p| std::fs::read_to_string(p).expect("read"))
        .filter(|text| text.contains(needle))
        .collect()
}

/// Waits for a copy in `maildir` whose text contains `needle`.
fn wait_for_copy(maildir: &Path, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(copy) = copies_with(maildir, needle).pop() {
            return copy;
        }
        assert!(
            Instant::now() < deadline,
            "no copy with {needle:?} in {maildir:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn an_alias_fans_out_here_and_to_postfix_with_srs_and_bounces_come_back() {
    portcullis_testkit::postfix::ensure_installed();
    let postfix = Postfix::start("example.net", |_| (String::new(), String::new()));
    let postsrsd = PostSrsd::start();
    let setup = Setup::new(&format!(
        "\n[aliases]\nsrs-secret = \"{SECRET}\"\n\
         \"team@example.org\" = [\"alice@example.org\", \"bob@example.org\", \"carol@example.net\"]\n\n\
         [delivery.routes]\n\"example.net\" = \"{}\"\n",
        postfix.addr
    ));
    setup.add_user("bob", PASSWORD);
    let said = checked(setup.config());
    assert!(
        said.contains("1 alias(es); copies forwarded elsewhere are sent with the sender rewritten by SRS"),
        "{said}"
    );
    let daemon = setup.start();
    // The Maildir of Postfix's one mailbox (its `new/` is what `maildir()` names).
    let remote = postfix.maildir().parent().expect("mailbox").to_path_buf();

    // One RCPT, three copies: two mailboxes here, one at Postfix.
    let reply = mx_send(
        &daemon,
        "dan@example.net",
        &["team@example.org"],
        "From: dan@example.net\r\nTo: team@example.org\r\nSubject: fan-out\r\n\r\nto the team",
    );
    assert!(reply.starts_with("250"), "{reply}");
    for local in ["alice", "bob"] {
        let copy = wait_for_copy(&setup.maildir(local), "Subject: fan-out");
        assert!(
            copy.contains(&format!("Delivered-To: {local}@example.org\r\n")),
            "{copy}"
        );
    }
    let forwarded = wait_for_copy(&remote, "Subject: fan-out");
    // The forwarded copy names the alias, and comes from the sender rewritten into our
    // domain: what Postfix recorded as its Return-Path.
    assert!(
        forwarded.contains("Delivered-To: team@example.org\n"),
        "{forwarded}"
    );
    let return_path = forwarded
        .lines()
        .find_map(|l| l.strip_prefix("Return-Path: <"))
        .and_then(|l| l.strip_suffix('>'))
        .expect("Return-Path")
        .to_string();
    assert!(
        return_path.starts_with("SRS0=") && return_path.ends_with("=example.net=dan@example.org"),
        "{return_path}"
    );
    // postsrsd, with the same secret, writes the same address and reverses ours.
    let (code, theirs) = PostSrsd::get(postsrsd.forward, "dan@example.net");
    assert_eq!(code, "200", "{theirs}");
    assert!(
        theirs.eq_ignore_ascii_case(&return_path),
        "postsrsd {theirs} / ours {return_path}"
    );
    let (code, original) = PostSrsd::get(postsrsd.reverse, &return_path);
    assert_eq!((code.as_str(), original.as_str()), ("200", "dan@example.net"));

    // A bounce to the rewritten address goes back to the sender; one to an address whose
    // hash is not ours is refused.
    let reply = mx_send(
        &daemon,
        "",
        &[&return_path],
        "From: MAILER-DAEMON@example.net\r\nSubject: bounce back\r\n\r\nyour message bounced",
    );
    assert!(reply.starts_with("250"), "{reply}");
    let bounce = wait_for_copy(&remote, "Subject: bounce back");
    assert!(bounce.contains("Return-Path: <>"), "{bounce}");
    // So does one to postsrsd's own rewriting of another sender (the same scheme).
    let (_, erin) = PostSrsd::get(postsrsd.forward, "erin@example.net");
    let reply = mx_send(&daemon, "", &[&erin], "Subject: bounce for erin\r\n\r\nbounced");
    assert!(reply.starts_with("250"), "{reply}");
    wait_for_copy(&remote, "Subject: bounce for erin");
    let forged = return_path
        .replacen("SRS0=", "SRS0=x", 1)
        .replacen("=dan@", "=mallory@", 1);
    let mut m = Raw::connect(daemon.addr("mx"));
    assert!(m.cmd("EHLO far.example").starts_with("250"));
    assert!(m.cmd("MAIL FROM:<>").starts_with("250"));
    let reply = m.cmd(&format!("RCPT TO:<{forged}>"));
    assert!(reply.starts_with("550 5.1.1"), "{reply}");

    // A message the alias delivered before comes back: the copies here are delivered, the
    // one it would forward is a loop, bounced to the sender with the alias named.
    let reply = mx_send(
        &daemon,
        "dan@example.net",
        &["team@example.org"],
        "Delivered-To: team@example.org\r\nFrom: dan@example.net\r\nSubject: looping\r\n\r\nagain",
    );
    assert!(reply.starts_with("250"), "{reply}");
    for local in ["alice", "bob"] {
        wait_for_copy(&setup.maildir(local), "Subject: looping");
    }
    let dsn = wait_for_copy(&remote, "Action: failed");
    for needle in [
        "Original-Recipient: rfc822; team@example.org",
        "Final-Recipient: rfc822; carol@example.net",
        "Status: 5.4.6",
        "mail forwarding loop for team@example.org",
    ] {
        assert!(dsn.contains(needle), "missing {needle:?} in\n{dsn}");
    }
    assert_eq!(
        copies_with(&remote, "Subject: looping").len(),
        1,
        "only the report quotes the looping message"
    );
    wait_spool_empty(&setup.data());
}

#[test]
fn catch_alls_the_aliases_file_and_expanded_reports() {
    let setup = Setup::new("\n[aliases]\naliases-file = \"aliases.toml\"\n");
    setup.add_user("bob", PASSWORD);
    let file = setup.dir.path().join("aliases.toml");
    std::fs::write(
        &file,
        "\"@example.org\" = [\"alice@example.org\"]\n\"sales@example.org\" = \"bob@example.org\"\n\
         \"team@example.org\" = [\"alice@example.org\", \"sales@example.org\"]\n",
    )
    .expect("aliases");
    let mut daemon = setup.start();
    let mx = daemon.addr("mx");
    let rcpt = |to: &str| {
        let mut m = Raw::connect(mx);
        assert!(m.cmd("EHLO far.example").starts_with("250"));
        assert!(m.cmd("MAIL FROM:<dan@far.example>").starts_with("250"));
        m.cmd(&format!("RCPT TO:<{to}>"))
    };

    // The catch-all takes what no account or alias does; an alias takes its address.
    let reply = mx_send(
        &daemon,
        "dan@far.example",
        &["whoever@example.org"],
        "Subject: anyone\r\n\r\nhi",
    );
    assert!(reply.starts_with("250"), "{reply}");
    wait_for_copy(&setup.maildir("alice"), "Subject: anyone");
    let reply = mx_send(
        &daemon,
        "dan@far.example",
        &["sales+eu@example.org"],
        "Subject: sales\r\n\r\nhi",
    );
    assert!(reply.starts_with("250"), "{reply}");
    wait_for_copy(&setup.maildir("bob"), "Subject: sales");
    assert!(copies_with(&setup.maildir("alice"), "Subject: sales").is_empty());

    // An alias of several targets reports `expanded` to a sender who asks for success
    // reports; its targets report nothing more.
    let mut c = TlsRaw::connect(daemon.addr("submission"), &setup.cert_pem);
    c.login("alice@example.org");
    let reply = c.send_mail(
        "<alice@example.org>",
        &["<team@example.org> NOTIFY=SUCCESS"],
        "From: alice@example.org\r\nTo: team@example.org\r\nSubject: expanded\r\n\r\nto the team",
    );
    assert!(reply.starts_with("250"), "{reply}");
    wait_for_copy(&setup.maildir("bob"), "Subject: expanded");
    let report = wait_for_copy(&setup.maildir("alice"), "Action: expanded");
    assert!(
        report.contains("Final-Recipient: rfc822; team@example.org"),
        "{report}"
    );
    wait_spool_empty(&setup.data());
    let reports = copies_with(&setup.maildir("alice"), "multipart/report");
    assert_eq!(
        reports.len(),
        1,
        "one report, and no `delivered` ones: {reports:?}"
    );

    // The file is watched: an edit is in force without a signal; a broken edit keeps what
    // was there.
    std::fs::write(&file, "\"help@example.org\" = [\"bob@example.org\"]\n").expect("aliases");
    daemon.wait_log_count("accounts reloaded", 1);
    assert!(rcpt("help@example.org").starts_with("250"));
    assert!(
        rcpt("whoever@example.org").starts_with("550 5.1.1"),
        "the catch-all is gone"
    );
    std::fs::write(
        &file,
        "\"help@example.org\" = [\"x@example.org\"]\n\"x@example.org\" = [\"help@example.org\"]\n",
    )
    .expect("aliases");
    daemon.wait_log("the accounts and aliases in force stay");
    assert!(rcpt("help@example.org").starts_with("250"));
}

#[test]
fn check_config_refuses_loops_empty_aliases_and_forwarding_without_a_secret() {
    for (aliases, says) in [
        (
            "\"a@example.org\" = [\"b@example.org\"]\n\"b@example.org\" = [\"a@example.org\"]\n",
            "an alias loop: a@example.org → b@example.org → a@example.org",
        ),
        ("\"a@example.org\" = []\n", "an alias to nothing"),
        (
            "\"a@example.org\" = [\"x@example.net\"]\n",
            "set [aliases] srs-secret",
        ),
        (
            "\"a@example.net\" = [\"alice@example.org\"]\n",
            "is not a local domain",
        ),
    ] {
        for in_file in [false, true] {
            let extra = if in_file {
                "\n[aliases]\naliases-file = \"aliases.toml\"\n".to_string()
            } else {
                format!("\n[aliases]\n{aliases}")
            };
            // Written after the setup adds its account (which reads the config).
            let setup = Setup::new("");
            let config = std::fs::read_to_string(setup.config()).expect("config");
            std::fs::write(setup.config(), config + &extra).expect("config");
            std::fs::write(setup.dir.path().join("aliases.toml"), aliases).expect("aliases");
            let out = check_config(setup.config());
            let said = String::from_utf8_lossy(&out.stderr);
            assert!(
                !out.status.success() && said.contains(says),
                "{aliases} (file: {in_file}): {said}"
            );
        }
    }
    // A target that is no account is warned about, not refused: accounts come and go.
    let setup =
        Setup::new("\n[aliases]\n\"a@example.org\" = [\"gone@example.org\", \"alice@example.org\"]\n");
    let out = check_config(setup.config());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("gone@example.org is no account, alias or catch-all"),
        "{said}"
    );
}
