//! Request statistics, on the `prometheus` crate: per route × pool request counters (by
//! status class) and a duration histogram, per route retries and hold timeouts (metric
//! vectors the metrics edge registers in its own registry), the held-requests gauge (an
//! atomic: it also decides admission), and per pool stream ends.
//!
//! Handles are looked up once per route × pool when a table is bound and kept in the route,
//! so the hot path does one atomic add per counter and no label lookup. Counters survive
//! reloads (kept by name); a route's series go when the route leaves the config.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use super::spool::SpoolDepth;
use crate::routing::pick::How;
use prometheus::{Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts};

/// Upper bounds (seconds) of the request duration histogram buckets.
pub const BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Status classes counted: `1xx`..`5xx`, and `none` for requests that got no response.
pub const CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "none"];

/// Metric names of the vectors kept here (fixed by the product contract; README, Metrics).
pub mod names {
    pub const REQUESTS_TOTAL: &str = "tidegate_requests_total";
    pub const REQUEST_DURATION: &str = "tidegate_request_duration_seconds";
    pub const RETRIES: &str = "tidegate_retries_total";
    pub const HOLD_TIMEOUTS: &str = "tidegate_hold_timeouts_total";
    pub const SPOOL_REPLAYS: &str = "tidegate_spool_replays_total";
    pub const ROUTE_PICKS: &str = "tidegate_route_picks_total";
}

/// Counter handles of one route × pool.
#[derive(Debug)]
pub struct RoutePoolStats {
    requests: [IntCounter; 6],
    duration: Histogram,
}

impl RoutePoolStats {
    /// Record one finished request (`status` 0 = no response was sent).
    pub fn observe(&self, status: u16, elapsed: Duration) {
        let class = match status {
            100..=599 => (status / 100 - 1) as usize,
            _ => 5,
        };
        self.requests[class].inc();
        self.duration.observe(elapsed.as_secs_f64());
    }

    /// Requests by class, in [`CLASSES`] order.
    pub fn requests(&self) -> [u64; 6] {
        std::array::from_fn(|i| self.requests[i].get())
    }
}

/// Statistics of one route, attached to its table entry.
#[derive(Debug)]
pub struct RouteStats {
    pub retries: IntCounter,
    /// Requests held right now (no backend available); also the admission count.
    pub held: Arc<AtomicU64>,
    pub hold_timeouts: IntCounter,
    /// One entry per pool of the config (overrides may route to any of them).
    pub pools: Vec<(Arc<str>, Arc<RoutePoolStats>)>,
    /// The route's spool depth (kept by name, also while the route does not spool).
    pub spool: Arc<SpoolDepth>,
    /// Requests by how their pool was chosen, in `How::ALL` order.
    pub picks: [IntCounter; 4],
}

impl RouteStats {
    /// The stats of `pool` on this route.
    pub fn for_pool(&self, pool: &str) -> Option<&RoutePoolStats> {
        self.pools
            .iter()
            .find(|(p, _)| &**p == pool)
            .map(|(_, s)| &**s)
    }

    /// Requests held right now.
    pub fn held(&self) -> u64 {
        // Relaxed: a statistic read.
        self.held.load(Ordering::Relaxed)
    }
}

/// Why a stream ended, for `tidegate_streams_ended_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamEnd {
    Completed = 0,
    Client = 1,
    Upstream = 2,
    Deadline = 3,
}

impl StreamEnd {
    /// All reasons, in index order.
    pub const ALL: [StreamEnd; 4] = [
        StreamEnd::Completed,
        StreamEnd::Client,
        StreamEnd::Upstream,
        StreamEnd::Deadline,
    ];

    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            StreamEnd::Completed => "completed",
            StreamEnd::Client => "client",
            StreamEnd::Upstream => "upstream",
            StreamEnd::Deadline => "deadline",
        }
    }
}

/// Stream ends of one pool: kind × reason (`http` stays zero: plain requests are not
/// streams).
#[derive(Debug, Default)]
pub struct StreamEnds([[AtomicU64; 4]; crate::api::Kind::COUNT]);

