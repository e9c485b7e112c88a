//! tidegate: a reverse proxy on pingora that owns draining.
//!
//! Layers, bottom to top (a module imports only from its own layer or below; README
//! "Development" has the map and `tests/layers.rs` checks it):
//! 1. pure: [`config`] (file → validated [`config::Spec`], diff), [`routing`] (route match,
//!    weighted schedule), [`drain`] (drain state machine), [`health`] (rise/fall streak),
//!    [`api`] (admin request/response types)
//! 2. live state: [`state`] (registry, counts, tracking, the route table bound to the
//!    registry, `ArcSwap` publication, overrides, statistics)
//! 3. services: [`services`] (reload, drains, health checks, probes, ramps, persistence,
//!    signals, shutdown)
//! 4. edges: [`proxy`] (`impl ProxyHttp`), [`admin`] (axum API), [`metrics`] (prometheus),
//!    [`client`] (the CLI's admin client)
//! 5. [`server`] (assembles the pingora server), [`cli`], and the binary's `main`

pub mod access_log;
pub mod admin;
pub mod api;
pub mod cli;
pub mod client;
pub mod config;
pub mod drain;
#[doc(hidden)]
pub mod fuzzing;
pub mod health;
pub mod logging;
pub mod metrics;
pub mod proxy;
pub mod routing;
pub mod server;
pub mod services;
pub mod state;
