//! The admin API's request and response bodies, shared by the admin server (which builds
//! them) and the CLI client (which reads them): one definition of every field.
//!
//! Durations: request bodies take strings with a unit (`"30s"`, `"10m"`, `"0"` = no
//! limit), as in the config file; responses give the same strings for configured
//! durations (deadlines), and plain seconds (`…_seconds`, floats) for ages, waits and Unix
//! times (`…_at`).

mod history;
mod kind;
mod spool;
pub use history::*;
pub use kind::*;
pub use spool::*;

mod fleet;
mod node;
mod requests;
mod tls;

pub use fleet::{printable, FleetDrain, FleetDrainProxy, FleetProxy, FleetStatus};
pub use node::{NodeDrainMode, NodeDrainRequest};
pub use requests::{
    duration_schema, BackendEntry, BackendsBody, BackendsRequest, DrainRequest, MaintenanceRequest,
    SplitRequest,
};
pub use tls::{AcmeStatus, CertificateStatus};

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `{error, message, status, field?}`: every error answer.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: String,
    pub message: String,
    pub status: u16,
    /// The offending request field, for 400s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// The request's `X-Request-Id`, on errors the proxy answers itself (quote it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// `GET /healthz`.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Alive {
    pub status: String,
}

/// `GET /readyz`.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Ready {
    pub ready: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `GET /health`.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Health {
    pub status: HealthStatus,
    pub reasons: Vec<String>,
    pub uptime_seconds: u64,
    pub generation: u64,
    /// Spool depth by route (routes that spool, or hold items).
    #[serde(default)]
    pub spool: Vec<SpoolDepth>,
}

/// `GET /api/v1/status`.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Status {
    pub generation: u64,
    pub ready: bool,
    pub shutting_down: bool,
    /// Process-wide requests and streams in flight.
    pub in_flight: u64,
    pub routes: Vec<RouteStatus>,
    pub pools: BTreeMap<String, PoolStatus>,
    /// Backends no longer in the config that still have work in flight.
    pub removed: Vec<BackendStatus>,
    pub maintenance: MaintenanceStatus,
    pub reloads: Reloads,
    /// Spool depth by route (routes that spool, or hold items).
    #[serde(default)]
    pub spool: Vec<SpoolDepth>,
    /// Open `GET /api/v1/events` streams.
    #[serde(default)]
    pub event_streams: u64,
    /// Certificates TLS listeners serve.
    #[serde(default)]
    pub certificates: Vec<CertificateStatus>,
    /// ACME certificates tidegate obtains and renews: orders, the last failure, renewal.
    #[serde(default)]
    pub acme: Vec<AcmeStatus>,
    /// With a `control_store`: the proxies of the fleet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet: Option<FleetStatus>,
}

/// One event of `GET /api/v1/events`: the status, with the proxy's clock.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StatusEvent {
    /// Unix time of the proxy when the event was made.
    pub now: f64,
    #[serde(flatten)]
    pub status: Status,
}

/// Reload counters.
#[derive(Clone, Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Reloads {
    pub succeeded: u64,
    pub failed: u64,
    pub last_success_unix: Option<f64>,
    pub last_error: Option<String>,
}

/// A route's split: effective, as in the file, whether overridden, its latest ramp.
/// Also the answer of `POST|DELETE /api/v1/routes/{route}/split`.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RouteSplit {
    pub route: String,
    pub split: BTreeMap<String, u32>,
    pub file_split: BTreeMap<String, u32>,
    #[serde(rename = "override")]
    pub overridden: bool,
    pub ramp: Option<Ramp>,
}

/// One route in the status.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RouteStatus {
    #[serde(flatten)]
    pub split: RouteSplit,
    pub name: String,
    #[serde(rename = "match")]
    pub matcher: RouteMatch,
    pub retries: u32,
    /// Affinity and forced pools, and how the route's requests were picked.
    #[serde(default)]
    pub picking: Picking,
}

