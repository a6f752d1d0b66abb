//! The spool against a real file system: formats, sync modes, recovery, reuse.

use super::*;
use crate::file::{MAGIC_V1, checksum, header_v2};
use portcullis_smtp::Mailbox;
use portcullis_smtp::envelope::{MailParams, Recipient};

fn envelope() -> Envelope {
    Envelope {
        mail_from: None,
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
    }
}

#[test]
fn store_load_update_remove() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let entry = spool
        .store(
            QueueId::generate(),
            envelope(),
            Folder::Inbox,
            "Received: x\r\n",
            b"body\r\n",
        )
        .unwrap();
    assert_eq!(spool.list().unwrap(), vec![entry.id.clone()]);
    let (loaded, body) = spool.load(&entry.id).unwrap();
    assert_eq!(loaded, entry);
    assert_eq!(body, b"Received: x\r\nbody\r\n");
    let updated = spool.modify(&entry.id, |e| e.pending.truncate(0)).unwrap();
    assert_eq!(updated.pending, Vec::<usize>::new());
    assert!(spool.list().unwrap().is_empty(), "nothing pending: removed");
    assert!(spool.list().unwrap().is_empty());
}

#[test]
fn both_sync_modes_store_and_a_damaged_byte_is_caught() {
    for mode in [SyncMode::Group, SyncMode::PerMessage] {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open_with(dir.path(), mode).unwrap();
        let entry = spool
            .store(
                QueueId::generate(),
                envelope(),
                Folder::Inbox,
                "H: 1\r\n",
                b"\r\nbody\r\n",
            )
            .unwrap();
        assert_eq!(spool.load(&entry.id).unwrap().1, b"H: 1\r\n\r\nbody\r\n");
        // Same length, one byte different: what an interrupted flush can leave, in
        // the content and in the metadata.
        let path = dir.path().join("queue").join(entry.id.as_str());
        let clean = fs::read(&path).unwrap();
        for at in [HEADER_V3 + 3, clean.len() - 3] {
            let mut data = clean.clone();
            data[at] ^= 0x20;
            fs::write(&path, &data).unwrap();
            assert!(
                matches!(spool.load(&entry.id), Err(SpoolError::Corrupt { reason, .. }) if reason.contains("checksum")),
                "{mode:?} at {at}"
            );
        }
    }
}

#[test]
fn a_write_is_durable_after_a_flush_and_flushes_cover_the_same_file_system() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let (id, sent) = (QueueId::generate(), envelope());
    let content = Content::from_bytes(b"x".to_vec());
    let incoming = Incoming {
        id: &id,
        envelope: &sent,
        folder: Folder::Inbox,
        success_notices: false,
        head: "",
        omit: &[],
        content: &content,
    };
    let entry = spool.write(&incoming).unwrap();
    spool.flush().unwrap();
    assert_eq!(spool.list().unwrap(), vec![entry.id.clone()]);
    let flushes = spool.flushes();
    spool.flush_soon().unwrap();
    assert!(spool.flushes() > flushes);
    spool.retire(&entry.id).unwrap();
    assert!(spool.list().unwrap().is_empty());

    // The retired file is reused for the next message: written where it is, and renamed
    // into queue/ (nothing passes through tmp/).
    use std::os::unix::fs::MetadataExt;
    let free: Vec<_> = fs::read_dir(dir.path().join("free"))
        .unwrap()
        .map(|f| f.unwrap().path())
        .collect();
    assert_eq!(free.len(), 1);
    let inode = fs::metadata(&free[0]).unwrap().ino();
    let long = vec![b'y'; 5000];
    let first = spool
        .store(QueueId::generate(), envelope(), Folder::Inbox, "", &long)
        .unwrap();
    assert_eq!(fs::read_dir(dir.path().join("free")).unwrap().count(), 0);
    assert_eq!(fs::metadata(spool.path(&first.id)).unwrap().ino(), inode);
    assert_eq!(spool.load(&first.id).unwrap().1, long);
    spool.remove(&first.id).unwrap();
    let short = spool
        .store(QueueId::generate(), envelope(), Folder::Inbox, "h", b"z")
        .unwrap();
    assert_eq!(spool.load(&short.id).unwrap().1, b"hz");
    // Kept across a restart.
    spool.retire(&short.id).unwrap();
    drop(spool);
    let spool = Spool::open(dir.path()).unwrap();
    assert_eq!(spool.free.lock().unwrap().len(), 1);
    assert!(spool.list().unwrap().is_empty());

    assert_eq!(
        spool.flush_device(),
        Some(fs::metadata(dir.path()).unwrap().dev())
    );
    let per_message = Spool::open_with(&dir.path().join("other"), SyncMode::PerMessage).unwrap();
    assert_eq!(per_message.flush_device(), None);
}

