//! Override endpoints: `POST|DELETE /api/v1/routes/{route}/split` (optionally a ramp with
//! `over`/`step`) and `POST|DELETE /api/v1/maintenance`.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use serde::Deserialize;
use serde_json::{json, Value};

use super::{json, AdminResponse, ApiError};
use crate::{
    config::{build::SPLIT_MAX, duration::HumanDuration},
    drain::view,
    state::{overrides::MaintenanceOverride, AppState},
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SplitBody {
    split: BTreeMap<String, i64>,
    #[serde(default)]
    over: Option<String>,
    #[serde(default)]
    step: Option<String>,
}

fn parse<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::field("body", &format!("invalid JSON: {e}")))
}

/// The split view of one route: effective, file, whether overridden, the latest ramp.
pub fn route_json(state: &AppState, route: &str) -> Value {
    let cfg = state.config();
    let ov = state.overrides_snapshot();
    let Some(r) = cfg.routes.iter().find(|r| &*r.name == route) else {
        return Value::Null;
    };
    let split: serde_json::Map<_, _> = r
        .split
        .iter()
        .map(|(p, w)| (p.name.to_string(), json!(w)))
        .collect();
    let file: serde_json::Map<_, _> = r
        .file_split
        .iter()
        .map(|(p, w)| (p.to_string(), json!(w)))
        .collect();
    json!({
        "route": route,
        "split": split,
        "file_split": file,
        "override": ov.splits.contains_key(route),
        "ramp": state.ramps.get(route),
    })
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
fn checked_split(state: &AppState, b: &SplitBody) -> Result<BTreeMap<String, u32>, ApiError> {
    if b.split.is_empty() {
        return Err(ApiError::field("split", "name at least one pool"));
    }
    let cfg = state.config();
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

/// `POST` sets the route's split override now (200), or starts a ramp to it (202);
/// `DELETE` returns it to the file's split. Either cancels a running ramp of the route.
pub fn split(
    state: &Arc<AppState>,
    delete: bool,
    route: &str,
    body: &[u8],
) -> Result<AdminResponse, ApiError> {
    if !state.config().routes.iter().any(|r| &*r.name == route) {
        return Err(ApiError::new(
            404,
            "unknown_route",
            format!("no route named {route:?}"),
        ));
    }
    if delete {
        state.ramps.cancel(route, "replaced by a new split request");
        state.change_overrides(|ov, _| {
            ov.splits.remove(route);
            Ok::<(), ApiError>(())
        })?;
        tracing::info!(route, "split override cleared; back to the file's split");
        return Ok(json(200, &route_json(state, route)));
    }
    let b: SplitBody = parse(body)?;
    let ramp = ramp_timing(&b.over, &b.step)?;
    let split = checked_split(state, &b)?;
    match ramp {
        Some((over, step)) => {
            state.start_ramp(route, split, over, step);
            Ok(json(202, &route_json(state, route)))
        }
        None => {
            state.ramps.cancel(route, "replaced by a new split request");
            tracing::info!(route, split = ?split, "split override set");
            state.change_overrides(|ov, _| {
                ov.splits.insert(route.to_string(), split);
                Ok::<(), ApiError>(())
            })?;
            Ok(json(200, &route_json(state, route)))
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct MaintenanceBody {
    #[serde(default)]
    routes: Option<Vec<String>>,
    #[serde(default)]
    methods: Option<Vec<String>>,
    #[serde(default)]
    retry_after: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

/// The maintenance view.
pub fn maintenance_json(m: &Option<MaintenanceOverride>) -> Value {
    match m {
        None => json!({"maintenance": false}),
        Some(m) => json!({
            "maintenance": true,
            "routes": m.routes,
            "methods": m.methods,
            "retry_after_seconds": m.retry_after_seconds,
            "message": m.message,
            "since": m.since,
        }),
    }
}

/// `POST` enters maintenance (optionally scoped to routes and methods); `DELETE` exits.
pub fn maintenance(
    state: &Arc<AppState>,
    delete: bool,
    body: &[u8],
) -> Result<AdminResponse, ApiError> {
    if delete {
        let was = state.change_overrides(|ov, _| Ok::<_, ApiError>(ov.maintenance.take()))?;
        if was.is_none() {
            return Err(ApiError::new(409, "conflict", "not in maintenance"));
        }
        tracing::info!("maintenance off");
        return Ok(json(200, &maintenance_json(&None)));
    }
    let b: MaintenanceBody = if body.iter().all(u8::is_ascii_whitespace) {
        MaintenanceBody::default()
    } else {
        parse(body)?
    };
    if let Some(routes) = &b.routes {
        let cfg = state.config();
        if let Some(bad) = routes
            .iter()
            .find(|r| !cfg.routes.iter().any(|x| &*x.name == r.as_str()))
        {
            return Err(ApiError::new(
                400,
                "unknown_route",
                format!("routes: unknown route {bad:?}"),
            ));
        }
    }
    let methods = match &b.methods {
        None => None,
        Some(ms) => Some(
            ms.iter()
                .map(|m| {
                    let up = m.to_ascii_uppercase();
                    match http::Method::from_bytes(up.as_bytes()) {
                        Ok(_) if !up.is_empty() && up.bytes().all(|c| c.is_ascii_uppercase()) => {
                            Ok(up)
                        }
                        _ => Err(ApiError::field("methods", &format!("invalid method {m:?}"))),
                    }
                })
                .collect::<Result<Vec<_>, _>>()?,
        ),
    };
    let retry_after = match &b.retry_after {
        None => 30,
        Some(s) => {
            let d = HumanDuration::parse(s)
                .map_err(|e| ApiError::field("retry_after", &e))?
                .0;
            if d.as_secs() > 86_400 {
                return Err(ApiError::field("retry_after", "longer than a day"));
            }
            d.as_secs().max(1)
        }
    };
    let m = MaintenanceOverride {
        routes: b.routes,
        methods,
        retry_after_seconds: retry_after,
        message: b.message,
        since: view::unix(std::time::SystemTime::now()),
    };
    tracing::info!(routes = ?m.routes, methods = ?m.methods, "maintenance on");
    let view = maintenance_json(&Some(m.clone()));
    state.change_overrides(|ov, _| {
        ov.maintenance = Some(m);
        Ok::<(), ApiError>(())
    })?;
    Ok(json(200, &view))
}
