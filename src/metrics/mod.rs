//! `/metrics`: the `prometheus` crate with a registry the proxy owns (never the global
//! default one). It holds the request counters and histogram of `state::stats` (handles
//! cached per route × pool when a table is bound), a collector that renders the gauges and
//! counters of live state at scrape time ([`live`]: series of a removed backend disappear
//! once it is idle), and the crate's process collector. Labels are bounded (route, pool,
//! backend, kind, state, class, reason, result): never a path or a client address.

mod families;
mod live;

use std::sync::Arc;

use prometheus::{Encoder, Registry, TextEncoder};

use crate::state::AppState;

pub mod names;

/// The proxy's metrics registry.
pub struct Metrics {
    registry: Registry,
}

impl Metrics {
    /// A registry with tidegate's metrics for `state`, plus process metrics.
    pub fn new(state: &Arc<AppState>) -> Metrics {
        let registry = Registry::new();
        let stats = &state.stats;
        let collectors: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(stats.requests.clone()),
            Box::new(stats.duration.clone()),
            Box::new(stats.retries.clone()),
            Box::new(stats.hold_timeouts.clone()),
            Box::new(stats.spool_replays.clone()),
            Box::new(stats.picks.clone()),
            Box::new(live::Live::new(state)),
            Box::new(prometheus::process_collector::ProcessCollector::for_self()),
        ];
        for c in collectors {
            if let Err(e) = registry.register(c) {
                // Fixed definitions: a conflict is a bug, logged rather than fatal.
                tracing::error!(error = %e, "cannot register a metrics collector");
            }
        }
        Metrics { registry }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let families = self.registry.gather();
        let mut out = Vec::with_capacity(64 * 1024);
        if let Err(e) = TextEncoder::new().encode(&families, &mut out) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}