#[test]
fn a_file_retired_after_a_flush_stays_until_one_has_run() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let queued = |spool: &Spool| spool.list().unwrap().len();
    let first = spool
        .store(QueueId::generate(), envelope(), Folder::Inbox, "", b"one")
        .unwrap();
    spool.retire_after_flush(first.id.clone()).unwrap();
    assert_eq!((queued(&spool), spool.retiring()), (1, 1));
    // The next message's flush covers the first one's delivery: its file goes then.
    let second = spool
        .store(QueueId::generate(), envelope(), Folder::Inbox, "", b"two")
        .unwrap();
    assert_eq!((queued(&spool), spool.retiring()), (1, 0));
    assert!(spool.load(&second.id).is_ok());
    // With no session to flush, the sweeper's call does.
    spool.retire_after_flush(second.id.clone()).unwrap();
    let flushes = spool.flushes();
    spool.flush_retiring(std::time::Duration::ZERO).unwrap();
    assert_eq!((queued(&spool), spool.retiring()), (0, 0));
    assert_eq!(spool.flushes(), flushes + 1);
    // Nothing waiting: no flush.
    spool.flush_retiring(std::time::Duration::ZERO).unwrap();
    assert_eq!(spool.flushes(), flushes + 1);
    assert_eq!(fs::read_dir(dir.path().join("free")).unwrap().count(), 2);

    // Per-message sync has no shared flush to wait for: it retires at once.
    let per_message = Spool::open_with(&dir.path().join("other"), SyncMode::PerMessage).unwrap();
    let entry = per_message
        .store(QueueId::generate(), envelope(), Folder::Inbox, "", b"three")
        .unwrap();
    per_message.retire_after_flush(entry.id).unwrap();
    assert_eq!((queued(&per_message), per_message.retiring()), (0, 0));
}

