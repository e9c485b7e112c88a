//! The validated config: plain data, no live state. `build/` makes it from the file; the
//! state layer binds it to the backend registry when it is published (`state::table`), so a
//! config that is refused never touches anything live.

use std::{collections::BTreeMap, fmt, net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use crate::routing::Router;

/// One validated config file.
#[derive(Clone, Debug)]
pub struct Spec {
    pub listeners: Vec<Listener>,
    pub admin: Admin,
    pub state_file: Option<PathBuf>,
    pub config_watch: bool,
    pub timeouts: Timeouts,
    pub http: HttpSettings,
    pub server: ServerSettings,
    /// In file order; `router` answers with an index into this list.
    pub routes: Vec<Arc<RouteSpec>>,
    pub router: Arc<Router>,
    pub pools: BTreeMap<Arc<str>, Arc<PoolSpec>>,
    pub shutdown: Shutdown,
    /// How often backend names are resolved again (`None`: never).
    pub resolve_interval: Option<Duration>,
    /// Where spooled requests are kept (`None`: no route spools and none was configured).
    pub spool_store: Option<SpoolStore>,
    /// Bytes of spooled bodies buffered at once, all routes together.
    pub spool_buffer: u64,
    /// The fleet's shared runtime state (`None`: this proxy alone, `state_file` as before).
    pub control_store: Option<ControlStore>,
    pub access_log: AccessLogSpec,
    pub trace: TraceSpec,
}

/// The access log (reloadable; SIGUSR1 reopens a file).
#[derive(Clone, Debug, PartialEq)]
pub struct AccessLogSpec {
    pub enabled: bool,
    pub dest: LogDest,
    pub format: LogFormat,
    /// Share of plain successful requests logged; everything else is always logged.
    pub sample: f64,
    pub exclude: Vec<PathMatch>,
    pub query: bool,
    /// Lowercase; never a header that carries credentials.
    pub request_headers: Vec<http::HeaderName>,
    pub response_headers: Vec<http::HeaderName>,
}

impl AccessLogSpec {
    /// Whether requests for `path` are left out.
    pub fn excludes(&self, path: &str) -> bool {
        self.exclude.iter().any(|m| m.matches(path))
    }
}

/// Where access log lines go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogDest {
    Stdout,
    Stderr,
    /// Appended to; reopened on SIGUSR1 (logrotate's `postrotate`).
    File(PathBuf),
}

/// How an access log line is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Logfmt,
    /// nginx's `combined`.
    Combined,
}

/// A path that is exact, or a prefix (written with a trailing `*`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathMatch {
    pub path: String,
    pub prefix: bool,
}

impl PathMatch {
    pub fn matches(&self, path: &str) -> bool {
        if self.prefix {
            path.starts_with(&self.path)
        } else {
            path == self.path
        }
    }
}

/// W3C Trace Context started by tidegate (reloadable).
#[derive(Clone, Debug, PartialEq)]
pub struct TraceSpec {
    pub start: bool,
    pub sample: f64,
}

/// What is done with a client's `X-Request-Id`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestIdMode {
    /// Kept when valid, else replaced.
    Trust,
    /// Always replaced.
    Replace,
}

/// A client-facing listener (not reloadable: a change needs a restart or upgrade).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listener {
    pub name: String,
    pub addr: SocketAddr,
    pub h2c: bool,
    pub tls: Option<ListenerTls>,
    /// Plain listener answering with 308 to HTTPS (`Some(port)`: that port in the URL).
    pub redirect_https: Option<Option<u16>>,
}

/// A TLS listener's certificate files (the first pair is the default) and HSTS header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenerTls {
    pub pairs: Vec<TlsFiles>,
    /// The `Strict-Transport-Security` value, when set.
    pub hsts: Option<String>,
    pub acme: Option<AcmeSpec>,
}

/// Let's Encrypt's directories.
pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";
pub const LETS_ENCRYPT_STAGING: &str = "https://acme-staging-v02.api.letsencrypt.org/directory";

