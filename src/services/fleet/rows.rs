//! Rows read from the store are input like an API request: anyone who can write the database
//! can write them, so each is checked before it is applied (the `state_file`, which anyone
//! who can write that file can edit, is checked the same way) (a weight past the split range, a
//! time past the clock's range or a ramp of a billion steps is refused, logged, skipped).

use std::{
    collections::BTreeMap,
    time::{Duration, SystemTime},
};

use crate::{
    api::{Checkpoint, Ramp},
    config::build::SPLIT_MAX,
    drain::machine::Deadlines,
    state::{overrides::MaintenanceOverride, process::unix_now},
};

/// Most steps a shared ramp may have (the API allows 24 h in steps of 100 ms: 864,000).
const MAX_STEPS: u32 = 1_000_000;
/// Longest time a shared row may name (deadlines, step, retry-after): a year.
const MAX_SECS: f64 = 366.0 * 86_400.0;

/// A Unix time in seconds, from the past up to a day ahead.
fn time(field: &str, t: f64) -> Result<SystemTime, String> {
    if !t.is_finite() || t < 0.0 || t > unix_now() + 86_400.0 {
        return Err(format!("{field}: {t} is not a time"));
    }
    Ok(SystemTime::UNIX_EPOCH + Duration::from_secs_f64(t))
}

fn ms(field: &str, v: Option<u64>) -> Result<Option<Duration>, String> {
    match v {
        Some(v) if v as f64 > MAX_SECS * 1000.0 => Err(format!("{field}: {v} ms is too long")),
        _ => Ok(v.map(Duration::from_millis)),
    }
}

/// A drain row (or a `state_file` drain): its start and deadlines, from `started_at` and the
/// requests, streams and close-spread milliseconds.
pub fn drain(
    started_at: f64,
    requests_ms: Option<u64>,
    streams_ms: Option<u64>,
    close_spread_ms: u64,
) -> Result<(SystemTime, Deadlines), String> {
    let started = time("started_at", started_at)?;
    let deadlines = Deadlines {
        requests: ms("requests_deadline_ms", requests_ms)?,
        streams: ms("streams_deadline_ms", streams_ms)?,
        close_spread: ms("close_spread_ms", Some(close_spread_ms))?.unwrap_or_default(),
    };
    Ok((started, deadlines))
}

/// Split weights: at least one pool, each in the split range.
pub fn split(field: &str, s: &BTreeMap<String, u32>) -> Result<(), String> {
    if s.is_empty() {
        return Err(format!("{field}: no pool"));
    }
    match s.iter().find(|(_, w)| i64::from(**w) > SPLIT_MAX) {
        Some((p, w)) => Err(format!(
            "{field}.{p}: {w} is out of range (0..={SPLIT_MAX})"
        )),
        None => Ok(()),
    }
}

/// A ramp row: sane splits, step count, step length, times and rates.
pub fn ramp(r: &Ramp) -> Result<(), String> {
    split("from", &r.from)?;
    split("to", &r.to)?;
    if r.steps_total == 0 || r.steps_total > MAX_STEPS || r.steps_done > r.steps_total {
        return Err(format!(
            "steps {}/{} out of range (1..={MAX_STEPS})",
            r.steps_done, r.steps_total
        ));
    }
    let step_ok = r.step_seconds.is_finite() && r.step_seconds > 0.0 && r.step_seconds < MAX_SECS;
    if !step_ok {
        return Err(format!("step_seconds: {} out of range", r.step_seconds));
    }
    time("started_at", r.started_at)?;
    if r.max_error_rate.is_some_and(|m| !(0.0..=1.0).contains(&m)) {
        return Err("max_error_rate: out of 0..=1".into());
    }
    Ok(())
}

/// A checkpoint row: its split.
pub fn checkpoint(c: &Checkpoint) -> Result<(), String> {
    split("split", &c.split)
}

/// A maintenance row: bounded retry-after and message.
pub fn maintenance(m: &MaintenanceOverride) -> Result<(), String> {
    if m.retry_after_seconds as f64 > MAX_SECS {
        return Err("retry_after_seconds: too long".into());
    }
    // The admin API takes bodies up to 64 KiB.
    if m.message.as_ref().is_some_and(|s| s.len() > 64 * 1024) {
        return Err("message: over 64 KiB".into());
    }
    Ok(())
}
