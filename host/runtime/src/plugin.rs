//! What a plugin is to the host: its errors and the checks applied to everything it
//! returns (its spec and failure policy are in [`crate::spec`], re-exported here).

use std::time::Duration;

use portcullis_smtp::{Enhanced, Hook, Reply, Verdict};

use crate::bindings::types;
pub use crate::spec::{OnError, PluginSpec};

/// The WIT world a plugin for `hook` must target.
pub fn world(hook: Hook) -> &'static str {
    match hook {
        Hook::Auth => "auth-plugin",
        Hook::Rate => "rate-plugin",
        Hook::Virus => "virus-plugin",
        Hook::Spam => "spam-plugin",
    }
}

/// Most entries looked at under a granted directory.
const MAX_GRANTED_ENTRIES: usize = 10_000;

/// Checks that a granted directory holds nothing but directories and regular files (and
/// symbolic links to them). WASI opens files with a blocking `open(2)` on a host thread: a
/// FIFO there would hold that thread forever on every call that opens it, and a device or
/// socket has no business in a plugin's data. Run at load and before every call.
pub fn check_granted(dir: &std::path::Path) -> Result<(), String> {
    let mut pending = vec![dir.to_path_buf()];
    let mut seen = 0usize;
    while let Some(current) = pending.pop() {
        let entries = std::fs::read_dir(&current).map_err(|e| format!("{}: {e}", current.display()))?;
        for entry in entries {
            let path = entry.map_err(|e| format!("{}: {e}", current.display()))?.path();
            seen += 1;
            if seen > MAX_GRANTED_ENTRIES {
                return Err(format!(
                    "{}: more than {MAX_GRANTED_ENTRIES} entries; grant a smaller directory",
                    dir.display()
                ));
            }
            // Through symbolic links: what the plugin would open.
            let kind = std::fs::metadata(&path)
                .map_err(|e| format!("{}: {e}", path.display()))?
                .file_type();
            if kind.is_dir() {
                pending.push(path);
            } else if !kind.is_file() {
                return Err(format!(
                    "{} is not a regular file or directory (a FIFO, socket or device): only files and directories may be granted",
                    path.display()
                ));
            }
        }
    }
    Ok(())
}

/// Why a plugin call produced no usable answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PluginError {
    /// The plugin trapped (a panic, `unreachable`, stack overflow, a host function refusal).
    #[error("trap: {0}")]
    Trap(String),
    /// The call ran past its time limit.
    #[error("timeout after {0:?}")]
    Timeout(Duration),
    /// The plugin asked for more memory than its cap.
    #[error("memory cap of {0} bytes exceeded")]
    Memory(usize),
    /// The result broke the contract (too many headers, a bad account name, ...).
    #[error("malformed result: {0}")]
    Malformed(String),
    /// The plugin reported that it could not do its work.
    #[error("plugin failure: {0}")]
    Failed(String),
    /// No instance could be created (for example the instance pool is exhausted).
    #[error("cannot instantiate: {0}")]
    Unavailable(String),
}

impl PluginError {
    /// A short kind for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            PluginError::Trap(_) => "trap",
            PluginError::Timeout(_) => "timeout",
            PluginError::Memory(_) => "memory",
            PluginError::Malformed(_) => "malformed",
            PluginError::Failed(_) => "failed",
            PluginError::Unavailable(_) => "unavailable",
        }
    }
}

/// Most headers one verdict may add.
pub const MAX_HEADERS: usize = 20;
const MAX_HEADER_VALUE: usize = 1000;
const MAX_REPLY_TEXT: usize = 200;

/// Checks and converts headers a plugin asks to add.
pub fn headers(list: Vec<types::Header>) -> Result<Vec<portcullis_smtp::session::Header>, PluginError> {
    if list.len() > MAX_HEADERS {
        return Err(PluginError::Malformed(format!(
            "{} headers (at most {MAX_HEADERS})",
            list.len()
        )));
    }
    list.into_iter()
        .map(|h| {
            if h.value.len() > MAX_HEADER_VALUE {
                return Err(PluginError::Malformed(format!(
                    "header {} longer than {MAX_HEADER_VALUE}",
                    truncate(&h.name, 80)
                )));
            }
            portcullis_smtp::session::Header::sanitized(&h.name, &h.value)
                .ok_or_else(|| PluginError::Malformed(format!("bad header name {:?}", truncate(&h.name, 80))))
        })
        .collect()
}

