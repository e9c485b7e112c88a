//! Drain endpoints: `POST …/drain`, `POST …/undrain`, `GET …/drain`, `GET …/drain/wait`,
//! for `/api/v1/pools/{pool}` and `/api/v1/pools/{pool}/backends/{backend}`.

use std::{sync::Arc, time::Duration};

use hyper::Method;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{json, AdminResponse, ApiError};
use crate::{
    config::{duration::HumanDuration, runtime::DrainSettings},
    drain::{
        enforce::{self, Target},
        machine::{Deadlines, Phase},
        view,
    },
    state::{
        backend::{BackendState, DrainCell, PoolState},
        AppState,
    },
};

/// Longest accepted deadline in a drain request.
const MAX_DEADLINE: Duration = Duration::from_secs(7 * 24 * 3600);
/// Longest a single long-poll may block.
pub const MAX_WAIT: Duration = Duration::from_secs(600);

/// Body of `POST …/drain`. Every field optional; absent = the pool's configured value.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DrainBody {
    requests_deadline: Option<String>,
    streams_deadline: Option<String>,
    close_spread: Option<String>,
}

/// A resolved drain target: a pool, or one backend of it.
pub struct Resolved {
    target: Target,
    pool: Arc<PoolState>,
    backend: Option<Arc<BackendState>>,
    defaults: Option<DrainSettings>,
    removed: bool,
}

impl Resolved {
    fn cell(&self) -> &DrainCell {
        match &self.backend {
            Some(b) => &b.drain,
            None => &self.pool.drain,
        }
    }

    fn in_flight(&self) -> u64 {
        match &self.backend {
            Some(b) => b.counts.total(),
            None => self.pool.counts.total(),
        }
    }

    fn label(&self) -> String {
        match &self.backend {
            Some(b) => b.id.to_string(),
            None => self.pool.name.to_string(),
        }
    }

    fn status(&self, state: &AppState) -> Value {
        let backends = self.target.backends(&state.registry);
        let counts = match &self.backend {
            Some(b) => b.counts.snapshot(),
            None => self.pool.counts.snapshot(),
        };
        self.cell().observe(self.in_flight());
        let mut v = view::status(&self.cell().snapshot(), counts, &backends, self.removed);
        v["pool"] = json!(&*self.pool.name);
        if let Some(b) = &self.backend {
            v["backend"] = json!(&*b.id);
            v["pool_state"] = json!(self.pool.drain.phase().as_str());
        }
        v
    }
}

/// Resolve `pool` (and `backend`) against the config, or the registry for removed ones.
pub fn resolve(state: &AppState, pool: &str, backend: Option<&str>) -> Result<Resolved, ApiError> {
    let cfg = state.config();
    let in_cfg = cfg.pools.get(pool).cloned();
    let known = state
        .registry
        .pools()
        .into_iter()
        .find(|p| &*p.name == pool);
    let pool_state = match (&in_cfg, known) {
        (_, Some(p)) => p,
        (Some(_), None) => state.registry.pool(pool),
        (None, None) => {
            return Err(ApiError::new(
                404,
                "unknown_pool",
                format!("no pool named {pool:?}"),
            ))
        }
    };
    let defaults = in_cfg.as_ref().map(|p| p.drain.clone());
    let Some(bname) = backend else {
        return Ok(Resolved {
            target: Target::Pool(pool_state.name.clone()),
            pool: pool_state,
            backend: None,
            defaults,
            removed: in_cfg.is_none(),
        });
    };
    let from_cfg = in_cfg
        .as_ref()
        .and_then(|p| p.backends.iter().find(|b| &*b.name == bname))
        .map(|b| b.state.clone());
    let id = format!("{pool}/{bname}");
    let b = match from_cfg.clone() {
        Some(b) => b,
        None => state
            .registry
            .all()
            .into_iter()
            .find(|b| *b.id == *id)
            .ok_or_else(|| {
                ApiError::new(
                    404,
                    "unknown_backend",
                    format!("no backend {bname:?} in pool {pool:?}"),
                )
            })?,
    };
    Ok(Resolved {
        target: Target::Backend(b.clone()),
        pool: pool_state,
        backend: Some(b),
        defaults,
        removed: from_cfg.is_none(),
    })
}

/// Dispatch `rest` = `drain`, `undrain` or `drain/wait` for a resolved target.
pub async fn handle(
    state: &Arc<AppState>,
    method: &Method,
    r: Resolved,
    rest: &str,
    query: Option<&str>,
    body: &[u8],
) -> AdminResponse {
    let res = match (method, rest) {
        (&Method::POST, "drain") => start(state, &r, body),
        (&Method::GET, "drain") => Ok(json(200, &r.status(state))),
        (&Method::POST, "undrain") => undrain(state, &r),
        (&Method::GET, "drain/wait") => wait(state, &r, query).await,
        (_, "drain") => return super::routes::not_allowed(&[Method::GET, Method::POST]),
        (_, "undrain") => return super::routes::not_allowed(&[Method::POST]),
        (_, "drain/wait") => return super::routes::not_allowed(&[Method::GET]),
        _ => Err(ApiError::new(404, "not_found", "unknown drain endpoint")),
    };
    res.unwrap_or_else(|e| e.response())
}

