//! The config file as written: serde structs that mirror the YAML one to one.
//!
//! Every struct denies unknown keys, so a typo is an error rather than a silent default.
//! Defaults live in named functions so `conf/tidegate.yaml` and the code cannot drift apart
//! unnoticed (the reference config is checked in CI). Validation happens in `build/`.
//! Routes are in `routes.rs`, pools in `pools.rs`.

mod affinity;
mod log;
mod pools;
mod routes;
mod spool;

pub use affinity::*;
pub use log::*;
pub use pools::*;
pub use routes::*;
pub use spool::*;

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
    /// How often backend host names are resolved again; `0` = never.
    #[serde(default = "default_resolve_interval")]
    pub resolve_interval: HumanDuration,
    #[serde(default)]
    pub spool_store: Option<FileSpoolStore>,
    /// Shared runtime state of a fleet of proxies (PostgreSQL).
    #[serde(default)]
    pub control_store: Option<FileControlStore>,
    /// Bytes of spooled request bodies held in memory at once, over every route.
    #[serde(default = "default_spool_buffer")]
    pub spool_buffer: u64,
    /// One line per request (on by default: JSON lines on stdout).
    #[serde(default)]
    pub access_log: FileAccessLog,
    /// W3C Trace Context: started for requests without one, when asked.
    #[serde(default)]
    pub trace: FileTrace,
}

/// Default: 64 MiB of spooled bodies in memory at once.
pub fn default_spool_buffer() -> u64 {
    64 * 1024 * 1024
}

/// Default: resolve backend names again every 5 s.
pub fn default_resolve_interval() -> HumanDuration {
    HumanDuration::from_secs(5)
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
    /// On a plain listener: answer every request (but ACME HTTP-01 challenges) with a 308
    /// to the same host, path and query over HTTPS.
    #[serde(default)]
    pub redirect_https: bool,
    /// The port in those redirects (default: none, i.e. 443).
    #[serde(default)]
    pub https_port: Option<u16>,
}

/// A TLS listener's certificates (PEM files), chosen by SNI, and its HSTS header.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileTls {
    /// The default certificate (for names no other pair claims, and for no SNI).
    #[serde(default)]
    pub cert: Option<PathBuf>,
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// More pairs, each served for the DNS names in its certificate.
    #[serde(default)]
    pub certificates: Vec<FileCertPair>,
    #[serde(default)]
    pub hsts: Option<FileHsts>,
    /// Certificates from an ACME directory (Let's Encrypt by default).
    #[serde(default)]
    pub acme: Option<FileAcme>,
}

/// `listeners[i].tls.acme`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileAcme {
    /// Names on one certificate (ordered together, renewed together).
    #[serde(default)]
    pub domains: Vec<String>,
    /// Directory URL; default Let's Encrypt (`staging: true`: its staging directory).
    #[serde(default)]
    pub directory: Option<String>,
    #[serde(default)]
    pub staging: bool,
    /// Account contact (`mailto:` added).
    #[serde(default)]
    pub email: Option<String>,
    /// CA certificate (PEM) to trust for the directory's own HTTPS (test directories).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// `http-01` (default; answered on plain listeners) or `tls-alpn-01`.
    #[serde(default)]
    pub challenge: FileAcmeChallenge,
    /// External Account Binding: key id, and the HMAC key (base64url) from an environment
    /// variable.
    #[serde(default)]
    pub eab: Option<FileEab>,
    /// Where the account key and certificates are kept (default: `acme/` next to
    /// `state_file`).
    #[serde(default)]
    pub storage: Option<PathBuf>,
    /// Back-off after a failed order: from `min`, doubled per failure, up to `max`.
    #[serde(default = "default_acme_retry_min")]
    pub retry_min: HumanDuration,
    #[serde(default = "default_acme_retry_max")]
    pub retry_max: HumanDuration,
    #[serde(default)]
    pub on_demand: Option<FileOnDemand>,
}

fn default_acme_retry_min() -> HumanDuration {
    HumanDuration::from_secs(60)
}

