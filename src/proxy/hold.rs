//! The hold queue: while a route has no available backend, requests wait (bounded by
//! `hold.max_queued` and `hold.timeout`) and are released the moment availability changes
//! (health, undrain, split change, reload), then routed against the new snapshot.

use std::sync::{
    atomic::{AtomicU64, Ordering},
    Arc,
};

use tokio::time::Instant;

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

/// Wait for an availability change or `deadline`. Returns false on timeout.
/// `ready` is checked after registering for the wake-up, so a change between the caller's
/// check and this wait is not missed.
pub async fn wait(state: &AppState, deadline: Instant, ready: impl Fn() -> bool) -> bool {
    let changed = state.availability.notified();
    tokio::pin!(changed);
    changed.as_mut().enable();
    if ready() {
        return true;
    }
    tokio::select! {
        _ = &mut changed => true,
        _ = tokio::time::sleep_until(deadline) => false,
    }
}