fn parse_duration(field: &'static str, v: &Option<String>) -> Result<Option<Duration>, ApiError> {
    let Some(s) = v else { return Ok(None) };
    let d = HumanDuration::parse(s).map_err(|e| ApiError::field(field, &e))?;
    if d.0 > MAX_DEADLINE {
        return Err(ApiError::field(
            field,
            &format!("{s:?} is longer than the 7-day maximum"),
        ));
    }
    Ok(Some(d.0))
}

/// Deadlines from the request body, falling back to the pool's configured ones.
fn drain_deadlines(r: &Resolved, body: &[u8]) -> Result<Deadlines, ApiError> {
    let req: DrainBody = if body.iter().all(u8::is_ascii_whitespace) {
        DrainBody::default()
    } else {
        serde_json::from_slice(body)
            .map_err(|e| ApiError::field("body", &format!("invalid JSON: {e}")))?
    };
    let defaults = r.defaults.clone().unwrap_or(DrainSettings {
        requests_deadline: None,
        streams_deadline: None,
        close_spread: Duration::ZERO,
    });
    // An explicit "0" means "wait forever"; an absent field means the pool's setting.
    let pick = |field: &'static str, v: &Option<String>, default: Option<Duration>| {
        parse_duration(field, v).map(|d| match d {
            Some(d) if d.is_zero() => None,
            Some(d) => Some(d),
            None => default,
        })
    };
    Ok(Deadlines {
        requests: pick(
            "requests_deadline",
            &req.requests_deadline,
            defaults.requests_deadline,
        )?,
        streams: pick(
            "streams_deadline",
            &req.streams_deadline,
            defaults.streams_deadline,
        )?,
        close_spread: parse_duration("close_spread", &req.close_spread)?
            .unwrap_or(defaults.close_spread),
    })
}

fn start(state: &Arc<AppState>, r: &Resolved, body: &[u8]) -> Result<AdminResponse, ApiError> {
    if r.removed {
        return Err(ApiError::new(
            409,
            "removed",
            "it is no longer in the config; it disappears once idle",
        ));
    }
    let deadlines = drain_deadlines(r, body)?;
    match r.cell().start(deadlines, r.in_flight()) {
        Ok(epoch) => {
            enforce::spawn(r.target.clone(), state.registry.clone(), epoch);
            tracing::info!(drain = %r.label(), in_flight = r.in_flight(), "drain started");
            state
                .ramps
                .cancel_for_pool(&r.pool.name, &format!("pool {} was drained", r.pool.name));
            state.persist();
            Ok(json(202, &r.status(state)))
        }
        Err(e) => Ok(conflict(state, r, &e.to_string())),
    }
}

fn undrain(state: &Arc<AppState>, r: &Resolved) -> Result<AdminResponse, ApiError> {
    match r.cell().undrain() {
        Ok(()) => {
            tracing::info!(drain = %r.label(), "undrained");
            for b in r.target.backends(&state.registry) {
                b.mark_available_now();
            }
            state
                .ramps
                .cancel_for_pool(&r.pool.name, &format!("pool {} was undrained", r.pool.name));
            state.persist();
            state.availability_changed();
            Ok(json(200, &r.status(state)))
        }
        Err(e) => Ok(conflict(state, r, &e.to_string())),
    }
}

/// 409 with the current status, so a caller can see why.
fn conflict(state: &AppState, r: &Resolved, message: &str) -> AdminResponse {
    let mut v = r.status(state);
    v["error"] = json!("conflict");
    v["message"] = json!(message);
    v["status"] = json!(409);
    json(409, &v)
}

/// `?timeout=60s` (or bare seconds), capped at [`MAX_WAIT`]; default 30 s.
fn wait_timeout(query: Option<&str>) -> Result<Duration, ApiError> {
    let raw = query.and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("timeout=")));
    let Some(raw) = raw else {
        return Ok(Duration::from_secs(30));
    };
    let d = match raw.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => {
            HumanDuration::parse(raw)
                .map_err(|e| ApiError::field("timeout", &e))?
                .0
        }
    };
    Ok(d.min(MAX_WAIT))
}

async fn wait(
    state: &Arc<AppState>,
    r: &Resolved,
    query: Option<&str>,
) -> Result<AdminResponse, ApiError> {
    let timeout = wait_timeout(query)?;
    let started = tokio::time::Instant::now();
    let deadline = started + timeout;
    loop {
        // Register interest before checking, so a transition between the check and the
        // await is not missed.
        let changed = r.cell().changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        r.cell().observe(r.in_flight());
        let removed_idle = r.removed && r.in_flight() == 0;
        if r.cell().phase() != Phase::Draining || removed_idle {
            break;
        }
        tokio::select! {
            _ = &mut changed => {}
            _ = tokio::time::sleep_until(deadline) => break,
        }
    }
    let mut v = r.status(state);
    v["waited_seconds"] = json!(started.elapsed().as_secs_f64());
    Ok(json(200, &v))
}