/// How a route picks pools: its affinity mode, forced pools, and counts since start.
#[derive(Clone, Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Picking {
    /// `cookie`, `header` or `client_ip`; `None`: every request by the split.
    pub affinity: Option<String>,
    /// The cookie's or header's name for `cookie`/`header`.
    pub key_name: Option<String>,
    /// The key also keeps the backend.
    pub sticky_backends: bool,
    pub force_pool: Option<ForcePool>,
    /// Requests by how their pool was chosen: `split`, `affinity`, `redealt`, `forced`.
    pub picks: BTreeMap<String, u64>,
}

/// A route's forced pools: where the pool's name is read, which may be forced.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ForcePool {
    /// `header` or `cookie`.
    pub from: String,
    pub name: String,
    pub pools: Vec<String>,
    /// `split` or `refuse`.
    pub fallback: String,
    /// The value must carry a secret after the pool's name (`POOL:SECRET`).
    #[serde(default)]
    pub secret: bool,
    /// Client addresses that may force (empty: any).
    #[serde(default)]
    pub clients: Vec<String>,
}

/// What a route matches.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RouteMatch {
    pub host: Vec<String>,
    pub path_prefix: String,
    pub methods: Option<Vec<String>>,
}

/// A split ramp's progress.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Ramp {
    pub state: RampState,
    pub from: BTreeMap<String, u32>,
    pub to: BTreeMap<String, u32>,
    pub over_seconds: f64,
    pub step_seconds: f64,
    pub steps_done: u32,
    pub steps_total: u32,
    pub started_at: f64,
    /// Why it stopped early (cancelled or rolled back).
    pub reason: Option<String>,
    /// Roll back when the pools gaining weight fail more than this share of requests.
    #[serde(default)]
    pub max_error_rate: Option<f64>,
    /// Requests a step must see before its error rate counts.
    #[serde(default)]
    pub min_requests: u64,
    /// With a `control_store`: the fleet-wide id of this ramp (steps are recorded under it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// With a `control_store` and `max_error_rate`: the fleet's requests and failures to the
    /// gaining pools at the last step; the next step is judged against them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<(u64, u64)>,
    /// With a `control_store`: the proxy that made the last step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stepped_by: Option<String>,
}

impl Ramp {
    /// Whether it still moves.
    pub fn is_running(&self) -> bool {
        self.state == RampState::Running
    }
}

/// One pool in the status.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PoolStatus {
    /// `active`, `draining` or `drained`.
    pub state: State,
    /// Whether the members are a runtime override (`PUT …/backends`).
    #[serde(default)]
    pub backends_override: bool,
    /// `state:` as written in the file.
    pub file_state: FileState,
    pub in_flight: InFlight,
    pub drain_started_at: Option<f64>,
    pub drained_at: Option<f64>,
    /// Deadlines of the pool's drain, while it drains or is drained.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain_deadlines: Option<DrainDeadlines>,
    pub backends: Vec<BackendStatus>,
}

/// One backend in the status.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BackendStatus {
    /// `pool/name`.
    pub id: String,
    pub name: String,
    /// `None` for a removed backend.
    pub address: Option<String>,
    pub weight: Option<u32>,
    pub state: State,
    pub available: bool,
    pub healthy: bool,
    pub in_flight: InFlight,
    pub oldest_stream_age_seconds: Option<f64>,
    pub drain_started_at: Option<f64>,
    pub drained_at: Option<f64>,
    pub connect_failures: u64,
    /// `state:` as written in the file (configured backends only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_state: Option<FileState>,
}

/// Maintenance mode as shown: `{"maintenance": false}` or the whole setting.
#[derive(Clone, Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MaintenanceStatus {
    pub maintenance: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routes: Option<Option<Vec<String>>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub methods: Option<Option<Vec<String>>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_seconds: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<Option<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<f64>,
}

/// A node's drain: every backend on the host, in every pool.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NodeDrainStatus {
    pub node: String,
    /// Every backend on the node is drained.
    pub drained: bool,
    pub backends: Vec<DrainStatus>,
}

