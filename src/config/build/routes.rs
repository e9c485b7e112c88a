//! Routes: matches (host patterns, path prefixes, methods), splits over pools, hold and
//! retry settings, and the router built from them.

use super::{affinity, spool::build_spool, *};

type Routes = (Vec<Arc<RouteSpec>>, Router);

pub(super) fn build_routes(
    file: &[FileRoute],
    pools: &BTreeMap<Arc<str>, Arc<PoolSpec>>,
    io: &Inputs,
    warnings: &mut Vec<String>,
) -> Result<Routes, ConfigError> {
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
        check_new_name(&path, i, &r.name, &mut names)?;
        let m = build_match(&format!("{path}.match"), &r.matcher)?;
        let method_key = sorted_methods(&m);
        check_unique_match(&path, i, r, &method_key, &mut keys)?;
        let split = build_split(&path, &r.split, pools)?;
        warn_all_zero(&path, r, &split, warnings);
        check_limits(&path, r)?;
        let spool = r
            .spool
            .as_ref()
            .map(|f| build_spool(&format!("{path}.spool"), f));
        if r.spool.is_some() {
            check_replayable(&path, &split, pools)?;
        }
        let (affinity, force_pool) = affinity::build_picking(&path, r, &split, io)?;
        routes.push(Arc::new(RouteSpec {
            name: r.name.as_str().into(),
            hosts: r.matcher.host.to_vec(),
            path_prefix: m.path_prefix.clone(),
            methods: method_key,
            split,
            retries: r.retries,
            retry_sent: retry_sent(r.retry_sent),
            spool: spool.transpose()?,
            affinity,
            force_pool,
            hold: Hold {
                timeout: r.hold.timeout.0,
                max_queued: r.hold.max_queued,
            },
        }));
        matches.push(m);
    }
    Ok((routes, Router::new(&matches)))
}

/// A route's name: valid, and not taken by an earlier route.
fn check_new_name<'a>(
    path: &str,
    i: usize,
    name: &'a str,
    names: &mut HashMap<&'a str, usize>,
) -> Result<(), ConfigError> {
    check_name(&format!("{path}.name"), name)?;
    match names.insert(name, i) {
        Some(first) => Err(dup(
            format!("{path}.name"),
            "route name",
            name,
            format!("routes[{first}]"),
        )),
        None => Ok(()),
    }
}

/// A spooled route's pools must be ones its replays (plain HTTP/1.1) can reach.
fn check_replayable(
    path: &str,
    split: &[(Arc<str>, u32)],
    pools: &BTreeMap<Arc<str>, Arc<PoolSpec>>,
) -> Result<(), ConfigError> {
    let refusal = split
        .iter()
        .find_map(|(p, _)| pools.get(p)?.upstream.replay_refusal(p));
    match refusal {
        Some(why) => Err(invalid(format!("{path}.spool"), why)),
        None => Ok(()),
    }
}

fn warn_all_zero(path: &str, r: &FileRoute, split: &[(Arc<str>, u32)], warnings: &mut Vec<String>) {
    if split.iter().all(|(_, w)| *w == 0) {
        warnings.push(format!(
            "{path}.split: every weight is 0; route {:?} receives no traffic",
            r.name
        ));
    }
}

/// The match's methods as sorted strings (the key of a unique match).
fn sorted_methods(m: &RouteMatch) -> Option<Vec<String>> {
    m.methods.as_ref().map(|ms| {
        let mut v: Vec<String> = ms.iter().map(|m| m.to_string()).collect();
        v.sort();
        v
    })
}

fn retry_sent(f: FileRetrySent) -> RetrySent {
    match f {
        FileRetrySent::Never => RetrySent::Never,
        FileRetrySent::Idempotent => RetrySent::Idempotent,
        FileRetrySent::All => RetrySent::All,
    }
}

/// `routes[i].split`: known pools, weights in range.
fn build_split(
    path: &str,
    file: &BTreeMap<String, i64>,
    pools: &BTreeMap<Arc<str>, Arc<PoolSpec>>,
) -> Result<Vec<(Arc<str>, u32)>, ConfigError> {
    if file.is_empty() {
        return Err(ConfigError::Empty {
            path: format!("{path}.split"),
            what: "a split needs at least one pool",
        });
    }
    let mut split = Vec::with_capacity(file.len());
    for (pool, w) in file {
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
        split.push((p.name.clone(), *w as u32));
    }
    Ok(split)
}

/// `retries` and `hold.max_queued` within their bounds.
fn check_limits(path: &str, r: &FileRoute) -> Result<(), ConfigError> {
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
    Ok(())
}

/// No two routes with the same (host, path_prefix, methods).
fn check_unique_match(
    path: &str,
    i: usize,
    r: &FileRoute,
    method_key: &Option<Vec<String>>,
    keys: &mut HashMap<(String, String, Option<Vec<String>>), usize>,
) -> Result<(), ConfigError> {
    for h in r.matcher.host.to_vec() {
        let key = (
            h.to_ascii_lowercase(),
            r.matcher.path_prefix.clone(),
            method_key.clone(),
        );
        if let Some(first) = keys.insert(key, i) {
            return Err(dup(
                format!("{path}.match"),
                "match (host, path_prefix, methods)",
                &format!("{h} {}", r.matcher.path_prefix),
                format!("routes[{first}]"),
            ));
        }
    }
    Ok(())
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
    let methods = build_methods(path, &m.methods)?;
    Ok(RouteMatch {
        hosts,
        path_prefix: m.path_prefix.clone(),
        methods,
    })
}
