//! The validated, immutable runtime config one `ArcSwap` publishes. Built by `build/`.

use std::{collections::BTreeMap, fmt, net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use crate::{
    routing::{Router, Schedule},
    state::backend::BackendState,
};

/// Everything the proxy needs for one generation of the config. Cloning is shallow (`Arc`s):
/// runtime overrides derive a new snapshot from the current one.
#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    /// Set when published; 0 until then.
    pub generation: u64,
    pub listeners: Vec<Listener>,
    pub admin: Admin,
    pub state_file: Option<PathBuf>,
    pub config_watch: bool,
    pub timeouts: Timeouts,
    pub http: HttpSettings,
    pub server: ServerSettings,
    pub routes: Vec<Arc<Route>>,
    pub router: Arc<Router>,
    pub pools: BTreeMap<Arc<str>, Arc<Pool>>,
    pub shutdown: Shutdown,
    /// Maintenance mode (a runtime override), if on.
    pub maintenance: Option<Arc<Maintenance>>,
}

/// Maintenance mode: matching requests get 503 + `Retry-After` + a JSON body.
#[derive(Clone, Debug)]
pub struct Maintenance {
    /// Route names it applies to; `None` = every route.
    pub routes: Option<Vec<String>>,
    /// Methods it applies to; `None` = every method.
    pub methods: Option<Vec<http::Method>>,
    pub retry_after: Duration,
    pub message: String,
}

impl Maintenance {
    /// Whether a request on `route` with `method` is refused.
    pub fn matches(&self, route: &str, method: &http::Method) -> bool {
        self.routes
            .as_ref()
            .is_none_or(|rs| rs.iter().any(|r| r == route))
            && self.methods.as_ref().is_none_or(|ms| ms.contains(method))
    }
}

impl RuntimeConfig {
    /// The route for a request, if any.
    pub fn route(&self, host: &str, path: &str, method: &http::Method) -> Option<&Arc<Route>> {
        self.router
            .find(host, path, method)
            .and_then(|i| self.routes.get(i))
    }
}

/// A client-facing listener (not reloadable: a change needs a restart or upgrade).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listener {
    pub name: String,
    pub addr: SocketAddr,
    pub h2c: bool,
    pub tls: Option<TlsFiles>,
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
#[derive(Clone, Debug)]
pub struct Admin {
    pub addr: SocketAddr,
    pub token: Option<Secret>,
    pub metrics_auth: bool,
}

/// Proxy timeouts. `None` = no limit.
#[derive(Clone, Debug)]
pub struct Timeouts {
    pub connect: Duration,
    pub client_read: Option<Duration>,
    pub upstream_read: Option<Duration>,
    pub websocket_idle: Option<Duration>,
    pub upstream_keepalive: Duration,
}

/// Client request hygiene (reloadable).
#[derive(Clone, Debug)]
pub struct HttpSettings {
    pub max_request_header_bytes: usize,
    pub underscores_in_headers: bool,
    pub allow_trace: bool,
}

/// Process-level settings (not reloadable).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerSettings {
    pub threads: usize,
    pub upgrade_sock: PathBuf,
    pub pid_file: Option<PathBuf>,
}

/// Shutdown timing.
#[derive(Clone, Debug)]
pub struct Shutdown {
    pub delay: Duration,
    /// `None` = wait forever for in-flight work.
    pub grace: Option<Duration>,
}

/// One route: match → weighted split across pools.
#[derive(Debug)]
pub struct Route {
    pub name: Arc<str>,
    pub hosts: Vec<String>,
    pub path_prefix: String,
    pub methods: Option<Vec<String>>,
    /// Effective split: pools with their weights (0 = no new traffic), after overrides.
    pub split: Vec<(Arc<Pool>, u32)>,
    /// The split as written in the file.
    pub file_split: Vec<(Arc<str>, u32)>,
    pub schedule: Schedule,
    pub retries: u32,
    pub hold: Hold,
    /// Which requests that reached a backend may be sent again elsewhere.
    pub retry_sent: RetrySent,
    /// Request statistics (shared by every snapshot of this route).
    pub stats: Arc<crate::state::stats::RouteStats>,
}

impl Route {
    /// A copy of this route with another effective split.
    pub fn with_split(&self, split: Vec<(Arc<Pool>, u32)>) -> Route {
        let weights: Vec<u32> = split.iter().map(|(_, w)| *w).collect();
        Route {
            name: self.name.clone(),
            hosts: self.hosts.clone(),
            path_prefix: self.path_prefix.clone(),
            methods: self.methods.clone(),
            schedule: Schedule::new(&weights),
            split,
            file_split: self.file_split.clone(),
            retries: self.retries,
            hold: self.hold.clone(),
            retry_sent: self.retry_sent,
            stats: self.stats.clone(),
        }
    }

