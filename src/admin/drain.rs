//! Drain endpoints: `POST …/drain`, `POST …/undrain`, `GET …/drain`, `GET …/drain/wait`,
//! for `/api/v1/pools/{pool}` and `/api/v1/pools/{pool}/backends/{backend}`. The work is the
//! drain service's; this file maps HTTP to it.

use std::{sync::Arc, time::Duration};

use axum::{
    body::Bytes,
    extract::{Path, Query, State},
    response::Response,
};
use serde::Deserialize;

use super::{body, json, view, ApiError};
use crate::{
    api,
    config::duration::HumanDuration,
    drain::machine::Phase,
    services::drains::{self, DrainError, Resolved},
    state::AppState,
};

/// Longest a single long-poll may block.
pub const MAX_WAIT: Duration = Duration::from_secs(600);

type St = State<Arc<AppState>>;

/// `?timeout=60s` (or bare seconds).
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct WaitQuery {
    /// How long to block: seconds (`60`) or a duration (`90s`, `5m`); default 30 s, at
    /// most 10 minutes.
    timeout: Option<String>,
    /// Streams to list (default 100, at most 10,000).
    #[param(minimum = 0, maximum = 10000)]
    pub streams: Option<usize>,
    /// With a `control_store`: a lost proxy keeps the answer from drained.
    #[serde(default)]
    pub strict: bool,
}

/// Query of `GET …/drain`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct StatusQuery {
    /// Streams to list (default 100, at most 10,000).
    #[param(minimum = 0, maximum = 10000)]
    streams: Option<usize>,
    /// With a `control_store`: a lost proxy keeps the answer from drained.
    #[serde(default)]
    strict: bool,
}

/// `?streams=N`: how many streams a drain status lists.
pub(super) fn listed(n: Option<usize>) -> Result<usize, ApiError> {
    match n {
        None => Ok(view::STREAMS_LISTED),
        Some(n) if n <= view::STREAMS_LISTED_MAX => Ok(n),
        Some(_) => Err(ApiError::field("streams", "must be between 0 and 10000")),
    }
}

impl From<DrainError> for ApiError {
    fn from(e: DrainError) -> Self {
        match e {
            DrainError::UnknownPool(_) => ApiError::new(404, "unknown_pool", e.to_string()),
            DrainError::UnknownBackend { .. } => {
                ApiError::new(404, "unknown_backend", e.to_string())
            }
            DrainError::Removed => ApiError::new(409, "removed", e.to_string()),
            DrainError::Transition(_) => ApiError::new(409, "conflict", e.to_string()),
            DrainError::BadField { field, ref message } => ApiError::field(field, message),
        }
    }
}

fn resolve(state: &AppState, pool: &str, backend: Option<&str>) -> Result<Resolved, ApiError> {
    Ok(drains::resolve(state, pool, backend)?)
}

/// 409 with the current status, so a caller can see why.
fn conflict(state: &AppState, r: &Resolved, message: &str) -> Response {
    json(
        409,
        &api::DrainConflict {
            drain: view::drain_status(state, r),
            error: "conflict".into(),
            message: message.to_string(),
            status: 409,
        },
    )
}

fn start(state: &AppState, r: Resolved, bytes: &Bytes) -> Result<Response, ApiError> {
    let req: api::DrainRequest = body::parse(bytes)?;
    let d = drains::deadlines(&r, &req)?;
    match drains::start(state, &r, d) {
        Ok(()) => Ok(json(202, &view::drain_status(state, &r))),
        Err(DrainError::Transition(e)) => Ok(conflict(state, &r, &e.to_string())),
        Err(e) => Err(e.into()),
    }
}

fn undrain(state: &AppState, r: Resolved) -> Result<Response, ApiError> {
    match drains::undrain(state, &r) {
        Ok(()) => Ok(json(200, &view::drain_status(state, &r))),
        Err(DrainError::Transition(e)) => Ok(conflict(state, &r, &e.to_string())),
        Err(e) => Err(e.into()),
    }
}

