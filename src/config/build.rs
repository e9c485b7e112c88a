//! Validation: file structs → `RuntimeConfig`. Every rule is a typed `ConfigError` naming
//! the key path. Backend states are looked up in the registry by id so counters survive.

use std::{
    collections::{BTreeMap, HashMap},
    net::{SocketAddr, ToSocketAddrs},
    path::Path,
    sync::Arc,
};

use super::{error::ConfigError, file::*, runtime::*};
use crate::{
    routing::{HostPattern, RouteMatch, Router, Schedule},
    state::backend::Registry,
};

/// Split weights: 0 (no new traffic) to 10000.
pub const SPLIT_MAX: i64 = 10_000;
/// Backend weights: 1 to 1000 (the schedule's cycle grows with the sum of weights).
pub const WEIGHT_MAX: i64 = 1_000;

/// Build the runtime config. `env` reads environment variables (injectable for tests).
/// Non-fatal findings (e.g. a route that can receive no traffic) go into `warnings`.
pub fn build(
    file: FileConfig,
    registry: &Registry,
    env: &dyn Fn(&str) -> Option<String>,
    warnings: &mut Vec<String>,
) -> Result<RuntimeConfig, ConfigError> {
    let listeners = build_listeners(&file.listeners)?;
    let admin = build_admin(&file.admin, env, warnings)?;
    let pools = build_pools(&file.pools, registry)?;
    let (routes, router) = build_routes(&file.routes, &pools, registry, warnings)?;
    let t = &file.timeouts;
    if t.connect.0.is_zero() {
        return Err(invalid("timeouts.connect", "must be greater than 0"));
    }
    Ok(RuntimeConfig {
        generation: 0,
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
            upgrade_sock: file.server.upgrade_sock,
            pid_file: file.server.pid_file,
        },
        routes,
        router: Arc::new(router),
        pools,
        shutdown: Shutdown {
            delay: file.shutdown.delay.0,
            grace: file.shutdown.grace.non_zero(),
        },
        maintenance: None,
    })
}

fn invalid(path: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        path: path.into(),
        message: message.into(),
    }
}

fn build_listeners(file: &[FileListener]) -> Result<Vec<Listener>, ConfigError> {
    if file.is_empty() {
        return Err(ConfigError::Empty {
            path: "listeners".into(),
            what: "at least one listener is required",
        });
    }
    let mut names: HashMap<&str, usize> = HashMap::new();
    let mut addrs: HashMap<SocketAddr, usize> = HashMap::new();
    let mut out = Vec::with_capacity(file.len());
    for (i, l) in file.iter().enumerate() {
        let path = format!("listeners[{i}]");
        check_name(&format!("{path}.name"), &l.name)?;
        if let Some(first) = names.insert(&l.name, i) {
            return Err(dup(
                format!("{path}.name"),
                "listener name",
                &l.name,
                format!("listeners[{first}]"),
            ));
        }
        let addr = parse_socket_addr(&format!("{path}.address"), &l.address)?;
        if let Some(first) = addrs.insert(addr, i) {
            return Err(dup(
                format!("{path}.address"),
                "listener address",
                &l.address,
                format!("listeners[{first}]"),
            ));
        }
        let tls = match &l.tls {
            Some(t) => {
                if l.h2c {
                    return Err(invalid(
                        format!("{path}.h2c"),
                        "h2c is for plain listeners; TLS listeners offer h2 through ALPN",
                    ));
                }
                check_tls(&format!("{path}.tls"), &t.cert, &t.key)?;
                Some(TlsFiles {
                    cert: t.cert.clone(),
                    key: t.key.clone(),
                })
            }
            None => None,
        };
        out.push(Listener {
            name: l.name.clone(),
            addr,
            h2c: l.h2c,
            tls,
        });
    }
    Ok(out)
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

fn parse_socket_addr(path: &str, value: &str) -> Result<SocketAddr, ConfigError> {
    value.parse().map_err(|_| ConfigError::BadAddress {
        path: path.into(),
        value: value.into(),
        reason: "expected IP:PORT, e.g. 0.0.0.0:8080 or [::]:8080".into(),
    })
}

/// Backend addresses may be names (`app:3000` in a compose network): resolved here, once,
/// preferring IPv4 like most clients do for `localhost`.
fn resolve_backend(path: &str, value: &str) -> Result<SocketAddr, ConfigError> {
    if let Ok(a) = value.parse::<SocketAddr>() {
        return check_port(path, value, a);
    }
    let bad = |reason: String| ConfigError::BadAddress {
        path: path.into(),
        value: value.into(),
        reason,
    };
    let Some((host, port)) = value.rsplit_once(':') else {
        return Err(bad("expected HOST:PORT".into()));
    };
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err(bad("expected HOST:PORT with a port in 1..=65535".into()));
    }
    let addrs: Vec<SocketAddr> = value
        .to_socket_addrs()
        .map_err(|e| bad(format!("cannot resolve: {e}")))?
        .collect();
    let a = addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| bad("name resolved to no address".into()))?;
    check_port(path, value, a)
}

