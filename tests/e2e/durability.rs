//! A message acknowledged with 250 survives kill -9 and is delivered exactly once.

use crate::harness::*;

fn send_mx(c: &mut Raw, subject: &str) {
    assert!(c.cmd("MAIL FROM:<friend@far.example>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<alice@example.org>").starts_with("250"));
    assert!(c.cmd("DATA").starts_with("354"));
    let reply = c.cmd(&format!("Subject: {subject}\r\n\r\nbody of {subject}\r\n."));
    assert!(reply.starts_with("250 2.0.0 Ok: queued as "), "{reply}");
}

/// Sends `subject` on `c` and sees it delivered, alone in alice's mailbox.
fn send_and_see_it_alone(c: &mut Raw, setup: &Setup, subject: &str) {
    send_mx(c, subject);
    wait_spool_empty(&setup.data());
    let files = wait_for_mail(&setup.maildir("alice"), 1);
    assert_eq!(files.len(), 1);
    assert!(
        std::fs::read_to_string(&files[0])
            .expect("read")
            .contains(&format!("body of {subject}"))
    );
}

#[test]
fn accepted_but_undelivered_message_survives_kill9_and_arrives_once() {
    let setup = Setup::new("");
    // Block alice's Maildir with a plain file so the delivery fails and the message waits
    // in the spool, as it would on a full or broken disk.
    let domain_dir = setup.data().join("mail").join(DOMAIN);
    std::fs::create_dir_all(&domain_dir).expect("mkdir");
    std::fs::write(setup.maildir("alice"), b"in the way").expect("block");

    let mut daemon = setup.start();
    let mut c = Raw::connect(daemon.addr("mx"));
    assert!(c.cmd("EHLO c").starts_with("250"));
    send_mx(&mut c, "survivor");
    daemon.wait_log("delivery failed");
    daemon.kill9();
    assert_eq!(queued_messages(&setup.data()), 1);

    std::fs::remove_file(setup.maildir("alice")).expect("unblock");
    let mut daemon = setup.start();
    daemon.wait_log("recovering messages found in the spool");
    wait_spool_empty(&setup.data());
    let files = new_files(&setup.maildir("alice"));
    assert_eq!(files.len(), 1);
    assert!(
        std::fs::read_to_string(&files[0])
            .expect("read")
            .contains("body of survivor")
    );
}

#[test]
fn kill9_right_after_a_burst_loses_and_duplicates_nothing() {
    let setup = Setup::new("");
    let mut daemon = setup.start();
    let mut c = Raw::connect(daemon.addr("mx"));
    assert!(c.cmd("EHLO c").starts_with("250"));
    let count = 25;
    for i in 0..count {
        send_mx(&mut c, &format!("burst-{i}"));
    }
    // Killed while deliveries are in flight: some copies are in the Maildir, some only in
    // the spool, some possibly both.
    daemon.kill9();
    let _restarted = setup.start();
    wait_spool_empty(&setup.data());
    let files = new_files(&setup.maildir("alice"));
    let mut subjects: Vec<String> = files
        .iter()
        .map(|f| {
            let text = std::fs::read_to_string(f).expect("read");
            let line = text
                .lines()
                .find(|l| l.starts_with("Subject: "))
                .expect("subject");
            line.to_string()
        })
        .collect();
    subjects.sort();
    subjects.dedup();
    assert_eq!(files.len(), count, "exactly one copy each");
    assert_eq!(subjects.len(), count);
    // Copies prepared before the kill were published, not left behind in tmp/.
    let tmp = std::fs::read_dir(setup.maildir("alice").join("tmp"))
        .expect("tmp")
        .count();
    assert_eq!(tmp, 0, "copies left in tmp/");
}

#[test]
fn half_written_spool_files_are_never_delivered() {
    let setup = Setup::new("");
    let tmp = setup.data().join("spool/tmp");
    std::fs::create_dir_all(&tmp).expect("mkdir");
    std::fs::write(tmp.join("0661500000000000AA"), b"PORTCULLIS-SPOOL 1\n{\"id\":").expect("write");
    let mut daemon = setup.start();
    daemon.wait_log("removing a half-written spool file");
    assert_eq!(std::fs::read_dir(&tmp).expect("tmp").count(), 0);
    assert!(new_files(&setup.maildir("alice")).is_empty());
}

