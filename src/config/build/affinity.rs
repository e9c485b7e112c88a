//! `routes[i].affinity` and `routes[i].force_pool`: key source, cookie name and lifetime,
//! forced pools (each in the route's split).

use std::time::Duration;

use super::*;

/// Default cookie name of `affinity.key: cookie`.
pub const DEFAULT_COOKIE: &str = "tidegate_affinity";
/// Default lifetime of the affinity cookie.
const DEFAULT_MAX_AGE: Duration = Duration::from_secs(24 * 3600);
/// The longest duration the config takes (browsers cap cookies at 400 days anyway).
const MAX_MAX_AGE: Duration = Duration::from_secs(365 * 24 * 3600);

/// A route's `affinity` and `force_pool`.
pub(super) fn build_picking(
    path: &str,
    r: &FileRoute,
    split: &[(Arc<str>, u32)],
    io: &Inputs,
) -> Result<(Option<AffinitySpec>, Option<ForcePoolSpec>), ConfigError> {
    let affinity = r
        .affinity
        .as_ref()
        .map(|f| build_affinity(&format!("{path}.affinity"), f))
        .transpose()?;
    let force_pool = r
        .force_pool
        .as_ref()
        .map(|f| build_force_pool(&format!("{path}.force_pool"), f, split, io))
        .transpose()?;
    Ok((affinity, force_pool))
}

fn build_affinity(path: &str, f: &FileAffinity) -> Result<AffinitySpec, ConfigError> {
    let only = |field: &str, set: bool, key: &str| {
        if set {
            Err(invalid(
                format!("{path}.{field}"),
                format!("only used with key: {key}"),
            ))
        } else {
            Ok(())
        }
    };
    let key = match f.key {
        FileAffinityKey::Cookie => {
            only("header", f.header.is_some(), "header")?;
            let name = f.cookie.clone().unwrap_or_else(|| DEFAULT_COOKIE.into());
            cookie_name(&format!("{path}.cookie"), &name)?;
            let max_age = f.max_age.map_or(DEFAULT_MAX_AGE, |d| d.0);
            if max_age < Duration::from_secs(1) || max_age > MAX_MAX_AGE {
                return Err(invalid(
                    format!("{path}.max_age"),
                    "must be between 1s and 365 days",
                ));
            }
            AffinityKey::Cookie { name, max_age }
        }
        FileAffinityKey::Header => {
            only("cookie", f.cookie.is_some(), "cookie")?;
            only("max_age", f.max_age.is_some(), "cookie")?;
            let Some(h) = &f.header else {
                return Err(invalid(
                    format!("{path}.header"),
                    "key: header needs the header's name",
                ));
            };
            AffinityKey::Header(header_name(&format!("{path}.header"), h)?)
        }
        FileAffinityKey::ClientIp => {
            only("cookie", f.cookie.is_some(), "cookie")?;
            only("header", f.header.is_some(), "header")?;
            only("max_age", f.max_age.is_some(), "cookie")?;
            AffinityKey::ClientIp
        }
    };
    Ok(AffinitySpec {
        key,
        sticky_backends: f.scope == FileAffinityScope::Backend,
    })
}

fn build_force_pool(
    path: &str,
    f: &FileForcePool,
    split: &[(Arc<str>, u32)],
    io: &Inputs,
) -> Result<ForcePoolSpec, ConfigError> {
    let from = force_from(path, f)?;
    if f.pools.is_empty() {
        return Err(ConfigError::Empty {
            path: format!("{path}.pools"),
            what: "name the pools that may be forced",
        });
    }
    let mut pools: Vec<Arc<str>> = Vec::new();
    for (i, p) in f.pools.iter().enumerate() {
        let Some((name, _)) = split.iter().find(|(n, _)| **n == **p) else {
            return Err(invalid(
                format!("{path}.pools[{i}]"),
                format!("pool {p:?} is not in the route's split (list it there, weight 0 is fine)"),
            ));
        };
        if !pools.contains(name) {
            pools.push(name.clone());
        }
    }
    let (secret, clients) = force_guard(path, f, io)?;
    Ok(ForcePoolSpec {
        from,
        pools,
        refuse: f.fallback == FileForceFallback::Refuse,
        secret,
        clients,
    })
}

/// Where a forced pool's name is read: exactly one of `header` or `cookie`.
fn force_from(path: &str, f: &FileForcePool) -> Result<ForceFrom, ConfigError> {
    Ok(match (&f.header, &f.cookie) {
        (Some(h), None) => ForceFrom::Header(header_name(&format!("{path}.header"), h)?),
        (None, Some(c)) => {
            cookie_name(&format!("{path}.cookie"), c)?;
            ForceFrom::Cookie(c.clone())
        }
        _ => {
            return Err(invalid(
                path,
                "set exactly one of header or cookie (where the pool's name is read)",
            ))
        }
    })
}

/// Who may force: `secret_env`/`secret_file` and `clients`.
fn force_guard(
    path: &str,
    f: &FileForcePool,
    io: &Inputs,
) -> Result<(Option<Secret>, Vec<ipnet::IpNet>), ConfigError> {
    // Fail closed: a secret that is named but missing refuses the config.
    let secret = listeners::read_secret(
        &format!("{path}.secret"),
        f.secret_env.as_deref(),
        f.secret_file.as_deref(),
        io,
    )?
    .map(|s| {
        s.ok_or_else(|| {
            invalid(
                format!("{path}.secret_env"),
                "the variable is not set or empty",
            )
        })
    })
    .transpose()?;
    let clients = f
        .clients
        .iter()
        .enumerate()
        .map(|(i, c)| client_net(&format!("{path}.clients[{i}]"), c))
        .collect::<Result<_, _>>()?;
    Ok((secret, clients))
}

/// `10.0.0.0/8`, `2001:db8::/32`, or one address.
fn client_net(path: &str, c: &str) -> Result<ipnet::IpNet, ConfigError> {
    let c = c.trim();
    c.parse::<ipnet::IpNet>()
        .or_else(|_| c.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map(|n| n.trunc())
        .map_err(|_| invalid(path, format!("{c:?} is not an IP address or CIDR block")))
}

fn header_name(path: &str, h: &str) -> Result<http::HeaderName, ConfigError> {
    http::HeaderName::from_bytes(h.trim().as_bytes())
        .map_err(|_| invalid(path, format!("invalid header name {h:?}")))
}

/// RFC 6265 cookie-name: a token (letters, digits and ``!#$%&'*+-.^_`|~``).
fn cookie_name(path: &str, name: &str) -> Result<(), ConfigError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(invalid(
            path,
            format!("invalid cookie name {name:?}: letters, digits and -._~!#$%&'*+^`| only"),
        ))
    }
}
