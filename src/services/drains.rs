//! The drain service: the one owner of drains. It starts and undrains (admin API), follows
//! the file's `state: draining` declarations (every publication), restores drains saved in
//! `state_file` (start), and enforces deadlines: at `requests_deadline` plain requests end,
//! at `streams_deadline` SSE and WebSocket streams end politely, oldest first, spread evenly
//! over `close_spread`, each logged at WARN plus one summary line. Deadline tasks run on the
//! service's runtime (fed through [`AppState::enforce`]); each stops when its drain's epoch
//! moves on. The service also prunes removed backends once they are idle.

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use async_trait::async_trait;
use pingora::{server::ShutdownWatch, services::background::BackgroundService};
use tokio::time::Instant;

use super::persist;
use crate::{
    api,
    config::{duration::HumanDuration, spec::DrainSettings},
    drain::machine::{spread_offset, Deadlines, TransitionError},
    state::{
        backend::{BackendState, PoolState},
        counts::Kind,
        drain_cell::DrainCell,
        items::{EndReason, Tracked},
        registry::Registry,
        table::Table,
        target::Target,
        AppState,
    },
};

/// Longest accepted deadline in a drain request.
const MAX_DEADLINE: Duration = Duration::from_secs(7 * 24 * 3600);

/// WebSocket close frame, code 1001 ("going away"), client → server: masked (RFC 6455 §5.3).
pub const WS_CLOSE_1001_MASKED: [u8; 8] = [0x88, 0x82, 0, 0, 0, 0, 0x03, 0xE9];

/// Why a drain request cannot be done.
#[derive(Debug, thiserror::Error)]
pub enum DrainError {
    #[error("no pool named {0:?}")]
    UnknownPool(String),
    #[error("no backend {backend:?} in pool {pool:?}")]
    UnknownBackend { pool: String, backend: String },
    #[error("it is no longer in the config; it disappears once idle")]
    Removed,
    #[error("{0}")]
    Transition(#[from] TransitionError),
    #[error("{field}: {message}")]
    BadField {
        field: &'static str,
        message: String,
    },
}

/// A drain target found in the table (or, when removed but busy, in the registry).
pub struct Resolved {
    pub target: Target,
    pub pool: Arc<PoolState>,
    pub backend: Option<Arc<BackendState>>,
    defaults: Option<DrainSettings>,
    pub removed: bool,
}

impl Resolved {
    /// Record its in-flight total (drained at zero); a drain that ends here closes the
    /// target's idle HTTP/2 connections, like one that ends with its last request.
    pub fn observe(&self) {
        if self.cell().observe(self.in_flight().total()) {
            let id = self.backend.as_ref().map(|b| &*b.id);
            self.pool.h2_conns.close(id);
        }
    }

    /// The drain cell of the target.
    pub fn cell(&self) -> &DrainCell {
        match &self.backend {
            Some(b) => &b.drain,
            None => &self.pool.drain,
        }
    }

