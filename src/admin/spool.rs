//! The spool for an operator: list items, retry dead ones, delete; depths for status and
//! health.

use std::sync::Arc;

use axum::{
    body::Bytes,
    extract::{Path, Query, State},
    response::Response,
};

use super::{body, json, ApiError};
use crate::{
    api,
    services::spool::{
        now_ms,
        store::{ItemInfo, Select, Store},
        Spool,
    },
    state::AppState,
};

type Sp = State<Arc<Spool>>;

/// Items listed by default, and at most.
const LIMIT: u32 = 100;
const MAX_LIMIT: u32 = 1000;

/// Depths of routes that spool or still hold items, by name.
pub fn depths(state: &AppState) -> Vec<api::SpoolDepth> {
    let table = state.table();
    let now = now_ms();
    state
        .stats
        .spool_depths()
        .into_iter()
        .filter(|(name, d)| {
            d.pending() + d.dead() > 0
                || table
                    .routes
                    .iter()
                    .any(|r| r.name == *name && r.spec.spool.is_some())
        })
        .map(|(name, d)| api::SpoolDepth {
            route: name.to_string(),
            pending: d.pending(),
            dead: d.dead(),
            oldest_pending_seconds: d
                .oldest_ms()
                .filter(|_| d.pending() > 0)
                .map(|ms| (now - ms as i64).max(0) as f64 / 1000.0),
        })
        .collect()
}

fn store(spool: &Spool) -> Result<&Arc<Store>, ApiError> {
    spool
        .store()
        .map_err(|e| ApiError::new(503, "spool_unavailable", e.to_string()))
}

fn store_error(e: impl std::fmt::Display) -> ApiError {
    tracing::warn!(error = %e, "spool store call failed");
    ApiError::new(503, "spool_unavailable", format!("spool store: {e}"))
}

fn state_filter(s: &Option<String>) -> Result<Option<&str>, ApiError> {
    match s.as_deref() {
        None => Ok(None),
        Some(v @ ("pending" | "dead")) => Ok(Some(v)),
        Some(other) => Err(ApiError::field(
            "state",
            &format!("{other:?} is not a state: use pending or dead"),
        )),
    }
}

fn item(i: ItemInfo, now: i64) -> api::SpoolItem {
    let pending = i.state == "pending";
    api::SpoolItem {
        id: i.id,
        route: i.route,
        method: i.method,
        path: i.target,
        attempts: i.attempts.max(0) as u64,
        age_seconds: (now - i.created_ms).max(0) as f64 / 1000.0,
        next_attempt_in_seconds: pending.then(|| (i.next_ms - now).max(0) as f64 / 1000.0),
        state: i.state,
        last_error: i.last_error,
        last_status: i.last_status.and_then(|s| u16::try_from(s).ok()),
        body_bytes: i.body_bytes.max(0) as u64,
    }
}

#[utoipa::path(get, path = "/api/v1/spool", tag = "spool", params(api::SpoolQuery),
    responses((status = 200, description = "Items (oldest first) and depths by route", body = api::SpoolList), (status = 503, description = "No spool store, or it does not answer", body = api::ErrorBody)))]
/// `GET /api/v1/spool?route=&state=&limit=`.
pub async fn list(
    State(spool): Sp,
    Query(q): Query<api::SpoolQuery>,
) -> Result<Response, ApiError> {
    let st = state_filter(&q.state)?;
    let limit = q.limit.unwrap_or(LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::field("limit", "must be between 1 and 1000"));
    }
    let store = store(&spool)?;
    let sel = Select {
        id: None,
        route: q.route.as_deref(),
        state: st,
    };
    let (items, total) = store
        .list(sel, i64::from(limit))
        .await
        .map_err(store_error)?;
    let now = now_ms();
    let body = api::SpoolList {
        store: store.kind().into(),
        total: total.max(0) as u64,
        items: items.into_iter().map(|i| item(i, now)).collect(),
        routes: depths(&spool.state),
    };
    Ok(json(200, &body))
}

#[utoipa::path(post, path = "/api/v1/spool/{id}/retry", tag = "spool", params(("id" = i64, Path, description = "A spooled item's id")),
    responses((status = 200, description = "The item is pending again", body = api::SpoolChanged),
        (status = 404, description = "No dead item with this id", body = api::ErrorBody), (status = 503, description = "No spool store, or it does not answer", body = api::ErrorBody)))]
