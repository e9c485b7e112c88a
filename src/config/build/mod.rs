//! Validation: file structs → [`Spec`]. Every rule is a typed `ConfigError` naming the key
//! path. Nothing live is touched: binding to the registry happens when a spec is published.
//!
//! `listeners.rs` checks listeners and the admin endpoint, `pools.rs` pools, backends and
//! health checks, `routes.rs` routes, matches and splits; this file assembles the result.

mod affinity;
mod listeners;
mod log;
mod pools;
mod routes;
mod spool;
pub use acme::is_dns_name;
mod acme;
mod upstream;

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    path::Path,
    sync::Arc,
};

pub use super::inputs::lookup;
use super::{error::ConfigError, file::*, inputs::Inputs, spec::*};
use crate::routing::{HostPattern, RouteMatch, Router};
use listeners::{build_admin, build_listeners};
use pools::build_pools;
use routes::build_routes;

/// Split weights: 0 (no new traffic) to 10000.
pub const SPLIT_MAX: i64 = 10_000;
/// Backend weights: 1 to 1000 (the schedule's cycle grows with the sum of weights).
pub const WEIGHT_MAX: i64 = 1_000;

/// Validate the file into a [`Spec`]. `env` reads environment variables (injectable for
/// tests). Non-fatal findings (e.g. a route that can receive no traffic) go into `warnings`.
pub fn build(
    file: FileConfig,
    io: &Inputs,
    warnings: &mut Vec<String>,
) -> Result<Spec, ConfigError> {
    let listeners = build_listeners(&file, io, warnings)?;
    let admin = build_admin(&file.admin, io, warnings)?;
    let pools = build_pools(&file.pools, io, warnings)?;
    let (routes, router) = build_routes(&file.routes, &pools, io, warnings)?;
    let spool_store = spool::build_store(&file, &routes, io, warnings)?;
    listeners::check_alpn_in_a_fleet(&listeners, &spool_store)?;
    let spool_buffer = spool::build_buffer(&file, &routes)?;
    let control_store = spool::build_control(&file, admin.addr.port(), io, warnings)?;
    let t = &file.timeouts;
    if t.connect.0.is_zero() {
        return Err(invalid("timeouts.connect", "must be greater than 0"));
    }
    let upgrade_sock = build_upgrade_sock(&file)?;
    Ok(Spec {
        access_log: log::build_access_log(&file.access_log, warnings)?,
        trace: log::build_trace(&file.trace)?,
        http: log::build_http(&file.http)?,
        listeners,
        admin,
        state_file: file.state_file,
        config_watch: file.config_watch,
        timeouts: Timeouts {
            connect: t.connect.0,
            client_read: t.client_read.non_zero(),
            upstream_read: t.upstream_read.non_zero(),
            websocket_idle: t.websocket_idle.non_zero(),
            upstream_keepalive: t.upstream_keepalive.0,
        },
        server: ServerSettings {
            threads: file.server.threads,
            upgrade_sock,
            pid_file: file.server.pid_file,
        },
        spool_buffer,
        routes,
        router: Arc::new(router),
        pools,
        shutdown: Shutdown {
            delay: file.shutdown.delay.0,
            grace: file.shutdown.grace.non_zero(),
        },
        resolve_interval: file.resolve_interval.non_zero(),
        spool_store,
        control_store,
    })
}

/// Validate runtime members of pool `pool` exactly like the file's `pools.NAME.backends`
/// (addresses parsed, names unique, weights in range). Never blocks: host names are left to
/// the resolver service.
pub fn runtime_backends(
    pool: &str,
    entries: &[crate::api::BackendEntry],
) -> Result<Vec<BackendSpec>, ConfigError> {
    if entries.is_empty() {
        return Err(ConfigError::Empty {
            path: "backends".into(),
            what: "a pool needs at least one backend",
        });
    }
    let file: Vec<FileBackend> = entries
        .iter()
        .map(|e| FileBackend {
            address: e.address.clone(),
            name: e.name.clone(),
            weight: e.weight.unwrap_or(1),
            state: FileState::Active,
        })
        .collect();
    // No name is looked up here: callers hold locks or serve the admin API, and a slow DNS
    // answer must stall neither. Names stay unresolved (the backend unavailable) until the
    // resolver service answers, within a second.
    let no_dns = |_: &str| None;
    let io = Inputs {
        lookup: &no_dns,
        ..Inputs::system()
    };
    let mut warnings = Vec::new();
    let members = pools::build_backends("backends", &file, &io, &mut warnings)?;
    for w in warnings {
        tracing::debug!(pool, "{w}");
    }
    Ok(members)
}

/// `server.upgrade_sock`: absolute, or the default next to `state_file`.
fn build_upgrade_sock(file: &FileConfig) -> Result<std::path::PathBuf, ConfigError> {
    match &file.server.upgrade_sock {
        Some(p) if !p.is_absolute() => Err(invalid(
            "server.upgrade_sock",
            "must be an absolute path (old and new process must agree)",
        )),
        Some(p) => Ok(p.clone()),
        None => Ok(crate::config::file::default_upgrade_sock(
            file.state_file.as_deref(),
        )),
    }
}

/// A text file through the injected reader.
fn read_text(io: &Inputs, f: &Path) -> std::io::Result<String> {
    let bytes = (io.read)(f)?;
    String::from_utf8(bytes).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

fn invalid(path: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        path: path.into(),
        message: message.into(),
    }
}

fn dup(path: String, what: &'static str, name: &str, first: String) -> ConfigError {
    ConfigError::Duplicate {
        path,
        what,
        name: name.to_string(),
        first: Some(first),
    }
}

fn check_name(path: &str, name: &str) -> Result<(), ConfigError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(invalid(
            path,
            format!("invalid name {name:?}: use 1-64 of [A-Za-z0-9._-]"),
        ))
    }
}

/// `match.methods`: absent = every method; listed ones must be real method tokens.
fn build_methods(
    path: &str,
    methods: &Option<Vec<String>>,
) -> Result<Option<Vec<http::Method>>, ConfigError> {
    let methods = match methods {
        None => None,
        Some(ms) if ms.is_empty() => {
            return Err(ConfigError::Empty {
                path: format!("{path}.methods"),
                what: "omit methods to match every method",
            })
        }
        Some(ms) => Some(
            ms.iter()
                .enumerate()
                .map(|(i, s)| {
                    let up = s.to_ascii_uppercase();
                    if up.is_empty() || !up.bytes().all(|b| b.is_ascii_uppercase()) {
                        return Err(invalid(
                            format!("{path}.methods[{i}]"),
                            format!("invalid method {s:?}"),
                        ));
                    }
                    http::Method::from_bytes(up.as_bytes()).map_err(|_| {
                        invalid(
                            format!("{path}.methods[{i}]"),
                            format!("invalid method {s:?}"),
                        )
                    })
                })
                .collect::<Result<Vec<_>, _>>()?,
        ),
    };
    Ok(methods)
}
