//! Live state: the published route table (`ArcSwap`), the backend registry, statistics,
//! runtime overrides, the process's lifecycle flags. Everything here is data with atomic or
//! briefly locked updates; the tasks that drive it live in `services`.
//!
//! Publishing is serialized by one lock (`publish`) that the hot path never touches: a new
//! spec ([`AppState::publish_spec`]) or new overrides ([`AppState::change_overrides`]) make
//! a new [`Table`], stored with one `ArcSwap::store`.

pub mod access_log;
pub mod acme;
pub mod backend;
pub mod certs;
pub mod counts;
pub mod drain_cell;
pub mod fleet;
pub mod h2;
pub mod history;
pub mod items;
pub mod overrides;
pub mod passive;
pub mod process;
pub mod ramps;
pub mod registry;
pub mod spool;
pub mod stats;
pub mod table;
pub mod target;
pub mod tracking;

use std::{
    collections::HashSet,
    path::PathBuf,
    sync::{Arc, Mutex},
};

use arc_swap::ArcSwap;
use tokio::sync::{mpsc, Notify};

use crate::config::{diff::Diff, Spec};
use registry::Registry;
use stats::Stats;
use table::Table;
use target::Target;

pub use process::{ExitReason, Process, ReloadStats};

/// RAII process-wide in-flight count, made when a request context is created.
#[derive(Debug)]
pub struct ActiveGuard(Arc<AppState>);

impl ActiveGuard {
    /// Count one more request.
    pub fn new(state: Arc<AppState>) -> Self {
        state.process.enter();
        Self(state)
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.process.leave();
    }
}

/// A drain whose deadline tasks the drain service must run: its target and epoch.
pub type Enforce = (Target, u64);

/// Everything shared between the proxy, the admin API and the services.
#[derive(Debug)]
pub struct AppState {
    table: ArcSwap<Table>,
    /// Serializes publications; holds the overrides and the hash of the file last published.
    publish: Mutex<Published>,
    pub registry: Arc<Registry>,
    pub stats: Stats,
    /// Wakes the resolver service: runtime members with host names were just set.
    pub resolve_now: tokio::sync::Notify,
    pub config_path: PathBuf,
    /// The address the admin listener was bound to at start (a reload does not move it).
    pub admin_bound: std::net::SocketAddr,
    /// Readiness, shutdown, process-wide in-flight count, reload counters.
    pub process: Process,
    /// Woken when a backend may have become available (health, undrain, split, reload):
    /// held requests re-route.
    pub availability: Notify,
    /// Split ramps by route (status; the drivers are in `services::ramps`).
    pub ramps: ramps::Ramps,
    /// The access log's queue (the writer is `services::access_log`).
    pub access_log: access_log::AccessLog,
    /// The last minutes per pool, for the status page (sampled by `services::history`).
    pub history: history::History,
    /// The certificates TLS listeners serve (watched by `services::certs`).
    pub certs: certs::Certs,
    /// ACME HTTP-01 answers being asked for.
    pub challenges: certs::Challenges,
    /// What the ACME service is doing (`services::acme`).
    pub acme: acme::AcmeBoard,
    /// The fleet through the `control_store` (kept current by `services::fleet`).
    pub fleet: fleet::Fleet,
    /// Drains whose deadline tasks the drain service starts.
    enforce: (
        mpsc::UnboundedSender<Enforce>,
        Mutex<Option<mpsc::UnboundedReceiver<Enforce>>>,
    ),
}

#[derive(Debug, Default)]
struct Published {
    overrides: overrides::Overrides,
    file_hash: u64,
}

impl AppState {
    /// Bind and publish the first spec (generation 1).
    pub fn new(spec: Spec, config_path: PathBuf, file_hash: u64) -> Self {
        let registry = Arc::new(Registry::default());
        let stats = Stats::default();
        let mut warnings = Vec::new();
        let table = Table::bind(
            Arc::new(spec),
            1,
            &Default::default(),
            &registry,
            &stats,
            &mut warnings,
        );
        apply_health(&table);
        // From now on, new backends are additions (they slow-start).
        registry.set_live();
        let (tx, rx) = mpsc::unbounded_channel();
        let admin_bound = table.spec.admin.addr;
        let store = table.spec.control_store.as_ref();
        let fleet = fleet::Fleet::new(store.map(|c| (c.node.clone(), c.heartbeat_ttl)));
        let access_log = access_log::AccessLog::default();
        access_log.set_dest(&table.spec.access_log.dest);
        Self {
            access_log,
            history: Default::default(),
            certs: Default::default(),
            challenges: Default::default(),
            acme: Default::default(),
            fleet,
            admin_bound,
            table: ArcSwap::from_pointee(table),
            publish: Mutex::new(Published {
                overrides: Default::default(),
                file_hash,
            }),
            registry,
            stats,
            resolve_now: tokio::sync::Notify::new(),
            config_path,
            process: Process::new(),
            availability: Notify::new(),
            ramps: Default::default(),
            enforce: (tx, Mutex::new(Some(rx))),
        }
    }