fn default_acme_retry_max() -> HumanDuration {
    HumanDuration::from_secs(3600)
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
pub enum FileAcmeChallenge {
    #[default]
    #[serde(rename = "http-01")]
    Http01,
    #[serde(rename = "tls-alpn-01")]
    TlsAlpn01,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEab {
    pub kid: String,
    pub hmac_key_env: String,
}

/// Certificates for names not known in advance, when `ask` approves them.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileOnDemand {
    /// `GET ask?domain=NAME` must answer 2xx for NAME to be ordered.
    pub ask: String,
    /// At most this many orders per `per`.
    #[serde(default = "default_on_demand_max")]
    pub max_orders: u32,
    #[serde(default = "default_on_demand_per")]
    pub per: HumanDuration,
}

fn default_on_demand_max() -> u32 {
    10
}

fn default_on_demand_per() -> HumanDuration {
    HumanDuration::from_secs(3600)
}

/// One certificate chain and its private key.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileCertPair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// `Strict-Transport-Security` on every proxied answer of a TLS listener.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileHsts {
    #[serde(default = "default_hsts_max_age")]
    pub max_age: HumanDuration,
    #[serde(default)]
    pub include_subdomains: bool,
    #[serde(default)]
    pub preload: bool,
}

fn default_hsts_max_age() -> HumanDuration {
    HumanDuration::from_secs(365 * 86_400)
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
    /// Names (besides IP addresses and localhost) the admin listener answers to.
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
}

impl Default for FileAdmin {
    fn default() -> Self {
        Self {
            address: default_admin_address(),
            token_env: None,
            token_file: None,
            metrics_auth: false,
            allowed_hosts: Vec::new(),
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

/// Default upstream connect timeout.
pub fn default_connect() -> HumanDuration {
    HumanDuration::from_secs(5)
}
/// Default client read timeout (pingora's own default).
pub fn default_client_read() -> HumanDuration {
    HumanDuration::from_secs(60)
}
/// Default WebSocket client-silence limit.
pub fn default_websocket_idle() -> HumanDuration {
    HumanDuration::from_secs(3600)
}
/// Default idle time of pooled upstream keep-alive connections.
pub fn default_upstream_keepalive() -> HumanDuration {
    HumanDuration::from_secs(60)
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
    /// A client's `X-Request-Id`: `trust` keeps a valid one, `replace` always mints a new one.
    #[serde(default = "default_request_id")]
    pub request_id: String,
}

/// Default: a client's valid `X-Request-Id` is kept (a front proxy or the client set it).
pub fn default_request_id() -> String {
    "trust".into()
}

impl Default for FileHttp {
    fn default() -> Self {
        Self {
            max_request_header_bytes: default_max_request_header_bytes(),
            underscores_in_headers: false,
            allow_trace: false,
            request_id: default_request_id(),
        }
    }
}

/// Default header limit: 32 KiB (nginx's `large_client_header_buffers 4 8k` in total).
pub fn default_max_request_header_bytes() -> u64 {
    32 * 1024
}

/// Process-level settings (not reloadable).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileServer {
    /// Worker threads per listener; 0 = one per CPU.
    #[serde(default)]
    pub threads: usize,
    /// Default: `upgrade/upgrade.sock` next to `state_file`, else `/tmp/tidegate-UID/upgrade.sock`.
    #[serde(default)]
    pub upgrade_sock: Option<PathBuf>,
    #[serde(default)]
    pub pid_file: Option<PathBuf>,
}

/// Default socket for graceful upgrades (absolute: old and new process must agree), in a
/// private directory tidegate creates mode 0700: `upgrade/` next to `state_file`, else a
/// per-user directory under /tmp.
pub fn default_upgrade_sock(state_file: Option<&std::path::Path>) -> PathBuf {
    match state_file
        .and_then(|f| f.parent())
        .filter(|d| d.is_absolute())
    {
        Some(dir) => dir.join("upgrade").join("upgrade.sock"),
        None => per_user_upgrade_dir().join("upgrade.sock"),
    }
}

/// `/tmp/tidegate-UID`: the default upgrade directory without a state file.
pub fn per_user_upgrade_dir() -> PathBuf {
    // SAFETY: geteuid(2) cannot fail and has no side effects.
    let uid = unsafe { libc::geteuid() };
    PathBuf::from(format!("/tmp/tidegate-{uid}"))
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
    HumanDuration::from_secs(0)
}
fn default_shutdown_grace() -> HumanDuration {
    HumanDuration::from_secs(60)
}
