//! Local delivery into Maildir: `<root>/<domain>/<local-part>/{tmp,new,cur}`, Junk in `.Junk/`.
//!
//! A copy goes to the Maildir of the account the recipient resolved to (`alice+news@` is
//! alice's INBOX, never a folder named after the detail) and starts with `Return-Path:`
//! (RFC 5321 4.4: the final delivery adds it) and `Delivered-To:` (the recipient as
//! given), then the spooled message. `.Junk` is a Maildir++ folder as Dovecot and IMAP
//! clients expect it: it holds a `maildirfolder` file and is listed in the Maildir's
//! `subscriptions`.
//!
//! A copy is written to `tmp/`, fsync'd, hard-linked into `new/` and `new/` fsync'd. The file
//! name is derived from the queue id and the recipient's index, so delivering the same copy
//! again after a crash finds the name taken and does nothing: exactly once.
//!
//! With group commit the copies skip their own fsyncs: [`Maildir::prepare`] writes each
//! copy into `tmp/` before the spool's flush, so the one flush that makes the spool file
//! durable makes the copies durable too; [`Maildir::publish_prepared`] (or
//! [`Maildir::write_copy`], for delivery) then moves them into `new/`, and the caller
//! flushes once more before it retires the spool file. A copy whose write failed (a full
//! disk, a quota) is removed at once, so that no later try takes its part for a prepared
//! copy. A prepared copy is
//! only ever removed from `tmp/` by its move into `new/`, so at recovery a copy still in
//! `tmp/` is published (after a check against the spool's content), and a missing one is
//! looked for in `new/` and `cur/` before it is written again.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use portcullis_smtp::{Folder, Mailbox};

use crate::fsync;
use crate::queue::Entry;

/// One local recipient's copy of a queued message: whose Maildir, which folder, which
/// file name, and the header lines it starts with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Copy {
    /// The account whose Maildir receives it.
    pub owner: Mailbox,
    /// INBOX or Junk.
    pub folder: Folder,
    /// The name part that tells this copy from the others ([`copy_name`]).
    pub unique: String,
    /// When the message was accepted (the file name starts with it).
    pub received_at: u64,
    /// `Return-Path:` and `Delivered-To:`, CRLF-terminated.
    pub headers: String,
}

impl Copy {
    /// The copy of `entry` for its recipient `index`, if that recipient is local.
    pub fn of(entry: &Entry, index: usize) -> Option<Copy> {
        let recipient = entry.envelope.recipients.get(index).filter(|r| r.local)?;
        Some(Copy {
            owner: recipient.maildir_owner(),
            folder: entry.folder,
            unique: copy_name(&entry.id, index),
            received_at: entry.received_at,
            headers: format!(
                "Return-Path: {}\r\nDelivered-To: {}\r\n",
                entry.envelope.reverse_path(),
                recipient.mailbox
            ),
        })
    }
}

/// What writing one copy did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Copied {
    /// A new file is in `new/`.
    Now,
    /// This copy was delivered before (a repeat after a crash); nothing was written.
    Before,
}

/// The name part that tells one copy of a queued message from the others: the queue id and
/// the recipient's index in the envelope.
pub fn copy_name(id: &crate::QueueId, index: usize) -> String {
    format!("{id}_{index}")
}

/// The root of all local mailboxes, `<data-dir>/mail`.
#[derive(Clone, Debug)]
pub struct Maildir {
    root: PathBuf,
    hostname: String,
    /// The device (file system) the spool's flushes cover, when copies may ride on them:
    /// a folder on that device gets its copies prepared before the spool's flush and
    /// published without fsyncs of their own; any other folder (another mount below the
    /// root) and every folder without it gets each copy fsync'd.
    spool_device: Option<u64>,
}

/// Makes a string safe as one path component.
fn component(text: &str) -> String {
    let cleaned: String = text
        .chars()
        .map(|c| match c {
            '/' | '\\' | '\0' => '_',
            c if c.is_control() => '_',
            c => c,
        })
        .collect();
    match cleaned.as_str() {
        "" | "." | ".." => format!("_{cleaned}"),
        _ => cleaned,
    }
}

