//! Heartbeats: what this proxy tells the fleet (its in-flight counts per backend, the
//! outcomes of routes being ramped, the revision it applied) and what it makes of the rows
//! of the others (lost past the TTL).

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use serde_json::Value;
use tokio::{sync::watch, time::Instant};

use super::store::{self, Beat, Store};
use crate::{
    api::InFlight,
    services::ramps,
    state::{fleet::Peer, AppState},
};

/// How often heartbeats are read (and written when something changed).
pub const BEAT: Duration = Duration::from_millis(250);
/// How often an unchanged heartbeat is written anyway.
const BEAT_IDLE: Duration = Duration::from_secs(1);
/// How often heartbeat rows silent for an hour are deleted.
const PRUNE: Duration = Duration::from_secs(60);

/// This process's heartbeat: written when something changed (or a second passed), and every
/// proxy's read. Runs in a task of its own once the shared state is loaded ([`Beater::run`]):
/// a stalled apply, a slow name lookup or a held lock in the fleet loop never stops it, so
/// the others keep seeing this proxy's work, and this proxy keeps seeing theirs.
pub struct Beater {
    state: Arc<AppState>,
    store: Store,
    node: String,
    ttl: Duration,
    /// Unique to this process start.
    instance: String,
    written: Option<(Instant, String)>,
    pruned: Option<Instant>,
}

impl Beater {
    pub fn new(
        state: Arc<AppState>,
        store: Store,
        node: String,
        ttl: Duration,
        instance: String,
    ) -> Beater {
        Beater {
            state,
            store,
            node,
            ttl,
            instance,
            written: None,
            pruned: None,
        }
    }

    /// Beat every [`BEAT`] while the shared state is loaded, until `stop`.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let mut failing = false;
        loop {
            if *stop.borrow() {
                return;
            }
            if self.state.fleet.is_loaded() {
                match self.beat().await {
                    Ok(()) if failing => {
                        failing = false;
                        tracing::info!("heartbeats written and read again");
                    }
                    Ok(()) => {}
                    Err(e) if !failing => {
                        failing = true;
                        tracing::warn!(error = %e, "heartbeat failed: the fleet's counts are not known here (nothing is answered drained) until it succeeds");
                    }
                    Err(_) => {}
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(BEAT) => {}
                _ = stop.changed() => return,
            }
        }
    }

    /// Write the heartbeat when something changed (or a second passed); read the fleet's.
    pub async fn beat(&mut self) -> Result<(), String> {
        let me = me(&self.state);
        let counts = serde_json::to_value(&me.counts).unwrap_or_default();
        let outcomes = serde_json::to_value(&me.outcomes).unwrap_or_default();
        let sig = format!("{} {counts} {outcomes}", me.rev);
        let fresh = self
            .written
            .as_ref()
            .is_some_and(|(at, s)| *s == sig && at.elapsed() < BEAT_IDLE);
        let beats = if fresh {
            self.store.peers().await?
        } else {
            let admin = self.state.admin_bound.to_string();
            let who = store::Me {
                node: &self.node,
                instance: &self.instance,
                admin: &admin,
                rev: me.rev,
                ttl: self.ttl,
            };
            let b = self.store.beat(&who, &counts, &outcomes).await?;
            if self.pruned.is_none_or(|at| at.elapsed() >= PRUNE) {
                // Forget proxies silent for an hour.
                self.store.prune().await?;
                self.pruned = Some(Instant::now());
            }
            self.written = Some((Instant::now(), sig));
            b
        };
        self.name_clash(&beats);
        let peers = peers(&self.state, beats, self.ttl, &self.instance);
        self.state.fleet.set_peers(peers);
        Ok(())
    }

    /// Another live process heartbeating under this node name from another admin address
    /// (not this proxy's own upgrade, which shares the address): both are counted, but an
    /// operator reading the fleet cannot tell them apart. Reported (health, log).
    fn name_clash(&self, beats: &[Beat]) {
        let admin = self.state.admin_bound.to_string();
        let other = beats
            .iter()
            .find(|b| {
                b.node == self.node
                    && b.instance != self.instance
                    && b.admin != admin
                    && b.age < self.ttl
            })
            .map(|b| b.admin.clone());
        if other.is_some() && self.state.fleet.name_taken().is_none() {
            tracing::error!(node = %self.node, other = ?other, "another proxy heartbeats under this node name: set control_store.node to a name of its own");
        }
        self.state.fleet.set_name_taken(other);
    }
}

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
        read_at: std::time::Instant::now(),
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
    let now = std::time::Instant::now();
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
