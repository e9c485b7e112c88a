//! Spooling: `routes[i].spool` and the top-level `spool_store`.

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
    let (key, url) = if let Some(u) = &s.postgres {
        if has_password(u) {
            warnings.push("spool_store.postgres: the URL holds a password; prefer postgres_env or postgres_file".into());
        }
        ("spool_store.postgres", u.trim().to_string())
    } else if let Some(var) = &s.postgres_env {
        let u = (io.env)(var)
            .map(|u| u.trim().to_string())
            .unwrap_or_default();
        if u.is_empty() {
            return Err(ConfigError::Security {
                path: "spool_store.postgres_env".into(),
                message: format!("environment variable {var} is not set or empty"),
            });
        }
        ("spool_store.postgres_env", u)
    } else {
        // One of the four is set (checked above).
        let f = s.postgres_file.as_deref().unwrap_or(Path::new(""));
        let u = read_text(io, f).map_err(|e| ConfigError::Security {
            path: "spool_store.postgres_file".into(),
            message: format!("{}: {}", f.display(), listeners::io_reason(&e)),
        })?;
        ("spool_store.postgres_file", u.trim().to_string())
    };
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        // Never echo the value: it may hold a password.
        return Err(invalid(key, "must be a postgres:// or postgresql:// URL"));
    }
    Ok(SpoolStore::Postgres(Secret(url)))
}

/// Whether a URL's user info carries a password (`postgres://user:pw@host`).
fn has_password(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let auth = rest.split(['/', '?']).next().unwrap_or("");
    auth.rsplit_once('@')
        .is_some_and(|(user, _)| user.contains(':'))
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
    }
}
