//! Services: the tasks that drive live state. Each owns its task (a pingora background
//! service, or a task it spawns) and stops at shutdown where stopping makes sense.
//!
//! - [`access_log`]: the access log's writer thread (batched writes, reopen on SIGUSR1).
//! - [`history`]: samples per pool every 2 s and marks of changes, for the status page.
//! - [`reload`]: validate, then bind and publish (with the typed diff).
//! - [`drains`]: the drain service: start, undrain, declared and restored drains, deadline
//!   enforcement, pruning of removed backends once idle.
//! - [`health`]: active HTTP health checks; [`probe`]: passive-health probes.
//! - [`ramps`]: split ramps with rollback on errors.
//! - [`persist`]: `state_file`, written durably and restored at start.
//! - [`resolver`]: backend names resolved again every `resolve_interval`.
//! - [`control`]: SIGHUP and the config directory watch; listener verification (readiness).
//! - [`spool`]: the durable spool for routes that spool requests while no backend is
//!   available: store, group-commit writer, ordered replay.
//! - [`signals`]: SIGTERM / SIGQUIT / SIGINT for pingora; [`shutdown`]: end once idle, or
//!   politely at `shutdown.grace`; [`upgrade`]: the graceful upgrade's socket directory
//!   check and the relay that sends listening sockets only to tidegate's own user.

pub mod access_log;
pub mod acme;
pub mod capped;
pub mod certs;
pub mod control;
pub mod drains;
pub mod fleet;
pub mod health;
pub mod history;
pub mod persist;
pub mod pg;
pub mod probe;
pub mod ramps;
pub mod reload;
pub mod resolver;
pub mod shutdown;
pub mod signals;
pub mod spool;
pub mod upgrade;
