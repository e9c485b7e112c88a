//! Ramps moved by one proxy of the fleet: the holder of the `ramps` lease (by the
//! database's clock; renewed every second, taken over when it lapses). Each step is one
//! transaction that checks the lease, checks the ramp is still the one read (same id,
//! running, same step), records the step (a second record of it is refused) and writes the
//! new split: a step is never applied twice, and a proxy that takes over continues from the
//! last step written. Rollback on error rate judges the fleet's figures.

use std::{collections::BTreeMap, time::Duration};

use serde_json::Value;

use super::{beat, store::Change};
use crate::{
    api::{Ramp, RampState},
    services::ramps::{gaining, interpolate, judge, window_delta},
    state::{process::unix_now, AppState},
};

/// How long the lease lasts without renewal.
pub const LEASE_TTL: Duration = Duration::from_secs(3);
/// How often it is renewed (or tried).
pub const LEASE_RENEW: Duration = Duration::from_secs(1);

/// One step to write: the tick number, the ramp after it, the split it sets (if any).
pub struct Tick {
    pub route: String,
    pub id: String,
    pub k: u32,
    pub before: Ramp,
    pub after: Ramp,
    pub split: Option<BTreeMap<String, u32>>,
}

impl Tick {
    /// The rows it writes.
    pub fn changes(&self) -> Vec<Change> {
        let mut v = vec![(
            format!("ramp/{}", self.route),
            serde_json::to_value(&self.after).ok(),
        )];
        if let Some(s) = &self.split {
            v.push((
                format!("split/{}", self.route),
                serde_json::to_value(s).ok(),
            ));
        }
        v
    }

    /// Whether the stored ramp is still the one this tick was computed from.
    pub fn still(&self, stored: Option<&Value>) -> bool {
        stored
            .and_then(|v| serde_json::from_value::<Ramp>(v.clone()).ok())
            .is_some_and(|r| {
                r.id == self.before.id
                    && r.is_running()
                    && r.steps_done == self.before.steps_done
                    && r.baseline == self.before.baseline
            })
    }
}

/// Whether any ramp of the fleet runs (only then is the lease worth holding).
pub fn any_running(state: &AppState) -> bool {
    state
        .ramps
        .all()
        .iter()
        .any(|(_, r)| r.is_running() && r.id.is_some())
}

/// The ticks due now.
pub fn due(state: &AppState) -> Vec<Tick> {
    let now = unix_now();
    let node = state.fleet.node();
    state
        .ramps
        .all()
        .into_iter()
        .filter_map(|(route, r)| {
            let id = r.id.clone().filter(|_| r.is_running())?;
            let k = r.steps_done.checked_add(1)?;
            (r.started_at + r.step_seconds * f64::from(k) <= now)
                .then(|| tick(state, node, route, id, r, k))
        })
        .collect()
}

/// Tick `k` of ramp `r`: judge the last window (with `max_error_rate`), then step, or
/// complete after the last step (and its judgement).
fn tick(state: &AppState, node: &str, route: String, id: String, r: Ramp, k: u32) -> Tick {
    let n = r.steps_total;
    let mut after = r.clone();
    after.stepped_by = Some(node.to_string());
    // More than a step late (its stepper died, the lease took a while to pass): the ramp goes
    // on at its pace from now, not in a burst of the missed steps.
    let now = unix_now();
    if now - (r.started_at + r.step_seconds * f64::from(k)) > r.step_seconds {
        after.started_at = now - r.step_seconds * f64::from(k);
    }
    let mut split = None;
    if let Some(max) = r.max_error_rate {
        let pools = gaining(&r.from, &r.to);
        let now = beat::fleet_outcomes(state, &route, &pools);
        let seen = r.baseline.and_then(|b| window_delta(now, b));
        after.baseline = Some(now);
        // The window before the first step ran on the old split: not judged.
        let judged = seen
            .filter(|_| k > 1)
            .and_then(|seen| judge(seen, r.min_requests, max).map(|rate| (rate, seen)));
        if let Some((rate, seen)) = judged {
            after.state = RampState::RolledBack;
            after.reason = Some(format!(
                "fleet error rate {:.1}% ({} of {} requests to {}) at step {}/{n} is over {:.1}%",
                rate * 100.0,
                seen.1,
                seen.0,
                pools.join(", "),
                k - 1,
                max * 100.0
            ));
            split = Some(r.from.clone());
            return Tick {
                route,
                id,
                k,
                before: r,
                after,
                split,
            };
        }
    }
    if k <= n {
        split = Some(interpolate(&r.from, &r.to, k, n));
        after.steps_done = k;
    }
    let watched = r.max_error_rate.is_some();
    if k > n || (k == n && !watched) {
        after.state = RampState::Completed;
    }
    Tick {
        route,
        id,
        k,
        before: r,
        after,
        split,
    }
}
