//! A collector over live state, read at scrape time: backends (in flight by kind, state,
//! weight, health, connect failures), pools (stream ends), routes (effective split weights,
//! held requests, spool depth and age) and the process (reloads, generation, shutdown, build,
//! access log lines). Removed backends
//! are listed while busy and vanish once idle, with no series left behind.

use std::sync::{Arc, Weak};

use prometheus::{
    core::{Collector, Desc},
    proto::{Counter, Gauge, LabelPair, Metric, MetricFamily, MetricType},
};

use super::families::Family;
use crate::{
    drain::machine::Phase,
    state::{backend::BackendState, counts::Kind, stats::StreamEnd, AppState},
};

const STATES: [&str; 5] = ["active", "draining", "drained", "unhealthy", "removed"];

/// The collector. Holds the state weakly: the registry must not keep it alive.
pub struct Live {
    state: Weak<AppState>,
    descs: Vec<Desc>,
}

impl Live {
    pub fn new(state: &Arc<AppState>) -> Live {
        let descs = Family::ALL
            .iter()
            .map(|f| f.spec())
            .filter_map(|(name, help, _, labels)| {
                let labels = labels.iter().map(|l| l.to_string()).collect();
                Desc::new(
                    name.to_string(),
                    help.to_string(),
                    labels,
                    Default::default(),
                )
                .ok()
            })
            .collect();
        Live {
            state: Arc::downgrade(state),
            descs,
        }
    }
}

/// Families being filled, in [`Family::ALL`] order.
struct Out(Vec<MetricFamily>);

impl Out {
    fn new() -> Out {
        Out(Family::ALL
            .iter()
            .map(|f| f.spec())
            .map(|(name, help, kind, _)| {
                let mut mf = MetricFamily::default();
                mf.set_name(name.to_string());
                mf.set_help(help.to_string());
                mf.set_field_type(kind);
                mf
            })
            .collect())
    }

    /// One sample of family `f`; label values in the family's label order.
    fn push(&mut self, f: Family, values: &[&str], v: f64) {
        let (_, _, kind, labels) = f.spec();
        let i = f as usize;
        let pairs = labels
            .iter()
            .zip(values)
            .map(|(k, v)| {
                let mut p = LabelPair::default();
                p.set_name(k.to_string());
                p.set_value(v.to_string());
                p
            })
            .collect();
        let mut m = Metric::from_label(pairs);
        if kind == MetricType::COUNTER {
            let mut c = Counter::default();
            c.set_value(v);
            m.set_counter(c);
        } else {
            let mut g = Gauge::default();
            g.set_value(v);
            m.set_gauge(g);
        }
        self.0[i].mut_metric().push(m);
    }
}

impl Collector for Live {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let Some(state) = self.state.upgrade() else {
            return Vec::new();
        };
        let mut out = Out::new();
        backends(&state, &mut out);
        routes(&state, &mut out);
        process(&state, &mut out);
        certificates(&state, &mut out);
        fleet(&state, &mut out);
        out.0
    }
}

/// One backend's series (`weight` only for configured ones).
fn backend(out: &mut Out, b: &BackendState, weight: Option<u32>, label: &str) {
    let (p, n) = (&*b.pool.name, &*b.name);
    for k in Kind::ALL {
        out.push(
            Family::BackendInFlight,
            &[p, n, k.as_str()],
            b.counts.get(k) as f64,
        );
    }
    for s in STATES {
        out.push(
            Family::BackendState,
            &[p, n, s],
            f64::from(u8::from(label == s)),
        );
    }
    if let Some(w) = weight {
        out.push(Family::BackendWeight, &[p, n], f64::from(w));
    }
    out.push(
        Family::BackendHealthy,
        &[p, n],
        f64::from(u8::from(b.healthy())),
    );
    out.push(
        Family::ConnectFailures,
        &[p, n],
        b.connect_failures() as f64,
    );
}

