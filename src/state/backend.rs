//! Per-backend and per-pool runtime state, keyed by id (`pool/name`, `pool`) so it survives
//! reloads. A config snapshot holds `Arc<BackendState>`s looked up in the [`Registry`] at build
//! time. Counters are atomics; the hot path never takes the registry lock.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Instant, SystemTime},
};

use tokio::sync::Notify;

use super::tracking::{Counts, ItemSet};
use crate::drain::machine::{Deadlines, Machine, Phase, TransitionError};

/// Drain state of a pool or backend: the pure machine behind a lock, plus a lock-free flag
/// for the hot path and a notifier for waiters.
#[derive(Debug, Default)]
pub struct DrainCell {
    draining: AtomicBool,
    machine: Mutex<Machine>,
    epoch: AtomicU64,
    /// Last `state:` the config file declared (true = draining).
    declared: AtomicBool,
    /// The current drain was started by the file's `state: draining`.
    by_file: AtomicBool,
    /// Woken on every transition (drain, drained, undrain).
    pub changed: Notify,
}

impl DrainCell {
    fn lock(&self) -> std::sync::MutexGuard<'_, Machine> {
        // The machine is plain data updated in one assignment per transition.
        self.machine.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether new work must avoid it (draining or drained).
    pub fn is_draining(&self) -> bool {
        // Relaxed: a pick racing a drain may still land here; tracking counts it like any
        // in-flight work and the drain waits for it.
        self.draining.load(Ordering::Relaxed)
    }

    /// Begin a drain. Returns the drain's epoch (changes on every start/undrain).
    pub fn start(&self, deadlines: Deadlines, in_flight: u64) -> Result<u64, TransitionError> {
        let mut m = self.lock();
        m.start((Instant::now(), SystemTime::now()), deadlines, in_flight)?;
        self.draining.store(true, Ordering::Relaxed);
        let epoch = self.epoch.fetch_add(1, Ordering::AcqRel) + 1;
        drop(m);
        self.changed.notify_waiters();
        Ok(epoch)
    }

    /// Restore a drain that began at `started` (from the state file).
    pub fn restore(&self, started: SystemTime, deadlines: Deadlines, in_flight: u64) -> u64 {
        let mut m = self.lock();
        m.restore((Instant::now(), SystemTime::now()), started, deadlines);
        m.observe(SystemTime::now(), in_flight);
        self.draining.store(true, Ordering::Relaxed);
        self.epoch.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// Follow the file's declared state. Only a change of the declaration acts: newly
    /// `draining` starts a drain (returns its epoch); back to `active` undrains a drain the
    /// file started. So an API undrain of a file-declared drain holds until the file changes.
    pub fn follow_file(&self, declared: bool, deadlines: Deadlines, in_flight: u64) -> Option<u64> {
        let before = self.declared.swap(declared, Ordering::AcqRel);
        match (before, declared) {
            (false, true) if self.phase() == Phase::Active => {
                let epoch = self.start(deadlines, in_flight).ok()?;
                self.by_file.store(true, Ordering::Release);
                Some(epoch)
            }
            (true, false) if self.by_file.load(Ordering::Acquire) => {
                let _ = self.undrain();
                None
            }
            _ => None,
        }
    }

    /// Back to active.
    pub fn undrain(&self) -> Result<(), TransitionError> {
        let mut m = self.lock();
        m.undrain()?;
        self.by_file.store(false, Ordering::Release);
        self.draining.store(false, Ordering::Relaxed);
        self.epoch.fetch_add(1, Ordering::AcqRel);
        drop(m);
        self.changed.notify_waiters();
        Ok(())
    }

    /// Record the current in-flight total (drained at zero).
    pub fn observe(&self, in_flight: u64) {
        if !self.is_draining() {
            return;
        }
        let changed = {
            let mut m = self.lock();
            let before = m.phase();
            m.observe(SystemTime::now(), in_flight);
            before != m.phase()
        };
        if changed {
            self.changed.notify_waiters();
        }
    }

    /// A copy of the machine for reporting.
    pub fn snapshot(&self) -> Machine {
        self.lock().clone()
    }

    /// Current phase.
    pub fn phase(&self) -> Phase {
        self.lock().phase()
    }

    /// Current epoch (deadline tasks stop when it moves on).
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }
}

/// Live state of one pool.
#[derive(Debug)]
pub struct PoolState {
    pub name: Arc<str>,
    pub counts: Counts,
    pub drain: DrainCell,
    pub streams_ended: super::stats::StreamEnds,
}

impl PoolState {
    fn new(name: &str) -> Self {
        Self {
            name: name.into(),
            counts: Counts::default(),
            drain: DrainCell::default(),
            streams_ended: Default::default(),
        }
    }

    /// Called when the pool's in-flight total reached zero.
    pub fn on_idle(&self) {
        self.drain.observe(self.counts.total());
    }
}

