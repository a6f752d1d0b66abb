//! What the host gives a plugin instance: its store data, its limits, and the
//! implementations of the imports every plugin world shares (log, config, clock, message).

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::capability::{Counters, Grants, Resolver, Usage};

/// Lines a plugin may log per call; more are dropped (a plugin cannot flood the log).
const MAX_LOG_LINES: u32 = 100;
/// Characters kept of one log line.
const MAX_LOG_LINE: usize = 1000;
/// The largest chunk `message.read` returns.
const MAX_READ: u32 = 1 << 20;

/// The plugin's identity and configuration, shared by all its instances.
#[derive(Debug)]
pub struct PluginMeta {
    /// The plugin's name from the config.
    pub name: String,
    /// The first 12 hex digits of the SHA-256 of its file.
    pub hash: String,
    /// Its `[plugin.config]` table as JSON text.
    pub config_json: String,
    /// The same table, for `config.get`.
    pub config: serde_json::Map<String, serde_json::Value>,
    /// What the operator granted it beyond the message.
    pub grants: Grants,
    /// What its calls used of those grants, for the metrics.
    pub counters: Counters,
}

/// The message as a plugin sees it: the content as received, headers parsed on demand,
/// behind the header fields the host and earlier hooks added to it (which `headers` lists
/// first, as they will stand in the delivered message; `read` gives the content as it came).
pub struct MessageHandle {
    message: Arc<portcullis_smtp::Message>,
    added: Vec<portcullis_smtp::session::Header>,
}

impl MessageHandle {
    /// Wraps a received message and the header fields added to it so far.
    pub fn new(message: Arc<portcullis_smtp::Message>, added: Vec<portcullis_smtp::session::Header>) -> Self {
        MessageHandle { message, added }
    }
}

/// Per-instance memory and table caps, and whether one was hit (to tell a memory failure
/// from any other trap).
#[derive(Debug)]
pub struct MemoryLimit {
    memory: usize,
    /// Set when the plugin asked for more memory than allowed.
    pub memory_denied: bool,
}

impl MemoryLimit {
    /// A cap of `memory` bytes per linear memory.
    pub fn new(memory: usize) -> Self {
        MemoryLimit {
            memory,
            memory_denied: false,
        }
    }
}

impl ResourceLimiter for MemoryLimit {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory {
            self.memory_denied = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

/// The data of one store: one plugin instance, one hook call.
pub struct State {
    wasi: WasiCtx,
    /// Host resources handed to the guest (the message).
    pub table: ResourceTable,
    /// Memory caps.
    pub limits: MemoryLimit,
    pub(crate) meta: Arc<PluginMeta>,
    log_lines: u32,
    /// What this call used of its grants.
    pub(crate) usage: Usage,
    /// The host's resolver, for a plugin granted DNS.
    pub(crate) resolver: Option<Arc<Resolver>>,
}

impl State {
    /// A fresh state: WASI with nothing granted (no files, sockets, environment or
    /// arguments; clocks that read zero), unless `wasi` was built otherwise by the caller.
    pub fn new(meta: Arc<PluginMeta>, wasi: WasiCtx, memory: usize, resolver: Option<Arc<Resolver>>) -> Self {
        State {
            wasi,
            table: ResourceTable::new(),
            limits: MemoryLimit::new(memory),
            meta,
            log_lines: 0,
            usage: Usage::default(),
            resolver,
        }
    }
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// The header section of a message as unfolded fields, as `(name, value)`.
fn parse_headers(content: &[u8]) -> Vec<(String, String)> {
    portcullis_smtp::fields::fields(content)
        .into_iter()
        .map(|field| (String::from_utf8_lossy(field.name).into_owned(), field.value()))
        .collect()
}

impl MessageHandle {
    /// The header fields a plugin sees: those added so far, then the message's own.
    fn header_pairs(&self) -> Vec<(String, String)> {
        let added = self.added.iter().map(|h| (h.name.clone(), h.value.clone()));
        added
            .chain(parse_headers(&self.message.body.header_section()))
            .collect()
    }

    /// Up to `max` octets of the content from `offset` on (see `message.read`).
    fn read(&self, offset: u64, max: u32) -> wasmtime::Result<Vec<u8>> {
        // Only what is there: a plugin asking for a megabyte of a 10 KiB message must not
        // cost a megabyte of zeroed memory.
        let body = &self.message.body;
        let wanted = u64::from(max.min(MAX_READ));
        if let Some(bytes) = body.in_memory() {
            let start = usize::try_from(offset).unwrap_or(usize::MAX).min(bytes.len());
            let end = start.saturating_add(wanted as usize).min(bytes.len());
            return Ok(bytes[start..end].to_vec());
        }
        let available = body.len().saturating_sub(offset);
        let mut buf = vec![0; wanted.min(available) as usize];
        if buf.is_empty() {
            return Ok(buf);
        }
        let n = body
            .read_at(offset, &mut buf)
            .map_err(|e| wasmtime::Error::msg(format!("cannot read the message's spooled content: {e}")))?;
        buf.truncate(n);
        Ok(buf)
    }

    /// The message's MIME structure (parsed once per message, whoever asks first).
    pub(crate) fn structure(
        &self,
    ) -> Result<Arc<portcullis_smtp::mime::Structure>, portcullis_smtp::mime::MimeError> {
        self.message.structure()
    }

