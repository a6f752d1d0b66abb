//! Writing files so that they survive a crash: data fsync'd, then the directory entry.

use std::fs::{self, File, OpenOptions};
use std::io::{self, IoSlice, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

/// Files only the daemon's user may read: the spool's (they hold whole messages, also in
/// `free/`). The process umask can only take bits away.
pub const PRIVATE_FILE: u32 = 0o600;
/// Directories only the daemon's user may enter: the spool's.
pub const PRIVATE_DIR: u32 = 0o700;
/// Files a mail reader's group may read and write (Maildir copies): what the daemon's
/// umask leaves of it decides (`[server] group` set: 0660; else 0600).
pub const SHARED_FILE: u32 = 0o660;
/// Directories a mail reader's group may use (Maildir folders): 0770 or 0700 by the umask.
pub const SHARED_DIR: u32 = 0o770;

/// Writes all of `parts`, in order, with as few `writev(2)` calls as the kernel allows (one,
/// for a message in the page cache) instead of one `write(2)` per part.
pub fn write_parts(file: &mut File, parts: &[&[u8]]) -> io::Result<()> {
    let mut slices: Vec<IoSlice<'_>> = parts.iter().map(|p| IoSlice::new(p)).collect();
    let mut rest = &mut slices[..];
    IoSlice::advance_slices(&mut rest, 0);
    while !rest.is_empty() {
        match file.write_vectored(rest) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut rest, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// fsyncs a directory, making renames, links and creations inside it durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Creates `path` (which must not exist) with `mode`, writes `parts` and fsyncs the file.
/// A file it could not finish is removed ([`finish_new`]).
pub fn write_new(path: &Path, parts: &[&[u8]], mode: u32) -> io::Result<()> {
    finish_new(create_new(path, mode)?, path, parts, true)
}

/// Writes `parts` into `file`, which [`create_new`] just made at `path`, and fsyncs it
/// with `sync`. When that fails (a full disk, a quota) the file is removed: a part of a
/// message must never stay where a later look could take it for the whole.
pub fn finish_new(mut file: File, path: &Path, parts: &[&[u8]], sync: bool) -> io::Result<()> {
    let written = write_parts(&mut file, parts).and_then(|()| if sync { file.sync_all() } else { Ok(()) });
    if written.is_err() {
        drop(file);
        let _ = fs::remove_file(path);
    }
    written
}

/// Creates `path` (which must not exist) with `mode`, open for writing.
pub fn create_new(path: &Path, mode: u32) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
}

/// Writes `parts` over the existing file `path` from its start, fsyncing it with `sync`.
/// What is left of a longer old content stays after it: the caller's format must say
/// where its own content ends (the spool's does). Reusing a file spares the file system an
/// inode allocation and a release; writing over its blocks instead of truncating it
/// spares freeing them and allocating new ones (and, on a file system mounted with
/// `discard`, a discard request per freed extent in the next journal commit).
pub fn write_over(path: &Path, parts: &[&[u8]], sync: bool) -> io::Result<()> {
    let mut file = OpenOptions::new().write(true).open(path)?;
    write_parts(&mut file, parts)?;
    if sync {
        file.sync_all()?;
    }
    Ok(())
}

/// Creates a directory and its parents with `mode`, fsyncing each parent that gained an
/// entry.
pub fn create_dir_durable(dir: &Path, mode: u32) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        create_dir_durable(parent, mode)?;
    }
    match fs::DirBuilder::new().mode(mode).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(e),
    }
    if let Some(parent) = dir.parent() {
        sync_dir(parent)?;
    }
    Ok(())
}
