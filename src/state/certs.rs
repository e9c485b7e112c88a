//! The certificates each TLS listener serves right now, swapped whole when a file changes
//! (`services::certs` watches and loads them), and the rustls resolver that picks one per
//! handshake by SNI. Open connections keep the certificate they were made with.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, OnceLock},
};

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
    /// ACME: when it is due for renewal (Unix seconds).
    pub renew_at: Option<i64>,
}

/// One TLS listener's certificates.
#[derive(Debug)]
pub struct ListenerCerts {
    pub listener: String,
    /// The files, in the config's order (the first is the default).
    pub pairs: Vec<TlsFiles>,
    set: ArcSwap<CertSet>,
    /// Per certificate, in the set's order (file pairs, then ACME ones). Held while the
    /// set is replaced, so the file watcher and the ACME service never lose an update.
    status: Mutex<Vec<PairStatus>>,
    /// ACME certificates by key (their names), in the set's order after the file pairs.
    acme: Mutex<Vec<String>>,
    /// Names seen in handshakes that no certificate claims (on-demand issuance).
    wanted: OnceLock<tokio::sync::mpsc::Sender<String>>,
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
            acme: Mutex::new(Vec::new()),
            wanted: OnceLock::new(),
        }
    }

    /// Serve an ACME certificate under `key` (replacing the one it had), due for renewal
    /// at `renew_at`.
    pub fn install(&self, key: &str, c: Arc<Served>, now: i64, renew_at: i64) {
        let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
        let mut keys = self.acme.lock().unwrap_or_else(|p| p.into_inner());
        let i = match keys.iter().position(|k| k == key) {
            Some(k) => self.pairs.len() + k,
            None => {
                keys.push(key.to_string());
                status.push(PairStatus::default());
                status.len() - 1
            }
        };
        self.set.store(Arc::new(self.current().with(i, c)));
        if let Some(s) = status.get_mut(i) {
            s.loaded_at = now;
            s.last_error = None;
            s.reloads_ok += 1;
            s.renew_at = Some(renew_at);
        }
    }

    /// Whether an ACME certificate under `key` is served.
    pub fn has_acme(&self, key: &str) -> bool {
        let keys = self.acme.lock().unwrap_or_else(|p| p.into_inner());
        keys.iter().any(|k| k == key)
    }

    /// Names no certificate claims go to `tx` (the on-demand issuer).
    pub fn want_unknown_names(&self, tx: tokio::sync::mpsc::Sender<String>) {
        let _ = self.wanted.set(tx);
    }

    /// The set served now.
    pub fn current(&self) -> Arc<CertSet> {
        self.set.load_full()
    }

    /// Pair `i` now serves `c` (new handshakes only).
    pub fn replace(&self, i: usize, c: Arc<Served>, now: i64) {
        let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
        self.set.store(Arc::new(self.current().with(i, c)));
        if let Some(s) = status.get_mut(i) {
            s.loaded_at = now;
            s.last_error = None;
            s.reloads_ok += 1;
        }
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
        if let (Some(name), Some(tx)) = (hello.server_name(), self.0.wanted.get()) {
            if set.find(name).is_none() {
                // Never blocks the handshake: a full queue drops the name (it is asked
                // for again on a later handshake).
                let _ = tx.try_send(name.to_ascii_lowercase());
            }
        }
        set.pick(hello.server_name()).map(|c| c.key.clone())
    }
}

/// A TLS-ALPN-01 challenge certificate and its key.
pub type AlpnCert = Arc<(
    pingora::tls::CertificateDer<'static>,
    pingora::tls::PrivateKeyDer<'static>,
)>;

/// ACME challenge answers: HTTP-01 (token → key authorization), served before routing, and
/// TLS-ALPN-01 (name → challenge certificate), answered before the TLS handshake.
#[derive(Default)]
pub struct Challenges(
    Mutex<HashMap<String, String>>,
    Mutex<HashMap<String, AlpnCert>>,
    std::sync::atomic::AtomicUsize,
    /// HTTP-01 tokens the fleet's peers are being validated with: a copy of the shared ACME
    /// store's, refreshed every second by the ACME service (never a query per request).
    arc_swap::ArcSwap<HashMap<String, String>>,
);

impl std::fmt::Debug for Challenges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Challenges")
    }
}

impl Challenges {
    /// The fleet's pending HTTP-01 tokens, as last read from the shared store.
    pub fn set_peer_tokens(&self, tokens: HashMap<String, String>) {
        self.3.store(Arc::new(tokens));
    }

    /// The answer to an HTTP-01 challenge: this proxy's, else a peer's (both in memory: a
    /// flood of made-up tokens costs a map look-up each).
    pub fn answer_any(&self, token: &str) -> Option<String> {
        if let Some(a) = self.answer(token) {
            return Some(a);
        }
        self.3.load().get(token).cloned()
    }

    pub fn put_alpn(&self, name: &str, cert: AlpnCert) {
        let mut m = self.1.lock().unwrap_or_else(|p| p.into_inner());
        m.insert(name.to_ascii_lowercase(), cert);
        self.2.store(m.len(), std::sync::atomic::Ordering::Relaxed);
    }

    pub fn remove_alpn(&self, name: &str) {
        let mut m = self.1.lock().unwrap_or_else(|p| p.into_inner());
        m.remove(&name.to_ascii_lowercase());
        self.2.store(m.len(), std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether any TLS-ALPN-01 challenge is pending (one atomic load: the accept path).
    pub fn alpn_pending(&self) -> bool {
        self.2.load(std::sync::atomic::Ordering::Relaxed) > 0
    }

    pub fn alpn_cert(&self, name: &str) -> Option<AlpnCert> {
        self.1
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    pub fn put(&self, token: &str, key_authorization: &str) {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        m.insert(token.to_string(), key_authorization.to_string());
    }

    pub fn remove(&self, token: &str) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(token);
    }

    pub fn answer(&self, token: &str) -> Option<String> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(token)
            .cloned()
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