#[test]
fn a_reused_file_keeps_an_old_tail_that_is_ignored_a_large_one_is_not_kept_and_version_1_files_still_load() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let long = spool
        .store(QueueId::generate(), envelope(), Folder::Inbox, "", &[b'y'; 5000])
        .unwrap();
    spool.remove(&long.id).unwrap();
    let short = spool
        .store(QueueId::generate(), envelope(), Folder::Inbox, "h", b"z")
        .unwrap();
    let path = dir.path().join("queue").join(short.id.as_str());
    assert!(fs::metadata(&path).unwrap().len() > 5000, "written over, not cut");
    assert_eq!(spool.load(&short.id).unwrap().1, b"hz");
    // A large message's file is not kept: it would hold its size of disk for good.
    let free = |dir: &std::path::Path| fs::read_dir(dir.join("free")).unwrap().count();
    let large = spool
        .store(
            QueueId::generate(),
            envelope(),
            Folder::Inbox,
            "",
            &vec![b'l'; 200 * 1024],
        )
        .unwrap();
    spool.remove(&short.id).unwrap();
    assert_eq!(free(dir.path()), 1);
    spool.remove(&large.id).unwrap();
    assert_eq!(free(dir.path()), 1, "the large file is deleted");
    // Nor is one left in free/ by an older version, at the next start.
    fs::write(dir.path().join("free/left-large"), vec![0u8; 200 * 1024]).unwrap();
    drop(spool);
    let spool = Spool::open(dir.path()).unwrap();
    assert_eq!(free(dir.path()), 1);
    assert!(!dir.path().join("free/left-large").exists());

    // A file of version 2: the metadata, then the message with its header lines.
    let v2 = Entry {
        id: QueueId::generate(),
        size: 5,
        head: String::new(),
        checksum: Some(checksum(&[b"h: v2"])),
        ..short.clone()
    };
    let meta = metadata_line(&v2).unwrap();
    let mut file = header_v2(&[&meta, b"h: v2"]);
    file.extend(&meta);
    file.extend(b"h: v2 and an older tail");
    fs::write(dir.path().join("queue").join(v2.id.as_str()), &file).unwrap();
    assert_eq!(spool.load(&v2.id).unwrap(), (v2.clone(), b"h: v2".to_vec()));
    assert_eq!(spool.entry(&v2.id).unwrap(), v2);
    // Its metadata changes go to a state file like any other.
    let changed = spool.modify(&v2.id, |e| e.attempts = 3).unwrap();
    assert_eq!(spool.load(&v2.id).unwrap(), (changed, b"h: v2".to_vec()));

    // A file of version 1: exactly its message after the metadata.
    let old = Entry {
        id: QueueId::generate(),
        ..short.clone()
    };
    let old = Entry {
        size: 4,
        head: String::new(),
        checksum: Some(checksum(&[b"old\n"])),
        ..old
    };
    let mut file = MAGIC_V1.to_vec();
    file.extend(metadata_line(&old).unwrap());
    file.extend(b"old\n");
    fs::write(dir.path().join("queue").join(old.id.as_str()), &file).unwrap();
    assert_eq!(spool.load(&old.id).unwrap(), (old.clone(), b"old\n".to_vec()));
    file.push(b'!');
    fs::write(dir.path().join("queue").join(old.id.as_str()), &file).unwrap();
    assert!(matches!(spool.load(&old.id), Err(SpoolError::Corrupt { .. })));
    // A damaged size is an error, not an allocation of what it claims.
    let huge = Entry {
        size: u64::MAX / 2,
        ..old.clone()
    };
    let mut file = MAGIC_V1.to_vec();
    file.extend(metadata_line(&huge).unwrap());
    file.extend(b"old\n");
    fs::write(dir.path().join("queue").join(old.id.as_str()), &file).unwrap();
    assert!(matches!(spool.load(&old.id), Err(SpoolError::Corrupt { .. })));
}

#[test]
fn a_withdrawn_message_leaves_neither_its_file_nor_its_prepared_copies() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    use std::os::unix::fs::MetadataExt;
    let device = fs::metadata(dir.path()).unwrap().dev();
    let maildir = Maildir::new(dir.path().join("mail"), "mx").sharing_spool_flush(Some(device));
    let (id, envelope) = (QueueId::generate(), envelope());
    let content = Content::from_bytes(b"body\r\n".to_vec());
    let incoming = Incoming {
        id: &id,
        envelope: &envelope,
        folder: Folder::Inbox,
        success_notices: false,
        head: "",
        omit: &[],
        content: &content,
    };
    let (entry, prepared) = spool.write_with_copies(&maildir, incoming).unwrap();
    let tmp = dir.path().join("mail/example.org/alice/tmp");
    assert!(prepared);
    assert_eq!(fs::read_dir(&tmp).unwrap().count(), 1, "a copy was prepared");
    assert_eq!(spool.list().unwrap(), vec![entry.id.clone()]);
    spool.withdraw(&maildir, &entry).unwrap();
    assert_eq!(fs::read_dir(&tmp).unwrap().count(), 0);
    assert!(spool.list().unwrap().is_empty());
    // Nothing comes back at the next start.
    drop(spool);
    assert!(Spool::open(dir.path()).unwrap().list().unwrap().is_empty());
}