    /// In-flight counts of the target.
    pub fn in_flight(&self) -> api::InFlight {
        match &self.backend {
            Some(b) => b.counts.snapshot(),
            None => self.pool.counts.snapshot(),
        }
    }
}

/// Resolve `pool` (and `backend`) against the table, or the registry for removed ones.
pub fn resolve(
    state: &AppState,
    pool: &str,
    backend: Option<&str>,
) -> Result<Resolved, DrainError> {
    let table = state.table();
    let in_table = table.pools.get(pool).cloned();
    let known = state
        .registry
        .pools()
        .into_iter()
        .find(|p| &*p.name == pool);
    let pool_state = match (&in_table, known) {
        (_, Some(p)) => p,
        (Some(_), None) => state.registry.pool(pool),
        (None, None) => return Err(DrainError::UnknownPool(pool.to_string())),
    };
    let defaults = in_table.as_ref().map(|p| p.spec.drain.clone());
    let Some(bname) = backend else {
        return Ok(Resolved {
            target: Target::Pool(pool_state.name.clone()),
            pool: pool_state,
            backend: None,
            defaults,
            removed: in_table.is_none(),
        });
    };
    let from_table = in_table
        .as_ref()
        .and_then(|p| p.backends.iter().find(|b| &*b.spec.name == bname))
        .map(|b| b.state.clone());
    let id = format!("{pool}/{bname}");
    let b = match from_table.clone() {
        Some(b) => b,
        None => state
            .registry
            .all()
            .into_iter()
            .find(|b| *b.id == *id)
            .ok_or_else(|| DrainError::UnknownBackend {
                pool: pool.to_string(),
                backend: bname.to_string(),
            })?,
    };
    Ok(Resolved {
        target: Target::Backend(b.clone()),
        pool: pool_state,
        backend: Some(b),
        defaults,
        removed: from_table.is_none(),
    })
}

fn parse_duration(field: &'static str, v: &Option<String>) -> Result<Option<Duration>, DrainError> {
    let Some(s) = v else { return Ok(None) };
    let bad = |message: String| DrainError::BadField { field, message };
    let d = HumanDuration::parse(s).map_err(bad)?;
    if d.0 > MAX_DEADLINE {
        return Err(bad(format!("{s:?} is longer than the 7-day maximum")));
    }
    Ok(Some(d.0))
}

/// Deadlines of a drain request, falling back to the pool's configured ones. An explicit
/// `"0"` means "wait forever"; an absent field means the pool's setting.
pub fn deadlines(r: &Resolved, req: &api::DrainRequest) -> Result<Deadlines, DrainError> {
    let defaults = r.defaults.clone().unwrap_or(DrainSettings {
        requests_deadline: None,
        streams_deadline: None,
        close_spread: Duration::ZERO,
    });
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

/// Every backend in the table on `host` (its address's host, or the IP it resolved to),
/// in pool order: a node's drain targets.
pub fn on_node(state: &AppState, host: &str) -> Vec<Resolved> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let table = state.table();
    let names: Vec<(Arc<str>, Arc<str>)> = table
        .backends()
        .filter(|(_, b)| {
            let named = crate::config::upstream::host_of(&b.spec.address);
            named.eq_ignore_ascii_case(host) || b.addr.is_some_and(|a| a.ip().to_string() == host)
        })
        .map(|(p, b)| (p.name.clone(), b.spec.name.clone()))
        .collect();
    drop(table);
    names
        .iter()
        .filter_map(|(p, b)| resolve(state, p, Some(b)).ok())
        .collect()
}

/// A hard drain's deadlines: now (requests ended, streams ended politely, all at once).
pub fn hard_deadlines() -> Deadlines {
    Deadlines {
        requests: Some(Duration::from_millis(1)),
        streams: Some(Duration::from_millis(1)),
        close_spread: Duration::ZERO,
    }
}

/// Start draining `r`: no new work goes there; deadline tasks start; ramps over its pool
/// stop; the state file is saved.
pub fn start(state: &AppState, r: &Resolved, d: Deadlines) -> Result<(), DrainError> {
    if r.removed {
        return Err(DrainError::Removed);
    }
    let epoch = r.cell().start(d, || r.in_flight().total())?;
    state.enforce(r.target.clone(), epoch);
    tracing::info!(drain = %r.target.name(), in_flight = r.in_flight().total(), "drain started");
    let pool = &r.pool.name;
    state
        .ramps
        .cancel_for_pool(pool, &format!("pool {pool} was drained"));
    persist::save(state);
    Ok(())
}

/// A drain under way ends what is left now (deadline tasks start again with the new
/// deadlines); `false` when `r` is not draining.
pub fn hasten(state: &AppState, r: &Resolved) -> bool {
    let Some(epoch) = r.cell().hasten() else {
        return false;
    };
    state.enforce(r.target.clone(), epoch);
    tracing::info!(drain = %r.target.name(), "drain deadlines brought to now");
    persist::save(state);
    true
}

/// Back to active at once: held requests may go there now.
pub fn undrain(state: &AppState, r: &Resolved) -> Result<(), DrainError> {
    r.cell().undrain()?;
    tracing::info!(drain = %r.target.name(), "undrained");
    for b in r.target.backends(&state.registry) {
        b.mark_available_now();
    }
    let pool = &r.pool.name;
    state
        .ramps
        .cancel_for_pool(pool, &format!("pool {pool} was undrained"));
    persist::save(state);
    state.availability_changed();
    Ok(())
}

/// Follow the `state: draining` declarations of a table about to be published (see
/// [`DrainCell::follow_file`]).
pub fn follow_file(state: &AppState, table: &Table) {
    for pool in table.pools.values() {
        let d = Deadlines {
            requests: pool.spec.drain.requests_deadline,
            streams: pool.spec.drain.streams_deadline,
            close_spread: pool.spec.drain.close_spread,
        };
        let ps = state.registry.pool(&pool.name);
        if let Some(e) = ps
            .drain
            .follow_file(pool.spec.declared_draining, d, || ps.counts.total())
        {
            tracing::info!(pool = %pool.name, "draining: declared in the config file");
            state.enforce(Target::Pool(ps.name.clone()), e);
        }
        for b in &pool.backends {
            let declared = b.spec.declared_draining;
            if let Some(e) = b
                .state
                .drain
                .follow_file(declared, d, || b.state.counts.total())
            {
                tracing::info!(backend = %b.id, "draining: declared in the config file");
                state.enforce(Target::Backend(b.state.clone()), e);
            }
        }
    }
}

/// Resume the drains saved in `state_file` (see [`persist::restore`]).
pub fn resume(state: &AppState, saved: Vec<persist::SavedDrain>) {
    for d in saved {
        // Checked like a row from the control store: a hand-edited time or deadline out of
        // range is refused, not a panic.
        let (started, deadlines) = match d.checked() {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(pool = %crate::api::printable(&d.pool), error = %e, "a drain in state_file is not valid; not restored");
                continue;
            }
        };
        restore(state, &d.pool, d.backend.as_deref(), started, deadlines);
        tracing::info!(
            pool = d.pool,
            backend = d.backend,
            "drain restored from state_file"
        );
    }
}

