//! The route table the proxy reads: a [`Spec`] bound to live state (each backend's
//! registry entry, each route's statistics) with the runtime overrides applied. One
//! `ArcSwap` publishes it; requests already routed keep the `Arc`s they hold.
//!
//! Binding happens only for a spec that is being published, so a refused config leaves the
//! registry and the statistics untouched.

use std::{collections::BTreeMap, sync::Arc};

pub use super::overrides::Addresses;

use super::{
    backend::BackendState,
    overrides::{Maintenance, Overrides},
    registry::Registry,
    stats::{RouteStats, Stats},
};
use crate::{
    config::spec::{BackendSpec, PoolSpec, RouteSpec, Spec},
    routing::Schedule,
};

/// One published generation: the spec, bound.
#[derive(Debug)]
pub struct Table {
    /// 1 at start, +1 per successful reload (override changes keep it).
    pub generation: u64,
    pub spec: Arc<Spec>,
    /// Same order as `spec.routes` (the router's indexes).
    pub routes: Vec<Arc<Route>>,
    pub pools: BTreeMap<Arc<str>, Arc<Pool>>,
    /// Maintenance mode (a runtime override), if on.
    pub maintenance: Option<Arc<Maintenance>>,
}

impl Table {
    /// Bind `spec` to the registry and statistics, with `ov` applied. Creates registry
    /// entries for new backends: call it only for a spec that will be published.
    pub fn bind(
        spec: Arc<Spec>,
        generation: u64,
        ov: &Overrides,
        registry: &Registry,
        stats: &Stats,
        warnings: &mut Vec<String>,
    ) -> Table {
        let pools: BTreeMap<Arc<str>, Arc<Pool>> = spec
            .pools
            .values()
            .map(|p| {
                let p = match ov.members.get(&*p.name) {
                    Some(members) => Arc::new(PoolSpec {
                        backends: members.clone(),
                        ..(**p).clone()
                    }),
                    None => p.clone(),
                };
                (
                    p.name.clone(),
                    Arc::new(Pool::bind(p, registry, &ov.addresses)),
                )
            })
            .collect();
        for pool in ov.members.keys() {
            if !spec.pools.contains_key(pool.as_str()) {
                warnings.push(format!(
                    "backends override of pool {pool:?}: the pool no longer exists; ignored"
                ));
            }
        }
        let names: Vec<Arc<str>> = pools.keys().cloned().collect();
        let routes = spec
            .routes
            .iter()
            .map(|r| {
                let split = effective_split(r, &pools, ov, warnings);
                Arc::new(Route::new(
                    r.clone(),
                    split,
                    Arc::new(stats.route(&r.name, &names)),
                ))
            })
            .collect();
        warn_unknown_routes(&spec, ov, warnings);
        Table {
            generation,
            spec,
            routes,
            pools,
            maintenance: ov.maintenance.as_ref().map(|m| Arc::new(m.bind())),
        }
    }

    /// The same table with other overrides: pools and unchanged routes are shared.
    pub fn with_overrides(&self, ov: &Overrides, warnings: &mut Vec<String>) -> Table {
        let routes = self
            .routes
            .iter()
            .map(|r| {
                let split = effective_split(&r.spec, &self.pools, ov, warnings);
                if same_split(&split, &r.split) {
                    r.clone()
                } else {
                    Arc::new(Route::new(r.spec.clone(), split, r.stats.clone()))
                }
            })
            .collect();
        warn_unknown_routes(&self.spec, ov, warnings);
        Table {
            generation: self.generation,
            spec: self.spec.clone(),
            routes,
            pools: self.pools.clone(),
            maintenance: ov.maintenance.as_ref().map(|m| Arc::new(m.bind())),
        }
    }

    /// The route for a request, if any.
    pub fn route(&self, host: &str, path: &str, method: &http::Method) -> Option<&Arc<Route>> {
        self.spec
            .router
            .find(host, path, method)
            .and_then(|i| self.routes.get(i))
    }

    /// Every backend state of the table, with its pool.
    pub fn backends(&self) -> impl Iterator<Item = (&Arc<Pool>, &Backend)> {
        self.pools
            .values()
            .flat_map(|p| p.backends.iter().map(move |b| (p, b)))
    }
}

