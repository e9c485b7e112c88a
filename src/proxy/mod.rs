//! The data path: `impl ProxyHttp` — route, pick, connect with retries, forward headers.
//!
//! Hook order per request: `new_ctx` (process-wide in-flight guard) → `request_filter`
//! (route + pool from one config snapshot; 404/503 answered here) → `upstream_peer` (backend
//! pick, per-backend in-flight guard; may run again on retry) → `fail_to_connect` (mark the
//! backend failed and allow a retry on another one) → `upstream_request_filter`
//! (X-Forwarded-*) → … → `fail_to_proxy` (JSON error body). Counters go down in `Drop` of the
//! guards held in [`Ctx`], so every path — including a dropped task — brings them back.

mod errors;

use std::{sync::Arc, time::Instant};

use async_trait::async_trait;
use pingora::{
    http::RequestHeader,
    prelude::*,
    proxy::{FailToProxy, ProxyHttp, Session},
    ErrorType::HTTPStatus,
};

use crate::{
    config::runtime::{Pool, Route},
    state::{backend::InFlightGuard, ActiveGuard, AppState},
};

pub use errors::json_error_body;

/// The proxy application; one instance is shared by every listener's service.
pub struct Proxy {
    state: Arc<AppState>,
}

impl Proxy {
    /// A proxy over the shared state.
    pub fn new(state: Arc<AppState>) -> Self {
        Self { state }
    }
}

/// Per-request context. Field order matters only for `Drop`: the backend guard goes before
/// the process-wide one.
pub struct Ctx {
    route: Option<Arc<Route>>,
    pool: Option<Arc<Pool>>,
    backend: Option<InFlightGuard>,
    /// Indexes (in `pool.backends`) that refused or timed out on connect.
    failed: Vec<u32>,
    upgrade: bool,
    started: Instant,
    _active: ActiveGuard,
}

#[async_trait]
impl ProxyHttp for Proxy {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx {
            route: None,
            pool: None,
            backend: None,
            failed: Vec::new(),
            upgrade: false,
            started: Instant::now(),
            _active: ActiveGuard::new(self.state.clone()),
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let cfg = self.state.config();
        let req = session.req_header();
        let host = request_host(req).unwrap_or_default();
        let Some(route) = cfg.route(host, req.uri.path(), &req.method) else {
            errors::respond(
                session,
                404,
                "no_route",
                "no route matches this host and path",
            )
            .await?;
            return Ok(true);
        };
        let Some(pool) = route.pick_pool() else {
            let msg = format!("route {:?} has no available backend", route.name);
            errors::respond(session, 503, "no_available_backend", &msg).await?;
            return Ok(true);
        };
        ctx.upgrade = session.is_upgrade_req();
        let timeout = if ctx.upgrade {
            cfg.timeouts.websocket_idle
        } else {
            cfg.timeouts.client_read
        };
        session.set_read_timeout(timeout);
        ctx.pool = Some(pool.clone());
        ctx.route = Some(route.clone());
        Ok(false)
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let pool = ctx
            .pool
            .as_ref()
            .ok_or_else(|| Error::explain(HTTPStatus(500), "no pool chosen"))?;
        let Some((_idx, b)) = pool.pick(&ctx.failed) else {
            return Err(if ctx.failed.is_empty() {
                Error::explain(
                    HTTPStatus(503),
                    format!("pool {:?} has no available backend", pool.name),
                )
            } else {
                Error::explain(
                    HTTPStatus(502),
                    format!("no backend of pool {:?} could be reached", pool.name),
                )
            });
        };
        // Replacing the guard drops the previous attempt's count (a retry is counted once).
        ctx.backend = Some(InFlightGuard::new(b.state.clone()));
        let cfg = self.state.config();
        let t = &cfg.timeouts;
        let mut peer = HttpPeer::new(b.addr, false, String::new());
        peer.options.connection_timeout = Some(t.connect);
        peer.options.total_connection_timeout = Some(t.connect);
        peer.options.idle_timeout = Some(t.upstream_keepalive);
        if ctx.upgrade {
            // WebSocket needs HTTP/1.1 upstream, and no read timeout on the upstream side:
            // silence is governed by `timeouts.websocket_idle` on the client side.
            peer.options.set_http_version(1, 1);
        } else {
            peer.options.read_timeout = t.upstream_read;
        }
        Ok(Box::new(peer))
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        let Some(guard) = ctx.backend.take() else {
            return e;
        };
        let st = guard.state().clone();
        drop(guard);
        st.record_connect_failure();
        let (Some(route), Some(pool)) = (&ctx.route, &ctx.pool) else {
            return e;
        };
        if let Some(idx) = pool
            .backends
            .iter()
            .position(|b| Arc::ptr_eq(&b.state, &st))
        {
            ctx.failed.push(idx as u32);
        }
        let retry =
            ctx.failed.len() <= route.retries as usize && pool.has_available_except(&ctx.failed);
        tracing::warn!(
            backend = %st.id,
            error = e.etype().as_str(),
            retry,
            "upstream connect failed"
        );
        // Nothing reached the backend yet, so any method is safe to retry elsewhere.
        e.set_retry(retry);
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        _ctx: &mut Ctx,
    ) -> Result<()> {
        forward_headers(session, upstream)
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, _ctx: &mut Ctx) -> FailToProxy {
        let code = errors::status_for(e);
        if code > 0 {
            let (kind, msg) = errors::describe(e, code);
            if let Err(we) = errors::respond(session, code, kind, &msg).await {
                tracing::debug!(error = %we, "could not write error response");
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        tracing::debug!(
            route = ctx.route.as_ref().map(|r| &*r.name),
            backend = ctx.backend.as_ref().map(|b| &*b.state().id),
            status,
            elapsed_ms = ctx.started.elapsed().as_millis() as u64,
            error = e.map(|e| e.to_string()),
            "request done"
        );
    }
}

/// The request's host: `Host` header (HTTP/1.1) or the URI authority (HTTP/2).
fn request_host(req: &RequestHeader) -> Option<&str> {
    req.headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri.authority().map(|a| a.as_str()))
}

/// X-Forwarded-For (appended), X-Forwarded-Proto and X-Forwarded-Host (set), plus a Host
/// header for HTTP/2 clients whose authority came in the URI.
fn forward_headers(session: &Session, upstream: &mut RequestHeader) -> Result<()> {
    let host = request_host(session.req_header()).map(str::to_owned);
    if let Some(ip) = session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip())
    {
        let xff = match upstream
            .headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
        {
            Some(prev) if !prev.trim().is_empty() => format!("{prev}, {ip}"),
            _ => ip.to_string(),
        };
        upstream.insert_header("x-forwarded-for", xff)?;
    }
    let tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
    upstream.insert_header("x-forwarded-proto", if tls { "https" } else { "http" })?;
    if let Some(h) = host {
        if upstream.headers.get(http::header::HOST).is_none() {
            upstream.insert_header(http::header::HOST, h.as_str())?;
        }
        upstream.insert_header("x-forwarded-host", h)?;
    }
    Ok(())
}