/// How a listener obtains certificates over ACME (RFC 8555).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcmeSpec {
    /// Lowercase names, one certificate for all of them (may be empty with `on_demand`).
    pub domains: Vec<String>,
    pub directory: String,
    pub email: Option<String>,
    pub ca_file: Option<PathBuf>,
    pub challenge: AcmeChallenge,
    /// Key id and HMAC key (base64url).
    pub eab: Option<(String, Secret)>,
    pub storage: PathBuf,
    pub retry_min: Duration,
    pub retry_max: Duration,
    pub on_demand: Option<OnDemand>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AcmeChallenge {
    Http01,
    TlsAlpn01,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OnDemand {
    pub ask: String,
    pub max_orders: u32,
    pub per: Duration,
}

/// PEM cert chain and key paths, verified loadable at build time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A bearer token. Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Admin listener settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Admin {
    pub addr: SocketAddr,
    pub token: Option<Secret>,
    pub metrics_auth: bool,
    /// Host names (lowercase, no port) a browser may use for this listener besides IP
    /// addresses and `localhost`.
    pub allowed_hosts: Vec<String>,
}

/// Proxy timeouts. `None` = no limit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Timeouts {
    pub connect: Duration,
    pub client_read: Option<Duration>,
    pub upstream_read: Option<Duration>,
    pub websocket_idle: Option<Duration>,
    pub upstream_keepalive: Duration,
}

/// Client request hygiene (reloadable).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpSettings {
    pub max_request_header_bytes: usize,
    pub underscores_in_headers: bool,
    pub allow_trace: bool,
    pub request_id: RequestIdMode,
}

/// Process-level settings (not reloadable).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerSettings {
    pub threads: usize,
    pub upgrade_sock: PathBuf,
    pub pid_file: Option<PathBuf>,
}

/// Shutdown timing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shutdown {
    pub delay: Duration,
    /// `None` = wait forever for in-flight work.
    pub grace: Option<Duration>,
}

/// One route: match → weighted split across pools (by name).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteSpec {
    pub name: Arc<str>,
    pub hosts: Vec<String>,
    pub path_prefix: String,
    pub methods: Option<Vec<String>>,
    /// Pools with their weights (0 = no new traffic), as written in the file.
    pub split: Vec<(Arc<str>, u32)>,
    pub retries: u32,
    pub hold: Hold,
    /// Which requests that reached a backend may be sent again elsewhere.
    pub retry_sent: RetrySent,
    /// Durable spooling of requests while no backend is available.
    pub spool: Option<SpoolSpec>,
    pub affinity: Option<AffinitySpec>,
    pub force_pool: Option<ForcePoolSpec>,
}

/// A route's affinity (reloadable).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AffinitySpec {
    pub key: AffinityKey,
    /// The key also keeps the backend inside the pool.
    pub sticky_backends: bool,
}

/// Where an affinity key comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AffinityKey {
    /// A cookie tidegate sets when the request has none.
    Cookie {
        name: String,
        max_age: Duration,
    },
    Header(http::HeaderName),
    ClientIp,
}

impl AffinityKey {
    /// The mode's name (status, the page).
    pub fn mode(&self) -> &'static str {
        match self {
            AffinityKey::Cookie { .. } => "cookie",
            AffinityKey::Header(_) => "header",
            AffinityKey::ClientIp => "client_ip",
        }
    }
}

/// A route's forced pools (reloadable).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForcePoolSpec {
    pub from: ForceFrom,
    /// Pools that may be forced, each in the route's split.
    pub pools: Vec<Arc<str>>,
    /// A forced pool that cannot take the request: 503 instead of the normal pick.
    pub refuse: bool,
    /// What the header or cookie must carry after the pool's name (`POOL:SECRET`).
    pub secret: Option<Secret>,
    /// Client addresses that may force (empty: any).
    pub clients: Vec<ipnet::IpNet>,
}

/// Where the forced pool's name comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ForceFrom {
    Header(http::HeaderName),
    Cookie(String),
}