/// `POST /api/v1/spool/{id}/retry`: a dead item becomes pending again.
pub async fn retry_one(State(spool): Sp, Path(id): Path<i64>) -> Result<Response, ApiError> {
    let sel = Select {
        id: Some(id),
        route: None,
        state: None,
    };
    let n = store(&spool)?
        .revive(sel, now_ms())
        .await
        .map_err(store_error)?;
    if n == 0 {
        return Err(ApiError::new(
            404,
            "unknown_item",
            format!("no dead spooled item {id}"),
        ));
    }
    tracing::info!(id, "spooled item queued again by an operator");
    changed(&spool, n).await
}

#[utoipa::path(post, path = "/api/v1/spool/retry", tag = "spool",
    request_body(content = Option<api::SpoolRetryRequest>, content_type = "application/json"),
    responses((status = 200, description = "How many dead items are pending again", body = api::SpoolChanged), (status = 503, description = "No spool store, or it does not answer", body = api::ErrorBody)))]
/// `POST /api/v1/spool/retry` `{route?}`: every dead item (of a route) becomes pending.
pub async fn retry_all(State(spool): Sp, b: Bytes) -> Result<Response, ApiError> {
    let req: api::SpoolRetryRequest = body::parse(&b)?;
    let sel = Select {
        id: None,
        route: req.route.as_deref(),
        state: None,
    };
    let n = store(&spool)?
        .revive(sel, now_ms())
        .await
        .map_err(store_error)?;
    tracing::info!(
        route = req.route.as_deref(),
        items = n,
        "dead spooled items queued again by an operator"
    );
    changed(&spool, n).await
}

#[utoipa::path(delete, path = "/api/v1/spool/{id}", tag = "spool", params(("id" = i64, Path, description = "A spooled item's id")),
    responses((status = 200, description = "The item is deleted", body = api::SpoolChanged),
        (status = 404, description = "No such item (or it is being replayed)", body = api::ErrorBody), (status = 503, description = "No spool store, or it does not answer", body = api::ErrorBody)))]
/// `DELETE /api/v1/spool/{id}`.
pub async fn delete_one(State(spool): Sp, Path(id): Path<i64>) -> Result<Response, ApiError> {
    let sel = Select {
        id: Some(id),
        route: None,
        state: None,
    };
    let n = store(&spool)?.delete(sel).await.map_err(store_error)?;
    if n == 0 {
        return Err(ApiError::new(
            404,
            "unknown_item",
            format!("no spooled item {id} (or it is being replayed)"),
        ));
    }
    tracing::info!(id, "spooled item deleted by an operator");
    changed(&spool, n).await
}

#[utoipa::path(delete, path = "/api/v1/spool", tag = "spool", params(api::SpoolPurgeQuery),
    responses((status = 200, description = "How many items were deleted", body = api::SpoolChanged),
        (status = 400, description = "`state` is missing or not `pending`/`dead`", body = api::ErrorBody), (status = 503, description = "No spool store, or it does not answer", body = api::ErrorBody)))]
/// `DELETE /api/v1/spool?route=&state=`: purge (a state is required, so a bare call does
/// not drop pending work).
pub async fn purge(
    State(spool): Sp,
    Query(q): Query<api::SpoolPurgeQuery>,
) -> Result<Response, ApiError> {
    let state = Some(q.state.clone());
    let Some(st) = state_filter(&state)? else {
        return Err(ApiError::field(
            "state",
            "required: dead, or pending to drop undelivered requests",
        ));
    };
    let sel = Select {
        id: None,
        route: q.route.as_deref(),
        state: Some(st),
    };
    let n = store(&spool)?.delete(sel).await.map_err(store_error)?;
    tracing::warn!(
        route = q.route.as_deref(),
        state = st,
        items = n,
        "spooled items purged by an operator"
    );
    changed(&spool, n).await
}

/// Answer with the count after reading depths again (so status agrees at once).
async fn changed(spool: &Spool, n: u64) -> Result<Response, ApiError> {
    spool.refresh_now().await;
    Ok(json(200, &api::SpoolChanged { changed: n }))
}
