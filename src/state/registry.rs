//! All pool and backend states by id. Locked only while binding a published config, for
//! admin reads and for pruning; the hot path holds `Arc`s and never takes the lock.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
};

use super::backend::{BackendState, PoolState};

#[derive(Debug, Default)]
struct Maps {
    pools: HashMap<Arc<str>, Arc<PoolState>>,
    backends: HashMap<Arc<str>, Arc<BackendState>>,
}

/// All pool and backend states by id.
#[derive(Debug, Default)]
pub struct Registry {
    inner: Mutex<Maps>,
    /// Set once the first config is published: backends created after that slow-start.
    live: AtomicBool,
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, Maps> {
        // Single inserts and retains cannot leave the maps inconsistent after a panic.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// From now on, new backends are additions (they slow-start).
    pub fn set_live(&self) {
        self.live.store(true, Ordering::Relaxed);
    }

    /// The state of pool `name`, created on first sight.
    pub fn pool(&self, name: &str) -> Arc<PoolState> {
        let mut m = self.lock();
        if let Some(p) = m.pools.get(name) {
            return p.clone();
        }
        let p = Arc::new(PoolState::new(name));
        m.pools.insert(p.name.clone(), p.clone());
        p
    }

    /// The state for `pool/name`, created on first sight.
    pub fn get_or_create(&self, pool: &str, name: &str) -> Arc<BackendState> {
        let pool = self.pool(pool);
        let id = format!("{}/{name}", pool.name);
        let mut m = self.lock();
        if let Some(s) = m.backends.get(id.as_str()) {
            return s.clone();
        }
        let s = Arc::new(BackendState::new(pool, name));
        if self.live.load(Ordering::Relaxed) {
            s.mark_available_now();
        }
        m.backends.insert(s.id.clone(), s.clone());
        s
    }

    /// Forget backends and pools that are neither in `live` (backend ids) nor busy. Busy ones
    /// stay (reported as `removed`) until idle.
    pub fn retain_live(&self, live: &HashSet<Arc<str>>) {
        let mut m = self.lock();
        m.backends
            .retain(|id, s| live.contains(id) || s.in_flight() > 0);
        let used: HashSet<Arc<str>> = m.backends.values().map(|b| b.pool.name.clone()).collect();
        m.pools
            .retain(|name, p| used.contains(name) || p.counts.total() > 0);
    }

    /// Every known backend state, by id.
    pub fn all(&self) -> Vec<Arc<BackendState>> {
        let mut v: Vec<_> = self.lock().backends.values().cloned().collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    /// Every known pool state, by name.
    pub fn pools(&self) -> Vec<Arc<PoolState>> {
        let mut v: Vec<_> = self.lock().pools.values().cloned().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drain::machine::{Deadlines, Phase};
    use crate::state::{counts::Kind, tracking::Tracking};

    fn track(b: &Arc<BackendState>) -> Tracking {
        Tracking::new(b.clone(), "r".into(), http::Uri::from_static("/x"), None)
    }

    #[test]
    fn guards_count_by_kind_on_backend_and_pool() {
        let r = Registry::default();
        let a = r.get_or_create("blue", "127.0.0.1:1");
        {
            let g1 = track(&a);
            let _g2 = track(&r.get_or_create("blue", "127.0.0.1:1"));
            g1.set_kind(Kind::Sse);
            assert_eq!(a.counts.snapshot()[Kind::Http], 1);
            assert_eq!(a.counts.snapshot()[Kind::Sse], 1);
            assert_eq!(a.pool.counts.total(), 2);
            assert_eq!(a.items.all().len(), 2);
        }
        assert_eq!(a.in_flight(), 0);
        assert_eq!(a.pool.counts.total(), 0);
        assert!(a.items.all().is_empty());
        assert_eq!(&*a.id, "blue/127.0.0.1:1");
    }

    #[test]
    fn drain_becomes_drained_when_the_last_guard_drops() {
        let r = Registry::default();
        let a = r.get_or_create("blue", "a");
        let g = track(&a);
        a.pool
            .drain
            .start(Deadlines::default(), || a.pool.counts.total())
            .unwrap();
        assert!(!a.available());
        assert_eq!(a.pool.drain.phase(), Phase::Draining);
        drop(g);
        assert_eq!(a.pool.drain.phase(), Phase::Drained);
        a.pool.drain.undrain().unwrap();
        assert!(a.available());
    }

    #[test]
    fn retain_keeps_busy_backends() {
        let r = Registry::default();
        let a = r.get_or_create("blue", "a");
        let _b = r.get_or_create("blue", "b");
        let g = track(&a);
        r.retain_live(&Default::default());
        assert_eq!(r.all().len(), 1, "busy backend kept, idle one forgotten");
        assert_eq!(r.pools().len(), 1);
        drop(g);
        r.retain_live(&Default::default());
        assert!(r.all().is_empty());
        assert!(r.pools().is_empty());
    }
}
