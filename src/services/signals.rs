//! Signals, for pingora's `Server::run`: SIGTERM fails readiness at once, waits
//! `shutdown.delay`, then lets pingora stop accepting; SIGQUIT hands listeners to an upgraded
//! process; SIGUSR1 reopens the access log file; SIGINT stops at once.

use std::sync::Arc;

use async_trait::async_trait;
use pingora::server::{ShutdownSignal, ShutdownSignalWatch};
use tokio::signal::unix::{signal, SignalKind};

use crate::state::AppState;

/// Signal handling for pingora's `Server::run`.
pub struct Signals {
    pub state: Arc<AppState>,
    /// The upgrade socket pingora was started with (checked before a hand-off).
    pub upgrade_sock: std::path::PathBuf,
}

#[async_trait]
impl ShutdownSignalWatch for Signals {
    // Long: one select over the signals; SIGQUIT holds the whole hand-off decision.
    async fn recv(&self) -> ShutdownSignal {
        // SIGUSR1 in a task of its own: a rotation during shutdown.delay or the grace after
        // still reopens the file.
        if let Ok(mut usr1) = signal(SignalKind::user_defined1()) {
            let state = self.state.clone();
            tokio::spawn(async move {
                while usr1.recv().await.is_some() {
                    tracing::info!("SIGUSR1: reopening the access log");
                    // The writer reopens the file within 10 ms, idle or not.
                    state.access_log.request_reopen();
                }
            });
        }
        let (Ok(mut term), Ok(mut quit), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::quit()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::error!("cannot install signal handlers; stopping");
            return ShutdownSignal::FastShutdown;
        };
        loop {
            tokio::select! {
            _ = term.recv() => {
                self.state.process.begin_shutdown();
                let delay = self.state.table().spec.shutdown.delay;
                tracing::info!(delay_ms = delay.as_millis() as u64, in_flight = self.state.active(),
                    "SIGTERM: readiness off; still serving during shutdown.delay");
                tokio::time::sleep(delay).await;
                tracing::info!(in_flight = self.state.active(), "closing listeners; exiting once idle");
                return ShutdownSignal::GracefulTerminate;
            }
            _ = quit.recv() => {
                let sock = self.upgrade_sock.clone();
                let addrs: Vec<std::net::SocketAddr> =
                    self.state.table().spec.listeners.iter().map(|l| l.addr).collect();
                let handed = tokio::task::spawn_blocking(move || super::upgrade::hand_over(&sock, &addrs)).await;
                match handed {
                    Ok(Ok(n)) => tracing::info!(sockets = n, "listening sockets sent to the upgraded process"),
                    Ok(Err(why)) => {
                        tracing::error!(reason = %why, "SIGQUIT: graceful upgrade refused; still serving");
                        continue;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "SIGQUIT: upgrade failed; still serving");
                        continue;
                    }
                }
                self.state.process.begin_shutdown();
                // The new process restored the state file and writes it from now on; a late
                // write here would put this process's older view back.
                self.state.process.hand_off();
                tracing::info!("SIGQUIT: handing listeners to the upgraded process");
                return ShutdownSignal::GracefulUpgrade;
            }
            _ = int.recv() => {
                tracing::info!("SIGINT: stopping now");
                return ShutdownSignal::FastShutdown;
            }
            }
        }
    }
}
