//! Request statistics for metrics: per route × pool counters and a duration histogram, per
//! route retries, per pool stream ends. Kept in the registry by name, so they survive
//! reloads; attached to each route snapshot, so the hot path only does atomic adds.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

/// Upper bounds (seconds) of the request duration histogram buckets.
pub const BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Status classes counted: `1xx`..`5xx`, and `none` for requests that got no response.
pub const CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "none"];

/// Counters of one route × pool.
#[derive(Debug, Default)]
pub struct RoutePoolStats {
    requests: [AtomicU64; 6],
    buckets: [AtomicU64; 12],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl RoutePoolStats {
    /// Record one finished request (`status` 0 = no response was sent).
    pub fn observe(&self, status: u16, elapsed: Duration) {
        let class = match status {
            100..=599 => (status / 100 - 1) as usize,
            _ => 5,
        };
        // Relaxed: independent counters read only by the metrics scrape.
        self.requests[class].fetch_add(1, Ordering::Relaxed);
        let secs = elapsed.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
    }

    /// Requests by class, in [`CLASSES`] order.
    pub fn requests(&self) -> [u64; 6] {
        std::array::from_fn(|i| self.requests[i].load(Ordering::Relaxed))
    }

    /// Cumulative bucket counts (Prometheus `le` semantics), count, and sum in seconds.
    pub fn histogram(&self) -> ([u64; 12], u64, f64) {
        let mut cum = [0u64; 12];
        let mut acc = 0;
        for (i, b) in self.buckets.iter().enumerate() {
            acc += b.load(Ordering::Relaxed);
            cum[i] = acc;
        }
        let count = self.count.load(Ordering::Relaxed);
        (
            cum,
            count,
            self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6,
        )
    }
}

/// Statistics of one route, attached to its snapshot.
#[derive(Debug)]
pub struct RouteStats {
    pub retries: Arc<AtomicU64>,
    /// Requests held right now (no backend available).
    pub held: Arc<AtomicU64>,
    pub hold_timeouts: Arc<AtomicU64>,
    /// One entry per pool of the config (overrides may route to any of them).
    pub pools: Vec<(Arc<str>, Arc<RoutePoolStats>)>,
}

impl RouteStats {
    /// The stats of `pool` on this route.
    pub fn for_pool(&self, pool: &str) -> Option<&RoutePoolStats> {
        self.pools
            .iter()
            .find(|(p, _)| &**p == pool)
            .map(|(_, s)| &**s)
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

/// Stream ends of one pool: [sse, websocket] × reason.
#[derive(Debug, Default)]
pub struct StreamEnds([[AtomicU64; 4]; 2]);

impl StreamEnds {
    /// Count one end (`websocket` false = SSE).
    pub fn record(&self, websocket: bool, why: StreamEnd) {
        self.0[usize::from(websocket)][why as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Count for one kind and reason.
    pub fn get(&self, websocket: bool, why: StreamEnd) -> u64 {
        self.0[usize::from(websocket)][why as usize].load(Ordering::Relaxed)
    }
}

/// Stats by name, surviving reloads.
#[derive(Debug, Default)]
pub struct StatsMaps {
    route_pool: HashMap<(Arc<str>, Arc<str>), Arc<RoutePoolStats>>,
    retries: HashMap<Arc<str>, Arc<AtomicU64>>,
    held: HashMap<Arc<str>, Arc<AtomicU64>>,
    hold_timeouts: HashMap<Arc<str>, Arc<AtomicU64>>,
}

impl StatsMaps {
    /// The stats for `route` across `pools`, reusing counters of earlier configs.
    pub fn route(&mut self, route: &str, pools: &[Arc<str>]) -> RouteStats {
        let r: Arc<str> = route.into();
        let retries = self.retries.entry(r.clone()).or_default().clone();
        let held = self.held.entry(r.clone()).or_default().clone();
        let hold_timeouts = self.hold_timeouts.entry(r.clone()).or_default().clone();
        let pools = pools
            .iter()
            .map(|p| {
                (
                    p.clone(),
                    self.route_pool
                        .entry((r.clone(), p.clone()))
                        .or_default()
                        .clone(),
                )
            })
            .collect();
        RouteStats {
            retries,
            held,
            hold_timeouts,
            pools,
        }
    }
}
