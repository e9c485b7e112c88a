//! The data path: `impl ProxyHttp` — route, pick, hold, connect with retries, forward headers.
//!
//! Hook order per request: `new_ctx` (process-wide in-flight guard) → `request_filter`
//! (route + pool from one config snapshot; 404 and maintenance answered here; held while no
//! backend is available) → `upstream_peer` (backend pick, per-backend tracking guard; may run
//! again on retry, and holds when every backend refused) → `connected_to_upstream` (socket
//! registered for deadline ends) → `fail_to_connect` (passive health, retry elsewhere) →
//! `upstream_request_filter` (X-Forwarded-*) → response filters (SSE/WebSocket
//! classification) → `fail_to_proxy` (JSON errors, polite ends) → `logging` (statistics).
//! Counters go down in `Drop` of the guards held in [`Ctx`], so every path — including a
//! dropped task — brings them back.

mod affinity;
mod edge;
mod errors;
mod finish;
mod grpc;
mod headers;
mod held;
mod hold;
#[doc(hidden)]
pub mod hygiene;
mod log;
mod pick;
mod retry;
mod spool;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use async_trait::async_trait;
use bytes::Bytes;
use pingora::{
    http::{RequestHeader, ResponseHeader},
    modules::http::HttpModules,
    prelude::*,
    proxy::{FailToProxy, ProxyHttp, Session},
};

use crate::access_log::Outcome;
use crate::services::spool::Spool;
use crate::state::{
    counts::Kind,
    table::{Pool, Route},
    tracking::Tracking,
    ActiveGuard, AppState,
};
use finish::{end_politely, record_stats};
use headers::{forward_headers, is_event_stream, REQUEST_ID};
use pick::{route_on, Routed};

/// The proxy application; one instance is shared by every listener's service.
pub struct Proxy {
    state: Arc<AppState>,
    spool: Arc<Spool>,
    edge: Edge,
}

pub use edge::Edge;

impl Proxy {
    /// A proxy over the shared state, spooling through `spool`.
    pub fn new(state: Arc<AppState>, spool: Arc<Spool>) -> Self {
        Self {
            state,
            spool,
            edge: Edge::default(),
        }
    }

    /// Serving one listener (its redirect and HSTS).
    pub fn on(self, edge: Edge) -> Self {
        Self { edge, ..self }
    }
}

impl Proxy {
    /// What every request starts with: pipelining, its kind, and `Connection: close` once
    /// shutdown has begun.
    fn begin(&self, session: &mut Session, ctx: &mut Ctx) {
        // RFC 9112 9.3.2: pipelined requests are answered one after the other, in order
        // (pingora's default drops them and closes the connection).
        session.as_mut().set_pipelining_enabled(true);
        ctx.upgrade = session.is_upgrade_req();
        if grpc::is_grpc(session.req_header()) {
            ctx.kind = Kind::Grpc;
        }
        if self.state.is_shutting_down() {
            // Answer with `Connection: close` from the moment shutdown begins, so clients move
            // to fresh connections (the new process after an upgrade) before the listeners
            // close and idle keep-alive connections are dropped under them.
            session.set_keepalive(None);
        }
    }
}

/// Connect attempts one request may make in all (holds and retries included).
const MAX_ATTEMPTS: u32 = 12;

/// Per-request context. Field order matters only for `Drop`: the backend guard goes before
/// the process-wide one.
pub struct Ctx {
    route: Option<Arc<Route>>,
    pool: Option<Arc<Pool>>,
    backend: Option<Tracking>,
    /// Backends this request failed on (refused or timed-out connects, fresh connections
    /// that died before answering).
    failed: pick::Failed,
    /// Connect attempts so far (bounded by [`MAX_ATTEMPTS`]).
    attempts: u32,
    /// The backend's response header arrived (no retry after that).
    answered: bool,
    /// A connection to a backend was made (the request body may have been read).
    connected: bool,
    /// The request was spooled after its attempts failed (its error is not one to log).
    spooled: bool,
    /// Its stay in the hold queue (deadline, time waited).
    hold: hold::Hold,
    /// What tidegate decided itself (refusals, maintenance, no backend); `None`: it follows
    /// from the response and the error (see `log::outcome`).
    outcome: Option<Outcome>,
    /// When the current attempt's connect began, and how long the last one took.
    attempt_started: Option<Instant>,
    connect_time: Option<Duration>,
    /// From arrival to the backend's response header.
    first_byte: Option<Duration>,
    /// Name of the last backend picked (kept when a failed attempt drops its tracking).
    last_backend: Option<Arc<str>>,
    /// What the request asks of the pick (affinity key, forced pool), and how its pool was
    /// chosen.
    want: crate::routing::pick::Want,
    how: Option<crate::routing::pick::How>,
    /// An affinity cookie value minted for it, set on its response.
    minted: Option<Box<str>>,
    upgrade: bool,
    /// `grpc` for a gRPC call (known from the request), else `http` (the response may make
    /// it a stream).
    kind: Kind,
    /// The upstream connection is HTTP/2 (shared by other requests).
    h2: bool,
    /// This call's turn to take an upstream HTTP/2 stream, held until it has one.
    h2_turn: Option<tokio::sync::OwnedSemaphorePermit>,
    started: Instant,
    _active: ActiveGuard,
}