impl StreamEnds {
    /// Count one end.
    pub fn record(&self, kind: crate::api::Kind, why: StreamEnd) {
        // Relaxed: statistics read only by the metrics scrape.
        self.0[kind.index()][why as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Count for one kind and reason.
    pub fn get(&self, kind: crate::api::Kind, why: StreamEnd) -> u64 {
        self.0[kind.index()][why as usize].load(Ordering::Relaxed)
    }
}

/// The metric vectors and the handles handed out, by name.
#[derive(Debug)]
pub struct Stats {
    pub requests: IntCounterVec,
    pub duration: HistogramVec,
    pub retries: IntCounterVec,
    pub hold_timeouts: IntCounterVec,
    /// Replay outcomes by route and result (`delivered`, `retry`, `dead`).
    pub spool_replays: IntCounterVec,
    /// Requests by route and how their pool was chosen.
    pub picks: IntCounterVec,
    handles: Mutex<Handles>,
}

#[derive(Debug, Default)]
struct Handles {
    route_pool: HashMap<(Arc<str>, Arc<str>), Arc<RoutePoolStats>>,
    held: HashMap<Arc<str>, Arc<AtomicU64>>,
    /// Never forgotten: items outlive their route in the store.
    spool: HashMap<Arc<str>, Arc<SpoolDepth>>,
}

impl Default for Stats {
    fn default() -> Self {
        // Static names and label sets: construction cannot fail.
        let counter = |name: &str, help: &str, labels: &[&str]| {
            IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric definition")
        };
        let duration = HistogramVec::new(
            HistogramOpts::new(
                names::REQUEST_DURATION,
                "Time from request arrival to the end of the response (streams: their whole life).",
            )
            .buckets(BUCKETS.to_vec()),
            &["route", "pool"],
        )
        .expect("valid metric definition");
        Self {
            requests: counter(
                names::REQUESTS_TOTAL,
                "Requests finished, by route, pool and status class (none = no response sent).",
                &["route", "pool", "code_class"],
            ),
            duration,
            retries: counter(
                names::RETRIES,
                "Retries on another backend after a connect failure or a dead connection, by route.",
                &["route"],
            ),
            hold_timeouts: counter(
                names::HOLD_TIMEOUTS,
                "Held requests answered 503 because hold.timeout ran out.",
                &["route"],
            ),
            spool_replays: counter(
                names::SPOOL_REPLAYS,
                "Replays of spooled requests, by route and result (delivered, retry, dead).",
                &["route", "result"],
            ),
            picks: counter(
                names::ROUTE_PICKS,
                "Requests by route and how their pool was chosen (split, affinity, redealt: \
                 their affinity pool could not take them, forced).",
                &["route", "how"],
            ),
            handles: Mutex::default(),
        }
    }
}

impl Stats {
    fn lock(&self) -> std::sync::MutexGuard<'_, Handles> {
        // Single inserts and retains cannot leave the maps inconsistent after a panic.
        self.handles.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The stats for `route` across `pools`, reusing counters of earlier tables.
    pub fn route(&self, route: &str, pools: &[Arc<str>]) -> RouteStats {
        let mut h = self.lock();
        let r: Arc<str> = route.into();
        let held = h.held.entry(r.clone()).or_default().clone();
        let pools = pools
            .iter()
            .map(|p| {
                let s = h
                    .route_pool
                    .entry((r.clone(), p.clone()))
                    .or_insert_with(|| {
                        Arc::new(RoutePoolStats {
                            requests: std::array::from_fn(|i| {
                                self.requests.with_label_values(&[route, &**p, CLASSES[i]])
                            }),
                            duration: self.duration.with_label_values(&[route, &**p]),
                        })
                    })
                    .clone();
                (p.clone(), s)
            })
            .collect();
        let spool = h.spool.entry(r.clone()).or_default().clone();
        RouteStats {
            spool,
            retries: self.retries.with_label_values(&[route]),
            held,
            hold_timeouts: self.hold_timeouts.with_label_values(&[route]),
            picks: How::ALL.map(|h| self.picks.with_label_values(&[route, h.as_str()])),
            pools,
        }
    }

    /// The spool depth of `route` (created on first use).
    pub fn spool_depth(&self, route: &str) -> Arc<SpoolDepth> {
        self.lock().spool.entry(route.into()).or_default().clone()
    }

    /// Every route's spool depth known to this process, by name.
    pub fn spool_depths(&self) -> Vec<(Arc<str>, Arc<SpoolDepth>)> {
        let mut v: Vec<_> = self
            .lock()
            .spool
            .iter()
            .map(|(k, d)| (k.clone(), d.clone()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Forget statistics (and their series) of route × pool pairs no longer in the table.
    pub fn retain(&self, live: &HashSet<(Arc<str>, Arc<str>)>) {
        let mut h = self.lock();
        let gone: Vec<(Arc<str>, Arc<str>)> = h
            .route_pool
            .keys()
            .filter(|k| !live.contains(*k))
            .cloned()
            .collect();
        for (r, p) in &gone {
            h.route_pool.remove(&(r.clone(), p.clone()));
            for c in CLASSES {
                let _ = self.requests.remove_label_values(&[&**r, &**p, c]);
            }
            let _ = self.duration.remove_label_values(&[&**r, &**p]);
        }
        let routes: HashSet<Arc<str>> = live.iter().map(|(r, _)| r.clone()).collect();
        let gone_routes: Vec<Arc<str>> = h
            .held
            .keys()
            .filter(|r| !routes.contains(*r))
            .cloned()
            .collect();
        for r in gone_routes {
            h.held.remove(&r);
            let _ = self.retries.remove_label_values(&[&*r]);
            let _ = self.hold_timeouts.remove_label_values(&[&*r]);
        }
    }
}
