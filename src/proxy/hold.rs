//! The hold queue: while a route has no available backend, requests wait (bounded by
//! `hold.max_queued` and `hold.timeout`) and are released the moment availability changes
//! (health, undrain, split change, reload), then routed against the new snapshot.

use std::sync::{
    atomic::{AtomicU64, Ordering},
    Arc,
};

use tokio::time::Instant;

use pingora::{http::RequestHeader, proxy::Session};

use crate::state::AppState;

/// One held request, counted in the route's `held` gauge while it lives.
pub struct Held(Arc<AtomicU64>);

impl Held {
    /// Join the queue, or `None` when `max` requests are already held.
    pub fn acquire(gauge: &Arc<AtomicU64>, max: u32) -> Option<Held> {
        // AcqRel: the count is the admission decision, so increments must not be lost or
        // reordered between concurrent arrivals.
        let prev = gauge.fetch_add(1, Ordering::AcqRel);
        if prev >= u64::from(max) {
            gauge.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Held(gauge.clone()))
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// How a hold wait ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Woke {
    /// Something may have become available (or already was).
    Changed,
    /// `hold.timeout` ran out.
    TimedOut,
    /// The client closed its connection while waiting.
    ClientGone,
}

/// Wait for an availability change, `deadline`, or the client going away. `ready` is checked
/// after registering for the wake-up, so a change between the caller's check and this wait
/// is not missed. For a request without a body the client connection is watched (an idle
/// read that ends on close); a request with a body is not, as that would read its body.
pub async fn wait(
    state: &AppState,
    session: &mut Session,
    deadline: Instant,
    ready: impl Fn() -> bool,
) -> Woke {
    let changed = state.availability.notified();
    tokio::pin!(changed);
    changed.as_mut().enable();
    if ready() {
        return Woke::Changed;
    }
    let bodyless = bodyless(session.req_header());
    let gone = async {
        if !bodyless {
            return std::future::pending().await;
        }
        match session.as_mut().read_body_or_idle(true).await {
            Err(_) => {}
            // Bytes of a pipelined next request: not a close; keep waiting.
            Ok(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = &mut changed => Woke::Changed,
        _ = tokio::time::sleep_until(deadline) => Woke::TimedOut,
        _ = gone => Woke::ClientGone,
    }
}

/// No `Content-Length` above 0 and no `Transfer-Encoding`: nothing to read but a close.
fn bodyless(req: &RequestHeader) -> bool {
    let h = &req.headers;
    h.get(http::header::TRANSFER_ENCODING).is_none()
        && h.get(http::header::CONTENT_LENGTH)
            .is_none_or(|v| v.as_bytes() == b"0")
}

/// The error that ends a request whose client left during a hold (nothing is written).
pub fn client_gone() -> Box<pingora::Error> {
    pingora::Error::create(
        pingora::ErrorType::ConnectionClosed,
        pingora::ErrorSource::Downstream,
        Some("the client went away while its request was held".into()),
        None,
    )
}