impl Maildir {
    /// Mailboxes under `root`; `hostname` ends every file name (Maildir convention).
    pub fn new(root: PathBuf, hostname: &str) -> Self {
        Maildir {
            root,
            // Maildir file names must not hold '/' or ':'.
            hostname: hostname.replace('/', "\\057").replace(':', "\\072"),
            spool_device: None,
        }
    }

    /// Lets copies in folders on `device` ride on the spool's flushes
    /// ([`Maildir::prepare`], [`Maildir::write_copy`]): the device `Spool::flush_device`
    /// names, or `None` for an fsync of every copy.
    pub fn sharing_spool_flush(mut self, device: Option<u64>) -> Self {
        self.spool_device = device;
        self
    }

    /// Whether copies may ride on the spool's flushes (those in folders on its device).
    pub fn shares_spool_flush(&self) -> bool {
        self.spool_device.is_some()
    }

    /// Whether `dir` is on the device the spool's flushes cover.
    fn covered(&self, dir: &Path) -> bool {
        use std::os::unix::fs::MetadataExt;
        self.spool_device
            .is_some_and(|device| fs::metadata(dir).is_ok_and(|m| m.dev() == device))
    }

    /// The Maildir folder a mailbox's copy goes to.
    pub fn folder_path(&self, mailbox: &Mailbox, folder: Folder) -> PathBuf {
        let base = self
            .root
            .join(component(&mailbox.domain.to_lowercase()))
            .join(component(&mailbox.local.to_lowercase()));
        match folder {
            Folder::Inbox => base,
            Folder::Junk => base.join(".Junk"),
        }
    }

    /// Delivers `copy` of `message` (its parts in order, as the spool has them; the copy's
    /// headers go first); with `recovering`, `cur/` is also searched in case the user
    /// already read it.
    ///
    /// In a folder the spool's flushes cover, the copy [`Maildir::prepare`] left in `tmp/`
    /// before a flush is linked into `new/` as it is (with `recovering`, first checked
    /// against `message`, rewritten if it differs, and synced); a copy written here is
    /// synced before it is linked; the caller flushes before it retires the spool file.
    /// Elsewhere the copy and `new/` are fsync'd before this returns.
    pub fn write_copy(&self, copy: &Copy, message: &[&[u8]], recovering: bool) -> io::Result<Copied> {
        use std::os::unix::fs::MetadataExt;
        let (dir, name) = self.copy_path(copy);
        let mut parts: Vec<&[u8]> = Vec::with_capacity(message.len() + 1);
        parts.push(copy.headers.as_bytes());
        parts.extend_from_slice(message);
        let message = parts.as_slice();
        let tmp = dir.join("tmp").join(&name);
        let new = dir.join("new").join(&name);
        // The common case, a copy prepared before the flush that was just made: the file
        // itself says it is there and on the flushed device, with one look instead of one
        // at each of the folder's parts.
        let (sync, prepared) =
            if !recovering && fs::metadata(&tmp).is_ok_and(|m| self.spool_device == Some(m.dev())) {
                (false, true)
            } else {
                self.create_folder(copy, &dir)?;
                let sync = !self.covered(&dir);
                (sync, !sync && tmp.is_file())
            };
        if (recovering || !prepared)
            && (new.exists() || (recovering && already_read(&dir.join("cur"), &name)?))
        {
            // Delivered before (a crash may have left the prepared copy behind).
            if prepared {
                fs::remove_file(&tmp)?;
            }
            return Ok(Copied::Before);
        }
        // A prepared copy is whole unless a crash cut its write short (the spool's flush
        // never completed): the spool's own copy, checksummed, is the one to trust.
        if !prepared || (recovering && fs::read(&tmp)? != message.concat()) {
            // A copy written now is synced before it is linked, even where the spool's
            // flushes cover the folder: no flush has covered it yet, and a journal commit
            // (anyone's) could carry the link into `new/` before the data — an empty
            // message after a crash, which recovery would take as delivered.
            let _ = fs::remove_file(&tmp);
            fsync::write_new(&tmp, message, fsync::SHARED_FILE)?;
        } else if recovering {
            // After a restart without a machine crash, a prepared copy may still be in the
            // page cache only.
            fs::File::open(&tmp)?.sync_data()?;
        }
        let mut linked = fs::hard_link(&tmp, &new);
        if matches!(&linked, Err(e) if e.kind() == io::ErrorKind::NotFound) {
            // The folder lost its `new/` since the copy was prepared: made again.
            self.create_folder(copy, &dir)?;
            linked = fs::hard_link(&tmp, &new);
        }
        fs::remove_file(&tmp)?;
        match linked {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(Copied::Before),
            Err(e) => return Err(e),
        }
        if sync {
            fsync::sync_dir(&dir.join("new"))?;
        }
        Ok(Copied::Now)
    }

