//! Pools: backends (addresses, weights, registry state) and health checks.

use super::{listeners::resolve_backend, *};

pub(super) fn build_pools(
    file: &BTreeMap<String, FilePool>,
    io: &Inputs,
    warnings: &mut Vec<String>,
) -> Result<BTreeMap<Arc<str>, Arc<PoolSpec>>, ConfigError> {
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
        let backends = build_backends(&path, &p.backends, io, warnings)?;
        let health_check = match &p.health_check {
            Some(h) => Some(build_health_check(&format!("{path}.health_check"), h)?),
            None => None,
        };
        let upstream = super::upstream::build_upstream(&path, p, io, warnings)?;
        if health_check.as_ref().is_some_and(|h| h.grpc.is_some())
            && upstream.protocol == crate::config::upstream::Protocol::Http1
        {
            return Err(invalid(
                format!("{path}.health_check.grpc"),
                "gRPC health checks need an HTTP/2 pool (protocol: h2c, h2 or auto)",
            ));
        }
        let name: Arc<str> = pname.as_str().into();
        pools.insert(
            name.clone(),
            Arc::new(PoolSpec {
                name,
                backends,
                drain: DrainSettings {
                    requests_deadline: p.drain.requests_deadline.non_zero(),
                    streams_deadline: p.drain.streams_deadline.non_zero(),
                    close_spread: p.drain.close_spread.0,
                },
                health_check,
                passive: build_passive(&format!("{path}.passive_health"), &p.passive_health)?,
                slow_start: p.slow_start.non_zero(),
                declared_draining: p.state == FileState::Draining,
                upstream,
            }),
        );
    }
    Ok(pools)
}

/// `pools.NAME.backends`: addresses, unique names, weights in range.
pub(super) fn build_backends(
    path: &str,
    file: &[FileBackend],
    io: &Inputs,
    warnings: &mut Vec<String>,
) -> Result<Vec<BackendSpec>, ConfigError> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut backends = Vec::with_capacity(file.len());
    for (i, b) in file.iter().enumerate() {
        let bpath = format!("{path}.backends[{i}]");
        let addr = resolve_backend(&format!("{bpath}.address"), &b.address, io, warnings)?;
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
        backends.push(BackendSpec {
            name: name.as_str().into(),
            address: b.address.clone(),
            addr,
            // In range checked above.
            weight: b.weight as u32,
            declared_draining: b.state == FileState::Draining,
        });
    }
    Ok(backends)
}

fn build_passive(path: &str, p: &FilePassiveHealth) -> Result<PassiveHealth, ConfigError> {
    if !(1..=100).contains(&p.fall) {
        return Err(ConfigError::OutOfRange {
            path: format!("{path}.fall"),
            value: p.fall.into(),
            min: 1,
            max: 100,
        });
    }
    for (k, d) in [
        ("probe_interval", p.probe_interval),
        ("probe_max_interval", p.probe_max_interval),
    ] {
        if d.0 < std::time::Duration::from_millis(10) {
            return Err(invalid(format!("{path}.{k}"), "must be at least 10ms"));
        }
    }
    if p.probe_max_interval.0 < p.probe_interval.0 {
        return Err(invalid(
            format!("{path}.probe_max_interval"),
            "must not be shorter than probe_interval",
        ));
    }
    Ok(PassiveHealth {
        fall: p.fall,
        probe_interval: p.probe_interval.0,
        probe_max_interval: p.probe_max_interval.0,
    })
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
    if h.grpc_service.len() > 127 {
        return Err(invalid(format!("{path}.grpc_service"), "at most 127 bytes"));
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
        grpc: h.grpc.then(|| h.grpc_service.clone()),
    })
}
