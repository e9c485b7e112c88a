//! tidegate: a reverse proxy on pingora that owns draining.
//!
//! Map of the crate (see README "Development"):
//! - [`config`]: YAML file structs → validation → immutable [`config::RuntimeConfig`]
//! - [`state`]: `ArcSwap` of the config, backend registry, readiness, in-flight guards
//! - [`routing`]: host/path match and the smooth weighted schedule (pure)
//! - [`drain`]: drain state machine, deadline enforcement, status view
//! - [`proxy`]: `impl ProxyHttp`
//! - [`admin`]: admin API listener
//! - [`metrics`]: Prometheus text rendered from live state
//! - [`lifecycle`]: signals, reload triggers, idle-aware shutdown
//! - [`server`]: assembly of the pingora server
//! - [`client`]: the CLI's client verbs (status, drain, shift, reload, maintenance)
//! - [`demo`]: the demo/test backend app and `tidegate demo`

pub mod admin;
pub mod cli;
pub mod client;
pub mod config;
pub mod demo;
pub mod drain;
pub mod lifecycle;
pub mod logging;
pub mod metrics;
pub mod proxy;
pub mod routing;
pub mod server;
pub mod state;
