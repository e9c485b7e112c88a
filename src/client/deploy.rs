//! `tidegate deploy ROUTE --to POOL` and `tidegate rollback ROUTE`, across every `--admin`.
//!
//! A deploy: record a checkpoint (for rollback) → set the target pool's members if
//! `--backend` is given, undrain it if it was drained → wait until it has an available
//! backend (health checks or connects passing) → `--smoke` against it through the route's
//! forced pool (a failure stops here) → shift the route to it, at once or as a
//! server-side ramp that rolls back on errors → drain every other pool of the route and wait,
//! with the progress line → run `--then` with the drained pools in its environment, or say
//! which pools are safe to stop. Exit 0 done, 1 rolled back or timed out (saying why),
//! 2 error.

use std::time::{Duration, Instant};

use super::{drain, exit, seg, shift, Admin, ClientError, DrainArgs};
use crate::api::{
    BackendEntry, BackendsRequest, Checkpoint, DrainStatus, PoolBackends, RouteSplit, Status,
};

pub use super::args::DeployArgs;

/// Run `deploy`.
pub async fn deploy(fleet: &[Admin], a: DeployArgs) -> Result<u8, ClientError> {
    let path = shift::split_path(&a.route);
    for admin in fleet {
        admin
            .call::<(), Checkpoint>(
                "PUT",
                &format!("/api/v1/routes/{}/checkpoint", seg(&a.route)),
                None,
                &[],
            )
            .await?;
    }
    let before = fleet[0].get::<RouteSplit>(&path).await?;
    if !before.split.contains_key(&a.to) && !before.file_split.contains_key(&a.to) {
        // A pool outside the route's split is fine: the shift adds it.
        println!("{}: {} joins the split", a.route, a.to);
    }
    prepare_target(fleet, &a).await?;
    if !wait_available(fleet, &a.to, a.health_timeout).await? {
        println!(
            "{}: no available backend in pool {} within {}s; nothing shifted (tidegate rollback {} restores the start)",
            a.route,
            a.to,
            a.health_timeout.as_secs(),
            a.route
        );
        return Ok(exit::NOT_DONE);
    }
    if let Some(cmd) = &a.smoke {
        if !smoke(&fleet[0], &a, cmd).await? {
            return Ok(exit::NOT_DONE);
        }
    }
    let old: Vec<String> = before
        .split
        .keys()
        .filter(|p| **p != a.to)
        .cloned()
        .collect();
    let code = shift_and_drain(fleet, &a, &old).await?;
    if code != exit::OK {
        return Ok(code);
    }
    then(&a, &old)
}

/// Shift the route to the target, then drain the old pools and wait for them.
async fn shift_and_drain(
    fleet: &[Admin],
    a: &DeployArgs,
    old: &[String],
) -> Result<u8, ClientError> {
    let mut weights = vec![format!("{}=100", a.to)];
    weights.extend(old.iter().map(|p| format!("{p}=0")));
    let args = shift::ShiftArgs {
        route: a.route.clone(),
        weights,
        ramp: a.ramp.clone(),
    };
    let code = shift::shift(fleet, args).await?;
    if code != exit::OK {
        return Ok(code);
    }
    for pool in old {
        let args = DrainArgs {
            target: Some(pool.clone()),
            node: None,
            hard: false,
            wait: true,
            timeout: a
                .drain_wait()
                .unwrap_or(Duration::from_secs(100 * 365 * 86_400)),
            strict: a.strict,
            requests_deadline: None,
            streams_deadline: None,
            json: a.json,
        };
        let code = drain::drain(fleet, args).await?;
        if code != exit::OK {
            return Ok(code);
        }
    }
    Ok(exit::OK)
}

/// Set the target's members (`--backend`) and undrain it if a former deploy drained it.
async fn prepare_target(fleet: &[Admin], a: &DeployArgs) -> Result<(), ClientError> {
    let pool = seg(&a.to);
    for admin in fleet {
        if !a.backends.is_empty() {
            let body = BackendsRequest {
                backends: a
                    .backends
                    .iter()
                    .map(|b| BackendEntry {
                        address: b.clone(),
                        weight: None,
                        name: None,
                    })
                    .collect(),
            };
            admin
                .call::<_, PoolBackends>(
                    "PUT",
                    &format!("/api/v1/pools/{pool}/backends"),
                    Some(&body),
                    &[],
                )
                .await?;
        }
        // 409: it was not draining.
        admin
            .call::<(), DrainStatus>(
                "POST",
                &format!("/api/v1/pools/{pool}/undrain"),
                None,
                &[409],
            )
            .await?;
    }
    Ok(())
}