#[test]
fn large_messages_and_per_message_sync_are_written_beside_the_writer_and_delivered_once() {
    // A message over 1 MiB is written by a task of its own, next to small ones that go
    // through the spool writer; with per-message sync every message is.
    for per_message in [false, true] {
        let setup = Setup::new("");
        if per_message {
            let config = std::fs::read_to_string(setup.config()).expect("config");
            let config = config.replace(
                "run-as-root = true",
                "run-as-root = true\nspool-sync = \"per-message\"",
            );
            std::fs::write(setup.config(), config).expect("config");
        }
        let daemon = setup.start();
        let mut c = Raw::connect(daemon.addr("mx"));
        assert!(c.cmd("EHLO c").starts_with("250"));
        send_mx(&mut c, "small-1");
        assert!(c.cmd("MAIL FROM:<friend@far.example>").starts_with("250"));
        assert!(c.cmd("RCPT TO:<alice@example.org>").starts_with("250"));
        assert!(c.cmd("DATA").starts_with("354"));
        let line = "x".repeat(998);
        let body: String = (0..1200).map(|_| format!("{line}\r\n")).collect();
        let reply = c.cmd(&format!("Subject: large\r\n\r\n{body}."));
        assert!(reply.starts_with("250 2.0.0 Ok: queued as "), "{reply}");
        send_mx(&mut c, "small-2");
        let files = wait_for_mail(&setup.maildir("alice"), 3);
        wait_spool_empty(&setup.data());
        assert_eq!(files.len(), 3, "per-message sync: {per_message}");
        let large = files
            .iter()
            .map(|f| std::fs::read(f).expect("read"))
            .find(|text| text.windows(14).any(|w| w == b"Subject: large"))
            .expect("the large message");
        assert!(large.len() > 1_200_000, "{} octets", large.len());
    }
}

#[test]
fn a_spool_write_that_fails_is_answered_451_and_the_writer_goes_on() {
    let setup = Setup::new("");
    let daemon = setup.start();
    let mut c = Raw::connect(daemon.addr("mx"));
    assert!(c.cmd("EHLO c").starts_with("250"));
    // The spool's tmp/ replaced by a file: the next message cannot be written.
    let tmp = setup.data().join("spool/tmp");
    std::fs::remove_dir(&tmp).expect("rmdir");
    std::fs::write(&tmp, b"in the way").expect("block");
    assert!(c.cmd("MAIL FROM:<friend@far.example>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<alice@example.org>").starts_with("250"));
    assert!(c.cmd("DATA").starts_with("354"));
    let reply = c.cmd("Subject: refused\r\n\r\nnot stored\r\n.");
    assert!(reply.starts_with("451 4.3.0"), "{reply}");
    // Nothing of it is left to be delivered, not even its prepared Maildir copy.
    std::fs::remove_file(&tmp).expect("unblock");
    std::fs::create_dir(&tmp).expect("mkdir");
    assert!(new_files(&setup.maildir("alice")).is_empty());
    assert_eq!(
        std::fs::read_dir(setup.maildir("alice").join("tmp"))
            .map(|d| d.count())
            .unwrap_or(0),
        0
    );
    // The same session, the same writer: the next message is accepted and delivered.
    send_and_see_it_alone(&mut c, &setup, "accepted");
}

