//! The latest split ramp of each route, as status shows it; the tasks that move ramps are in
//! `services::ramps`. A new split request for the route, a drain or undrain of one of its
//! pools, or a reload that changes the route cancels a running ramp, with the reason.

use std::{collections::HashMap, sync::Mutex};

use crate::api::Ramp;

/// Ramps by route, each with the epoch of the task that drives it.
#[derive(Debug, Default)]
pub struct Ramps {
    inner: Mutex<HashMap<String, (u64, Ramp)>>,
    next_epoch: Mutex<u64>,
}

impl Ramps {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (u64, Ramp)>> {
        // Plain data replaced in single assignments.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The ramp of `route`, if one ran.
    pub fn get(&self, route: &str) -> Option<Ramp> {
        self.lock().get(route).map(|(_, r)| r.clone())
    }

    /// Record a new ramp of `route` (replacing any); returns its epoch.
    pub fn begin(&self, route: &str, ramp: Ramp) -> u64 {
        let epoch = {
            let mut e = self.next_epoch.lock().unwrap_or_else(|p| p.into_inner());
            *e += 1;
            *e
        };
        self.lock().insert(route.to_string(), (epoch, ramp));
        epoch
    }

    /// Update the ramp of `route` if it is still the one started with `epoch` and running.
    /// Returns false when it is not (cancelled or replaced): the driver stops.
    pub fn update(&self, route: &str, epoch: u64, f: impl FnOnce(&mut Ramp)) -> bool {
        match self.lock().get_mut(route) {
            Some((e, r)) if *e == epoch && r.is_running() => {
                f(r);
                true
            }
            _ => false,
        }
    }

    /// Whether the ramp of `route` started with `epoch` still runs.
    pub fn is_running(&self, route: &str, epoch: u64) -> bool {
        self.lock()
            .get(route)
            .is_some_and(|(e, r)| *e == epoch && r.is_running())
    }

    /// Every route's latest ramp.
    pub fn all(&self) -> Vec<(String, Ramp)> {
        self.lock()
            .iter()
            .map(|(k, (_, r))| (k.clone(), r.clone()))
            .collect()
    }

    /// Take the fleet's copy of the ramp of `route` (`None`: forget it). No local task
    /// drives it: the fleet's stepper does.
    pub fn mirror(&self, route: &str, ramp: Option<Ramp>) {
        let mut m = self.lock();
        match ramp {
            Some(r) => {
                m.insert(route.to_string(), (0, r));
            }
            None => {
                m.remove(route);
            }
        }
    }

    /// Cancel a running ramp of `route` with `reason`.
    pub fn cancel(&self, route: &str, reason: &str) {
        if let Some((_, r)) = self.lock().get_mut(route).filter(|(_, r)| r.is_running()) {
            r.state = crate::api::RampState::Cancelled;
            r.reason = Some(reason.to_string());
            tracing::info!(route, reason, "split ramp cancelled");
        }
    }

    /// Cancel running ramps whose split involves `pool`.
    pub fn cancel_for_pool(&self, pool: &str, reason: &str) {
        let routes: Vec<String> = self
            .lock()
            .iter()
            .filter(|(_, (_, r))| {
                r.is_running() && (r.from.contains_key(pool) || r.to.contains_key(pool))
            })
            .map(|(k, _)| k.clone())
            .collect();
        for r in routes {
            self.cancel(&r, reason);
        }
    }
}
