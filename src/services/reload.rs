//! Reload: read the file, validate it (nothing live is touched), then bind and publish it as
//! the next generation, following its declared drains before the store. A refused file
//! changes nothing: the old table keeps serving, the error is counted and returned.

use std::{collections::hash_map::DefaultHasher, hash::Hasher};

use super::{drains, persist};
use crate::{
    api::ReloadSummary,
    config::{self, ConfigError},
    state::AppState,
};

/// Hash of a config file's bytes (a watch event without a change is a no-op).
pub fn hash(bytes: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    h.write(bytes);
    h.finish()
}

/// Whether the file's content differs from what was last published and from what was last
/// refused (unreadable counts as changed, so the reload reports why). A broken file is
/// reported once, not on every event in its directory.
pub fn file_changed(state: &AppState) -> bool {
    match std::fs::read(&state.config_path) {
        Ok(t) => {
            let h = hash(&t);
            h != state.file_hash() && h != state.process.refused_hash()
        }
        Err(_) => true,
    }
}

/// The admin listener stays bound to its start address until a restart: a file that would
/// leave it without a token off loopback is refused (whatever address the file names).
fn keeps_admin_token(bound: std::net::SocketAddr, spec: &config::Spec) -> Result<(), ConfigError> {
    if bound.ip().is_loopback() || spec.admin.token.is_some() {
        return Ok(());
    }
    Err(ConfigError::Security {
        path: "admin".into(),
        message: format!(
            "the admin listener is bound to {bound} (not loopback) until a restart: a reload cannot remove its token (admin.token_env or admin.token_file)"
        ),
    })
}

/// Re-read the config file; publish it when valid. Blocking (file I/O, DNS): call it from a
/// blocking thread.
pub fn reload(state: &AppState) -> Result<ReloadSummary, ConfigError> {
    let loaded = std::fs::read(&state.config_path)
        .map_err(|source| ConfigError::Read {
            file: state.config_path.clone(),
            source,
        })
        .and_then(|bytes| {
            let h = hash(&bytes);
            config::load_bytes(&bytes, &|k| std::env::var(k).ok()).map(|l| (l, h))
        })
        .and_then(|(l, h)| keeps_admin_token(state.admin_bound, &l.spec).map(|()| (l, h)));
    let (loaded, file_hash) = match loaded {
        Ok(l) => l,
        Err(e) => {
            if let Ok(bytes) = std::fs::read(&state.config_path) {
                state.process.set_refused_hash(hash(&bytes));
            }
            state.process.record_reload(Err(e.to_string()));
            return Err(e);
        }
    };
    let mut warnings = loaded.warnings;
    let (diff, generation) = state.publish_spec(loaded.spec, file_hash, &mut warnings, |t| {
        drains::follow_file(state, t)
    });
    for r in diff.routes_changed.iter().chain(&diff.routes_removed) {
        state.ramps.cancel(r, "a config reload changed the route");
    }
    // The file may have started or ended a drain; overrides are re-saved as well.
    persist::save(state);
    state.process.record_reload(Ok(()));
    for w in &warnings {
        tracing::warn!("{w}");
    }
    Ok(ReloadSummary {
        generation,
        changed: diff.routing_changed(),
        diff,
        warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "listeners: [{ name: p, address: 127.0.0.1:18080 }]
config_watch: false
routes:
  - name: app
    split: { blue: 100 }
pools:
  blue:
    backends: [{ address: 127.0.0.1:3001 }]
";

    /// Validate first, then bind: a file refused for a late error (after a new pool and a
    /// new backend were read) adds nothing to the live registry and keeps the generation.
    #[test]
    fn a_refused_file_touches_nothing_live() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.yaml");
        std::fs::write(&path, GOOD).unwrap();
        let spec = config::load_str(GOOD, &|_| None).unwrap().spec;
        let state = AppState::new(spec, path.clone(), hash(GOOD.as_bytes()));
        let ids = |s: &AppState| {
            let mut v: Vec<String> = s.registry.all().iter().map(|b| b.id.to_string()).collect();
            v.sort();
            v
        };
        let before = ids(&state);
        assert_eq!(before, ["blue/127.0.0.1:3001"]);
        let bad = GOOD.replace(
            "pools:\n",
            "pools:\n  green:\n    backends: [{ address: 127.0.0.1:3009 }]\n",
        ) + "shutdown: { grace: nonsense }\n";
        assert!(bad.contains("green"), "the variant applied");
        std::fs::write(&path, &bad).unwrap();
        assert!(reload(&state).is_err());
        assert_eq!(ids(&state), before);
        assert!(state.registry.pools().iter().all(|p| &*p.name != "green"));
        assert_eq!(state.table().generation, 1);
        // The same file without its error does bind the new pool.
        std::fs::write(&path, bad.replace("shutdown: { grace: nonsense }\n", "")).unwrap();
        reload(&state).unwrap();
        assert!(ids(&state).contains(&"blue/127.0.0.1:3001".to_string()));
        assert!(ids(&state).contains(&"green/127.0.0.1:3009".to_string()));
    }
}
