//! Passive-health probes: a backend whose connects fail is probed in the background (a TCP
//! connect, one task per backend at most) instead of by every waiting request. The first
//! probe that connects clears `down` and wakes held requests at once.
//!
//! Delays start at the pool's `passive_health.probe_interval` and double up to
//! `probe_max_interval`; while requests are held anywhere, at most [`HELD_PROBE_INTERVAL`]
//! passes between probes so they are released soon after the backend accepts again.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use crate::{
    config::spec::PassiveHealth,
    state::{backend::BackendState, AppState},
};

/// Longest delay between probes while some request is held.
pub const HELD_PROBE_INTERVAL: Duration = Duration::from_millis(100);

/// Start probing `backend` unless a probe already runs for it.
pub fn ensure(state: &Arc<AppState>, backend: &Arc<BackendState>) {
    if !backend.passive.start_probe() {
        return;
    }
    let (state, backend) = (state.clone(), backend.clone());
    tokio::spawn(async move {
        run(&state, &backend).await;
        backend.passive.end_probe();
        // A failure that landed between the last probe and the release of the claim would
        // otherwise have nobody probing for it.
        if backend.passive.is_failing() && Arc::strong_count(&backend) > 1 {
            ensure(&state, &backend);
        }
    });
}

/// Where to probe and how often, from the newest snapshot. `None` when the backend is no
/// longer in the config (it may come back with a reload while its state is still known).
fn target(
    state: &AppState,
    backend: &Arc<BackendState>,
) -> Option<(SocketAddr, PassiveHealth, Duration)> {
    let table = state.table();
    let pool = table.pools.get(&*backend.pool.name)?;
    let b = pool
        .backends
        .iter()
        .find(|b| Arc::ptr_eq(&b.state, backend))?;
    Some((
        b.addr?,
        pool.spec.passive.clone(),
        table.spec.timeouts.connect,
    ))
}

fn held_anywhere(state: &AppState) -> bool {
    state
        .table()
        .routes
        .iter()
        .any(|r| r.stats.held.load(std::sync::atomic::Ordering::Relaxed) > 0)
}

async fn run(state: &Arc<AppState>, backend: &Arc<BackendState>) {
    let mut delay: Option<Duration> = None;
    loop {
        let Some((addr, passive, connect_timeout)) = target(state, backend) else {
            // Gone from the config: keep the state honest only while someone still holds it.
            if Arc::strong_count(backend) <= 2 || !backend.passive.is_failing() {
                return;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        };
        let d = delay.unwrap_or(passive.probe_interval);
        let wait = if held_anywhere(state) {
            d.min(HELD_PROBE_INTERVAL)
        } else {
            d
        };
        tokio::time::sleep(wait).await;
        if !backend.passive.is_failing() || state.is_shutting_down() {
            // A request got through meanwhile, or nothing new will be routed any more.
            return;
        }
        let ok = matches!(
            tokio::time::timeout(connect_timeout, tokio::net::TcpStream::connect(addr)).await,
            Ok(Ok(_))
        );
        if ok {
            if backend.record_connect_ok() {
                tracing::info!(backend = %backend.id, %addr, "backend accepts connections again");
                backend.mark_available_now();
                state.availability_changed();
            }
            return;
        }
        backend.record_connect_failure();
        if backend.passive.fail(passive.fall) {
            tracing::warn!(backend = %backend.id, %addr, "backend down: connects keep failing; probing in the background");
        }
        delay = Some((d * 2).min(passive.probe_max_interval));
    }
}
