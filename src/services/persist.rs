//! `state_file`: runtime overrides (drains of pools and backends, split overrides,
//! maintenance) saved after every change and restored at start, before the first request.
//!
//! Written crash-safe by one writer at a time: a snapshot taken under the writer's lock, a
//! temp file of its own (named after the process and a counter, so two writers, or an old
//! and an upgraded process, never share one) in the same directory, mode 0600, fsync'd,
//! renamed over the old one, then the directory fsync'd so the rename itself survives a
//! power loss.

use std::{
    io::Write,
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::Path,
    sync::{
        atomic::{AtomicU64, Ordering},
        Mutex,
    },
};

use serde::{Deserialize, Serialize};

use crate::{
    drain::machine::{Machine, Phase},
    state::{overrides::Overrides, process::unix, AppState},
};

/// The file's content.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Saved {
    pub version: u32,
    pub drains: Vec<SavedDrain>,
    #[serde(default)]
    pub overrides: Overrides,
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

impl SavedDrain {
    /// Its start and deadlines, checked like a fleet row (a hand-edited file is input).
    pub fn checked(
        &self,
    ) -> Result<(std::time::SystemTime, crate::drain::machine::Deadlines), String> {
        crate::services::fleet::rows::drain(
            self.started_at,
            self.requests_deadline_ms,
            self.streams_deadline_ms,
            self.close_spread_ms,
        )
    }
}

pub(crate) fn saved_drain(pool: &str, backend: Option<&str>, m: &Machine) -> Option<SavedDrain> {
    if m.phase() == Phase::Active {
        return None;
    }
    let d = m.deadlines();
    Some(SavedDrain {
        pool: pool.to_string(),
        backend: backend.map(str::to_string),
        started_at: m.started_at().map_or(0.0, unix),
        requests_deadline_ms: d.requests.map(|d| d.as_millis() as u64),
        streams_deadline_ms: d.streams.map(|d| d.as_millis() as u64),
        close_spread_ms: d.close_spread.as_millis() as u64,
    })
}

/// Everything the state file holds, as of now.
pub fn snapshot(state: &AppState) -> Saved {
    let mut drains = Vec::new();
    for p in state.registry.pools() {
        drains.extend(saved_drain(&p.name, None, &p.drain.snapshot()));
    }
    for b in state.registry.all() {
        drains.extend(saved_drain(
            &b.pool.name,
            Some(&b.name),
            &b.drain.snapshot(),
        ));
    }
    Saved {
        version: 1,
        drains,
        overrides: state.overrides(),
    }
}

/// Write the overrides to `state_file` (if configured). Errors are logged, not fatal: the
/// running state is still right, only a restart would forget it.
pub fn save(state: &AppState) {
    if state.fleet.enabled() {
        // The control store is the truth: `services::fleet` publishes the change.
        state.fleet.changed();
        return;
    }
    let Some(path) = state.table().spec.state_file.clone() else {
        return;
    };
    if state.process.is_handed_off() {
        tracing::debug!("state_file belongs to the upgraded process now; not written");
        return;
    }
    // One writer at a time, and the snapshot inside the lock: the last write holds the
    // newest state, whatever order two changes finished in. Plain data: a panic while
    // holding it leaves nothing half-done in memory.
    let _one = WRITER.lock().unwrap_or_else(|p| p.into_inner());
    if let Err(e) = write_durably(&path, &snapshot(state)) {
        tracing::error!(file = %path.display(), error = %e, "cannot write state_file");
    }
}

/// Re-apply saved overrides at start, before any traffic. Returns the saved drains, for the
/// drain service to resume ([`super::drains::resume`]).
pub fn restore(state: &AppState) -> Vec<SavedDrain> {
    if state.fleet.enabled() {
        // The shared state is loaded by `services::fleet` before the first request.
        return Vec::new();
    }
    let Some(path) = state.table().spec.state_file.clone() else {
        return Vec::new();
    };
    remove_stale_temps(&path);
    match tighten(&path) {
        Ok(true) => {
            tracing::warn!(file = %path.display(), "state_file was readable by others; now mode 0600")
        }
        Ok(false) => {}
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "cannot make state_file private")
        }
    }
    let saved: Saved = match std::fs::read(&path) {
        Ok(bytes) => match serde_json::from_slice(&bytes) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(file = %path.display(), error = %crate::api::printable(&e.to_string()), "state_file is not valid; starting without overrides");
                return Vec::new();
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => {
            tracing::error!(file = %path.display(), error = %e, "cannot read state_file; starting without overrides");
            return Vec::new();
        }
    };
    let ov = checked_overrides(saved.overrides);
    let _ = state.change_overrides(|o, _| {
        *o = ov;
        Ok::<(), ()>(())
    });
    saved.drains
}

