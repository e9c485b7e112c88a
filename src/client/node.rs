//! `tidegate drain --node HOST [--hard] [--wait]` and `tidegate undrain --node HOST`: every
//! backend on one host, in every pool, on every proxy of the fleet, with progress per pool.

use std::{
    collections::BTreeMap,
    io::{IsTerminal, Write},
    time::{Duration, Instant},
};

use super::{args::DrainArgs, exit, seg, Admin, ClientError};
use crate::api::{InFlight, NodeDrainMode, NodeDrainRequest, NodeDrainStatus};

fn base(host: &str) -> String {
    format!("/api/v1/nodes/{}", seg(host))
}

/// Start the node's drain on every proxy, then optionally wait for all of it.
pub(super) async fn drain(fleet: &[Admin], host: &str, a: &DrainArgs) -> Result<u8, ClientError> {
    let path = base(host);
    let body = NodeDrainRequest {
        requests_deadline: a.requests_deadline.clone(),
        streams_deadline: a.streams_deadline.clone(),
        close_spread: None,
        mode: if a.hard {
            NodeDrainMode::Hard
        } else {
            NodeDrainMode::Soft
        },
    };
    let mut last = Vec::with_capacity(fleet.len());
    for admin in fleet {
        let (_, v) = admin
            .call::<_, NodeDrainStatus>("POST", &format!("{path}/drain"), Some(&body), &[])
            .await?;
        last.push(v);
    }
    if !a.wait {
        print_result(host, &last, a.json);
        return Ok(exit::OK);
    }
    let started = Instant::now();
    let tty = std::io::stderr().is_terminal() && !a.json;
    let mut last_line = Instant::now() - Duration::from_secs(10);
    loop {
        let mut statuses = Vec::with_capacity(fleet.len());
        for admin in fleet {
            let strict = if a.strict { "&strict=true" } else { "" };
            let wait = format!("{path}/drain/wait?timeout=1s{strict}");
            statuses.push(admin.get::<NodeDrainStatus>(&wait).await?);
        }
        let drained = statuses.iter().all(|s| s.drained);
        let line = progress_line(host, started.elapsed(), &statuses);
        if tty {
            eprint!("\r\x1b[2K{line}");
            let _ = std::io::stderr().flush();
        } else if !a.json && last_line.elapsed() >= Duration::from_secs(5) {
            eprintln!("{line}");
            last_line = Instant::now();
        }
        if drained || started.elapsed() >= a.timeout {
            if tty {
                eprintln!();
            }
            print_result(host, &statuses, a.json);
            if !drained && !a.json {
                println!(
                    "node {host}: not drained after {}s",
                    started.elapsed().as_secs()
                );
            }
            return Ok(if drained { exit::OK } else { exit::NOT_DONE });
        }
    }
}

/// Per pool, over the fleet: backends drained of backends, and what is still in flight.
fn per_pool(statuses: &[NodeDrainStatus]) -> BTreeMap<String, (usize, usize, InFlight)> {
    let mut pools: BTreeMap<String, (usize, usize, InFlight)> = BTreeMap::new();
    for s in statuses {
        for b in &s.backends {
            let e = pools.entry(b.pool.clone()).or_default();
            e.0 += usize::from(b.drained);
            e.1 += 1;
            e.2 = e.2.plus(b.in_flight);
        }
    }
    pools
}

/// `node 10.0.0.5:   12s  blue 1/1 drained  api 0/1 (http 0  sse 2 …)`.
fn progress_line(host: &str, elapsed: Duration, statuses: &[NodeDrainStatus]) -> String {
    let pools: Vec<String> = per_pool(statuses)
        .iter()
        .map(|(p, (done, all, f))| match done == all {
            true => format!("{p} {done}/{all} drained"),
            false => format!("{p} {done}/{all} ({})", f.words("  ")),
        })
        .collect();
    format!(
        "draining node {host}: {:>4}s  {}",
        elapsed.as_secs(),
        pools.join("  ")
    )
}

fn print_result(host: &str, statuses: &[NodeDrainStatus], json: bool) {
    if json {
        println!("{}", serde_json::to_string(statuses).unwrap_or_default());
        return;
    }
    for s in statuses {
        for b in &s.backends {
            let name = b.backend.as_deref().unwrap_or(&b.pool);
            println!("{host} {name}: {} ({})", b.state, b.in_flight.words(", "));
            if let Some(f) = &b.fleet {
                print!("{}", super::fleet::fleet_lines(f));
            }
        }
    }
}

/// Every backend on the node back to active, on every proxy.
pub(super) async fn undrain(fleet: &[Admin], host: &str, json: bool) -> Result<u8, ClientError> {
    let path = format!("{}/undrain", base(host));
    let mut out = Vec::with_capacity(fleet.len());
    for admin in fleet {
        let (_, v) = admin
            .call::<(), NodeDrainStatus>("POST", &path, None, &[])
            .await?;
        out.push(v);
    }
    print_result(host, &out, json);
    Ok(exit::OK)
}
