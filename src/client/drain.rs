//! `tidegate drain POOL[/BACKEND] [--wait] [--timeout D]` and `tidegate undrain …`, across a
//! fleet. `--wait` long-polls every proxy until all report drained, with a live progress line
//! on a terminal (elapsed, http / sse / websocket, deadline countdown) and a plain line every
//! 5 s otherwise. Exit: 0 drained, 1 timed out, 2 error.

use std::{
    io::{IsTerminal, Write},
    time::{Duration, Instant},
};

use serde_json::{json, Value};

use super::{exit, seg, Admin, ClientError};

/// Arguments of `drain`.
pub struct DrainArgs {
    pub target: String,
    pub wait: bool,
    pub timeout: Duration,
    pub requests_deadline: Option<String>,
    pub streams_deadline: Option<String>,
    pub json: bool,
}

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
    let path = base_path(&a.target)?;
    let mut body = json!({});
    if let Some(d) = &a.requests_deadline {
        body["requests_deadline"] = json!(d);
    }
    if let Some(d) = &a.streams_deadline {
        body["streams_deadline"] = json!(d);
    }
    let mut last = Vec::new();
    for admin in fleet {
        let (status, v) = admin
            .call(
                "POST",
                &format!("{path}/drain"),
                Some(&body),
                Duration::from_secs(30),
            )
            .await?;
        if status >= 300 && status != 409 {
            return Err(admin.api_error(status, &v));
        }
        last.push(v);
    }
    if !a.wait {
        print_result(&a.target, &last, a.json);
        return Ok(exit::OK);
    }
    wait_all(fleet, &path, &a).await
}

async fn wait_all(fleet: &[Admin], path: &str, a: &DrainArgs) -> Result<u8, ClientError> {
    let started = Instant::now();
    let tty = std::io::stderr().is_terminal() && !a.json;
    let mut last_line = Instant::now() - Duration::from_secs(10);
    loop {
        let mut statuses = Vec::with_capacity(fleet.len());
        for admin in fleet {
            // Short long-polls, so the progress line moves and every proxy is asked in turn.
            statuses.push(
                admin
                    .ok("GET", &format!("{path}/drain/wait?timeout=1s"), None)
                    .await?,
            );
        }
        let drained = statuses.iter().all(|s| s["drained"] == true);
        let (http, sse, ws) = statuses.iter().fold((0, 0, 0), |(h, s, w), v| {
            let f = &v["in_flight"];
            (
                h + f["http"].as_u64().unwrap_or(0),
                s + f["sse"].as_u64().unwrap_or(0),
                w + f["websocket"].as_u64().unwrap_or(0),
            )
        });
        let elapsed = started.elapsed();
        let deadline = next_deadline(&statuses);
        let line = format!(
            "draining {}: {:>4}s elapsed  http {http}  sse {sse}  websocket {ws}{}",
            a.target,
            elapsed.as_secs(),
            deadline
                .map(|d| format!("  deadline in {}s", d.max(0.0).round() as u64))
                .unwrap_or_default()
        );
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
            print_result(&a.target, &statuses, a.json);
            return Ok(exit::OK);
        }
        if elapsed >= a.timeout {
            if tty {
                eprintln!();
            }
            if a.json {
                println!("{}", Value::Array(statuses));
            } else {
                println!("{}: not drained after {}s (http {http}, sse {sse}, websocket {ws} still in flight)", a.target, elapsed.as_secs());
            }
            return Ok(exit::NOT_DONE);
        }
    }
}

/// Seconds until the nearest deadline of any proxy's drain, if one is set.
fn next_deadline(statuses: &[Value]) -> Option<f64> {
    let now = crate::drain::view::unix(std::time::SystemTime::now());
    statuses
        .iter()
        .filter_map(|s| {
            let start = s["started_at"].as_f64()?;
            let d = &s["deadlines"];
            let secs = |k: &str| {
                d[k].as_str()
                    .and_then(|v| crate::config::duration::HumanDuration::parse(v).ok())
                    .and_then(|h| h.non_zero())
            };
            let next = [secs("requests_deadline"), secs("streams_deadline")]
                .into_iter()
                .flatten()
                .map(|x| start + x.as_secs_f64() - now)
                .filter(|r| *r > 0.0)
                .fold(f64::INFINITY, f64::min);
            next.is_finite().then_some(next)
        })
        .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.min(x))))
}

fn print_result(target: &str, statuses: &[Value], json: bool) {
    if json {
        println!("{}", Value::Array(statuses.to_vec()));
        return;
    }
    for s in statuses {
        let f = &s["in_flight"];
        println!(
            "{target}: {} (http {}, sse {}, websocket {})",
            s["state"].as_str().unwrap_or("?"),
            f["http"].as_u64().unwrap_or(0),
            f["sse"].as_u64().unwrap_or(0),
            f["websocket"].as_u64().unwrap_or(0)
        );
    }
}

/// Back to active on every proxy (409 "not draining" is fine).
pub async fn undrain(fleet: &[Admin], target: &str, json: bool) -> Result<u8, ClientError> {
    let path = base_path(target)?;
    let mut out = Vec::new();
    for admin in fleet {
        let (status, v) = admin
            .call(
                "POST",
                &format!("{path}/undrain"),
                None,
                Duration::from_secs(30),
            )
            .await?;
        if status >= 300 && status != 409 {
            return Err(admin.api_error(status, &v));
        }
        out.push(v);
    }
    print_result(target, &out, json);
    Ok(exit::OK)
}
