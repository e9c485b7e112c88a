//! Metric names, fixed by the product contract (README, Metrics).

pub use crate::state::stats::names::*;
pub const BACKEND_IN_FLIGHT: &str = "tidegate_backend_in_flight";
pub const BACKEND_STATE: &str = "tidegate_backend_state";
pub const BACKEND_WEIGHT: &str = "tidegate_backend_weight";
pub const BACKEND_HEALTHY: &str = "tidegate_backend_healthy";
pub const ROUTE_SPLIT_WEIGHT: &str = "tidegate_route_split_weight";
pub const CONNECT_FAILURES: &str = "tidegate_upstream_connect_failures_total";
pub const HELD: &str = "tidegate_held_requests";
pub const STREAMS_ENDED: &str = "tidegate_streams_ended_total";
pub const RELOADS: &str = "tidegate_config_reloads_total";
pub const GENERATION: &str = "tidegate_config_generation";
pub const LAST_RELOAD_SUCCESS: &str = "tidegate_config_last_reload_success_timestamp_seconds";
pub const SHUTTING_DOWN: &str = "tidegate_shutting_down";
pub const BUILD_INFO: &str = "tidegate_build_info";
pub const SPOOL_ITEMS: &str = "tidegate_spool_items";
pub const SPOOL_OLDEST_AGE: &str = "tidegate_spool_oldest_age_seconds";
pub const ACCESS_LOG_LINES: &str = "tidegate_access_log_lines_total";
pub const TLS_CERT_EXPIRY: &str = "tidegate_tls_certificate_expiry_timestamp_seconds";
pub const TLS_CERT_RELOADS: &str = "tidegate_tls_certificate_reloads_total";
pub const ACME_ORDERS: &str = "tidegate_acme_orders_total";
pub const CONTROL_STORE_UP: &str = "tidegate_control_store_up";
pub const CONTROL_REVISION: &str = "tidegate_control_revision";
pub const FLEET_PROXIES: &str = "tidegate_fleet_proxies";

/// Every name above (dashboards and tests check against this list).
pub const ALL: &[&str] = &[
    BACKEND_IN_FLIGHT,
    BACKEND_STATE,
    BACKEND_WEIGHT,
    BACKEND_HEALTHY,
    ROUTE_SPLIT_WEIGHT,
    CONNECT_FAILURES,
    HELD,
    STREAMS_ENDED,
    RELOADS,
    GENERATION,
    LAST_RELOAD_SUCCESS,
    SHUTTING_DOWN,
    BUILD_INFO,
    SPOOL_ITEMS,
    SPOOL_OLDEST_AGE,
    ACCESS_LOG_LINES,
    TLS_CERT_EXPIRY,
    TLS_CERT_RELOADS,
    ACME_ORDERS,
    CONTROL_STORE_UP,
    CONTROL_REVISION,
    FLEET_PROXIES,
    REQUESTS_TOTAL,
    REQUEST_DURATION,
    RETRIES,
    HOLD_TIMEOUTS,
    SPOOL_REPLAYS,
    ROUTE_PICKS,
];