/// Resume one saved (or shared) drain: it keeps its original start, so deadlines keep
/// counting from then.
pub fn restore(
    state: &AppState,
    pool: &str,
    backend: Option<&str>,
    started: SystemTime,
    d: Deadlines,
) {
    let (target, epoch) = match backend {
        None => {
            let p = state.registry.pool(pool);
            let epoch = p.drain.restore(started, d, p.counts.total());
            (Target::Pool(p.name.clone()), epoch)
        }
        Some(b) => {
            let st = state.registry.get_or_create(pool, b);
            let epoch = st.drain.restore(started, d, st.counts.total());
            (Target::Backend(st), epoch)
        }
    };
    state.enforce(target, epoch);
}

/// How long work on a shared (HTTP/2) upstream connection, ended on purpose, may wait for
/// its next response chunk to end at alone; a quiet call then ends with everything else on
/// that connection.
pub const SHARED_GRACE: Duration = Duration::from_secs(1);

/// End one tracked item on purpose. For a WebSocket the backend first gets a close frame
/// 1001 on its socket; the client gets its close frame from the proxy hooks.
///
/// Work on a shared HTTP/2 connection is only marked: its next response chunk ends it alone
/// (the proxy resets its upstream stream and answers the client politely: trailers with
/// `grpc-status: 14` for gRPC). A quiet call, with nothing coming within [`SHARED_GRACE`],
/// ends when every other call on its connection is due too (ended on purpose): then the
/// connection is shut down and each of them ends politely. Nothing that is not due yet
/// (a stream before the streams deadline, a request routed after an undrain) is cut.
pub fn end_item(backend: &Arc<BackendState>, item: &Arc<Tracked>, reason: EndReason) -> bool {
    if item.is_shared() && item.socket().is_some() {
        item.mark_ended(reason);
        let (backend, item) = (backend.clone(), item.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(SHARED_GRACE).await;
                let Some(socket) = item.socket() else { return };
                let all_due = backend
                    .items
                    .all()
                    .iter()
                    .all(|o| o.socket() != Some(socket) || o.ended().is_some());
                if all_due {
                    item.end(reason, |_| {});
                    return;
                }
            }
        });
        return true;
    }
    let ws = item.kind() == Kind::WebSocket;
    item.end(reason, |fd| {
        if ws {
            // SAFETY: `fd` is the live upstream socket (see `Tracked::end`); a short write of
            // 8 bytes to a connected TCP socket. A failure only means the backend is gone.
            unsafe {
                libc::send(
                    fd,
                    WS_CLOSE_1001_MASKED.as_ptr().cast(),
                    WS_CLOSE_1001_MASKED.len(),
                    libc::MSG_NOSIGNAL,
                );
            }
        }
    })
}

