//! `[rate]`: where the rate counters live (this process, or Redis shared by several nodes).

use serde::Deserialize;

use super::Problems;

/// `[rate]`, as written.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RateSection {
    /// `"memory"` (the default: this process) or a Redis URL (`redis://127.0.0.1:6379/0`,
    /// `redis+unix:///run/redis/redis.sock`), shared by every node that names it.
    pub store: Option<String>,
    /// What a message meets while the Redis store cannot be reached. Default: defer.
    pub on_store_error: Option<OnStoreError>,
}

/// `[rate] on-store-error`: what a message meets while the shared store cannot be reached.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnStoreError {
    /// 451: try again later (the default: a sender is never let past a limit it may have
    /// reached on another node).
    #[default]
    Defer,
    /// Count in this node's memory until the store is back (each node then allows the
    /// whole limit).
    Local,
}

/// `[rate]`, validated.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RateSettings {
    /// `store`: `None` is this process's memory; `Some` a Redis URL (its details are
    /// checked when the store is built, at start and by check-config).
    pub redis: Option<String>,
    /// `on-store-error`.
    pub on_store_error: OnStoreError,
}

/// Validates `[rate]`.
pub(super) fn settings(section: RateSection, problems: &mut Problems<'_>) -> RateSettings {
    let redis = match section.store.as_deref() {
        None | Some("memory") => None,
        Some(url)
            if ["redis://", "rediss://", "redis+unix://", "unix://"]
                .iter()
                .any(|s| url.starts_with(s)) =>
        {
            Some(url.to_string())
        }
        Some(other) => {
            problems.push(
                "rate.store",
                format!("{other:?}: \"memory\" or a Redis URL such as \"redis://127.0.0.1:6379/0\""),
            );
            None
        }
    };
    RateSettings {
        redis,
        on_store_error: section.on_store_error.unwrap_or_default(),
    }
}
