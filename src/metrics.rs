//! Prometheus text exposition, rendered from live state at scrape time (no global registry):
//! series of a removed backend disappear once it is idle. Labels are bounded (route, pool,
//! backend, kind, state, class, reason, result): never a path or a client address.

use std::fmt::Write;

use crate::{
    config::RuntimeConfig,
    drain::machine::Phase,
    state::{
        stats::{self, RouteStats},
        tracking::Kind,
        AppState,
    },
};

/// Metric names, fixed by DESIGN.md.
pub mod names {
    pub const BACKEND_IN_FLIGHT: &str = "tidegate_backend_in_flight";
    pub const BACKEND_STATE: &str = "tidegate_backend_state";
    pub const BACKEND_WEIGHT: &str = "tidegate_backend_weight";
    pub const BACKEND_HEALTHY: &str = "tidegate_backend_healthy";
    pub const ROUTE_SPLIT_WEIGHT: &str = "tidegate_route_split_weight";
    pub const REQUESTS_TOTAL: &str = "tidegate_requests_total";
    pub const REQUEST_DURATION: &str = "tidegate_request_duration_seconds";
    pub const CONNECT_FAILURES: &str = "tidegate_upstream_connect_failures_total";
    pub const RETRIES: &str = "tidegate_retries_total";
    pub const HELD: &str = "tidegate_held_requests";
    pub const HOLD_TIMEOUTS: &str = "tidegate_hold_timeouts_total";
    pub const STREAMS_ENDED: &str = "tidegate_streams_ended_total";
    pub const RELOADS: &str = "tidegate_config_reloads_total";
    pub const GENERATION: &str = "tidegate_config_generation";
    pub const LAST_RELOAD_SUCCESS: &str = "tidegate_config_last_reload_success_timestamp_seconds";
    pub const SHUTTING_DOWN: &str = "tidegate_shutting_down";
    pub const BUILD_INFO: &str = "tidegate_build_info";
}

/// Escape a label value (backslash, double quote, newline).
fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    // Writing to a String cannot fail.
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// Render every metric.
pub fn render(state: &AppState) -> String {
    let mut out = String::with_capacity(16 * 1024);
    backends(state, &mut out);
    routes(state, &mut out);
    holds(state, &mut out);
    process(state, &mut out);
    out
}

fn backends(state: &AppState, out: &mut String) {
    let cfg = state.config();
    // (pool, backend, weight, state) for configured backends, then removed-but-busy ones.
    let mut rows = Vec::new();
    for p in cfg.pools.values() {
        for b in &p.backends {
            let st = b.state.drain.phase().max_with(b.state.pool.drain.phase());
            let label = if !b.state.healthy() && st == Phase::Active {
                "unhealthy"
            } else {
                st.as_str()
            };
            rows.push((b.state.clone(), Some(b.weight), label));
        }
    }
    for b in state.registry.all() {
        let configured = cfg
            .pools
            .get(&*b.pool.name)
            .is_some_and(|p| p.backends.iter().any(|x| x.id == b.id));
        if !configured && b.in_flight() > 0 {
            rows.push((b, None, "removed"));
        }
    }
    header(
        out,
        names::BACKEND_IN_FLIGHT,
        "gauge",
        "Requests and streams in flight per backend, by kind.",
    );
    for (b, _, _) in &rows {
        for k in Kind::ALL {
            let _ = writeln!(
                out,
                "{}{{pool=\"{}\",backend=\"{}\",kind=\"{}\"}} {}",
                names::BACKEND_IN_FLIGHT,
                esc(&b.pool.name),
                esc(&b.name),
                k.as_str(),
                b.counts.get(k)
            );
        }
    }
    header(
        out,
        names::BACKEND_STATE,
        "gauge",
        "1 for the backend's current state (active, draining, drained, unhealthy, removed).",
    );
    for (b, _, st) in &rows {
        for s in ["active", "draining", "drained", "unhealthy", "removed"] {
            let _ = writeln!(
                out,
                "{}{{pool=\"{}\",backend=\"{}\",state=\"{s}\"}} {}",
                names::BACKEND_STATE,
                esc(&b.pool.name),
                esc(&b.name),
                u8::from(*st == s)
            );
        }
    }
    header(
        out,
        names::BACKEND_WEIGHT,
        "gauge",
        "Configured weight of the backend in its pool.",
    );
    for (b, w, _) in &rows {
        if let Some(w) = w {
            let _ = writeln!(
                out,
                "{}{{pool=\"{}\",backend=\"{}\"}} {w}",
                names::BACKEND_WEIGHT,
                esc(&b.pool.name),
                esc(&b.name)
            );
        }
    }
    header(
        out,
        names::BACKEND_HEALTHY,
        "gauge",
        "1 when the backend passes its health checks.",
    );
    for (b, _, _) in &rows {
        let _ = writeln!(
            out,
            "{}{{pool=\"{}\",backend=\"{}\"}} {}",
            names::BACKEND_HEALTHY,
            esc(&b.pool.name),
            esc(&b.name),
            u8::from(b.healthy())
        );
    }
    header(
        out,
        names::CONNECT_FAILURES,
        "counter",
        "Failed connection attempts to the backend.",
    );
    for (b, _, _) in &rows {
        let _ = writeln!(
            out,
            "{}{{pool=\"{}\",backend=\"{}\"}} {}",
            names::CONNECT_FAILURES,
            esc(&b.pool.name),
            esc(&b.name),
            b.connect_failures()
        );
    }
    header(
        out,
        names::STREAMS_ENDED,
        "counter",
        "SSE and WebSocket streams ended, by pool, kind and reason.",
    );
    for p in state.registry.pools() {
        for (ws, kind) in [(false, "sse"), (true, "websocket")] {
            for why in stats::StreamEnd::ALL {
                let _ = writeln!(
                    out,
                    "{}{{pool=\"{}\",kind=\"{kind}\",reason=\"{}\"}} {}",
                    names::STREAMS_ENDED,
                    esc(&p.name),
                    why.as_str(),
                    p.streams_ended.get(ws, why)
                );
            }
        }
    }
}