    /// Up to `max` octets of part `part`'s decoded content from `offset` on (see
    /// `message.read-part`).
    pub(crate) fn read_part(&self, part: u32, offset: u64, max: u32) -> Vec<u8> {
        let Ok(structure) = self.structure() else {
            return Vec::new();
        };
        let Some(part) = structure.parts.get(part as usize) else {
            return Vec::new();
        };
        let content = &part.content;
        let start = usize::try_from(offset).unwrap_or(usize::MAX).min(content.len());
        let end = start
            .saturating_add(max.min(MAX_READ) as usize)
            .min(content.len());
        content[start..end].to_vec()
    }
}

impl State {
    fn log_line(&mut self, level: tracing::Level, message: String) {
        self.log_lines += 1;
        if self.log_lines > MAX_LOG_LINES {
            return;
        }
        let cut: String = message.chars().take(MAX_LOG_LINE).collect();
        // A plugin's line may carry what a client sent: control characters are shown as
        // escapes, never written raw.
        let mut message = portcullis_smtp::escape::Escaped(&cut).to_string();
        if self.log_lines == MAX_LOG_LINES {
            message.push_str(" (further lines of this call dropped)");
        }
        let (name, hash) = (&self.meta.name, &self.meta.hash);
        match level {
            tracing::Level::TRACE => tracing::trace!(plugin = %name, hash = %hash, "{message}"),
            tracing::Level::DEBUG => tracing::debug!(plugin = %name, hash = %hash, "{message}"),
            tracing::Level::INFO => tracing::info!(plugin = %name, hash = %hash, "{message}"),
            tracing::Level::WARN => tracing::warn!(plugin = %name, hash = %hash, "{message}"),
            tracing::Level::ERROR => tracing::error!(plugin = %name, hash = %hash, "{message}"),
        }
    }

    fn config_get(&self, key: &str) -> Option<String> {
        self.meta.config.get(key).map(|value| match value {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        })
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The imports every version of the contract shares (types' message, log, config, clock),
/// implemented once for the bindings of each version: their types are distinct, their
/// behaviour is the same.
macro_rules! shared_imports {
    ($filter:path) => {
        shared_imports!($filter, {});
    };
    ($filter:path, { $($since_0_2:item)* }) => {
        const _: () = {
            use filter::{clock, config, log, types};
            use wasmtime::component::Resource;
            use $filter as filter;

            impl types::Host for State {}

            impl types::HostMessage for State {
                fn size(&mut self, this: Resource<MessageHandle>) -> u64 {
                    self.table.get(&this).map_or(0, |m| m.message.body.len())
                }

                fn headers(&mut self, this: Resource<MessageHandle>) -> Vec<types::Header> {
                    self.table.get(&this).map_or_else(
                        |_| Vec::new(),
                        |m| {
                            m.header_pairs()
                                .into_iter()
                                .map(|(name, value)| types::Header { name, value })
                                .collect()
                        },
                    )
                }

                fn read(
                    &mut self,
                    this: Resource<MessageHandle>,
                    offset: u64,
                    max: u32,
                ) -> wasmtime::Result<Vec<u8>> {
                    match self.table.get(&this) {
                        Ok(handle) => handle.read(offset, max),
                        Err(_) => Ok(Vec::new()),
                    }
                }

                fn drop(&mut self, this: Resource<MessageHandle>) -> wasmtime::Result<()> {
                    self.table.delete(this)?;
                    Ok(())
                }

                $($since_0_2)*
            }

            impl log::Host for State {
                fn log(&mut self, level: log::Level, message: String) {
                    let level = match level {
                        log::Level::Trace => tracing::Level::TRACE,
                        log::Level::Debug => tracing::Level::DEBUG,
                        log::Level::Info => tracing::Level::INFO,
                        log::Level::Warn => tracing::Level::WARN,
                        log::Level::Error => tracing::Level::ERROR,
                    };
                    self.log_line(level, message);
                }
            }

            impl config::Host for State {
                fn json(&mut self) -> String {
                    self.meta.config_json.clone()
                }

                fn get(&mut self, key: String) -> Option<String> {
                    self.config_get(&key)
                }
            }

            impl clock::Host for State {
                fn now(&mut self) -> u64 {
                    now()
                }
            }
        };
    };
}

shared_imports!(crate::bindings::virus::portcullis::filter, {
    fn parts(&mut self, this: Resource<MessageHandle>) -> Result<Vec<types::MimePart>, types::PartsError> {
        use portcullis_smtp::mime::MimeError;
        let handle = self
            .table
            .get(&this)
            .map_err(|e| types::PartsError::Unreadable(e.to_string()))?;
        let structure = handle.structure().map_err(|e| match e {
            MimeError::NestedTooDeep => types::PartsError::NestedTooDeep,
            MimeError::TooLarge(_) => types::PartsError::TooLarge,
            MimeError::Unreadable(why) => types::PartsError::Unreadable(why),
        })?;
        Ok(structure
            .parts
            .iter()
            .enumerate()
            .map(|(index, part)| types::MimePart {
                index: index as u32,
                parent: part.parent,
                content_type: part.content_type.clone(),
                charset: part.charset.clone(),
                disposition: part.disposition.clone(),
                filename: part.filename.clone(),
                size: part.content.len() as u64,
                problem: part.problem,
            })
            .collect())
    }

    fn read_part(&mut self, this: Resource<MessageHandle>, part: u32, offset: u64, max: u32) -> Vec<u8> {
        self.table
            .get(&this)
            .map_or_else(|_| Vec::new(), |handle| handle.read_part(part, offset, max))
    }
});
shared_imports!(crate::bindings::v1::virus::portcullis::filter);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_unfolded() {
        let fields = parse_headers(b"Subject: a\r\n long\r\nFrom: x@y\r\n\r\nBody: not a header\r\n");
        let pairs: Vec<(&str, &str)> = fields
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_str()))
            .collect();
        assert_eq!(pairs, [("Subject", "a long"), ("From", "x@y")]);
    }
}
