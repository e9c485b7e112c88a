//! Split ramps: move a route's split from where it is to a target in equal steps over a
//! duration (`over`, `step`; the first step after one `step`). Each step is a split override,
//! so it persists and survives reloads like any override.
//!
//! With `max_error_rate`, the ramp watches its own counters: after each step (the last one
//! included) it compares the requests and failures (5xx answers and failed connects) of the
//! pools gaining weight over that step; when at least `min_requests` were seen and the share
//! of failures is above the limit, it puts the split back where it started and stops as
//! `rolled_back`, with the figures in `reason`. The task stops when the ramp is cancelled or
//! replaced, and when the process shuts down.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::Duration,
};

use super::persist;
use crate::{
    api::{self, Ramp},
    state::{process::unix_now, AppState},
};

/// What to ramp to, how fast, and when to roll back.
#[derive(Clone, Debug)]
pub struct Plan {
    pub to: BTreeMap<String, u32>,
    pub over: Duration,
    pub step: Duration,
    pub max_error_rate: Option<f64>,
    pub min_requests: u64,
}

/// The split `k/n` of the way from `from` to `to` (pools missing on a side count as 0).
pub fn interpolate(
    from: &BTreeMap<String, u32>,
    to: &BTreeMap<String, u32>,
    k: u32,
    n: u32,
) -> BTreeMap<String, u32> {
    let pools: BTreeSet<&String> = from.keys().chain(to.keys()).collect();
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

/// The current effective split of `route`.
fn current_split(state: &AppState, route: &str) -> BTreeMap<String, u32> {
    state
        .table()
        .routes
        .iter()
        .find(|r| &*r.name == route)
        .map(|r| {
            r.split
                .iter()
                .map(|(p, w)| (p.name.to_string(), *w))
                .collect()
        })
        .unwrap_or_default()
}

/// Start a ramp of `route` (replacing any running one). Returns its status.
pub fn start(state: &Arc<AppState>, route: &str, plan: Plan) -> Ramp {
    state.ramps.cancel(route, "replaced by a new split request");
    let from = current_split(state, route);
    let steps_total = (plan.over.as_secs_f64() / plan.step.as_secs_f64())
        .ceil()
        .max(1.0) as u32;
    let ramp = Ramp {
        state: api::RampState::Running,
        from: from.clone(),
        to: plan.to.clone(),
        over_seconds: plan.over.as_secs_f64(),
        step_seconds: plan.step.as_secs_f64(),
        steps_done: 0,
        steps_total,
        started_at: unix_now(),
        reason: None,
        max_error_rate: plan.max_error_rate,
        min_requests: plan.min_requests,
        id: state.fleet.enabled().then(|| fleet_id(state)),
        baseline: None,
        stepped_by: None,
    };
    let epoch = state.ramps.begin(route, ramp.clone());
    tracing::info!(route, from = ?from, to = ?plan.to, steps_total, max_error_rate = ?plan.max_error_rate, "split ramp started");
    if state.fleet.enabled() {
        // The fleet's stepper (one proxy, holding the lease) moves it.
        persist::save(state);
        return ramp;
    }
    let (state, route) = (state.clone(), route.to_string());
    tokio::spawn(async move { drive(&state, &route, epoch, from, plan, steps_total).await });
    ramp
}

/// A fleet-wide unique ramp id: this proxy's name, the time, a counter.
fn fleet_id(state: &AppState) -> String {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    // Relaxed: only uniqueness matters.
    let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{}@{:.3}#{n}", state.fleet.node(), unix_now())
}

/// Pools whose weight grows from `from` to `to`.
pub(crate) fn gaining(from: &BTreeMap<String, u32>, to: &BTreeMap<String, u32>) -> Vec<String> {
    to.iter()
        .filter(|(p, w)| **w > from.get(*p).copied().unwrap_or(0))
        .map(|(p, _)| p.clone())
        .collect()
}

/// Requests and failures so far of `pools` on `route`.
pub(crate) fn counters(state: &AppState, route: &str, pools: &[String]) -> (u64, u64) {
    let table = state.table();
    let Some(r) = table.routes.iter().find(|r| &*r.name == route) else {
        return (0, 0);
    };
    let (mut total, mut failed) = (0, 0);
    for p in pools {
        if let Some(s) = r.stats.for_pool(p) {
            let by_class = s.requests();
            total += by_class.iter().sum::<u64>();
            failed += by_class[4];
        }
        let cf: u64 = state
            .registry
            .all()
            .iter()
            .filter(|b| &*b.pool.name == p.as_str())
            .map(|b| b.connect_failures())
            .sum();
        total += cf;
        failed += cf;
    }
    (total, failed)
}

async fn drive(
    state: &Arc<AppState>,
    route: &str,
    epoch: u64,
    from: BTreeMap<String, u32>,
    plan: Plan,
    n: u32,
) {
    let gaining = gaining(&from, &plan.to);
    let watch = plan.max_error_rate.is_some();
    let start = tokio::time::Instant::now();
    let mut window = counters(state, route, &gaining);
    // With a watch, one more step after the last one judges the last step.
    let ticks = if watch { n + 1 } else { n };
    for k in 1..=ticks {
        tokio::time::sleep_until(start + plan.step * k).await;
        if state.is_shutting_down() || !state.ramps.is_running(route, epoch) {
            return;
        }
        if let Some(max) = plan.max_error_rate {
            let now = counters(state, route, &gaining);
            let seen = window_delta(now, window);
            window = now;
            // The window before the first step ran on the old split: not judged. Nor is a
            // window whose counters went down (a backend was pruned with its counts).
            let judged = seen
                .filter(|_| k > 1)
                .and_then(|seen| judge(seen, plan.min_requests, max).map(|r| (r, seen)));
            if let Some((rate, seen)) = judged {
                let why = format!(
                    "error rate {:.1}% ({} of {} requests to {}) at step {}/{n} is over {:.1}%",
                    rate * 100.0,
                    seen.1,
                    seen.0,
                    gaining.join(", "),
                    k - 1,
                    max * 100.0
                );
                roll_back(state, route, epoch, &from, why);
                return;
            }
        }
        if k > n {
            break;
        }
        let split = interpolate(&from, &plan.to, k, n);
        if !apply(state, route, split) {
            state.ramps.update(route, epoch, |r| {
                r.state = api::RampState::Cancelled;
                r.reason = Some("the route no longer exists".into());
            });
            return;
        }
        state.ramps.update(route, epoch, |r| r.steps_done = k);
    }
    state
        .ramps
        .update(route, epoch, |r| r.state = api::RampState::Completed);
    tracing::info!(route, "split ramp completed");
}

/// `(requests, failures)` of one window; `None` when a counter went down (a backend left
/// the pool with its counts): such a window cannot be judged.
pub(crate) fn window_delta(now: (u64, u64), before: (u64, u64)) -> Option<(u64, u64)> {
    Some((now.0.checked_sub(before.0)?, now.1.checked_sub(before.1)?))
}

/// The failure rate of a step's `(requests, failures)`, when it counts (at least
/// `min_requests`) and is over `max`.
pub(crate) fn judge((total, failed): (u64, u64), min_requests: u64, max: f64) -> Option<f64> {
    if total < min_requests.max(1) {
        return None;
    }
    let rate = failed as f64 / total as f64;
    (rate > max).then_some(rate)
}

/// Set `split` as the route's override; false when the route is gone.
fn apply(state: &AppState, route: &str, split: BTreeMap<String, u32>) -> bool {
    let applied = state.change_overrides(|ov, table| {
        if !table.routes.iter().any(|r| &*r.name == route) {
            return Err(());
        }
        ov.splits.insert(route.to_string(), split);
        Ok(())
    });
    persist::save(state);
    applied.is_ok()
}

fn roll_back(state: &AppState, route: &str, epoch: u64, from: &BTreeMap<String, u32>, why: String) {
    apply(state, route, from.clone());
    tracing::warn!(route, reason = %why, "split ramp rolled back");
    state.ramps.update(route, epoch, |r| {
        r.state = api::RampState::RolledBack;
        r.reason = Some(why);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_whose_counters_went_down_is_not_judged() {
        assert_eq!(window_delta((10, 2), (4, 1)), Some((6, 1)));
        assert_eq!(
            window_delta((3, 0), (10, 5)),
            None,
            "a pruned backend's counts left"
        );
        assert_eq!(window_delta((10, 0), (4, 1)), None);
    }

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