#[async_trait]
impl ProxyHttp for Proxy {
    type CTX = Ctx;

    /// No downstream modules. pingora's default adds a response compression module, disabled,
    /// that still costs every request a context allocation and a filter call per header and
    /// body chunk; tidegate never compresses (event streams must pass through unbuffered).
    fn init_downstream_modules(&self, _modules: &mut HttpModules) {}

    fn new_ctx(&self) -> Ctx {
        Ctx {
            route: None,
            pool: None,
            backend: None,
            failed: pick::Failed::default(),
            attempts: 0,
            answered: false,
            connected: false,
            spooled: false,
            hold: hold::Hold::default(),
            outcome: None,
            attempt_started: None,
            connect_time: None,
            first_byte: None,
            last_backend: None,
            want: Default::default(),
            how: None,
            minted: None,
            upgrade: false,
            kind: Kind::Http,
            h2: false,
            h2_turn: None,
            started: Instant::now(),
            _active: ActiveGuard::new(self.state.clone()),
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        self.begin(session, ctx);
        if let Err((code, kind, msg)) = hygiene::check_framing(session.req_header()) {
            ctx.outcome = Some(Outcome::Refused);
            // The body's end is not known: nothing more is read on this connection.
            session.set_keepalive(None);
            errors::respond(session, code, kind, &msg).await?;
            return Ok(true);
        }
        if self.answered_early(session, ctx).await? {
            return Ok(true);
        }
        let cfg = self.state.table();
        let req = session.req_header_mut();
        // Hygiene first: the header limit counts what the client sent, not the id added.
        let refused = hygiene::apply(req, &cfg.spec.http);
        headers::ensure_request_id(req, cfg.spec.http.request_id);
        headers::start_trace(req, &cfg.spec.trace);
        if let Err((code, kind, msg)) = refused {
            drop(cfg);
            ctx.outcome = Some(Outcome::Refused);
            // The request was not read as meant: do not try to read another on this
            // connection.
            session.set_keepalive(None);
            errors::respond(session, code, kind, &msg).await?;
            return Ok(true);
        }
        let req = session.req_header();
        let pq = req.uri.path_and_query().map_or("/", |p| p.as_str());
        if let Some(to) = self.edge.redirect_for(headers::request_host(req), pq) {
            drop(cfg);
            return Box::pin(self.to_https(session, ctx, to)).await;
        }
        let timeout = if ctx.upgrade {
            cfg.spec.timeouts.websocket_idle
        } else {
            cfg.spec.timeouts.client_read
        };
        let routed = route_on(&cfg, ctx.asking(session));
        drop(cfg);
        session.set_read_timeout(timeout);
        match routed {
            Routed::To(route, pool, picked) => {
                if let Some(spec) = self.queued_behind_spool(&route, session) {
                    // Items wait in the spool: this one goes behind them (arrival order).
                    // Boxed, like the hold below: rare paths stay out of every request's
                    // future, which pingora moves (memcpy) several times per request.
                    ctx.spooled = true;
                    return Box::pin(self.spool_request(session, &route, spec)).await;
                }
                ctx.settle(route, pool, picked);
                Ok(false)
            }
            Routed::Unavailable(route) => Box::pin(self.hold_for_route(session, ctx, route)).await,
            other => Box::pin(self.routed(session, ctx, other)).await,
        }
    }

    async fn upstream_peer(&self, session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let (route, backend, addr, address) = self.choose_backend(session, ctx).await?;
        if ctx.kind == Kind::Grpc {
            grpc::check_pool(ctx.pool.as_deref())?;
        }
        ctx.attempts += 1;
        ctx.last_backend = Some(backend.name.clone());
        // Replacing the guard drops the previous attempt's count (a retry is counted once).
        let client = session.client_addr().and_then(|a| a.as_inet()).copied();
        ctx.backend = Some(Tracking::of_kind(
            backend,
            route.name.clone(),
            session.req_header().uri.clone(),
            client,
            ctx.kind,
        ));
        let cfg = self.state.table();
        let t = &cfg.spec.timeouts;
        let upstream = ctx.pool.as_ref().map(|p| &p.spec.upstream);
        let mut peer = match upstream {
            Some(u) => u.peer(addr, address.as_deref().unwrap_or(""), ctx.upgrade),
            None => HttpPeer::new(addr, false, String::new()),
        };
        ctx.h2 = pick::shares_connections(upstream, ctx.backend.as_ref()) && !ctx.upgrade;
        if let (true, Some(u), Some(tr)) = (ctx.h2, upstream, &ctx.backend) {
            ctx.h2_turn = Some(pick::h2_turn(tr.backend(), u, t.connect).await?);
        }
        peer.options.connection_timeout = Some(t.connect);
        peer.options.total_connection_timeout = Some(t.connect);
        peer.options.idle_timeout = Some(t.upstream_keepalive);
        // WebSocket (HTTP/1.1 upstream, see `Upstream::peer`) and gRPC calls (streams by
        // nature) get no read timeout upstream: silence is governed on the client side.
        if !ctx.upgrade && ctx.kind != Kind::Grpc {
            peer.options.read_timeout = t.upstream_read;
        }
        ctx.attempt_started = Some(Instant::now());
        Ok(Box::new(peer))
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Ctx,
        e: Box<Error>,
    ) -> Box<Error> {
        ctx.h2_turn = None;
        self.after_connect_failure(ctx, e)
    }

    fn error_while_proxy(
        &self,
        _peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Ctx,
        reused: bool,
    ) -> Box<Error> {
        self.after_dead_connection(session, ctx, e, reused)
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        reused: bool,
        _peer: &HttpPeer,
        #[cfg(unix)] fd: std::os::unix::io::RawFd,
        _digest: Option<&pingora::protocols::Digest>,
        ctx: &mut Ctx,
    ) -> Result<()> {
        ctx.connected = true;
        ctx.connect_time = Some(match ctx.attempt_started {
            Some(t) if !reused => t.elapsed(),
            _ => Duration::ZERO,
        });
        ctx.h2_turn = None;
        if let Some(t) = &mut ctx.backend {
            t.connected(fd, ctx.h2);
            if ctx.h2 && !reused {
                let b = t.backend();
                b.pool.h2_conns.add(&b.id, fd);
            }
            if t.backend().record_connect_ok() {
                // It had been failing: requests held after failing on it may try again.
                self.state.availability_changed();
            }
        }
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        // From here on nothing is sent twice: the answer has begun.
        ctx.answered = true;
        if let (Some(p), Some(t), false) = (&ctx.pool, &ctx.backend, ctx.upgrade) {
            pick::learn_alpn(&p.spec.upstream, t.backend(), resp.version);
        }
        ctx.first_byte = Some(ctx.started.elapsed());
        // The app may echo the id already (pingora's header insert costs ~2,000
        // instructions: skip it then).
        if let Some(id) = session.req_header().headers.get(&REQUEST_ID) {
            if resp.headers.get(&REQUEST_ID) != Some(id) {
                resp.insert_header(REQUEST_ID.clone(), id.clone())?;
            }
        }
        if let Some(v) = self.edge.hsts() {
            // The app's own header, when it sends one, wins.
            if !resp
                .headers
                .contains_key(http::header::STRICT_TRANSPORT_SECURITY)
            {
                resp.insert_header(http::header::STRICT_TRANSPORT_SECURITY, v.clone())?;
            }
        }
        if let (Some(value), Some(route), false) =
            (&ctx.minted, &ctx.route, resp.status.is_informational())
        {
            let tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
            affinity::set_cookie(route, value, tls, resp);
        }
        let Some(t) = &ctx.backend else { return Ok(()) };
        // With `auto`, ALPN decided whether the connection is shared (also when the backend
        // was last seen on HTTP/1.1): a drain deadline must not close it under other calls.
        if resp.version == http::Version::HTTP_2 && !ctx.h2 {
            ctx.h2 = true;
            t.item().mark_shared();
        }
        if ctx.kind == Kind::Grpc {
            // Its response is open from here on: a stream for the drain deadlines.
            t.item().set_open();
        } else if resp.status == http::StatusCode::SWITCHING_PROTOCOLS && session.is_upgrade_req() {
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
        if ctx.h2 {
            if let Some(t) = ctx.backend.as_ref().filter(|t| t.item().ended().is_some()) {
                // Ended on purpose on a shared connection: this call alone ends, here (its
                // upstream stream is reset; the client is answered in `fail_to_proxy`).
                t.item().set_fd(None);
                return Err(Error::explain(
                    ErrorType::InternalError,
                    "ended on purpose (drain deadline or shutdown)",
                ));
            }
        }
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
                    b.extend_from_slice(&finish::WS_CLOSE_1001);
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
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let Some(r) = &ctx.route {
            affinity::strip_forcing(r, upstream);
        }
        forward_headers(session, upstream)
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        if let Some(t) = ctx.backend.as_ref().filter(|t| t.item().ended().is_some()) {
            return end_politely(session, t.item().kind(), t.item().ended()).await;
        }
        let code = errors::status_for(e);
        if ctx.kind == Kind::Grpc && session.response_written().is_some() {
            // The backend's answer began and broke off: the call still ends with a status.
            if code > 0 {
                let msg = format!("upstream stream broken: {}", e.etype().as_str());
                let status = grpc::UNAVAILABLE;
                if let Err(we) = grpc::end(session, status, &msg).await {
                    tracing::debug!(error = %we, "could not end a gRPC call");
                }
            }
            return FailToProxy {
                error_code: 0,
                can_reuse_downstream: false,
            };
        }
        if let Some(done) = Box::pin(self.spool_failed(session, ctx, code)).await {
            return done;
        }
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

    fn suppress_error_log(&self, _session: &Session, ctx: &Ctx, _error: &Error) -> bool {
        ctx.spooled
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        record_stats(ctx, status, e);
        log::access(&self.state, session, e, ctx);
    }
}