/// `?timeout=60s` (or bare seconds), capped at [`MAX_WAIT`]; default 30 s.
pub(super) fn wait_timeout(q: &WaitQuery) -> Result<Duration, ApiError> {
    let Some(raw) = &q.timeout else {
        return Ok(Duration::from_secs(30));
    };
    let d = match raw.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => {
            HumanDuration::parse(raw)
                .map_err(|e| ApiError::field("timeout", &e))?
                .0
        }
    };
    Ok(d.min(MAX_WAIT))
}

/// Block until drained (woken by the last request's end), removed and idle, or timeout.
async fn wait(state: &AppState, r: Resolved, q: &WaitQuery) -> Result<Response, ApiError> {
    let timeout = wait_timeout(q)?;
    // Before blocking: a bad `?streams=` is a 400 now, not after the wait.
    let streams = listed(q.streams)?;
    let started = tokio::time::Instant::now();
    wait_until(state, &r, started + timeout, q.strict).await;
    let mut v = view::drain_status_listing(state, &r, streams, q.strict);
    v.waited_seconds = Some(started.elapsed().as_secs_f64());
    Ok(json(200, &v))
}

/// Until `r` is drained (or removed and idle) here and on the fleet's other proxies, or
/// `deadline`.
pub(super) async fn wait_until(
    state: &AppState,
    r: &Resolved,
    deadline: tokio::time::Instant,
    strict: bool,
) {
    loop {
        // Register interest before checking, so a transition between the check and the
        // await is not missed.
        let changed = r.cell().changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        r.observe();
        let removed_idle = r.removed && r.in_flight().total() == 0;
        if r.cell().phase() != Phase::Draining || removed_idle {
            break;
        }
        tokio::select! {
            _ = &mut changed => {}
            _ = tokio::time::sleep_until(deadline) => break,
        }
    }
    super::fleet::wait_drained(state, r, deadline, strict).await;
}

#[utoipa::path(get, path = "/api/v1/pools/{pool}/drain", tag = "drain",
    params(("pool" = String, Path, description = "A pool of the config"), StatusQuery),
    responses((status = 200, description = "The drain status", body = api::DrainStatus),
        (status = 404, description = "No such pool or backend", body = api::ErrorBody),
    ))]
/// `GET /api/v1/pools/{pool}/drain`.
pub async fn pool_status(
    State(s): St,
    Path(pool): Path<String>,
    Query(q): Query<StatusQuery>,
) -> Result<Response, ApiError> {
    let r = resolve(&s, &pool, None)?;
    Ok(json(
        200,
        &view::drain_status_listing(&s, &r, listed(q.streams)?, q.strict),
    ))
}

#[utoipa::path(post, path = "/api/v1/pools/{pool}/drain", tag = "drain",
    params(("pool" = String, Path, description = "A pool of the config")),
    request_body(content = Option<api::DrainRequest>, content_type = "application/json",
        description = "Deadlines for this drain; absent fields take the pool's"),
    responses((status = 202, description = "Draining: the drain status", body = api::DrainStatus),
        (status = 409, description = "Already draining or drained: the status and why", body = api::DrainConflict),
        (status = 404, description = "No such pool or backend", body = api::ErrorBody),
    ))]
/// `POST /api/v1/pools/{pool}/drain`.
pub async fn pool_drain(
    State(s): St,
    Path(pool): Path<String>,
    b: Bytes,
) -> Result<Response, ApiError> {
    start(&s, resolve(&s, &pool, None)?, &b)
}

#[utoipa::path(post, path = "/api/v1/pools/{pool}/undrain", tag = "drain",
    params(("pool" = String, Path, description = "A pool of the config")),
    responses((status = 200, description = "Active again: the drain status", body = api::DrainStatus),
        (status = 409, description = "Not draining: the status and why", body = api::DrainConflict),
        (status = 404, description = "No such pool or backend", body = api::ErrorBody),
    ))]
/// `POST /api/v1/pools/{pool}/undrain`.
pub async fn pool_undrain(State(s): St, Path(pool): Path<String>) -> Result<Response, ApiError> {
    undrain(&s, resolve(&s, &pool, None)?)
}

#[utoipa::path(get, path = "/api/v1/pools/{pool}/drain/wait", tag = "drain",
    params(("pool" = String, Path, description = "A pool of the config"), WaitQuery),
    responses((status = 200, description = "Drained, or the timeout passed (see `drained`, `waited_seconds`)", body = api::DrainStatus),
        (status = 404, description = "No such pool or backend", body = api::ErrorBody),
    ))]