#[test]
fn mail_waits_with_452_while_the_spool_disk_is_short_of_its_reserve() {
    // No disk has a thousand tebibytes free: every MAIL FROM waits.
    let setup = Setup::new("[limits]\nspool-min-free = \"1000TiB\"\n[metrics]\naddress = \"127.0.0.1:0\"\n");
    // check-config says so, before the data directory exists.
    let out = check_config(setup.config());
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("less than limits.spool-min-free (1000.0 TiB): serve would answer MAIL FROM 452 4.3.1"),
        "{err}"
    );
    let mut daemon = setup.start();
    daemon.wait_log("the spool's disk is short of space");
    let metrics = daemon.metrics_address();
    let mut c = Raw::connect(daemon.addr("mx"));
    assert!(c.cmd("EHLO c").starts_with("250"));
    // The server's shortage, not the client's error: more tries than the error limit (20)
    // and the session stays open.
    for _ in 0..25 {
        let reply = c.cmd("MAIL FROM:<friend@far.example>");
        assert!(reply.starts_with("452 4.3.1"), "{reply}");
    }
    assert!(c.cmd("RCPT TO:<alice@example.org>").starts_with("503"));
    let body = scrape(metrics);
    assert_eq!(value(&body, "portcullis_spool_short_total"), 25.0);
    assert!(value(&body, "portcullis_spool_free_bytes") > 0.0);
    // The operator lowers the reserve: sessions from then on take mail (freed space
    // counts at once, in every session: the full-disk test below).
    setup.edit_config("spool-min-free = \"1000TiB\"", "spool-min-free = \"0\"");
    daemon.signal("HUP");
    daemon.wait_log("configuration reloaded");
    let mut c = Raw::connect(daemon.addr("mx"));
    assert!(c.cmd("EHLO c").starts_with("250"));
    send_and_see_it_alone(&mut c, &setup, "after the reload");
}

/// A tmpfs of `size` mounted on `dir` for as long as it lives.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    /// `None`, said on stderr, where this run may not mount (not root, or a sandbox
    /// without the right): the full-disk tests then do not run.
    fn mount(dir: &std::path::Path, size: &str) -> Option<Tmpfs> {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("not root: the full-disk tests mount a tmpfs and were not run");
            return None;
        }
        std::fs::create_dir_all(dir).expect("mkdir");
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "tmpfs"])
            .arg(dir)
            .output()
            .expect("run mount");
        if !out.status.success() {
            let why = String::from_utf8_lossy(&out.stderr);
            eprintln!(
                "cannot mount a tmpfs here ({}): the full-disk tests were not run",
                why.trim()
            );
            return None;
        }
        Some(Tmpfs(dir.to_path_buf()))
    }

    /// Octets free (what an unprivileged writer may use).
    fn free(&self) -> u64 {
        let stat = rustix::fs::statvfs(&self.0).expect("statvfs");
        stat.f_bavail * stat.f_frsize
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("--lazy")
            .arg(&self.0)
            .status();
    }
}

/// About `octets` of 80-letter lines.
fn filler(octets: usize) -> String {
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcdefghijklmnopq\r\n".repeat(octets / 81)
}

/// Asserts that `maildir` holds exactly one copy of each message in `subjects` (sent as
/// `Subject: S`, then `body`), whole, and nothing else.
fn each_arrived_once_and_whole(maildir: &std::path::Path, subjects: &[String], body: &str) {
    let copies: Vec<String> = new_files(maildir)
        .iter()
        .map(|f| std::fs::read_to_string(f).expect("read"))
        .collect();
    assert_eq!(copies.len(), subjects.len(), "{subjects:?}");
    for subject in subjects {
        let found: Vec<&String> = copies
            .iter()
            .filter(|text| text.contains(&format!("Subject: {subject}\r\n")))
            .collect();
        assert_eq!(found.len(), 1, "{subject}");
        assert!(found[0].ends_with(body), "{subject} arrived whole");
    }
}

