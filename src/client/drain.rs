//! `tidegate drain POOL[/BACKEND] [--wait] [--timeout D]`, `tidegate drain --node HOST
//! [--hard]` (every backend on a host, in every pool) and `tidegate undrain …`, across a
//! fleet. `--wait` long-polls every proxy until all report drained, with a live progress line
//! on a terminal (elapsed, in flight by kind, deadline countdown) and a plain line every
//! 5 s otherwise. Exit: 0 drained, 1 timed out, 2 error.

use std::{
    io::{IsTerminal, Write},
    time::{Duration, Instant},
};

pub use super::args::{DrainArgs, UndrainArgs};
use super::{exit, seg, Admin, ClientError};
use crate::{
    api::{DrainRequest, DrainStatus, InFlight},
    config::duration::HumanDuration,
    state::process::unix_now,
};

/// `/api/v1/pools/{pool}` or `/api/v1/pools/{pool}/backends/{backend}`.
fn base_path(target: &str) -> Result<String, ClientError> {
    let (pool, backend) = match target.split_once('/') {
        Some((p, b)) => (p, Some(b)),
        None => (target, None),
    };
    if pool.is_empty() || backend.is_some_and(str::is_empty) {
        return Err(ClientError::Usage(format!(
            "bad target {target:?}: use POOL or POOL/BACKEND"
        )));
    }
    Ok(match backend {
        None => format!("/api/v1/pools/{}", seg(pool)),
        Some(b) => format!("/api/v1/pools/{}/backends/{}", seg(pool), seg(b)),
    })
}

/// Start draining on every proxy (409 "already draining" is fine), then optionally wait.
pub async fn drain(fleet: &[Admin], a: DrainArgs) -> Result<u8, ClientError> {
    if let Some(host) = a.node.clone() {
        return super::node::drain(fleet, &host, &a).await;
    }
    if a.hard {
        return Err(ClientError::Usage(
            "--hard is for --node HOST (a pool's deadlines come from --requests-deadline and --streams-deadline)".into(),
        ));
    }
    let target = a.target.clone().unwrap_or_default();
    let path = base_path(&target)?;
    let body = DrainRequest {
        requests_deadline: a.requests_deadline.clone(),
        streams_deadline: a.streams_deadline.clone(),
        close_spread: None,
    };
    let mut last = Vec::new();
    for admin in fleet {
        // 409: already draining; the answer still carries the status.
        let (_, v) = admin
            .call::<_, DrainStatus>("POST", &format!("{path}/drain"), Some(&body), &[409])
            .await?;
        last.push(v);
    }
    if !a.wait {
        print_result(&target, &last, a.json);
        return Ok(exit::OK);
    }
    wait_all(fleet, &path, &target, &a).await
}

// Long: the progress loop and its two endings print what the operator reads.
async fn wait_all(
    fleet: &[Admin],
    path: &str,
    target: &str,
    a: &DrainArgs,
) -> Result<u8, ClientError> {
    let started = Instant::now();
    let tty = std::io::stderr().is_terminal() && !a.json;
    let mut last_line = Instant::now() - Duration::from_secs(10);
    loop {
        let mut statuses = Vec::with_capacity(fleet.len());
        for admin in fleet {
            // Short long-polls, so the progress line moves and every proxy is asked in turn.
            statuses.push(
                admin
                    .get::<DrainStatus>(&format!(
                        "{path}/drain/wait?timeout=1s{}",
                        if a.strict { "&strict=true" } else { "" }
                    ))
                    .await?,
            );
        }
        let drained = statuses.iter().all(|s| s.drained);
        let counts = statuses
            .iter()
            .fold(InFlight::default(), |sum, v| sum.plus(in_fleet(v)));
        let elapsed = started.elapsed();
        let line = progress_line(target, elapsed, &counts, &statuses);
        if tty {
            eprint!("\r\x1b[2K{line}");
            let _ = std::io::stderr().flush();
        } else if !a.json && last_line.elapsed() >= Duration::from_secs(5) {
            eprintln!("{line}");
            last_line = Instant::now();
        }
        if drained {
            if tty {
                eprintln!();
            }
            print_result(target, &statuses, a.json);
            return Ok(exit::OK);
        }
        if elapsed >= a.timeout {
            if tty {
                eprintln!();
            }
            if a.json {
                println!("{}", serde_json::to_string(&statuses).unwrap_or_default());
            } else {
                println!(
                    "{}: not drained after {}s ({} still in flight)",
                    target,
                    elapsed.as_secs(),
                    counts.words(", ")
                );
                // Why, for the fleet: who holds work, who is behind or lost.
                for f in statuses.iter().filter_map(|s| s.fleet.as_ref()).take(1) {
                    print!("{}", super::fleet::fleet_lines(f));
                }
            }
            return Ok(exit::NOT_DONE);
        }
    }
}

/// `draining blue:   12s elapsed  http 0  sse 3 …  deadline in 48s`.
fn progress_line(
    target: &str,
    elapsed: Duration,
    counts: &InFlight,
    statuses: &[DrainStatus],
) -> String {
    let deadline = next_deadline(statuses)
        .map(|d| format!("  deadline in {}s", d.max(0.0).round() as u64))
        .unwrap_or_default();
    format!(
        "draining {target}: {:>4}s elapsed  {}{deadline}",
        elapsed.as_secs(),
        counts.words("  ")
    )
}

/// Seconds until the nearest deadline of any proxy's drain, if one is set.
fn next_deadline(statuses: &[DrainStatus]) -> Option<f64> {
    let now = unix_now();
    statuses
        .iter()
        .filter_map(|s| {
            let start = s.started_at?;
            let d = s.deadlines.as_ref()?;
            let secs = |v: &str| HumanDuration::parse(v).ok().and_then(|h| h.non_zero());
            let next = [secs(&d.requests_deadline), secs(&d.streams_deadline)]
                .into_iter()
                .flatten()
                .map(|x| start + x.as_secs_f64() - now)
                .filter(|r| *r > 0.0)
                .fold(f64::INFINITY, f64::min);
            next.is_finite().then_some(next)
        })
        .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.min(x))))
}

fn print_result(target: &str, statuses: &[DrainStatus], json: bool) {
    if json {
        println!("{}", serde_json::to_string(statuses).unwrap_or_default());
        return;
    }
    for s in statuses {
        println!("{target}: {} ({})", s.state, s.in_flight.words(", "));
        if let Some(f) = &s.fleet {
            print!("{}", super::fleet::fleet_lines(f));
        }
    }
}

/// In flight on the target here and on the fleet's live proxies.
fn in_fleet(s: &DrainStatus) -> InFlight {
    s.fleet
        .iter()
        .flat_map(|f| &f.proxies)
        .filter(|p| !p.lost)
        .fold(s.in_flight, |a, p| a.plus(p.in_flight))
}

/// Back to active on every proxy (409 "not draining" is fine).
pub async fn undrain(fleet: &[Admin], a: &UndrainArgs, json: bool) -> Result<u8, ClientError> {
    if let Some(host) = &a.node {
        return super::node::undrain(fleet, host, json).await;
    }
    let target = a.target.as_deref().unwrap_or_default();
    let path = base_path(target)?;
    let mut out = Vec::new();
    for admin in fleet {
        // 409: not draining; the answer still carries the status.
        let (_, v) = admin
            .call::<(), DrainStatus>("POST", &format!("{path}/undrain"), None, &[409])
            .await?;
        out.push(v);
    }
    print_result(target, &out, json);
    Ok(exit::OK)
}