/// Wait until pool `to` has an available backend on every proxy.
async fn wait_available(fleet: &[Admin], to: &str, timeout: Duration) -> Result<bool, ClientError> {
    let start = Instant::now();
    loop {
        let mut all = true;
        for admin in fleet {
            let s: Status = admin.get("/api/v1/status").await?;
            let ok = s
                .pools
                .get(to)
                .is_some_and(|p| p.backends.iter().any(|b| b.available));
            all &= ok;
        }
        if all {
            println!("pool {to} has an available backend on every proxy");
            return Ok(true);
        }
        if start.elapsed() >= timeout {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// What the smoke test sends to force the pool, and how it is printed. A `force_pool` with a
/// secret wants `POOL:SECRET`: the secret comes from `TIDEGATE_FORCE_SECRET` (tidegate never
/// hands it out) and is not printed.
fn forced_value(a: &DeployArgs, secret: bool) -> Result<(String, String), ClientError> {
    if !secret {
        return Ok((a.to.clone(), a.to.clone()));
    }
    let s = std::env::var("TIDEGATE_FORCE_SECRET")
        .ok()
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .ok_or_else(|| {
            ClientError::Usage(format!(
                "--smoke: route {}'s force_pool needs its secret: set TIDEGATE_FORCE_SECRET",
                a.route
            ))
        })?;
    Ok((format!("{}:{s}", a.to), format!("{}:<secret>", a.to)))
}

/// `--smoke CMD` before anything shifts: the command reaches the target pool through the
/// route's `force_pool` (its header or cookie in the environment). `false`: it failed or
/// ran out of time, and the deploy stops with nothing shifted.
async fn smoke(admin: &Admin, a: &DeployArgs, cmd: &str) -> Result<bool, ClientError> {
    let s: Status = admin.get("/api/v1/status").await?;
    let force = s
        .routes
        .iter()
        .find(|r| r.name == a.route)
        .and_then(|r| r.picking.force_pool.clone())
        .filter(|f| f.pools.contains(&a.to))
        .ok_or_else(|| {
            ClientError::Usage(format!(
                "--smoke: route {} does not let pool {} be forced (add force_pool: {{ header: X-Tidegate-Pool, pools: [{}] }} to the route)",
                a.route, a.to, a.to
            ))
        })?;
    let (real, printed) = forced_value(a, force.secret)?;
    let (var, value, shown) = match force.from.as_str() {
        "cookie" => (
            "TIDEGATE_FORCE_COOKIE",
            format!("{}={real}", force.name),
            format!("{}={printed}", force.name),
        ),
        _ => (
            "TIDEGATE_FORCE_HEADER",
            format!("{}: {real}", force.name),
            format!("{}: {printed}", force.name),
        ),
    };
    println!("{}: smoke test on pool {} ({shown}): {cmd}", a.route, a.to);
    let child = tokio::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(cmd)
        .env("TIDEGATE_ROUTE", &a.route)
        .env("TIDEGATE_POOL", &a.to)
        .env(var, &value)
        .kill_on_drop(true)
        .status();
    let before = forced_picks(admin, &a.route).await?;
    let failed = match tokio::time::timeout(a.smoke_timeout, child).await {
        Ok(Ok(st)) if st.success() => {
            if reached_by_force(admin, &a.route, before).await? {
                return Ok(true);
            }
            format!(
                "it passed, but no request reached pool {} by force (it could not take them and the route fell back to its split)",
                a.to
            )
        }
        Ok(Ok(st)) => format!("it failed: {st}"),
        Ok(Err(e)) => format!("it could not run: {e}"),
        Err(_) => format!(
            "it ran longer than {}s and was killed",
            a.smoke_timeout.as_secs()
        ),
    };
    println!(
        "{}: smoke test on pool {}: {failed}; nothing shifted (tidegate rollback {} restores the start)",
        a.route, a.to, a.route
    );
    Ok(false)
}

/// The route's count of forced picks.
async fn forced_picks(admin: &Admin, route: &str) -> Result<u64, ClientError> {
    let s: Status = admin.get("/api/v1/status").await?;
    Ok(s.routes
        .iter()
        .find(|r| r.name == route)
        .and_then(|r| r.picking.picks.get("forced").copied())
        .unwrap_or(0))
}

/// Whether a request was forced since `before` (picks are counted as requests end, a moment
/// after their response: polled for up to 3 s).
async fn reached_by_force(admin: &Admin, route: &str, before: u64) -> Result<bool, ClientError> {
    let start = Instant::now();
    loop {
        if forced_picks(admin, route).await? > before {
            return Ok(true);
        }
        if start.elapsed() > Duration::from_secs(3) {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `--then CMD` with the drained pools in its environment, or say what is safe to stop.
fn then(a: &DeployArgs, drained: &[String]) -> Result<u8, ClientError> {
    let list = drained.join(",");
    let Some(cmd) = &a.then else {
        println!(
            "{}: deployed to {}; drained and safe to stop: {list}",
            a.route, a.to
        );
        return Ok(exit::OK);
    };
    println!("{}: deployed to {}; running: {cmd}", a.route, a.to);
    let status = std::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(cmd)
        .env("TIDEGATE_ROUTE", &a.route)
        .env("TIDEGATE_POOL", &a.to)
        .env("TIDEGATE_DRAINED_POOLS", &list)
        .status()
        .map_err(|e| ClientError::Usage(format!("--then: cannot run {cmd:?}: {e}")))?;
    if status.success() {
        Ok(exit::OK)
    } else {
        Err(ClientError::Usage(format!(
            "--then {cmd:?} failed: {status}"
        )))
    }
}

/// Run `rollback`: every proxy back to its checkpoint.
pub async fn rollback(fleet: &[Admin], route: &str) -> Result<u8, ClientError> {
    let path = format!("/api/v1/routes/{}/rollback", seg(route));
    for admin in fleet {
        let (_, v) = admin
            .call::<(), RouteSplit>("POST", &path, None, &[])
            .await?;
        let split: Vec<String> = v.split.iter().map(|(p, w)| format!("{p}={w}")).collect();
        println!(
            "{}: {route} rolled back: split {}",
            admin.base,
            split.join(" ")
        );
    }
    Ok(exit::OK)
}
