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
use bytes::Bytes;
use pingora::{
    http::{RequestHeader, ResponseHeader},
    prelude::*,
    proxy::{FailToProxy, ProxyHttp, Session},
    ErrorType::HTTPStatus,
};

use crate::{
    config::runtime::{Pool, Route},
    drain::enforce::WS_CLOSE_1001,
    state::{
        stats::StreamEnd,
        tracking::{EndReason, Kind, Tracking},
        ActiveGuard, AppState,
    },
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
    backend: Option<Tracking>,
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
        if let Some(m) = cfg
            .maintenance
            .as_ref()
            .filter(|m| m.matches(&route.name, &req.method))
        {
            errors::respond_maintenance(session, m).await?;
            return Ok(true);
        }
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

    async fn upstream_peer(&self, session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let (Some(pool), Some(route)) = (ctx.pool.as_ref(), ctx.route.as_ref()) else {
            return Err(Error::explain(HTTPStatus(500), "no route chosen"));
        };
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
        let client = session.client_addr().and_then(|a| a.as_inet()).copied();
        ctx.backend = Some(Tracking::new(
            b.state.clone(),
            route.name.clone(),
            session.req_header().uri.clone(),
            client,
        ));
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
        let st = guard.backend().clone();
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
        if retry {
            // Relaxed: a statistics counter.
            route
                .stats
                .retries
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        // Nothing reached the backend yet, so any method is safe to retry elsewhere.
        e.set_retry(retry);
        e
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        _reused: bool,
        _peer: &HttpPeer,
        #[cfg(unix)] fd: std::os::unix::io::RawFd,
        _digest: Option<&pingora::protocols::Digest>,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let Some(t) = &ctx.backend {
            t.item().set_fd(Some(fd));
        }
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let Some(t) = &ctx.backend else { return Ok(()) };
        if resp.status == http::StatusCode::SWITCHING_PROTOCOLS && session.is_upgrade_req() {
            t.set_kind(Kind::WebSocket);
        } else if is_event_stream(resp) {
            t.set_kind(Kind::Sse);
        }
        Ok(())
    }

    fn upstream_response_body_filter(
        &self,
        _session: &mut Session,
        _body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<Option<std::time::Duration>> {
        if end_of_stream {
            // The upstream connection may go back to the pool now: forget its socket so a
            // deadline can never shut down a connection another request reuses.
            if let Some(t) = &ctx.backend {
                t.item().set_fd(None);
            }
        }
        Ok(None)
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<Option<std::time::Duration>> {
        // A WebSocket ended at a deadline: the backend got close 1001 on its socket; the
        // client gets one as the last bytes of the upgraded stream.
        if end_of_stream {
            if let Some(t) = &ctx.backend {
                if t.item().kind() == Kind::WebSocket && t.item().ended().is_some() {
                    let mut b = body.take().map(|b| b.to_vec()).unwrap_or_default();
                    b.extend_from_slice(&WS_CLOSE_1001);
                    *body = Some(Bytes::from(b));
                }
            }
        }
        Ok(None)
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        _ctx: &mut Ctx,
    ) -> Result<()> {
        forward_headers(session, upstream)
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        if let Some(t) = ctx.backend.as_ref().filter(|t| t.item().ended().is_some()) {
            return end_politely(session, t.item().kind(), t.item().ended()).await;
        }
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
        record_stats(ctx, status, e);
        tracing::debug!(
            route = ctx.route.as_ref().map(|r| &*r.name),
            backend = ctx.backend.as_ref().map(|b| &*b.backend().id),
            status,
            elapsed_ms = ctx.started.elapsed().as_millis() as u64,
            error = e.map(|e| e.to_string()),
            "request done"
        );
    }
}

/// Finish a response that was ended on purpose (drain deadline or shutdown grace): SSE gets
/// a clean end of body (final chunk) so EventSource reconnects; a WebSocket client gets close
/// 1001; a plain request that has no response yet gets 503 JSON.
async fn end_politely(session: &mut Session, kind: Kind, why: Option<EndReason>) -> FailToProxy {
    let started = session.response_written().is_some();
    let res = match (kind, started) {
        (Kind::Sse, true) => session.write_response_body(Some(Bytes::new()), true).await,
        (Kind::WebSocket, true) => {
            session
                .write_response_body(Some(Bytes::from_static(&WS_CLOSE_1001)), true)
                .await
        }
        (_, false) => {
            let msg = match why {
                Some(EndReason::Shutdown) => "tidegate is shutting down",
                _ => "the backend was drained and its deadline passed",
            };
            errors::respond(session, 503, "ended", msg).await
        }
        (Kind::Http, true) => Ok(()),
    };
    if let Err(e) = res {
        tracing::debug!(error = %e, "could not finish an ended response");
    }
    FailToProxy {
        error_code: if started { 0 } else { 503 },
        can_reuse_downstream: false,
    }
}

/// Request counters and duration by route × pool; stream ends by reason.
fn record_stats(ctx: &Ctx, status: u16, e: Option<&Error>) {
    let Some(route) = &ctx.route else { return };
    let pool = ctx.pool.as_ref().map_or("none", |p| &*p.name);
    if let Some(s) = route.stats.for_pool(pool) {
        s.observe(status, ctx.started.elapsed());
    }
    let Some(t) = &ctx.backend else { return };
    let kind = t.item().kind();
    if kind.is_stream() {
        let why = if t.item().ended().is_some() {
            StreamEnd::Deadline
        } else {
            match e.map(|e| e.esource()) {
                None => StreamEnd::Completed,
                Some(pingora::ErrorSource::Downstream) => StreamEnd::Client,
                Some(_) => StreamEnd::Upstream,
            }
        };
        t.backend()
            .pool
            .streams_ended
            .record(kind == Kind::WebSocket, why);
    }
}

fn is_event_stream(resp: &ResponseHeader) -> bool {
    resp.headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start()
                .to_ascii_lowercase()
                .starts_with("text/event-stream")
        })
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
