//! Spooling: `routes[i].spool` and the top-level `spool_store`; the fleet's `control_store`
//! (its PostgreSQL URL is read the same way).

use std::time::Duration;

use super::*;

/// Largest `max_body`: 64 MiB (the body is held in memory while it is stored).
const MAX_BODY_LIMIT: u64 = 64 * 1024 * 1024;
/// Largest `max_items`.
const MAX_ITEMS_LIMIT: u64 = 100_000_000;

/// `routes[i].spool`.
pub(super) fn build_spool(path: &str, f: &FileSpool) -> Result<SpoolSpec, ConfigError> {
    let methods = super::build_methods(path, &Some(f.methods.clone()))?.unwrap_or_default();
    let range = |key: &str, v: u64, min: i64, max: u64| {
        if v < min as u64 || v > max {
            Err(ConfigError::OutOfRange {
                path: format!("{path}.{key}"),
                value: v.min(i64::MAX as u64) as i64,
                min,
                max: max as i64,
            })
        } else {
            Ok(())
        }
    };
    range("max_body", f.max_body, 0, MAX_BODY_LIMIT)?;
    range("max_items", f.max_items, 1, MAX_ITEMS_LIMIT)?;
    let r = &f.replay;
    range("replay.max_attempts", r.max_attempts.into(), 1, 1000)?;
    range("replay.concurrency", r.concurrency.into(), 1, 256)?;
    if r.backoff.0.is_zero() {
        return Err(invalid(
            format!("{path}.replay.backoff"),
            "must be greater than 0",
        ));
    }
    if r.max_backoff.0 < r.backoff.0 {
        return Err(invalid(
            format!("{path}.replay.max_backoff"),
            format!(
                "{} is shorter than replay.backoff ({})",
                r.max_backoff, r.backoff
            ),
        ));
    }
    if r.timeout.0.is_zero() {
        return Err(invalid(
            format!("{path}.replay.timeout"),
            "must be greater than 0",
        ));
    }
    Ok(SpoolSpec {
        methods,
        max_body: f.max_body,
        max_items: f.max_items,
        replay: ReplaySpec {
            max_attempts: r.max_attempts,
            backoff: r.backoff.0,
            max_backoff: r.max_backoff.0,
            concurrency: r.concurrency,
            timeout: r.timeout.0,
        },
    })
}

/// `spool_buffer`: at least the largest `max_body` (else such a body could never be stored).
pub(super) fn build_buffer(
    file: &FileConfig,
    routes: &[Arc<RouteSpec>],
) -> Result<u64, ConfigError> {
    let b = file.spool_buffer;
    if !(1024 * 1024..=16 * 1024 * 1024 * 1024).contains(&b) {
        return Err(ConfigError::OutOfRange {
            path: "spool_buffer".into(),
            value: b.min(i64::MAX as u64) as i64,
            min: 1024 * 1024,
            max: 16 * 1024 * 1024 * 1024,
        });
    }
    for (i, r) in routes.iter().enumerate() {
        if let Some(s) = r.spool.as_ref().filter(|s| s.max_body > b) {
            return Err(invalid(
                format!("routes[{i}].spool.max_body"),
                format!(
                    "{} is larger than spool_buffer ({b}), the bytes of bodies held at once",
                    s.max_body
                ),
            ));
        }
    }
    Ok(b)
}

/// `spool_store`: given, or `spool.db` next to `state_file` when a route spools.
pub(super) fn build_store(
    file: &FileConfig,
    routes: &[Arc<RouteSpec>],
    io: &Inputs,
    warnings: &mut Vec<String>,
) -> Result<Option<SpoolStore>, ConfigError> {
    let spooling = routes.iter().position(|r| r.spool.is_some());
    let Some(s) = &file.spool_store else {
        let Some(i) = spooling else { return Ok(None) };
        let Some(state) = &file.state_file else {
            return Err(invalid(
                format!("routes[{i}].spool"),
                "the spool needs a store: set spool_store (path or postgres) or state_file (the embedded store is kept next to it)",
            ));
        };
        let dir = state.parent().unwrap_or(Path::new("."));
        return Ok(Some(SpoolStore::Embedded(dir.join("spool.db"))));
    };
    let set = [
        s.path.is_some(),
        s.postgres.is_some(),
        s.postgres_env.is_some(),
        s.postgres_file.is_some(),
    ];
    if set.iter().filter(|x| **x).count() != 1 {
        return Err(invalid(
            "spool_store",
            "set exactly one of path, postgres, postgres_env or postgres_file",
        ));
    }
    if let Some(p) = &s.path {
        if p.as_os_str().is_empty() {
            return Err(invalid("spool_store.path", "must not be empty"));
        }
        return Ok(Some(SpoolStore::Embedded(p.clone())));
    }
    postgres_url(s, io, warnings).map(Some)
}

