//! Spool request and response bodies: the 202 a spooled request gets, depths in status and
//! health, and the operator's list, retry and delete calls.

use serde::{Deserialize, Serialize};

/// The body of the `202 Accepted` a spooled request gets.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SpoolAccepted {
    pub spooled: bool,
    pub id: i64,
    pub route: String,
    pub status: u16,
}

/// One route's spool depth (in `/api/v1/status`, `/health` and the spool list).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SpoolDepth {
    pub route: String,
    pub pending: u64,
    pub dead: u64,
    /// Age of the oldest pending item.
    pub oldest_pending_seconds: Option<f64>,
}

/// One stored item, as an operator sees it (no body, no headers).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SpoolItem {
    pub id: i64,
    pub route: String,
    pub method: String,
    pub path: String,
    /// `pending` or `dead`.
    pub state: String,
    /// Attempts made so far.
    pub attempts: u64,
    pub age_seconds: f64,
    /// When a pending item is tried next (0 = as soon as a backend is available).
    pub next_attempt_in_seconds: Option<f64>,
    pub last_error: Option<String>,
    pub last_status: Option<u16>,
    pub body_bytes: u64,
}

/// `GET /api/v1/spool`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SpoolList {
    /// `embedded` or `postgres`.
    pub store: String,
    /// Items matching the filter (the list holds at most `limit` of them, oldest first).
    pub total: u64,
    pub items: Vec<SpoolItem>,
    pub routes: Vec<SpoolDepth>,
}

/// Query of `GET /api/v1/spool` and `DELETE /api/v1/spool`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct SpoolQuery {
    pub route: Option<String>,
    /// `pending` or `dead`.
    #[param(pattern = "^(pending|dead)$")]
    pub state: Option<String>,
    /// At most this many items (default 100, at most 1000).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

/// Query of `DELETE /api/v1/spool`: which items to delete (`state` is required: a purge of
/// pending items drops undelivered requests, so it is never implied).
#[derive(Clone, Debug, Default, Serialize, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct SpoolPurgeQuery {
    pub route: Option<String>,
    /// `pending` or `dead`.
    #[param(pattern = "^(pending|dead)$")]
    pub state: String,
}

/// Body of `POST /api/v1/spool/retry`: every dead item, or a route's.
#[derive(Clone, Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SpoolRetryRequest {
    #[serde(default)]
    pub route: Option<String>,
}

/// How many items an operator call changed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SpoolChanged {
    pub changed: u64,
}
