//! The drain status of a pool or backend as JSON (admin API, CLI, tests).

use std::{
    sync::Arc,
    time::{Instant, SystemTime},
};

use serde_json::{json, Value};

use crate::{
    drain::machine::{Machine, Phase},
    state::{backend::BackendState, tracking::CountsSnapshot},
};

/// Seconds since the Unix epoch, for JSON.
pub fn unix(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn dur(d: Option<std::time::Duration>) -> Value {
    match d {
        Some(d) => json!(crate::config::duration::HumanDuration(d).to_string()),
        None => json!("0"),
    }
}

/// `{state, drained, in_flight, started_at, drained_at, deadlines, streams, oldest_stream_age_seconds}`.
/// `state` is `removed` when the target is no longer in the config.
pub fn status(
    machine: &Machine,
    counts: CountsSnapshot,
    backends: &[Arc<BackendState>],
    removed: bool,
) -> Value {
    let now = Instant::now();
    let streams: Vec<Value> = backends
        .iter()
        .flat_map(|b| b.items.all().into_iter().map(move |i| (b.clone(), i)))
        .filter(|(_, i)| i.kind().is_stream())
        .map(|(b, i)| {
            json!({
                "backend": &*b.id,
                "kind": i.kind().as_str(),
                "route": &*i.route,
                "path": i.uri.path(),
                "client": i.client.map(|c| c.to_string()),
                "started_at": unix(i.started_wall),
                "age_seconds": i.age(now).as_secs_f64(),
            })
        })
        .collect();
    let oldest = streams
        .iter()
        .filter_map(|s| s["age_seconds"].as_f64())
        .fold(None, |m: Option<f64>, a| Some(m.map_or(a, |m| m.max(a))));
    let phase = machine.phase();
    let state = if removed { "removed" } else { phase.as_str() };
    let d = machine.deadlines();
    json!({
        "state": state,
        "drained": phase == Phase::Drained || (removed && counts.total() == 0),
        "in_flight": counts,
        "started_at": machine.started_at().map(unix),
        "drained_at": machine.drained_at().map(unix),
        "deadlines": if phase == Phase::Active { Value::Null } else {
            json!({"requests_deadline": dur(d.requests), "streams_deadline": dur(d.streams), "close_spread": dur(Some(d.close_spread))})
        },
        "streams": streams,
        "oldest_stream_age_seconds": oldest,
    })
}
