//! Health, readiness, status, metrics and reload endpoints.

use std::{collections::HashSet, sync::Arc};

use axum::{
    extract::State,
    http::HeaderMap,
    response::{IntoResponse, Response},
};

use super::{auth, json, view, ApiError};
use crate::{
    api,
    drain::machine::Phase,
    services::reload,
    state::{table::Pool, AppState},
};

type St = State<Arc<AppState>>;

#[utoipa::path(get, path = "/healthz", tag = "health",
    responses((status = 200, description = "The process runs", body = api::Alive)))]
/// `GET /healthz`.
pub async fn alive() -> Response {
    json(
        200,
        &api::Alive {
            status: "ok".into(),
        },
    )
}

#[utoipa::path(get, path = "/readyz", tag = "health",
    responses(
        (status = 200, description = "Listeners up, not shutting down", body = api::Ready),
        (status = 503, description = "Not ready: starting, shutting down, or the fleet's state not loaded", body = api::Ready),
    ))]
/// `GET /readyz`.
pub async fn ready(State(state): St) -> Response {
    let loaded = state.fleet.is_loaded();
    if state.process.is_ready() && loaded {
        return json(
            200,
            &api::Ready {
                ready: true,
                reason: None,
            },
        );
    }
    let why = if state.is_shutting_down() {
        "shutting down"
    } else if !loaded {
        "loading the shared state from the control store"
    } else {
        "starting"
    };
    json(
        503,
        &api::Ready {
            ready: false,
            reason: Some(why.into()),
        },
    )
}

/// Why a pool makes the proxy `degraded`, if it does.
fn pool_reason(p: &Pool) -> Option<String> {
    let pool_phase = p.backends.first().map(|b| b.state.pool.drain.phase());
    if let Some(ph) = pool_phase.filter(|ph| *ph != Phase::Active) {
        return Some(format!("pool {} is {}", p.name, ph.as_str()));
    }
    if let Some(b) = p.backends.iter().find(|b| b.state.drain.is_draining()) {
        let phase = b.state.drain.phase();
        return Some(format!("backend {} is {}", b.id, phase.as_str()));
    }
    if p.backends.iter().all(|b| !b.state.available()) {
        return Some(format!("pool {} has no available backend", p.name));
    }
    if p.backends.iter().any(|b| !b.state.healthy()) {
        return Some(format!("pool {} has unhealthy backends", p.name));
    }
    None
}

/// Every served certificate with its files' last reload.
pub fn certificates(state: &AppState) -> Vec<api::CertificateStatus> {
    let mut out = Vec::new();
    for l in state.certs.all() {
        let status = l.status();
        for (i, c) in l.current().certs.iter().enumerate() {
            let s = status.get(i).cloned().unwrap_or_default();
            out.push(api::CertificateStatus {
                listener: l.listener.clone(),
                names: c.info.names.clone(),
                issuer: c.info.issuer.clone(),
                not_before: c.info.not_before,
                not_after: c.info.not_after,
                source: c.source.as_str().to_string(),
                file: l.pairs.get(i).map(|f| f.cert.display().to_string()),
                loaded_at: s.loaded_at,
                last_error: s.last_error,
                reloads_ok: s.reloads_ok,
                reloads_failed: s.reloads_failed,
            });
        }
    }
    out
}

/// Certificates that expire within 7 days (or have), or whose last reload was refused.
fn certificate_reasons(state: &AppState) -> Vec<String> {
    let now = crate::config::unix_now();
    let mut reasons = Vec::new();
    for c in certificates(state) {
        let info = crate::config::tls::CertInfo {
            names: c.names.clone(),
            issuer: c.issuer.clone(),
            not_before: c.not_before,
            not_after: c.not_after,
        };
        // ACME certificates are renewed by tidegate: their trouble is a failing renewal
        // (below), not a short lifetime.
        let expiry =
            (c.source == "file").then(|| crate::config::tls::expiry_warning(&info, now, 7));
        if let Some(w) = expiry.flatten() {
            reasons.push(format!("listener {}: {w}", c.listener));
        }
        if let Some(e) = c.last_error.as_ref().filter(|_| c.source == "file") {
            reasons.push(format!(
                "listener {}: the certificate for {} could not be reloaded ({e}); the old one serves",
                c.listener,
                c.names.join(", ")
            ));
        }
    }
    let now = crate::config::unix_now();
    reasons.extend(state.acme.entries().iter().filter_map(|e| e.trouble(now)));
    reasons
}

