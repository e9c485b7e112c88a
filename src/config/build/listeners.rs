//! Listeners (names, addresses, TLS certificates, redirects) and the admin endpoint
//! (address, token). Files and names are read only through the injected [`Inputs`].

use super::*;

pub(super) fn build_listeners(
    config: &FileConfig,
    io: &Inputs,
    warnings: &mut Vec<String>,
) -> Result<Vec<Listener>, ConfigError> {
    let file = &config.listeners;
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
                let state = config.state_file.as_deref();
                Some(build_listener_tls(&path, l, t, state, io, warnings)?)
            }
            None => None,
        };
        out.push(Listener {
            name: l.name.clone(),
            addr,
            h2c: l.h2c,
            redirect_https: build_redirect(&path, l, tls.is_some())?,
            tls,
        });
    }
    check_http01(&out)?;
    Ok(out)
}

/// ACME HTTP-01 is answered on a plain listener: one must exist.
fn check_http01(listeners: &[Listener]) -> Result<(), ConfigError> {
    if listeners.iter().any(|l| l.tls.is_none()) {
        return Ok(());
    }
    let http01 = listeners.iter().position(|l| {
        let acme = l.tls.as_ref().and_then(|t| t.acme.as_ref());
        acme.is_some_and(|a| a.challenge == AcmeChallenge::Http01)
    });
    match http01 {
        Some(i) => Err(invalid(
            format!("listeners[{i}].tls.acme.challenge"),
            "http-01 is answered on a plain listener (port 80 for public CAs): add one, or use tls-alpn-01",
        )),
        None => Ok(()),
    }
}

/// TLS-ALPN-01 with the fleet's shared ACME store (the PostgreSQL `spool_store`): the CA
/// may validate any proxy behind the name, and only the ordering proxy holds the challenge
/// certificate (it is made per order and answered before the handshake). Refused rather
/// than left to fail at every renewal; HTTP-01 tokens are shared through the store.
pub(super) fn check_alpn_in_a_fleet(
    listeners: &[Listener],
    store: &Option<crate::config::spec::SpoolStore>,
) -> Result<(), ConfigError> {
    if !matches!(store, Some(crate::config::spec::SpoolStore::Postgres(_))) {
        return Ok(());
    }
    let alpn = listeners.iter().position(|l| {
        let acme = l.tls.as_ref().and_then(|t| t.acme.as_ref());
        acme.is_some_and(|a| a.challenge == AcmeChallenge::TlsAlpn01)
    });
    match alpn {
        Some(i) => Err(invalid(
            format!("listeners[{i}].tls.acme.challenge"),
            "tls-alpn-01 cannot be answered by a fleet sharing its ACME store (spool_store: postgres): the CA may validate another proxy, which has no challenge certificate; use http-01, whose tokens the fleet shares",
        )),
        None => Ok(()),
    }
}

/// `redirect_https` and `https_port`: only on plain listeners.
fn build_redirect(
    path: &str,
    l: &FileListener,
    tls: bool,
) -> Result<Option<Option<u16>>, ConfigError> {
    if l.https_port == Some(0) {
        return Err(invalid(format!("{path}.https_port"), "must be 1..=65535"));
    }
    match (l.redirect_https, tls) {
        (true, true) => Err(invalid(
            format!("{path}.redirect_https"),
            "is for plain listeners (this one serves TLS already)",
        )),
        (true, false) => Ok(Some(l.https_port)),
        (false, _) => Ok(None),
    }
}

/// `listeners[i].tls`: every pair loaded and checked (as the listener will load it), an
/// expiry within 14 days warned about, the HSTS value built.
fn build_listener_tls(
    path: &str,
    l: &FileListener,
    t: &FileTls,
    state_file: Option<&Path>,
    io: &Inputs,
    warnings: &mut Vec<String>,
) -> Result<ListenerTls, ConfigError> {
    let path = format!("{path}.tls");
    if l.h2c {
        return Err(invalid(
            path.replace(".tls", ".h2c"),
            "h2c is for plain listeners; TLS listeners offer h2 through ALPN",
        ));
    }
    let mut pairs = Vec::new();
    match (&t.cert, &t.key) {
        (Some(cert), Some(key)) => pairs.push((
            path.clone(),
            TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
            },
        )),
        (Some(_), None) => return Err(tls_err(&path, "key", "cert needs key".into())),
        (None, Some(_)) => return Err(tls_err(&path, "cert", "key needs cert".into())),
        (None, None) => {}
    }
    for (j, p) in t.certificates.iter().enumerate() {
        let files = TlsFiles {
            cert: p.cert.clone(),
            key: p.key.clone(),
        };
        pairs.push((format!("{path}.certificates[{j}]"), files));
    }
    let acme = t
        .acme
        .as_ref()
        .map(|a| super::acme::build_acme(&path, a, state_file, io))
        .transpose()?;
    if pairs.is_empty() && acme.is_none() {
        return Err(tls_err(
            &path,
            "cert",
            "a TLS listener needs cert and key (or certificates, or acme)".into(),
        ));
    }
    for (ppath, files) in &pairs {
        let info = check_pair(ppath, files, io)?;
        if let Some(w) = crate::config::tls::expiry_warning(&info, io.now, 14) {
            warnings.push(format!("{ppath}: {w} ({})", files.cert.display()));
        }
    }
    Ok(ListenerTls {
        pairs: pairs.into_iter().map(|(_, f)| f).collect(),
        hsts: t.hsts.as_ref().map(|h| hsts_value(&path, h)).transpose()?,
        acme,
    })
}

