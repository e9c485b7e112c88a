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
    routing::pick::{self, How, Members, Miss, Split, View, Want},
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
        let rings = spec
            .routes
            .iter()
            .any(|r| r.affinity.as_ref().is_some_and(|a| a.sticky_backends));
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
                    Arc::new(Pool::bind(p, registry, &ov.addresses, rings)),
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
    let mut eff = override_split(r, wanted, pools, warnings);
    if eff.is_empty() {
        return file();
    }
    // A pool the route lets be forced stays reachable by force when an override leaves it
    // out (a shift to green=100 names no blue): it is kept at weight 0.
    for name in r.force_pool.iter().flat_map(|f| &f.pools) {
        if !eff.iter().any(|(p, _)| p.name == *name) {
            if let Some(p) = pools.get(name) {
                eff.push((p.clone(), 0));
            }
        }
    }
    eff
}

fn override_split(
    r: &RouteSpec,
    wanted: &BTreeMap<String, u32>,
    pools: &BTreeMap<Arc<str>, Arc<Pool>>,
    warnings: &mut Vec<String>,
) -> Vec<(Arc<Pool>, u32)> {
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
    /// The split as the pick sees it (names, weights, schedule).
    pub picker: Split,
    /// Pools that may be forced, with their index in `split` (absent: not in the effective
    /// split, a runtime override removed it).
    pub forced: Vec<(Arc<str>, usize)>,
    /// Request statistics (shared by every snapshot of this route).
    pub stats: Arc<RouteStats>,
}

/// A route's pools as the pick sees them, for a request that avoids `skip`.
struct Avoiding<'a, F> {
    route: &'a Route,
    skip: &'a F,
}

impl<F: Fn(&BackendState) -> bool> View for Avoiding<'_, F> {
    fn members(&self, pool: usize) -> &Members {
        &self.route.split[pool].0.members
    }
    fn usable(&self, pool: usize, backend: usize) -> bool {
        self.route.split[pool].0.takes(backend, self.skip)
    }
    fn admits(&self, pool: usize, backend: usize) -> bool {
        self.route.split[pool].0.admits(backend)
    }
}

impl Route {
    fn new(spec: Arc<RouteSpec>, split: Vec<(Arc<Pool>, u32)>, stats: Arc<RouteStats>) -> Route {
        let forced = spec.force_pool.as_ref().map_or_else(Vec::new, |f| {
            f.pools
                .iter()
                .filter_map(|name| {
                    let i = split.iter().position(|(p, _)| p.name == *name)?;
                    Some((name.clone(), i))
                })
                .collect()
        });
        Route {
            name: spec.name.clone(),
            picker: Split::new(split.iter().map(|(p, w)| (p.name.clone(), *w))),
            forced,
            spec,
            split,
            stats,
        }
    }

    fn view<'a, F: Fn(&BackendState) -> bool>(&'a self, skip: &'a F) -> Avoiding<'a, F> {
        Avoiding { route: self, skip }
    }

    /// The pool for a new request (no backend slot used: the backend is picked when it
    /// connects, [`Pool::pick_for`]).
    pub fn pick_pool(&self, want: &Want) -> Result<(&Arc<Pool>, How), Miss> {
        let (i, how) = pick::pool(&self.picker, &self.view(&|_| false), want)?;
        Ok((&self.split[i].0, how))
    }

    /// Pick a pool and a backend for a request that must avoid `skip` (a drain may have
    /// raced the first pick, or its backends failed). `None` only when the whole split has
    /// nothing for it.
    pub fn pick_avoiding(
        &self,
        want: &Want,
        skip: &impl Fn(&BackendState) -> bool,
    ) -> Option<(&Arc<Pool>, &Backend, How)> {
        let p = pick::pick(&self.picker, &self.view(skip), want).ok()?;
        let pool = &self.split[p.pool].0;
        Some((pool, &pool.backends[p.backend], p.how))
    }

    /// Whether a pool of the split with weight could take a request avoiding `skip` (no
    /// schedule slot used).
    pub fn can_take_avoiding(&self, want: &Want, skip: &impl Fn(&BackendState) -> bool) -> bool {
        pick::any_can_take(&self.picker, &self.view(skip), want)
    }

    /// The split index of the forced pool `name` names, if it may be forced.
    pub fn forced_index(&self, name: &[u8]) -> Option<usize> {
        self.forced
            .iter()
            .find(|(n, _)| n.as_bytes().eq_ignore_ascii_case(name))
            .map(|(_, i)| *i)
    }
}

/// A pool, bound: its backends with their registry states, and the pick's view of them.
#[derive(Debug)]
pub struct Pool {
    pub name: Arc<str>,
    pub spec: Arc<PoolSpec>,
    pub backends: Vec<Backend>,
    pub members: Members,
}

impl Pool {
    fn bind(spec: Arc<PoolSpec>, registry: &Registry, addresses: &Addresses, ring: bool) -> Pool {
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
        let members = Members::new(
            backends
                .iter()
                .map(|b| (b.spec.name.as_ref(), b.spec.weight)),
            ring,
        );
        Pool {
            name: spec.name.clone(),
            members,
            backends,
            spec,
        }
    }

    /// Whether any backend could take a new request now.
    pub fn has_available(&self) -> bool {
        self.backends.iter().any(Backend::usable)
    }

    /// Whether backend `i` can take a request that avoids `skip`.
    fn takes(&self, i: usize, skip: &impl Fn(&BackendState) -> bool) -> bool {
        let b = &self.backends[i];
        b.usable() && !skip(&b.state)
    }

    /// Whether slow start lets backend `i` take a request now (always, without slow start).
    fn admits(&self, i: usize) -> bool {
        self.spec
            .slow_start
            .is_none_or(|w| self.backends[i].state.slow_start_accept(w))
    }

    /// The backend for an attempt of a request routed here, skipping those `skip` names
    /// (backends it already failed on): by its sticky key's ring position, else by weight
    /// with slow start.
    pub fn pick_for(&self, want: &Want, skip: &impl Fn(&BackendState) -> bool) -> Option<&Backend> {
        let view = PoolView { pool: self, skip };
        pick::backend(&view, 0, want).map(|i| &self.backends[i])
    }
}

/// One pool as the pick sees it (pool index 0).
struct PoolView<'a, F> {
    pool: &'a Pool,
    skip: &'a F,
}

impl<F: Fn(&BackendState) -> bool> View for PoolView<'_, F> {
    fn members(&self, _: usize) -> &Members {
        &self.pool.members
    }
    fn usable(&self, _: usize, backend: usize) -> bool {
        self.pool.takes(backend, self.skip)
    }
    fn admits(&self, _: usize, backend: usize) -> bool {
        self.pool.admits(backend)
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
        assert_eq!(a.routes[0].picker.schedule().len(), 5);
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
