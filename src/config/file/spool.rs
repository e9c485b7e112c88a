//! The spool as written: per-route `spool:` and the top-level `spool_store:`.

use std::path::PathBuf;

use serde::Deserialize;

use crate::config::duration::HumanDuration;

/// `routes[i].spool`: store matching requests while the route has no backend, replay later.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSpool {
    #[serde(default = "default_spool_methods")]
    pub methods: Vec<String>,
    /// Largest body stored, in bytes (a larger one is a 413).
    #[serde(default = "default_spool_max_body")]
    pub max_body: u64,
    /// Items the route's spool holds at most, pending and dead (then 503 + Retry-After).
    #[serde(default = "default_spool_max_items")]
    pub max_items: u64,
    #[serde(default)]
    pub replay: FileReplay,
}

/// How spooled items are sent again.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileReplay {
    /// Attempts before an item is dead (kept for an operator).
    #[serde(default = "default_replay_max_attempts")]
    pub max_attempts: u32,
    /// Wait after the first failed attempt; doubles up to `max_backoff`.
    #[serde(default = "default_replay_backoff")]
    pub backoff: HumanDuration,
    #[serde(default = "default_replay_max_backoff")]
    pub max_backoff: HumanDuration,
    /// Items sent at once; 1 keeps arrival order strict.
    #[serde(default = "default_replay_concurrency")]
    pub concurrency: u32,
    /// Longest wait for a backend's answer to one replayed item.
    #[serde(default = "default_replay_timeout")]
    pub timeout: HumanDuration,
}

impl Default for FileReplay {
    fn default() -> Self {
        Self {
            max_attempts: default_replay_max_attempts(),
            backoff: default_replay_backoff(),
            max_backoff: default_replay_max_backoff(),
            concurrency: default_replay_concurrency(),
            timeout: default_replay_timeout(),
        }
    }
}

pub fn default_spool_methods() -> Vec<String> {
    vec!["POST".into()]
}
pub fn default_spool_max_body() -> u64 {
    1024 * 1024
}
pub fn default_spool_max_items() -> u64 {
    100_000
}
pub fn default_replay_max_attempts() -> u32 {
    10
}
pub fn default_replay_backoff() -> HumanDuration {
    HumanDuration::from_secs(1)
}
pub fn default_replay_max_backoff() -> HumanDuration {
    HumanDuration::from_secs(60)
}
pub fn default_replay_concurrency() -> u32 {
    1
}
pub fn default_replay_timeout() -> HumanDuration {
    HumanDuration::from_secs(30)
}

/// `spool_store`: the embedded file (default: `spool.db` next to `state_file`), or a
/// PostgreSQL database shared by a fleet of proxies.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSpoolStore {
    /// The embedded store's file.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// A `postgres://` URL (keep passwords out of it: use `postgres_env` or `postgres_file`).
    #[serde(default)]
    pub postgres: Option<String>,
    /// An environment variable holding the URL.
    #[serde(default)]
    pub postgres_env: Option<String>,
    /// A file holding the URL.
    #[serde(default)]
    pub postgres_file: Option<PathBuf>,
}

/// `control_store`: the fleet's runtime overrides, heartbeats and ramp lease on PostgreSQL.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileControlStore {
    /// A `postgres://` URL (keep passwords out of it: use `postgres_env` or `postgres_file`).
    #[serde(default)]
    pub postgres: Option<String>,
    /// An environment variable holding the URL.
    #[serde(default)]
    pub postgres_env: Option<String>,
    /// A file holding the URL.
    #[serde(default)]
    pub postgres_file: Option<PathBuf>,
    /// This proxy's name in the fleet (default: the host name and the admin port).
    #[serde(default)]
    pub node: Option<String>,
    /// A proxy whose heartbeat is older is reported as lost.
    #[serde(default = "default_control_ttl")]
    pub heartbeat_ttl: HumanDuration,
    /// The whole state is read again this often, notifications or not.
    #[serde(default = "default_control_resync")]
    pub resync: HumanDuration,
}

pub fn default_control_ttl() -> HumanDuration {
    HumanDuration::from_secs(5)
}
pub fn default_control_resync() -> HumanDuration {
    HumanDuration::from_secs(2)
}
