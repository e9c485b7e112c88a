//! Choosing the backend for one attempt: the request's pool first, then any pool of its split
//! on the newest snapshot, then the hold queue. Backends this request failed on are skipped
//! until they recover (their passive recovery epoch moves), so a refusing backend is never
//! hammered by the requests waiting for it.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use pingora::{http::RequestHeader, prelude::*, proxy::Session, ErrorType::HTTPStatus};

use super::{affinity, errors, headers, headers::request_host, hold, Ctx, Proxy, MAX_ATTEMPTS};
use crate::{
    access_log::Outcome,
    routing::pick::{How, Miss, Want},
    state::{
        backend::BackendState,
        overrides::Maintenance,
        table::{Backend, Pool, Route, Table},
    },
};

/// Backends one request failed on, each with the recovery epoch it had then.
#[derive(Default)]
pub(super) struct Failed(Vec<(Arc<BackendState>, u64)>);

impl Failed {
    /// Remember a failure on `b` (again: the epoch is refreshed).
    pub fn push(&mut self, b: &Arc<BackendState>) {
        let epoch = b.passive.recovered();
        match self.0.iter_mut().find(|(s, _)| Arc::ptr_eq(s, b)) {
            Some(entry) => entry.1 = epoch,
            None => self.0.push((b.clone(), epoch)),
        }
    }

    /// Backends failed on and not recovered since.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `b` must be skipped: this request failed on it and it has not recovered.
    pub fn skips(&self, b: &BackendState) -> bool {
        self.0
            .iter()
            .any(|(s, e)| std::ptr::eq(&**s, b) && b.passive.recovered() == *e)
    }

    /// Forget backends that recovered (they count against the retry budget no more).
    fn forget_recovered(&mut self) {
        self.0.retain(|(s, e)| s.passive.recovered() == *e);
    }
}

/// Whether another backend of the route's split could take the request now, within its
/// retry budget (no schedule slot used).
pub(super) fn elsewhere(route: &Route, ctx: &Ctx) -> bool {
    ctx.failed.len() <= route.spec.retries as usize
        && route.can_take_avoiding(&ctx.want, &|b| ctx.failed.skips(b))
}

/// Who is asking: the request, its client's address and the affinity cookie value it was
/// given already (if tidegate minted one).
#[derive(Clone, Copy)]
pub(super) struct Asking<'a> {
    pub req: &'a RequestHeader,
    pub client: Option<IpAddr>,
    pub minted: Option<&'a str>,
}

/// A pool picked for a request: what it asked, how the pool was chosen, and a cookie value
/// minted for it.
pub(super) struct Picked {
    pub want: Want,
    pub how: How,
    pub minted: Option<Box<str>>,
}

/// Route the request again on `cfg` and pick a pool and a backend outside `failed`.
fn reroute<'a>(
    cfg: &'a Table,
    asking: Asking<'_>,
    failed: &Failed,
) -> Option<(&'a Arc<Route>, &'a Arc<Pool>, &'a Backend, Picked)> {
    let req = asking.req;
    let host = request_host(req).unwrap_or_default();
    let route = cfg.route(host, req.uri.path(), &req.method)?;
    let (want, minted) = affinity::want(route, req, asking.client, asking.minted);
    let (pool, b, how) = route.pick_avoiding(&want, &|b| failed.skips(b))?;
    Some((route, pool, b, Picked { want, how, minted }))
}

/// Where a request goes, decided on one snapshot.
pub(super) enum Routed {
    To(Arc<Route>, Arc<Pool>, Picked),
    NoRoute,
    Maintenance(Arc<Route>, Arc<Maintenance>),
    /// The route exists but no pool of its split has an available backend.
    Unavailable(Arc<Route>),
    /// The request names a forced pool that cannot take it, and the route refuses then.
    ForcedUnavailable(Arc<Route>),
}

pub(super) fn route_on(cfg: &Table, asking: Asking<'_>) -> Routed {
    let req = asking.req;
    let host = request_host(req).unwrap_or_default();
    let Some(route) = cfg.route(host, req.uri.path(), &req.method) else {
        return Routed::NoRoute;
    };
    if let Some(m) = cfg
        .maintenance
        .as_ref()
        .filter(|m| m.matches(&route.name, &req.method))
    {
        return Routed::Maintenance(route.clone(), m.clone());
    }
    let (want, minted) = affinity::want(route, req, asking.client, asking.minted);
    match route.pick_pool(&want) {
        Ok((pool, how)) => Routed::To(route.clone(), pool.clone(), Picked { want, how, minted }),
        Err(Miss::Nothing) => Routed::Unavailable(route.clone()),
        Err(Miss::Forced) => Routed::ForcedUnavailable(route.clone()),
    }
}

impl Ctx {
    /// The request goes to `pool` of `route`, as `picked` says.
    pub(super) fn settle(&mut self, route: Arc<Route>, pool: Arc<Pool>, picked: Picked) {
        self.route = Some(route);
        self.pool = Some(pool);
        self.want = picked.want;
        self.how = Some(picked.how);
        if picked.minted.is_some() {
            self.minted = picked.minted;
        }
    }

