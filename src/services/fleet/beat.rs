//! Heartbeats: what this proxy tells the fleet (its in-flight counts per backend, the
//! outcomes of routes being ramped, the revision it applied) and what it makes of the rows
//! of the others (lost past the TTL).

use std::{collections::BTreeMap, time::Instant};

use serde_json::Value;

use super::store::Beat;
use crate::{
    api::InFlight,
    services::ramps,
    state::{fleet::Peer, AppState},
};

/// In flight by backend id, backends with nothing in flight left out.
pub fn counts(state: &AppState) -> BTreeMap<String, InFlight> {
    state
        .registry
        .all()
        .iter()
        .filter(|b| b.in_flight() > 0)
        .map(|b| (b.id.to_string(), b.counts.snapshot()))
        .collect()
}

/// Requests and failures by route → pool, for the routes whose ramp runs and is judged.
pub fn outcomes(state: &AppState) -> BTreeMap<String, BTreeMap<String, (u64, u64)>> {
    let mut out = BTreeMap::new();
    for (route, r) in state.ramps.all() {
        if !r.is_running() || r.max_error_rate.is_none() {
            continue;
        }
        let pools = ramps::gaining(&r.from, &r.to);
        let by_pool = pools
            .iter()
            .map(|p| {
                (
                    p.clone(),
                    ramps::counters(state, &route, std::slice::from_ref(p)),
                )
            })
            .collect();
        out.insert(route, by_pool);
    }
    out
}

/// This proxy as a peer, from its live counts.
pub fn me(state: &AppState) -> Peer {
    let table = state.table();
    Peer {
        node: state.fleet.node().to_string(),
        admin: table.spec.admin.addr.to_string(),
        age: Default::default(),
        read_at: Instant::now(),
        rev: state.fleet.rev(),
        counts: counts(state),
        outcomes: outcomes(state),
        lost: false,
        me: true,
    }
}

/// The fleet from the heartbeat rows: this proxy from its live state, the others as read.
pub fn peers(
    state: &AppState,
    beats: Vec<Beat>,
    ttl: std::time::Duration,
    instance: &str,
) -> Vec<Peer> {
    let now = Instant::now();
    let mine = state.fleet.node();
    let mut v = vec![me(state)];
    for b in beats
        .into_iter()
        .filter(|b| b.node != mine || b.instance != instance)
    {
        v.push(Peer {
            lost: b.age > ttl,
            node: b.node,
            admin: b.admin,
            age: b.age,
            read_at: now,
            rev: b.rev,
            counts: from_json(b.counts),
            outcomes: from_json(b.outcomes),
            me: false,
        });
    }
    v.sort_by(|a, b| a.node.cmp(&b.node));
    v
}

fn from_json<T: serde::de::DeserializeOwned + Default>(v: Value) -> T {
    serde_json::from_value(v).unwrap_or_default()
}

/// The fleet's requests and failures to `pools` of `route`: live proxies only (this one
/// from its live counters).
pub fn fleet_outcomes(state: &AppState, route: &str, pools: &[String]) -> (u64, u64) {
    let mut sum = ramps::counters(state, route, pools);
    for p in state
        .fleet
        .peers()
        .iter()
        .filter(|p| !p.me && !state.fleet.is_lost(p))
    {
        if let Some(by_pool) = p.outcomes.get(route) {
            for pool in pools {
                let (t, f) = by_pool.get(pool).copied().unwrap_or_default();
                sum.0 = sum.0.saturating_add(t);
                sum.1 = sum.1.saturating_add(f);
            }
        }
    }
    sum
}
