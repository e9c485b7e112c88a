//! Shared process state: the published config (`ArcSwap`), the backend registry, readiness and
//! process-wide in-flight count. Reloads go through [`AppState::reload`], serialized by a lock
//! that the hot path never touches.

pub mod backend;
pub mod health;
pub mod overrides;
pub mod passive;
pub mod persist;
pub mod ramp;
pub mod stats;
pub mod tracking;

use std::{
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Instant, SystemTime},
};

use arc_swap::ArcSwap;
use serde::Serialize;
use tokio::sync::Notify;

use crate::config::{self, ConfigError, RuntimeConfig};
use backend::Registry;

/// Everything shared between the proxy, admin API and background tasks.
#[derive(Debug)]
pub struct AppState {
    config: ArcSwap<RuntimeConfig>,
    pub registry: Arc<Registry>,
    pub config_path: PathBuf,
    reload_lock: Mutex<ReloadStats>,
    /// Split and maintenance overrides; changed only while holding `reload_lock`.
    overrides: Mutex<overrides::Overrides>,
    /// Hash of the file text last published, so a watch event without a change is a no-op.
    loaded_hash: AtomicU64,
    ready: AtomicBool,
    shutting_down: AtomicBool,
    active: AtomicU64,
    /// Woken when the process-wide in-flight count drops to zero.
    pub idle: Notify,
    /// Split ramps by route.
    pub ramps: ramp::Ramps,
    /// Woken when a backend may have become available (health, undrain, split, reload):
    /// held requests re-route.
    pub availability: Notify,
    pub started: Instant,
    /// Unix time of the start (the first successful config load).
    pub started_unix: f64,
}

/// Counters of reload outcomes (also kept for metrics).
#[derive(Debug, Default, Clone, Serialize)]
pub struct ReloadStats {
    pub succeeded: u64,
    pub failed: u64,
    pub last_success_unix: Option<f64>,
    pub last_error: Option<String>,
}

/// What a successful reload changed.
#[derive(Debug, Serialize)]
pub struct ReloadSummary {
    pub generation: u64,
    pub changed: bool,
    pub routes_added: Vec<String>,
    pub routes_removed: Vec<String>,
    pub routes_changed: Vec<String>,
    pub pools_added: Vec<String>,
    pub pools_removed: Vec<String>,
    pub pools_changed: Vec<String>,
    /// Settings that only apply after a restart (listeners, admin address, server).
    pub needs_restart: Vec<String>,
    pub warnings: Vec<String>,
}

impl AppState {
    /// Wrap an initial config (generation 1).
    pub fn new(mut cfg: RuntimeConfig, registry: Arc<Registry>, config_path: PathBuf) -> Self {
        cfg.generation = 1;
        let loaded_hash = std::fs::read(&config_path).map(|t| hash(&t)).unwrap_or(0);
        Self {
            loaded_hash: AtomicU64::new(loaded_hash),
            overrides: Mutex::new(overrides::Overrides::default()),
            config: ArcSwap::from_pointee(cfg),
            registry,
            config_path,
            reload_lock: Mutex::new(ReloadStats::default()),
            ready: AtomicBool::new(false),
            shutting_down: AtomicBool::new(false),
            active: AtomicU64::new(0),
            idle: Notify::new(),
            availability: Notify::new(),
            ramps: ramp::Ramps::default(),
            started: Instant::now(),
            started_unix: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
        }
    }

    /// The current config snapshot. Cheap; no lock.
    pub fn config(&self) -> arc_swap::Guard<Arc<RuntimeConfig>> {
        self.config.load()
    }

    /// The current snapshot as an owned `Arc` (for work that outlives a request hook).
    pub fn config_full(&self) -> Arc<RuntimeConfig> {
        self.config.load_full()
    }

