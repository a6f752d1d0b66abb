//! `[[plugin]]`: one plugin on one hook, and how its section becomes a [`PluginSpec`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use portcullis_runtime::capability::{Endpoint, Grants};
use portcullis_runtime::{Hook, OnError, PluginSpec};
use serde::Deserialize;

use super::{Problems, Size, Span, resolve};

/// One `[[plugin]]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct PluginSection {
    /// `"auth"`, `"rate"`, `"virus"` or `"spam"`. Required.
    pub hook: String,
    /// The component file (`.wasm`). Required.
    pub path: PathBuf,
    /// A name for logs. Default: the file name without `.wasm`.
    pub name: Option<String>,
    /// Time limit of one call, instantiation included. Default: `"2s"`.
    #[serde(default = "default_plugin_timeout")]
    pub timeout: Span,
    /// Cap of each of its linear memories. Default: `"128MiB"`.
    #[serde(default = "default_plugin_memory")]
    pub memory: Size,
    /// `"defer"` (451 4.3.0), `"accept"` or `"reject"` when it fails. Default: `"defer"`.
    #[serde(default = "default_on_error")]
    pub on_error: String,
    /// A directory the plugin may read, seen as `/data` inside. Default: none.
    pub grant_dir: Option<PathBuf>,
    /// DNS lookups through the host's resolver (contract 0.2.0). Default: `false`.
    #[serde(default)]
    pub grant_dns: bool,
    /// Most DNS lookups per call. Default: 100.
    #[serde(default = "default_dns_lookups")]
    pub dns_lookups: u32,
    /// Endpoints it may open a connection to (`"unix:/path"`, `"tcp:IP:PORT"`; contract
    /// 0.2.0). Default: none.
    #[serde(default)]
    pub grant_connect: Vec<String>,
    /// Most octets read and written over its connections per call. Default: `"64MiB"`.
    #[serde(default = "default_connect_bytes")]
    pub connect_bytes: Size,
    /// Auth plugins only: how long an accept of this plugin is remembered (as the users
    /// file's are for `[auth] cache-ttl`), such as `"5m"`. Default: none — the plugin
    /// decides every time.
    pub cache: Option<Span>,
    /// The plugin's own settings, passed to it as JSON. Default: empty.
    #[serde(default)]
    pub config: toml::Table,
}

fn default_plugin_timeout() -> Span {
    Span(Duration::from_secs(2))
}
fn default_plugin_memory() -> Size {
    Size::mib(128)
}
fn default_on_error() -> String {
    "defer".into()
}
fn default_dns_lookups() -> u32 {
    portcullis_runtime::capability::DEFAULT_DNS_LOOKUPS
}
fn default_connect_bytes() -> Size {
    Size::mib(portcullis_runtime::capability::DEFAULT_CONNECT_BYTES >> 20)
}

/// The capabilities of a section, with their problems recorded.
fn grants(p: &PluginSection, key: &dyn Fn(&str) -> String, problems: &mut Problems<'_>) -> Grants {
    if !(1..=10_000).contains(&p.dns_lookups) {
        problems.push(&key("dns-lookups"), "must be between 1 and 10000".into());
    }
    if p.connect_bytes.as_u64() == 0 {
        problems.push(&key("connect-bytes"), "must be more than zero".into());
    }
    let mut connect = Vec::new();
    for text in &p.grant_connect {
        match Endpoint::parse(text) {
            Ok(endpoint) if connect.contains(&endpoint) => {
                problems.push(&key("grant-connect"), format!("{endpoint} is listed twice"));
            }
            Ok(endpoint) => connect.push(endpoint),
            Err(e) => problems.push(&key("grant-connect"), e),
        }
    }
    Grants {
        dns: p.grant_dns,
        dns_lookups: p.dns_lookups,
        connect,
        connect_bytes: p.connect_bytes.as_u64(),
    }
}

/// The sections as specs, in config order, with their problems recorded; a section with a
/// problem gives no spec.
pub fn specs(sections: Vec<PluginSection>, base: &Path, problems: &mut Problems<'_>) -> Vec<PluginSpec> {
    let mut specs = Vec::new();
    for (i, p) in sections.into_iter().enumerate() {
        let key = |k: &str| format!("plugin[{i}].{k}");
        let before = problems.count();
        let hook = Hook::parse(&p.hook);
        if hook.is_none() {
            problems.push(
                &key("hook"),
                format!(
                    "{:?} is not one of \"auth\", \"rate\", \"virus\", \"spam\"",
                    p.hook
                ),
            );
        }
        let on_error = OnError::parse(&p.on_error);
        if on_error.is_none() {
            problems.push(
                &key("on-error"),
                format!("{:?} is not one of \"defer\", \"accept\", \"reject\"", p.on_error),
            );
        }
        if hook == Some(Hook::Auth) && on_error == Some(OnError::Accept) {
            problems.push(
                &key("on-error"),
                "an auth plugin that fails must never let a client in".into(),
            );
        }
        if p.cache.is_some() && hook != Some(Hook::Auth) {
            problems.push(
                &key("cache"),
                "only an auth plugin's accepts can be remembered".into(),
            );
        }
        if p.timeout.0.is_zero() {
            problems.push(&key("timeout"), "must be more than zero".into());
        }
        if p.memory.as_u64() < (1 << 20) || p.memory.as_u64() > (4 << 30) {
            problems.push(&key("memory"), "must be between 1MiB and 4GiB".into());
        }
        let grants = grants(&p, &key, problems);
        let config = match serde_json::to_value(&p.config) {
            Ok(serde_json::Value::Object(map)) => Some(map),
            _ => {
                problems.push(&key("config"), "must be a table".into());
                None
            }
        };
        let (Some(hook), Some(on_error), Some(config)) = (hook, on_error, config) else {
            continue;
        };
        if problems.count() > before {
            continue;
        }
        let path = resolve(base, &p.path);
        let name = p.name.unwrap_or_else(|| {
            path.file_stem()
                .map_or_else(|| format!("plugin{i}"), |s| s.to_string_lossy().into_owned())
        });
        specs.push(PluginSpec {
            name,
            hook,
            path,
            timeout: p.timeout.0,
            memory: p.memory.as_u64() as usize,
            on_error,
            config,
            grant_dir: p.grant_dir.map(|d| resolve(base, &d)),
            grants,
            cache: p.cache.map(|span| span.0).filter(|ttl| !ttl.is_zero()),
        });
    }
    specs
}