fn check_port(path: &str, value: &str, a: SocketAddr) -> Result<SocketAddr, ConfigError> {
    if a.port() == 0 {
        return Err(ConfigError::BadAddress {
            path: path.into(),
            value: value.into(),
            reason: "port 0 is not a backend port".into(),
        });
    }
    Ok(a)
}

fn check_tls(path: &str, cert: &Path, key: &Path) -> Result<(), ConfigError> {
    let tls_err = |sub: &str, message: String| ConfigError::Tls {
        path: format!("{path}.{sub}"),
        message,
    };
    for (sub, p) in [("cert", cert), ("key", key)] {
        std::fs::metadata(p).map_err(|e| tls_err(sub, format!("{}: {e}", p.display())))?;
    }
    pingora::tls::install_default_crypto_provider();
    let (chain, key_der) =
        pingora::tls::load_certs_and_key_files(&cert.to_string_lossy(), &key.to_string_lossy())
            .map_err(|e| tls_err("cert", format!("cannot load PEM: {e}")))?
            .ok_or_else(|| {
                tls_err(
                    "cert",
                    "no certificate or no private key found in the PEM files".into(),
                )
            })?;
    pingora::tls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(|e| {
            tls_err(
                "key",
                format!("certificate and key do not form a usable pair: {e}"),
            )
        })?;
    Ok(())
}

fn build_admin(
    a: &FileAdmin,
    env: &dyn Fn(&str) -> Option<String>,
    warnings: &mut Vec<String>,
) -> Result<Admin, ConfigError> {
    let addr = parse_socket_addr("admin.address", &a.address)?;
    if a.token_env.is_some() && a.token_file.is_some() {
        return Err(invalid("admin", "set token_env or token_file, not both"));
    }
    let token = if let Some(var) = &a.token_env {
        match env(var)
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
        {
            Some(t) => Some(Secret(t)),
            None => {
                warnings.push(format!("admin.token_env: environment variable {var} is not set or empty; the admin API has no token"));
                None
            }
        }
    } else if let Some(f) = &a.token_file {
        let t = std::fs::read_to_string(f).map_err(|e| ConfigError::Security {
            path: "admin.token_file".into(),
            message: format!("{}: {e}", f.display()),
        })?;
        let t = t.trim().to_string();
        if t.is_empty() {
            return Err(ConfigError::Security {
                path: "admin.token_file".into(),
                message: format!("{} is empty", f.display()),
            });
        }
        Some(Secret(t))
    } else {
        None
    };
    if !addr.ip().is_loopback() && token.is_none() {
        return Err(ConfigError::Security {
            path: "admin.address".into(),
            message: format!(
                "{addr} is not a loopback address: configure admin.token_env or admin.token_file (a bearer token is required off loopback)"
            ),
        });
    }
    Ok(Admin {
        addr,
        token,
        metrics_auth: a.metrics_auth,
    })
}