/// A route's spool settings (reloadable).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpoolSpec {
    pub methods: Vec<http::Method>,
    pub max_body: u64,
    pub max_items: u64,
    pub replay: ReplaySpec,
}

impl SpoolSpec {
    /// Whether a request with `method` is spooled.
    pub fn spools(&self, method: &http::Method) -> bool {
        self.methods.iter().any(|m| m == method)
    }
}

/// How spooled items are sent again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplaySpec {
    pub max_attempts: u32,
    pub backoff: Duration,
    pub max_backoff: Duration,
    pub concurrency: u32,
    pub timeout: Duration,
}

impl ReplaySpec {
    /// The wait after failed attempt number `attempt` (1-based): `backoff` doubling, capped.
    pub fn delay_after(&self, attempt: u32) -> Duration {
        let shift = attempt.saturating_sub(1).min(30);
        self.backoff
            .saturating_mul(1u32 << shift)
            .min(self.max_backoff)
    }
}

/// `control_store` (read at start only).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControlStore {
    /// A PostgreSQL URL (may hold a password: never printed).
    pub url: Secret,
    /// This proxy's name in the fleet.
    pub node: String,
    /// A proxy whose heartbeat is older is lost.
    pub heartbeat_ttl: Duration,
    /// The whole state is read again this often.
    pub resync: Duration,
}

/// Where spooled requests live (read at start only).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SpoolStore {
    /// An embedded database file on this machine.
    Embedded(PathBuf),
    /// A PostgreSQL database (the URL may hold a password: never printed).
    Postgres(Secret),
}

/// Which requests that already reached a backend are sent again to another one when that
/// backend closes or resets the connection before any response byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetrySent {
    Never,
    Idempotent,
    All,
}

impl RetrySent {
    /// Whether a request with `method` may be sent again.
    pub fn allows(self, method: &http::Method) -> bool {
        match self {
            RetrySent::Never => false,
            RetrySent::All => true,
            // RFC 9110 9.2.2; CONNECT is never idempotent.
            RetrySent::Idempotent => matches!(
                *method,
                http::Method::GET
                    | http::Method::HEAD
                    | http::Method::OPTIONS
                    | http::Method::TRACE
                    | http::Method::PUT
                    | http::Method::DELETE
            ),
        }
    }
}

/// Hold settings of a route.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hold {
    pub timeout: Duration,
    pub max_queued: u32,
}

/// A pool of backends: one version of the app.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolSpec {
    pub name: Arc<str>,
    pub backends: Vec<BackendSpec>,
    pub drain: DrainSettings,
    pub health_check: Option<HealthCheck>,
    pub passive: PassiveHealth,
    pub slow_start: Option<Duration>,
    pub declared_draining: bool,
    /// How backends are reached (protocol, TLS, HTTP/2 reuse).
    pub upstream: super::upstream::Upstream,
}

/// One backend of a pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendSpec {
    /// Defaults to the address.
    pub name: Arc<str>,
    /// As written in the file.
    pub address: String,
    /// Resolved when the file is loaded (`None`: a name that does not resolve yet); names are
    /// resolved again in the background. No DNS on the hot path.
    pub addr: Option<SocketAddr>,
    pub weight: u32,
    pub declared_draining: bool,
}

/// Drain deadlines of a pool. `None` = wait forever.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DrainSettings {
    pub requests_deadline: Option<Duration>,
    pub streams_deadline: Option<Duration>,
    pub close_spread: Duration,
}

/// Passive health of a pool without active checks: `fall` failed connects in a row mark a
/// backend down; it is probed from `probe_interval` doubling to `probe_max_interval`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PassiveHealth {
    pub fall: u32,
    pub probe_interval: Duration,
    pub probe_max_interval: Duration,
}

/// Active health check settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    pub path: String,
    pub expected_status: u16,
    pub interval: Duration,
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
    pub start_healthy: bool,
    /// `Some(service)`: a gRPC health check (`grpc.health.v1.Health/Check`).
    pub grpc: Option<String>,
}
