//! Deadline enforcement of one drain: at `requests_deadline` end plain requests, at
//! `streams_deadline` end SSE and WebSocket streams politely, oldest first, spread evenly over
//! `close_spread`. Each forced end is logged at WARN, plus one summary line. The task stops
//! when the drain's epoch moves on (undrain, new drain) or nothing is left.

use std::{sync::Arc, time::Duration};

use tokio::time::Instant;

use crate::{
    drain::machine::spread_offset,
    state::{
        backend::{BackendState, DrainCell, Registry},
        tracking::{EndReason, Kind, Tracked},
    },
};

/// What is being drained.
#[derive(Clone, Debug)]
pub enum Target {
    Pool(Arc<str>),
    Backend(Arc<BackendState>),
}

impl Target {
    /// Backends whose work counts for this drain (removed-but-busy ones included).
    pub fn backends(&self, registry: &Registry) -> Vec<Arc<BackendState>> {
        match self {
            Target::Pool(p) => registry
                .all()
                .into_iter()
                .filter(|b| b.pool.name == *p)
                .collect(),
            Target::Backend(b) => vec![b.clone()],
        }
    }
}

/// WebSocket close frame, code 1001 ("going away"), client → server: masked (RFC 6455 §5.3).
pub const WS_CLOSE_1001_MASKED: [u8; 8] = [0x88, 0x82, 0, 0, 0, 0, 0x03, 0xE9];
/// WebSocket close frame, code 1001, server → client: unmasked.
pub const WS_CLOSE_1001: [u8; 4] = [0x88, 0x02, 0x03, 0xE9];

/// End one tracked item on purpose. For a WebSocket the backend first gets a close frame
/// 1001 on its socket; the client gets its close frame from the proxy hooks.
pub fn end_item(item: &Tracked, reason: EndReason) -> bool {
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

/// Spawn the deadline tasks of a drain that started with `epoch`.
pub fn spawn(target: Target, registry: Arc<Registry>, epoch: u64) {
    for streams in [false, true] {
        let (target, registry) = (target.clone(), registry.clone());
        tokio::spawn(async move { run(target, registry, epoch, streams).await });
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
    // Sleep until the deadline, unless the drain ends first.
    let at = Instant::from_std(at);
    loop {
        let changed = cell.changed.notified();
        if cell.epoch() != epoch || !cell.is_draining() {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep_until(at) => break,
            _ = changed => {}
        }
    }
    let victims: Vec<(Arc<BackendState>, Arc<Tracked>)> = target
        .backends(&registry)
        .into_iter()
        .flat_map(|b| b.items.all().into_iter().map(move |i| (b.clone(), i)))
        .filter(|(_, i)| i.kind().is_stream() == streams && i.ended().is_none())
        .collect();
    let what = if streams { "streams" } else { "requests" };
    let n = victims.len();
    let mut ended = 0usize;
    for (i, (backend, item)) in victims.iter().enumerate() {
        tokio::time::sleep_until(at + spread_offset(i, n, spread)).await;
        if cell.epoch() != epoch {
            tracing::info!(target_drain = ?target_name(&target), "drain cancelled; remaining work left running");
            return;
        }
        let now = std::time::Instant::now();
        if end_item(item, EndReason::Deadline) {
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
        tracing::warn!(drain = %target_name(&target), kind = what, ended, "drain deadline reached: in-flight work ended");
    }
}

fn target_name(t: &Target) -> String {
    match t {
        Target::Pool(p) => p.to_string(),
        Target::Backend(b) => b.id.to_string(),
    }
}