fn build_pools(
    file: &BTreeMap<String, FilePool>,
    registry: &Registry,
) -> Result<BTreeMap<Arc<str>, Arc<Pool>>, ConfigError> {
    let mut pools = BTreeMap::new();
    for (pname, p) in file {
        let path = format!("pools.{pname}");
        check_name(&path, pname)?;
        if p.backends.is_empty() {
            return Err(ConfigError::Empty {
                path: format!("{path}.backends"),
                what: "a pool needs at least one backend",
            });
        }
        let mut seen: HashMap<String, usize> = HashMap::new();
        let mut backends = Vec::with_capacity(p.backends.len());
        for (i, b) in p.backends.iter().enumerate() {
            let bpath = format!("{path}.backends[{i}]");
            let addr = resolve_backend(&format!("{bpath}.address"), &b.address)?;
            let name = b.name.clone().unwrap_or_else(|| b.address.clone());
            if b.name.is_some() {
                check_name(&format!("{bpath}.name"), &name)?;
            }
            if let Some(first) = seen.insert(name.clone(), i) {
                let key = if b.name.is_some() { "name" } else { "address" };
                return Err(dup(
                    format!("{bpath}.{key}"),
                    "backend",
                    &name,
                    format!("{path}.backends[{first}]"),
                ));
            }
            if !(1..=WEIGHT_MAX).contains(&b.weight) {
                return Err(ConfigError::OutOfRange {
                    path: format!("{bpath}.weight"),
                    value: b.weight,
                    min: 1,
                    max: WEIGHT_MAX,
                });
            }
            let state = registry.get_or_create(pname, &name);
            backends.push(Backend {
                id: state.id.clone(),
                name: state.name.clone(),
                address: b.address.clone(),
                addr,
                // In range checked above.
                weight: b.weight as u32,
                declared_draining: b.state == FileState::Draining,
                state,
            });
        }
        let weights: Vec<u32> = backends.iter().map(|b| b.weight).collect();
        let health_check = match &p.health_check {
            Some(h) => Some(build_health_check(&format!("{path}.health_check"), h)?),
            None => None,
        };
        let name: Arc<str> = pname.as_str().into();
        pools.insert(
            name.clone(),
            Arc::new(Pool {
                name,
                schedule: Schedule::new(&weights),
                backends,
                drain: DrainSettings {
                    requests_deadline: p.drain.requests_deadline.non_zero(),
                    streams_deadline: p.drain.streams_deadline.non_zero(),
                    close_spread: p.drain.close_spread.0,
                },
                health_check,
                slow_start: p.slow_start.non_zero(),
                declared_draining: p.state == FileState::Draining,
            }),
        );
    }
    Ok(pools)
}

fn build_health_check(path: &str, h: &FileHealthCheck) -> Result<HealthCheck, ConfigError> {
    if !h.path.starts_with('/') {
        return Err(invalid(format!("{path}.path"), "must start with '/'"));
    }
    if !(100..=599).contains(&h.expected_status) {
        return Err(ConfigError::OutOfRange {
            path: format!("{path}.expected_status"),
            value: h.expected_status.into(),
            min: 100,
            max: 599,
        });
    }
    for (k, d) in [("interval", h.interval), ("timeout", h.timeout)] {
        if d.0.is_zero() {
            return Err(invalid(format!("{path}.{k}"), "must be greater than 0"));
        }
    }
    for (k, v) in [("rise", h.rise), ("fall", h.fall)] {
        if !(1..=100).contains(&v) {
            return Err(ConfigError::OutOfRange {
                path: format!("{path}.{k}"),
                value: v.into(),
                min: 1,
                max: 100,
            });
        }
    }
    Ok(HealthCheck {
        path: h.path.clone(),
        expected_status: h.expected_status,
        interval: h.interval.0,
        timeout: h.timeout.0,
        rise: h.rise,
        fall: h.fall,
        start_healthy: h.start_healthy,
    })
}

type Routes = (Vec<Arc<Route>>, Router);