fn same_split(a: &[(Arc<Pool>, u32)], b: &[(Arc<Pool>, u32)]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|((p, w), (q, v))| Arc::ptr_eq(p, q) && w == v)
}

/// The split a route runs with: its override, or the file's.
fn effective_split(
    r: &RouteSpec,
    pools: &BTreeMap<Arc<str>, Arc<Pool>>,
    ov: &Overrides,
    warnings: &mut Vec<String>,
) -> Vec<(Arc<Pool>, u32)> {
    let file = || {
        r.split
            .iter()
            .filter_map(|(p, w)| Some((pools.get(p)?.clone(), *w)))
            .collect::<Vec<_>>()
    };
    let Some(wanted) = ov.splits.get(&*r.name) else {
        return file();
    };
    let mut eff = Vec::with_capacity(wanted.len());
    for (pool, w) in wanted {
        match pools.get(pool.as_str()) {
            Some(p) => eff.push((p.clone(), *w)),
            None => warnings.push(format!(
                "split override of route {}: pool {pool:?} no longer exists; ignored",
                r.name
            )),
        }
    }
    if eff.is_empty() {
        return file();
    }
    eff
}

fn warn_unknown_routes(spec: &Spec, ov: &Overrides, warnings: &mut Vec<String>) {
    for name in ov.splits.keys() {
        if !spec.routes.iter().any(|r| &*r.name == name) {
            warnings.push(format!(
                "split override of route {name:?}: the route no longer exists; ignored"
            ));
        }
    }
}

/// One route, bound: its effective split over bound pools, and its statistics.
#[derive(Debug)]
pub struct Route {
    pub name: Arc<str>,
    pub spec: Arc<RouteSpec>,
    /// Effective split: pools with their weights (0 = no new traffic), after overrides.
    pub split: Vec<(Arc<Pool>, u32)>,
    pub schedule: Schedule,
    /// Request statistics (shared by every snapshot of this route).
    pub stats: Arc<RouteStats>,
}

impl Route {
    fn new(spec: Arc<RouteSpec>, split: Vec<(Arc<Pool>, u32)>, stats: Arc<RouteStats>) -> Route {
        let weights: Vec<u32> = split.iter().map(|(_, w)| *w).collect();
        Route {
            name: spec.name.clone(),
            schedule: Schedule::new(&weights),
            spec,
            split,
            stats,
        }
    }

    /// Pick a pool by the split, skipping pools with no available backend.
    pub fn pick_pool(&self) -> Option<&Arc<Pool>> {
        self.schedule
            .pick(|i| self.split[i].0.has_available())
            .map(|i| &self.split[i].0)
    }

    /// Pick a pool and a backend for a request that must avoid `skip`, falling back to any
    /// pool of the split with weight > 0 when the scheduled one has nothing left (a drain
    /// may race the pick). `None` only when the whole split has nothing for it.
    pub fn pick_avoiding(
        &self,
        skip: &impl Fn(&BackendState) -> bool,
    ) -> Option<(&Arc<Pool>, &Backend)> {
        let scheduled = self
            .schedule
            .pick(|i| self.split[i].0.has_available_avoiding(skip))
            .and_then(|i| {
                let p = &self.split[i].0;
                p.pick_avoiding(skip).map(|b| (p, b))
            });
        scheduled.or_else(|| {
            self.split
                .iter()
                .filter(|(_, w)| *w > 0)
                .find_map(|(p, _)| p.pick_avoiding(skip).map(|b| (p, b)))
        })
    }
}

/// A pool, bound: its backends with their registry states, and the weighted schedule.
#[derive(Debug)]
pub struct Pool {
    pub name: Arc<str>,
    pub spec: Arc<PoolSpec>,
    pub backends: Vec<Backend>,
    pub schedule: Schedule,
}

impl Pool {
    fn bind(spec: Arc<PoolSpec>, registry: &Registry, addresses: &Addresses) -> Pool {
        let backends: Vec<Backend> = spec
            .backends
            .iter()
            .map(|b| {
                let state = registry.get_or_create(&spec.name, &b.name);
                Backend {
                    id: state.id.clone(),
                    addr: addresses.get(&b.address).copied().or(b.addr),
                    spec: b.clone(),
                    state,
                }
            })
            .collect();
        let weights: Vec<u32> = backends.iter().map(|b| b.spec.weight).collect();
        Pool {
            name: spec.name.clone(),
            schedule: Schedule::new(&weights),
            backends,
            spec,
        }
    }

