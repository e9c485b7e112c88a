//! The admin API with a `control_store`: changes to the shared state are refused (503)
//! while the store cannot take them and answered only once it has them; drain answers and
//! the status speak for the whole fleet.

use std::{sync::Arc, time::Duration};

use axum::{
    body::Body,
    extract::State,
    http::{Method, Request},
    middleware::Next,
    response::{IntoResponse, Response},
};

use super::ApiError;
use crate::{
    api,
    services::drains::Resolved,
    state::{fleet::Peer, AppState},
};

/// How long a change may wait for the store to confirm it.
const CONFIRM: Duration = Duration::from_secs(3);
/// How long a change may wait for rows from the store to be applied first.
const GATE_WAIT: Duration = Duration::from_secs(3);

/// Whether a request changes the fleet's shared state (not the spool, not this proxy's
/// config file).
fn shared_mutation(req: &Request<Body>) -> bool {
    changes_shared_state(req.method(), req.uri().path())
}

/// [`shared_mutation`] by method and path (also how the OpenAPI document says which calls
/// may get the control store's 503).
pub(super) fn changes_shared_state(method: &Method, path: &str) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
        && path.starts_with("/api/v1/")
        && !path.starts_with("/api/v1/spool")
        && path != "/api/v1/config/reload"
}

/// Middleware: with a store, a change is refused while the store is down (or the shared
/// state not loaded yet), and its success is answered once the store holds it.
pub async fn gate(State(state): State<Arc<AppState>>, req: Request<Body>, next: Next) -> Response {
    if !state.fleet.enabled() || !shared_mutation(&req) {
        return next.run(req).await;
    }
    if let Some(why) = state.fleet.down() {
        return unavailable(format!(
            "the control store is unreachable ({why}); changes are refused until it is back, \
             the proxy keeps serving with the last shared state"
        ));
    }
    // The same as `/health` says: a store whose reads stall is unreachable too (a change
    // would be applied here and then fail to be saved).
    if state.fleet.reads_stalled() {
        return unavailable(
            "the control store is unreachable or too slow: the fleet's heartbeats were not \
             read within the TTL; changes are refused until it answers, the proxy keeps \
             serving with the last shared state"
                .into(),
        );
    }
    if !state.fleet.is_loaded() {
        return unavailable("the shared state is not loaded from the control store yet".into());
    }
    if let Some(why) = state.fleet.regressed() {
        return unavailable(format!(
            "the control store went back in time ({why}); this proxy keeps its live state and \
             refuses changes until the store is past its revision again (see the README: \
             restoring a control store)"
        ));
    }
    // Not while rows from the store are being applied: either would overwrite the other.
    // Bounded: an apply that stalls answers 503, not a hung admin call.
    let Ok(held) = tokio::time::timeout(GATE_WAIT, state.fleet.applying.lock()).await else {
        return unavailable(format!(
            "rows from the control store are being applied and did not finish within {} s; try again",
            GATE_WAIT.as_secs()
        ));
    };
    if let Some(why) = state.fleet.down() {
        return unavailable(format!(
            "the control store is unreachable ({why}); changes are refused until it is back"
        ));
    }
    let resp = next.run(req).await;
    drop(held);
    if !resp.status().is_success() {
        return resp;
    }
    match state.fleet.flush(CONFIRM).await {
        Ok(()) => resp,
        Err(e) => unavailable(format!(
            "the change was applied on this proxy but not saved to the control store ({e}); \
             the fleet's state replaces it when the store is back"
        )),
    }
}

fn unavailable(message: String) -> Response {
    let mut r = ApiError::new(503, "control_store_unavailable", message).into_response();
    r.headers_mut().insert(
        http::header::RETRY_AFTER,
        http::HeaderValue::from_static("1"),
    );
    r
}

/// Whether `id` (`pool/name`) is part of target `r`.
fn in_target(r: &Resolved, id: &str) -> bool {
    match &r.backend {
        Some(b) => *b.id == *id,
        None => id
            .strip_prefix(&*r.pool.name)
            .is_some_and(|rest| rest.starts_with('/')),
    }
}

fn on_target(p: &Peer, r: &Resolved) -> api::InFlight {
    p.counts
        .iter()
        .filter(|(id, _)| in_target(r, id))
        .fold(api::InFlight::default(), |a, (_, c)| a.plus(*c))
}

/// The other proxies' part of the drain of `r` (this one answers for itself). `strict`: a
/// lost proxy keeps it from drained.
pub fn drain(state: &AppState, r: &Resolved, strict: bool) -> Option<api::FleetDrain> {
    if !state.fleet.enabled() {
        return None;
    }
    // What this proxy wrote counts even while a revision in between is not applied here
    // yet: a peer that has not applied the drain made here is not "applied".
    let rev = state.fleet.wanted_rev();
    let mut f = api::FleetDrain {
        drained: true,
        holding: Vec::new(),
        behind: Vec::new(),
        lost: Vec::new(),
        proxies: Vec::new(),
        store_unreachable: state.fleet.down().is_some(),
        stale: state.fleet.is_stale(),
        strict,
    };
    for p in state.fleet.peers().iter().filter(|p| !p.me) {
        let in_flight = on_target(p, r);
        let applied = p.rev >= rev;
        let lost = state.fleet.is_lost(p);
        if lost {
            f.lost.push(p.node.clone());
        } else if in_flight.total() > 0 {
            f.holding.push(p.node.clone());
        } else if !applied {
            f.behind.push(p.node.clone());
        }
        f.proxies.push(api::FleetDrainProxy {
            node: p.node.clone(),
            heartbeat_age_seconds: p.age_now().as_secs_f64(),
            lost,
            applied,
            in_flight,
        });
    }
    // Without the store, or with a view of the others older than the TTL (this proxy's own
    // reads stall: every peer would look lost), their counts are not known: never
    // "drained" then.
    f.drained = f.holding.is_empty()
        && f.behind.is_empty()
        && !f.store_unreachable
        && !f.stale
        && (!strict || f.lost.is_empty());
    Some(f)
}

/// Until the other proxies of the fleet hold nothing on `r` (and have applied its drain),
/// or `deadline`. Their counts come with their heartbeats (every 250 ms on change).
pub async fn wait_drained(
    state: &AppState,
    r: &Resolved,
    deadline: tokio::time::Instant,
    strict: bool,
) {
    while drain(state, r, strict).is_some_and(|f| !f.drained) {
        if tokio::time::Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The status's `fleet`.
pub fn status(state: &AppState) -> Option<api::FleetStatus> {
    let table = state.table();
    let cfg = table.spec.control_store.as_ref()?;
    let down = state.fleet.down();
    Some(api::FleetStatus {
        node: state.fleet.node().to_string(),
        store_reachable: down.is_none(),
        store_error: down,
        loaded: state.fleet.is_loaded(),
        rev: state.fleet.rev(),
        heartbeat_ttl_seconds: cfg.heartbeat_ttl.as_secs_f64(),
        peers_read_seconds_ago: state.fleet.peers_read_age().map(|a| a.as_secs_f64()),
        regressed: state.fleet.regressed(),
        proxies: state
            .fleet
            .peers()
            .iter()
            .map(|p| api::FleetProxy {
                node: p.node.clone(),
                admin: p.admin.clone(),
                heartbeat_age_seconds: p.age_now().as_secs_f64(),
                lost: state.fleet.is_lost(p),
                rev: p.rev,
                in_flight: p
                    .counts
                    .values()
                    .fold(api::InFlight::default(), |a, c| a.plus(*c)),
                me: p.me,
            })
            .collect(),
    })
}
