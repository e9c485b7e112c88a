//! Ends of a request: polite ends of work ended on purpose, and statistics.

use bytes::Bytes;
use pingora::{
    prelude::*,
    proxy::{FailToProxy, Session},
};

use super::{errors, Ctx};
use crate::state::{counts::Kind, items::EndReason, stats::StreamEnd};

/// WebSocket close frame, code 1001 ("going away"), server → client: unmasked.
pub(super) const WS_CLOSE_1001: [u8; 4] = [0x88, 0x02, 0x03, 0xE9];

/// Finish a response that was ended on purpose (drain deadline or shutdown grace): SSE gets
/// a clean end of body (final chunk) so EventSource reconnects; a WebSocket client gets close
/// 1001; a plain request that has no response yet gets 503 JSON.
pub(super) async fn end_politely(
    session: &mut Session,
    kind: Kind,
    why: Option<EndReason>,
) -> FailToProxy {
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
        (Kind::Grpc, true) => {
            let msg = match why {
                Some(EndReason::Shutdown) => "tidegate is shutting down; retry",
                _ => "the backend was drained and its deadline passed; retry",
            };
            super::grpc::end(session, super::grpc::UNAVAILABLE, msg).await
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
pub(super) fn record_stats(ctx: &Ctx, status: u16, e: Option<&Error>) {
    let Some(route) = &ctx.route else { return };
    if let Some(how) = ctx.how {
        route.stats.picks[how.index()].inc();
    }
    let pool = ctx.pool.as_ref().map_or("none", |p| &*p.name);
    if let Some(s) = route.stats.for_pool(pool) {
        s.observe(status, ctx.started.elapsed());
    }
    let Some(t) = &ctx.backend else { return };
    let kind = t.item().kind();
    // Every gRPC call is an HTTP/2 stream: its end is counted by reason like SSE's.
    if kind.is_stream() || kind == Kind::Grpc {
        let why = if t.item().ended().is_some() {
            StreamEnd::Deadline
        } else {
            match e.map(|e| e.esource()) {
                None => StreamEnd::Completed,
                Some(pingora::ErrorSource::Downstream) => StreamEnd::Client,
                Some(_) => StreamEnd::Upstream,
            }
        };
        t.backend().pool.streams_ended.record(kind, why);
    }
}