    /// Whether any backend could take a new request now.
    pub fn has_available(&self) -> bool {
        self.backends.iter().any(Backend::usable)
    }

    /// Whether a backend not in `skip` could take the request (no schedule slot used).
    pub fn has_available_avoiding(&self, skip: &impl Fn(&BackendState) -> bool) -> bool {
        self.backends.iter().any(|b| b.usable() && !skip(&b.state))
    }

    /// Next available backend by weight, skipping those `skip` names (backends this request
    /// already failed on). Backends in slow start are passed over part of the time; if that
    /// leaves none, any available one.
    pub fn pick_avoiding(&self, skip: &impl Fn(&BackendState) -> bool) -> Option<&Backend> {
        let base = |i: usize| self.backends[i].usable() && !skip(&self.backends[i].state);
        let picked = match self.spec.slow_start {
            Some(w) => self
                .schedule
                .pick(|i| base(i) && self.backends[i].state.slow_start_accept(w))
                .or_else(|| self.schedule.pick(base)),
            None => self.schedule.pick(base),
        };
        picked.map(|i| &self.backends[i])
    }
}

/// One backend, bound to its registry state.
#[derive(Debug)]
pub struct Backend {
    /// `pool/name`.
    pub id: Arc<str>,
    pub spec: BackendSpec,
    pub state: Arc<BackendState>,
    /// Where to connect: the newest answer for its name, or the file's address. `None`: the
    /// name has not resolved yet (the backend is skipped).
    pub addr: Option<std::net::SocketAddr>,
}

impl Backend {
    /// Whether a new request may go here now.
    pub fn usable(&self) -> bool {
        self.addr.is_some() && self.state.available()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "listeners: [{ name: p, address: 127.0.0.1:18080 }]
routes:
  - name: app
    split: { blue: 80, green: 20 }
pools:
  blue:
    backends: [{ address: 127.0.0.1:3001, weight: 3 }, { address: 127.0.0.1:3003 }]
  green:
    backends: [{ address: 127.0.0.1:3002 }]
";

    fn spec(text: &str) -> Arc<Spec> {
        Arc::new(crate::config::load_str(text, &|_| None).unwrap().spec)
    }

    fn bind(text: &str, reg: &Registry, stats: &Stats) -> Table {
        Table::bind(
            spec(text),
            1,
            &Overrides::default(),
            reg,
            stats,
            &mut Vec::new(),
        )
    }

    #[test]
    fn binding_reuses_registry_state_by_id() {
        let (reg, stats) = (Registry::default(), Stats::default());
        let a = bind(BASE, &reg, &stats);
        assert_eq!(&*a.pools["blue"].backends[0].id, "blue/127.0.0.1:3001");
        assert_eq!(a.routes[0].schedule.len(), 5);
        let st = &a.pools["blue"].backends[0].state;
        st.drain.start(Default::default(), || 0).unwrap();
        let b = bind(&BASE.replace("weight: 3", "weight: 5"), &reg, &stats);
        assert_eq!(
            b.pools["blue"].backends[0].spec.weight, 5,
            "the variant applied"
        );
        assert!(b.pools["blue"].backends[0].state.drain.is_draining());
        assert!(Arc::ptr_eq(st, &b.pools["blue"].backends[0].state));
    }

    #[test]
    fn overrides_rebuild_only_the_route() {
        let (reg, stats) = (Registry::default(), Stats::default());
        let a = bind(BASE, &reg, &stats);
        let mut ov = Overrides::default();
        ov.splits.insert(
            "app".into(),
            [("green".to_string(), 100)].into_iter().collect(),
        );
        let b = a.with_overrides(&ov, &mut Vec::new());
        assert!(Arc::ptr_eq(&a.pools["blue"], &b.pools["blue"]));
        assert_eq!(b.routes[0].split.len(), 1);
        assert_eq!(&*b.routes[0].split[0].0.name, "green");
        assert!(Arc::ptr_eq(&a.routes[0].stats, &b.routes[0].stats));
    }
}