    pub(super) fn asking<'a>(&'a self, session: &'a Session) -> Asking<'a> {
        Asking {
            req: session.req_header(),
            client: headers::client_ip(session),
            minted: self.minted.as_deref(),
        }
    }
}

/// The route, the backend, its address and (TLS pools only) its address as written, whose
/// host is the default server name.
type Chosen = (Arc<Route>, Arc<BackendState>, SocketAddr, Option<Box<str>>);

/// The written address of a backend of a TLS pool (no allocation for plain pools).
fn tls_address(pool: &Pool, address: &str) -> Option<Box<str>> {
    pool.spec.upstream.tls.as_ref().map(|_| address.into())
}

impl Proxy {
    /// The backend for the next attempt, holding while the whole split has none for this
    /// request (woken by a recovery, an undrain, a split change or a reload).
    pub(super) async fn choose_backend(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
    ) -> Result<Chosen> {
        loop {
            let (Some(route), Some(pool)) = (ctx.route.clone(), ctx.pool.clone()) else {
                return Err(Error::explain(HTTPStatus(500), "no route chosen"));
            };
            if ctx.attempts >= MAX_ATTEMPTS {
                return Err(unreachable());
            }
            if ctx.failed.len() <= route.spec.retries as usize {
                let picked = pool.pick_for(&ctx.want, &|b| ctx.failed.skips(b));
                if let Some((b, addr)) = picked.and_then(|b| Some((b, b.addr?))) {
                    let tls = tls_address(&pool, &b.spec.address);
                    return Ok((route, b.state.clone(), addr, tls));
                }
                // The chosen pool has nothing left for this request (a drain raced the
                // pick, or its backends failed): any pool of the split, newest snapshot,
                // dealt by affinity like a first pick.
                let cfg = self.state.table();
                let found = reroute(&cfg, ctx.asking(session), &ctx.failed);
                if let Some((r, p, b, picked)) = found {
                    if let Some(addr) = b.addr {
                        let tls = tls_address(p, &b.spec.address);
                        let chosen = (r.clone(), b.state.clone(), addr, tls);
                        ctx.settle(r.clone(), p.clone(), picked);
                        return Ok(chosen);
                    }
                }
            }
            // Boxed: the hold is rare, and its state would otherwise enlarge every request's
            // future.
            Box::pin(self.hold_until_available(session, ctx, &route)).await?;
        }
    }

    /// Wait in the route's hold queue until something this request can use is available,
    /// then route it again on the newest table. `Err` when holding is off, the queue is
    /// full or the hold times out.
    async fn hold_until_available(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        route: &Route,
    ) -> Result<()> {
        let state = &self.state;
        // The wait watches the client connection (`&mut session`): route on a copy.
        let req = session.req_header().clone();
        let client = headers::client_ip(session);
        let (failed, minted) = (&ctx.failed, ctx.minted.clone());
        let asking = Asking {
            req: &req,
            client,
            minted: minted.as_deref(),
        };
        let ready = || reroute(&state.table(), asking, failed).is_some();
        let ended = ctx.hold.wait(state, session, route, ready).await;
        match ended {
            hold::Ended::Ready => self.reroute_after_hold(session, ctx, route),
            hold::Ended::ClientGone => Err(hold::client_gone()),
            hold::Ended::Refused(hold::Refused::TimedOut) => {
                ctx.outcome = Some(crate::access_log::Outcome::HoldTimeout);
                Err(Error::explain(
                    HTTPStatus(503),
                    // Client-facing: no route, pool or backend names (the access log has them).
                    "no backend became available within the hold timeout",
                ))
            }
            hold::Ended::Refused(_) if ctx.failed.is_empty() => {
                ctx.outcome = Some(crate::access_log::Outcome::NoBackend);
                Err(Error::explain(
                    HTTPStatus(503),
                    "no backend is available for this request",
                ))
            }
            hold::Ended::Refused(_) => Err(unreachable()),
        }
    }

    /// Released from the hold: route again on the newest table; a request of a spooled route
    /// must not overtake items spooled while it waited.
    fn reroute_after_hold(&self, session: &Session, ctx: &mut Ctx, route: &Route) -> Result<()> {
        ctx.failed.forget_recovered();
        let cfg = self.state.table();
        if let Some((r, p, _, picked)) = reroute(&cfg, ctx.asking(session), &ctx.failed) {
            ctx.settle(r.clone(), p.clone(), picked);
        }
        let route = ctx.route.as_deref().unwrap_or(route);
        let spooled = super::spool::spools(route, session.req_header());
        if spooled.is_some() && route.stats.spool.queued() {
            // The 503 is turned into a spooled 202 by `fail_to_proxy`.
            return Err(Error::explain(
                HTTPStatus(503),
                "spooled requests are waiting; this request queues behind them",
            ));
        }
        Ok(())
    }
}

