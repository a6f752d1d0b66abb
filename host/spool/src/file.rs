//! The spool file format.
//!
//! **Version 3** (written today) puts the content first, so that it can be written as it
//! arrives and never again:
//!
//! ```text
//! PORTCULLIS-SPOOL 3 <content length> <content CRC-32> <metadata length> <metadata CRC-32>\n
//! <content: the message as received>
//! <metadata: one line of JSON, an Entry, with the header lines to write before the content>
//! <anything: what is left of an earlier, longer message in a reused file>
//! ```
//!
//! The first line has a fixed length (16, 8, 8 and 8 hex digits), so a large content can
//! be written behind it before the line is known. A change of metadata (a recipient done,
//! a retry planned) never rewrites the content: the new metadata goes to a state file
//! beside it, `<id>.state` (`PORTCULLIS-STATE 3 <length> <CRC-32>\n` and the metadata
//! line), written aside and renamed over the previous one; when it exists it is the
//! message's metadata.
//!
//! Files of version 2 (`PORTCULLIS-SPOOL 2 <length> <crc>\n`, the metadata line, then the
//! message with its header lines) and version 1 (`PORTCULLIS-SPOOL 1\n`, the metadata
//! with the message's CRC-32, the message) are read as before.
//!
//! A file whose lengths or CRC-32s disagree is corrupt: never delivered.

use std::fs;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use crate::entry::{Entry, QueueId};
use crate::queue::{SpoolError, io_err};

pub(crate) const MAGIC_V1: &[u8] = b"PORTCULLIS-SPOOL 1\n";
const MAGIC_V2: &[u8] = b"PORTCULLIS-SPOOL 2 ";
/// `PORTCULLIS-SPOOL 2 ` + 16 hex digits + space + 8 hex digits + newline.
const HEADER_V2: usize = 19 + 16 + 1 + 8 + 1;
const MAGIC_V3: &[u8] = b"PORTCULLIS-SPOOL 3 ";
/// The first line of a version 3 file: where its content starts.
pub const HEADER_V3: usize = 19 + 16 + 1 + 8 + 1 + 8 + 1 + 8 + 1;
const MAGIC_STATE: &[u8] = b"PORTCULLIS-STATE 3 ";
/// `PORTCULLIS-STATE 3 ` + 8 hex digits + space + 8 hex digits + newline.
const HEADER_STATE: usize = 19 + 8 + 1 + 8 + 1;
/// Metadata larger than this is not ours (a hundred recipients with their errors fit in
/// a fraction of it).
const MAX_METADATA: u64 = 16 << 20;

/// The first line of a version 3 file with `content` (its length and CRC-32) and the
/// metadata line `meta`.
pub(crate) fn header_v3(content_len: u64, content_crc: u32, meta: &[u8]) -> Vec<u8> {
    let line = format!(
        "PORTCULLIS-SPOOL 3 {content_len:016x} {content_crc:08x} {:08x} {:08x}\n",
        meta.len(),
        checksum(&[meta])
    );
    debug_assert_eq!(line.len(), HEADER_V3);
    line.into_bytes()
}

/// The first line of a state file holding the metadata line `meta`.
pub(crate) fn header_state(meta: &[u8]) -> Vec<u8> {
    let line = format!(
        "PORTCULLIS-STATE 3 {:08x} {:08x}\n",
        meta.len(),
        checksum(&[meta])
    );
    debug_assert_eq!(line.len(), HEADER_STATE);
    line.into_bytes()
}

/// The first line of a version 2 file whose metadata line and message are `parts` (tests
/// of reading what older versions wrote).
#[cfg(test)]
pub(crate) fn header_v2(parts: &[&[u8]]) -> Vec<u8> {
    let length: usize = parts.iter().map(|p| p.len()).sum();
    let line = format!("PORTCULLIS-SPOOL 2 {length:016x} {:08x}\n", checksum(parts));
    debug_assert_eq!(line.len(), HEADER_V2);
    line.into_bytes()
}

/// The state file of the message whose spool file is `path`.
pub(crate) fn state_path(path: &Path) -> PathBuf {
    path.with_extension("state")
}

