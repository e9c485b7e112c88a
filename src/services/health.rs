//! Active health checks: every pool with a `health_check` has each backend probed with an
//! HTTP/1.1 GET on its interval; `fall` consecutive failures make it unhealthy, `rise`
//! consecutive passes healthy again (a never-checked backend needs one pass). Health lives in
//! the backend's registry state, so it survives reloads. Changes wake held requests.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use async_trait::async_trait;
use pingora::{server::ShutdownWatch, services::background::BackgroundService};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{
    config::spec::HealthCheck,
    state::{backend::BackendState, AppState},
};

/// Background service running the checks.
pub struct HealthChecker {
    pub state: Arc<AppState>,
}

#[async_trait]
impl BackgroundService for HealthChecker {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        // Next due time per backend id; checks run on the current table each tick.
        let mut due: HashMap<Arc<str>, Instant> = HashMap::new();
        loop {
            self.tick(&mut due);
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                // Checks stop with the listeners: nothing new is routed any more.
                _ = shutdown.changed() => return,
            }
        }
    }
}

impl HealthChecker {
    /// Start the checks that are due; forget backends no longer in the table.
    fn tick(&self, due: &mut HashMap<Arc<str>, Instant>) {
        let table = self.state.table_full();
        let now = Instant::now();
        for pool in table.pools.values() {
            let Some(hc) = &pool.spec.health_check else {
                continue;
            };
            for b in pool.backends.iter().filter(|b| b.addr.is_some()) {
                let next = due.entry(b.id.clone()).or_insert(now);
                if *next > now {
                    continue;
                }
                *next = now + hc.interval;
                let Some(addr) = b.addr else { continue };
                let (st, hc, state) = (b.state.clone(), hc.clone(), self.state.clone());
                tokio::spawn(async move { check(&state, &st, addr, &hc).await });
            }
        }
        due.retain(|id, _| table.backends().any(|(_, b)| b.id == *id));
    }
}

/// One check and its consequences: health changes are logged and wake held requests.
async fn check(state: &AppState, st: &BackendState, addr: std::net::SocketAddr, hc: &HealthCheck) {
    let ok = probe(addr, hc).await;
    if let Err(why) = &ok {
        tracing::debug!(backend = %st.id, why, "health check failed");
    }
    // A pass also ends a passive failure streak: requests held after failing to connect
    // here may try again.
    let recovered = ok.is_ok() && st.record_connect_ok();
    let changed = st.record_check(ok.is_ok(), hc.rise, hc.fall);
    if recovered && changed.is_none() {
        state.availability_changed();
    }
    if let Some(healthy) = changed {
        if healthy {
            tracing::info!(backend = %st.id, "backend healthy");
        } else {
            tracing::warn!(backend = %st.id, error = ?ok.err(), "backend unhealthy");
        }
        state.availability_changed();
    }
}

/// One probe: connect, `GET path`, read the status line, compare.
async fn probe(addr: std::net::SocketAddr, hc: &HealthCheck) -> Result<(), String> {
    let work = async {
        let mut s = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let req = format!(
            "GET {} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: tidegate-health-check\r\nConnection: close\r\n\r\n",
            hc.path
        );
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut buf = [0u8; 64];
        let mut n = 0;
        while n < 12 {
            let r = s
                .read(&mut buf[n..])
                .await
                .map_err(|e| format!("read: {e}"))?;
            if r == 0 {
                break;
            }
            n += r;
        }
        let head = std::str::from_utf8(&buf[..n]).unwrap_or("");
        let code: u16 = head
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| format!("bad status line {head:?}"))?;
        if code == hc.expected_status {
            Ok(())
        } else {
            Err(format!("status {code}, expected {}", hc.expected_status))
        }
    };
    tokio::time::timeout(hc.timeout, work)
        .await
        .map_err(|_| "timed out".to_string())?
}