#[utoipa::path(get, path = "/health", tag = "health",
    responses(
        (status = 200, description = "`healthy` or `degraded`, with reasons", body = api::Health),
        (status = 503, description = "`unhealthy`: shutting down", body = api::Health),
    ))]
/// `GET /health`: `healthy` | `degraded` (a drain, unhealthy backends, a pool with nothing
/// available, maintenance) | `unhealthy` (shutting down; 503).
// Long: one reason per source of degradation, in the order /health lists them.
pub async fn health(State(state): St) -> Response {
    let table = state.table();
    let mut reasons: Vec<String> = table
        .pools
        .values()
        .filter_map(|p| pool_reason(p))
        .collect();
    if table.maintenance.is_some() {
        reasons.push("maintenance mode is on".to_string());
    }
    reasons.extend(certificate_reasons(&state));
    // The error itself (it may name the database's host and user) is in the status and
    // the log, behind the token: this endpoint answers anyone.
    if let Some(other) = state.fleet.name_taken() {
        reasons.push(format!(
            "another proxy (admin {}) heartbeats under this node name: set control_store.node",
            crate::api::printable(&other)
        ));
    }
    if state.fleet.down().is_some() {
        reasons.push(
            "control store unreachable (serving with the last shared state; changes refused)"
                .into(),
        );
    } else if state.fleet.is_loaded() && state.fleet.is_stale() {
        reasons.push(
            "control store unreachable or too slow: the fleet's heartbeats were not read within the TTL (the other proxies' counts are not known; nothing is answered drained)"
                .into(),
        );
    }
    if state.fleet.regressed().is_some() {
        reasons.push(
            "the control store's state is older than this proxy's (restored from a backup?): kept the live state; see the status and the log"
                .into(),
        );
    }
    let spool = super::spool::depths(&state);
    for d in spool.iter().filter(|d| d.dead > 0) {
        reasons.push(format!(
            "route {} has {} dead spooled requests",
            d.route, d.dead
        ));
    }
    let status = if state.is_shutting_down() {
        api::HealthStatus::Unhealthy
    } else if reasons.is_empty() {
        api::HealthStatus::Healthy
    } else {
        api::HealthStatus::Degraded
    };
    let body = api::Health {
        status,
        reasons,
        uptime_seconds: state.process.started.elapsed().as_secs(),
        generation: table.generation,
        spool,
    };
    let code = if status == api::HealthStatus::Unhealthy {
        503
    } else {
        200
    };
    json(code, &body)
}

#[utoipa::path(get, path = "/metrics", tag = "health",
    responses(
        (status = 200, description = "Prometheus text exposition", content_type = "text/plain; version=0.0.4", body = String),
        (status = 401, description = "`admin.metrics_auth` is on and the token is missing or wrong", body = api::ErrorBody),
    ))]
