//! `tidegate status`, `tidegate reload`, `tidegate maintenance on|off` across a fleet.

use std::time::Duration;

use super::{exit, Admin, ClientError};
use crate::api::{self, BackendStatus, Kind, MaintenanceRequest, MaintenanceStatus, State, Status};

/// `/readyz` of every proxy: 0 all ready, 1 one is not (starting or shutting down).
pub async fn health(fleet: &[Admin], as_json: bool) -> Result<u8, ClientError> {
    let mut code = exit::OK;
    for admin in fleet {
        let (status, bytes) = admin
            .raw::<()>("GET", "/readyz", None, Duration::from_secs(5))
            .await?;
        let r: Option<api::Ready> = admin.decode(status, &bytes).ok();
        let ready = status == 200;
        if as_json {
            println!("{}", String::from_utf8_lossy(&bytes).trim_end());
        } else {
            let why = crate::api::printable(&r.and_then(|r| r.reason).unwrap_or_default());
            println!(
                "{}: {}{}",
                admin.base,
                if ready { "ready" } else { "not ready" },
                if why.is_empty() {
                    String::new()
                } else {
                    format!(" ({why})")
                }
            );
        }
        if !ready {
            code = exit::NOT_DONE;
        }
    }
    Ok(code)
}

/// One table across every proxy (or `--json`: an array of status objects).
pub async fn status(fleet: &[Admin], as_json: bool) -> Result<u8, ClientError> {
    let mut all = Vec::with_capacity(fleet.len());
    for admin in fleet {
        all.push((
            admin.base.clone(),
            admin.get::<Status>("/api/v1/status").await?,
        ));
    }
    if as_json {
        #[derive(serde::Serialize)]
        struct WithAdmin<'a> {
            admin: &'a str,
            #[serde(flatten)]
            status: &'a Status,
        }
        let arr: Vec<WithAdmin> = all
            .iter()
            .map(|(a, s)| WithAdmin {
                admin: a,
                status: s,
            })
            .collect();
        println!("{}", serde_json::to_string(&arr).unwrap_or_default());
        return Ok(exit::OK);
    }
    print!("{}", table(&all));
    Ok(exit::OK)
}

fn route_line(r: &api::RouteStatus) -> String {
    let split: Vec<String> = r
        .split
        .split
        .iter()
        .map(|(p, w)| format!("{p}={w}"))
        .collect();
    let ramp = match &r.split.ramp {
        Some(x) if x.is_running() => format!("  ramp {}/{}", x.steps_done, x.steps_total),
        _ => String::new(),
    };
    let over = if r.split.overridden {
        " (override)"
    } else {
        ""
    };
    let affinity = match &r.picking.affinity {
        Some(mode) if r.picking.sticky_backends => format!("  affinity {mode} (sticky backends)"),
        Some(mode) => format!("  affinity {mode}"),
        None => String::new(),
    };
    format!(
        "  route {:<16} split {}{over}{ramp}{affinity}\n",
        r.name,
        split.join(" ")
    )
}

/// The human table: one block of routes per proxy, then one row per backend and proxy.
pub fn table(all: &[(String, Status)]) -> String {
    let mut out = String::new();
    for (admin, s) in all {
        out.push_str(&format!(
            "proxy {admin}  generation {}  in flight {}{}{}\n",
            s.generation,
            s.in_flight,
            if s.shutting_down {
                "  SHUTTING DOWN"
            } else {
                ""
            },
            if s.maintenance.maintenance {
                "  MAINTENANCE"
            } else {
                ""
            },
        ));
        for r in &s.routes {
            out.push_str(&route_line(r));
        }
        if let Some(f) = &s.fleet {
            out.push_str(&fleet_table(f));
        }
    }
    let kinds: String = Kind::ALL
        .iter()
        .map(|k| format!(" {:>9}", k.as_str().to_uppercase()))
        .collect();
    out.push_str(&format!(
        "{:<28} {:<24} {:<10} {:>7}{kinds}  PROXY\n",
        "BACKEND", "ADDRESS", "STATE", "HEALTHY"
    ));
    for (admin, s) in all {
        for (pool, p) in &s.pools {
            for b in &p.backends {
                let state = if p.state != State::Active {
                    p.state
                } else {
                    b.state
                };
                let id = format!("{pool}/{}", b.name);
                out.push_str(&row(
                    &id,
                    b.address.as_deref().unwrap_or(""),
                    state.as_str(),
                    b,
                    admin,
                ));
            }
        }
        for b in &s.removed {
            out.push_str(&row(&b.id, "", "removed", b, admin));
        }
    }
    out
}

