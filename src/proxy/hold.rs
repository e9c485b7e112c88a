//! The hold queue: while a route has no available backend, requests wait (bounded by
//! `hold.max_queued` and `hold.timeout`) and are released the moment availability changes
//! (health, undrain, split change, reload), then routed against the new snapshot.

use std::sync::{
    atomic::{AtomicU64, Ordering},
    Arc,
};

use tokio::time::Instant;

use pingora::{http::RequestHeader, proxy::Session};

use crate::state::{table::Route, AppState};

/// One held request, counted in the route's `held` gauge while it lives.
struct Held(Arc<AtomicU64>);

impl Held {
    /// Join the queue, or `None` when `max` requests are already held.
    fn acquire(gauge: &Arc<AtomicU64>, max: u32) -> Option<Held> {
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

/// How one wait for a change ended.
#[derive(Debug, PartialEq, Eq)]
enum Woke {
    /// Something may have become available (or already was).
    Changed,
    /// `hold.timeout` ran out.
    TimedOut,
    /// The client closed its connection while waiting.
    ClientGone,
}

/// One request's stay in its route's hold queue, across every time it waits (at routing,
/// and again when every backend refused it): the deadline, set `hold.timeout` after the first
/// wait began, and the time waited. The one place `hold.timeout`, `hold.max_queued` and the
/// timeout counter are read.
#[derive(Debug, Default)]
pub struct Hold {
    deadline: Option<Instant>,
    /// Time spent waiting so far.
    pub waited: std::time::Duration,
}

/// Why a request could not wait (or wait longer).
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// `hold.timeout: 0`.
    Off,
    /// `hold.max_queued` requests are waiting already.
    Full,
    /// `hold.timeout` ran out while waiting.
    TimedOut,
    /// `hold.timeout` had run out before this wait (in an earlier one).
    Expired,
}

impl Refused {
    /// The reason, for a 503 message.
    pub fn why(&self) -> &'static str {
        match self {
            Refused::Off => "holding is off",
            Refused::Full => "hold queue full",
            Refused::TimedOut | Refused::Expired => {
                "no backend became available within hold.timeout"
            }
        }
    }
}

/// How a wait ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// `ready` holds.
    Ready,
    /// The client closed its connection while waiting.
    ClientGone,
    Refused(Refused),
}

impl Hold {
    /// Whether this request may still wait on `route` (holding on, time left).
    pub fn may_wait(&self, route: &Route) -> bool {
        !route.spec.hold.timeout.is_zero() && self.deadline.is_none_or(|d| Instant::now() < d)
    }

    /// Wait in `route`'s queue until `ready()` holds (checked now and at every availability
    /// change), the deadline passes, or the client leaves. A timeout is counted in
    /// `tidegate_hold_timeouts_total`.
    pub async fn wait(
        &mut self,
        state: &AppState,
        session: &mut Session,
        route: &Route,
        ready: impl Fn() -> bool,
    ) -> Ended {
        let spec = &route.spec.hold;
        if spec.timeout.is_zero() {
            return Ended::Refused(Refused::Off);
        }
        let deadline = *self
            .deadline
            .get_or_insert_with(|| Instant::now() + spec.timeout);
        if Instant::now() >= deadline {
            return Ended::Refused(Refused::Expired);
        }
        let Some(_slot) = Held::acquire(&route.stats.held, spec.max_queued) else {
            return Ended::Refused(Refused::Full);
        };
        let since = Instant::now();
        let ended = loop {
            match wait_once(state, session, deadline, &ready).await {
                Woke::Changed if ready() => break Ended::Ready,
                // Woken for something else (another route's backend): wait on.
                Woke::Changed => {}
                Woke::TimedOut => {
                    route.stats.hold_timeouts.inc();
                    break Ended::Refused(Refused::TimedOut);
                }
                Woke::ClientGone => break Ended::ClientGone,
            }
        };
        self.waited += since.elapsed();
        ended
    }
}

/// Wait for an availability change, `deadline`, or the client going away. `ready` is checked
/// after registering for the wake-up, so a change between the caller's check and this wait
/// is not missed. For a request without a body the client connection is watched (an idle
/// read that ends on close); a request with a body is not, as that would read its body.
async fn wait_once(
    state: &AppState,
    session: &mut Session,
    deadline: Instant,
    ready: &impl Fn() -> bool,
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
