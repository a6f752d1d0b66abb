//! The daemon's plugins: the Wasm engine built once, the configured plugins loaded (and
//! the bundled examples installed first where the config asks for them).

use std::sync::Arc;

use portcullis_runtime::{PluginSet, Runtime, RuntimeConfig};

use crate::config::Config;
use crate::start_error::StartError;

/// Builds the Wasm engine and loads every configured plugin (installing the bundled
/// examples first for the embedded default). Any failure stops the start.
pub fn load_plugins(config: &Config) -> Result<PluginSet, StartError> {
    if config.server.install_example_plugins {
        let dir = config.server.data_dir.join("plugins");
        std::fs::create_dir_all(&dir).map_err(|source| StartError::DataDir {
            path: dir.display().to_string(),
            source,
        })?;
        for (file, bytes) in portcullis_runtime::builtin::ALL {
            let path = dir.join(file);
            if !path.exists() {
                std::fs::write(&path, bytes).map_err(|source| StartError::DataDir {
                    path: path.display().to_string(),
                    source,
                })?;
                tracing::info!(path = %path.display(), "installed a bundled example plugin");
            }
        }
    }
    let max_memory = config.plugins.iter().map(|p| p.memory).max().unwrap_or(1 << 20);
    let runtime = Arc::new(Runtime::new(&RuntimeConfig {
        max_memory,
        instances: PLUGIN_INSTANCES,
        cache_dir: Some(config.server.data_dir.join("plugin-cache")),
    })?);
    Ok(PluginSet::load(runtime, config.plugins.clone())?)
}

/// Whether `path` is an example plugin that `[server] install-example-plugins` writes into
/// `<data-dir>/plugins/` at start when it is missing.
pub fn installs_example_plugin(config: &Config, path: &std::path::Path) -> bool {
    config.server.install_example_plugins
        && path.parent() == Some(config.server.data_dir.join("plugins").as_path())
        && portcullis_runtime::builtin::ALL
            .iter()
            .any(|(file, _)| path.file_name() == Some(std::ffi::OsStr::new(file)))
}

/// Plugin instances that may exist at once: concurrent hook calls beyond this wait for
/// the pool (and fail with the plugin's on-error policy if it stays full).
const PLUGIN_INSTANCES: u32 = 256;

/// One line about a loaded plugin: its hook, name and file, the contract it was built
/// against, and what it may reach beyond the message ("spam: rspamd (rspamd.wasm,
/// portcullis:filter@0.2.0) may connect to tcp:127.0.0.1:11333").
pub fn describe(plugin: &portcullis_runtime::LoadedPlugin) -> String {
    let spec = &plugin.spec;
    let file = spec.path.file_name().map_or_else(
        || spec.path.display().to_string(),
        |f| f.to_string_lossy().into_owned(),
    );
    let mut line = format!(
        "{}: {} ({file}, portcullis:filter@{})",
        spec.hook.name(),
        spec.name,
        plugin.contract().version()
    );
    let grants = spec.grants.describe();
    if grants.is_empty() {
        line.push_str(" reaches nothing beyond the message");
    } else if plugin.contract() == portcullis_runtime::Contract::V0_1 {
        line.push_str(" is granted DNS or connections but cannot use them: they came with 0.2.0");
    } else {
        line.push(' ');
        line.push_str(&grants.join(", "));
    }
    if let Some(dir) = &spec.grant_dir {
        line.push_str(&format!("; reads {} as /data", dir.display()));
    }
    line
}
