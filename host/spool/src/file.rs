//! The spool file format: a first line `PORTCULLIS-SPOOL 2 <length> <crc>` (16 and 8 hex
//! digits: the octets that follow the line, up to the end of the message, and their
//! CRC-32), one line of JSON metadata ([`Entry`]), then `Entry::size` octets of message
//! (trace and hook headers already prepended). Octets after that are what is left of an
//! earlier, longer message in a reused file, and are ignored. Files of version 1 (first
//! line `PORTCULLIS-SPOOL 1`, exactly `Entry::size` octets of message, whose CRC-32 is in
//! the metadata) are read as before.
//!
//! A file whose length or CRC-32 disagrees is corrupt: never delivered.

use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use crate::entry::{Entry, QueueId};
use crate::queue::{SpoolError, io_err};

pub(crate) const MAGIC_V1: &[u8] = b"PORTCULLIS-SPOOL 1\n";
const MAGIC_V2: &[u8] = b"PORTCULLIS-SPOOL 2 ";
/// `PORTCULLIS-SPOOL 2 ` + 16 hex digits + space + 8 hex digits + newline.
const HEADER_V2: usize = 19 + 16 + 1 + 8 + 1;

/// The first line of a version 2 file whose metadata line and message are `parts`.
pub(crate) fn header(parts: &[&[u8]]) -> Vec<u8> {
    let length: usize = parts.iter().map(|p| p.len()).sum();
    let line = format!("PORTCULLIS-SPOOL 2 {length:016x} {:08x}\n", checksum(parts));
    debug_assert_eq!(line.len(), HEADER_V2);
    line.into_bytes()
}

/// The metadata of the spool file at `path` and, with `content`, its message, checked
/// whole (length and CRC-32); without, the message is neither read nor checked.
pub(crate) fn read_spool_file(path: &Path, content: bool) -> Result<(Entry, Vec<u8>), SpoolError> {
    let file = fs::File::open(path).map_err(io_err(path))?;
    let file_length = file.metadata().map_err(io_err(path))?.len();
    read_spool(BufReader::new(file), file_length, path, content)
}

/// Parses the bytes of a spool file, checked whole: what recovery does with a file, for
/// tests and the fuzz target (a damaged file must be a clean `Corrupt`, never a panic).
pub fn parse_spool_file(bytes: &[u8]) -> Result<(Entry, Vec<u8>), SpoolError> {
    read_spool(bytes, bytes.len() as u64, Path::new("(bytes)"), true)
}

/// [`read_spool_file`] over any reader of `file_length` octets.
fn read_spool(
    mut reader: impl BufRead,
    file_length: u64,
    path: &Path,
    content: bool,
) -> Result<(Entry, Vec<u8>), SpoolError> {
    let corrupt = |reason: &str| SpoolError::Corrupt {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    };
    // Never reserve more than the file holds, whatever a damaged metadata line claims.
    let mut first = Vec::new();
    reader
        .by_ref()
        .take(HEADER_V2 as u64)
        .read_until(b'\n', &mut first)
        .map_err(io_err(path))?;
    let v2 = if first == MAGIC_V1 {
        None
    } else {
        let fields = first
            .strip_prefix(MAGIC_V2)
            .and_then(|rest| rest.strip_suffix(b"\n"))
            .and_then(|rest| std::str::from_utf8(rest).ok())
            .and_then(|rest| rest.split_once(' '))
            .and_then(|(length, crc)| {
                Some((
                    u64::from_str_radix(length, 16).ok()?,
                    u32::from_str_radix(crc, 16).ok()?,
                ))
            });
        Some(fields.ok_or_else(|| corrupt("not a spool file"))?)
    };
    let mut meta = Vec::new();
    reader.read_until(b'\n', &mut meta).map_err(io_err(path))?;
    let entry: Entry = serde_json::from_slice(&meta).map_err(|e| corrupt(&format!("bad metadata: {e}")))?;
    if !content {
        return Ok((entry, Vec::new()));
    }
    let mut body = Vec::with_capacity(entry.size.min(file_length) as usize);
    match v2 {
        Some((length, crc)) => {
            // The metadata line and the message; what follows is an earlier file's rest.
            let want = length
                .checked_sub(meta.len() as u64)
                .ok_or_else(|| corrupt("length shorter than the metadata"))?;
            reader.take(want).read_to_end(&mut body).map_err(io_err(path))?;
            if body.len() as u64 != want {
                return Err(corrupt("file shorter than its length (truncated?)"));
            }
            if checksum(&[&meta, &body]) != crc {
                return Err(corrupt("checksum differs (a write a crash cut short?)"));
            }
        }
        None => {
            reader.read_to_end(&mut body).map_err(io_err(path))?;
        }
    }
    if body.len() as u64 != entry.size {
        return Err(corrupt("message length differs from its metadata (truncated?)"));
    }
    if entry.checksum.is_some_and(|c| c != checksum(&[&body])) {
        return Err(corrupt("message checksum differs from its metadata"));
    }
    Ok((entry, body))
}

/// That the file at `path`, read as `id`, names `id`.
pub(crate) fn check_id(path: &Path, entry: &Entry, id: &QueueId) -> Result<(), SpoolError> {
    if entry.id == *id {
        return Ok(());
    }
    Err(SpoolError::Corrupt {
        path: path.to_path_buf(),
        reason: "metadata names another queue id".into(),
    })
}

pub(crate) fn checksum(parts: &[&[u8]]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    for part in parts {
        hasher.update(part);
    }
    hasher.finalize()
}

pub(crate) fn metadata_line(entry: &Entry) -> Result<Vec<u8>, SpoolError> {
    let mut meta = serde_json::to_vec(entry).map_err(|e| SpoolError::Corrupt {
        path: PathBuf::from(entry.id.as_str()),
        reason: format!("cannot encode metadata: {e}"),
    })?;
    meta.push(b'\n');
    Ok(meta)
}
