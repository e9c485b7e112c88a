//! Requests that found no available backend at their first routing: the hold queue (with
//! re-routing on the newest table at each wake-up), and what happens when it gives up
//! (spool, or 503).

use std::sync::Arc;

use pingora::{prelude::*, proxy::Session};

use super::{errors, headers, hold, pick, spool, Ctx, Proxy};
use crate::access_log::Outcome;
use crate::state::table::Route;
use pick::{route_on, Routed};

impl Proxy {
    /// Hold until a pool of the request's route has an available backend (re-routing on
    /// the newest snapshot at every wake-up), the hold times out, or the queue is full.
    /// `Ok(true)` = a response was already sent.
    pub(super) async fn hold_for_route(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        route: Arc<Route>,
    ) -> Result<bool> {
        // The wait watches the client connection (`&mut session`): route on a copy.
        let req = session.req_header().clone();
        let client = headers::client_ip(session);
        loop {
            let state = &self.state;
            // Readiness only asks whether some pool can take the request, whatever its key:
            // a placeholder spares minting a cookie value at every wake-up.
            let asking = pick::Asking {
                req: &req,
                client,
                minted: Some("-"),
            };
            let ended = ctx
                .hold
                .wait(state, session, &route, || {
                    !matches!(route_on(&state.table(), asking), Routed::Unavailable(_))
                })
                .await;
            match ended {
                hold::Ended::Ready => {}
                hold::Ended::ClientGone => return Err(hold::client_gone()),
                hold::Ended::Refused(why) => {
                    if matches!(why, hold::Refused::TimedOut | hold::Refused::Expired) {
                        ctx.outcome = Some(Outcome::HoldTimeout);
                    }
                    return self.refuse_held(session, ctx, &route, why.why()).await;
                }
            }
            let routed = route_on(&self.state.table(), ctx.asking(session));
            match routed {
                // Raced: unavailable again since the wake-up.
                Routed::Unavailable(_) => {}
                Routed::To(r, p, picked) => {
                    if let Some(spec) = self.queued_behind_spool(&r, session) {
                        // Items were spooled while this one waited: it goes behind them.
                        ctx.spooled = true;
                        return self.spool_request(session, &r, spec).await;
                    }
                    ctx.settle(r, p, picked);
                    return Ok(false);
                }
                other => return Box::pin(self.routed(session, ctx, other)).await,
            }
        }
    }

    /// The route's spool settings when this request must be spooled behind items of its
    /// route that are pending or being written (arrival order), checked at first routing
    /// and again after every hold.
    pub(super) fn queued_behind_spool<'a>(
        &self,
        route: &'a Route,
        session: &Session,
    ) -> Option<&'a crate::config::spec::SpoolSpec> {
        spool::spools(route, session.req_header()).filter(|_| route.stats.spool.queued())
    }
}

impl Proxy {
    /// No backend for a request that waited (or could not): spool it if its route spools
    /// its method, else 503.
    pub(super) async fn refuse_held(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        route: &Route,
        why: &str,
    ) -> Result<bool> {
        if let Some(spec) = spool::spools(route, session.req_header()) {
            ctx.spooled = true;
            return self.spool_request(session, route, spec).await;
        }
        ctx.outcome.get_or_insert(Outcome::NoBackend);
        // No route, pool or backend names in what the client reads.
        let msg = format!("no backend is available: {why}");
        errors::respond(session, 503, "no_available_backend", &msg).await?;
        Ok(true)
    }
}
