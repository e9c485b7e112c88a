//! What happens after an attempt failed: whether the request goes to another backend, waits
//! for one (hold), or fails; and what the failure says about the backend (passive health).
//!
//! - A refused or timed-out connect: nothing was sent, so any method may go elsewhere or
//!   wait; the backend's failure streak grows (down after `passive_health.fall`) and one
//!   background probe watches it.
//! - A connection that died before any response byte, after the request was written: the
//!   route's `retry_sent` decides by method (idempotent ones by default) and the body must
//!   still be in pingora's retry buffer. A stale keep-alive connection says nothing about
//!   the backend (any backend may take the request, the same one on a fresh connection); a
//!   fresh one that died counts as a failure of the backend, which this request then avoids
//!   until it has recovered (so a request that crashes its app is resent only once the app
//!   accepts again). Work ended on purpose (drain deadline, shutdown) is never resent.

use pingora::{prelude::*, proxy::Session, ErrorSource, ErrorType, RetryType};

use super::{pick, Ctx, Proxy, MAX_ATTEMPTS};
use crate::{services::probe, state::backend::BackendState};

impl Proxy {
    /// Count a failure of `st` (passive health, or active-check streak) and make sure it is
    /// watched.
    fn backend_failed(&self, ctx: &Ctx, st: &std::sync::Arc<BackendState>) {
        let Some(pool) = &ctx.pool else { return };
        match &pool.spec.health_check {
            Some(hc) => {
                if st.record_checked_failure(hc.fall) {
                    tracing::warn!(backend = %st.id, "backend unhealthy after consecutive failures");
                }
            }
            None => {
                if st.passive.fail(pool.spec.passive.fall) {
                    tracing::warn!(backend = %st.id, "backend down: connects keep failing; probing in the background");
                }
                probe::ensure(&self.state, st);
            }
        }
    }

    /// `fail_to_connect`: nothing reached the backend.
    pub(super) fn after_connect_failure(&self, ctx: &mut Ctx, mut e: Box<Error>) -> Box<Error> {
        let Some(guard) = ctx.backend.take() else {
            return e;
        };
        let st = guard.backend().clone();
        drop(guard);
        st.record_connect_failure();
        let Some(route) = ctx.route.clone() else {
            return e;
        };
        self.backend_failed(ctx, &st);
        ctx.failed.push(&st);
        let elsewhere = pick::elsewhere(&route, ctx);
        let retry = ctx.attempts < MAX_ATTEMPTS && (elsewhere || ctx.hold.may_wait(&route));
        // The whole error: a TLS failure names its cause (unknown issuer, name mismatch).
        tracing::warn!(backend = %st.id, error = e.etype().as_str(), reason = %e, retry, "upstream connect failed");
        if retry && elsewhere {
            route.stats.retries.inc();
        }
        e.set_retry(retry);
        e
    }

    /// `error_while_proxy`: the connection failed after it was made.
    pub(super) fn after_dead_connection(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        mut e: Box<Error>,
        reused: bool,
    ) -> Box<Error> {
        // The connection is gone: pingora closes its socket, and the number may be reused by
        // an unrelated one. A drain deadline must never act on it.
        if let Some(t) = &ctx.backend {
            t.item().set_fd(None);
        }
        let ended = ctx
            .backend
            .as_ref()
            .is_some_and(|t| t.item().ended().is_some());
        let before_answer = matches!(e.retry, RetryType::ReusedOnly)
            || matches!(
                e.etype(),
                ErrorType::WriteError | ErrorType::ConnectionClosed | ErrorType::ReadError
            );
        let candidate = !ended
            && !ctx.answered
            && e.esource() == &ErrorSource::Upstream
            && before_answer
            && !session.as_ref().retry_buffer_truncated();
        let Some(route) = ctx.route.clone().filter(|_| candidate) else {
            e.set_retry(false);
            return e;
        };
        if !reused {
            if let Some(st) = ctx.backend.as_ref().map(|t| t.backend().clone()) {
                self.backend_failed(ctx, &st);
                ctx.failed.push(&st);
            }
        }
        let allowed = route.spec.retry_sent.allows(&session.req_header().method);
        let elsewhere = pick::elsewhere(&route, ctx);
        let retry =
            allowed && ctx.attempts < MAX_ATTEMPTS && (elsewhere || ctx.hold.may_wait(&route));
        if retry {
            route.stats.retries.inc();
        }
        tracing::warn!(
            backend = ctx.backend.as_ref().map(|b| &*b.backend().id),
            error = e.etype().as_str(),
            reused,
            retry,
            "backend closed the connection before answering"
        );
        if retry {
            // Not on this backend any more (a hold may come first): counted again on the
            // backend the next attempt picks.
            ctx.backend = None;
        }
        e.set_retry(retry);
        e
    }
}