/// Live state of one backend.
#[derive(Debug)]
pub struct BackendState {
    /// `pool/name`.
    pub id: Arc<str>,
    pub name: Arc<str>,
    pub pool: Arc<PoolState>,
    pub counts: Counts,
    pub items: ItemSet,
    pub drain: DrainCell,
    healthy: AtomicBool,
    connect_failures: AtomicU64,
    /// Rise/fall streak behind `healthy` (active checks).
    pub health: Mutex<super::health::HealthStreak>,
    /// Passive health: failed connects in a row, down flag, probe claim.
    pub passive: super::passive::Passive,
    /// When it last became available (ms on the process clock; 0 = since start): slow start.
    available_since_ms: AtomicU64,
}

impl BackendState {
    fn new(pool: Arc<PoolState>, name: &str) -> Self {
        Self {
            id: format!("{}/{name}", pool.name).into(),
            name: name.into(),
            pool,
            counts: Counts::default(),
            items: ItemSet::default(),
            drain: DrainCell::default(),
            healthy: AtomicBool::new(true),
            connect_failures: AtomicU64::new(0),
            health: Mutex::new(super::health::HealthStreak::default()),
            passive: Default::default(),
            available_since_ms: AtomicU64::new(0),
        }
    }

    /// Requests and streams in flight.
    pub fn in_flight(&self) -> u64 {
        self.counts.total()
    }

    /// Whether new requests may be routed here: not draining (itself or its pool), healthy.
    pub fn available(&self) -> bool {
        !self.drain.is_draining() && !self.pool.drain.is_draining() && self.healthy()
    }

    /// Health: active checks pass (or none are configured) and connects are not failing
    /// passively.
    pub fn healthy(&self) -> bool {
        self.checks_pass() && !self.passive.is_down()
    }

    /// Health as last decided by active checks (true when the pool has none).
    pub fn checks_pass(&self) -> bool {
        // Relaxed: a flag read.
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

    /// A connect failed in a pool with active checks: after `fall` in a row the backend is
    /// unhealthy until its next passing check. Returns true when this made it unhealthy.
    pub fn record_checked_failure(&self, fall: u32) -> bool {
        // The streak counts here; `down` stays for pools without checks (they have no
        // checker to clear it), so the health flag is the published state.
        let n = self.passive.streak().saturating_add(1);
        self.passive.fail(u32::MAX);
        if n >= fall && self.checks_pass() {
            self.set_healthy(false);
            return true;
        }
        false
    }

    /// A connect succeeded. Returns true when the backend had been failing (held requests
    /// that failed on it may try it again). One atomic load when it was not.
    pub fn record_connect_ok(&self) -> bool {
        self.passive.ok()
    }

    /// It just became available (healthy again, undrained, added): slow start begins.
    pub fn mark_available_now(&self) {
        self.available_since_ms
            .store(process_ms().max(1), Ordering::Relaxed);
    }

    /// Slow start: whether a pick may use this backend now. Within `window` of becoming
    /// available it is kept with probability rising linearly from 10 % to 100 %.
    pub fn slow_start_accept(&self, window: std::time::Duration) -> bool {
        let since = self.available_since_ms.load(Ordering::Relaxed);
        if since == 0 {
            return true;
        }
        let elapsed = process_ms().saturating_sub(since) as f64;
        let w = window.as_millis() as f64;
        if elapsed >= w {
            return true;
        }
        let share = 0.1 + 0.9 * elapsed / w;
        unit_random() < share
    }

    /// Connection attempts that failed since start.
    pub fn connect_failures(&self) -> u64 {
        self.connect_failures.load(Ordering::Relaxed)
    }

    /// Called when the backend's in-flight total reached zero.
    pub fn on_idle(&self) {
        self.drain.observe(self.counts.total());
    }
}

/// Milliseconds since the first call (a monotonic process clock).
fn process_ms() -> u64 {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// A cheap uniform number in [0, 1): splitmix64 over a shared counter. Not for secrets.
fn unit_random() -> f64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0x9E37_79B9_7F4A_7C15);
    // Relaxed: any interleaving still yields distinct inputs.
    let mut z = COUNTER.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

#[derive(Debug, Default)]
struct Maps {
    pools: HashMap<Arc<str>, Arc<PoolState>>,
    backends: HashMap<Arc<str>, Arc<BackendState>>,
}

/// All pool and backend states by id. Locked only while building a config and for admin reads.
#[derive(Debug, Default)]
pub struct Registry {
    inner: Mutex<Maps>,
    /// Set once the first config is published: backends created after that slow-start.
    live: AtomicBool,
    stats: Mutex<super::stats::StatsMaps>,
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

    /// Request statistics of `route` across `pools` (counters survive reloads).
    pub fn route_stats(&self, route: &str, pools: &[Arc<str>]) -> super::stats::RouteStats {
        self.stats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .route(route, pools)
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
    use crate::state::tracking::{Kind, Tracking};

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
            assert_eq!(a.counts.snapshot().http, 1);
            assert_eq!(a.counts.snapshot().sse, 1);
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
            .start(Deadlines::default(), a.pool.counts.total())
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
