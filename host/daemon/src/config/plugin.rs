//! `[[plugin]]`: one plugin on one hook, and how its section becomes a [`PluginSpec`].

use std::path::{Path, PathBuf};
use std::time::Duration;

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
        if p.timeout.0.is_zero() {
            problems.push(&key("timeout"), "must be more than zero".into());
        }
        if p.memory.as_u64() < (1 << 20) || p.memory.as_u64() > (4 << 30) {
            problems.push(&key("memory"), "must be between 1MiB and 4GiB".into());
        }
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
        });
    }
    specs
}