    /// Writes the copies of `entry`'s local recipients `indices` (`message` is the spooled
    /// content): the result of each, in order. A remote recipient is an error.
    pub fn deliver_copies(
        &self,
        entry: &Entry,
        indices: &[usize],
        message: &[&[u8]],
        recovering: bool,
    ) -> Vec<(usize, io::Result<()>)> {
        // Sharing the spool's flush, the copy was prepared before the 250 (or is written
        // now) and a flush before the spool file goes makes it durable.
        each_copy(entry, indices, |copy| self.write_copy(copy, message, recovering))
    }

    /// The folder and the file name of one copy.
    fn copy_path(&self, copy: &Copy) -> (PathBuf, String) {
        (
            self.folder_path(&copy.owner, copy.folder),
            format!("{}.{}.{}", copy.received_at, copy.unique, self.hostname),
        )
    }

    /// Makes sure the copy's folder exists; a new Junk folder is made a Maildir++ folder
    /// (`maildirfolder`) and subscribed, so that IMAP clients showing only subscribed
    /// folders see it.
    fn create_folder(&self, copy: &Copy, dir: &Path) -> io::Result<()> {
        for sub in ["tmp", "new", "cur"] {
            fsync::create_dir_durable(&dir.join(sub), fsync::SHARED_DIR)?;
        }
        if copy.folder == Folder::Junk && !dir.join("maildirfolder").exists() {
            let inbox = self.folder_path(&copy.owner, Folder::Inbox);
            for sub in ["tmp", "new", "cur"] {
                fsync::create_dir_durable(&inbox.join(sub), fsync::SHARED_DIR)?;
            }
            subscribe(&inbox, "Junk")?;
            match fsync::write_new(&dir.join("maildirfolder"), &[], fsync::SHARED_FILE) {
                Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
                _ => fsync::sync_dir(dir)?,
            }
        }
        Ok(())
    }

    /// Writes `copy` (its headers, then `parts`) into `tmp/` without syncing it: the
    /// spool's flush that follows makes it durable. [`Maildir::write_copy`] moves it to `new/`.
    /// Returns `false`, writing nothing, for a folder the spool's flush does not cover
    /// (delivery then writes and fsyncs that copy itself).
    pub(crate) fn prepare(&self, copy: &Copy, parts: &[&[u8]]) -> io::Result<bool> {
        use std::os::unix::fs::MetadataExt;
        let Some(device) = self.spool_device else {
            return Ok(false);
        };
        let (dir, name) = self.copy_path(copy);
        if copy.folder == Folder::Junk {
            // A Junk folder is made a Maildir++ folder and subscribed when it is new.
            self.create_folder(copy, &dir)?;
        }
        let tmp = dir.join("tmp").join(&name);
        // Created straight away: the folder is looked at only when it is not there (a new
        // mailbox), and a file of this name only when one is left (an earlier try).
        let file = match fsync::create_new(&tmp, fsync::SHARED_FILE) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.create_folder(copy, &dir)?;
                fsync::create_new(&tmp, fsync::SHARED_FILE)?
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                fs::remove_file(&tmp)?;
                fsync::create_new(&tmp, fsync::SHARED_FILE)?
            }
            created => created?,
        };
        if file.metadata()?.dev() != device {
            // Another file system: the spool's flush does not cover it, delivery writes
            // and fsyncs this copy itself.
            drop(file);
            fs::remove_file(&tmp)?;
            return Ok(false);
        }
        let mut all: Vec<&[u8]> = Vec::with_capacity(parts.len() + 1);
        all.push(copy.headers.as_bytes());
        all.extend_from_slice(parts);
        // A copy cut short (a full disk, a quota) is removed: a later delivery would take
        // it for a prepared one.
        fsync::finish_new(file, &tmp, &all, false)?;
        Ok(true)
    }

    /// Publishes `entry`'s copies for its local recipients `indices` that
    /// [`Maildir::prepare`] wrote (all of them) before a flush that has completed since:
    /// each moves from `tmp/` into `new/` in one step (`renameat2` with
    /// `RENAME_NOREPLACE`, which refuses a name taken, as a link would), instead of a link
    /// and an unlink. A copy that cannot be moved so (no `renameat2` on this file system,
    /// a `new/` gone meanwhile) goes the way of [`Maildir::deliver_copies`].
    pub(crate) fn publish_prepared(
        &self,
        entry: &Entry,
        indices: &[usize],
        message: &[&[u8]],
    ) -> Vec<(usize, io::Result<()>)> {
        each_copy(entry, indices, |copy| {
            let (dir, name) = self.copy_path(copy);
            let tmp = dir.join("tmp").join(&name);
            let moved = rustix::fs::renameat_with(
                rustix::fs::CWD,
                &tmp,
                rustix::fs::CWD,
                dir.join("new").join(&name),
                rustix::fs::RenameFlags::NOREPLACE,
            );
            match moved {
                Ok(()) => Ok(Copied::Now),
                Err(rustix::io::Errno::EXIST) => fs::remove_file(&tmp).map(|()| Copied::Before),
                Err(_) => self.write_copy(copy, message, false),
            }
        })
    }

    /// Removes a copy [`Maildir::prepare`] wrote, when the message was not accepted after all.
    pub(crate) fn discard_prepared(&self, copy: &Copy) {
        let (dir, name) = self.copy_path(copy);
        let _ = fs::remove_file(dir.join("tmp").join(name));
    }
}