    /// The current table. Cheap; no lock.
    pub fn table(&self) -> arc_swap::Guard<Arc<Table>> {
        self.table.load()
    }

    /// The current table as an owned `Arc` (for work that outlives a request hook).
    pub fn table_full(&self) -> Arc<Table> {
        self.table.load_full()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Published> {
        // Plain data replaced in single assignments.
        self.publish.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hash of the config file text last published.
    pub fn file_hash(&self) -> u64 {
        self.lock().file_hash
    }

    /// Publish a new spec (a reload): bind it with the current overrides as the next
    /// generation, let `before_store` act on the bound table (declared drains) while
    /// publication is still serialized, store it, wake held requests, and prune live state
    /// that the new table no longer names and that is idle. Returns the diff.
    pub fn publish_spec(
        &self,
        spec: Spec,
        file_hash: u64,
        warnings: &mut Vec<String>,
        before_store: impl FnOnce(&Table),
    ) -> (Diff, u64) {
        let mut p = self.lock();
        let old = self.table.load_full();
        let diff = Diff::between(&old.spec, &spec);
        let generation = old.generation + 1;
        let table = Table::bind(
            Arc::new(spec),
            generation,
            &p.overrides,
            &self.registry,
            &self.stats,
            warnings,
        );
        apply_health(&table);
        before_store(&table);
        self.access_log.set_dest(&table.spec.access_log.dest);
        self.table.store(Arc::new(table));
        p.file_hash = file_hash;
        drop(p);
        self.availability_changed();
        self.prune();
        (diff, generation)
    }

    /// Change the overrides with `f` (which may refuse), then publish the derived table with
    /// one store. Serialized with reloads. The caller persists (`services::persist`).
    pub fn change_overrides<T, E>(
        &self,
        f: impl FnOnce(&mut overrides::Overrides, &Table) -> Result<T, E>,
    ) -> Result<T, E> {
        let mut p = self.lock();
        let current = self.table.load_full();
        let mut next = p.overrides.clone();
        let out = f(&mut next, &current)?;
        let mut warnings = Vec::new();
        let table =
            if next.members == p.overrides.members && next.addresses == p.overrides.addresses {
                current.with_overrides(&next, &mut warnings)
            } else {
                if next.members != p.overrides.members {
                    // Host names among them are looked up by the resolver, now.
                    self.resolve_now.notify_one();
                }
                // New members or addresses: bind the pools again (registry states are kept by id).
                Table::bind(
                    current.spec.clone(),
                    current.generation,
                    &next,
                    &self.registry,
                    &self.stats,
                    &mut warnings,
                )
            };
        for w in warnings {
            tracing::warn!("{w}");
        }
        apply_health(&table);
        p.overrides = next;
        self.table.store(Arc::new(table));
        drop(p);
        self.availability_changed();
        self.prune();
        Ok(out)
    }

    /// Newest answers for backend names: publish a table with them when anything changed
    /// (same generation: it is not a reload). Returns whether it did.
    pub fn set_addresses(&self, addresses: table::Addresses) -> bool {
        if self.lock().overrides.addresses == addresses {
            return false;
        }
        self.change_overrides(|ov, _| {
            ov.addresses = addresses;
            Ok::<(), ()>(())
        })
        .is_ok()
    }

    /// A copy of the current overrides.
    pub fn overrides(&self) -> overrides::Overrides {
        self.lock().overrides.clone()
    }

    /// Forget registry entries and statistics the table no longer names, once idle.
    pub fn prune(&self) {
        let t = self.table.load();
        let live: HashSet<Arc<str>> = t.backends().map(|(_, b)| b.id.clone()).collect();
        self.registry.retain_live(&live);
        let pairs = t
            .routes
            .iter()
            .flat_map(|r| t.pools.keys().map(move |p| (r.name.clone(), p.clone())))
            .collect();
        self.stats.retain(&pairs);
    }

    /// Wake held requests: something may have become available.
    pub fn availability_changed(&self) {
        self.availability.notify_waiters();
    }

    /// Ask the drain service to run the deadline tasks of a drain.
    pub fn enforce(&self, target: Target, epoch: u64) {
        // The receiver lives as long as the drain service; before it starts, commands queue.
        let _ = self.enforce.0.send((target, epoch));
    }

    /// The drain service's end of the queue (taken once).
    pub fn take_enforce_queue(&self) -> Option<mpsc::UnboundedReceiver<Enforce>> {
        self.enforce
            .1
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    /// Process-wide requests in flight (including streams).
    pub fn active(&self) -> u64 {
        self.process.active()
    }

    /// Whether shutdown has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.process.is_shutting_down()
    }
}

/// Health defaults of a table about to be published: pools without checks count as
/// healthy; a backend first seen in a pool with checks starts unhealthy (until its first
/// pass) unless `start_healthy`. Existing backends keep their health across reloads.
fn apply_health(table: &Table) {
    for (p, b) in table.backends() {
        let mut h = b.state.health.lock().unwrap_or_else(|e| e.into_inner());
        match &p.spec.health_check {
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