/// Header fields no plugin may remove: the trace and the authentication record, which the
/// next hops and the reader's filters rely on.
pub const PROTECTED_FIELDS: [&str; 5] = [
    "Received",
    "Return-Path",
    "Delivered-To",
    "Authentication-Results",
    "DKIM-Signature",
];

/// Checks the names of header fields a plugin asks to remove: at most [`MAX_HEADERS`],
/// each a valid field name, none protected ([`PROTECTED_FIELDS`] and every `ARC-` field).
/// Duplicates are dropped.
pub fn removals(names: Vec<String>) -> Result<Vec<String>, PluginError> {
    if names.len() > MAX_HEADERS {
        return Err(PluginError::Malformed(format!(
            "{} header names to remove (at most {MAX_HEADERS})",
            names.len()
        )));
    }
    let mut checked: Vec<String> = Vec::with_capacity(names.len());
    for name in names {
        if portcullis_smtp::session::Header::sanitized(&name, "").is_none() {
            return Err(PluginError::Malformed(format!(
                "bad header name to remove {:?}",
                truncate(&name, 80)
            )));
        }
        let protected = PROTECTED_FIELDS.iter().any(|p| p.eq_ignore_ascii_case(&name))
            || name
                .get(..4)
                .is_some_and(|prefix| prefix.eq_ignore_ascii_case("ARC-"));
        if protected {
            return Err(PluginError::Malformed(format!(
                "{name} header fields may not be removed"
            )));
        }
        if !checked.iter().any(|n| n.eq_ignore_ascii_case(&name)) {
            checked.push(name);
        }
    }
    Ok(checked)
}

fn truncate(text: &str, max: usize) -> String {
    text.chars().take(max).collect()
}

/// Converts a plugin's reply, keeping the wire clean: one line, printable, bounded, and an
/// enhanced code only when its class matches the reply code.
pub fn reply(r: types::Reply) -> Reply {
    let text: String = r
        .text
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_REPLY_TEXT)
        .collect();
    let class = (r.code / 100) as u8;
    let enhanced = r
        .enhanced
        .filter(|e| e.class == class)
        .map(|e| Enhanced(e.class, e.subject, e.detail));
    let text = if text.trim().is_empty() {
        "Refused by policy".to_string()
    } else {
        text
    };
    Reply::new(r.code, enhanced, text)
}

/// Converts a verdict; `headers` are added on accept and junk.
pub fn verdict(v: types::Verdict, headers: Vec<portcullis_smtp::session::Header>) -> Verdict {
    match v {
        types::Verdict::Accept if headers.is_empty() => Verdict::Accept,
        types::Verdict::Accept => Verdict::Tag(headers),
        types::Verdict::Junk => Verdict::Junk(headers),
        types::Verdict::Reject(r) => Verdict::Reject(reply(r)),
        types::Verdict::Defer(r) => Verdict::Defer(reply(r)),
        types::Verdict::Discard => Verdict::Discard,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn removals_keep_valid_names_once() {
        let checked = removals(names(&["X-Spam-Flag", "x-spam-flag", "Subject"])).unwrap();
        assert_eq!(checked, ["X-Spam-Flag", "Subject"]);
    }

    #[test]
    fn removals_never_touch_trace_or_authentication_fields() {
        for name in [
            "Received",
            "return-path",
            "Delivered-To",
            "AUTHENTICATION-RESULTS",
            "DKIM-Signature",
            "ARC-Seal",
            "arc-message-signature",
        ] {
            let e = removals(names(&["X-Ok", name])).unwrap_err();
            assert_eq!(e.kind(), "malformed", "{name}");
        }
    }

    #[test]
    fn removals_are_bounded_and_well_formed() {
        let many: Vec<String> = (0..=MAX_HEADERS).map(|i| format!("X-{i}")).collect();
        assert!(removals(many).is_err());
        assert!(removals(names(&["Bad Name"])).is_err());
        assert!(removals(names(&["X-Colon:"])).is_err());
        assert!(removals(names(&[""])).is_err());
    }
}
