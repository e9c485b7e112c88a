//! Exit as soon as the proxy is idle after pingora stops accepting; at `shutdown.grace` end
//! the rest politely (as at a drain deadline), log what was abandoned, and exit 1.

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use pingora::{server::ShutdownWatch, services::background::BackgroundService};
use tokio::time::Instant;

use super::drains::end_item;
use crate::state::{items::EndReason, AppState, ExitReason};

/// How long polite ends (final chunk, close frames) get to reach clients before exit.
const FINAL_FLUSH: Duration = Duration::from_secs(2);

/// Background service that asks for the process to end once shutdown has begun and nothing
/// is in flight (or `shutdown.grace` ran out); `server::run` returns the reason to `main`.
pub struct ShutdownWatcher {
    pub state: Arc<AppState>,
}

#[async_trait]
impl BackgroundService for ShutdownWatcher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        while !*shutdown.borrow() {
            if shutdown.changed().await.is_err() {
                return;
            }
        }
        let grace = self.state.table().spec.shutdown.grace;
        let deadline = grace.map(|g| Instant::now() + g);
        wait_idle(&self.state, deadline).await;
        if self.state.active() == 0 {
            // The fleet's heartbeat row goes first, so the others do not call us lost.
            self.state.fleet.wait_left(Duration::from_secs(3)).await;
            tracing::info!("idle: exiting");
            self.state.process.request_exit(ExitReason::Idle);
            return;
        }
        end_everything(&self.state);
        wait_idle(&self.state, Some(Instant::now() + FINAL_FLUSH)).await;
        let still_in_flight = self.state.active();
        tracing::warn!(still_in_flight, "exiting after shutdown.grace");
        self.state
            .process
            .request_exit(ExitReason::GraceExpired { still_in_flight });
    }
}

/// Wait until nothing is in flight (seen twice, 50 ms apart, so a request whose headers were
/// being read when the listeners closed has had time to be counted) or `deadline`.
async fn wait_idle(state: &AppState, deadline: Option<Instant>) {
    let mut zero_seen = false;
    loop {
        let idle = state.process.idle.notified();
        if state.active() == 0 {
            if zero_seen {
                return;
            }
            zero_seen = true;
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        zero_seen = false;
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return;
        }
        tokio::select! {
            _ = idle => {}
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
}

/// End every tracked item politely and log each one, plus a summary by kind.
fn end_everything(state: &AppState) {
    let now = std::time::Instant::now();
    let mut by_kind = crate::api::InFlight::default();
    for b in state.registry.all() {
        for item in b.items.all() {
            let kind = item.kind();
            let ended = end_item(&b, &item, EndReason::Shutdown);
            by_kind[kind] += 1;
            tracing::warn!(
                backend = %b.id,
                kind = kind.as_str(),
                path = %item.uri.path(),
                route = %item.route,
                age_s = item.age(now).as_secs_f64(),
                client = ?item.client,
                ended_politely = ended,
                "abandoned at shutdown.grace"
            );
        }
    }
    tracing::warn!(
        "shutdown.grace reached: ending in-flight work ({})",
        by_kind.fields()
    );
}