fn backends(state: &AppState, out: &mut Out) {
    let table = state.table();
    for (_, b) in table.backends() {
        let st = b.state.drain.phase().max_with(b.state.pool.drain.phase());
        let label = if !b.state.healthy() && st == Phase::Active {
            "unhealthy"
        } else {
            st.as_str()
        };
        backend(out, &b.state, Some(b.spec.weight), label);
    }
    for b in state.registry.all() {
        let configured = table
            .pools
            .get(&*b.pool.name)
            .is_some_and(|p| p.backends.iter().any(|x| x.id == b.id));
        if !configured && b.in_flight() > 0 {
            backend(out, &b, None, "removed");
        }
    }
    for p in state.registry.pools() {
        for kind in Kind::STREAMS {
            for why in StreamEnd::ALL {
                let v = p.streams_ended.get(kind, why) as f64;
                out.push(
                    Family::StreamsEnded,
                    &[&p.name, kind.as_str(), why.as_str()],
                    v,
                );
            }
        }
    }
}

fn routes(state: &AppState, out: &mut Out) {
    let table = state.table();
    for r in &table.routes {
        for (p, w) in &r.split {
            out.push(Family::RouteSplitWeight, &[&r.name, &p.name], f64::from(*w));
        }
        out.push(Family::Held, &[&r.name], r.stats.held() as f64);
    }
    let now = crate::state::process::unix_now();
    for (name, d) in state.stats.spool_depths() {
        let spools = table
            .routes
            .iter()
            .any(|r| r.name == name && r.spec.spool.is_some());
        if !spools && d.pending() + d.dead() == 0 {
            continue;
        }
        out.push(Family::SpoolItems, &[&name, "pending"], d.pending() as f64);
        out.push(Family::SpoolItems, &[&name, "dead"], d.dead() as f64);
        let age = d
            .oldest_ms()
            .filter(|_| d.pending() > 0)
            .map_or(0.0, |ms| (now - ms as f64 / 1000.0).max(0.0));
        out.push(Family::SpoolOldestAge, &[&name], age);
    }
}

fn process(state: &AppState, out: &mut Out) {
    let reloads = state.process.reloads();
    out.push(Family::Reloads, &["success"], reloads.succeeded as f64);
    out.push(Family::Reloads, &["failure"], reloads.failed as f64);
    out.push(Family::Generation, &[], state.table().generation as f64);
    let last = reloads
        .last_success_unix
        .unwrap_or(state.process.started_unix);
    out.push(Family::LastReloadSuccess, &[], last);
    out.push(
        Family::ShuttingDown,
        &[],
        f64::from(u8::from(state.is_shutting_down())),
    );
    out.push(Family::BuildInfo, &[env!("CARGO_PKG_VERSION")], 1.0);
    let (written, dropped) = state.access_log.counts();
    out.push(Family::AccessLogLines, &["written"], written as f64);
    out.push(Family::AccessLogLines, &["dropped"], dropped as f64);
}

/// With a control store only: whether it answers, the revision, the proxies by state.
fn fleet(state: &AppState, out: &mut Out) {
    if !state.fleet.enabled() {
        return;
    }
    // Heartbeats not read within the TTL count as down too (the others' counts are not
    // known), whichever task noticed first.
    let stale = state.fleet.is_loaded() && state.fleet.is_stale();
    let up = state.fleet.down().is_none() && !stale;
    out.push(Family::ControlStoreUp, &[], f64::from(u8::from(up)));
    out.push(Family::ControlRevision, &[], state.fleet.rev() as f64);
    let peers = state.fleet.peers();
    let lost = peers.iter().filter(|p| state.fleet.is_lost(p)).count();
    out.push(Family::FleetProxies, &["live"], (peers.len() - lost) as f64);
    out.push(Family::FleetProxies, &["lost"], lost as f64);
}

fn certificates(state: &AppState, out: &mut Out) {
    for e in state.acme.entries() {
        let (l, n) = (&*e.listener, &*e.names);
        out.push(Family::AcmeOrders, &[l, n, "ok"], e.orders_ok as f64);
        out.push(Family::AcmeOrders, &[l, n, "error"], e.orders_failed as f64);
    }
    for l in state.certs.all() {
        for c in &l.current().certs {
            let i = &c.info;
            let labels = [
                &*l.listener,
                &i.names.join(","),
                &i.issuer,
                c.source.as_str(),
            ];
            out.push(Family::TlsCertExpiry, &labels, i.not_after as f64);
        }
        let (ok, failed) = l
            .status()
            .iter()
            .take(l.pairs.len())
            .fold((0, 0), |(o, f), s| (o + s.reloads_ok, f + s.reloads_failed));
        out.push(Family::TlsCertReloads, &[&l.listener, "ok"], ok as f64);
        out.push(
            Family::TlsCertReloads,
            &[&l.listener, "error"],
            failed as f64,
        );
    }
}