fn hsts_value(path: &str, h: &FileHsts) -> Result<String, ConfigError> {
    let secs = h.max_age.0.as_secs();
    if h.preload && (!h.include_subdomains || secs < 365 * 86_400) {
        return Err(invalid(
            format!("{path}.hsts.preload"),
            "preload lists require include_subdomains: true and max_age of at least 365d",
        ));
    }
    let mut v = format!("max-age={secs}");
    if h.include_subdomains {
        v.push_str("; includeSubDomains");
    }
    if h.preload {
        v.push_str("; preload");
    }
    Ok(v)
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
    io: &Inputs,
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
    match (io.lookup)(value) {
        Some(a) => Ok(Some(a)),
        None => {
            warnings.push(format!(
                "{path}: {value:?} does not resolve now; the backend is unavailable until it does"
            ));
            Ok(None)
        }
    }
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

fn tls_err(path: &str, sub: &str, message: String) -> ConfigError {
    ConfigError::Tls {
        path: format!("{path}.{sub}"),
        message,
    }
}

/// Read and load one pair the way the listener will; what the certificate says.
fn check_pair(
    path: &str,
    f: &TlsFiles,
    io: &Inputs,
) -> Result<crate::config::tls::CertInfo, ConfigError> {
    let read = |sub: &str, p: &Path| {
        (io.read)(p).map_err(|e| {
            tls_err(
                path,
                sub,
                format!("cannot read {}: {}", p.display(), io_reason(&e)),
            )
        })
    };
    let (cert, key) = (read("cert", &f.cert)?, read("key", &f.key)?);
    let (_, info) = crate::config::tls::load_pair(&cert, &key).map_err(|m| {
        let sub = if m.starts_with("cert:") {
            "cert"
        } else {
            "key"
        };
        tls_err(path, sub, m)
    })?;
    Ok(info)
}

pub(super) fn build_admin(
    a: &FileAdmin,
    io: &Inputs,
    warnings: &mut Vec<String>,
) -> Result<Admin, ConfigError> {
    let addr = parse_socket_addr("admin.address", &a.address)?;
    let token = match read_secret(
        "admin.token",
        a.token_env.as_deref(),
        a.token_file.as_deref(),
        io,
    )? {
        Some(Some(t)) => Some(t),
        Some(None) => {
            let var = a.token_env.as_deref().unwrap_or_default();
            warnings.push(format!("admin.token_env: environment variable {var} is not set or empty; the admin API has no token"));
            None
        }
        None => None,
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
/// A secret from `{key}_env` (an environment variable) or `{key}_file`: `None` when neither
/// is set, `Some(None)` for a variable that is unset or empty (the caller decides), an error
/// for both, or a file that cannot be read or is empty.
pub(super) fn read_secret(
    key: &str,
    env: Option<&str>,
    file: Option<&Path>,
    io: &Inputs,
) -> Result<Option<Option<Secret>>, ConfigError> {
    match (env, file) {
        (Some(_), Some(_)) => Err(invalid(
            key,
            format!("set {key}_env or {key}_file, not both"),
        )),
        (Some(var), None) => Ok(Some(
            (io.env)(var)
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty())
                .map(Secret),
        )),
        (None, Some(f)) => {
            let path = format!("{key}_file");
            let t = read_text(io, f).map_err(|e| ConfigError::Security {
                path: path.clone(),
                message: format!("{}: {}", f.display(), io_reason(&e)),
            })?;
            let t = t.trim().to_string();
            if t.is_empty() {
                return Err(ConfigError::Security {
                    path,
                    message: format!("{} is empty", f.display()),
                });
            }
            Ok(Some(Some(Secret(t))))
        }
        (None, None) => Ok(None),
    }
}

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
