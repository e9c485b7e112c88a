//! Admin request dispatch: a plain `match (method, path)`.

use std::sync::Arc;

use hyper::{body::Incoming, Method, Request};
use serde_json::json;

use super::{auth, error, json, AdminResponse};
use crate::state::AppState;

/// Route one admin request.
pub async fn handle(state: &Arc<AppState>, req: Request<Incoming>) -> AdminResponse {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    match path.as_str() {
        "/healthz" => only(&method, &[Method::GET, Method::HEAD], || {
            json(200, &json!({"status": "ok"}))
        }),
        "/readyz" => only(&method, &[Method::GET, Method::HEAD], || readyz(state)),
        "/health" => only(&method, &[Method::GET, Method::HEAD], || health(state)),
        p if p.starts_with("/api/v1/") => {
            let cfg = state.config();
            if !auth::authorized(
                cfg.admin.token.as_ref(),
                req.headers().get(http::header::AUTHORIZATION),
            ) {
                let mut r = error(401, "unauthorized", "missing or wrong bearer token");
                r.headers_mut().insert(
                    http::header::WWW_AUTHENTICATE,
                    http::HeaderValue::from_static("Bearer realm=\"tidegate\""),
                );
                return r;
            }
            api(state, &method, p).await
        }
        _ => error(404, "not_found", &format!("no admin endpoint at {path}")),
    }
}

async fn api(state: &Arc<AppState>, method: &Method, path: &str) -> AdminResponse {
    match path {
        "/api/v1/status" => only(method, &[Method::GET], || status(state)),
        "/api/v1/config/reload" => {
            if *method != Method::POST {
                return not_allowed(&[Method::POST]);
            }
            reload(state).await
        }
        _ => error(404, "not_found", &format!("no admin endpoint at {path}")),
    }
}

fn only(method: &Method, allowed: &[Method], f: impl FnOnce() -> AdminResponse) -> AdminResponse {
    if allowed.contains(method) {
        f()
    } else {
        not_allowed(allowed)
    }
}

fn not_allowed(allowed: &[Method]) -> AdminResponse {
    let list = allowed
        .iter()
        .map(Method::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    let mut r = error(405, "method_not_allowed", &format!("allowed: {list}"));
    if let Ok(v) = http::HeaderValue::from_str(&list) {
        r.headers_mut().insert(http::header::ALLOW, v);
    }
    r
}

fn readyz(state: &AppState) -> AdminResponse {
    if state.is_ready() {
        json(200, &json!({"ready": true}))
    } else {
        let why = if state.is_shutting_down() {
            "shutting down"
        } else {
            "starting"
        };
        json(503, &json!({"ready": false, "reason": why}))
    }
}

fn health(state: &AppState) -> AdminResponse {
    let cfg = state.config();
    let mut reasons = vec![];
    for p in cfg.pools.values() {
        if p.backends.iter().all(|b| !b.state.available()) {
            reasons.push(format!("pool {} has no available backend", p.name));
        } else if p.backends.iter().any(|b| b.state.drain.is_draining()) {
            reasons.push(format!("pool {} is draining", p.name));
        } else if p.backends.iter().any(|b| !b.state.healthy()) {
            reasons.push(format!("pool {} has unhealthy backends", p.name));
        }
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

fn status(state: &AppState) -> AdminResponse {
    let cfg = state.config();
    let routes: Vec<_> = cfg
        .routes
        .iter()
        .map(|r| {
            let split: serde_json::Map<_, _> = r
                .split
                .iter()
                .map(|(p, w)| (p.name.to_string(), json!(w)))
                .collect();
            json!({
                "name": &*r.name,
                "match": {"host": r.hosts, "path_prefix": r.path_prefix, "methods": r.methods},
                "split": split,
                "retries": r.retries,
            })
        })
        .collect();
    let pools: serde_json::Map<_, _> = cfg
        .pools
        .values()
        .map(|p| {
            let backends: Vec<_> = p
                .backends
                .iter()
                .map(|b| {
                    json!({
                        "id": &*b.id,
                        "name": &*b.name,
                        "address": b.address,
                        "weight": b.weight,
                        "healthy": b.state.healthy(),
                        "draining": b.state.drain.is_draining(),
                        "in_flight": b.state.in_flight(),
                        "connect_failures": b.state.connect_failures(),
                    })
                })
                .collect();
            (p.name.to_string(), json!({"backends": backends}))
        })
        .collect();
    let reloads = state.reload_stats();
    json(
        200,
        &json!({
            "generation": cfg.generation,
            "ready": state.is_ready(),
            "shutting_down": state.is_shutting_down(),
            "in_flight": state.active(),
            "routes": routes,
            "pools": pools,
            "reloads": reloads,
        }),
    )
}

async fn reload(state: &Arc<AppState>) -> AdminResponse {
    let st = state.clone();
    // File I/O and DNS resolution: off the admin runtime's async workers.
    let res = tokio::task::spawn_blocking(move || st.reload()).await;
    match res {
        Ok(Ok(summary)) => {
            tracing::info!(
                generation = summary.generation,
                source = "admin",
                "config reloaded"
            );
            json(200, &json!({"reloaded": true, "summary": summary}))
        }
        Ok(Err(e)) => {
            tracing::error!(source = "admin", error = %e, "config reload failed; keeping the running config");
            json(
                422,
                &json!({
                    "error": "invalid_config",
                    "kind": e.kind(),
                    "path": e.path(),
                    "message": e.to_string(),
                    "status": 422,
                }),
            )
        }
        Err(e) => error(500, "internal", &format!("reload task failed: {e}")),
    }
}
