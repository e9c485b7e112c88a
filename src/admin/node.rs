//! Node maintenance: `POST /api/v1/nodes/{host}/drain` drains every backend on one host
//! across all pools (`soft`: the pools' deadlines, or the ones given; `hard`: deadlines now),
//! `GET …/drain` and `…/drain/wait` answer for all of them, `POST …/undrain` brings them
//! back. A host is matched against each backend's address (its host part) and the IP it
//! resolved to.

use std::sync::Arc;

use axum::{
    body::Bytes,
    extract::{Path, Query, State},
    response::Response,
};

use super::{body, drain, json, view, ApiError};
use crate::{
    api,
    services::drains::{self, DrainError, Resolved},
    state::AppState,
};

type St = State<Arc<AppState>>;

fn targets(state: &AppState, host: &str) -> Result<Vec<Resolved>, ApiError> {
    let t = drains::on_node(state, host);
    if t.is_empty() {
        return Err(ApiError::new(
            404,
            "unknown_node",
            format!("no backend of any pool is on node {host:?}"),
        ));
    }
    Ok(t)
}

fn status(
    state: &AppState,
    host: &str,
    targets: &[Resolved],
    streams: usize,
    strict: bool,
) -> api::NodeDrainStatus {
    let backends: Vec<api::DrainStatus> = targets
        .iter()
        .map(|r| {
            r.observe();
            view::drain_status_listing(state, r, streams, strict)
        })
        .collect();
    api::NodeDrainStatus {
        node: host.to_string(),
        drained: backends.iter().all(|b| b.drained),
        backends,
    }
}

#[utoipa::path(post, path = "/api/v1/nodes/{host}/drain", tag = "nodes", params(("host" = String, Path, description = "A host name or IP address backends are on")),
    request_body(content = Option<api::NodeDrainRequest>, content_type = "application/json"),
    responses((status = 202, description = "Every backend on the host drains", body = api::NodeDrainStatus), (status = 404, description = "No backend of any pool is on the host", body = api::ErrorBody)))]
/// `POST /api/v1/nodes/{host}/drain`: 202 with every backend's drain (one already
/// draining keeps its deadlines, unless this drain is hard).
pub async fn drain(State(s): St, Path(host): Path<String>, b: Bytes) -> Result<Response, ApiError> {
    let req: api::NodeDrainRequest = body::parse(&b)?;
    let targets = targets(&s, &host)?;
    let one = api::DrainRequest {
        requests_deadline: req.requests_deadline.clone(),
        streams_deadline: req.streams_deadline.clone(),
        close_spread: req.close_spread.clone(),
    };
    // Every target's deadlines first, in either mode: a bad body changes nothing (a hard
    // drain ignores the deadlines it was given, but not that they are wrong; found by
    // schemathesis).
    let mut planned = Vec::with_capacity(targets.len());
    for r in &targets {
        let soft = drains::deadlines(r, &one)?;
        planned.push(match req.mode {
            api::NodeDrainMode::Soft => soft,
            api::NodeDrainMode::Hard => drains::hard_deadlines(),
        });
    }
    for (r, d) in targets.iter().zip(planned) {
        match drains::start(&s, r, d) {
            Ok(()) => {}
            // Already draining: a hard drain brings its deadlines to now.
            Err(DrainError::Transition(_)) if req.mode == api::NodeDrainMode::Hard => {
                drains::hasten(&s, r);
            }
            Err(DrainError::Transition(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    tracing::info!(node = %host, backends = targets.len(), mode = ?req.mode, "node drain started");
    Ok(json(
        202,
        &status(&s, &host, &targets, view::STREAMS_LISTED, false),
    ))
}

#[utoipa::path(post, path = "/api/v1/nodes/{host}/undrain", tag = "nodes", params(("host" = String, Path, description = "A host name or IP address backends are on")),
    responses((status = 200, description = "Every backend on the host is active again", body = api::NodeDrainStatus), (status = 404, description = "No backend of any pool is on the host", body = api::ErrorBody)))]
/// `POST /api/v1/nodes/{host}/undrain`.
pub async fn undrain(State(s): St, Path(host): Path<String>) -> Result<Response, ApiError> {
    let targets = targets(&s, &host)?;
    for r in &targets {
        match drains::undrain(&s, r) {
            Ok(()) | Err(DrainError::Transition(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    tracing::info!(node = %host, backends = targets.len(), "node undrained");
    Ok(json(
        200,
        &status(&s, &host, &targets, view::STREAMS_LISTED, false),
    ))
}

#[utoipa::path(get, path = "/api/v1/nodes/{host}/drain", tag = "nodes", params(("host" = String, Path, description = "A host name or IP address backends are on")),
    responses((status = 200, description = "The drain status of every backend on the host", body = api::NodeDrainStatus), (status = 404, description = "No backend of any pool is on the host", body = api::ErrorBody)))]
/// `GET /api/v1/nodes/{host}/drain`.
pub async fn get(State(s): St, Path(host): Path<String>) -> Result<Response, ApiError> {
    let targets = targets(&s, &host)?;
    Ok(json(
        200,
        &status(&s, &host, &targets, view::STREAMS_LISTED, false),
    ))
}

#[utoipa::path(get, path = "/api/v1/nodes/{host}/drain/wait", tag = "nodes", params(("host" = String, Path, description = "A host name or IP address backends are on"), drain::WaitQuery),
    responses((status = 200, description = "All drained, or the timeout passed", body = api::NodeDrainStatus), (status = 404, description = "No backend of any pool is on the host", body = api::ErrorBody)))]
/// `GET /api/v1/nodes/{host}/drain/wait?timeout=`: until every backend on the node is
/// drained, or the timeout.
pub async fn wait(
    State(s): St,
    Path(host): Path<String>,
    Query(q): Query<drain::WaitQuery>,
) -> Result<Response, ApiError> {
    let targets = targets(&s, &host)?;
    // Checked before blocking (`?streams=` was once ignored here; found by schemathesis).
    let streams = drain::listed(q.streams)?;
    let deadline = tokio::time::Instant::now() + drain::wait_timeout(&q)?;
    for r in &targets {
        drain::wait_until(&s, r, deadline, q.strict).await;
    }
    Ok(json(200, &status(&s, &host, &targets, streams, q.strict)))
}
