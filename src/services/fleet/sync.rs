//! The shared state as rows, one per override: `drain/POOL`, `drain/POOL/BACKEND`,
//! `split/ROUTE`, `ramp/ROUTE`, `members/POOL`, `checkpoint/ROUTE`, `maintenance`. This
//! proxy's state is turned into rows ([`local`]), two sets of rows are compared
//! ([`diff`]), and rows changed elsewhere are applied here ([`apply`]).
//!
//! Publishing sends only what changed here since the last sync, so a row this proxy cannot
//! apply (a pool its file does not name) is never deleted by it, and two operators changing
//! different things through two proxies both win.

use std::collections::BTreeSet;

use serde_json::Value;

use super::{
    rows,
    store::{Change, Rows},
};
use crate::{
    api::printable,
    api::{BackendEntry, Checkpoint, Ramp},
    drain::machine::Phase,
    services::{drains, persist},
    state::{overrides::MaintenanceOverride, AppState},
};

/// This proxy's overrides as rows. Drains its own config file declares are not shared
/// (each proxy follows its own file).
pub fn local(state: &AppState) -> Rows {
    let mut rows = Rows::new();
    for p in state.registry.pools().iter().filter(|p| !p.drain.by_file()) {
        if let Some(d) = persist::saved_drain(&p.name, None, &p.drain.snapshot()) {
            rows.insert(format!("drain/{}", p.name), json(&d));
        }
    }
    for b in state.registry.all().iter().filter(|b| !b.drain.by_file()) {
        let m = b.drain.snapshot();
        if let Some(d) = persist::saved_drain(&b.pool.name, Some(&b.name), &m) {
            rows.insert(format!("drain/{}/{}", b.pool.name, b.name), json(&d));
        }
    }
    let ov = state.overrides();
    for (route, split) in &ov.splits {
        rows.insert(format!("split/{route}"), json(split));
    }
    if let Some(m) = &ov.maintenance {
        rows.insert("maintenance".into(), json(m));
    }
    for (pool, entries) in &ov.backends {
        rows.insert(format!("members/{pool}"), json(entries));
    }
    for (route, c) in &ov.checkpoints {
        rows.insert(format!("checkpoint/{route}"), json(c));
    }
    for (route, r) in state.ramps.all() {
        rows.insert(format!("ramp/{route}"), json(&r));
    }
    rows
}

/// A row's value (`null` if it cannot be serialized, which none of ours fails).
fn json<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

/// Whether this proxy's config names the pool or route of row `key`.
pub fn named_here(state: &AppState, key: &str) -> bool {
    let table = state.table();
    let (kind, rest) = key.split_once('/').unwrap_or((key, ""));
    match kind {
        "drain" | "members" => {
            let pool = rest.split('/').next().unwrap_or(rest);
            table.pools.contains_key(pool)
        }
        "split" | "ramp" | "checkpoint" => table.routes.iter().any(|r| &*r.name == rest),
        _ => true,
    }
}

/// What turns `old` into `new`.
pub fn diff(old: &Rows, new: &Rows) -> Vec<Change> {
    let keys: BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    keys.into_iter()
        .filter(|k| old.get(*k) != new.get(*k))
        .map(|k| (k.clone(), new.get(k).cloned()))
        .collect()
}

