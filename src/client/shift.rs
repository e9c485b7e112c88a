//! `tidegate shift ROUTE POOL=W… [--over D --step D] [--max-error-rate R --min-requests N]`.
//!
//! Without `--over` the split is set at once on every proxy. With it, every proxy runs the
//! ramp itself (and, with `--max-error-rate`, watches its own counters and rolls back); this
//! client only starts it, shows its progress and exits 0 when every proxy completed, or 1
//! when one rolled back or stopped (then it puts the starting split back on the others).

use std::{collections::BTreeMap, time::Duration};

use super::{exit, seg, Admin, ClientError};
use crate::api::{RampState, RouteSplit, SplitRequest};

pub use super::args::ShiftArgs;

fn parse_weights(ws: &[String]) -> Result<BTreeMap<String, u32>, ClientError> {
    if ws.is_empty() {
        return Err(ClientError::Usage("name at least one POOL=WEIGHT".into()));
    }
    ws.iter()
        .map(|w| {
            let (p, v) = w
                .split_once('=')
                .ok_or_else(|| ClientError::Usage(format!("{w:?}: expected POOL=WEIGHT")))?;
            let v: u32 =
                v.parse().ok().filter(|v| *v <= 10_000).ok_or_else(|| {
                    ClientError::Usage(format!("{w:?}: weight must be 0..=10000"))
                })?;
            Ok((p.to_string(), v))
        })
        .collect()
}

pub(super) fn split_path(route: &str) -> String {
    format!("/api/v1/routes/{}/split", seg(route))
}

fn request(split: &BTreeMap<String, u32>) -> SplitRequest {
    SplitRequest {
        split: split
            .iter()
            .map(|(p, w)| (p.clone(), i64::from(*w)))
            .collect(),
        ..Default::default()
    }
}

async fn set_split(
    fleet: &[Admin],
    route: &str,
    split: &BTreeMap<String, u32>,
) -> Result<(), ClientError> {
    for admin in fleet {
        admin
            .call::<_, RouteSplit>("POST", &split_path(route), Some(&request(split)), &[])
            .await?;
    }
    Ok(())
}

fn fmt(s: &BTreeMap<String, u32>) -> String {
    s.iter()
        .map(|(p, w)| format!("{p}={w}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Run `shift`.
pub async fn shift(fleet: &[Admin], a: ShiftArgs) -> Result<u8, ClientError> {
    let first = fleet
        .first()
        .ok_or_else(|| ClientError::Usage("no --admin".into()))?;
    let from = first.get::<RouteSplit>(&split_path(&a.route)).await?.split;
    let mut to = from.clone();
    to.extend(parse_weights(&a.weights)?);
    let Some(over) = a.ramp.over else {
        set_split(fleet, &a.route, &to).await?;
        println!("{}: split {}", a.route, fmt(&to));
        return Ok(exit::OK);
    };
    let step = a
        .ramp
        .step
        .unwrap_or(over / 10)
        .max(Duration::from_millis(100));
    let mut req = request(&to);
    req.over = Some(format!("{}ms", over.as_millis()));
    req.step = Some(format!("{}ms", step.as_millis()));
    req.max_error_rate = a.ramp.max_error_rate;
    req.min_requests = Some(a.ramp.min_requests);
    for admin in fleet {
        admin
            .call::<_, RouteSplit>("POST", &split_path(&a.route), Some(&req), &[])
            .await?;
    }
    println!(
        "{}: shifting {} -> {} in steps of {}s{}",
        a.route,
        fmt(&from),
        fmt(&to),
        step.as_secs_f64(),
        a.ramp
            .max_error_rate
            .map(|r| format!(", rolled back above {:.1}% errors", r * 100.0))
            .unwrap_or_default()
    );
    follow(fleet, &a.route, &from, &to, over + step * 2).await
}

/// Show the ramp's progress on the first proxy until every proxy is done.
pub(super) async fn follow(
    fleet: &[Admin],
    route: &str,
    from: &BTreeMap<String, u32>,
    to: &BTreeMap<String, u32>,
    expected: Duration,
) -> Result<u8, ClientError> {
    let deadline = tokio::time::Instant::now() + expected + Duration::from_secs(30);
    let mut shown = 0;
    loop {
        let mut views = Vec::with_capacity(fleet.len());
        for admin in fleet {
            views.push(admin.get::<RouteSplit>(&split_path(route)).await?);
        }
        if let Some(r) = views[0].ramp.as_ref().filter(|r| r.steps_done > shown) {
            for k in shown + 1..r.steps_done {
                println!("step {k}/{}", r.steps_total);
            }
            println!(
                "step {}/{}: {}",
                r.steps_done,
                r.steps_total,
                fmt(&views[0].split)
            );
            shown = r.steps_done;
        }
        let stopped = views.iter().zip(fleet).find_map(|(v, admin)| {
            let r = v.ramp.as_ref()?;
            matches!(r.state, RampState::RolledBack | RampState::Cancelled)
                .then(|| (admin, r.clone()))
        });
        if let Some((admin, r)) = stopped {
            set_split(fleet, route, from).await?;
            let verb = stopped_verb(r.state);
            // A ramp's reason may come from the fleet's store: never printed raw.
            let why = crate::api::printable(&r.reason.unwrap_or_default());
            println!("{verb} to {} on {}: {why}", fmt(from), admin.base);
            return Ok(exit::NOT_DONE);
        }
        let completed = |v: &RouteSplit| v.ramp.as_ref().map(|r| r.state);
        let done = views
            .iter()
            .all(|v| completed(v) == Some(RampState::Completed));
        if done {
            println!("{route}: shifted to {}", fmt(to));
            return Ok(exit::OK);
        }
        if tokio::time::Instant::now() > deadline {
            println!("{route}: the ramp did not finish in time; the split is left as it is");
            return Ok(exit::NOT_DONE);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How a ramp that did not complete is told.
fn stopped_verb(s: RampState) -> &'static str {
    match s {
        RampState::RolledBack => "rolled back",
        _ => "stopped",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_parse_and_refuse_garbage() {
        assert_eq!(
            parse_weights(&["green=100".into(), "blue=0".into()])
                .unwrap()
                .len(),
            2
        );
        assert!(parse_weights(&["green".into()]).is_err());
        assert!(parse_weights(&["green=20000".into()]).is_err());
        assert!(parse_weights(&[]).is_err());
    }
}
