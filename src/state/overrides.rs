//! Runtime overrides of the file config: split weights per route and maintenance mode.
//! (Drains are overrides too; they live in the registry's drain cells.) Overrides survive
//! reloads (re-applied to every new snapshot) and restarts (`state_file`).

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use serde::{Deserialize, Serialize};

use crate::config::runtime::{Maintenance, RuntimeConfig};

/// Overrides as saved and applied.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Overrides {
    /// route → pool → weight.
    #[serde(default)]
    pub splits: BTreeMap<String, BTreeMap<String, u32>>,
    #[serde(default)]
    pub maintenance: Option<MaintenanceOverride>,
}

/// Maintenance mode as requested through the API.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaintenanceOverride {
    #[serde(default)]
    pub routes: Option<Vec<String>>,
    #[serde(default)]
    pub methods: Option<Vec<String>>,
    pub retry_after_seconds: u64,
    #[serde(default)]
    pub message: Option<String>,
    /// Seconds since the Unix epoch.
    pub since: f64,
}

/// Derive the effective snapshot: `base` (built from the file) with `ov` applied. Overrides
/// naming routes or pools that no longer exist are skipped (and reported in `warnings`).
pub fn apply(base: &RuntimeConfig, ov: &Overrides, warnings: &mut Vec<String>) -> RuntimeConfig {
    let mut cfg = base.clone();
    cfg.routes = base
        .routes
        .iter()
        .map(|r| {
            // The wanted split: the override, or the file's (when an override was cleared).
            let wanted: Vec<(String, u32)> = match ov.splits.get(&*r.name) {
                Some(split) => split.iter().map(|(p, w)| (p.clone(), *w)).collect(),
                None => r
                    .file_split
                    .iter()
                    .map(|(p, w)| (p.to_string(), *w))
                    .collect(),
            };
            let current: Vec<(String, u32)> = r
                .split
                .iter()
                .map(|(p, w)| (p.name.to_string(), *w))
                .collect();
            if wanted == current {
                return r.clone();
            }
            let mut eff = Vec::with_capacity(wanted.len());
            for (pool, w) in wanted {
                match base.pools.get(pool.as_str()) {
                    Some(p) => eff.push((p.clone(), w)),
                    None => warnings.push(format!(
                        "split override of route {}: pool {pool:?} no longer exists; ignored",
                        r.name
                    )),
                }
            }
            if eff.is_empty() {
                return r.clone();
            }
            Arc::new(r.with_split(eff))
        })
        .collect();
    for name in ov.splits.keys() {
        if !base.routes.iter().any(|r| &*r.name == name) {
            warnings.push(format!(
                "split override of route {name:?}: the route no longer exists; ignored"
            ));
        }
    }
    cfg.maintenance = ov.maintenance.as_ref().map(|m| {
        Arc::new(Maintenance {
            routes: m.routes.clone(),
            methods: m.methods.as_ref().map(|ms| {
                ms.iter()
                    .filter_map(|s| http::Method::from_bytes(s.as_bytes()).ok())
                    .collect()
            }),
            retry_after: Duration::from_secs(m.retry_after_seconds),
            message: m
                .message
                .clone()
                .unwrap_or_else(|| "down for maintenance".into()),
        })
    });
    cfg
}