/// The drain status of a pool or backend (`GET …/drain`, `…/drain/wait`, drain, undrain).
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DrainStatus {
    pub state: State,
    pub drained: bool,
    pub in_flight: InFlight,
    pub started_at: Option<f64>,
    pub drained_at: Option<f64>,
    pub deadlines: Option<DrainDeadlines>,
    /// Streams in flight, the oldest first: at most 100 (or `?streams=N`, up to 10,000).
    pub streams: Vec<StreamInfo>,
    /// Every stream in flight (the list may hold fewer).
    #[serde(default)]
    pub streams_total: u64,
    pub oldest_stream_age_seconds: Option<f64>,
    pub pool: String,
    /// `pool/name` when the target is one backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    /// The pool's own state, when the target is one backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool_state: Option<State>,
    /// How long a `drain/wait` blocked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waited_seconds: Option<f64>,
    /// With a `control_store`: every proxy's part (`drained` is the fleet's then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet: Option<FleetDrain>,
}

/// Deadlines of a drain, as duration strings (`"0"` = none).
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DrainDeadlines {
    pub requests_deadline: String,
    pub streams_deadline: String,
    pub close_spread: String,
}

/// One stream in flight.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StreamInfo {
    pub backend: String,
    /// `sse`, `websocket` or `grpc`.
    pub kind: Kind,
    pub route: String,
    pub path: String,
    pub client: Option<String>,
    pub started_at: f64,
    pub age_seconds: f64,
}

/// A 409 on drain or undrain: the current status plus why.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DrainConflict {
    #[serde(flatten)]
    pub drain: DrainStatus,
    pub error: String,
    pub message: String,
    pub status: u16,
}

/// `POST /api/v1/config/reload`, 200.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Reloaded {
    pub reloaded: bool,
    pub summary: ReloadSummary,
}

/// What a successful reload changed.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReloadSummary {
    pub generation: u64,
    /// Whether routes or pools changed.
    pub changed: bool,
    /// Routes and pools added, removed or changed; settings that only apply after a restart
    /// (`needs_restart`: listeners, admin.address, server, config_watch).
    #[serde(flatten)]
    pub diff: crate::config::diff::Diff,
    pub warnings: Vec<String>,
}

/// `POST /api/v1/config/reload`, 422.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ConfigRefused {
    pub error: String,
    /// `syntax`, `encoding`, `schema`, `duplicate`, `out_of_range`, …
    pub kind: String,
    /// The key path, when the error has one.
    pub path: Option<String>,
    pub message: String,
    pub status: u16,
}

/// A pool's members: from the file or a runtime override.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PoolBackends {
    pub pool: String,
    /// Whether the members are a runtime override (`DELETE` returns to the file).
    #[serde(rename = "override")]
    pub overridden: bool,
    pub backends: Vec<BackendEntry>,
    /// The members as written in the file.
    pub file_backends: Vec<BackendEntry>,
}

/// What `PUT /api/v1/routes/{route}/checkpoint` records before a deploy, and
/// `POST /api/v1/routes/{route}/rollback` restores.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    pub route: String,
    /// The effective split then.
    pub split: BTreeMap<String, u32>,
    /// Whether that split was an override (else it was the file's).
    pub split_overridden: bool,
    /// Pools of the split that were active (not draining) then.
    pub active_pools: Vec<String>,
    /// Runtime members of the split's pools then (`None`: the file's).
    pub members: BTreeMap<String, Option<Vec<BackendEntry>>>,
    pub taken_at: f64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::diff::{Diff, RestartKey};

    #[test]
    fn a_reload_summary_keeps_its_flat_json_shape() {
        let s = ReloadSummary {
            generation: 2,
            changed: true,
            diff: Diff {
                routes_changed: vec!["app".into()],
                needs_restart: vec![RestartKey::Listeners, RestartKey::AdminAddress],
                ..Default::default()
            },
            warnings: vec![],
        };
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["routes_changed"], serde_json::json!(["app"]));
        assert_eq!(
            v["needs_restart"],
            serde_json::json!(["listeners", "admin.address"])
        );
        assert_eq!(v["pools_added"], serde_json::json!([]));
        let back: ReloadSummary = serde_json::from_value(v).unwrap();
        assert_eq!(back.diff, s.diff);
    }
}