#[test]
fn a_disk_that_fills_up_refuses_new_mail_and_loses_none_it_took() {
    // The data directory (spool and mailboxes) on a 12 MiB file system; messages of at
    // most 1 MiB, so 1.5 MiB is kept free (the default reserve).
    let setup = Setup::new("[limits]\nmessage-size = \"1MiB\"\n");
    let Some(disk) = Tmpfs::mount(&setup.data(), "12m") else {
        return;
    };
    let mut daemon = setup.start();
    let mut c = Raw::connect(daemon.addr("mx"));
    assert!(c.cmd("EHLO c").starts_with("250"));
    // 600 KiB messages, one after the other, until the disk is short.
    let body = filler(600 * 1024);
    let mut accepted = Vec::new();
    loop {
        let reply = c.cmd("MAIL FROM:<friend@far.example>");
        if reply.starts_with("452 4.3.1") {
            break;
        }
        assert!(reply.starts_with("250"), "{reply}");
        assert!(accepted.len() < 20, "12 MiB cannot take 20 such messages");
        let subject = format!("filler {}", accepted.len());
        assert!(c.cmd("RCPT TO:<alice@example.org>").starts_with("250"));
        assert!(c.cmd("DATA").starts_with("354"));
        let reply = c.cmd(&format!("Subject: {subject}\r\n\r\n{body}."));
        assert!(reply.starts_with("250 2.0.0"), "{reply}");
        accepted.push(subject);
        // Delivered before the next, so that what is free is what the mailbox left.
        wait_spool_empty(&setup.data());
    }
    assert!(
        accepted.len() >= 5,
        "only {} messages before the disk was short",
        accepted.len()
    );
    assert!(
        disk.free() < 3 * 1024 * 1024 / 2,
        "{} octets free at the refusal",
        disk.free()
    );
    daemon.wait_log("the spool's disk is short of space");
    // Everything acknowledged arrived, once and whole.
    each_arrived_once_and_whole(&setup.maildir("alice"), &accepted, &body);
    let files = new_files(&setup.maildir("alice"));
    // The reader takes mail away until the reserve is free again, but less than the
    // reserve and a 1 MiB message: a message declared that large still waits, one that
    // declares nothing is taken.
    let mut files = files.into_iter();
    while disk.free() < 3 * 1024 * 1024 / 2 {
        std::fs::remove_file(files.next().expect("a message to remove")).expect("remove");
    }
    assert!(disk.free() < 5 * 1024 * 1024 / 2, "{} octets free", disk.free());
    let reply = c.cmd("MAIL FROM:<friend@far.example> SIZE=1048576");
    assert!(reply.starts_with("452 4.3.1"), "{reply}");
    send_mx(&mut c, "room again");
    wait_spool_empty(&setup.data());
    assert!(new_files(&setup.maildir("alice")).iter().any(|f| {
        std::fs::read_to_string(f)
            .expect("read")
            .contains("body of room again")
    }));
    drop(daemon);
}

#[test]
fn a_message_that_runs_out_of_disk_is_refused_and_leaves_nothing_behind() {
    // No reserve: a 6 MiB message meets a full 4 MiB disk while it arrives (past 64 KiB
    // it is written to its spool file as it comes).
    let setup = Setup::new(
        "[limits]\nmessage-size = \"8MiB\"\nmemory-per-message = \"64KiB\"\nspool-min-free = \"0\"\n",
    );
    let Some(_disk) = Tmpfs::mount(&setup.data(), "4m") else {
        return;
    };
    let mut daemon = setup.start();
    let mut c = open_data(&daemon);
    let reply = c.cmd(&format!(
        "Subject: too big for the disk\r\n\r\n{}.",
        filler(6 * 1024 * 1024)
    ));
    assert!(reply.starts_with("452 4.3.1"), "{reply}");
    let line = daemon.wait_log("a message's content could not be written to the spool");
    assert!(line.contains("No space left on device"), "{line}");
    // Its spool file is gone, nothing was delivered, and the disk is free again.
    let in_tmp = std::fs::read_dir(setup.data().join("spool/tmp"))
        .expect("spool/tmp")
        .count();
    assert_eq!(in_tmp, 0, "a spill file left in spool/tmp");
    assert!(new_files(&setup.maildir("alice")).is_empty());
    // The same session takes the next message.
    send_and_see_it_alone(&mut c, &setup, "small");
}

