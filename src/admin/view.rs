//! Live state as the API's types: drain status, backend status, route splits, maintenance.

use std::{sync::Arc, time::Instant};

use crate::{
    api,
    config::duration::HumanDuration,
    drain::machine::{Machine, Phase},
    services::drains::Resolved,
    state::{backend::BackendState, overrides::MaintenanceOverride, process::unix, AppState},
};

fn dur(d: Option<std::time::Duration>) -> String {
    match d {
        Some(d) => HumanDuration(d).to_string(),
        None => "0".into(),
    }
}

/// The drain status of a resolved target.
pub fn drain_status(state: &AppState, r: &Resolved) -> api::DrainStatus {
    drain_status_listing(state, r, STREAMS_LISTED, false)
}

/// Streams a drain status lists by default (the oldest first; `streams_total` counts all).
pub const STREAMS_LISTED: usize = 100;
/// Streams a drain status lists at most (`?streams=`).
pub const STREAMS_LISTED_MAX: usize = 10_000;

/// [`drain_status`] listing at most `limit` streams, the oldest first; `strict`: a lost proxy
/// of the fleet keeps it from drained.
pub fn drain_status_listing(
    state: &AppState,
    r: &Resolved,
    limit: usize,
    strict: bool,
) -> api::DrainStatus {
    r.observe();
    let backends = r.target.backends(&state.registry);
    let mut v = drain_view(
        &r.cell().snapshot(),
        r.in_flight(),
        &backends,
        r.removed,
        limit,
    );
    v.pool = r.pool.name.to_string();
    if let Some(b) = &r.backend {
        v.backend = Some(b.id.to_string());
        v.pool_state = Some(r.pool.drain.phase().shown());
    }
    if let Some(f) = super::fleet::drain(state, r, strict) {
        v.drained &= f.drained;
        v.fleet = Some(f);
    }
    v
}

/// `{state, drained, in_flight, started_at, drained_at, deadlines, streams, oldest…}`;
/// `state` is `removed` when the target is no longer in the config.
fn drain_view(
    machine: &Machine,
    counts: api::InFlight,
    backends: &[Arc<BackendState>],
    removed: bool,
    limit: usize,
) -> api::DrainStatus {
    let now = Instant::now();
    let mut all: Vec<_> = backends
        .iter()
        .flat_map(|b| b.items.all().into_iter().map(move |i| (b.clone(), i)))
        .filter(|(_, i)| i.is_stream())
        .collect();
    let total = all.len() as u64;
    // The oldest `limit`: partition around the limit, then sort only those.
    if all.len() > limit {
        all.select_nth_unstable_by_key(limit, |(_, i)| i.started);
        all.truncate(limit);
    }
    all.sort_unstable_by_key(|(_, i)| i.started);
    let streams: Vec<api::StreamInfo> = all
        .into_iter()
        .map(|(b, i)| api::StreamInfo {
            backend: b.id.to_string(),
            kind: i.kind(),
            route: i.route.to_string(),
            path: i.uri.path().to_string(),
            client: i.client.map(|c| c.to_string()),
            started_at: unix(i.started_wall),
            age_seconds: i.age(now).as_secs_f64(),
        })
        .collect();
    let oldest = streams.first().map(|s| s.age_seconds);
    let phase = machine.phase();
    api::DrainStatus {
        state: if removed {
            api::State::Removed
        } else {
            phase.shown()
        },
        drained: phase == Phase::Drained || (removed && counts.total() == 0),
        in_flight: counts,
        started_at: machine.started_at().map(unix),
        drained_at: machine.drained_at().map(unix),
        deadlines: deadlines(machine),
        streams,
        streams_total: total,
        oldest_stream_age_seconds: oldest,
        pool: String::new(),
        backend: None,
        pool_state: None,
        waited_seconds: None,
        fleet: None,
    }
}

