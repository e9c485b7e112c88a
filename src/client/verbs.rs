//! `tidegate status`, `tidegate reload`, `tidegate maintenance on|off` across a fleet.

use std::time::Duration;

use serde_json::{json, Value};

use super::{exit, Admin, ClientError};

/// One table across every proxy (or `--json`: an array of status objects).
pub async fn status(fleet: &[Admin], as_json: bool) -> Result<u8, ClientError> {
    let mut all = Vec::with_capacity(fleet.len());
    for admin in fleet {
        all.push((
            admin.base.clone(),
            admin.ok("GET", "/api/v1/status", None).await?,
        ));
    }
    if as_json {
        let arr: Vec<Value> = all
            .into_iter()
            .map(|(a, mut s)| {
                s["admin"] = json!(a);
                s
            })
            .collect();
        println!("{}", Value::Array(arr));
        return Ok(exit::OK);
    }
    print!("{}", table(&all));
    Ok(exit::OK)
}

/// The human table: one block of routes, then one row per backend and proxy.
pub fn table(all: &[(String, Value)]) -> String {
    let mut out = String::new();
    for (admin, s) in all {
        out.push_str(&format!(
            "proxy {admin}  generation {}  in flight {}{}{}\n",
            s["generation"],
            s["in_flight"],
            if s["shutting_down"] == true {
                "  SHUTTING DOWN"
            } else {
                ""
            },
            if s["maintenance"]["maintenance"] == true {
                "  MAINTENANCE"
            } else {
                ""
            },
        ));
        for r in s["routes"].as_array().into_iter().flatten() {
            let split: Vec<String> = r["split"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(p, w)| format!("{p}={w}"))
                .collect();
            let ramp = match r["ramp"]["state"].as_str() {
                Some("running") => format!(
                    "  ramp {}/{}",
                    r["ramp"]["steps_done"], r["ramp"]["steps_total"]
                ),
                _ => String::new(),
            };
            out.push_str(&format!(
                "  route {:<16} split {}{}{}\n",
                r["name"].as_str().unwrap_or("?"),
                split.join(" "),
                if r["override"] == true {
                    " (override)"
                } else {
                    ""
                },
                ramp
            ));
        }
    }
    out.push_str(&format!(
        "{:<28} {:<24} {:<10} {:>7} {:>6} {:>6} {:>10}  {}\n",
        "BACKEND", "ADDRESS", "STATE", "HEALTHY", "HTTP", "SSE", "WEBSOCKET", "PROXY"
    ));
    for (admin, s) in all {
        for (pool, p) in s["pools"].as_object().into_iter().flatten() {
            for b in p["backends"].as_array().into_iter().flatten() {
                let state = if p["state"] != "active" {
                    p["state"].as_str().unwrap_or("?")
                } else {
                    b["state"].as_str().unwrap_or("?")
                };
                out.push_str(&row(
                    &format!("{pool}/{}", b["name"].as_str().unwrap_or("?")),
                    b["address"].as_str().unwrap_or(""),
                    state,
                    b,
                    admin,
                ));
            }
        }
        for b in s["removed"].as_array().into_iter().flatten() {
            out.push_str(&row(
                b["id"].as_str().unwrap_or("?"),
                "",
                "removed",
                b,
                admin,
            ));
        }
    }
    out
}

fn row(id: &str, addr: &str, state: &str, b: &Value, admin: &str) -> String {
    let f = &b["in_flight"];
    format!(
        "{id:<28} {addr:<24} {state:<10} {:>7} {:>6} {:>6} {:>10}  {admin}\n",
        if b["healthy"] == true { "yes" } else { "no" },
        f["http"].as_u64().unwrap_or(0),
        f["sse"].as_u64().unwrap_or(0),
        f["websocket"].as_u64().unwrap_or(0),
    )
}

/// Reload every proxy; prints what changed. Exit 1 when a proxy refused the file.
pub async fn reload(fleet: &[Admin], as_json: bool) -> Result<u8, ClientError> {
    let mut code = exit::OK;
    for admin in fleet {
        let (status, v) = admin
            .call(
                "POST",
                "/api/v1/config/reload",
                None,
                Duration::from_secs(60),
            )
            .await?;
        if as_json {
            println!("{v}");
        }
        match status {
            200 => {
                if !as_json {
                    let s = &v["summary"];
                    let list = |k: &str| {
                        s[k].as_array()
                            .map(|a| {
                                a.iter()
                                    .filter_map(|x| x.as_str())
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            })
                            .unwrap_or_default()
                    };
                    let mut parts = Vec::new();
                    for (k, label) in [
                        ("routes_added", "routes added"),
                        ("routes_changed", "routes changed"),
                        ("routes_removed", "routes removed"),
                        ("pools_added", "pools added"),
                        ("pools_changed", "pools changed"),
                        ("pools_removed", "pools removed"),
                        ("needs_restart", "needs restart"),
                    ] {
                        let l = list(k);
                        if !l.is_empty() {
                            parts.push(format!("{label}: {l}"));
                        }
                    }
                    let what = if parts.is_empty() {
                        "no routing change".to_string()
                    } else {
                        parts.join("; ")
                    };
                    println!(
                        "{}: reloaded, generation {}: {what}",
                        admin.base, s["generation"]
                    );
                    for w in s["warnings"].as_array().into_iter().flatten() {
                        println!("{}: warning: {}", admin.base, w.as_str().unwrap_or(""));
                    }
                }
            }
            422 => {
                if !as_json {
                    println!(
                        "{}: refused, the running config is kept: {}",
                        admin.base,
                        v["message"].as_str().unwrap_or("invalid config")
                    );
                }
                code = exit::NOT_DONE;
            }
            _ => return Err(admin.api_error(status, &v)),
        }
    }
    Ok(code)
}

/// `maintenance on` (optionally scoped) or `off`, on every proxy. `off` when not in
/// maintenance is not an error.
pub async fn maintenance(
    fleet: &[Admin],
    on: bool,
    body: Value,
    as_json: bool,
) -> Result<u8, ClientError> {
    for admin in fleet {
        let (status, v) = if on {
            admin
                .call(
                    "POST",
                    "/api/v1/maintenance",
                    Some(&body),
                    Duration::from_secs(30),
                )
                .await?
        } else {
            admin
                .call(
                    "DELETE",
                    "/api/v1/maintenance",
                    None,
                    Duration::from_secs(30),
                )
                .await?
        };
        // `off` when not in maintenance (409) is already the wanted state.
        let already_off = status == 409 && !on;
        if status >= 300 && !already_off {
            return Err(admin.api_error(status, &v));
        }
        if as_json {
            println!("{v}");
        } else {
            println!(
                "{}: maintenance {}",
                admin.base,
                if on { "on" } else { "off" }
            );
        }
    }
    Ok(exit::OK)
}
