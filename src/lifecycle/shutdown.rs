//! Exit as soon as the proxy is idle after pingora stops accepting, or at the grace deadline.

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use pingora::{server::ShutdownWatch, services::background::BackgroundService};
use tokio::time::Instant;

use crate::state::AppState;

/// Background service that ends the process once shutdown has begun and nothing is in flight.
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
        let grace = self.state.config().shutdown.grace;
        let deadline = grace.map(|g| Instant::now() + g);
        let mut zero_seen = false;
        loop {
            let idle = self.state.idle.notified();
            let active = self.state.active();
            if active == 0 {
                // Seen idle twice, 50 ms apart: a request whose headers were being read when
                // the listeners closed has had time to get its context.
                if zero_seen {
                    tracing::info!("idle: exiting");
                    std::process::exit(0);
                }
                zero_seen = true;
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            zero_seen = false;
            if deadline.is_some_and(|d| Instant::now() >= d) {
                tracing::warn!(
                    abandoned = active,
                    "shutdown.grace reached with work in flight; exiting"
                );
                std::process::exit(1);
            }
            let tick = Duration::from_millis(100);
            tokio::select! {
                _ = idle => {}
                _ = tokio::time::sleep(tick) => {}
            }
        }
    }
}
