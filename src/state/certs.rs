//! The certificates each TLS listener serves right now, swapped whole when a file changes
//! (`services::certs` watches and loads them), and the rustls resolver that picks one per
//! handshake by SNI. Open connections keep the certificate they were made with.

use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use pingora::tls::{sign::CertifiedKey, ClientHello, ResolvesServerCert};

use crate::config::{
    spec::TlsFiles,
    tls::{CertSet, Served},
};

/// What became of a pair's last load.
#[derive(Clone, Debug, Default)]
pub struct PairStatus {
    /// When the certificate now served was loaded (Unix seconds).
    pub loaded_at: i64,
    /// The last load that failed (the old certificate kept serving), cleared by a success.
    pub last_error: Option<String>,
    pub reloads_ok: u64,
    pub reloads_failed: u64,
}

/// One TLS listener's certificates.
#[derive(Debug)]
pub struct ListenerCerts {
    pub listener: String,
    /// The files, in the config's order (the first is the default).
    pub pairs: Vec<TlsFiles>,
    set: ArcSwap<CertSet>,
    status: Mutex<Vec<PairStatus>>,
}

impl ListenerCerts {
    /// Certificates loaded at start (one per pair, in order).
    pub fn new(listener: &str, pairs: Vec<TlsFiles>, certs: Vec<Arc<Served>>, now: i64) -> Self {
        let status = certs
            .iter()
            .map(|_| PairStatus {
                loaded_at: now,
                ..Default::default()
            })
            .collect();
        Self {
            listener: listener.to_string(),
            pairs,
            set: ArcSwap::from_pointee(CertSet::new(certs)),
            status: Mutex::new(status),
        }
    }

    /// The set served now.
    pub fn current(&self) -> Arc<CertSet> {
        self.set.load_full()
    }

    /// Pair `i` now serves `c` (new handshakes only).
    pub fn replace(&self, i: usize, c: Arc<Served>, now: i64) {
        let next = self.current().with(i, c);
        self.set.store(Arc::new(next));
        self.update(i, |s| {
            s.loaded_at = now;
            s.last_error = None;
            s.reloads_ok += 1;
        });
    }

    /// Pair `i` could not be loaded; the old certificate keeps serving.
    pub fn refused(&self, i: usize, error: String) {
        self.update(i, |s| {
            s.last_error = Some(error);
            s.reloads_failed += 1;
        });
    }

    pub fn status(&self) -> Vec<PairStatus> {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn update(&self, i: usize, f: impl FnOnce(&mut PairStatus)) {
        let mut v = self.status.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = v.get_mut(i) {
            f(s);
        }
    }
}

/// The handshake's resolver: a lock-free read of the current set.
#[derive(Debug)]
pub struct Resolver(pub Arc<ListenerCerts>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let set = self.0.set.load();
        set.pick(hello.server_name()).map(|c| c.key.clone())
    }
}

/// Every TLS listener's certificates (filled once at start).
#[derive(Debug, Default)]
pub struct Certs(std::sync::OnceLock<Vec<Arc<ListenerCerts>>>);

impl Certs {
    pub fn set(&self, all: Vec<Arc<ListenerCerts>>) {
        let _ = self.0.set(all);
    }

    pub fn all(&self) -> &[Arc<ListenerCerts>] {
        self.0.get().map_or(&[], Vec::as_slice)
    }

    pub fn of(&self, listener: &str) -> Option<&Arc<ListenerCerts>> {
        self.all().iter().find(|c| c.listener == listener)
    }
}
