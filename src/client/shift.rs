//! `tidegate shift ROUTE POOL=W… [--over D --step D] [--max-error-rate R --min-requests N]`.
//!
//! Without `--over` the split is set at once. With it, the CLI moves the split in equal steps
//! itself (on every proxy of the fleet), and after each step reads `/metrics`: when the pools
//! gaining weight answered more than `R` of their requests with 5xx or connect failures
//! (once at least `N` requests were seen in the step), it puts the original split back,
//! says why, and exits 1.

use std::{collections::BTreeMap, time::Duration};

use serde_json::json;

use super::{exit, Admin, ClientError};
use crate::state::ramp::interpolate;

/// Arguments of `shift`.
pub struct ShiftArgs {
    pub route: String,
    pub weights: Vec<String>,
    pub over: Option<Duration>,
    pub step: Option<Duration>,
    pub max_error_rate: Option<f64>,
    pub min_requests: u64,
}

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

async fn current_split(admin: &Admin, route: &str) -> Result<BTreeMap<String, u32>, ClientError> {
    let s = admin.ok("GET", "/api/v1/status", None).await?;
    let r = s["routes"]
        .as_array()
        .and_then(|rs| rs.iter().find(|r| r["name"] == route))
        .ok_or_else(|| ClientError::Usage(format!("{}: no route named {route:?}", admin.base)))?;
    Ok(r["split"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(p, w)| (p.clone(), w.as_u64().unwrap_or(0) as u32))
        .collect())
}

async fn set_split(
    fleet: &[Admin],
    route: &str,
    split: &BTreeMap<String, u32>,
) -> Result<(), ClientError> {
    for admin in fleet {
        admin
            .ok(
                "POST",
                &format!("/api/v1/routes/{}/split", super::seg(route)),
                Some(&json!({ "split": split })),
            )
            .await?;
    }
    Ok(())
}

/// Sum of the samples of `name` whose labels include every `(key, value)` in `want`.
pub fn metric_sum(text: &str, name: &str, want: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?.strip_prefix('{')?;
            let (labels, value) = rest.rsplit_once("} ")?;
            let ok = want
                .iter()
                .all(|(k, v)| labels.contains(&format!("{k}=\"{v}\"")));
            ok.then(|| value.trim().parse::<f64>().ok()).flatten()
        })
        .sum()
}

/// (requests, errors) of `pools` on `route`, summed over the fleet.
async fn counts(fleet: &[Admin], route: &str, pools: &[String]) -> Result<(f64, f64), ClientError> {
    let (mut total, mut errors) = (0.0, 0.0);
    for admin in fleet {
        let m = admin.text("/metrics").await?;
        for p in pools {
            total += metric_sum(
                &m,
                "tidegate_requests_total",
                &[("route", route), ("pool", p)],
            );
            errors += metric_sum(
                &m,
                "tidegate_requests_total",
                &[("route", route), ("pool", p), ("code_class", "5xx")],
            );
            let cf = metric_sum(
                &m,
                "tidegate_upstream_connect_failures_total",
                &[("pool", p)],
            );
            errors += cf;
            total += cf;
        }
    }
    Ok((total, errors))
}

/// Run `shift`.
pub async fn shift(fleet: &[Admin], a: ShiftArgs) -> Result<u8, ClientError> {
    let first = fleet
        .first()
        .ok_or_else(|| ClientError::Usage("no --admin".into()))?;
    let from = current_split(first, &a.route).await?;
    let mut to = from.clone();
    to.extend(parse_weights(&a.weights)?);
    let Some(over) = a.over else {
        set_split(fleet, &a.route, &to).await?;
        println!("{}: split {}", a.route, fmt(&to));
        return Ok(exit::OK);
    };
    let step = a.step.unwrap_or(over / 10).max(Duration::from_millis(100));
    let n = (over.as_secs_f64() / step.as_secs_f64()).ceil().max(1.0) as u32;
    let gaining: Vec<String> = to
        .iter()
        .filter(|(p, w)| **w > from.get(*p).copied().unwrap_or(0))
        .map(|(p, _)| p.clone())
        .collect();
    println!(
        "{}: shifting {} -> {} in {n} steps of {}s",
        a.route,
        fmt(&from),
        fmt(&to),
        step.as_secs_f64()
    );
    for k in 1..=n {
        let before = counts(fleet, &a.route, &gaining).await?;
        let split = interpolate(&from, &to, k, n);
        set_split(fleet, &a.route, &split).await?;
        println!("step {k}/{n}: {}", fmt(&split));
        tokio::time::sleep(step).await;
        let after = counts(fleet, &a.route, &gaining).await?;
        let (total, errors) = (after.0 - before.0, after.1 - before.1);
        if let Some(max) = a.max_error_rate {
            if total >= a.min_requests as f64 && total > 0.0 && errors / total > max {
                set_split(fleet, &a.route, &from).await?;
                println!(
                    "rolled back to {} at step {k}/{n}: error rate {:.1}% ({errors} of {total} requests to {}) is over {:.1}%",
                    fmt(&from),
                    errors / total * 100.0,
                    gaining.join(", "),
                    max * 100.0
                );
                return Ok(exit::NOT_DONE);
            }
        }
    }
    println!("{}: shifted to {}", a.route, fmt(&to));
    Ok(exit::OK)
}

fn fmt(s: &BTreeMap<String, u32>) -> String {
    s.iter()
        .map(|(p, w)| format!("{p}={w}"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_matching_samples() {
        let m = "tidegate_requests_total{route=\"app\",pool=\"green\",code_class=\"2xx\"} 7\ntidegate_requests_total{route=\"app\",pool=\"green\",code_class=\"5xx\"} 3\ntidegate_requests_total{route=\"app\",pool=\"blue\",code_class=\"5xx\"} 100\n";
        assert_eq!(
            metric_sum(
                m,
                "tidegate_requests_total",
                &[("route", "app"), ("pool", "green")]
            ),
            10.0
        );
        assert_eq!(
            metric_sum(
                m,
                "tidegate_requests_total",
                &[("pool", "green"), ("code_class", "5xx")]
            ),
            3.0
        );
    }

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
