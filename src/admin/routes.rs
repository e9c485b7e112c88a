//! Admin request dispatch: a plain `match (method, path)`.

use std::sync::Arc;

use http_body_util::{BodyExt, Limited};
use hyper::{body::Incoming, Method, Request};
use serde_json::json;

use super::{auth, body, drain, error, json, overrides, status, AdminResponse};
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
        "/health" => only(&method, &[Method::GET, Method::HEAD], || {
            status::health(state)
        }),
        "/metrics" => {
            let cfg = state.config();
            if cfg.admin.metrics_auth
                && !auth::authorized(
                    cfg.admin.token.as_ref(),
                    req.headers().get(http::header::AUTHORIZATION),
                )
            {
                return unauthorized();
            }
            only(&method, &[Method::GET, Method::HEAD], || metrics(state))
        }
        p if p.starts_with("/api/v1/") => {
            let cfg = state.config();
            if !auth::authorized(
                cfg.admin.token.as_ref(),
                req.headers().get(http::header::AUTHORIZATION),
            ) {
                return unauthorized();
            }
            let query = req.uri().query().map(str::to_owned);
            let content_type = req.headers().get(http::header::CONTENT_TYPE).cloned();
            let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
                Ok(b) => b.to_bytes(),
                Err(_) => return error(413, "body_too_large", "request body over 64 KiB"),
            };
            if let Err(e) = body::check(content_type.as_ref(), &body) {
                return e.response();
            }
            api(state, &method, p, query.as_deref(), &body).await
        }
        _ => error(404, "not_found", &format!("no admin endpoint at {path}")),
    }
}

fn unauthorized() -> AdminResponse {
    let mut r = error(401, "unauthorized", "missing or wrong bearer token");
    r.headers_mut().insert(
        http::header::WWW_AUTHENTICATE,
        http::HeaderValue::from_static("Bearer realm=\"tidegate\""),
    );
    r
}

fn metrics(state: &AppState) -> AdminResponse {
    let body = crate::metrics::render(state);
    hyper::Response::builder()
        .status(200)
        .header(
            http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
        .unwrap_or_else(|_| error(500, "internal", "cannot build the metrics response"))
}

/// Largest admin request body.
const MAX_BODY: usize = 64 * 1024;

async fn api(
    state: &Arc<AppState>,
    method: &Method,
    path: &str,
    query: Option<&str>,
    body: &[u8],
) -> AdminResponse {
    if let Some(rest) = path.strip_prefix("/api/v1/pools/") {
        return pools(state, method, rest, query, body).await;
    }
    if let Some(route) = path
        .strip_prefix("/api/v1/routes/")
        .and_then(|r| r.strip_suffix("/split"))
    {
        let route = percent_decode(route);
        return match *method {
            Method::POST | Method::PUT => overrides::split(state, false, &route, body),
            Method::DELETE => overrides::split(state, true, &route, body),
            _ => return not_allowed(&[Method::POST, Method::PUT, Method::DELETE]),
        }
        .unwrap_or_else(|e| e.response());
    }
    if path == "/api/v1/maintenance" {
        return match *method {
            Method::POST | Method::PUT => overrides::maintenance(state, false, body),
            Method::DELETE => overrides::maintenance(state, true, body),
            _ => return not_allowed(&[Method::POST, Method::PUT, Method::DELETE]),
        }
        .unwrap_or_else(|e| e.response());
    }
    match path {
        "/api/v1/status" => only(method, &[Method::GET], || status::status(state)),
        "/api/v1/config/reload" => {
            if *method != Method::POST {
                return not_allowed(&[Method::POST]);
            }
            reload(state).await
        }
        _ => error(404, "not_found", &format!("no admin endpoint at {path}")),
    }
}

/// `/api/v1/pools/{pool}/(drain|undrain|drain/wait)` and the same under
/// `/backends/{backend}/`.
async fn pools(
    state: &Arc<AppState>,
    method: &Method,
    rest: &str,
    query: Option<&str>,
    body: &[u8],
) -> AdminResponse {
    let segs: Vec<String> = rest.split('/').map(percent_decode).collect();
    let (pool, backend, tail) = match segs.as_slice() {
        [pool, tail @ ..] if !tail.is_empty() && tail[0] != "backends" => {
            (pool, None, tail.join("/"))
        }
        [pool, b, backend, tail @ ..] if b == "backends" && !tail.is_empty() => {
            (pool, Some(backend.as_str()), tail.join("/"))
        }
        _ => {
            return error(
                404,
                "not_found",
                &format!("no admin endpoint at /api/v1/pools/{rest}"),
            )
        }
    };
    if !matches!(tail.as_str(), "drain" | "undrain" | "drain/wait") {
        return error(
            404,
            "not_found",
            &format!("no admin endpoint at /api/v1/pools/{rest}"),
        );
    }
    match drain::resolve(state, pool, backend) {
        Ok(r) => drain::handle(state, method, r, &tail, query, body).await,
        Err(e) => e.response(),
    }
}

/// Decode `%XX` escapes in a path segment (backend names may hold `:`).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                // Two hex digits: at most 255.
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn only(method: &Method, allowed: &[Method], f: impl FnOnce() -> AdminResponse) -> AdminResponse {
    if allowed.contains(method) {
        f()
    } else {
        not_allowed(allowed)
    }
}

/// 405 with an `Allow` header.
pub(super) fn not_allowed(allowed: &[Method]) -> AdminResponse {
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