/// The fleet as one proxy sees it: the store, then one row per proxy.
fn fleet_table(f: &api::FleetStatus) -> String {
    let store = match &f.store_error {
        None => "reachable".to_string(),
        Some(e) => format!("UNREACHABLE ({})", api::printable(e)),
    };
    let mut out = format!(
        "  fleet: node {}  control store {store}  rev {}{}\n",
        api::printable(&f.node),
        f.rev,
        if f.loaded { "" } else { "  NOT LOADED" }
    );
    out.push_str(&format!(
        "    {:<28} {:<22} {:>10} {:>6}  {}\n",
        "PROXY", "ADMIN", "HEARTBEAT", "REV", "IN FLIGHT"
    ));
    for p in &f.proxies {
        let age = if p.me {
            "(this)".to_string()
        } else if p.lost {
            format!("LOST {:.0}s", p.heartbeat_age_seconds)
        } else {
            format!("{:.1}s", p.heartbeat_age_seconds)
        };
        out.push_str(&format!(
            "    {:<28} {:<22} {age:>10} {:>6}  {}\n",
            api::printable(&p.node),
            api::printable(&p.admin),
            p.rev,
            p.in_flight.words(" ")
        ));
    }
    out
}

fn row(id: &str, addr: &str, state: &str, b: &BackendStatus, admin: &str) -> String {
    let counts: String = Kind::ALL
        .iter()
        .map(|k| format!(" {:>9}", b.in_flight.get(*k)))
        .collect();
    format!(
        "{id:<28} {addr:<24} {state:<10} {:>7}{counts}  {admin}\n",
        if b.healthy { "yes" } else { "no" },
    )
}

fn summary_line(s: &api::ReloadSummary) -> String {
    let d = &s.diff;
    let restart: Vec<String> = d
        .needs_restart
        .iter()
        .map(|k| k.as_str().to_string())
        .collect();
    let mut parts = Vec::new();
    for (list, label) in [
        (&d.routes_added, "routes added"),
        (&d.routes_changed, "routes changed"),
        (&d.routes_removed, "routes removed"),
        (&d.pools_added, "pools added"),
        (&d.pools_changed, "pools changed"),
        (&d.pools_removed, "pools removed"),
        (&restart, "needs restart"),
    ] {
        if !list.is_empty() {
            parts.push(format!("{label}: {}", list.join(", ")));
        }
    }
    if parts.is_empty() {
        "no routing change".to_string()
    } else {
        parts.join("; ")
    }
}

/// Reload every proxy; prints what changed. Exit 1 when a proxy refused the file.
pub async fn reload(fleet: &[Admin], as_json: bool) -> Result<u8, ClientError> {
    let mut code = exit::OK;
    for admin in fleet {
        let (status, bytes) = admin
            .raw::<()>(
                "POST",
                "/api/v1/config/reload",
                None,
                Duration::from_secs(60),
            )
            .await?;
        if as_json {
            println!("{}", String::from_utf8_lossy(&bytes).trim_end());
        }
        match status {
            200 => {
                let r: api::Reloaded = admin.decode(status, &bytes)?;
                if !as_json {
                    let s = &r.summary;
                    println!(
                        "{}: reloaded, generation {}: {}",
                        admin.base,
                        s.generation,
                        summary_line(s)
                    );
                    for w in &s.warnings {
                        println!("{}: warning: {w}", admin.base);
                    }
                }
            }
            422 => {
                let r: api::ConfigRefused = admin.decode(status, &bytes)?;
                if !as_json {
                    println!(
                        "{}: refused, the running config is kept: {}",
                        admin.base, r.message
                    );
                }
                code = exit::NOT_DONE;
            }
            _ => return Err(admin.api_error(status, &bytes)),
        }
    }
    Ok(code)
}

/// `maintenance on` (optionally scoped) or `off`, on every proxy. `off` when not in
/// maintenance is not an error.
pub async fn maintenance(
    fleet: &[Admin],
    on: bool,
    body: MaintenanceRequest,
    as_json: bool,
) -> Result<u8, ClientError> {
    for admin in fleet {
        let (status, bytes) = if on {
            admin
                .raw(
                    "POST",
                    "/api/v1/maintenance",
                    Some(&body),
                    super::CALL_TIMEOUT,
                )
                .await?
        } else {
            admin
                .raw::<()>("DELETE", "/api/v1/maintenance", None, super::CALL_TIMEOUT)
                .await?
        };
        // `off` when not in maintenance (409) is already the wanted state.
        let already_off = status == 409 && !on;
        if status >= 300 && !already_off {
            return Err(admin.api_error(status, &bytes));
        }
        if as_json {
            println!("{}", String::from_utf8_lossy(&bytes).trim_end());
        } else {
            let m: Option<MaintenanceStatus> = admin.decode(status, &bytes).ok();
            let state = m.map_or(on, |m| m.maintenance);
            println!(
                "{}: maintenance {}",
                admin.base,
                if state { "on" } else { "off" }
            );
        }
    }
    Ok(exit::OK)
}
