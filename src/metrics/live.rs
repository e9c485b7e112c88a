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

use super::names;
use crate::{
    drain::machine::Phase,
    state::{backend::BackendState, counts::Kind, stats::StreamEnd, AppState},
};

/// What the collector renders, with its help text, type and labels.
const FAMILIES: [(&str, &str, MetricType, &[&str]); 16] = [
    (
        names::BACKEND_IN_FLIGHT,
        "Requests and streams in flight per backend, by kind.",
        MetricType::GAUGE,
        &["pool", "backend", "kind"],
    ),
    (
        names::BACKEND_STATE,
        "1 for the backend's current state (active, draining, drained, unhealthy, removed).",
        MetricType::GAUGE,
        &["pool", "backend", "state"],
    ),
    (
        names::BACKEND_WEIGHT,
        "Configured weight of the backend in its pool.",
        MetricType::GAUGE,
        &["pool", "backend"],
    ),
    (
        names::BACKEND_HEALTHY,
        "1 when the backend passes its health checks and its connects succeed.",
        MetricType::GAUGE,
        &["pool", "backend"],
    ),
    (
        names::CONNECT_FAILURES,
        "Failed connection attempts to the backend (requests and probes).",
        MetricType::COUNTER,
        &["pool", "backend"],
    ),
    (
        names::STREAMS_ENDED,
        "SSE and WebSocket streams ended, by pool, kind and reason.",
        MetricType::COUNTER,
        &["pool", "kind", "reason"],
    ),
    (
        names::ROUTE_SPLIT_WEIGHT,
        "Effective split weight of a pool in a route (after overrides).",
        MetricType::GAUGE,
        &["route", "pool"],
    ),
    (
        names::HELD,
        "Requests held right now because no backend of the route is available.",
        MetricType::GAUGE,
        &["route"],
    ),
    (
        names::RELOADS,
        "Config reloads by result.",
        MetricType::COUNTER,
        &["result"],
    ),
    (
        names::GENERATION,
        "Generation of the config in force (1 at start, +1 per successful reload).",
        MetricType::GAUGE,
        &[],
    ),
    (
        names::LAST_RELOAD_SUCCESS,
        "Unix time of the last successful config load (start or reload).",
        MetricType::GAUGE,
        &[],
    ),
    (
        names::SHUTTING_DOWN,
        "1 once shutdown has begun.",
        MetricType::GAUGE,
        &[],
    ),
    (
        names::BUILD_INFO,
        "Build information.",
        MetricType::GAUGE,
        &["version"],
    ),
    (
        names::SPOOL_ITEMS,
        "Spooled requests by route and state (pending, dead).",
        MetricType::GAUGE,
        &["route", "state"],
    ),
    (
        names::SPOOL_OLDEST_AGE,
        "Age of the oldest pending spooled request, by route (0 when none is pending).",
        MetricType::GAUGE,
        &["route"],
    ),
    (
        names::ACCESS_LOG_LINES,
        "Access log lines written, and dropped because the destination could not keep up.",
        MetricType::COUNTER,
        &["result"],
    ),
];

const STATES: [&str; 5] = ["active", "draining", "drained", "unhealthy", "removed"];

/// The collector. Holds the state weakly: the registry must not keep it alive.
pub struct Live {
    state: Weak<AppState>,
    descs: Vec<Desc>,
}

impl Live {
    pub fn new(state: &Arc<AppState>) -> Live {
        let descs = FAMILIES
            .iter()
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

/// Families being filled, in [`FAMILIES`] order.
struct Out(Vec<MetricFamily>);

impl Out {
    fn new() -> Out {
        Out(FAMILIES
            .iter()
            .map(|(name, help, kind, _)| {
                let mut mf = MetricFamily::default();
                mf.set_name(name.to_string());
                mf.set_help(help.to_string());
                mf.set_field_type(*kind);
                mf
            })
            .collect())
    }

    /// One sample of family `i`; label values in the family's label order.
    fn push(&mut self, i: usize, values: &[&str], v: f64) {
        let (_, _, kind, labels) = FAMILIES[i];
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
        out.0
    }
}

/// One backend's series (`weight` only for configured ones).
fn backend(out: &mut Out, b: &BackendState, weight: Option<u32>, label: &str) {
    let (p, n) = (&*b.pool.name, &*b.name);
    for k in Kind::ALL {
        out.push(0, &[p, n, k.as_str()], b.counts.get(k) as f64);
    }
    for s in STATES {
        out.push(1, &[p, n, s], f64::from(u8::from(label == s)));
    }
    if let Some(w) = weight {
        out.push(2, &[p, n], f64::from(w));
    }
    out.push(3, &[p, n], f64::from(u8::from(b.healthy())));
    out.push(4, &[p, n], b.connect_failures() as f64);
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
        for (ws, kind) in [(false, "sse"), (true, "websocket")] {
            for why in StreamEnd::ALL {
                let v = p.streams_ended.get(ws, why) as f64;
                out.push(5, &[&p.name, kind, why.as_str()], v);
            }
        }
    }
}

fn routes(state: &AppState, out: &mut Out) {
    let table = state.table();
    for r in &table.routes {
        for (p, w) in &r.split {
            out.push(6, &[&r.name, &p.name], f64::from(*w));
        }
        out.push(7, &[&r.name], r.stats.held() as f64);
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
        out.push(13, &[&name, "pending"], d.pending() as f64);
        out.push(13, &[&name, "dead"], d.dead() as f64);
        let age = d
            .oldest_ms()
            .filter(|_| d.pending() > 0)
            .map_or(0.0, |ms| (now - ms as f64 / 1000.0).max(0.0));
        out.push(14, &[&name], age);
    }
}

fn process(state: &AppState, out: &mut Out) {
    let reloads = state.process.reloads();
    out.push(8, &["success"], reloads.succeeded as f64);
    out.push(8, &["failure"], reloads.failed as f64);
    out.push(9, &[], state.table().generation as f64);
    let last = reloads
        .last_success_unix
        .unwrap_or(state.process.started_unix);
    out.push(10, &[], last);
    out.push(11, &[], f64::from(u8::from(state.is_shutting_down())));
    out.push(12, &[env!("CARGO_PKG_VERSION")], 1.0);
    let (written, dropped) = state.access_log.counts();
    out.push(15, &["written"], written as f64);
    out.push(15, &["dropped"], dropped as f64);
}
