//! `GET /health` and `GET /api/v1/status`: the proxy's state as JSON.

use std::{collections::HashSet, sync::Arc};

use serde_json::{json, Value};

use super::{json, AdminResponse};
use crate::{
    drain::{machine::Phase, view},
    state::{backend::BackendState, AppState},
};

/// `healthy` | `degraded` (a drain, unhealthy backends, a pool with nothing available) |
/// `unhealthy` (shutting down; 503).
pub fn health(state: &AppState) -> AdminResponse {
    let cfg = state.config();
    let mut reasons = vec![];
    for p in cfg.pools.values() {
        let pool_phase = p.backends.first().map(|b| b.state.pool.drain.phase());
        if let Some(ph) = pool_phase.filter(|ph| *ph != Phase::Active) {
            reasons.push(format!("pool {} is {}", p.name, ph.as_str()));
        } else if let Some(b) = p.backends.iter().find(|b| b.state.drain.is_draining()) {
            reasons.push(format!(
                "backend {} is {}",
                b.id,
                b.state.drain.phase().as_str()
            ));
        } else if p.backends.iter().all(|b| !b.state.available()) {
            reasons.push(format!("pool {} has no available backend", p.name));
        } else if p.backends.iter().any(|b| !b.state.healthy()) {
            reasons.push(format!("pool {} has unhealthy backends", p.name));
        }
    }
    if cfg.maintenance.is_some() {
        reasons.push("maintenance mode is on".to_string());
    }
    let status = if state.is_shutting_down() {
        "unhealthy"
    } else if reasons.is_empty() {
        "healthy"
    } else {
        "degraded"
    };
    let code = if status == "unhealthy" { 503 } else { 200 };
    json(
        code,
        &json!({
            "status": status,
            "reasons": reasons,
            "uptime_seconds": state.started.elapsed().as_secs(),
            "generation": cfg.generation,
        }),
    )
}

fn backend_json(b: &Arc<BackendState>, address: Option<&str>, weight: Option<u32>) -> Value {
    let drain = b.drain.snapshot();
    let oldest = b
        .items
        .all()
        .into_iter()
        .find(|i| i.kind().is_stream())
        .map(|i| i.age(std::time::Instant::now()).as_secs_f64());
    json!({
        "id": &*b.id,
        "name": &*b.name,
        "address": address,
        "weight": weight,
        "state": drain.phase().as_str(),
        "available": b.available(),
        "healthy": b.healthy(),
        "in_flight": b.counts.snapshot(),
        "oldest_stream_age_seconds": oldest,
        "drain_started_at": drain.started_at().map(view::unix),
        "drained_at": drain.drained_at().map(view::unix),
        "connect_failures": b.connect_failures(),
    })
}

/// Generation, routes and splits, pools with drain state, backends, removed-but-busy work.
pub fn status(state: &AppState) -> AdminResponse {
    let cfg = state.config();
    let ov = state.overrides_snapshot();
    let routes: Vec<_> = cfg
        .routes
        .iter()
        .map(|r| {
            let mut v = super::overrides::route_json(state, &r.name);
            v["name"] = json!(&*r.name);
            v["match"] =
                json!({"host": r.hosts, "path_prefix": r.path_prefix, "methods": r.methods});
            v["retries"] = json!(r.retries);
            v
        })
        .collect();
    let mut live: HashSet<&str> = HashSet::new();
    let pools: serde_json::Map<_, _> = cfg
        .pools
        .values()
        .map(|p| {
            let backends: Vec<_> = p
                .backends
                .iter()
                .map(|b| {
                    live.insert(&b.id);
                    let mut v = backend_json(&b.state, Some(&b.address), Some(b.weight));
                    v["file_state"] = json!(if b.declared_draining {
                        "draining"
                    } else {
                        "active"
                    });
                    v
                })
                .collect();
            let ps = &p.backends[0].state.pool;
            let drain = ps.drain.snapshot();
            (
                p.name.to_string(),
                json!({
                    "state": drain.phase().as_str(),
                    "file_state": if p.declared_draining { "draining" } else { "active" },
                    "in_flight": ps.counts.snapshot(),
                    "drain_started_at": drain.started_at().map(view::unix),
                    "drained_at": drain.drained_at().map(view::unix),
                    "backends": backends,
                }),
            )
        })
        .collect();
    let removed: Vec<_> = state
        .registry
        .all()
        .iter()
        .filter(|b| !live.contains(&*b.id) && b.in_flight() > 0)
        .map(|b| {
            let mut v = backend_json(b, None, None);
            v["state"] = json!("removed");
            v
        })
        .collect();
    json(
        200,
        &json!({
            "generation": cfg.generation,
            "ready": state.is_ready(),
            "shutting_down": state.is_shutting_down(),
            "in_flight": state.active(),
            "routes": routes,
            "pools": pools,
            "removed": removed,
            "maintenance": super::overrides::maintenance_json(&ov.maintenance),
            "reloads": state.reload_stats(),
        }),
    )
}