fn build_routes(
    file: &[FileRoute],
    pools: &BTreeMap<Arc<str>, Arc<Pool>>,
    registry: &Registry,
    warnings: &mut Vec<String>,
) -> Result<Routes, ConfigError> {
    let pool_names: Vec<Arc<str>> = pools.keys().cloned().collect();
    if file.is_empty() {
        return Err(ConfigError::Empty {
            path: "routes".into(),
            what: "at least one route is required",
        });
    }
    let mut names: HashMap<&str, usize> = HashMap::new();
    let mut keys: HashMap<(String, String, Option<Vec<String>>), usize> = HashMap::new();
    let mut routes = Vec::with_capacity(file.len());
    let mut matches = Vec::with_capacity(file.len());
    for (i, r) in file.iter().enumerate() {
        let path = format!("routes[{i}]");
        check_name(&format!("{path}.name"), &r.name)?;
        if let Some(first) = names.insert(&r.name, i) {
            return Err(dup(
                format!("{path}.name"),
                "route name",
                &r.name,
                format!("routes[{first}]"),
            ));
        }
        let m = build_match(&format!("{path}.match"), &r.matcher)?;
        let method_key = m.methods.as_ref().map(|ms| {
            let mut v: Vec<String> = ms.iter().map(|m| m.to_string()).collect();
            v.sort();
            v
        });
        for h in r.matcher.host.to_vec() {
            let key = (
                h.to_ascii_lowercase(),
                m.path_prefix.clone(),
                method_key.clone(),
            );
            if let Some(first) = keys.insert(key, i) {
                return Err(dup(
                    format!("{path}.match"),
                    "match (host, path_prefix, methods)",
                    &format!("{h} {}", m.path_prefix),
                    format!("routes[{first}]"),
                ));
            }
        }
        if r.split.is_empty() {
            return Err(ConfigError::Empty {
                path: format!("{path}.split"),
                what: "a split needs at least one pool",
            });
        }
        let mut split = Vec::with_capacity(r.split.len());
        for (pool, w) in &r.split {
            let spath = format!("{path}.split.{pool}");
            let p = pools
                .get(pool.as_str())
                .ok_or_else(|| ConfigError::UnknownPool {
                    path: spath.clone(),
                    pool: pool.clone(),
                    known: pools
                        .keys()
                        .map(|k| k.to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                })?;
            if !(0..=SPLIT_MAX).contains(w) {
                return Err(ConfigError::OutOfRange {
                    path: spath,
                    value: *w,
                    min: 0,
                    max: SPLIT_MAX,
                });
            }
            // In range checked above.
            split.push((p.clone(), *w as u32));
        }
        if split.iter().all(|(_, w)| *w == 0) {
            warnings.push(format!(
                "{path}.split: every weight is 0; route {:?} receives no traffic",
                r.name
            ));
        }
        if r.retries > 10 {
            return Err(ConfigError::OutOfRange {
                path: format!("{path}.retries"),
                value: r.retries.into(),
                min: 0,
                max: 10,
            });
        }
        if r.hold.max_queued > 1_000_000 {
            return Err(ConfigError::OutOfRange {
                path: format!("{path}.hold.max_queued"),
                value: r.hold.max_queued.into(),
                min: 0,
                max: 1_000_000,
            });
        }
        let weights: Vec<u32> = split.iter().map(|(_, w)| *w).collect();
        routes.push(Arc::new(Route {
            name: r.name.as_str().into(),
            hosts: r.matcher.host.to_vec(),
            path_prefix: m.path_prefix.clone(),
            methods: method_key,
            schedule: Schedule::new(&weights),
            file_split: split.iter().map(|(p, w)| (p.name.clone(), *w)).collect(),
            split,
            retries: r.retries,
            hold: Hold {
                timeout: r.hold.timeout.0,
                max_queued: r.hold.max_queued,
            },
            stats: Arc::new(registry.route_stats(&r.name, &pool_names)),
        }));
        matches.push(m);
    }
    Ok((routes, Router::new(&matches)))
}

fn build_match(path: &str, m: &FileMatch) -> Result<RouteMatch, ConfigError> {
    let hosts_in = m.host.to_vec();
    if hosts_in.is_empty() {
        return Err(ConfigError::Empty {
            path: format!("{path}.host"),
            what: "at least one host pattern is required",
        });
    }
    let hosts = hosts_in
        .iter()
        .enumerate()
        .map(|(i, h)| {
            HostPattern::parse(h).map_err(|e| {
                let p = if hosts_in.len() > 1 {
                    format!("{path}.host[{i}]")
                } else {
                    format!("{path}.host")
                };
                invalid(p, e)
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    if !m.path_prefix.starts_with('/') {
        return Err(invalid(
            format!("{path}.path_prefix"),
            format!("{:?} must start with '/'", m.path_prefix),
        ));
    }
    let methods = match &m.methods {
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
    Ok(RouteMatch {
        hosts,
        path_prefix: m.path_prefix.clone(),
        methods,
    })
}
