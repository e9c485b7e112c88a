//! The history sampler: every 2 s, per pool, the request, 5xx and connect-failure rates over
//! the last interval and the in-flight and held gauges now; and a mark whenever the config
//! generation, a route's effective split, a pool's drain state or maintenance changed since
//! the last look (a change and its reversal inside one interval leave no mark). It runs until
//! the process exits, so a deploy watcher sees the drain of a shutdown too.

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant},
};

use async_trait::async_trait;
use pingora::{server::ShutdownWatch, services::background::BackgroundService};

use crate::{
    api,
    state::{counts::Kind, history::INTERVAL_SECONDS, process::unix_now, table::Table, AppState},
};

/// The sampler (a pingora background service).
pub struct HistorySampler {
    pub state: Arc<AppState>,
}

/// Counters per pool: requests, 5xx, connect failures.
type Totals = BTreeMap<String, [u64; 3]>;

/// What the marks are about.
#[derive(Default, PartialEq)]
struct Looks {
    generation: u64,
    splits: BTreeMap<String, String>,
    /// Drain phases by `pool NAME` and `backend POOL/NAME`.
    pools: BTreeMap<String, &'static str>,
    maintenance: bool,
}

#[async_trait]
impl BackgroundService for HistorySampler {
    async fn start(&self, _shutdown: ShutdownWatch) {
        let mut last: Option<(Instant, Totals)> = None;
        let mut looks: Option<Looks> = None;
        loop {
            let table = self.state.table_full();
            let now = Instant::now();
            let totals = totals(&table);
            if let Some((at, before)) = &last {
                let dt = now.duration_since(*at).as_secs_f64().max(0.001);
                self.state
                    .history
                    .sample(sample(&table, before, &totals, dt));
            }
            last = Some((now, totals));
            let seen = look(&table);
            if let Some(prev) = &looks {
                mark_changes(&self.state, prev, &seen);
            }
            looks = Some(seen);
            tokio::time::sleep(Duration::from_secs_f64(INTERVAL_SECONDS)).await;
        }
    }
}

fn totals(table: &Table) -> Totals {
    let mut out = Totals::new();
    for route in &table.routes {
        for (pool, s) in &route.stats.pools {
            let r = s.requests();
            let e = out.entry(pool.to_string()).or_default();
            e[0] += r.iter().sum::<u64>();
            e[1] += r[4];
        }
    }
    for (name, pool) in &table.pools {
        let e = out.entry(name.to_string()).or_default();
        e[2] += pool
            .backends
            .iter()
            .map(|b| b.state.connect_failures())
            .sum::<u64>();
    }
    out
}

fn sample(table: &Table, before: &Totals, now: &Totals, dt: f64) -> api::Sample {
    let rate = |pool: &str, i: usize| {
        let (a, b) = (
            before.get(pool).map_or(0, |v| v[i]),
            now.get(pool).map_or(0, |v| v[i]),
        );
        // A reload may start a pool's counters again: never a negative rate.
        b.saturating_sub(a) as f64 / dt
    };
    let mut pools = BTreeMap::new();
    for (name, pool) in &table.pools {
        let count = |k: Kind| pool.backends.iter().map(|b| b.state.counts.get(k)).sum();
        let held = table
            .routes
            .iter()
            .filter(|r| r.split.iter().any(|(p, _)| p.name == *name))
            .map(|r| r.stats.held())
            .sum();
        pools.insert(
            name.to_string(),
            api::PoolSample {
                rps: rate(name, 0),
                errors: rate(name, 1),
                connect_failures: rate(name, 2),
                in_flight: api::InFlight(std::array::from_fn(|i| count(Kind::from_index(i)))),
                held,
            },
        );
    }
    api::Sample {
        seq: 0,
        t: unix_now(),
        pools,
    }
}

fn look(table: &Table) -> Looks {
    let splits = table
        .routes
        .iter()
        .map(|r| {
            let s: Vec<String> = r
                .split
                .iter()
                .map(|(p, w)| format!("{} {w}", p.name))
                .collect();
            (r.name.to_string(), s.join(", "))
        })
        .collect();
    let mut pools = BTreeMap::new();
    for (name, p) in &table.pools {
        if let Some(b) = p.backends.first() {
            pools.insert(format!("pool {name}"), b.state.pool.drain.phase().as_str());
        }
        for b in &p.backends {
            pools.insert(format!("backend {}", b.id), b.state.drain.phase().as_str());
        }
    }
    Looks {
        generation: table.generation,
        splits,
        pools,
        maintenance: table.maintenance.is_some(),
    }
}

fn mark_changes(state: &AppState, prev: &Looks, now: &Looks) {
    let t = unix_now();
    let h = &state.history;
    if now.generation != prev.generation {
        h.mark(
            t,
            "reload",
            format!("config reloaded (generation {})", now.generation),
        );
    }
    for (route, split) in &now.splits {
        if prev.splits.get(route) != Some(split) {
            h.mark(t, "split", format!("{route}: {split}"));
        }
    }
    for (pool, s) in &now.pools {
        if prev.pools.get(pool).is_some_and(|p| p != s) {
            h.mark(t, "drain", format!("{pool} {s}"));
        }
    }
    if now.maintenance != prev.maintenance {
        let on = if now.maintenance { "on" } else { "off" };
        h.mark(t, "maintenance", format!("maintenance {on}"));
    }
}
