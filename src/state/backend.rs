//! Live state of one pool and one backend, keyed by id (`pool/name`, `pool`) in the
//! [`super::registry::Registry`] so it survives reloads: in-flight counts, tracked items,
//! drain cells, health (active checks and passive), slow start. The hot path reads atomics.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Instant,
};

use super::{counts::Counts, drain_cell::DrainCell, items::ItemSet};

/// Live state of one pool.
#[derive(Debug)]
pub struct PoolState {
    pub name: Arc<str>,
    pub counts: Counts,
    pub drain: DrainCell,
    pub streams_ended: super::stats::StreamEnds,
    /// Upstream HTTP/2 connections of its backends, closed when a drain ends.
    pub h2_conns: super::items::H2Conns,
}

impl PoolState {
    pub(super) fn new(name: &str) -> Self {
        Self {
            name: name.into(),
            counts: Counts::default(),
            drain: DrainCell::default(),
            streams_ended: Default::default(),
            h2_conns: Default::default(),
        }
    }

    /// Called when the pool's in-flight total reached zero.
    pub fn on_idle(&self) {
        if self.drain.observe(self.counts.total()) {
            // Drained: its backends' idle HTTP/2 connections go (nothing is on them now).
            self.h2_conns.close(None);
        }
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
    pub health: Mutex<crate::health::HealthStreak>,
    /// Passive health: failed connects in a row, down flag, probe claim.
    pub passive: super::passive::Passive,
    /// Upstream HTTP/2 streams and the turn for taking one.
    pub h2: super::h2::H2Lane,
    /// When it last became available (ms on the process clock; 0 = since start): slow start.
    available_since_ms: AtomicU64,
}

impl BackendState {
    pub(super) fn new(pool: Arc<PoolState>, name: &str) -> Self {
        Self {
            id: format!("{}/{name}", pool.name).into(),
            name: name.into(),
            pool,
            counts: Counts::default(),
            items: ItemSet::default(),
            drain: DrainCell::default(),
            healthy: AtomicBool::new(true),
            connect_failures: AtomicU64::new(0),
            health: Mutex::new(crate::health::HealthStreak::default()),
            passive: Default::default(),
            h2: Default::default(),
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
        if self.drain.observe(self.counts.total()) {
            self.pool.h2_conns.close(Some(&self.id));
        }
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

impl BackendState {
    /// Apply one check result; returns the new health when it changed.
    pub fn record_check(&self, ok: bool, rise: u32, fall: u32) -> Option<bool> {
        let mut h = self.health.lock().unwrap_or_else(|p| p.into_inner());
        let changed = h.record(ok, rise, fall, self.checks_pass());
        if let Some(v) = changed {
            self.set_healthy(v);
            if v {
                self.mark_available_now();
            }
        }
        changed
    }
}
