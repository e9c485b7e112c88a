//! Listener certificates from files: loaded at start, then watched. A pair whose files
//! changed (rename-on-save, a Kubernetes Secret's `..data` symlink swap, an in-place write)
//! and then held still for one look is loaded through the same [`config::tls::load_pair`]
//! `tidegate check` uses; a good pair serves new handshakes at once, a broken or mismatched
//! one is refused with a log line and the old certificate keeps serving.

use std::{os::unix::fs::MetadataExt, path::Path, sync::Arc, time::Duration};

use async_trait::async_trait;
use pingora::{server::ShutdownWatch, services::background::BackgroundService};

use crate::{
    config::{
        self,
        spec::{Spec, TlsFiles},
        tls::{Served, Source},
    },
    state::{certs::ListenerCerts, AppState},
};

/// How often the files are looked at (a change serves within two looks).
const LOOK: Duration = Duration::from_millis(250);

/// Load one pair from its files.
pub fn load_files(f: &TlsFiles) -> Result<Arc<Served>, String> {
    let read = |p: &Path| std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()));
    let (key, info) = config::tls::load_pair(&read(&f.cert)?, &read(&f.key)?)?;
    Ok(Arc::new(Served {
        key,
        info,
        source: Source::File,
        only_named: false,
    }))
}

/// Every TLS listener's certificates, loaded from their files.
pub fn load_all(spec: &Spec) -> Result<Vec<Arc<ListenerCerts>>, (String, String)> {
    let now = config::unix_now();
    let mut all = Vec::new();
    for l in &spec.listeners {
        let Some(tls) = &l.tls else { continue };
        let certs = tls
            .pairs
            .iter()
            .map(load_files)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| (l.name.clone(), e))?;
        let lc = Arc::new(ListenerCerts::new(&l.name, tls.pairs.clone(), certs, now));
        // An ACME certificate stored by an earlier run serves from the first handshake
        // (the ACME service takes it over from here).
        if let Some(a) = tls.acme.as_ref().filter(|a| !a.domains.is_empty()) {
            let dir = super::acme::files::cert_dir(&a.storage, &a.domains);
            if let Ok(c) = super::acme::files::load_stored(&dir) {
                if c.info.not_after > now {
                    let due = super::acme::renew_at(&c.info);
                    lc.install(&a.domains.join(","), c, now, due);
                }
            }
        }
        all.push(lc);
    }
    Ok(all)
}

/// What identifies a file's current contents without reading it (symlinks followed).
type Stamp = Option<(u64, u64, i64, i64, u64)>;

fn stamp(p: &Path) -> Stamp {
    let m = std::fs::metadata(p).ok()?;
    Some((m.dev(), m.ino(), m.mtime(), m.mtime_nsec(), m.size()))
}

fn stamps(f: &TlsFiles) -> (Stamp, Stamp) {
    (stamp(&f.cert), stamp(&f.key))
}

/// One pair's watch: what was loaded, and what was seen at the last look.
struct Watch {
    loaded: (Stamp, Stamp),
    seen: (Stamp, Stamp),
}

/// The background service.
pub struct CertWatcher {
    pub state: Arc<AppState>,
}

#[async_trait]
impl BackgroundService for CertWatcher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let all = self.state.certs.all().to_vec();
        let mut watches: Vec<Vec<Watch>> = all
            .iter()
            .map(|l| {
                l.pairs
                    .iter()
                    .map(|f| {
                        let s = stamps(f);
                        Watch { loaded: s, seen: s }
                    })
                    .collect()
            })
            .collect();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(LOOK) => {}
                _ = shutdown.changed() => return,
            }
            for (l, ws) in all.iter().zip(watches.iter_mut()) {
                for (i, w) in ws.iter_mut().enumerate() {
                    look(l, i, w);
                }
            }
        }
    }
}

/// Load pair `i` when its files changed since it was loaded and held still since the last
/// look (a writer replacing cert and key one after the other is not caught half-way).
fn look(l: &ListenerCerts, i: usize, w: &mut Watch) {
    let Some(files) = l.pairs.get(i) else { return };
    let now = stamps(files);
    let settled = now == w.seen;
    w.seen = now;
    if !settled || now == w.loaded {
        return;
    }
    w.loaded = now;
    match load_files(files) {
        Ok(c) => {
            tracing::info!(
                listener = %l.listener,
                cert = %files.cert.display(),
                names = %c.info.names.join(","),
                not_after = c.info.not_after,
                "certificate reloaded; new handshakes use it"
            );
            l.replace(i, c, config::unix_now());
        }
        Err(e) => {
            tracing::warn!(
                listener = %l.listener,
                cert = %files.cert.display(),
                error = %e,
                "certificate reload refused; the old certificate keeps serving"
            );
            l.refused(i, e);
        }
    }
}
