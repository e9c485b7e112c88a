//! Reload triggers (SIGHUP, config directory watch) and startup listener verification.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use async_trait::async_trait;
use notify::{RecursiveMode, Watcher};
use pingora::{server::ShutdownWatch, services::background::BackgroundService};
use tokio::sync::mpsc;

use crate::state::{AppState, ExitReason};

/// Background service for reloads and readiness.
pub struct Control {
    pub state: Arc<AppState>,
}

#[async_trait]
impl BackgroundService for Control {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let state = self.state.clone();
        tokio::spawn(verify_listeners(state.clone()));
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!(error = %e, "cannot handle SIGHUP; reload by file change or API only");
                None
            }
        };
        let (tx, mut rx) = mpsc::unbounded_channel::<()>();
        // Read once at start: turning the watch on or off needs a restart.
        let _watcher = if state.table().spec.config_watch {
            watch_dir(&state.config_path, tx)
        } else {
            drop(tx);
            None
        };
        loop {
            tokio::select! {
                Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                    reload(&state, "sighup", false).await;
                }
                Some(()) = rx.recv(), if !rx.is_closed() => {
                    // Debounce: editors and ConfigMap swaps produce bursts of events.
                    tokio::time::sleep(Duration::from_millis(150)).await;
                    while rx.try_recv().is_ok() {}
                    reload(&state, "file_watch", true).await;
                }
                // A reload after the listeners closed would change nothing that matters.
                _ = shutdown.changed() => return,
            }
        }
    }
}

async fn reload(state: &Arc<AppState>, source: &'static str, only_if_changed: bool) {
    let st = state.clone();
    let res = tokio::task::spawn_blocking(move || {
        if only_if_changed && !super::reload::file_changed(&st) {
            return None;
        }
        Some(super::reload::reload(&st))
    })
    .await;
    match res {
        Ok(None) => {}
        Ok(Some(Ok(s))) => tracing::info!(
            source,
            generation = s.generation,
            routes_changed = ?s.diff.routes_changed,
            pools_changed = ?s.diff.pools_changed,
            needs_restart = ?s.diff.needs_restart,
            "config reloaded"
        ),
        Ok(Some(Err(e))) => {
            tracing::error!(source, error = %e, "config reload failed; keeping the running config")
        }
        Err(e) => tracing::error!(source, error = %e, "reload task failed"),
    }
}

/// Watch the directory (not the file): editors replace files by rename and Kubernetes swaps
/// a `..data` symlink, both of which a watch on the file itself would miss.
fn watch_dir(
    config: &std::path::Path,
    tx: mpsc::UnboundedSender<()>,
) -> Option<notify::RecommendedWatcher> {
    let dir: PathBuf = match config.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut w = match notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        // Opening and reading the file (the reload itself does) is not a change.
        if ev.is_ok_and(|e| !matches!(e.kind, notify::EventKind::Access(_))) {
            let _ = tx.send(());
        }
    }) {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch the config directory; reload with SIGHUP or the API");
            return None;
        }
    };
    if let Err(e) = w.watch(&dir, RecursiveMode::NonRecursive) {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot watch the config directory; reload with SIGHUP or the API");
        return None;
    }
    Some(w)
}

/// Connect to every listener; readiness turns green only when all accept. pingora logs bind
/// failures inside its service and carries on, so a missing listener must end the process here.
async fn verify_listeners(state: Arc<AppState>) {
    let addrs: Vec<(String, SocketAddr)> = state
        .table()
        .spec
        .listeners
        .iter()
        .map(|l| (l.name.clone(), connectable(l.addr)))
        .collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    for (name, addr) in addrs {
        loop {
            match tokio::net::TcpStream::connect(addr).await {
                Ok(_) => break,
                Err(e) if tokio::time::Instant::now() >= deadline => {
                    tracing::error!(listener = %name, address = %addr, error = %e, "listener is not accepting connections; exiting");
                    state.process.request_exit(ExitReason::Failed(format!(
                        "listener {name} ({addr}) is not accepting connections: {e}"
                    )));
                    return;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }
    state.process.set_ready(true);
    tracing::info!(generation = state.table().generation, "tidegate ready");
}

fn connectable(a: SocketAddr) -> SocketAddr {
    match a.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), a.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), a.port())
        }
        _ => a,
    }
}