/// Writes the copy of each of `entry`'s recipients `indices` with `write`, logging what it
/// did: the result of each, in order. A remote recipient is an error.
fn each_copy(
    entry: &Entry,
    indices: &[usize],
    mut write: impl FnMut(&Copy) -> io::Result<Copied>,
) -> Vec<(usize, io::Result<()>)> {
    let saved = |index: usize, copy: &Copy, copied: Copied| {
        let to = &entry.envelope.recipients[index].mailbox;
        match copied {
            Copied::Now => {
                tracing::info!(queue_id = %entry.id, %to, mailbox = %copy.owner, folder = ?entry.folder, "saved to maildir")
            }
            Copied::Before => {
                tracing::info!(queue_id = %entry.id, %to, "already in the maildir (delivered before a restart)")
            }
        }
    };
    indices
        .iter()
        .map(|&index| {
            let result = match Copy::of(entry, index) {
                Some(copy) => write(&copy).map(|copied| saved(index, &copy, copied)),
                None => Err(io::Error::other("not a local recipient")),
            };
            (index, result)
        })
        .collect()
}

/// Adds `folder` to the `subscriptions` file of the Maildir at `inbox` (one name a line,
/// the format Dovecot reads), unless it is listed already. The new list replaces the old
/// by rename, so a reader never sees half of it.
fn subscribe(inbox: &Path, folder: &str) -> io::Result<()> {
    let path = inbox.join("subscriptions");
    let mut text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e),
    };
    if text.lines().any(|line| line == folder) {
        return Ok(());
    }
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(folder);
    text.push('\n');
    let tmp = inbox.join("tmp").join(".subscriptions.portcullis");
    let _ = fs::remove_file(&tmp);
    fsync::write_new(&tmp, &[text.as_bytes()], fsync::SHARED_FILE)?;
    fs::rename(&tmp, &path)?;
    fsync::sync_dir(inbox)
}