    /// Re-read the config file; on success publish it with one store. On error nothing
    /// changes and the error is returned (and remembered for status/metrics).
    pub fn reload(&self) -> Result<ReloadSummary, ConfigError> {
        let mut stats = self.reload_lock.lock().unwrap_or_else(|p| p.into_inner());
        let old = self.config.load_full();
        let text = std::fs::read(&self.config_path).map_err(|source| ConfigError::Read {
            file: self.config_path.clone(),
            source,
        });
        let text_hash = text.as_ref().map(|t| hash(t)).unwrap_or(0);
        let built =
            text.and_then(|t| config::load_bytes(&t, &self.registry, &|k| std::env::var(k).ok()));
        match built {
            Ok(loaded) => {
                self.loaded_hash.store(text_hash, Ordering::Relaxed);
                let mut cfg = loaded.config;
                let mut summary = diff(&old, &cfg);
                summary.warnings = loaded.warnings;
                cfg.generation = old.generation + 1;
                summary.generation = cfg.generation;
                let ov = self.overrides().clone();
                let cfg = overrides::apply(&cfg, &ov, &mut summary.warnings);
                let live = cfg
                    .pools
                    .values()
                    .flat_map(|p| p.backends.iter().map(|b| b.id.clone()))
                    .collect();
                for r in summary.routes_changed.iter().chain(&summary.routes_removed) {
                    self.ramps.cancel(r, "a config reload changed the route");
                }
                let declared = self.apply_declared(&cfg);
                self.apply_health(&cfg);
                self.config.store(Arc::new(cfg));
                self.availability_changed();
                self.registry.retain_live(&live);
                match tokio::runtime::Handle::try_current() {
                    Ok(h) => {
                        let _guard = h.enter();
                        for (target, epoch) in declared {
                            crate::drain::enforce::spawn(target, self.registry.clone(), epoch);
                        }
                    }
                    Err(_) if !declared.is_empty() => {
                        tracing::warn!(
                            "declared drains started without deadline tasks (no runtime)"
                        )
                    }
                    Err(_) => {}
                }
                // The file may have started or ended a drain; overrides are re-saved as well.
                self.persist();
                stats.succeeded += 1;
                stats.last_success_unix = SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .ok()
                    .map(|d| d.as_secs_f64());
                stats.last_error = None;
                Ok(summary)
            }
            Err(e) => {
                stats.failed += 1;
                stats.last_error = Some(e.to_string());
                Err(e)
            }
        }
    }

    /// Wake held requests: something may have become available.
    pub fn availability_changed(&self) {
        self.availability.notify_waiters();
    }

    /// Health defaults of a config about to be published: pools without checks are healthy;
    /// a backend first seen in a pool with checks starts unhealthy (until its first pass)
    /// unless `start_healthy`. Existing backends keep their health across reloads.
    pub fn apply_health(&self, cfg: &RuntimeConfig) {
        for p in cfg.pools.values() {
            for b in &p.backends {
                let mut h = b.state.health.lock().unwrap_or_else(|e| e.into_inner());
                match &p.health_check {
                    None => {
                        if h.initialized {
                            h.reset();
                        }
                        b.state.set_healthy(true);
                    }
                    Some(hc) if !h.initialized => {
                        h.initialized = true;
                        b.state.set_healthy(hc.start_healthy);
                    }
                    Some(_) => {}
                }
            }
        }
    }

    /// Whether the file's content differs from what was last published.
    pub fn config_file_changed(&self) -> bool {
        match std::fs::read(&self.config_path) {
            Ok(t) => hash(&t) != self.loaded_hash.load(Ordering::Relaxed),
            // Unreadable (mid-swap, removed): let reload report it.
            Err(_) => true,
        }
    }

    fn overrides(&self) -> std::sync::MutexGuard<'_, overrides::Overrides> {
        self.overrides.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A copy of the current overrides.
    pub fn overrides_snapshot(&self) -> overrides::Overrides {
        self.overrides().clone()
    }

    /// Change the overrides with `f` (which may refuse), then publish the derived snapshot
    /// with one store and save the state file. Serialized with reloads.
    pub fn change_overrides<T, E>(
        &self,
        f: impl FnOnce(&mut overrides::Overrides, &RuntimeConfig) -> Result<T, E>,
    ) -> Result<T, E> {
        let _serial = self.reload_lock.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.config.load_full();
        let mut next = self.overrides().clone();
        let out = f(&mut next, &current)?;
        let mut warnings = Vec::new();
        let cfg = overrides::apply(&current, &next, &mut warnings);
        for w in warnings {
            tracing::warn!("{w}");
        }
        *self.overrides() = next;
        self.config.store(Arc::new(cfg));
        self.availability_changed();
        drop(_serial);
        self.persist();
        Ok(out)
    }

