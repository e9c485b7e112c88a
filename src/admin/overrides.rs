//! Override endpoints: `GET|POST|PUT|DELETE /api/v1/routes/{route}/split` (optionally a
//! ramp with `over`/`step`, rolled back by the server on errors with `max_error_rate`) and
//! `POST|PUT|DELETE /api/v1/maintenance`.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use axum::{
    body::Bytes,
    extract::{Path, State},
    response::Response,
};

use super::{body, json, view, ApiError};
use crate::{
    api,
    config::{build::SPLIT_MAX, duration::HumanDuration},
    services::{persist, ramps},
    state::{overrides::MaintenanceOverride, process::unix_now, AppState},
};

type St = State<Arc<AppState>>;

fn route_view(state: &AppState, route: &str) -> Result<api::RouteSplit, ApiError> {
    view::route_split(state, route)
        .ok_or_else(|| ApiError::new(404, "unknown_route", format!("no route named {route:?}")))
}

/// `over` and `step` of a ramp request (`step` defaults to a tenth of `over`).
fn ramp_timing(
    over: &Option<String>,
    step: &Option<String>,
) -> Result<Option<(Duration, Duration)>, ApiError> {
    let Some(over) = over else {
        return match step {
            Some(_) => Err(ApiError::field("step", "needs `over`")),
            None => Ok(None),
        };
    };
    let over = HumanDuration::parse(over)
        .map_err(|e| ApiError::field("over", &e))?
        .0;
    let step = match step {
        Some(s) => {
            HumanDuration::parse(s)
                .map_err(|e| ApiError::field("step", &e))?
                .0
        }
        None => over / 10,
    };
    if over.is_zero() || over > Duration::from_secs(24 * 3600) {
        return Err(ApiError::field("over", "must be between 1ms and 24h"));
    }
    if step < Duration::from_millis(100) || step > over {
        return Err(ApiError::field(
            "step",
            "must be at least 100ms and at most `over`",
        ));
    }
    Ok(Some((over, step)))
}

/// Validate a split body against the current config.
fn checked_split(
    state: &AppState,
    b: &api::SplitRequest,
) -> Result<BTreeMap<String, u32>, ApiError> {
    if b.split.is_empty() {
        return Err(ApiError::field("split", "name at least one pool"));
    }
    let cfg = state.table();
    let mut split = BTreeMap::new();
    for (pool, w) in &b.split {
        if !cfg.pools.contains_key(pool.as_str()) {
            return Err(ApiError::new(
                400,
                "unknown_pool",
                format!("split.{pool}: unknown pool {pool:?}"),
            ));
        }
        if !(0..=SPLIT_MAX).contains(w) {
            return Err(ApiError::new(
                400,
                "bad_request",
                format!("split.{pool}: {w} is out of range (0..={SPLIT_MAX})"),
            ));
        }
        // In range checked above.
        split.insert(pool.clone(), *w as u32);
    }
    Ok(split)
}

/// A spooled route's split may name only pools its replays can speak to.
fn check_replayable(
    state: &AppState,
    route: &str,
    split: &BTreeMap<String, u32>,
) -> Result<(), ApiError> {
    let cfg = state.table();
    let spools = cfg
        .routes
        .iter()
        .any(|r| &*r.name == route && r.spec.spool.is_some());
    let refusal = split.iter().filter(|(_, w)| **w > 0).find_map(|(p, _)| {
        let pool = cfg.pools.get(p.as_str())?;
        pool.spec.upstream.replay_refusal(p)
    });
    match refusal.filter(|_| spools) {
        Some(why) => Err(ApiError::new(400, "bad_request", format!("split: {why}"))),
        None => Ok(()),
    }
}

#[utoipa::path(get, path = "/api/v1/routes/{route}/split", tag = "routes", params(("route" = String, Path, description = "A route of the config")),
    responses((status = 200, description = "The split: effective, the file's, the override and the latest ramp", body = api::RouteSplit), (status = 404, description = "No such route", body = api::ErrorBody)))]
/// `GET /api/v1/routes/{route}/split`.
pub async fn split_get(State(s): St, Path(route): Path<String>) -> Result<Response, ApiError> {
    Ok(json(200, &route_view(&s, &route)?))
}

#[utoipa::path(method(post, put), path = "/api/v1/routes/{route}/split", tag = "routes", params(("route" = String, Path, description = "A route of the config")),
    request_body(content = api::SplitRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "The split is overridden now", body = api::RouteSplit),
        (status = 202, description = "A ramp to the split started (`over`)", body = api::RouteSplit),
        (status = 400, description = "An unknown pool, a weight out of range, a bad duration", body = api::ErrorBody),
        (status = 404, description = "No such route", body = api::ErrorBody),
    ))]