/// Whether `cur/` holds `name` with any flags (`name:2,S` and so on).
fn already_read(cur: &Path, name: &str) -> io::Result<bool> {
    let items = match fs::read_dir(cur) {
        Ok(items) => items,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    for item in items {
        let file = item?.file_name();
        let file = file.to_string_lossy();
        if file == name || file.strip_prefix(name).is_some_and(|rest| rest.starts_with(':')) {
            return Ok(true);
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A copy without headers, so that files hold exactly the message.
    fn copy(owner: &Mailbox, folder: Folder, unique: &str) -> Copy {
        Copy {
            owner: owner.clone(),
            folder,
            unique: unique.into(),
            received_at: 7,
            headers: String::new(),
        }
    }

    #[test]
    fn delivers_once_even_when_repeated() {
        let dir = tempfile::tempdir().unwrap();
        let maildir = Maildir::new(dir.path().to_path_buf(), "mx:1");
        let alice = Mailbox {
            local: "Alice".into(),
            domain: "Example.org".into(),
        };
        let first = maildir
            .write_copy(&copy(&alice, Folder::Inbox, "Q1_0"), &[b"hello"], false)
            .unwrap();
        assert_eq!(first, Copied::Now);
        let again = maildir
            .write_copy(&copy(&alice, Folder::Inbox, "Q1_0"), &[b"hello"], false)
            .unwrap();
        assert_eq!(again, Copied::Before);
        let inbox = dir.path().join("example.org/alice");
        let new: Vec<_> = fs::read_dir(inbox.join("new")).unwrap().collect();
        assert_eq!(new.len(), 1);
        // The user read it (moved to cur/ with flags): a recovery must not deliver it again.
        let name = new[0].as_ref().unwrap().file_name().into_string().unwrap();
        assert!(name.ends_with(".mx\\0721"));
        fs::rename(
            inbox.join("new").join(&name),
            inbox.join("cur").join(format!("{name}:2,S")),
        )
        .unwrap();
        let repeat = maildir
            .write_copy(&copy(&alice, Folder::Inbox, "Q1_0"), &[b"hello"], true)
            .unwrap();
        assert_eq!(repeat, Copied::Before);
        let junk = maildir
            .write_copy(&copy(&alice, Folder::Junk, "Q2_0"), &[b"spam"], false)
            .unwrap();
        assert_eq!(junk, Copied::Now);
        assert_eq!(fs::read_dir(inbox.join(".Junk/new")).unwrap().count(), 1);
        assert_eq!(fs::read_dir(inbox.join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn prepared_copies_are_published_once_and_checked_at_recovery() {
        let dir = tempfile::tempdir().unwrap();
        use std::os::unix::fs::MetadataExt;
        let device = fs::metadata(dir.path()).unwrap().dev();
        let maildir = Maildir::new(dir.path().to_path_buf(), "mx").sharing_spool_flush(Some(device));
        let alice = Mailbox {
            local: "alice".into(),
            domain: "example.org".into(),
        };
        let inbox = dir.path().join("example.org/alice");
        let count = |sub: &str| fs::read_dir(inbox.join(sub)).unwrap().count();
        let message: &[u8] = b"Received: x\r\n\r\nhello\r\n";

        // Prepared before the flush, published after it.
        let prepared = maildir
            .prepare(
                &copy(&alice, Folder::Inbox, "Q1_0"),
                &[b"Received: x\r\n", b"\r\nhello\r\n"],
            )
            .unwrap();
        assert!(prepared);
        assert_eq!((count("tmp"), count("new")), (1, 0));
        let first = maildir
            .write_copy(&copy(&alice, Folder::Inbox, "Q1_0"), &[message], false)
            .unwrap();
        assert_eq!(first, Copied::Now);
        assert_eq!((count("tmp"), count("new")), (0, 1));
        let again = maildir
            .write_copy(&copy(&alice, Folder::Inbox, "Q1_0"), &[message], true)
            .unwrap();
        assert_eq!(again, Copied::Before);
        assert_eq!(count("new"), 1);

        // A crash cut the prepared copy short: recovery publishes the spool's content.
        maildir
            .prepare(&copy(&alice, Folder::Inbox, "Q2_0"), &[b"Received: x\r\n"])
            .unwrap();
        let repaired = maildir
            .write_copy(&copy(&alice, Folder::Inbox, "Q2_0"), &[message], true)
            .unwrap();
        assert_eq!(repaired, Copied::Now);
        let name = "7.Q2_0.mx".to_string();
        assert_eq!(fs::read(inbox.join("new").join(&name)).unwrap(), message);

        // Published and read before a crash that left the prepared copy behind: not again.
        fs::rename(
            inbox.join("new").join(&name),
            inbox.join("cur").join(format!("{name}:2,S")),
        )
        .unwrap();
        fs::write(inbox.join("tmp").join(&name), message).unwrap();
        let read = maildir
            .write_copy(&copy(&alice, Folder::Inbox, "Q2_0"), &[message], true)
            .unwrap();
        assert_eq!(read, Copied::Before);
        assert_eq!((count("tmp"), count("new"), count("cur")), (0, 1, 1));

        // Never prepared (a message with remote recipients, or a crash before the flush):
        // written now.
        let fresh = maildir
            .write_copy(&copy(&alice, Folder::Junk, "Q3_0"), &[message], true)
            .unwrap();
        assert_eq!(fresh, Copied::Now);
        assert_eq!(fs::read_dir(inbox.join(".Junk/new")).unwrap().count(), 1);

        // Not accepted after all: the prepared copy goes.
        maildir
            .prepare(&copy(&alice, Folder::Inbox, "Q4_0"), &[message])
            .unwrap();
        maildir.discard_prepared(&copy(&alice, Folder::Inbox, "Q4_0"));
        assert_eq!(count("tmp"), 0);

        // A folder on a file system the spool's flush does not cover (here: a device
        // number that is not this one's) is never prepared, and its copies are fsync'd.
        let elsewhere = Maildir::new(dir.path().to_path_buf(), "mx").sharing_spool_flush(Some(device + 1));
        assert!(
            !elsewhere
                .prepare(&copy(&alice, Folder::Inbox, "Q5_0"), &[message])
                .unwrap()
        );
        assert_eq!(count("tmp"), 0);
        let synced = elsewhere
            .write_copy(&copy(&alice, Folder::Inbox, "Q5_0"), &[message], false)
            .unwrap();
        assert_eq!(synced, Copied::Now);
        assert!(inbox.join("new/7.Q5_0.mx").is_file());

        // A file of the same name left in `tmp/` by an earlier try is replaced; a `new/`
        // removed between the flush and the publication is made again.
        fs::write(inbox.join("tmp/7.Q6_0.mx"), b"half a mess").unwrap();
        assert!(
            maildir
                .prepare(&copy(&alice, Folder::Inbox, "Q6_0"), &[message])
                .unwrap()
        );
        fs::remove_dir_all(inbox.join("new")).unwrap();
        let relinked = maildir
            .write_copy(&copy(&alice, Folder::Inbox, "Q6_0"), &[message], false)
            .unwrap();
        assert_eq!(relinked, Copied::Now);
        assert_eq!(fs::read(inbox.join("new/7.Q6_0.mx")).unwrap(), message);
        assert_eq!(count("tmp"), 0);

        // A mailbox that does not exist yet is made by the first copy prepared for it.
        let bob = Mailbox {
            local: "bob".into(),
            domain: "example.org".into(),
        };
        assert!(
            maildir
                .prepare(&copy(&bob, Folder::Inbox, "Q7_0"), &[message])
                .unwrap()
        );
        for sub in ["tmp", "new", "cur"] {
            assert!(dir.path().join("example.org/bob").join(sub).is_dir(), "{sub}");
        }
    }

    /// An entry of two local recipients, alice and bob.
    fn two_recipients() -> Entry {
        use portcullis_smtp::envelope::{Envelope, MailParams, Recipient};
        let recipient = |local: &str| {
            let mailbox = Mailbox {
                local: local.into(),
                domain: "example.org".into(),
            };
            Recipient::local(mailbox.clone(), Default::default(), mailbox)
        };
        Entry::new(
            crate::QueueId::parse("0000000000000B0001").unwrap(),
            7,
            Envelope {
                mail_from: None,
                params: MailParams::default(),
                recipients: vec![recipient("alice"), recipient("bob")],
            },
            Folder::Inbox,
        )
    }

    #[test]
    fn prepared_copies_move_into_new_in_one_step() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let device = fs::metadata(dir.path()).unwrap().dev();
        let maildir = Maildir::new(dir.path().to_path_buf(), "mx").sharing_spool_flush(Some(device));
        let entry = two_recipients();
        let folder = |owner: &str, sub: &str| dir.path().join("example.org").join(owner).join(sub);
        for index in 0..2 {
            assert!(
                maildir
                    .prepare(&Copy::of(&entry, index).unwrap(), &[b"hello\r\n"])
                    .unwrap()
            );
        }
        let results = maildir.publish_prepared(&entry, &[0, 1], &[b"hello\r\n"]);
        assert!(results.iter().all(|(_, r)| r.is_ok()), "{results:?}");
        for owner in ["alice", "bob"] {
            assert_eq!(files(&folder(owner, "tmp")).len(), 0);
            let new = files(&folder(owner, "new"));
            assert_eq!(new.len(), 1);
            let text = fs::read_to_string(&new[0]).unwrap();
            assert!(
                text.starts_with("Return-Path: <>\r\n") && text.ends_with("\r\nhello\r\n"),
                "{text:?}"
            );
        }

        // A name taken is never replaced: the copy in `new/` stays, the prepared one goes.
        let alice = Copy::of(&entry, 0).unwrap();
        assert!(maildir.prepare(&alice, &[b"other\r\n"]).unwrap());
        let results = maildir.publish_prepared(&entry, &[0], &[b"other\r\n"]);
        assert!(results[0].1.is_ok());
        assert_eq!(files(&folder("alice", "tmp")).len(), 0);
        let new = files(&folder("alice", "new"));
        assert_eq!(new.len(), 1);
        assert!(fs::read_to_string(&new[0]).unwrap().ends_with("hello\r\n"));

        // A `new/` gone since the copy was prepared is made again.
        let entry_again = Entry {
            id: crate::QueueId::parse("0000000000000B0002").unwrap(),
            ..entry.clone()
        };
        let bob_again = Copy::of(&entry_again, 1).unwrap();
        assert!(maildir.prepare(&bob_again, &[b"third\r\n"]).unwrap());
        fs::remove_dir_all(folder("bob", "new")).unwrap();
        let results = maildir.publish_prepared(&entry_again, &[1], &[b"third\r\n"]);
        assert!(results[0].1.is_ok(), "{results:?}");
        let new = files(&folder("bob", "new"));
        assert_eq!(new.len(), 1);
        assert!(fs::read_to_string(&new[0]).unwrap().ends_with("third\r\n"));
    }

    /// Set in the child process of [`a_copy_cut_short_is_never_taken_for_a_prepared_one`].
    const CUT_SHORT: &str = "PORTCULLIS_TEST_FILE_SIZE_LIMIT";

    #[test]
    fn a_copy_cut_short_is_never_taken_for_a_prepared_one() {
        if std::env::var_os(CUT_SHORT).is_none() {
            // The kernel's file size limit stands in for a full disk or a quota: a write
            // beyond it stops short. Run in a child process (the limit is the process's),
            // SIGXFSZ ignored by the shell that starts it (an ignored signal stays ignored
            // across exec), so that the write returns EFBIG instead of killing the test.
            let status = std::process::Command::new("sh")
                .args(["-c", "trap '' XFSZ; exec \"$0\" \"$@\""])
                .arg(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "maildir::tests::a_copy_cut_short_is_never_taken_for_a_prepared_one",
                ])
                .env(CUT_SHORT, "1")
                .status()
                .unwrap();
            assert!(status.success());
            return;
        }
        use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let device = fs::metadata(dir.path()).unwrap().dev();
        let maildir = Maildir::new(dir.path().to_path_buf(), "mx").sharing_spool_flush(Some(device));
        let elsewhere = Maildir::new(dir.path().to_path_buf(), "mx").sharing_spool_flush(Some(device + 1));
        let entry = two_recipients();
        let (alice, bob) = (Copy::of(&entry, 0).unwrap(), Copy::of(&entry, 1).unwrap());
        let folder = |owner: &str, sub: &str| dir.path().join("example.org").join(owner).join(sub);
        let big = vec![b'x'; 64 * 1024];
        let limits = getrlimit(Resource::Fsize);
        setrlimit(
            Resource::Fsize,
            Rlimit {
                current: Some(16 * 1024),
                maximum: limits.maximum,
            },
        )
        .unwrap();
        // Prepared before the flush, and written (synced) by delivery: both fail, and
        // neither leaves its part of a copy in `tmp/`.
        assert!(maildir.prepare(&alice, &[&big]).is_err());
        assert!(elsewhere.write_copy(&bob, &[&big], false).is_err());
        setrlimit(Resource::Fsize, limits).unwrap();
        assert_eq!(files(&folder("alice", "tmp")).len(), 0);
        assert_eq!(files(&folder("bob", "tmp")).len(), 0);
        // Delivery's next try writes each copy whole.
        for (copy, owner) in [(&alice, "alice"), (&bob, "bob")] {
            assert_eq!(maildir.write_copy(copy, &[&big], false).unwrap(), Copied::Now);
            let new = files(&folder(owner, "new"));
            assert_eq!(
                fs::metadata(&new[0]).unwrap().len(),
                (copy.headers.len() + big.len()) as u64
            );
        }
    }

    #[test]
    fn a_copy_goes_to_the_account_with_delivery_headers_and_junk_is_subscribed() {
        use portcullis_smtp::envelope::{Envelope, MailParams, Recipient};
        let dir = tempfile::tempdir().unwrap();
        let maildir = Maildir::new(dir.path().to_path_buf(), "mx");
        let mb = |local: &str| Mailbox {
            local: local.into(),
            domain: "example.org".into(),
        };
        let recipient = |address: &str, owner: Option<&str>| Recipient {
            mailbox: mb(address),
            params: Default::default(),
            local: true,
            deliver_to: owner.map(mb),
            alias: None,
            sender: None,
            reports_expansion: false,
        };
        let entry = Entry::new(
            crate::QueueId::parse("0000000000000A0001").unwrap(),
            7,
            Envelope {
                mail_from: Some(Mailbox {
                    local: "sender".into(),
                    domain: "far.example".into(),
                }),
                params: MailParams::default(),
                recipients: vec![
                    recipient("alice+news", Some("alice")),
                    recipient("postmaster", Some("bob")),
                    // A file from before `deliver-to`: the detail is dropped all the same.
                    recipient("alice+old", None),
                ],
            },
            Folder::Junk,
        );
        for index in 0..3 {
            let copy = Copy::of(&entry, index).unwrap();
            assert_eq!(
                maildir
                    .write_copy(&copy, &[b"Received: x\r\n", b"\r\nhi\r\n"], false)
                    .unwrap(),
                Copied::Now
            );
        }
        let junk = |owner: &str| dir.path().join("example.org").join(owner).join(".Junk");
        let alice = crate::maildir::tests::files(&junk("alice").join("new"));
        assert_eq!(alice.len(), 2);
        assert_eq!(
            fs::read_to_string(&alice[0]).unwrap(),
            "Return-Path: <sender@far.example>\r\nDelivered-To: alice+news@example.org\r\nReceived: x\r\n\r\nhi\r\n"
        );
        let bob = crate::maildir::tests::files(&junk("bob").join("new"));
        assert!(
            fs::read_to_string(&bob[0])
                .unwrap()
                .contains("Delivered-To: postmaster@example.org\r\n")
        );
        assert!(!dir.path().join("example.org/alice+news").exists());
        assert!(!dir.path().join("example.org/postmaster").exists());
        // Junk is a Maildir++ folder, subscribed once however many copies it gets.
        assert!(junk("alice").join("maildirfolder").is_file());
        let subscriptions = dir.path().join("example.org/alice/subscriptions");
        assert_eq!(fs::read_to_string(&subscriptions).unwrap(), "Junk\n");
        // A subscriptions file an IMAP server wrote is kept, Junk added once.
        fs::write(dir.path().join("example.org/bob/subscriptions"), "Archive").unwrap();
        fs::remove_file(junk("bob").join("maildirfolder")).unwrap();
        let again = Copy {
            unique: "other".into(),
            ..Copy::of(&entry, 1).unwrap()
        };
        maildir.write_copy(&again, &[b"x\r\n"], false).unwrap();
        assert_eq!(
            fs::read_to_string(dir.path().join("example.org/bob/subscriptions")).unwrap(),
            "Archive\nJunk\n"
        );
    }

    pub(crate) fn files(dir: &Path) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort();
        files
    }

    #[test]
    fn hostile_local_parts_stay_inside_the_root() {
        let maildir = Maildir::new(PathBuf::from("/r"), "h");
        let evil = Mailbox {
            local: "..".into(),
            domain: "x/../../etc".into(),
        };
        let path = maildir.folder_path(&evil, Folder::Inbox);
        assert!(path.starts_with("/r"));
        assert_eq!(path.components().count(), 4, "{path:?}");
    }
}
