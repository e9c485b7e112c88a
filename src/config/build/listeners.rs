//! Listeners (names, addresses, TLS files) and the admin endpoint (address, token).

use super::*;

pub(super) fn build_listeners(file: &[FileListener]) -> Result<Vec<Listener>, ConfigError> {
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

fn parse_socket_addr(path: &str, value: &str) -> Result<SocketAddr, ConfigError> {
    value.parse().map_err(|_| ConfigError::BadAddress {
        path: path.into(),
        value: value.into(),
        reason: "expected IP:PORT, e.g. 0.0.0.0:8080 or [::]:8080".into(),
    })
}

/// Backend addresses may be names (`app:3000` in a compose network): resolved here
/// (preferring IPv4, like most clients do for `localhost`) and again in the background every
/// `resolve_interval`. A name that does not resolve now is not an error: a stopped
/// container's name disappears from Docker's DNS, and a reload must not fail for that. The
/// backend stays unavailable until the name resolves (`Ok(None)`, with a warning).
pub(super) fn resolve_backend(
    path: &str,
    value: &str,
    warnings: &mut Vec<String>,
) -> Result<Option<SocketAddr>, ConfigError> {
    if let Ok(a) = value.parse::<SocketAddr>() {
        return check_port(path, value, a).map(Some);
    }
    let bad = |reason: String| ConfigError::BadAddress {
        path: path.into(),
        value: value.into(),
        reason,
    };
    let Some((host, port)) = value.rsplit_once(':') else {
        return Err(bad("expected HOST:PORT".into()));
    };
    let host_ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
    if !host_ok || !matches!(port.parse::<u16>(), Ok(p) if p > 0) {
        return Err(bad("expected HOST:PORT with a port in 1..=65535".into()));
    }
    match lookup(value) {
        Some(a) => Ok(Some(a)),
        None => {
            warnings.push(format!(
                "{path}: {value:?} does not resolve now; the backend is unavailable until it does"
            ));
            Ok(None)
        }
    }
}

/// Resolve `HOST:PORT` (IPv4 preferred). Blocking.
pub fn lookup(value: &str) -> Option<SocketAddr> {
    let addrs: Vec<SocketAddr> = value.to_socket_addrs().ok()?.collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
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
        std::fs::metadata(p).map_err(|e| {
            tls_err(
                sub,
                format!("cannot read {}: {}", p.display(), io_reason(&e)),
            )
        })?;
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

pub(super) fn build_admin(
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
    let allowed_hosts = build_allowed_hosts(&a.allowed_hosts)?;
    Ok(Admin {
        addr,
        token,
        metrics_auth: a.metrics_auth,
        allowed_hosts,
    })
}

/// `admin.allowed_hosts`: host names, lowercased, without a trailing dot.
fn build_allowed_hosts(hosts: &[String]) -> Result<Vec<String>, ConfigError> {
    let mut allowed_hosts = Vec::new();
    for (i, h) in hosts.iter().enumerate() {
        let name = h.trim().trim_end_matches('.').to_ascii_lowercase();
        let valid = !name.is_empty()
            && name.len() <= 253
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
        if !valid {
            return Err(invalid(
                format!("admin.allowed_hosts[{i}]"),
                format!(
                    "{h:?} is not a host name (letters, digits, '-' and '.'; no port, no scheme)"
                ),
            ));
        }
        allowed_hosts.push(name);
    }
    Ok(allowed_hosts)
}

/// An I/O error as a person reads it: "no such file or directory", without "(os error 2)".
pub(super) fn io_reason(e: &std::io::Error) -> String {
    let s = e.to_string();
    let s = match s.find(" (os error") {
        Some(i) => &s[..i],
        None => &s,
    };
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_lowercase().chain(c).collect(),
        None => String::new(),
    }
}
