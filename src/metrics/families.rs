//! The metric families the live collector renders: name, help, type and labels, in one
//! table (a new family is one variant, one entry in `ALL`, one row in `SPECS`).

use prometheus::proto::MetricType;

use super::names;

/// The families the collector renders, addressed by name (a new one is one variant here and
/// one arm in [`Family::spec`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Family {
    BackendInFlight,
    BackendState,
    BackendWeight,
    BackendHealthy,
    ConnectFailures,
    StreamsEnded,
    RouteSplitWeight,
    Held,
    Reloads,
    Generation,
    LastReloadSuccess,
    ShuttingDown,
    BuildInfo,
    SpoolItems,
    SpoolOldestAge,
    AccessLogLines,
    TlsCertExpiry,
    TlsCertReloads,
    AcmeOrders,
    ControlStoreUp,
    ControlRevision,
    FleetProxies,
}

impl Family {
    pub(super) const ALL: [Family; 22] = [
        Family::BackendInFlight,
        Family::BackendState,
        Family::BackendWeight,
        Family::BackendHealthy,
        Family::ConnectFailures,
        Family::StreamsEnded,
        Family::RouteSplitWeight,
        Family::Held,
        Family::Reloads,
        Family::Generation,
        Family::LastReloadSuccess,
        Family::ShuttingDown,
        Family::BuildInfo,
        Family::SpoolItems,
        Family::SpoolOldestAge,
        Family::AccessLogLines,
        Family::TlsCertExpiry,
        Family::TlsCertReloads,
        Family::AcmeOrders,
        Family::ControlStoreUp,
        Family::ControlRevision,
        Family::FleetProxies,
    ];

    /// Name, help text, type and labels.
    pub(super) fn spec(self) -> Spec {
        let (_, name, help, kind, labels) = SPECS[self as usize];
        (name, help, kind, labels)
    }
}

/// A family's name, help text, type and labels.
pub(super) type Spec = (
    &'static str,
    &'static str,
    MetricType,
    &'static [&'static str],
);

/// Every family's spec, in [`Family::ALL`] order (a test checks the order).
const SPECS: [(Family, &str, &str, MetricType, &[&str]); 22] = [
    (
        Family::BackendInFlight,
        names::BACKEND_IN_FLIGHT,
        "Requests and streams in flight per backend, by kind.",
        MetricType::GAUGE,
        &["pool", "backend", "kind"],
    ),
    (
        Family::BackendState,
        names::BACKEND_STATE,
        "1 for the backend's current state (active, draining, drained, unhealthy, removed).",
        MetricType::GAUGE,
        &["pool", "backend", "state"],
    ),
    (
        Family::BackendWeight,
        names::BACKEND_WEIGHT,
        "Configured weight of the backend in its pool.",
        MetricType::GAUGE,
        &["pool", "backend"],
    ),
    (
        Family::BackendHealthy,
        names::BACKEND_HEALTHY,
        "1 when the backend passes its health checks and its connects succeed.",
        MetricType::GAUGE,
        &["pool", "backend"],
    ),
    (
        Family::ConnectFailures,
        names::CONNECT_FAILURES,
        "Failed connection attempts to the backend (requests and probes).",
        MetricType::COUNTER,
        &["pool", "backend"],
    ),
    (
        Family::StreamsEnded,
        names::STREAMS_ENDED,
        "SSE and WebSocket streams ended, by pool, kind and reason.",
        MetricType::COUNTER,
        &["pool", "kind", "reason"],
    ),
    (
        Family::RouteSplitWeight,
        names::ROUTE_SPLIT_WEIGHT,
        "Effective split weight of a pool in a route (after overrides).",
        MetricType::GAUGE,
        &["route", "pool"],
    ),
    (
        Family::Held,
        names::HELD,
        "Requests held right now because no backend of the route is available.",
        MetricType::GAUGE,
        &["route"],
    ),
    (
        Family::Reloads,
        names::RELOADS,
        "Config reloads by result.",
        MetricType::COUNTER,
        &["result"],
    ),
    (
        Family::Generation,
        names::GENERATION,
        "Generation of the config in force (1 at start, +1 per successful reload).",
        MetricType::GAUGE,
        &[],
    ),
    (
        Family::LastReloadSuccess,
        names::LAST_RELOAD_SUCCESS,
        "Unix time of the last successful config load (start or reload).",
        MetricType::GAUGE,
        &[],
    ),
    (
        Family::ShuttingDown,
        names::SHUTTING_DOWN,
        "1 once shutdown has begun.",
        MetricType::GAUGE,
        &[],
    ),
    (
        Family::BuildInfo,
        names::BUILD_INFO,
        "Build information.",
        MetricType::GAUGE,
        &["version"],
    ),
    (
        Family::SpoolItems,
        names::SPOOL_ITEMS,
        "Spooled requests by route and state (pending, dead).",
        MetricType::GAUGE,
        &["route", "state"],
    ),
    (
        Family::SpoolOldestAge,
        names::SPOOL_OLDEST_AGE,
        "Age of the oldest pending spooled request, by route (0 when none is pending).",
        MetricType::GAUGE,
        &["route"],
    ),
    (
        Family::AccessLogLines,
        names::ACCESS_LOG_LINES,
        "Access log lines written, and dropped because the destination could not keep up.",
        MetricType::COUNTER,
        &["result"],
    ),
    (
        Family::TlsCertExpiry,
        names::TLS_CERT_EXPIRY,
        "Unix time a served listener certificate expires (not after), by listener and names.",
        MetricType::GAUGE,
        &["listener", "names", "issuer", "source"],
    ),
    (
        Family::TlsCertReloads,
        names::TLS_CERT_RELOADS,
        "Listener certificate reloads after a file changed: loaded (ok) or refused (error).",
        MetricType::COUNTER,
        &["listener", "result"],
    ),
    (
        Family::AcmeOrders,
        names::ACME_ORDERS,
        "ACME certificate orders by listener and names: ok, or error (retried with back-off).",
        MetricType::COUNTER,
        &["listener", "names", "result"],
    ),
    (
        Family::ControlStoreUp,
        names::CONTROL_STORE_UP,
        "With a control_store: 1 while it answers, 0 while changes are refused.",
        MetricType::GAUGE,
        &[],
    ),
    (
        Family::ControlRevision,
        names::CONTROL_REVISION,
        "With a control_store: the revision of the shared state applied by this proxy.",
        MetricType::GAUGE,
        &[],
    ),
    (
        Family::FleetProxies,
        names::FLEET_PROXIES,
        "With a control_store: the proxies of the fleet by heartbeat (live, lost).",
        MetricType::GAUGE,
        &["state"],
    ),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_are_listed_in_their_own_order_once_each() {
        for (i, f) in Family::ALL.iter().enumerate() {
            assert_eq!(*f as usize, i, "{f:?}");
            assert_eq!(SPECS[i].0, *f, "SPECS[{i}] is not {f:?}");
        }
        let mut names: Vec<&str> = Family::ALL.iter().map(|f| f.spec().0).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Family::ALL.len());
    }
}