/// Saved overrides as they may be restored: each kind checked like a row from the control
/// store (a hand-edited file is input too), what fails logged and left out.
fn checked_overrides(
    mut ov: crate::state::overrides::Overrides,
) -> crate::state::overrides::Overrides {
    // Checked like rows from the control store (a hand-edited file is input too).
    use crate::services::fleet::rows;
    ov.splits.retain(|route, s| match rows::split("split", s) {
        Ok(()) => true,
        Err(e) => {
            tracing::error!(route = %crate::api::printable(route), error = %e, "a split in state_file is not valid; not restored");
            false
        }
    });
    if let Some(Err(e)) = ov.maintenance.as_ref().map(rows::maintenance) {
        tracing::error!(error = %crate::api::printable(&e), "maintenance in state_file is not valid; not restored");
        ov.maintenance = None;
    }
    ov.checkpoints.retain(|route, c| match rows::checkpoint(c) {
        Ok(()) => true,
        Err(e) => {
            tracing::error!(route = %crate::api::printable(route), error = %e, "a checkpoint in state_file is not valid; not restored");
            false
        }
    });
    // Runtime members are saved as given: validate them again.
    for (pool, entries) in &ov.backends {
        match crate::config::build::runtime_backends(pool, entries) {
            Ok(m) => {
                ov.members.insert(pool.clone(), m);
            }
            Err(e) => {
                tracing::error!(pool = %crate::api::printable(pool), error = %crate::api::printable(&e.to_string()), "saved backends override is not valid any more; using the file's");
            }
        }
    }
    let members = ov.members.clone();
    ov.backends.retain(|p, _| members.contains_key(p));
    ov
}

/// Serializes writes of the state file within this process.
static WRITER: Mutex<()> = Mutex::new(());
/// Distinguishes the temp files of one process.
static TEMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// Create `path` for writing, new and readable by its owner only (it may hold tokens or
/// request bodies).
pub fn create_private(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

/// Make an existing file readable by its owner only; whether it had to change.
pub fn tighten(path: &Path) -> std::io::Result<bool> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    if meta.permissions().mode() & 0o077 == 0 {
        return Ok(false);
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(true)
}

/// Temp files (`NAME.PID.N.tmp`) of processes that died before their rename.
fn remove_stale_temps(path: &Path) {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return;
    };
    let prefix = format!("{}.", name.to_string_lossy());
    let Ok(entries) = std::fs::read_dir(if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    }) else {
        return;
    };
    for e in entries.flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = n
            .strip_prefix(&prefix)
            .and_then(|r| r.strip_suffix(".tmp"))
            .and_then(|r| r.split('.').next())
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        if !crate::state::process::is_running(pid) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

fn write_durably(path: &Path, saved: &Saved) -> std::io::Result<()> {
    let bytes = serde_json::to_vec_pretty(saved).map_err(std::io::Error::other)?;
    // Relaxed: only uniqueness matters.
    let n = TEMP_SEQ.fetch_add(1, Ordering::Relaxed);
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{}.{n}.tmp", std::process::id()));
    let tmp = path.with_file_name(name);
    // A temp file of a crashed earlier process with this pid: stale, replaced.
    let file = match create_private(&tmp) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            std::fs::remove_file(&tmp)?;
            create_private(&tmp)
        }
        other => other,
    };
    let written = file.and_then(|mut f| {
        f.write_all(&bytes)?;
        f.sync_all()
    });
    if let Err(e) = written.and_then(|()| std::fs::rename(&tmp, path)) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::File::open(dir)?.sync_all()
}

/// `cargo fuzz`: a `state_file` as `restore` reads it, through the same checks.
#[doc(hidden)]
pub fn fuzz_state_file(data: &[u8]) {
    let Ok(saved) = serde_json::from_slice::<Saved>(data) else {
        return;
    };
    for d in &saved.drains {
        let _ = d.checked();
    }
    // The checks `restore` makes, not a copy of them.
    let _ = checked_overrides(saved.overrides);
}