/// A queued message: its metadata (the state file's when there is one) and, with
/// `content`, the message as it is delivered (header lines, then content), checked whole.
pub(crate) fn read_queued(queue: &Path, id: &QueueId, content: bool) -> Result<(Entry, Vec<u8>), SpoolError> {
    let path = queue.join(id.as_str());
    let (mut entry, message) = read_spool_file(&path, content)?;
    check_id(&path, &entry, id)?;
    let state = state_path(&path);
    match fs::read(&state) {
        Ok(bytes) => {
            let fresh = parse_state(&bytes, &state)?;
            check_id(&state, &fresh, id)?;
            if fresh.size != entry.size || fresh.head != entry.head || fresh.omit != entry.omit {
                return Err(corrupt(&state, "state file of another message"));
            }
            entry = fresh;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(&state)(e)),
    }
    Ok((entry, message))
}

/// The metadata of the spool file at `path` and, with `content`, its message, checked
/// whole; without, the message is neither read nor checked.
fn read_spool_file(path: &Path, content: bool) -> Result<(Entry, Vec<u8>), SpoolError> {
    let file = fs::File::open(path).map_err(io_err(path))?;
    let file_length = file.metadata().map_err(io_err(path))?.len();
    read_spool(BufReader::new(file), file_length, path, content)
}

/// Parses the bytes of a spool file, checked whole: what recovery does with a file, for
/// tests and the fuzz target (a damaged file must be a clean `Corrupt`, never a panic).
pub fn parse_spool_file(bytes: &[u8]) -> Result<(Entry, Vec<u8>), SpoolError> {
    read_spool(
        std::io::Cursor::new(bytes),
        bytes.len() as u64,
        Path::new("(bytes)"),
        true,
    )
}

