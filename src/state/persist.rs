//! Runtime overrides saved to `state_file` (temp file + rename, so a crash never leaves a
//! half-written file) and restored at start: drains of pools and backends survive restarts.

use std::{
    path::Path,
    time::{Duration, SystemTime},
};

use serde::{Deserialize, Serialize};

use super::AppState;
use crate::drain::{
    enforce::Target,
    machine::{Deadlines, Phase},
};

/// The file's content.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Saved {
    pub version: u32,
    pub drains: Vec<SavedDrain>,
    #[serde(default)]
    pub overrides: super::overrides::Overrides,
}

/// One drain in progress (or finished and not undrained).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedDrain {
    pub pool: String,
    pub backend: Option<String>,
    /// Seconds since the Unix epoch.
    pub started_at: f64,
    pub requests_deadline_ms: Option<u64>,
    pub streams_deadline_ms: Option<u64>,
    pub close_spread_ms: u64,
}

fn saved_drain(
    pool: &str,
    backend: Option<&str>,
    m: &crate::drain::machine::Machine,
) -> Option<SavedDrain> {
    if m.phase() == Phase::Active {
        return None;
    }
    let d = m.deadlines();
    Some(SavedDrain {
        pool: pool.to_string(),
        backend: backend.map(str::to_string),
        started_at: m.started_at().map_or(0.0, crate::drain::view::unix),
        requests_deadline_ms: d.requests.map(|d| d.as_millis() as u64),
        streams_deadline_ms: d.streams.map(|d| d.as_millis() as u64),
        close_spread_ms: d.close_spread.as_millis() as u64,
    })
}

impl AppState {
    /// Everything the state file holds, as of now.
    pub fn saved(&self) -> Saved {
        let mut drains = Vec::new();
        for p in self.registry.pools() {
            drains.extend(saved_drain(&p.name, None, &p.drain.snapshot()));
        }
        for b in self.registry.all() {
            drains.extend(saved_drain(
                &b.pool.name,
                Some(&b.name),
                &b.drain.snapshot(),
            ));
        }
        Saved {
            version: 1,
            drains,
            overrides: self.overrides_snapshot(),
        }
    }

    /// Write the overrides to `state_file` (if configured). Errors are logged, not fatal:
    /// the running state is still right, only a restart would forget it.
    pub fn persist(&self) {
        let Some(path) = self.config().state_file.clone() else {
            return;
        };
        if let Err(e) = write_atomic(&path, &self.saved()) {
            tracing::error!(file = %path.display(), error = %e, "cannot write state_file");
        }
    }

    /// Re-apply saved overrides at start, before any traffic; drains resume with their
    /// original start time, so deadlines keep counting from then. Returns the drains whose
    /// deadline tasks the caller must spawn once a runtime runs ([`enforce::spawn`]).
    pub fn restore(&self) -> Vec<(Target, u64)> {
        let mut restored = Vec::new();
        let Some(path) = self.config().state_file.clone() else {
            return restored;
        };
        let saved: Saved = match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice(&bytes) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(file = %path.display(), error = %e, "state_file is not valid; starting without overrides");
                    return restored;
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return restored,
            Err(e) => {
                tracing::error!(file = %path.display(), error = %e, "cannot read state_file; starting without overrides");
                return restored;
            }
        };
        self.set_overrides(saved.overrides);
        for d in saved.drains {
            let started = SystemTime::UNIX_EPOCH + Duration::from_secs_f64(d.started_at.max(0.0));
            let deadlines = Deadlines {
                requests: d.requests_deadline_ms.map(Duration::from_millis),
                streams: d.streams_deadline_ms.map(Duration::from_millis),
                close_spread: Duration::from_millis(d.close_spread_ms),
            };
            let (target, epoch) = match &d.backend {
                None => {
                    let p = self.registry.pool(&d.pool);
                    let epoch = p.drain.restore(started, deadlines, p.counts.total());
                    (Target::Pool(p.name.clone()), epoch)
                }
                Some(b) => {
                    let st = self.registry.get_or_create(&d.pool, b);
                    let epoch = st.drain.restore(started, deadlines, st.counts.total());
                    (Target::Backend(st), epoch)
                }
            };
            tracing::info!(pool = %d.pool, backend = ?d.backend, "drain restored from state_file");
            restored.push((target, epoch));
        }
        restored
    }
}

fn write_atomic(path: &Path, saved: &Saved) -> std::io::Result<()> {
    let bytes = serde_json::to_vec_pretty(saved).map_err(std::io::Error::other)?;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

impl AppState {
    /// Apply the file's `state: draining` declarations of `cfg`'s pools and backends (see
    /// [`super::backend::DrainCell::follow_file`]). Returns drains whose deadline tasks the
    /// caller spawns.
    pub fn apply_declared(&self, cfg: &crate::config::RuntimeConfig) -> Vec<(Target, u64)> {
        let mut started = Vec::new();
        for pool in cfg.pools.values() {
            let d = Deadlines {
                requests: pool.drain.requests_deadline,
                streams: pool.drain.streams_deadline,
                close_spread: pool.drain.close_spread,
            };
            let ps = self.registry.pool(&pool.name);
            if let Some(e) = ps
                .drain
                .follow_file(pool.declared_draining, d, ps.counts.total())
            {
                tracing::info!(pool = %pool.name, "draining: declared in the config file");
                started.push((Target::Pool(ps.name.clone()), e));
            }
            for b in &pool.backends {
                if let Some(e) =
                    b.state
                        .drain
                        .follow_file(b.declared_draining, d, b.state.counts.total())
                {
                    tracing::info!(backend = %b.id, "draining: declared in the config file");
                    started.push((Target::Backend(b.state.clone()), e));
                }
            }
        }
        started
    }
}
