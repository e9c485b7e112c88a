//! Runtime members of a pool: `GET|PUT|DELETE /api/v1/pools/{pool}/backends`. A `PUT` is
//! validated like the file (addresses resolved, names unique, weights 1..=1000), saved in
//! `state_file`, and survives reloads and restarts; `DELETE` returns to the file's members.
//! A member removed this way with work in flight is `removed` until idle.

use std::sync::Arc;

use axum::{
    body::Bytes,
    extract::{Path, State},
    response::Response,
};

use super::{body, json, ApiError};
use crate::{
    api::{self, BackendEntry, BackendsBody, BackendsRequest, PoolBackends},
    config::{build::runtime_backends, spec::BackendSpec},
    services::{persist, probe},
    state::AppState,
};

type St = State<Arc<AppState>>;

fn entry(b: &BackendSpec) -> BackendEntry {
    BackendEntry {
        address: b.address.clone(),
        weight: Some(i64::from(b.weight)),
        name: (*b.name != *b.address).then(|| b.name.to_string()),
    }
}

fn view(state: &AppState, pool: &str) -> Result<PoolBackends, ApiError> {
    let table = state.table();
    let file = table
        .spec
        .pools
        .get(pool)
        .ok_or_else(|| ApiError::new(404, "unknown_pool", format!("no pool named {pool:?}")))?;
    let live = table.pools.get(pool);
    Ok(PoolBackends {
        pool: pool.to_string(),
        overridden: state.overrides().members.contains_key(pool),
        backends: live
            .map(|p| p.backends.iter().map(|b| entry(&b.spec)).collect())
            .unwrap_or_default(),
        file_backends: file.backends.iter().map(entry).collect(),
    })
}

#[utoipa::path(get, path = "/api/v1/pools/{pool}/backends", tag = "backends", params(("pool" = String, Path, description = "A pool of the config")),
    responses((status = 200, description = "The pool's members, and the file's", body = api::PoolBackends), (status = 404, description = "No such pool", body = api::ErrorBody)))]
/// `GET /api/v1/pools/{pool}/backends`.
pub async fn get(State(s): St, Path(pool): Path<String>) -> Result<Response, ApiError> {
    Ok(json(200, &view(&s, &pool)?))
}

/// The members of a `PUT` body: `[{…}]` or `{"backends": [{…}]}`.
fn entries(b: &Bytes) -> Result<Vec<BackendEntry>, ApiError> {
    let array = b.iter().find(|c| !c.is_ascii_whitespace()) == Some(&b'[');
    let body = if array {
        BackendsBody::List(
            serde_json::from_slice(b)
                .map_err(|e| ApiError::field("body", &format!("invalid JSON body: {e}")))?,
        )
    } else {
        BackendsBody::Object(body::parse::<BackendsRequest>(b)?)
    };
    Ok(body.into_entries())
}

#[utoipa::path(put, path = "/api/v1/pools/{pool}/backends", tag = "backends", params(("pool" = String, Path, description = "A pool of the config")),
    request_body(content = api::BackendsBody, content_type = "application/json"),
    responses(
        (status = 200, description = "The members now (a runtime override, kept in `state_file`)", body = api::PoolBackends),
        (status = 400, description = "A member is invalid (address, weight, name)", body = api::ErrorBody),
        (status = 404, description = "No such pool", body = api::ErrorBody),
    ))]
/// `PUT /api/v1/pools/{pool}/backends`.
pub async fn put(State(s): St, Path(pool): Path<String>, b: Bytes) -> Result<Response, ApiError> {
    view(&s, &pool)?;
    let wanted = entries(&b)?;
    let (p, w) = (pool.clone(), wanted.clone());
    // Host names are resolved: off the admin runtime's async workers.
    let members = tokio::task::spawn_blocking(move || runtime_backends(&p, &w))
        .await
        .map_err(|e| ApiError::new(500, "internal", e.to_string()))?
        .map_err(|e| ApiError {
            status: 400,
            kind: "bad_request",
            message: e.to_string(),
            field: Some("backends"),
        })?;
    tracing::info!(pool, backends = ?wanted.iter().map(|b| &b.address).collect::<Vec<_>>(), "pool members set at runtime");
    s.change_overrides(|ov, _| {
        ov.backends.insert(pool.clone(), wanted);
        ov.members.insert(pool.clone(), members);
        Ok::<(), ApiError>(())
    })?;
    persist::save(&s);
    verify_members(&s, &pool).await;
    Ok(json(200, &view(&s, &pool)?))
}

/// New members of a pool without health checks are connected to once, so one that is not
/// there is known down (and probed) before a deploy shifts traffic to it.
async fn verify_members(s: &Arc<AppState>, pool: &str) {
    let table = s.table_full();
    let Some(p) = table
        .pools
        .get(pool)
        .filter(|p| p.spec.health_check.is_none())
    else {
        return;
    };
    let timeout = table
        .spec
        .timeouts
        .connect
        .min(std::time::Duration::from_secs(2));
    // A member whose name does not resolve yet is skipped anyway (and resolved later).
    let checks = p
        .backends
        .iter()
        .filter_map(|b| Some((b, b.addr?)))
        .map(|(b, addr)| {
            let (st, fall) = (b.state.clone(), p.spec.passive.fall);
            async move {
                let up = matches!(
                    tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await,
                    Ok(Ok(_))
                );
                if !up {
                    st.record_connect_failure();
                    // One failed connect is as good as `fall` of them for a member never seen up.
                    for _ in 0..fall {
                        st.passive.fail(fall);
                    }
                }
                (st, up)
            }
        });
    for (st, up) in futures_util::future::join_all(checks).await {
        if !up {
            tracing::warn!(backend = %st.id, "new member does not accept connections; probing in the background");
            probe::ensure(s, &st);
        }
    }
}

#[utoipa::path(delete, path = "/api/v1/pools/{pool}/backends", tag = "backends", params(("pool" = String, Path, description = "A pool of the config")),
    responses(
        (status = 200, description = "Back to the file's members", body = api::PoolBackends),
        (status = 409, description = "The pool has no runtime members", body = api::ErrorBody),
        (status = 404, description = "No such pool", body = api::ErrorBody),
    ))]
/// `DELETE /api/v1/pools/{pool}/backends`: back to the file's members (409 if none set).
pub async fn delete(State(s): St, Path(pool): Path<String>) -> Result<Response, ApiError> {
    view(&s, &pool)?;
    let had = s.change_overrides(|ov, _| {
        ov.backends.remove(&pool);
        Ok::<_, ApiError>(ov.members.remove(&pool).is_some())
    })?;
    if !had {
        return Err(ApiError::new(
            409,
            "conflict",
            "the pool has no runtime members",
        ));
    }
    persist::save(&s);
    tracing::info!(pool, "pool members back to the file's");
    Ok(json(200, &view(&s, &pool)?))
}
