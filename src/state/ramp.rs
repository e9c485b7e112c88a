//! Split ramps: move a route's split from where it is to a target in equal steps over a
//! duration (`over`, `step`). Each step is a split override (so it persists and survives
//! reloads like any override). A new split request for the route, a drain or undrain of one
//! of its pools, or a reload that changes the route cancels it; status says why.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use serde::Serialize;

use super::AppState;

/// A ramp's progress, as shown in status.
#[derive(Clone, Debug, Serialize)]
pub struct Ramp {
    pub state: &'static str,
    pub from: BTreeMap<String, u32>,
    pub to: BTreeMap<String, u32>,
    pub over_seconds: f64,
    pub step_seconds: f64,
    pub steps_done: u32,
    pub steps_total: u32,
    pub started_at: f64,
    /// Why it stopped early (when `state` is `cancelled`).
    pub reason: Option<String>,
    #[serde(skip)]
    epoch: u64,
}

/// All ramps by route (the latest one per route is kept for status).
#[derive(Debug, Default)]
pub struct Ramps {
    inner: Mutex<HashMap<String, Ramp>>,
    next_epoch: Mutex<u64>,
}

impl Ramps {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Ramp>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The ramp of `route`, if one ran.
    pub fn get(&self, route: &str) -> Option<Ramp> {
        self.lock().get(route).cloned()
    }

    /// Cancel a running ramp of `route` with `reason`.
    pub fn cancel(&self, route: &str, reason: &str) {
        if let Some(r) = self.lock().get_mut(route).filter(|r| r.state == "running") {
            r.state = "cancelled";
            r.reason = Some(reason.to_string());
            tracing::info!(route, reason, "split ramp cancelled");
        }
    }

    /// Cancel running ramps whose split involves `pool`.
    pub fn cancel_for_pool(&self, pool: &str, reason: &str) {
        let routes: Vec<String> = self
            .lock()
            .iter()
            .filter(|(_, r)| {
                r.state == "running" && (r.from.contains_key(pool) || r.to.contains_key(pool))
            })
            .map(|(k, _)| k.clone())
            .collect();
        for r in routes {
            self.cancel(&r, reason);
        }
    }
}

/// The split `k/n` of the way from `from` to `to` (pools missing on a side count as 0).
pub fn interpolate(
    from: &BTreeMap<String, u32>,
    to: &BTreeMap<String, u32>,
    k: u32,
    n: u32,
) -> BTreeMap<String, u32> {
    let pools: std::collections::BTreeSet<&String> = from.keys().chain(to.keys()).collect();
    pools
        .into_iter()
        .map(|p| {
            let a = f64::from(from.get(p).copied().unwrap_or(0));
            let b = f64::from(to.get(p).copied().unwrap_or(0));
            // Rounded linear interpolation; in 0..=10000 because a and b are.
            (
                p.clone(),
                (a + (b - a) * f64::from(k) / f64::from(n)).round() as u32,
            )
        })
        .collect()
}

impl AppState {
    /// Start a ramp of `route` to `to` over `over` in steps of `step` (replacing any running
    /// one). The first step applies after one `step`.
    pub fn start_ramp(
        self: &Arc<Self>,
        route: &str,
        to: BTreeMap<String, u32>,
        over: Duration,
        step: Duration,
    ) -> Ramp {
        self.ramps.cancel(route, "replaced by a new split request");
        let cfg = self.config();
        let from: BTreeMap<String, u32> = cfg
            .routes
            .iter()
            .find(|r| &*r.name == route)
            .map(|r| {
                r.split
                    .iter()
                    .map(|(p, w)| (p.name.to_string(), *w))
                    .collect()
            })
            .unwrap_or_default();
        drop(cfg);
        let steps_total = (over.as_secs_f64() / step.as_secs_f64()).ceil().max(1.0) as u32;
        let epoch = {
            let mut e = self
                .ramps
                .next_epoch
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            *e += 1;
            *e
        };
        let ramp = Ramp {
            state: "running",
            from: from.clone(),
            to: to.clone(),
            over_seconds: over.as_secs_f64(),
            step_seconds: step.as_secs_f64(),
            steps_done: 0,
            steps_total,
            started_at: crate::drain::view::unix(SystemTime::now()),
            reason: None,
            epoch,
        };
        self.ramps.lock().insert(route.to_string(), ramp.clone());
        tracing::info!(route, from = ?from, to = ?to, steps_total, "split ramp started");
        let (state, route) = (self.clone(), route.to_string());
        tokio::spawn(async move {
            let start = tokio::time::Instant::now();
            for k in 1..=steps_total {
                tokio::time::sleep_until(start + step * k).await;
                let running = state
                    .ramps
                    .lock()
                    .get(&route)
                    .is_some_and(|r| r.epoch == epoch && r.state == "running");
                if !running {
                    return;
                }
                let split = interpolate(&from, &to, k, steps_total);
                let applied = state.change_overrides(|ov, cfg| {
                    if !cfg.routes.iter().any(|r| *r.name == route) {
                        return Err(());
                    }
                    ov.splits.insert(route.clone(), split.clone());
                    Ok(())
                });
                let mut ramps = state.ramps.lock();
                let Some(r) = ramps.get_mut(&route).filter(|r| r.epoch == epoch) else {
                    return;
                };
                if applied.is_err() {
                    r.state = "cancelled";
                    r.reason = Some("the route no longer exists".into());
                    return;
                }
                r.steps_done = k;
                if k == steps_total {
                    r.state = "completed";
                    tracing::info!(route, "split ramp completed");
                }
            }
        });
        ramp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(v: &[(&str, u32)]) -> BTreeMap<String, u32> {
        v.iter().map(|(k, w)| (k.to_string(), *w)).collect()
    }

    #[test]
    fn interpolates_linearly_with_missing_pools_as_zero() {
        let from = m(&[("blue", 100)]);
        let to = m(&[("green", 100)]);
        assert_eq!(
            interpolate(&from, &to, 1, 4),
            m(&[("blue", 75), ("green", 25)])
        );
        assert_eq!(
            interpolate(&from, &to, 4, 4),
            m(&[("blue", 0), ("green", 100)])
        );
        assert_eq!(
            interpolate(&m(&[("a", 1)]), &m(&[("a", 2)]), 1, 2),
            m(&[("a", 2)])
        );
    }
}
