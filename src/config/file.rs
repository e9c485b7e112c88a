//! The config file as written: serde structs that mirror the YAML one to one.
//!
//! Every struct denies unknown keys, so a typo is an error rather than a silent default.
//! Defaults live in named functions so `conf/tidegate.yaml` and the code cannot drift apart
//! unnoticed (the reference config is checked in CI). Validation happens in `build/`.

use std::{collections::BTreeMap, path::PathBuf};

use serde::Deserialize;

use super::duration::HumanDuration;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listeners: Vec<FileListener>,
    #[serde(default)]
    pub admin: FileAdmin,
    #[serde(default)]
    pub state_file: Option<PathBuf>,
    /// Reload when the file changes (directory watch). SIGHUP and the API always work.
    #[serde(default = "default_true")]
    pub config_watch: bool,
    #[serde(default)]
    pub timeouts: FileTimeouts,
    /// Client request hygiene at the edge (header limits, methods).
    #[serde(default)]
    pub http: FileHttp,
    #[serde(default)]
    pub server: FileServer,
    pub routes: Vec<FileRoute>,
    pub pools: BTreeMap<String, FilePool>,
    #[serde(default)]
    pub shutdown: FileShutdown,
}

/// One address tidegate accepts client traffic on.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileListener {
    pub name: String,
    pub address: String,
    /// Accept cleartext HTTP/2 (prior knowledge) next to HTTP/1.1 on a plain listener.
    #[serde(default)]
    pub h2c: bool,
    #[serde(default)]
    pub tls: Option<FileTls>,
}

/// Certificate chain and private key, PEM files.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileTls {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The admin listener.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileAdmin {
    #[serde(default = "default_admin_address")]
    pub address: String,
    #[serde(default)]
    pub token_env: Option<String>,
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    #[serde(default)]
    pub metrics_auth: bool,
}

impl Default for FileAdmin {
    fn default() -> Self {
        Self {
            address: default_admin_address(),
            token_env: None,
            token_file: None,
            metrics_auth: false,
        }
    }
}

fn default_true() -> bool {
    true
}

/// Default admin address: loopback only.
pub fn default_admin_address() -> String {
    "127.0.0.1:9901".into()
}

/// Proxy timeouts, global.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileTimeouts {
    #[serde(default = "default_connect")]
    pub connect: HumanDuration,
    #[serde(default = "default_client_read")]
    pub client_read: HumanDuration,
    #[serde(default)]
    pub upstream_read: HumanDuration,
    #[serde(default = "default_websocket_idle")]
    pub websocket_idle: HumanDuration,
    #[serde(default = "default_upstream_keepalive")]
    pub upstream_keepalive: HumanDuration,
}

impl Default for FileTimeouts {
    fn default() -> Self {
        Self {
            connect: default_connect(),
            client_read: default_client_read(),
            upstream_read: HumanDuration::default(),
            websocket_idle: default_websocket_idle(),
            upstream_keepalive: default_upstream_keepalive(),
        }
    }
}

fn secs(s: u64) -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(s))
}
/// Default upstream connect timeout.
pub fn default_connect() -> HumanDuration {
    secs(5)
}
/// Default client read timeout (pingora's own default).
pub fn default_client_read() -> HumanDuration {
    secs(60)
}
/// Default WebSocket client-silence limit.
pub fn default_websocket_idle() -> HumanDuration {
    secs(3600)
}
/// Default idle time of pooled upstream keep-alive connections.
pub fn default_upstream_keepalive() -> HumanDuration {
    secs(60)
}

/// Client request hygiene: nginx's defaults as the anchor.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileHttp {
    /// Largest request line plus headers, in bytes; above it the answer is 431.
    #[serde(default = "default_max_request_header_bytes")]
    pub max_request_header_bytes: u64,
    /// Forward header names that contain `_` (nginx `underscores_in_headers`); off, they are
    /// dropped so `X_Forwarded_For` cannot pass for `X-Forwarded-For` behind a CGI-style app.
    #[serde(default)]
    pub underscores_in_headers: bool,
    /// Forward `TRACE` requests; off, they get 405.
    #[serde(default)]
    pub allow_trace: bool,
}

impl Default for FileHttp {
    fn default() -> Self {
        Self {
            max_request_header_bytes: default_max_request_header_bytes(),
            underscores_in_headers: false,
            allow_trace: false,
        }
    }
}

/// Default header limit: 32 KiB (nginx's `large_client_header_buffers 4 8k` in total).
pub fn default_max_request_header_bytes() -> u64 {
    32 * 1024
}

/// Process-level settings (not reloadable).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileServer {
    /// Worker threads per listener; 0 = one per CPU.
    #[serde(default)]
    pub threads: usize,
    #[serde(default = "default_upgrade_sock")]
    pub upgrade_sock: PathBuf,
    #[serde(default)]
    pub pid_file: Option<PathBuf>,
}