impl Proxy {
    /// ACME challenges, and the 503 before the fleet's shared state is loaded: answered
    /// before anything else (boxed: rare, and kept out of every request's future).
    pub(super) async fn answered_early(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
    ) -> Result<bool> {
        let path = session.req_header().uri.path();
        if path.starts_with(super::edge::ACME_CHALLENGE)
            && Box::pin(self.acme_challenge(session, ctx)).await?
        {
            return Ok(true);
        }
        // One atomic load: without a control store it is always loaded.
        if !self.state.fleet.is_loaded() {
            return Box::pin(self.fleet_not_loaded(session, ctx)).await;
        }
        Ok(false)
    }

    /// 503 + `Retry-After: 1` while the fleet's shared state is not loaded yet: a request
    /// routed now could go to a pool the fleet has drained.
    pub(super) async fn fleet_not_loaded(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
    ) -> Result<bool> {
        let m = Maintenance {
            routes: None,
            methods: None,
            retry_after: std::time::Duration::from_secs(1),
            message: "starting: loading the fleet's shared state from the control store".into(),
        };
        ctx.outcome = Some(Outcome::Maintenance);
        errors::respond_maintenance(session, &m).await?;
        Ok(true)
    }

    /// Act on a routing decision that is not a hold: go on to the backend, or answer.
    pub(super) async fn routed(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        routed: Routed,
    ) -> Result<bool> {
        match routed {
            Routed::To(route, pool, picked) => {
                ctx.settle(route, pool, picked);
                Ok(false)
            }
            Routed::NoRoute => respond_no_route(session, ctx).await,
            Routed::Maintenance(r, m) => {
                ctx.route = Some(r);
                ctx.outcome = Some(Outcome::Maintenance);
                errors::respond_maintenance(session, &m).await?;
                Ok(true)
            }
            Routed::ForcedUnavailable(r) => {
                let msg = "the pool this request forces cannot take it now";
                ctx.route = Some(r);
                ctx.how = Some(crate::routing::pick::How::Forced);
                ctx.outcome = Some(Outcome::NoBackend);
                errors::respond(session, 503, "forced_pool_unavailable", msg).await?;
                Ok(true)
            }
            Routed::Unavailable(route) => self.hold_for_route(session, ctx, route).await,
        }
    }
}

async fn respond_no_route(session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
    ctx.outcome = Some(Outcome::NoRoute);
    errors::respond(
        session,
        404,
        "no_route",
        "no route matches this host and path",
    )
    .await?;
    Ok(true)
}

/// This call's turn to take a stream to `backend` on a shared HTTP/2 connection: one at a
/// time per backend, so a burst of calls shares the connection the first one opens.
/// `Err` (503) when the backend has `max_connections × max_streams` streams already, or the
/// call ahead is stuck connecting for longer than the connect timeout.
pub(super) async fn h2_turn(
    backend: &BackendState,
    up: &crate::config::upstream::Upstream,
    wait: std::time::Duration,
) -> Result<tokio::sync::OwnedSemaphorePermit> {
    use crate::state::h2::NoStream;
    let why = match backend
        .h2
        .admit(up.max_streams, up.max_connections, wait)
        .await
    {
        Ok(turn) => return Ok(turn),
        Err(NoStream::Full { streams }) => {
            tracing::debug!(
                backend = %backend.id, streams, max_connections = up.max_connections,
                max_streams = up.max_streams, "HTTP/2 streams at capacity; answering 503"
            );
            "the backend is at its HTTP/2 stream capacity (h2.max_connections × h2.max_streams)"
        }
        Err(NoStream::Waited) => "no HTTP/2 connection to the backend within the connect timeout",
    };
    Err(Error::explain(HTTPStatus(503), why))
}

/// Whether a call shares HTTP/2 connections (and takes turns for a stream): `h2`, `h2c`,
/// and `auto` unless the backend's ALPN chose HTTP/1.1 last (a connection per call then).
pub(super) fn shares_connections(
    upstream: Option<&crate::config::upstream::Upstream>,
    tracked: Option<&crate::state::tracking::Tracking>,
) -> bool {
    let h1_now = |u: &crate::config::upstream::Upstream| {
        u.is_auto() && tracked.is_some_and(|t| t.backend().h2.speaks_http1())
    };
    upstream.is_some_and(|u| u.is_h2() && !h1_now(u))
}

/// `protocol: auto`: what ALPN chose, from an answer's version (logged when it changes).
pub(super) fn learn_alpn(
    upstream: &crate::config::upstream::Upstream,
    backend: &BackendState,
    version: http::Version,
) {
    let h2 = version == http::Version::HTTP_2;
    if upstream.is_auto() && backend.h2.answered_over(h2) {
        let protocol = if h2 { "h2" } else { "http/1.1" };
        tracing::info!(backend = %backend.id, protocol, "protocol auto: the backend's ALPN chose {protocol}");
    }
}

/// 502: every backend of the route was tried (the access log names them).
fn unreachable() -> Box<Error> {
    Error::explain(HTTPStatus(502), "no backend could be reached")
}