/// Apply rows changed elsewhere. Blocking (runtime members are resolved): run it off the
/// async threads. A row that cannot apply here is logged and skipped.
pub fn apply(state: &AppState, changes: &[Change]) {
    let mut overrides = Vec::new();
    for (key, value) in changes {
        let (kind, rest) = key.split_once('/').unwrap_or((key.as_str(), ""));
        let outcome = match kind {
            "drain" => apply_drain(state, rest, value.as_ref()),
            "ramp" => parse::<Ramp>(value.as_ref())
                .and_then(|r| r.map(|r| rows::ramp(&r).map(|()| r)).transpose())
                .map(|r| state.ramps.mirror(rest, r)),
            "split" | "maintenance" | "members" | "checkpoint" => {
                overrides.push((kind, rest, value));
                Ok(())
            }
            _ => Err(format!("unknown row kind {kind:?}")),
        };
        if let Err(e) = outcome {
            // Keys and serde's messages quote what the row holds: escaped.
            tracing::warn!(key = %printable(key), error = %printable(&e), "shared state row not applied on this proxy");
        }
    }
    if overrides.is_empty() {
        return;
    }
    let _ = state.change_overrides(|ov, table| {
        for (kind, rest, value) in &overrides {
            let r = match *kind {
                "split" if value.is_some() && !table.routes.iter().any(|r| &*r.name == *rest) => {
                    Err(format!("route {rest} is not in this proxy's config"))
                }
                "split" => parse(value.as_ref())
                    .and_then(|v| checked(v, |s| rows::split("split", s)))
                    .map(|v| set(&mut ov.splits, rest, v)),
                "maintenance" => parse::<MaintenanceOverride>(value.as_ref())
                    .and_then(|m| checked(m, rows::maintenance))
                    .map(|m| ov.maintenance = m),
                "members" => members(rest, value.as_ref()).map(|m| match m {
                    Some((given, valid)) => {
                        ov.backends.insert(rest.to_string(), given);
                        ov.members.insert(rest.to_string(), valid);
                    }
                    None => {
                        ov.backends.remove(*rest);
                        ov.members.remove(*rest);
                    }
                }),
                _ => parse::<Checkpoint>(value.as_ref())
                    .and_then(|c| checked(c, rows::checkpoint))
                    .map(|c| set(&mut ov.checkpoints, rest, c)),
            };
            if let Err(e) = r {
                tracing::warn!(kind, name = %printable(rest), error = %printable(&e), "shared override not applied on this proxy");
            }
        }
        Ok::<(), ()>(())
    });
    state.availability_changed();
}

fn set<V>(map: &mut std::collections::BTreeMap<String, V>, key: &str, v: Option<V>) {
    match v {
        Some(v) => {
            map.insert(key.to_string(), v);
        }
        None => {
            map.remove(key);
        }
    }
}

/// `v` when `check` passes on it (or it is a removal).
fn checked<T>(v: Option<T>, check: impl Fn(&T) -> Result<(), String>) -> Result<Option<T>, String> {
    if let Some(x) = &v {
        check(x)?;
    }
    Ok(v)
}

fn parse<T: serde::de::DeserializeOwned>(v: Option<&Value>) -> Result<Option<T>, String> {
    v.map(|v| serde_json::from_value(v.clone()).map_err(|e| e.to_string()))
        .transpose()
}

/// Runtime members, validated like the API validates them.
type Members = (Vec<BackendEntry>, Vec<crate::config::spec::BackendSpec>);

fn members(pool: &str, v: Option<&Value>) -> Result<Option<Members>, String> {
    let Some(given) = parse::<Vec<BackendEntry>>(v)? else {
        return Ok(None);
    };
    let valid = crate::config::build::runtime_backends(pool, &given).map_err(|e| e.to_string())?;
    Ok(Some((given, valid)))
}

/// A drain row: start (or align) the drain here with the same start and deadlines, or
/// undrain when the row is gone.
fn apply_drain(state: &AppState, target: &str, value: Option<&Value>) -> Result<(), String> {
    let (pool, backend) = match target.split_once('/') {
        Some((p, b)) => (p, Some(b)),
        None => (target, None),
    };
    let Some(d) = parse::<persist::SavedDrain>(value)? else {
        let r = drains::resolve(state, pool, backend).map_err(|e| e.to_string())?;
        // A drain this proxy's file declares is the file's to end.
        if r.cell().by_file() {
            return Ok(());
        }
        if r.cell().phase() != Phase::Active && r.cell().undrain().is_ok() {
            for b in r.target.backends(&state.registry) {
                b.mark_available_now();
            }
            tracing::info!(drain = %r.target.name(), "undrained by the fleet");
            state.availability_changed();
        }
        return Ok(());
    };
    let (started, deadlines) = d.checked()?;
    // Only what this proxy's config names: a drain row of a pool it lacks creates nothing
    // here (it would be pruned, and its row deleted by the next publish).
    let table = state.table();
    let known = table
        .pools
        .get(pool)
        .is_some_and(|p| backend.is_none_or(|b| p.backends.iter().any(|x| &*x.spec.name == b)));
    drop(table);
    if !known {
        return Err(format!("{target} is not in this proxy's config"));
    }
    if drains::resolve(state, pool, backend).is_ok_and(|r| r.cell().by_file()) {
        // Draining already, as this proxy's file declares: the file's deadlines stay.
        return Ok(());
    }
    drains::restore(state, pool, backend, started, deadlines);
    tracing::info!(pool, backend, "drain applied from the fleet");
    Ok(())
}