#[test]
fn one_process_owns_the_spool_and_a_view_never_touches_it() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let entry = spool
        .store(QueueId::generate(), envelope(), Folder::Inbox, "", b"x")
        .unwrap();
    fs::write(dir.path().join("tmp/being-written"), b"half").unwrap();
    // Held (here by this value; in real life by the daemon): nobody else opens it.
    assert!(Spool::open_if_unlocked(dir.path()).unwrap().is_none());
    // The read-only view lists and reads, and leaves tmp/ and free/ alone.
    let view = crate::SpoolView::open(dir.path()).unwrap();
    assert_eq!(view.list().unwrap(), vec![entry.id.clone()]);
    assert_eq!(view.load(&entry.id).unwrap().1, b"x");
    assert!(dir.path().join("tmp/being-written").exists());
    drop(spool);
    let taken = Spool::open_if_unlocked(dir.path()).unwrap();
    assert!(taken.is_some());
}

#[test]
fn half_written_and_truncated_files_are_never_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let entry = spool
        .store(QueueId::generate(), envelope(), Folder::Inbox, "", b"0123456789")
        .unwrap();
    fs::write(
        dir.path().join("tmp/0000000000000000AB"),
        b"PORTCULLIS-SPOOL 1\n{",
    )
    .unwrap();
    // Truncate the stored message, as a disk fault would.
    let path = dir.path().join("queue").join(entry.id.as_str());
    let data = fs::read(&path).unwrap();
    fs::write(&path, &data[..data.len() - 3]).unwrap();

    drop(spool);
    let spool = Spool::open(dir.path()).unwrap();
    assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    assert!(matches!(spool.load(&entry.id), Err(SpoolError::Corrupt { .. })));
    spool.quarantine(&entry.id).unwrap();
    assert!(spool.list().unwrap().is_empty());
}
#[test]
fn a_change_of_metadata_leaves_the_content_alone_and_goes_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let entry = spool
        .store(
            QueueId::generate(),
            envelope(),
            Folder::Inbox,
            "H: 1\r\n",
            b"body\r\n",
        )
        .unwrap();
    let path = dir.path().join("queue").join(entry.id.as_str());
    let before = fs::read(&path).unwrap();
    let changed = spool
        .modify(&entry.id, |e| {
            e.attempts = 2;
            e.last_error
                .insert(0, portcullis_smtp::Reply::new(451, None, "no answer"));
        })
        .unwrap();
    assert_eq!(
        fs::read(&path).unwrap(),
        before,
        "the spool file is not rewritten"
    );
    assert!(state_path(&path).exists());
    assert_eq!(
        spool.load(&entry.id).unwrap(),
        (changed.clone(), b"H: 1\r\nbody\r\n".to_vec())
    );
    assert_eq!(spool.entry(&entry.id).unwrap(), changed);
    assert_eq!(
        spool.list().unwrap(),
        vec![entry.id.clone()],
        "a state file is no message"
    );
    let view = crate::SpoolView::open(dir.path()).unwrap();
    assert_eq!(view.load(&entry.id).unwrap().0, changed);
    assert_eq!(view.entry(&entry.id).unwrap(), changed, "the listing's read");

    // A damaged state file makes the message corrupt, not silently older.
    let good = fs::read(state_path(&path)).unwrap();
    let mut bad = good.clone();
    let last = bad.len() - 2;
    bad[last] ^= 1;
    fs::write(state_path(&path), &bad).unwrap();
    assert!(matches!(spool.entry(&entry.id), Err(SpoolError::Corrupt { .. })));
    fs::write(state_path(&path), &good).unwrap();

    // Removed with its message; one a crash left alone goes at the next start.
    spool.modify(&entry.id, |e| e.pending.clear()).unwrap();
    assert!(!path.exists() && !state_path(&path).exists());
    let orphan = dir.path().join("queue/0000000000000A0001.state");
    fs::write(&orphan, &good).unwrap();
    assert!(spool.list().unwrap().is_empty());
    drop(spool);
    let _spool = Spool::open(dir.path()).unwrap();
    assert!(!orphan.exists());
}