fn routes(state: &AppState, out: &mut String) {
    let cfg = state.config();
    header(
        out,
        names::ROUTE_SPLIT_WEIGHT,
        "gauge",
        "Effective split weight of a pool in a route (after overrides).",
    );
    for r in &cfg.routes {
        for (p, w) in &r.split {
            let _ = writeln!(
                out,
                "{}{{route=\"{}\",pool=\"{}\"}} {w}",
                names::ROUTE_SPLIT_WEIGHT,
                esc(&r.name),
                esc(&p.name)
            );
        }
    }
    header(
        out,
        names::REQUESTS_TOTAL,
        "counter",
        "Requests finished, by route, pool and status class (none = no response sent).",
    );
    for r in &cfg.routes {
        for (p, s) in &r.stats.pools {
            for (class, n) in stats::CLASSES.iter().zip(s.requests()) {
                let _ = writeln!(
                    out,
                    "{}{{route=\"{}\",pool=\"{}\",code_class=\"{class}\"}} {n}",
                    names::REQUESTS_TOTAL,
                    esc(&r.name),
                    esc(p)
                );
            }
        }
    }
    header(
        out,
        names::REQUEST_DURATION,
        "histogram",
        "Time from request arrival to the end of the response (streams: their whole life).",
    );
    for r in &cfg.routes {
        for (p, s) in &r.stats.pools {
            let (cum, count, sum) = s.histogram();
            let labels = format!("route=\"{}\",pool=\"{}\"", esc(&r.name), esc(p));
            for (le, n) in stats::BUCKETS.iter().zip(cum) {
                let _ = writeln!(
                    out,
                    "{}_bucket{{{labels},le=\"{le}\"}} {n}",
                    names::REQUEST_DURATION
                );
            }
            let _ = writeln!(
                out,
                "{}_bucket{{{labels},le=\"+Inf\"}} {count}",
                names::REQUEST_DURATION
            );
            let _ = writeln!(out, "{}_sum{{{labels}}} {sum}", names::REQUEST_DURATION);
            let _ = writeln!(out, "{}_count{{{labels}}} {count}", names::REQUEST_DURATION);
        }
    }
    per_route(
        out,
        &cfg,
        names::RETRIES,
        "counter",
        "Retries on another backend after a connect failure, by route.",
        |s| &s.retries,
    );
}

fn holds(state: &AppState, out: &mut String) {
    let cfg = state.config();
    per_route(
        out,
        &cfg,
        names::HELD,
        "gauge",
        "Requests held right now because no backend of the route is available.",
        |s| &s.held,
    );
    per_route(
        out,
        &cfg,
        names::HOLD_TIMEOUTS,
        "counter",
        "Held requests answered 503 because hold.timeout ran out.",
        |s| &s.hold_timeouts,
    );
}

/// One sample per route of a route-level statistic.
fn per_route(
    out: &mut String,
    cfg: &RuntimeConfig,
    name: &str,
    kind: &str,
    help: &str,
    value: impl Fn(&RouteStats) -> &std::sync::atomic::AtomicU64,
) {
    header(out, name, kind, help);
    for r in &cfg.routes {
        // Relaxed: statistics.
        let v = value(&r.stats).load(std::sync::atomic::Ordering::Relaxed);
        let _ = writeln!(out, "{name}{{route=\"{}\"}} {v}", esc(&r.name));
    }
}

fn process(state: &AppState, out: &mut String) {
    let cfg = state.config();
    let reloads = state.reload_stats();
    header(out, names::RELOADS, "counter", "Config reloads by result.");
    let _ = writeln!(
        out,
        "{}{{result=\"success\"}} {}",
        names::RELOADS,
        reloads.succeeded
    );
    let _ = writeln!(
        out,
        "{}{{result=\"failure\"}} {}",
        names::RELOADS,
        reloads.failed
    );
    header(
        out,
        names::GENERATION,
        "gauge",
        "Generation of the config in force (1 at start, +1 per successful reload).",
    );
    let _ = writeln!(out, "{} {}", names::GENERATION, cfg.generation);
    header(
        out,
        names::LAST_RELOAD_SUCCESS,
        "gauge",
        "Unix time of the last successful config load (start or reload).",
    );
    let _ = writeln!(
        out,
        "{} {}",
        names::LAST_RELOAD_SUCCESS,
        reloads.last_success_unix.unwrap_or(state.started_unix)
    );
    header(
        out,
        names::SHUTTING_DOWN,
        "gauge",
        "1 once shutdown has begun.",
    );
    let _ = writeln!(
        out,
        "{} {}",
        names::SHUTTING_DOWN,
        u8::from(state.is_shutting_down())
    );
    header(out, names::BUILD_INFO, "gauge", "Build information.");
    let _ = writeln!(
        out,
        "{}{{version=\"{}\"}} 1",
        names::BUILD_INFO,
        env!("CARGO_PKG_VERSION")
    );
}
