//! Per-backend runtime state, keyed by backend id (`pool/name`) so it survives reloads.
//!
//! A config snapshot holds `Arc<BackendState>`s looked up in the [`Registry`] at build time.
//! Counters are atomics; the hot path never takes the registry lock.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
};

use tokio::sync::Notify;

/// Live state of one backend.
#[derive(Debug)]
pub struct BackendState {
    /// `pool/name`.
    pub id: Arc<str>,
    pub pool: Arc<str>,
    pub name: Arc<str>,
    in_flight: AtomicU64,
    draining: AtomicBool,
    healthy: AtomicBool,
    connect_failures: AtomicU64,
    /// Woken when `in_flight` drops to zero.
    pub idle: Notify,
}

impl BackendState {
    fn new(pool: &str, name: &str) -> Self {
        Self {
            id: format!("{pool}/{name}").into(),
            pool: pool.into(),
            name: name.into(),
            in_flight: AtomicU64::new(0),
            draining: AtomicBool::new(false),
            healthy: AtomicBool::new(true),
            connect_failures: AtomicU64::new(0),
            idle: Notify::new(),
        }
    }

    /// Requests currently between routing and the end of their response.
    pub fn in_flight(&self) -> u64 {
        // Acquire pairs with the AcqRel decrement so a reader that sees 0 sees the work done.
        self.in_flight.load(Ordering::Acquire)
    }

    /// Whether new requests may be routed here.
    pub fn available(&self) -> bool {
        // Relaxed: a flag read; a pick racing a drain may still land here, which drain
        // tracking handles (the request is counted like any other in-flight one).
        !self.draining.load(Ordering::Relaxed) && self.healthy.load(Ordering::Relaxed)
    }

    /// Set or clear the draining flag.
    pub fn set_draining(&self, on: bool) {
        self.draining.store(on, Ordering::Relaxed);
    }

    /// Whether the backend is draining.
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Health as last decided by checks.
    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Set health.
    pub fn set_healthy(&self, on: bool) {
        self.healthy.store(on, Ordering::Relaxed);
    }

    /// Count a failed connection attempt.
    pub fn record_connect_failure(&self) {
        self.connect_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// Connection attempts that failed since start.
    pub fn connect_failures(&self) -> u64 {
        self.connect_failures.load(Ordering::Relaxed)
    }
}

/// RAII in-flight count: up on creation, down in `Drop` on every path (normal end, error,
/// client gone, task cancelled or unwinding).
#[derive(Debug)]
pub struct InFlightGuard(Arc<BackendState>);

impl InFlightGuard {
    /// Count one more in-flight request on `state`.
    pub fn new(state: Arc<BackendState>) -> Self {
        // Relaxed is enough for the increment: nothing is published through it.
        state.in_flight.fetch_add(1, Ordering::Relaxed);
        Self(state)
    }

    /// The backend this guard counts on.
    pub fn state(&self) -> &Arc<BackendState> {
        &self.0
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        // AcqRel: the last decrement must be ordered before waiters re-read the count.
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// All backend states by id. Locked only while building a config and for admin reads.
#[derive(Debug, Default)]
pub struct Registry {
    inner: Mutex<HashMap<Arc<str>, Arc<BackendState>>>,
}

impl Registry {
    /// The state for `pool/name`, created on first sight.
    pub fn get_or_create(&self, pool: &str, name: &str) -> Arc<BackendState> {
        let id = format!("{pool}/{name}");
        let mut map = self.lock();
        if let Some(s) = map.get(id.as_str()) {
            return s.clone();
        }
        let s = Arc::new(BackendState::new(pool, name));
        map.insert(s.id.clone(), s.clone());
        s
    }

    /// Forget backends that are neither in `live` nor busy. Busy ones stay until idle.
    pub fn retain_live(&self, live: &std::collections::HashSet<Arc<str>>) {
        self.lock()
            .retain(|id, s| live.contains(id) || s.in_flight() > 0);
    }

    /// A snapshot of every known backend state.
    pub fn all(&self) -> Vec<Arc<BackendState>> {
        let mut v: Vec<_> = self.lock().values().cloned().collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Arc<BackendState>>> {
        // A panic while holding this lock cannot leave the map inconsistent (single inserts
        // and retains), so a poisoned lock is still safe to use.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guards_count_and_state_survives_lookup() {
        let r = Registry::default();
        let a = r.get_or_create("blue", "127.0.0.1:1");
        {
            let _g1 = InFlightGuard::new(a.clone());
            let _g2 = InFlightGuard::new(r.get_or_create("blue", "127.0.0.1:1"));
            assert_eq!(a.in_flight(), 2);
        }
        assert_eq!(a.in_flight(), 0);
        assert_eq!(&*a.id, "blue/127.0.0.1:1");
    }

    #[test]
    fn retain_keeps_busy_backends() {
        let r = Registry::default();
        let a = r.get_or_create("blue", "a");
        let _b = r.get_or_create("blue", "b");
        let g = InFlightGuard::new(a.clone());
        r.retain_live(&Default::default());
        assert_eq!(r.all().len(), 1, "busy backend kept, idle one forgotten");
        drop(g);
        r.retain_live(&Default::default());
        assert!(r.all().is_empty());
    }
}