    /// Pick a pool by the split, skipping pools with no available backend.
    pub fn pick_pool(&self) -> Option<&Arc<Pool>> {
        self.schedule
            .pick(|i| self.split[i].0.has_available())
            .map(|i| &self.split[i].0)
    }

    /// Pick a pool and a backend for a request that must avoid `skip`, falling back to any
    /// pool of the split with weight > 0 when the scheduled one has nothing left (a drain
    /// may race the pick). `None` only when the whole split has nothing for it.
    pub fn pick_avoiding(
        &self,
        skip: &impl Fn(&BackendState) -> bool,
    ) -> Option<(&Arc<Pool>, &Backend)> {
        let scheduled = self
            .schedule
            .pick(|i| self.split[i].0.has_available_avoiding(skip))
            .and_then(|i| {
                let p = &self.split[i].0;
                p.pick_avoiding(skip).map(|(_, b)| (p, b))
            });
        scheduled.or_else(|| {
            self.split
                .iter()
                .filter(|(_, w)| *w > 0)
                .find_map(|(p, _)| p.pick_avoiding(skip).map(|(_, b)| (p, b)))
        })
    }
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
#[derive(Clone, Debug)]
pub struct Hold {
    pub timeout: Duration,
    pub max_queued: u32,
}

/// A pool of backends: one version of the app.
#[derive(Debug)]
pub struct Pool {
    pub name: Arc<str>,
    pub backends: Vec<Backend>,
    pub schedule: Schedule,
    pub drain: DrainSettings,
    pub health_check: Option<HealthCheck>,
    pub passive: PassiveHealth,
    pub slow_start: Option<Duration>,
    pub declared_draining: bool,
}

impl Pool {
    /// Whether any backend could take a new request now.
    pub fn has_available(&self) -> bool {
        self.backends.iter().any(|b| b.state.available())
    }

    /// Whether a backend not in `skip` could take the request (no schedule slot used).
    pub fn has_available_avoiding(&self, skip: &impl Fn(&BackendState) -> bool) -> bool {
        self.backends
            .iter()
            .any(|b| b.state.available() && !skip(&b.state))
    }

    /// Next available backend by weight.
    pub fn pick(&self) -> Option<(u32, &Backend)> {
        self.pick_avoiding(&|_| false)
    }

    /// Next available backend by weight, skipping those `skip` names (backends this request
    /// already failed on). Backends in slow start are passed over part of the time; if that
    /// leaves none, any available one.
    pub fn pick_avoiding(&self, skip: &impl Fn(&BackendState) -> bool) -> Option<(u32, &Backend)> {
        let base = |i: usize| self.backends[i].state.available() && !skip(&self.backends[i].state);
        let picked = match self.slow_start {
            Some(w) => self
                .schedule
                .pick(|i| base(i) && self.backends[i].state.slow_start_accept(w))
                .or_else(|| self.schedule.pick(base)),
            None => self.schedule.pick(base),
        };
        picked.map(|i| (i as u32, &self.backends[i]))
    }
}

/// One backend in a pool snapshot.
#[derive(Debug)]
pub struct Backend {
    /// `pool/name`.
    pub id: Arc<str>,
    pub name: Arc<str>,
    /// As written in the file.
    pub address: String,
    /// Resolved once at config build; no DNS on the hot path.
    pub addr: SocketAddr,
    pub weight: u32,
    pub declared_draining: bool,
    pub state: Arc<BackendState>,
}

/// Drain deadlines of a pool. `None` = wait forever.
#[derive(Clone, Debug)]
pub struct DrainSettings {
    pub requests_deadline: Option<Duration>,
    pub streams_deadline: Option<Duration>,
    pub close_spread: Duration,
}

/// Passive health of a pool without active checks: `fall` failed connects in a row mark a
/// backend down; it is probed from `probe_interval` doubling to `probe_max_interval`.
#[derive(Clone, Debug)]
pub struct PassiveHealth {
    pub fall: u32,
    pub probe_interval: Duration,
    pub probe_max_interval: Duration,
}

/// Active health check settings.
#[derive(Clone, Debug)]
pub struct HealthCheck {
    pub path: String,
    pub expected_status: u16,
    pub interval: Duration,
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
    pub start_healthy: bool,
}