/// `spool_store.postgres`, `postgres_env` or `postgres_file` (exactly one is set).
fn postgres_url(
    s: &FileSpoolStore,
    io: &Inputs,
    warnings: &mut Vec<String>,
) -> Result<SpoolStore, ConfigError> {
    let src = UrlSource {
        key: "spool_store",
        url: s.postgres.as_deref(),
        env: s.postgres_env.as_deref(),
        file: s.postgres_file.as_deref(),
    };
    read_url(&src, io, warnings).map(SpoolStore::Postgres)
}

/// Where a PostgreSQL URL is written: in the file, in an environment variable, in a file.
pub(super) struct UrlSource<'a> {
    /// The section (`spool_store`, `control_store`).
    pub key: &'static str,
    pub url: Option<&'a str>,
    pub env: Option<&'a str>,
    pub file: Option<&'a Path>,
}

/// The URL from exactly one of its three sources (checked by the caller).
pub(super) fn read_url(
    s: &UrlSource<'_>,
    io: &Inputs,
    warnings: &mut Vec<String>,
) -> Result<Secret, ConfigError> {
    let key = s.key;
    let (field, url) = if let Some(u) = s.url {
        if has_password(u) {
            warnings.push(format!(
                "{key}.postgres: the URL holds a password; prefer postgres_env or postgres_file"
            ));
        }
        ("postgres", u.trim().to_string())
    } else if let Some(var) = s.env {
        let u = (io.env)(var)
            .map(|u| u.trim().to_string())
            .unwrap_or_default();
        if u.is_empty() {
            return Err(ConfigError::Security {
                path: format!("{key}.postgres_env"),
                message: format!("environment variable {var} is not set or empty"),
            });
        }
        ("postgres_env", u)
    } else {
        let f = s.file.unwrap_or(Path::new(""));
        let u = read_text(io, f).map_err(|e| ConfigError::Security {
            path: format!("{key}.postgres_file"),
            message: format!("{}: {}", f.display(), listeners::io_reason(&e)),
        })?;
        ("postgres_file", u.trim().to_string())
    };
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        // Never echo the value: it may hold a password.
        return Err(invalid(
            format!("{key}.{field}"),
            "must be a postgres:// or postgresql:// URL",
        ));
    }
    Ok(Secret(url))
}

/// `control_store`: the URL (exactly one source), the node name, the TTL and resync period.
pub(super) fn build_control(
    file: &FileConfig,
    admin_port: u16,
    io: &Inputs,
    warnings: &mut Vec<String>,
) -> Result<Option<ControlStore>, ConfigError> {
    let Some(c) = &file.control_store else {
        return Ok(None);
    };
    let set = [
        c.postgres.is_some(),
        c.postgres_env.is_some(),
        c.postgres_file.is_some(),
    ];
    if set.iter().filter(|x| **x).count() != 1 {
        return Err(invalid(
            "control_store",
            "set exactly one of postgres, postgres_env or postgres_file",
        ));
    }
    let src = UrlSource {
        key: "control_store",
        url: c.postgres.as_deref(),
        env: c.postgres_env.as_deref(),
        file: c.postgres_file.as_deref(),
    };
    let url = read_url(&src, io, warnings)?;
    let node = match &c.node {
        Some(n) if n.trim().is_empty() || n.len() > 200 => {
            return Err(invalid("control_store.node", "must be 1 to 200 characters"))
        }
        Some(n) => n.trim().to_string(),
        None => format!("{}:{admin_port}", host_name()),
    };
    // Unchanged heartbeats are written every second: a TTL under three would call live
    // proxies lost.
    if c.heartbeat_ttl.0 < Duration::from_secs(3) {
        return Err(invalid(
            "control_store.heartbeat_ttl",
            "must be at least 3s",
        ));
    }
    if c.resync.0 < Duration::from_millis(100) {
        return Err(invalid("control_store.resync", "must be at least 100ms"));
    }
    Ok(Some(ControlStore {
        url,
        node,
        heartbeat_ttl: c.heartbeat_ttl.0,
        resync: c.resync.0,
    }))
}

/// This machine's name (`/etc/hostname`, as a container sees it), or `localhost`.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// Whether a URL's user info carries a password (`postgres://user:pw@host`).
fn has_password(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let auth = rest.split(['/', '?']).next().unwrap_or("");
    let query = rest.split_once('?').map_or("", |(_, q)| q);
    auth.rsplit_once('@')
        .is_some_and(|(user, _)| user.contains(':'))
        || query
            .split('&')
            .any(|kv| kv.to_ascii_lowercase().starts_with("password="))
}

#[cfg(test)]
mod tests {
    use super::has_password;

    #[test]
    fn passwords_in_urls_are_noticed() {
        assert!(has_password("postgres://u:p@h/db"));
        assert!(!has_password("postgres://u@h/db"));
        assert!(!has_password("postgres://h/db?user=a:b"));
        assert!(!has_password("postgresql:///db?host=/run/postgresql"));
        assert!(has_password("postgres://u@h/db?sslmode=require&password=x"));
    }
}