fn corrupt(path: &Path, reason: &str) -> SpoolError {
    SpoolError::Corrupt {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// The hex fields of a first line after its magic, or `None` when they are not `widths`
/// hex numbers separated by spaces and ended by a newline.
fn fields(rest: &[u8], widths: &[usize]) -> Option<Vec<u64>> {
    let text = std::str::from_utf8(rest.strip_suffix(b"\n")?).ok()?;
    let parts: Vec<&str> = text.split(' ').collect();
    if parts.len() != widths.len() {
        return None;
    }
    parts
        .iter()
        .zip(widths)
        .map(|(part, width)| {
            (part.len() == *width)
                .then(|| u64::from_str_radix(part, 16).ok())
                .flatten()
        })
        .collect()
}

/// [`read_spool_file`] over any reader of `file_length` octets.
fn read_spool<R: BufRead + Seek>(
    mut reader: R,
    file_length: u64,
    path: &Path,
    content: bool,
) -> Result<(Entry, Vec<u8>), SpoolError> {
    // Never reserve more than the file holds, whatever a damaged line claims.
    let mut first = Vec::new();
    reader
        .by_ref()
        .take(HEADER_V3 as u64)
        .read_until(b'\n', &mut first)
        .map_err(io_err(path))?;
    if let Some(rest) = first.strip_prefix(MAGIC_V3) {
        let f = fields(rest, &[16, 8, 8, 8]).ok_or_else(|| corrupt(path, "not a spool file"))?;
        return read_v3(reader, file_length, path, content, [f[0], f[1], f[2], f[3]]);
    }
    let v2 = if first == MAGIC_V1 {
        None
    } else {
        let rest = first
            .strip_prefix(MAGIC_V2)
            .filter(|_| first.len() == HEADER_V2)
            .ok_or_else(|| corrupt(path, "not a spool file"))?;
        let f = fields(rest, &[16, 8]).ok_or_else(|| corrupt(path, "not a spool file"))?;
        Some((f[0], f[1] as u32))
    };
    read_v1_v2(reader, file_length, path, content, v2)
}

/// The rest of a version 3 file after its first line.
fn read_v3<R: BufRead + Seek>(
    mut reader: R,
    file_length: u64,
    path: &Path,
    content: bool,
    [content_len, content_crc, meta_len, meta_crc]: [u64; 4],
) -> Result<(Entry, Vec<u8>), SpoolError> {
    let fits = (HEADER_V3 as u64)
        .checked_add(content_len)
        .and_then(|n| n.checked_add(meta_len))
        .is_some_and(|end| end <= file_length && meta_len <= MAX_METADATA);
    if !fits {
        return Err(corrupt(path, "file shorter than its lengths (truncated?)"));
    }
    // The metadata first: it says how many header lines go before the content.
    reader
        .seek(SeekFrom::Start(HEADER_V3 as u64 + content_len))
        .map_err(io_err(path))?;
    let mut meta = Vec::with_capacity(meta_len as usize);
    reader
        .by_ref()
        .take(meta_len)
        .read_to_end(&mut meta)
        .map_err(io_err(path))?;
    if meta.len() as u64 != meta_len || checksum(&[&meta]) as u64 != meta_crc {
        return Err(corrupt(
            path,
            "metadata checksum differs (a write a crash cut short?)",
        ));
    }
    let entry: Entry =
        serde_json::from_slice(&meta).map_err(|e| corrupt(path, &format!("bad metadata: {e}")))?;
    if !crate::entry::omit_fits(&entry.omit, content_len)
        || entry.size != entry.head.len() as u64 + content_len - crate::entry::omitted(&entry.omit)
    {
        return Err(corrupt(path, "message length differs from its metadata"));
    }
    if !content {
        return Ok((entry, Vec::new()));
    }
    reader
        .seek(SeekFrom::Start(HEADER_V3 as u64))
        .map_err(io_err(path))?;
    let head = entry.head.len();
    let mut message = Vec::with_capacity(head + content_len as usize);
    message.extend_from_slice(entry.head.as_bytes());
    reader
        .take(content_len)
        .read_to_end(&mut message)
        .map_err(io_err(path))?;
    if message.len() as u64 != head as u64 + content_len {
        return Err(corrupt(path, "file shorter than its content (truncated?)"));
    }
    if checksum(&[&message[head..]]) as u64 != content_crc {
        return Err(corrupt(path, "checksum differs (a write a crash cut short?)"));
    }
    // Fields the host removed are left out, last first so that offsets hold.
    for &(start, end) in entry.omit.iter().rev() {
        message.drain(head + start as usize..head + end as usize);
    }
    Ok((entry, message))
}

/// The rest of a version 1 or 2 file (`v2`: its length and CRC-32) after its first line.
fn read_v1_v2(
    mut reader: impl BufRead,
    file_length: u64,
    path: &Path,
    content: bool,
    v2: Option<(u64, u32)>,
) -> Result<(Entry, Vec<u8>), SpoolError> {
    let mut meta = Vec::new();
    reader
        .by_ref()
        .take(MAX_METADATA)
        .read_until(b'\n', &mut meta)
        .map_err(io_err(path))?;
    let entry: Entry =
        serde_json::from_slice(&meta).map_err(|e| corrupt(path, &format!("bad metadata: {e}")))?;
    if !content {
        return Ok((entry, Vec::new()));
    }
    let mut body = Vec::with_capacity(entry.size.min(file_length) as usize);
    match v2 {
        Some((length, crc)) => {
            // The metadata line and the message; what follows is an earlier file's rest.
            let want = length
                .checked_sub(meta.len() as u64)
                .ok_or_else(|| corrupt(path, "length shorter than the metadata"))?;
            reader.take(want).read_to_end(&mut body).map_err(io_err(path))?;
            if body.len() as u64 != want {
                return Err(corrupt(path, "file shorter than its length (truncated?)"));
            }
            if checksum(&[&meta, &body]) != crc {
                return Err(corrupt(path, "checksum differs (a write a crash cut short?)"));
            }
        }
        None => {
            reader.read_to_end(&mut body).map_err(io_err(path))?;
        }
    }
    if body.len() as u64 != entry.size {
        return Err(corrupt(
            path,
            "message length differs from its metadata (truncated?)",
        ));
    }
    if entry.checksum.is_some_and(|c| c != checksum(&[&body])) {
        return Err(corrupt(path, "message checksum differs from its metadata"));
    }
    Ok((entry, body))
}

/// The metadata in the bytes of a state file.
fn parse_state(bytes: &[u8], path: &Path) -> Result<Entry, SpoolError> {
    let not_state = || corrupt(path, "not a state file");
    let (first, meta) = bytes.split_at_checked(HEADER_STATE).ok_or_else(not_state)?;
    let f = first
        .strip_prefix(MAGIC_STATE)
        .and_then(|rest| fields(rest, &[8, 8]))
        .ok_or_else(not_state)?;
    if meta.len() as u64 != f[0] || checksum(&[meta]) as u64 != f[1] {
        return Err(corrupt(path, "state checksum differs"));
    }
    serde_json::from_slice(meta).map_err(|e| corrupt(path, &format!("bad metadata: {e}")))
}

/// That the file at `path`, read as `id`, names `id`.
pub(crate) fn check_id(path: &Path, entry: &Entry, id: &QueueId) -> Result<(), SpoolError> {
    if entry.id == *id {
        return Ok(());
    }
    Err(corrupt(path, "metadata names another queue id"))
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
