//! The fleet through the `control_store`: drain answers for every proxy, and the status's
//! list of proxies.

use serde::{Deserialize, Serialize};

use super::kind::InFlight;

/// One proxy's part of a drain.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FleetDrainProxy {
    pub node: String,
    pub heartbeat_age_seconds: f64,
    /// Its heartbeat is older than the TTL: its counts are its last ones, not counted.
    pub lost: bool,
    /// It has applied the shared state this answer is about (else it may still route there).
    pub applied: bool,
    /// Work on the target, as it reported.
    pub in_flight: InFlight,
}

/// A drain across the fleet: drained when every live proxy has applied it and holds nothing.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FleetDrain {
    pub drained: bool,
    /// Live proxies that still hold work on the target.
    pub holding: Vec<String>,
    /// Live proxies that have not applied the shared state yet.
    pub behind: Vec<String>,
    /// Proxies whose heartbeat is older than the TTL: not counted, listed here.
    pub lost: Vec<String>,
    pub proxies: Vec<FleetDrainProxy>,
    /// The control store does not answer: the others' counts are not known (never drained).
    #[serde(default)]
    pub store_unreachable: bool,
    /// This proxy's last successful read of the others' heartbeats is older than the TTL
    /// (its reads stall or fail): their counts are not known (never drained).
    #[serde(default)]
    pub stale: bool,
    /// Asked with `strict=true`: a lost proxy keeps the answer from "drained" (it may
    /// still hold work it cannot report), instead of being listed and not counted.
    #[serde(default)]
    pub strict: bool,
}

/// One proxy of the fleet.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FleetProxy {
    pub node: String,
    /// Its admin address as it was bound.
    pub admin: String,
    pub heartbeat_age_seconds: f64,
    pub lost: bool,
    /// The revision of the shared state it has applied.
    pub rev: i64,
    /// Work in flight, all its backends together.
    pub in_flight: InFlight,
    /// The proxy that answered.
    pub me: bool,
}

/// The status's `fleet`.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FleetStatus {
    /// This proxy's name.
    pub node: String,
    /// Whether the control store answers.
    pub store_reachable: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store_error: Option<String>,
    /// The shared state has been loaded (traffic is routed only then).
    pub loaded: bool,
    /// The revision of the shared state applied here.
    pub rev: i64,
    pub heartbeat_ttl_seconds: f64,
    /// Since this proxy last read the fleet's heartbeats (`None`: never); past the TTL its
    /// drain answers are never "drained".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peers_read_seconds_ago: Option<f64>,
    /// The store's state went back in time (a restored backup, a promoted replica): what was
    /// seen. This proxy keeps its live state until an operator says otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regressed: Option<String>,
    pub proxies: Vec<FleetProxy>,
}

/// `s` with control characters shown as `?`: node names and addresses come from a shared
/// database, and a terminal must not obey what someone wrote there.
pub fn printable(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}
