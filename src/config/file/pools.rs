//! Pools as written: backends, health checks (active and passive), drain deadlines.

use serde::Deserialize;

use crate::config::duration::HumanDuration;

/// A pool: one version of the app.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilePool {
    pub backends: Vec<FileBackend>,
    #[serde(default)]
    pub health_check: Option<FileHealthCheck>,
    /// Passive health for pools without `health_check`: refused or timed-out connects mark
    /// a backend down, and a background probe brings it back.
    #[serde(default)]
    pub passive_health: FilePassiveHealth,
    #[serde(default)]
    pub drain: FileDrain,
    #[serde(default)]
    pub slow_start: HumanDuration,
    #[serde(default)]
    pub state: FileState,
    /// How backends are spoken to: `http1` (default), `h2c` (HTTP/2 without TLS, prior
    /// knowledge), `h2` (HTTP/2 over TLS) or `auto` (TLS, HTTP/2 or 1.1 by ALPN).
    #[serde(default)]
    pub protocol: FileProtocol,
    /// TLS to the backends (implied by `h2` and `auto`).
    #[serde(default)]
    pub tls: Option<FileUpstreamTls>,
    /// HTTP/2 connection reuse.
    #[serde(default)]
    pub h2: FileH2,
}

/// `pools.NAME.protocol`.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum FileProtocol {
    #[default]
    Http1,
    H2c,
    H2,
    Auto,
}

/// `pools.NAME.tls`: TLS to the backends.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileUpstreamTls {
    /// Server name sent and verified; default: the backend address's host name.
    #[serde(default)]
    pub sni: Option<String>,
    /// PEM file of the CA certificates to trust instead of the system roots.
    #[serde(default)]
    pub ca_file: Option<std::path::PathBuf>,
    /// Verify the backend's certificate (default true; false is logged at start).
    #[serde(default = "default_true")]
    pub verify: bool,
    /// Client certificate and key (PEM) for mutual TLS.
    #[serde(default)]
    pub client_cert: Option<std::path::PathBuf>,
    #[serde(default)]
    pub client_key: Option<std::path::PathBuf>,
}

fn default_true() -> bool {
    true
}

/// `pools.NAME.h2`: HTTP/2 connection reuse.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileH2 {
    /// Concurrent streams on one connection before another is opened.
    #[serde(default = "default_max_streams")]
    pub max_streams: u32,
    /// Connections per backend at most; past `max_connections × max_streams` calls in flight
    /// to one backend, tidegate answers 503 (gRPC: UNAVAILABLE) instead of opening more.
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
}

impl Default for FileH2 {
    fn default() -> Self {
        Self {
            max_streams: default_max_streams(),
            max_connections: default_max_connections(),
        }
    }
}

fn default_max_streams() -> u32 {
    100
}

fn default_max_connections() -> u32 {
    16
}

/// Declared state of a pool or backend.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum FileState {
    #[default]
    Active,
    Draining,
}

/// One backend address.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileBackend {
    pub address: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default = "default_weight")]
    pub weight: i64,
    #[serde(default)]
    pub state: FileState,
}

fn default_weight() -> i64 {
    1
}

/// Active health check of a pool's backends.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileHealthCheck {
    #[serde(default = "default_hc_path")]
    pub path: String,
    #[serde(default = "default_hc_status")]
    pub expected_status: u16,
    #[serde(default = "default_hc_interval")]
    pub interval: HumanDuration,
    #[serde(default = "default_hc_timeout")]
    pub timeout: HumanDuration,
    #[serde(default = "default_rise")]
    pub rise: u32,
    #[serde(default = "default_fall")]
    pub fall: u32,
    #[serde(default)]
    pub start_healthy: bool,
    /// Check with gRPC's standard health service (`grpc.health.v1.Health/Check`) instead
    /// of `GET path` (pools speaking HTTP/2).
    #[serde(default)]
    pub grpc: bool,
    /// The service name asked about (`""`: the server as a whole).
    #[serde(default)]
    pub grpc_service: String,
}

fn default_hc_path() -> String {
    "/".into()
}
fn default_hc_status() -> u16 {
    200
}
fn default_hc_interval() -> HumanDuration {
    HumanDuration::from_secs(2)
}
fn default_hc_timeout() -> HumanDuration {
    HumanDuration::from_secs(1)
}
fn default_rise() -> u32 {
    2
}
fn default_fall() -> u32 {
    3
}

/// Passive health: `fall` failed connects in a row mark a backend down; while down it is
/// probed (a TCP connect) every `probe_interval`, doubling up to `probe_max_interval`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilePassiveHealth {
    #[serde(default = "default_passive_fall")]
    pub fall: u32,
    #[serde(default = "default_probe_interval")]
    pub probe_interval: HumanDuration,
    #[serde(default = "default_probe_max_interval")]
    pub probe_max_interval: HumanDuration,
}

impl Default for FilePassiveHealth {
    fn default() -> Self {
        Self {
            fall: default_passive_fall(),
            probe_interval: default_probe_interval(),
            probe_max_interval: default_probe_max_interval(),
        }
    }
}

/// Default failed connects in a row before a backend is down (nginx `max_fails=1`).
pub fn default_passive_fall() -> u32 {
    1
}
/// Default first probe delay of a down backend.
pub fn default_probe_interval() -> HumanDuration {
    HumanDuration(std::time::Duration::from_millis(50))
}
/// Default longest delay between probes of a down backend.
pub fn default_probe_max_interval() -> HumanDuration {
    HumanDuration::from_secs(1)
}

/// Drain deadlines of a pool.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileDrain {
    #[serde(default = "default_requests_deadline")]
    pub requests_deadline: HumanDuration,
    #[serde(default = "default_streams_deadline")]
    pub streams_deadline: HumanDuration,
    #[serde(default = "default_close_spread")]
    pub close_spread: HumanDuration,
}

impl Default for FileDrain {
    fn default() -> Self {
        Self {
            requests_deadline: default_requests_deadline(),
            streams_deadline: default_streams_deadline(),
            close_spread: default_close_spread(),
        }
    }
}

fn default_requests_deadline() -> HumanDuration {
    HumanDuration::from_secs(30)
}
fn default_streams_deadline() -> HumanDuration {
    HumanDuration::from_secs(3600)
}
fn default_close_spread() -> HumanDuration {
    HumanDuration::from_secs(30)
}