    /// Replace the overrides wholesale (state file restore at start).
    pub fn set_overrides(&self, ov: overrides::Overrides) {
        let _ = self.change_overrides(|o, _| {
            *o = ov;
            Ok::<(), ()>(())
        });
    }

    /// Reload outcome counters.
    pub fn reload_stats(&self) -> ReloadStats {
        self.reload_lock
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Mark the proxy ready (listeners verified) or not.
    pub fn set_ready(&self, on: bool) {
        self.ready.store(on, Ordering::Release);
    }

    /// Ready for traffic: listeners up and not shutting down.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire) && !self.is_shutting_down()
    }

    /// Enter shutdown (readiness fails from now on).
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::Release);
    }

    /// Whether shutdown has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }

    /// Process-wide requests in flight (including streams).
    pub fn active(&self) -> u64 {
        self.active.load(Ordering::Acquire)
    }
}

/// RAII process-wide in-flight count, made when a request context is created.
#[derive(Debug)]
pub struct ActiveGuard(Arc<AppState>);

impl ActiveGuard {
    /// Count one more request.
    pub fn new(state: Arc<AppState>) -> Self {
        // Relaxed: nothing is published through the increment.
        state.active.fetch_add(1, Ordering::Relaxed);
        Self(state)
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        // AcqRel: order the last decrement before a shutdown waiter re-reads zero.
        if self.0.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

fn hash(bytes: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

fn diff(old: &RuntimeConfig, new: &RuntimeConfig) -> ReloadSummary {
    let route_sig = |r: &config::runtime::Route| {
        format!(
            "{:?}{}{:?}{:?}{}",
            r.hosts,
            r.path_prefix,
            r.methods,
            r.split
                .iter()
                .map(|(p, w)| (p.name.to_string(), *w))
                .collect::<Vec<_>>(),
            r.retries
        )
    };
    let pool_sig = |p: &config::runtime::Pool| {
        format!(
            "{:?}{:?}",
            p.backends
                .iter()
                .map(|b| (b.id.to_string(), b.addr, b.weight))
                .collect::<Vec<_>>(),
            p.health_check
        )
    };
    let (mut ra, mut rr, mut rc) = (vec![], vec![], vec![]);
    for r in &new.routes {
        match old.routes.iter().find(|o| o.name == r.name) {
            None => ra.push(r.name.to_string()),
            Some(o) if route_sig(o) != route_sig(r) => rc.push(r.name.to_string()),
            _ => {}
        }
    }
    for o in &old.routes {
        if !new.routes.iter().any(|r| r.name == o.name) {
            rr.push(o.name.to_string());
        }
    }
    let (mut pa, mut pr, mut pc) = (vec![], vec![], vec![]);
    for (n, p) in &new.pools {
        match old.pools.get(n) {
            None => pa.push(n.to_string()),
            Some(o) if pool_sig(o) != pool_sig(p) => pc.push(n.to_string()),
            _ => {}
        }
    }
    for n in old.pools.keys() {
        if !new.pools.contains_key(n) {
            pr.push(n.to_string());
        }
    }
    let mut needs_restart = vec![];
    if old.listeners != new.listeners {
        needs_restart.push("listeners".to_string());
    }
    if old.admin.addr != new.admin.addr {
        needs_restart.push("admin.address".to_string());
    }
    if old.server != new.server {
        needs_restart.push("server".to_string());
    }
    let changed = !(ra.is_empty()
        && rr.is_empty()
        && rc.is_empty()
        && pa.is_empty()
        && pr.is_empty()
        && pc.is_empty());
    ReloadSummary {
        generation: 0,
        changed,
        routes_added: ra,
        routes_removed: rr,
        routes_changed: rc,
        pools_added: pa,
        pools_removed: pr,
        pools_changed: pc,
        needs_restart,
        warnings: vec![],
    }
}
