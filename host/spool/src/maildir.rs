//! Local delivery into Maildir: `<root>/<domain>/<local-part>/{tmp,new,cur}`, Junk in `.Junk/`.
//!
//! A copy is written to `tmp/`, fsync'd, hard-linked into `new/` and `new/` fsync'd. The file
//! name is derived from the queue id and the recipient's index, so delivering the same copy
//! again after a crash finds the name taken and does nothing: exactly once.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use portcullis_smtp::{Folder, Mailbox};

use crate::fsync;

/// The outcome of one delivery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// A new file is in `new/`.
    Delivered,
    /// This copy was delivered before (a repeat after a crash); nothing was written.
    AlreadyDelivered,
}

/// The root of all local mailboxes, `<data-dir>/mail`.
#[derive(Clone, Debug)]
pub struct Maildir {
    root: PathBuf,
    hostname: String,
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
        }
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

    /// Delivers one copy. `unique` names this copy (queue id and recipient index); with
    /// `recovering`, `cur/` is also searched in case the user already read it.
    pub fn deliver(
        &self,
        mailbox: &Mailbox,
        folder: Folder,
        unique: &str,
        received_at: u64,
        message: &[u8],
        recovering: bool,
    ) -> io::Result<Delivery> {
        let dir = self.folder_path(mailbox, folder);
        for sub in ["tmp", "new", "cur"] {
            fsync::create_dir_durable(&dir.join(sub))?;
        }
        let name = format!("{received_at}.{unique}.{}", self.hostname);
        let new = dir.join("new").join(&name);
        if new.exists() || (recovering && already_read(&dir.join("cur"), &name)?) {
            return Ok(Delivery::AlreadyDelivered);
        }
        let tmp = dir.join("tmp").join(&name);
        let _ = fs::remove_file(&tmp);
        fsync::write_new(&tmp, &[message])?;
        let linked = fs::hard_link(&tmp, &new);
        fs::remove_file(&tmp)?;
        match linked {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(Delivery::AlreadyDelivered),
            Err(e) => return Err(e),
        }
        fsync::sync_dir(&dir.join("new"))?;
        Ok(Delivery::Delivered)
    }
}

/// Whether `cur/` holds `name` with any flags (`name:2,S` and so on).
fn already_read(cur: &Path, name: &str) -> io::Result<bool> {
    for item in fs::read_dir(cur)? {
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

    #[test]
    fn delivers_once_even_when_repeated() {
        let dir = tempfile::tempdir().unwrap();
        let maildir = Maildir::new(dir.path().to_path_buf(), "mx:1");
        let alice = Mailbox {
            local: "Alice".into(),
            domain: "Example.org".into(),
        };
        let first = maildir
            .deliver(&alice, Folder::Inbox, "Q1_0", 7, b"hello", false)
            .unwrap();
        assert_eq!(first, Delivery::Delivered);
        let again = maildir
            .deliver(&alice, Folder::Inbox, "Q1_0", 7, b"hello", false)
            .unwrap();
        assert_eq!(again, Delivery::AlreadyDelivered);
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
            .deliver(&alice, Folder::Inbox, "Q1_0", 7, b"hello", true)
            .unwrap();
        assert_eq!(repeat, Delivery::AlreadyDelivered);
        let junk = maildir
            .deliver(&alice, Folder::Junk, "Q2_0", 7, b"spam", false)
            .unwrap();
        assert_eq!(junk, Delivery::Delivered);
        assert_eq!(fs::read_dir(inbox.join(".Junk/new")).unwrap().count(), 1);
        assert_eq!(fs::read_dir(inbox.join("tmp")).unwrap().count(), 0);
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
