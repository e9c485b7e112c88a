//! The audit trail: every admin mutation (any method but GET, HEAD, OPTIONS), allowed or
//! refused, is one structured line on tidegate's log: action, target, caller address, status,
//! result and, for a refused or failed call, why (the error kind and message of the JSON
//! error body). Never a header: the token is not logged.

use std::net::SocketAddr;

use axum::{
    body::Body,
    extract::ConnectInfo,
    http::{Method, Request},
    middleware::Next,
    response::Response,
};

/// The error a response carries (set where the JSON error body is made), for the audit line.
#[derive(Clone, Debug)]
pub struct Refusal {
    pub kind: &'static str,
    pub message: String,
}

/// Log one line per mutation, after it was answered.
pub async fn record(req: Request<Body>, next: Next) -> Response {
    if matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
        return next.run(req).await;
    }
    let caller = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.to_string())
        .unwrap_or_else(|| "unknown".into());
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    // A call whose client leaves (or whose handler panics) may still have changed state:
    // its line is written when the guard drops without an answer.
    let mut pending = Pending {
        method: method.clone(),
        path: path.clone(),
        caller: caller.clone(),
        done: false,
    };
    let resp = next.run(req).await;
    pending.done = true;
    let status = resp.status().as_u16();
    let (action, target) = action(&method, &path, status);
    let refusal = resp.extensions().get::<Refusal>();
    let result = match status {
        200..=299 => "ok",
        401 | 403 | 415 => "refused",
        400..=499 => "rejected",
        _ => "failed",
    };
    let reason = refusal.map(|r| format!("{}: {}", r.kind, r.message));
    if status < 400 {
        tracing::info!(target: "tidegate::audit", action, target = ?target, caller = %caller, status, result, "audit");
    } else {
        tracing::warn!(target: "tidegate::audit", action, target = ?target, caller = %caller, status, result, reason = reason.as_deref().unwrap_or(""), "audit");
    }
    resp
}

/// A mutation under way; logged as `cancelled` if it ends without an answer.
struct Pending {
    method: Method,
    path: String,
    caller: String,
    done: bool,
}

impl Drop for Pending {
    fn drop(&mut self) {
        if !self.done {
            let (action, target) = action(&self.method, &self.path, 0);
            tracing::warn!(target: "tidegate::audit", action, target = ?target, caller = %self.caller, status = 0, result = "cancelled", reason = "the call ended before an answer (client gone); its change may have been made", "audit");
        }
    }
}

/// The action and its target, from the method and path (`status` tells a ramp, 202, from
/// a split set, 200).
fn action(method: &Method, path: &str, status: u16) -> (&'static str, String) {
    // Segments cut like the whole path: a hostile caller may send a huge one.
    let seg: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .map(|s| &s[..floor(s, 100)])
        .collect();
    let del = *method == Method::DELETE;
    match seg.as_slice() {
        ["api", "v1", "config", "reload"] => ("reload", "config".into()),
        ["api", "v1", "pools", p, "drain"] => ("drain", format!("pool {p}")),
        ["api", "v1", "pools", p, "undrain"] => ("undrain", format!("pool {p}")),
        ["api", "v1", "pools", p, "backends"] if del => ("members.reset", format!("pool {p}")),
        ["api", "v1", "pools", p, "backends"] => ("members.set", format!("pool {p}")),
        ["api", "v1", "pools", p, "backends", b, "drain"] => ("drain", format!("backend {p}/{b}")),
        ["api", "v1", "pools", p, "backends", b, "undrain"] => {
            ("undrain", format!("backend {p}/{b}"))
        }
        ["api", "v1", "routes", r, "split"] if del => ("split.clear", format!("route {r}")),
        ["api", "v1", "routes", r, "split"] if status == 202 => ("ramp", format!("route {r}")),
        ["api", "v1", "routes", r, "split"] => ("split", format!("route {r}")),
        ["api", "v1", "routes", r, "checkpoint"] => ("checkpoint", format!("route {r}")),
        ["api", "v1", "routes", r, "rollback"] => ("rollback", format!("route {r}")),
        ["api", "v1", "maintenance"] if del => ("maintenance.off", "routes".into()),
        ["api", "v1", "maintenance"] => ("maintenance.on", "routes".into()),
        ["api", "v1", "spool"] => ("spool.purge", "spool".into()),
        ["api", "v1", "spool", "retry"] => ("spool.retry", "spool".into()),
        ["api", "v1", "spool", id, "retry"] => ("spool.retry", format!("item {id}")),
        ["api", "v1", "spool", id] if del => ("spool.delete", format!("item {id}")),
        _ => ("unknown", truncated(path)),
    }
}

/// A path as written by a caller, cut to 200 bytes (a hostile one may be long).
fn truncated(path: &str) -> String {
    path[..floor(path, 200)].to_string()
}

/// The largest character boundary of `s` at most `max`.
fn floor(s: &str, max: usize) -> usize {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    end
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions() {
        let a = |m: Method, p: &str, s| action(&m, p, s);
        assert_eq!(
            a(Method::POST, "/api/v1/pools/blue/drain", 202),
            ("drain", "pool blue".into())
        );
        assert_eq!(
            a(Method::POST, "/api/v1/pools/blue/backends/b1/undrain", 200),
            ("undrain", "backend blue/b1".into())
        );
        assert_eq!(a(Method::POST, "/api/v1/routes/web/split", 202).0, "ramp");
        assert_eq!(a(Method::PUT, "/api/v1/routes/web/split", 200).0, "split");
        assert_eq!(
            a(Method::DELETE, "/api/v1/routes/web/split", 200).0,
            "split.clear"
        );
        assert_eq!(
            a(Method::DELETE, "/api/v1/spool/7", 200),
            ("spool.delete", "item 7".into())
        );
        assert_eq!(a(Method::DELETE, "/api/v1/spool", 200).0, "spool.purge");
        assert_eq!(
            a(Method::POST, &format!("/{}", "é".repeat(300)), 404)
                .1
                .len(),
            199
        );
    }
}