/// `GET /metrics`.
pub async fn metrics(
    State(state): St,
    State(metrics): State<Arc<crate::metrics::Metrics>>,
    headers: HeaderMap,
) -> Response {
    let spec = state.table().spec.clone();
    if spec.admin.metrics_auth
        && !auth::authorized(
            spec.admin.token.as_ref(),
            headers.get(http::header::AUTHORIZATION),
        )
    {
        return auth::unauthorized();
    }
    let body = metrics.render();
    (
        [(
            http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

fn pool_status(p: &Pool, live: &mut HashSet<String>, overridden: bool) -> api::PoolStatus {
    let backends = p
        .backends
        .iter()
        .map(|b| {
            live.insert(b.id.to_string());
            let mut v = view::backend_status(&b.state, Some(&b.spec.address), Some(b.spec.weight));
            v.file_state = Some(file_state(b.spec.declared_draining));
            v
        })
        .collect();
    let ps = &p.backends[0].state.pool;
    let drain = ps.drain.snapshot();
    api::PoolStatus {
        state: drain.phase().shown(),
        backends_override: overridden,
        file_state: file_state(p.spec.declared_draining),
        in_flight: ps.counts.snapshot(),
        drain_started_at: drain.started_at().map(crate::state::process::unix),
        drained_at: drain.drained_at().map(crate::state::process::unix),
        drain_deadlines: view::deadlines(&drain),
        backends,
    }
}

fn file_state(draining: bool) -> api::FileState {
    if draining {
        api::FileState::Draining
    } else {
        api::FileState::Active
    }
}

/// The whole status: generation, routes and splits, pools, backends, removed-but-busy work.
pub fn status_of(state: &AppState) -> api::Status {
    let table = state.table();
    let routes = table
        .routes
        .iter()
        .filter_map(|r| {
            Some(api::RouteStatus {
                split: view::route_split(state, &r.name)?,
                name: r.name.to_string(),
                matcher: api::RouteMatch {
                    host: r.spec.hosts.clone(),
                    path_prefix: r.spec.path_prefix.clone(),
                    methods: r.spec.methods.clone(),
                },
                retries: r.spec.retries,
                picking: view::picking(r),
            })
        })
        .collect();
    let mut live = HashSet::new();
    let ov = state.overrides();
    let pools = table
        .pools
        .values()
        .map(|p| {
            let o = ov.members.contains_key(&*p.name);
            (p.name.to_string(), pool_status(p, &mut live, o))
        })
        .collect();
    let removed = state
        .registry
        .all()
        .iter()
        .filter(|b| !live.contains(&*b.id) && b.in_flight() > 0)
        .map(|b| {
            let mut v = view::backend_status(b, None, None);
            v.state = api::State::Removed;
            v
        })
        .collect();
    api::Status {
        generation: table.generation,
        ready: state.process.is_ready() && state.fleet.is_loaded(),
        fleet: super::fleet::status(state),
        shutting_down: state.is_shutting_down(),
        in_flight: state.active(),
        routes,
        pools,
        removed,
        maintenance: view::maintenance(&ov.maintenance),
        spool: super::spool::depths(state),
        event_streams: 0,
        certificates: certificates(state),
        acme: acme(state),
        reloads: reloads(state),
    }
}

fn acme(state: &AppState) -> Vec<api::AcmeStatus> {
    let entries = state.acme.entries();
    entries
        .into_iter()
        .map(|e| api::AcmeStatus {
            listener: e.listener,
            names: e.names,
            orders_ok: e.orders_ok,
            orders_failed: e.orders_failed,
            last_error: e.last_error,
            not_after: e.not_after,
            renew_at: e.renew_at,
        })
        .collect()
}

fn reloads(state: &AppState) -> api::Reloads {
    let r = state.process.reloads();
    api::Reloads {
        succeeded: r.succeeded,
        failed: r.failed,
        last_success_unix: r.last_success_unix,
        last_error: r.last_error,
    }
}

#[utoipa::path(get, path = "/api/v1/status", tag = "status",
    responses((status = 200, description = "Routes, splits, pools, backends and work in flight", body = api::Status)))]
/// `GET /api/v1/status`.
pub async fn status(State(state): St, State(streams): State<Arc<super::EventStreams>>) -> Response {
    let mut s = status_of(&state);
    s.event_streams = streams.open();
    json(200, &s)
}

/// `?since=SEQ` of `GET /api/v1/history`.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Since {
    /// Only samples and marks with a larger `seq` (default 0: all kept).
    #[serde(default)]
    #[param(minimum = 0)]
    since: i64,
}

#[utoipa::path(get, path = "/api/v1/history", tag = "status", params(Since),
    responses((status = 200, description = "Samples (2 s) and marks of the last 15 minutes", body = api::History)))]
/// `GET /api/v1/history?since=`: samples and marks newer than `since` (default: all kept).
pub async fn history(
    State(state): St,
    axum::extract::Query(q): axum::extract::Query<Since>,
) -> Result<Response, ApiError> {
    let since =
        u64::try_from(q.since).map_err(|_| ApiError::field("since", "must be 0 or more"))?;
    Ok(json(200, &state.history.since(since)))
}

#[utoipa::path(post, path = "/api/v1/config/reload", tag = "config",
    responses(
        (status = 200, description = "Reloaded: what changed", body = api::Reloaded),
        (status = 422, description = "The file is refused; the running config keeps serving", body = api::ConfigRefused),
    ))]
/// `POST /api/v1/config/reload`.
pub async fn reload(State(state): St) -> Result<Response, ApiError> {
    let st = state.clone();
    // File I/O and DNS resolution: off the admin runtime's async workers.
    let res = tokio::task::spawn_blocking(move || reload::reload(&st))
        .await
        .map_err(|e| ApiError::new(500, "internal", format!("reload task failed: {e}")))?;
    Ok(match res {
        Ok(summary) => {
            tracing::info!(
                generation = summary.generation,
                source = "admin",
                "config reloaded"
            );
            json(
                200,
                &api::Reloaded {
                    reloaded: true,
                    summary,
                },
            )
        }
        Err(e) => {
            tracing::error!(source = "admin", error = %e, "config reload failed; keeping the running config");
            json(
                422,
                &api::ConfigRefused {
                    error: "invalid_config".into(),
                    kind: e.kind().into(),
                    path: e.path().map(str::to_string),
                    message: e.to_string(),
                    status: 422,
                },
            )
        }
    })
}
