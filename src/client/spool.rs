//! `tidegate spool list | retry | purge`: the spool for an operator.

use super::{exit, seg, Admin, ClientError};
use crate::api::printable;
use crate::api::{SpoolChanged, SpoolList, SpoolRetryRequest};

/// What `tidegate spool` does.
#[derive(Debug, Clone)]
pub enum SpoolVerb {
    List {
        route: Option<String>,
        state: Option<String>,
        limit: u32,
    },
    /// One dead item by id, or every dead item (of a route).
    Retry {
        id: Option<i64>,
        route: Option<String>,
    },
    /// One item by id, or every item in `state` (of a route).
    Purge {
        id: Option<i64>,
        route: Option<String>,
        state: String,
    },
}

fn query(pairs: &[(&str, Option<&str>)]) -> String {
    let q: Vec<String> = pairs
        .iter()
        .filter_map(|(k, v)| v.map(|v| format!("{k}={}", seg(v))))
        .collect();
    if q.is_empty() {
        String::new()
    } else {
        format!("?{}", q.join("&"))
    }
}

/// Run `verb` on every proxy of the fleet.
pub async fn spool(fleet: &[Admin], verb: SpoolVerb, as_json: bool) -> Result<u8, ClientError> {
    for admin in fleet {
        match &verb {
            SpoolVerb::List {
                route,
                state,
                limit,
            } => {
                let limit = limit.to_string();
                let path = format!(
                    "/api/v1/spool{}",
                    query(&[
                        ("route", route.as_deref()),
                        ("state", state.as_deref()),
                        ("limit", Some(&limit)),
                    ])
                );
                let list: SpoolList = admin.get(&path).await?;
                if as_json {
                    println!("{}", serde_json::to_string(&list).unwrap_or_default());
                } else {
                    print_list(admin, &list, fleet.len() > 1);
                }
            }
            SpoolVerb::Retry { id, route } => {
                let (path, body) = match id {
                    Some(id) => (format!("/api/v1/spool/{id}/retry"), None),
                    None => (
                        "/api/v1/spool/retry".to_string(),
                        Some(SpoolRetryRequest {
                            route: route.clone(),
                        }),
                    ),
                };
                let (_, c): (_, SpoolChanged) =
                    admin.call("POST", &path, body.as_ref(), &[]).await?;
                report(admin, as_json, &c, "queued again");
            }
            SpoolVerb::Purge { id, route, state } => {
                let path = match id {
                    Some(id) => format!("/api/v1/spool/{id}"),
                    None => format!(
                        "/api/v1/spool{}",
                        query(&[("route", route.as_deref()), ("state", Some(state))])
                    ),
                };
                let (_, c): (_, SpoolChanged) =
                    admin.call::<(), _>("DELETE", &path, None, &[]).await?;
                report(admin, as_json, &c, "deleted");
            }
        }
    }
    Ok(exit::OK)
}

fn report(admin: &Admin, as_json: bool, c: &SpoolChanged, what: &str) {
    if as_json {
        println!("{}", serde_json::to_string(c).unwrap_or_default());
    } else {
        println!("{}: {} item(s) {what}", admin.base, c.changed);
    }
}

fn print_list(admin: &Admin, list: &SpoolList, named: bool) {
    if named {
        println!("== {}", admin.base);
    }
    println!("store: {}", list.store);
    for d in &list.routes {
        let age = d
            .oldest_pending_seconds
            .map_or(String::new(), |s| format!(", oldest {s:.1}s"));
        println!(
            "route {}: {} pending, {} dead{age}",
            d.route, d.pending, d.dead
        );
    }
    if list.items.is_empty() {
        println!("no items");
        return;
    }
    println!(
        "{:>8}  {:<12} {:<8} {:>8} {:>9}  {:<7} {:<30} last error",
        "id", "route", "state", "attempts", "age", "method", "path"
    );
    for i in &list.items {
        println!(
            "{:>8}  {:<12} {:<8} {:>8} {:>8.1}s  {:<7} {:<30} {}",
            i.id,
            printable(&i.route),
            printable(&i.state),
            i.attempts,
            i.age_seconds,
            printable(&i.method),
            // Stored from client requests and backend answers: never printed raw.
            printable(&i.path),
            printable(i.last_error.as_deref().unwrap_or(""))
        );
    }
    if list.total > list.items.len() as u64 {
        println!(
            "… {} of {} shown (oldest first; --limit for more)",
            list.items.len(),
            list.total
        );
    }
}