#[test]
fn a_large_content_is_written_once_into_the_file_that_is_queued() {
    let dir = tempfile::tempdir().unwrap();
    let spool = std::sync::Arc::new(Spool::open(dir.path()).unwrap());
    let storage = portcullis_smtp::content::Storage {
        budget: None,
        spill: Some(spool.clone()),
        room: None,
    };
    let mut content = storage.content(1024).unwrap();
    let mut sent = Vec::new();
    for i in 0..20_000 {
        let line = format!("line {i} of a message too large for memory\r\n");
        content.push(line.as_bytes());
        sent.extend_from_slice(line.as_bytes());
    }
    content.finish().unwrap();
    assert_eq!(
        fs::read_dir(dir.path().join("tmp")).unwrap().count(),
        1,
        "spilled as it came"
    );
    let (id, envelope) = (QueueId::generate(), envelope());
    let incoming = Incoming {
        id: &id,
        envelope: &envelope,
        folder: Folder::Inbox,
        success_notices: false,
        head: "Received: here\r\n",
        omit: &[],
        content: &content,
    };
    let maildir = Maildir::new(dir.path().join("mail"), "mx");
    let (entry, prepared) = spool.write_with_copies(&maildir, incoming).unwrap();
    assert!(
        !prepared,
        "no copies are prepared for a maildir outside the spool's flushes"
    );
    spool.flush().unwrap();
    drop(content);
    assert_eq!(
        fs::read_dir(dir.path().join("tmp")).unwrap().count(),
        0,
        "renamed, not copied"
    );
    let (loaded, message) = spool.load(&entry.id).unwrap();
    assert_eq!(loaded, entry);
    assert_eq!(&message[..16], b"Received: here\r\n");
    assert_eq!(&message[16..], &sent[..]);
    assert_eq!(entry.size, message.len() as u64);
}

#[test]
fn ranges_left_out_are_missing_from_the_delivered_message_only() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let (id, sent) = (QueueId::generate(), envelope());
    let raw = b"Authentication-Results: forged; dkim=pass\r\nSubject: hi\r\n\r\nbody\r\n";
    let content = Content::from_bytes(raw.to_vec());
    let forged = (0, 43);
    assert_eq!(&raw[..43], b"Authentication-Results: forged; dkim=pass\r\n");
    let incoming = Incoming {
        id: &id,
        envelope: &sent,
        folder: Folder::Inbox,
        success_notices: false,
        head: "Received: here\r\n",
        omit: &[forged],
        content: &content,
    };
    let entry = spool.write(&incoming).unwrap();
    spool.flush().unwrap();
    let (loaded, message) = spool.load(&entry.id).unwrap();
    assert_eq!(loaded.omit, [forged]);
    assert_eq!(message, b"Received: here\r\nSubject: hi\r\n\r\nbody\r\n");
    assert_eq!(loaded.size, message.len() as u64);
    // The content itself is stored as it came.
    let file = fs::read(dir.path().join("queue").join(entry.id.as_str())).unwrap();
    assert!(file.windows(raw.len()).any(|w| w == raw));
    // Ranges that do not fit the content are refused, never half applied.
    for bad in [[(0, 200)], [(5, 5)]] {
        let id = QueueId::generate();
        let incoming = Incoming {
            id: &id,
            omit: &bad,
            ..incoming
        };
        assert!(spool.write(&incoming).is_err(), "{bad:?}");
    }
}
