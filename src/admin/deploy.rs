//! Deploy support: `PUT /api/v1/routes/{route}/checkpoint` records the route's split, which of
//! its pools are active and their runtime members (saved in `state_file`);
//! `POST /api/v1/routes/{route}/rollback` puts all of that back: the pools that were active
//! are undrained, those that were drained are drained again. `tidegate deploy` takes the checkpoint, `tidegate rollback` restores it.

use std::sync::Arc;

use axum::{
    extract::{Path, State},
    response::Response,
};

use super::{json, view, ApiError};
use crate::{
    api::{self, Checkpoint},
    drain::machine::Phase,
    services::{drains, persist},
    state::{process::unix_now, AppState},
};

type St = State<Arc<AppState>>;

#[utoipa::path(put, path = "/api/v1/routes/{route}/checkpoint", tag = "routes", params(("route" = String, Path, description = "A route of the config")),
    responses((status = 200, description = "What a rollback will restore", body = api::Checkpoint), (status = 404, description = "No such route", body = api::ErrorBody)))]
/// `PUT /api/v1/routes/{route}/checkpoint`.
pub async fn checkpoint(State(s): St, Path(route): Path<String>) -> Result<Response, ApiError> {
    let split = view::route_split(&s, &route)
        .ok_or_else(|| ApiError::new(404, "unknown_route", format!("no route named {route:?}")))?;
    let ov = s.overrides();
    let active_pools = split
        .split
        .keys()
        .filter(|p| s.registry.pool(p).drain.phase() == Phase::Active)
        .cloned()
        .collect();
    let members = split
        .split
        .keys()
        .map(|p| (p.clone(), ov.backends.get(p).cloned()))
        .collect();
    let cp = Checkpoint {
        route: route.clone(),
        split: split.split,
        split_overridden: split.overridden,
        active_pools,
        members,
        taken_at: unix_now(),
    };
    let saved = cp.clone();
    s.change_overrides(|ov, _| {
        ov.checkpoints.insert(route.clone(), saved);
        Ok::<(), ApiError>(())
    })?;
    persist::save(&s);
    tracing::info!(route, split = ?cp.split, "deploy checkpoint recorded");
    Ok(json(200, &cp))
}

#[utoipa::path(post, path = "/api/v1/routes/{route}/rollback", tag = "routes", params(("route" = String, Path, description = "A route of the config")),
    responses(
        (status = 200, description = "The checkpoint's split, members and pool states are back", body = api::RouteSplit),
        (status = 409, description = "No checkpoint, or its members no longer valid", body = api::ErrorBody),
        (status = 404, description = "No such route", body = api::ErrorBody),
    ))]
/// `POST /api/v1/routes/{route}/rollback`.
pub async fn rollback(State(s): St, Path(route): Path<String>) -> Result<Response, ApiError> {
    let cp = s
        .overrides()
        .checkpoints
        .get(&route)
        .cloned()
        .ok_or_else(|| {
            ApiError::new(
                409,
                "conflict",
                format!("no deploy of {route:?} to roll back"),
            )
        })?;
    s.ramps.cancel(&route, "rolled back to the checkpoint");
    // Members first (validated again), so the split and undrains land on them.
    let mut members = Vec::new();
    for (pool, entries) in &cp.members {
        let resolved = match entries {
            Some(e) => Some(
                crate::config::build::runtime_backends(pool, e)
                    .map_err(|err| ApiError::new(409, "conflict", err.to_string()))?,
            ),
            None => None,
        };
        members.push((pool.clone(), entries.clone(), resolved));
    }
    s.change_overrides(|ov, _| {
        for (pool, entries, resolved) in members {
            match (entries, resolved) {
                (Some(e), Some(r)) => {
                    ov.backends.insert(pool.clone(), e);
                    ov.members.insert(pool, r);
                }
                _ => {
                    ov.backends.remove(&pool);
                    ov.members.remove(&pool);
                }
            }
        }
        if cp.split_overridden {
            ov.splits.insert(route.clone(), cp.split.clone());
        } else {
            ov.splits.remove(&route);
        }
        ov.checkpoints.remove(&route);
        Ok::<(), ApiError>(())
    })?;
    restore_pool_states(&s, &route, &cp);
    persist::save(&s);
    tracing::info!(route, split = ?cp.split, "rolled back to the deploy checkpoint");
    let v = view::route_split(&s, &route)
        .ok_or_else(|| ApiError::new(404, "unknown_route", format!("no route named {route:?}")))?;
    Ok(json(200, &v))
}

/// Pools back to how the checkpoint found them: active ones undrained, drained ones drained
/// again (with the pool's own deadlines).
fn restore_pool_states(s: &AppState, route: &str, cp: &Checkpoint) {
    for pool in cp.split.keys() {
        let Ok(r) = drains::resolve(s, pool, None) else {
            continue;
        };
        let was_active = cp.active_pools.contains(pool);
        let active = r.cell().phase() == Phase::Active;
        if was_active && !active {
            let _ = drains::undrain(s, &r);
        } else if !was_active && active {
            // Drained before the deploy (the deploy undrained it): drained again, with the
            // pool's own deadlines.
            let d = drains::deadlines(&r, &Default::default());
            match d
                .map_err(|e| e.to_string())
                .and_then(|d| drains::start(s, &r, d).map_err(|e| e.to_string()))
            {
                Ok(()) => {
                    tracing::info!(route, pool, "rollback: drained again, as before the deploy")
                }
                Err(e) => {
                    tracing::warn!(route, pool, error = %e, "rollback: cannot drain the pool again")
                }
            }
        }
    }
}
