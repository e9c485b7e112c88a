//! `GET /api/v1/history` and the `history` / `sample` events of `GET /api/v1/events`: the
//! last minutes per pool, sampled in the proxy, and the moments of changes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Samples and marks, oldest first.
#[derive(Clone, Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct History {
    /// Seconds between two samples.
    pub interval_seconds: f64,
    pub samples: Vec<Sample>,
    pub marks: Vec<Mark>,
}

/// One sampling moment.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Sample {
    /// Increases by one per sample or mark (a client asks for what is newer).
    pub seq: u64,
    /// Unix time, seconds.
    pub t: f64,
    pub pools: BTreeMap<String, PoolSample>,
}

/// One pool at one moment: rates over the last interval, gauges now.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PoolSample {
    /// Requests (and streams) ended per second.
    pub rps: f64,
    /// 5xx answers per second.
    pub errors: f64,
    /// Failed connects per second.
    pub connect_failures: f64,
    /// In flight now, by kind (`http`, `sse`, … keys beside the others).
    #[serde(flatten)]
    pub in_flight: super::kind::InFlight,
    /// Requests held now by routes whose split has this pool.
    pub held: u64,
}

/// A moment something changed: a reload, a split, a drain, maintenance.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Mark {
    pub seq: u64,
    pub t: f64,
    /// `reload`, `split`, `drain`, `maintenance`.
    pub kind: String,
    pub text: String,
}