/// A drain's deadlines as duration strings, unless it is active.
pub fn deadlines(machine: &Machine) -> Option<api::DrainDeadlines> {
    let d = machine.deadlines();
    (machine.phase() != Phase::Active).then(|| api::DrainDeadlines {
        requests_deadline: dur(d.requests),
        streams_deadline: dur(d.streams),
        close_spread: dur(Some(d.close_spread)),
    })
}

/// One backend in the status (`address`/`weight` only for configured ones).
pub fn backend_status(
    b: &BackendState,
    address: Option<&str>,
    weight: Option<u32>,
) -> api::BackendStatus {
    let drain = b.drain.snapshot();
    let oldest = b
        .items
        .all()
        .into_iter()
        .find(|i| i.is_stream())
        .map(|i| i.age(Instant::now()).as_secs_f64());
    api::BackendStatus {
        id: b.id.to_string(),
        name: b.name.to_string(),
        address: address.map(str::to_string),
        weight,
        state: drain.phase().shown(),
        available: b.available(),
        healthy: b.healthy(),
        in_flight: b.counts.snapshot(),
        oldest_stream_age_seconds: oldest,
        drain_started_at: drain.started_at().map(unix),
        drained_at: drain.drained_at().map(unix),
        connect_failures: b.connect_failures(),
        file_state: None,
    }
}

/// The split view of one route, if it exists.
pub fn route_split(state: &AppState, route: &str) -> Option<api::RouteSplit> {
    let table = state.table();
    let r = table.routes.iter().find(|r| &*r.name == route)?;
    Some(api::RouteSplit {
        route: route.to_string(),
        split: r
            .split
            .iter()
            .map(|(p, w)| (p.name.to_string(), *w))
            .collect(),
        file_split: r
            .spec
            .split
            .iter()
            .map(|(p, w)| (p.to_string(), *w))
            .collect(),
        overridden: state.overrides().splits.contains_key(route),
        ramp: state.ramps.get(route),
    })
}

/// Maintenance as shown.
pub fn maintenance(m: &Option<MaintenanceOverride>) -> api::MaintenanceStatus {
    match m {
        None => api::MaintenanceStatus::default(),
        Some(m) => api::MaintenanceStatus {
            maintenance: true,
            routes: Some(m.routes.clone()),
            methods: Some(m.methods.clone()),
            retry_after_seconds: Some(m.retry_after_seconds),
            message: Some(m.message.clone()),
            since: Some(m.since),
        },
    }
}

/// A route's affinity and forced pools, with its pick counts.
pub fn picking(r: &crate::state::table::Route) -> api::Picking {
    use crate::config::spec::{AffinityKey, ForceFrom};
    let a = r.spec.affinity.as_ref();
    let key_name = a.and_then(|a| match &a.key {
        AffinityKey::Cookie { name, .. } => Some(name.clone()),
        AffinityKey::Header(h) => Some(h.to_string()),
        AffinityKey::ClientIp => None,
    });
    let force_pool = r.spec.force_pool.as_ref().map(|f| {
        let (from, name) = match &f.from {
            ForceFrom::Header(h) => ("header", h.to_string()),
            ForceFrom::Cookie(c) => ("cookie", c.clone()),
        };
        api::ForcePool {
            from: from.into(),
            name,
            pools: f.pools.iter().map(|p| p.to_string()).collect(),
            fallback: if f.refuse { "refuse" } else { "split" }.into(),
            secret: f.secret.is_some(),
            clients: f.clients.iter().map(ToString::to_string).collect(),
        }
    });
    api::Picking {
        affinity: a.map(|a| a.key.mode().to_string()),
        key_name,
        sticky_backends: a.is_some_and(|a| a.sticky_backends),
        force_pool,
        picks: crate::routing::pick::How::ALL
            .iter()
            .map(|h| (h.as_str().to_string(), r.stats.picks[h.index()].get()))
            .collect(),
    }
}