impl Default for FileServer {
    fn default() -> Self {
        Self {
            threads: 0,
            upgrade_sock: default_upgrade_sock(),
            pid_file: None,
        }
    }
}

/// Default socket for graceful upgrades (absolute: old and new process must agree).
pub fn default_upgrade_sock() -> PathBuf {
    "/tmp/tidegate_upgrade.sock".into()
}

/// A route: a match and a weighted split across pools.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRoute {
    pub name: String,
    #[serde(rename = "match", default)]
    pub matcher: FileMatch,
    pub split: BTreeMap<String, i64>,
    #[serde(default = "default_retries")]
    pub retries: u32,
    #[serde(default)]
    pub hold: FileHold,
    /// Which requests that already reached a backend may be sent again to another one when
    /// that backend closes or resets the connection before any response byte.
    #[serde(default)]
    pub retry_sent: FileRetrySent,
}

/// Retry policy for requests that already reached a backend (nginx's `proxy_next_upstream`
/// default: idempotent methods only).
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum FileRetrySent {
    /// Never send a request twice.
    Never,
    /// GET, HEAD, OPTIONS, TRACE, PUT, DELETE (RFC 9110 idempotent methods).
    #[default]
    Idempotent,
    /// Every method, POST and PATCH included (nginx `non_idempotent`).
    All,
}

/// Default retries on connect failure.
pub fn default_retries() -> u32 {
    2
}

/// What a route matches. Empty means every host and every path.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileMatch {
    #[serde(default = "default_host")]
    pub host: OneOrMany,
    #[serde(default = "default_path_prefix")]
    pub path_prefix: String,
    #[serde(default)]
    pub methods: Option<Vec<String>>,
}

impl Default for FileMatch {
    fn default() -> Self {
        Self {
            host: default_host(),
            path_prefix: default_path_prefix(),
            methods: None,
        }
    }
}

fn default_host() -> OneOrMany {
    OneOrMany::One("*".into())
}
fn default_path_prefix() -> String {
    "/".into()
}

/// `host: "a"` or `host: ["a", "b"]`.
#[derive(Debug)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl<'de> Deserialize<'de> for OneOrMany {
    // Hand-written rather than `#[serde(untagged)]`, whose only error is "data did not match
    // any variant of untagged enum": this one says what was expected and where.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = OneOrMany;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a host pattern or a list of host patterns")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<OneOrMany, E> {
                Ok(OneOrMany::One(v.to_string()))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<OneOrMany, A::Error> {
                let mut v = Vec::new();
                while let Some(s) = a.next_element::<HostString>()? {
                    v.push(s.0);
                }
                Ok(OneOrMany::Many(v))
            }
        }
        d.deserialize_any(V)
    }
}

/// One host pattern in a list.
struct HostString(String);

impl<'de> Deserialize<'de> for HostString {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = HostString;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a host pattern")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<HostString, E> {
                Ok(HostString(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

impl OneOrMany {
    /// The values as a slice-like vec.
    pub fn to_vec(&self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

/// Holding requests while no backend is available.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileHold {
    #[serde(default = "default_hold_timeout")]
    pub timeout: HumanDuration,
    #[serde(default = "default_max_queued")]
    pub max_queued: u32,
}

impl Default for FileHold {
    fn default() -> Self {
        Self {
            timeout: default_hold_timeout(),
            max_queued: default_max_queued(),
        }
    }
}

/// Default hold timeout.
pub fn default_hold_timeout() -> HumanDuration {
    secs(30)
}
/// Default hold queue bound.
pub fn default_max_queued() -> u32 {
    1000
}

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
}

fn default_hc_path() -> String {
    "/".into()
}
fn default_hc_status() -> u16 {
    200
}
fn default_hc_interval() -> HumanDuration {
    secs(2)
}
fn default_hc_timeout() -> HumanDuration {
    secs(1)
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
    secs(1)
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
    secs(30)
}
fn default_streams_deadline() -> HumanDuration {
    secs(3600)
}
fn default_close_spread() -> HumanDuration {
    secs(30)
}

/// Process shutdown timing.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileShutdown {
    #[serde(default = "default_shutdown_delay")]
    pub delay: HumanDuration,
    #[serde(default = "default_shutdown_grace")]
    pub grace: HumanDuration,
}

impl Default for FileShutdown {
    fn default() -> Self {
        Self {
            delay: default_shutdown_delay(),
            grace: default_shutdown_grace(),
        }
    }
}

fn default_shutdown_delay() -> HumanDuration {
    secs(0)
}
fn default_shutdown_grace() -> HumanDuration {
    secs(60)
}