/// `GET /api/v1/pools/{pool}/drain/wait`.
pub async fn pool_wait(
    State(s): St,
    Path(pool): Path<String>,
    Query(q): Query<WaitQuery>,
) -> Result<Response, ApiError> {
    let r = resolve(&s, &pool, None)?;
    wait(&s, r, &q).await
}

#[utoipa::path(get, path = "/api/v1/pools/{pool}/backends/{backend}/drain", tag = "drain",
    params(("pool" = String, Path, description = "A pool of the config"), ("backend" = String, Path, description = "A backend of the pool: its name, or `HOST:PORT`"), StatusQuery),
    responses((status = 200, description = "The drain status", body = api::DrainStatus),
        (status = 404, description = "No such pool or backend", body = api::ErrorBody),
    ))]
/// `GET /api/v1/pools/{pool}/backends/{backend}/drain`.
pub async fn backend_status(
    State(s): St,
    Path((pool, backend)): Path<(String, String)>,
    Query(q): Query<StatusQuery>,
) -> Result<Response, ApiError> {
    let r = resolve(&s, &pool, Some(&backend))?;
    Ok(json(
        200,
        &view::drain_status_listing(&s, &r, listed(q.streams)?, q.strict),
    ))
}

#[utoipa::path(post, path = "/api/v1/pools/{pool}/backends/{backend}/drain", tag = "drain",
    params(("pool" = String, Path, description = "A pool of the config"), ("backend" = String, Path, description = "A backend of the pool: its name, or `HOST:PORT`")),
    request_body(content = Option<api::DrainRequest>, content_type = "application/json",
        description = "Deadlines for this drain; absent fields take the pool's"),
    responses((status = 202, description = "Draining: the drain status", body = api::DrainStatus),
        (status = 409, description = "Already draining or drained (the body also carries the drain status, a DrainConflict), or a backend removed from the config", body = api::ErrorBody),
        (status = 404, description = "No such pool or backend", body = api::ErrorBody),
    ))]
/// `POST /api/v1/pools/{pool}/backends/{backend}/drain`.
pub async fn backend_drain(
    State(s): St,
    Path((pool, backend)): Path<(String, String)>,
    b: Bytes,
) -> Result<Response, ApiError> {
    start(&s, resolve(&s, &pool, Some(&backend))?, &b)
}

#[utoipa::path(post, path = "/api/v1/pools/{pool}/backends/{backend}/undrain", tag = "drain",
    params(("pool" = String, Path, description = "A pool of the config"), ("backend" = String, Path, description = "A backend of the pool: its name, or `HOST:PORT`")),
    responses((status = 200, description = "Active again: the drain status", body = api::DrainStatus),
        (status = 409, description = "Not draining (the body also carries the drain status, a DrainConflict), or a backend removed from the config", body = api::ErrorBody),
        (status = 404, description = "No such pool or backend", body = api::ErrorBody),
    ))]
/// `POST /api/v1/pools/{pool}/backends/{backend}/undrain`.
pub async fn backend_undrain(
    State(s): St,
    Path((pool, backend)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    undrain(&s, resolve(&s, &pool, Some(&backend))?)
}

#[utoipa::path(get, path = "/api/v1/pools/{pool}/backends/{backend}/drain/wait", tag = "drain",
    params(("pool" = String, Path, description = "A pool of the config"), ("backend" = String, Path, description = "A backend of the pool: its name, or `HOST:PORT`"), WaitQuery),
    responses((status = 200, description = "Drained, or the timeout passed (see `drained`, `waited_seconds`)", body = api::DrainStatus),
        (status = 404, description = "No such pool or backend", body = api::ErrorBody),
    ))]
/// `GET /api/v1/pools/{pool}/backends/{backend}/drain/wait`.
pub async fn backend_wait(
    State(s): St,
    Path((pool, backend)): Path<(String, String)>,
    Query(q): Query<WaitQuery>,
) -> Result<Response, ApiError> {
    let r = resolve(&s, &pool, Some(&backend))?;
    wait(&s, r, &q).await
}