/// `POST|PUT`: the route's split override now (200), or a ramp to it (202).
pub async fn split_set(
    State(s): St,
    Path(route): Path<String>,
    b: Bytes,
) -> Result<Response, ApiError> {
    route_view(&s, &route)?;
    let req: api::SplitRequest = body::parse(&b)?;
    let timing = ramp_timing(&req.over, &req.step)?;
    let split = checked_split(&s, &req)?;
    check_replayable(&s, &route, &split)?;
    if let Some(r) = req.max_error_rate {
        if !(0.0..=1.0).contains(&r) {
            return Err(ApiError::field("max_error_rate", "must be between 0 and 1"));
        }
        if timing.is_none() {
            return Err(ApiError::field("max_error_rate", "needs `over` (a ramp)"));
        }
    }
    let Some((over, step)) = timing else {
        s.ramps.cancel(&route, "replaced by a new split request");
        tracing::info!(route, split = ?split, "split override set");
        s.change_overrides(|ov, _| {
            ov.splits.insert(route.clone(), split);
            Ok::<(), ApiError>(())
        })?;
        persist::save(&s);
        return Ok(json(200, &route_view(&s, &route)?));
    };
    let plan = ramps::Plan {
        to: split,
        over,
        step,
        max_error_rate: req.max_error_rate,
        min_requests: req.min_requests.unwrap_or(1),
    };
    ramps::start(&s, &route, plan);
    Ok(json(202, &route_view(&s, &route)?))
}

#[utoipa::path(delete, path = "/api/v1/routes/{route}/split", tag = "routes", params(("route" = String, Path, description = "A route of the config")),
    responses((status = 200, description = "Back to the file's split (a running ramp is cancelled)", body = api::RouteSplit), (status = 404, description = "No such route", body = api::ErrorBody)))]
/// `DELETE`: back to the file's split (cancels a running ramp).
pub async fn split_clear(State(s): St, Path(route): Path<String>) -> Result<Response, ApiError> {
    route_view(&s, &route)?;
    s.ramps.cancel(&route, "replaced by a new split request");
    s.change_overrides(|ov, _| {
        ov.splits.remove(&route);
        Ok::<(), ApiError>(())
    })?;
    persist::save(&s);
    tracing::info!(route, "split override cleared; back to the file's split");
    Ok(json(200, &route_view(&s, &route)?))
}

#[utoipa::path(delete, path = "/api/v1/maintenance", tag = "maintenance",
    responses(
        (status = 200, description = "Out of maintenance", body = api::MaintenanceStatus),
        (status = 409, description = "Not in maintenance", body = api::ErrorBody),
    ))]
/// `DELETE /api/v1/maintenance`: exit (409 if not in maintenance).
pub async fn maintenance_off(State(s): St) -> Result<Response, ApiError> {
    let was = s.change_overrides(|ov, _| Ok::<_, ApiError>(ov.maintenance.take()))?;
    if was.is_none() {
        return Err(ApiError::new(409, "conflict", "not in maintenance"));
    }
    persist::save(&s);
    tracing::info!("maintenance off");
    Ok(json(200, &view::maintenance(&None)))
}

fn methods(ms: &Option<Vec<String>>) -> Result<Option<Vec<String>>, ApiError> {
    let Some(ms) = ms else { return Ok(None) };
    ms.iter()
        .map(|m| {
            let up = m.to_ascii_uppercase();
            match http::Method::from_bytes(up.as_bytes()) {
                Ok(_) if !up.is_empty() && up.bytes().all(|c| c.is_ascii_uppercase()) => Ok(up),
                _ => Err(ApiError::field("methods", &format!("invalid method {m:?}"))),
            }
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

fn retry_after(v: &Option<String>) -> Result<u64, ApiError> {
    let Some(s) = v else { return Ok(30) };
    let d = HumanDuration::parse(s)
        .map_err(|e| ApiError::field("retry_after", &e))?
        .0;
    if d.as_secs() > 86_400 {
        return Err(ApiError::field("retry_after", "longer than a day"));
    }
    Ok(d.as_secs().max(1))
}

#[utoipa::path(method(post, put), path = "/api/v1/maintenance", tag = "maintenance",
    request_body(content = Option<api::MaintenanceRequest>, content_type = "application/json"),
    responses(
        (status = 200, description = "In maintenance: the setting", body = api::MaintenanceStatus),
        (status = 400, description = "An unknown route, a bad method or `retry_after`", body = api::ErrorBody),
    ))]
/// `POST|PUT /api/v1/maintenance`: enter (optionally scoped to routes and methods).
pub async fn maintenance_on(State(s): St, b: Bytes) -> Result<Response, ApiError> {
    let b: api::MaintenanceRequest = body::parse(&b)?;
    if let Some(routes) = &b.routes {
        let table = s.table();
        if let Some(bad) = routes
            .iter()
            .find(|r| !table.routes.iter().any(|x| &*x.name == r.as_str()))
        {
            return Err(ApiError::new(
                400,
                "unknown_route",
                format!("routes: unknown route {bad:?}"),
            ));
        }
    }
    let m = MaintenanceOverride {
        methods: methods(&b.methods)?,
        retry_after_seconds: retry_after(&b.retry_after)?,
        routes: b.routes,
        message: b.message,
        since: unix_now(),
    };
    tracing::info!(routes = ?m.routes, methods = ?m.methods, "maintenance on");
    let shown = view::maintenance(&Some(m.clone()));
    s.change_overrides(|ov, _| {
        ov.maintenance = Some(m);
        Ok::<(), ApiError>(())
    })?;
    persist::save(&s);
    Ok(json(200, &shown))
}