/// The background service: runs deadline tasks and prunes idle removed backends.
pub struct DrainService {
    pub state: Arc<AppState>,
}

/// How often removed backends are checked for idleness.
const PRUNE_EVERY: Duration = Duration::from_secs(1);

#[async_trait]
impl BackgroundService for DrainService {
    async fn start(&self, _shutdown: ShutdownWatch) {
        // Deadlines still matter while the process drains, so the service runs until the
        // process exits; its runtime is dropped with the others at the end of shutdown.
        let Some(mut queue) = self.state.take_enforce_queue() else {
            return;
        };
        let mut prune = tokio::time::interval(PRUNE_EVERY);
        loop {
            tokio::select! {
                cmd = queue.recv() => {
                    let Some((target, epoch)) = cmd else { return };
                    for streams in [false, true] {
                        let (target, registry) = (target.clone(), self.state.registry.clone());
                        tokio::spawn(async move { run(target, registry, epoch, streams).await });
                    }
                }
                _ = prune.tick() => self.state.prune(),
            }
        }
    }
}

async fn run(target: Target, registry: Arc<Registry>, epoch: u64, streams: bool) {
    let pool_state;
    let cell: &DrainCell = match &target {
        Target::Pool(p) => {
            pool_state = registry.pool(p);
            &pool_state.drain
        }
        Target::Backend(b) => &b.drain,
    };
    let machine = cell.snapshot();
    let Some(at) = machine.deadline_at(streams) else {
        return;
    };
    let spread = if streams {
        machine.deadlines().close_spread
    } else {
        Duration::ZERO
    };
    let at = Instant::from_std(at);
    if !sleep_until_deadline(cell, epoch, at).await {
        return;
    }
    let mut victims: Vec<(Arc<BackendState>, Arc<Tracked>)> = target
        .backends(&registry)
        .into_iter()
        .flat_map(|b| b.items.all().into_iter().map(move |i| (b.clone(), i)))
        .filter(|(_, i)| i.is_stream() == streams && i.ended().is_none())
        .collect();
    // Oldest first across the whole pool, not backend by backend.
    victims.sort_by_key(|(_, i)| i.started);
    let n = victims.len();
    let mut ended = 0usize;
    for (i, (backend, item)) in victims.iter().enumerate() {
        tokio::time::sleep_until(at + spread_offset(i, n, spread)).await;
        if cell.epoch() != epoch {
            tracing::info!(drain = %target.name(), "drain cancelled; remaining work left running");
            return;
        }
        let now = std::time::Instant::now();
        if end_item(backend, item, EndReason::Deadline) {
            ended += 1;
            tracing::warn!(
                backend = %backend.id,
                kind = item.kind().as_str(),
                path = %item.uri.path(),
                route = %item.route,
                age_s = item.age(now).as_secs_f64(),
                client = ?item.client,
                "ended at drain deadline"
            );
        }
    }
    if n > 0 {
        let what = if streams { "streams" } else { "requests" };
        tracing::warn!(drain = %target.name(), kind = what, ended, "drain deadline reached: in-flight work ended");
    }
}

/// Sleep until `at`, unless the drain ends or changes first (false).
async fn sleep_until_deadline(cell: &DrainCell, epoch: u64, at: Instant) -> bool {
    loop {
        let changed = cell.changed.notified();
        if cell.epoch() != epoch || !cell.is_draining() {
            return false;
        }
        tokio::select! {
            _ = tokio::time::sleep_until(at) => return true,
            _ = changed => {}
        }
    }
}