#[test]
fn mail_taken_while_the_mailboxes_are_full_arrives_once_when_space_is_freed() {
    // No reserve, and all but 1 MiB of the disk taken by a file the operator removes
    // later: the spool files and the mailbox copies of 300 KiB messages run out of room.
    let setup = Setup::new("[limits]\nspool-min-free = \"0\"\n");
    let Some(disk) = Tmpfs::mount(&setup.data(), "8m") else {
        return;
    };
    let ballast = setup.data().join("ballast");
    std::fs::write(&ballast, vec![0u8; (disk.free() - 1024 * 1024) as usize]).expect("ballast");
    let daemon = setup.start();
    let mut c = Raw::connect(daemon.addr("mx"));
    assert!(c.cmd("EHLO c").starts_with("250"));
    let body = filler(300 * 1024);
    let (mut accepted, mut refused) = (Vec::new(), Vec::new());
    for i in 0..8 {
        let subject = format!("crowded {i}");
        assert!(c.cmd("MAIL FROM:<friend@far.example>").starts_with("250"));
        assert!(c.cmd("RCPT TO:<alice@example.org>").starts_with("250"));
        assert!(c.cmd("DATA").starts_with("354"));
        let reply = c.cmd(&format!("Subject: {subject}\r\n\r\n{body}."));
        if reply.starts_with("250 2.0.0") {
            accepted.push(subject);
        } else {
            assert!(reply.starts_with("45"), "{reply}");
            refused.push(subject);
        }
    }
    // 2.4 MiB sent to 1 MiB of room: some was turned away or waits in the spool.
    assert!(!accepted.is_empty(), "nothing taken");
    std::thread::sleep(std::time::Duration::from_millis(500));
    let waiting = queued_messages(&setup.data());
    assert!(
        !refused.is_empty() || waiting > 0,
        "every message fitted: {accepted:?}"
    );
    // The operator makes room: what was taken arrives, once and whole; what was refused
    // (the sender tries it again) never does.
    std::fs::remove_file(&ballast).expect("remove ballast");
    queue(&setup, &["flush"]);
    wait_spool_empty(&setup.data());
    each_arrived_once_and_whole(&setup.maildir("alice"), &accepted, &body);
    eprintln!(
        "accepted {}, refused {}, waited in the spool {waiting}",
        accepted.len(),
        refused.len()
    );
    drop(daemon);
}

#[test]
fn a_bounce_that_finds_the_disk_full_is_sent_once_there_is_room() {
    let sink = crate::sink::Sink::start(crate::sink::Script {
        rcpt: |addr| (addr == "bob@far.example").then(|| "550 5.1.1 no such user here".to_string()),
        ..Default::default()
    });
    let setup = Setup::new(&format!(
        "[limits]\nspool-min-free = \"0\"\n[delivery.routes]\n\"far.example\" = \"{}\"\n",
        sink.addr
    ));
    let Some(disk) = Tmpfs::mount(&setup.data(), "4m") else {
        return;
    };
    // Room for the 100 KiB message, not for the report that returns it whole beside it.
    let ballast = setup.data().join("ballast");
    std::fs::write(&ballast, vec![0u8; (disk.free() - 150 * 1024) as usize]).expect("ballast");
    let mut daemon = setup.start();
    let mut c = TlsRaw::connect(daemon.addr("submission"), &setup.cert_pem);
    let message = format!(
        "From: alice@example.org\r\nTo: bob@far.example\r\nSubject: unreported\r\n\r\n{}",
        filler(100 * 1024)
    );
    let reply = c.submit(
        "alice@example.org",
        "<alice@example.org>",
        &["<bob@far.example>"],
        &message,
    );
    assert!(reply.starts_with("250"), "{reply}");
    daemon.wait_log("cannot queue the delivery report");
    // The failure is kept with the message, which waits: no bounce is lost. (Logged once
    // it is recorded.)
    daemon.wait_log("message stays queued for another attempt");
    let listing = queue(&setup, &["list"]);
    assert!(
        listing.contains("bob@far.example: 550 5.1.1 no such user here"),
        "{listing}"
    );
    assert!(new_files(&setup.maildir("alice")).is_empty());
    // Room again: the next attempt fails again and reports it, once.
    std::fs::remove_file(&ballast).expect("remove ballast");
    queue(&setup, &["flush"]);
    let reports = wait_for_mail(&setup.maildir("alice"), 1);
    wait_spool_empty(&setup.data());
    assert_eq!(new_files(&setup.maildir("alice")).len(), 1);
    let text = std::fs::read_to_string(&reports[0]).expect("read");
    for needle in [
        "Final-Recipient: rfc822; bob@far.example",
        "Diagnostic-Code: smtp; 550 5.1.1 no such user here",
        "Subject: unreported",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in the DSN:\n{text}");
    }
}
