//! Writing files so that they survive a crash: data fsync'd, then the directory entry.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;

/// fsyncs a directory, making renames, links and creations inside it durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Creates `path` (which must not exist), writes `parts` and fsyncs the file.
pub fn write_new(path: &Path, parts: &[&[u8]]) -> io::Result<()> {
    let mut file = OpenOptions::new().write(true).create_new(true).open(path)?;
    for part in parts {
        file.write_all(part)?;
    }
    file.sync_all()
}

/// Creates `path` (which must not exist) and writes `parts`, leaving durability to a
/// later flush (group commit).
pub fn write_new_unsynced(path: &Path, parts: &[&[u8]]) -> io::Result<()> {
    let mut file = OpenOptions::new().write(true).create_new(true).open(path)?;
    for part in parts {
        file.write_all(part)?;
    }
    Ok(())
}

/// Writes `parts` over the existing file `path` from its start and cuts what is left of
/// the old content, fsyncing it with `sync`. Reusing a file spares the file system an inode
/// allocation and a release; writing over its blocks instead of truncating it first spares
/// freeing them and allocating new ones (and, on a file system mounted with `discard`, a
/// discard request per freed extent in the next journal commit).
pub fn write_over(path: &Path, parts: &[&[u8]], sync: bool) -> io::Result<()> {
    let mut file = OpenOptions::new().write(true).open(path)?;
    let mut len = 0u64;
    for part in parts {
        file.write_all(part)?;
        len += part.len() as u64;
    }
    if file.metadata()?.len() > len {
        file.set_len(len)?;
    }
    if sync {
        file.sync_all()?;
    }
    Ok(())
}

/// Creates a directory and its parents, fsyncing each parent that gained an entry.
pub fn create_dir_durable(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        create_dir_durable(parent)?;
    }
    match fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(e),
    }
    if let Some(parent) = dir.parent() {
        sync_dir(parent)?;
    }
    Ok(())
}
