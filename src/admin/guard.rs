//! Who may talk to the admin listener. Checked for every request, the first three before
//! routing:
//!
//! 1. **Host** (DNS rebinding): a name that resolves to the admin address is only trusted
//!    when it is an IP literal, `localhost` (or `*.localhost`), or listed in
//!    `admin.allowed_hosts`. A page at `http://evil.example:9901` that rebinds its name to
//!    127.0.0.1 sends `Host: evil.example:9901` and gets 403.
//! 2. **Origin and `Sec-Fetch-Site`** (cross-site requests): a browser request from another
//!    origin (`Sec-Fetch-Site` other than `same-origin`/`none`, or an `Origin` that is not
//!    this host) gets 403, reads included. A navigation to the status page (`/ui`) from a
//!    link is allowed: the page holds no data and cannot be framed.
//! 3. **Token**: every path under `/api/` needs the bearer token (when one is configured)
//!    before routing says anything, so an unknown path is a 401, not a 404.
//! 4. **Content type** ([`json_only`], once routing found a handler; a method the path
//!    lacks is a 405): every mutation (POST, PUT, DELETE, PATCH) must say
//!    `Content-Type: application/json`, with or without a body. A form or a `no-cors` fetch
//!    cannot send that header; a CORS fetch that does is preflighted, and the preflight gets
//!    no `Access-Control-Allow-*` header.
//!
//! `/healthz` and `/readyz` (one bit each, read by probes that send any Host) skip 1 and 2.

use std::sync::Arc;

use axum::{
    body::Body,
    extract::State,
    http::{header, HeaderMap, Method, Request},
    middleware::Next,
    response::{IntoResponse, Response},
};

use super::{auth, ApiError};
use crate::state::AppState;

/// Middleware: the four checks above, in that order.
pub async fn check(State(state): State<Arc<AppState>>, req: Request<Body>, next: Next) -> Response {
    let path = req.uri().path();
    let probe = path == "/healthz" || path == "/readyz";
    let table = state.table();
    let admin = &table.spec.admin;
    if !probe {
        if let Err(e) = host_allowed(req.headers(), req.uri(), &admin.allowed_hosts) {
            return e.into_response();
        }
        let navigation = req.method() == Method::GET
            && (path == "/ui" || path.starts_with("/ui/"))
            && header_is(req.headers(), "sec-fetch-mode", "navigate")
            && header_is(req.headers(), "sec-fetch-dest", "document");
        if !navigation {
            if let Err(e) = same_origin(req.headers()) {
                return e.into_response();
            }
        }
    }
    let api = path == "/api" || path.starts_with("/api/");
    if api
        && !auth::authorized(
            admin.token.as_ref(),
            req.headers().get(header::AUTHORIZATION),
        )
    {
        return auth::unauthorized();
    }
    drop(table);
    next.run(req).await
}

/// Route middleware, for calls that reached a handler (any other method is routing's 405):
/// a call that changes state must say `Content-Type: application/json`.
pub async fn json_only(req: Request<Body>, next: Next) -> Response {
    if matches!(
        *req.method(),
        Method::POST | Method::PUT | Method::DELETE | Method::PATCH
    ) && !is_json(req.headers().get(header::CONTENT_TYPE))
    {
        return ApiError::new(
            415,
            "json_required",
            "admin API calls that change state need Content-Type: application/json, with or \
             without a body (a web page cannot send it to another origin)",
        )
        .into_response();
    }
    next.run(req).await
}

/// Whether a `Content-Type` is `application/json` (any parameters).
pub fn is_json(ct: Option<&http::HeaderValue>) -> bool {
    let Some(mime) = ct
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
    else {
        return false;
    };
    // Only `application/json` itself: browsers send some `…+json` types cross-origin on
    // their own (the Reporting API's `application/reports+json`).
    mime.trim().eq_ignore_ascii_case("application/json")
}

fn header_is(h: &HeaderMap, name: &str, value: &str) -> bool {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case(value))
}

fn forbidden(kind: &'static str, message: String) -> ApiError {
    ApiError::new(403, kind, message)
}

/// The host part of a `Host` value (no port; IPv6 without brackets), lowercased.
fn host_part(host: &str) -> Option<String> {
    let host = host.trim();
    if let Some(rest) = host.strip_prefix('[') {
        let (ip, after) = rest.split_once(']')?;
        if !(after.is_empty() || after.starts_with(':')) {
            return None;
        }
        return Some(ip.to_ascii_lowercase());
    }
    let name = match host.rsplit_once(':') {
        Some((n, port)) if port.bytes().all(|b| b.is_ascii_digit()) => n,
        Some(_) => return None,
        None => host,
    };
    Some(name.trim_end_matches('.').to_ascii_lowercase())
}

/// Rule 1: the `Host` (or an HTTP/2 authority) names this listener.
fn host_allowed(h: &HeaderMap, uri: &http::Uri, allowed: &[String]) -> Result<(), ApiError> {
    let raw = match (h.get(header::HOST), uri.authority()) {
        (Some(v), _) => v.to_str().unwrap_or(""),
        (None, Some(a)) => a.as_str(),
        // HTTP/1.0 without Host: no browser sends that.
        (None, None) => return Ok(()),
    };
    let ok = host_part(raw).is_some_and(|name| {
        name.parse::<std::net::IpAddr>().is_ok()
            || name == "localhost"
            || name.ends_with(".localhost")
            || allowed.iter().any(|a| a.eq_ignore_ascii_case(&name))
    });
    if ok {
        return Ok(());
    }
    Err(forbidden(
        "forbidden_host",
        format!(
            "Host {raw:?} is not an address of this admin listener (an IP address, localhost, \
             or a name in admin.allowed_hosts)"
        ),
    ))
}

/// Rule 2: no request from a page of another origin.
fn same_origin(h: &HeaderMap) -> Result<(), ApiError> {
    if let Some(site) = h.get("sec-fetch-site") {
        let site = site.to_str().unwrap_or("").trim().to_ascii_lowercase();
        if site != "same-origin" && site != "none" {
            return Err(forbidden(
                "cross_origin",
                format!("a request from another site (Sec-Fetch-Site: {site}) is refused"),
            ));
        }
    }
    let Some(origin) = h.get(header::ORIGIN) else {
        return Ok(());
    };
    let origin = origin.to_str().unwrap_or("");
    let host = h.get(header::HOST).and_then(|v| v.to_str().ok());
    let same = host.is_some_and(|host| {
        let o = origin.to_ascii_lowercase();
        let host = host.trim().to_ascii_lowercase();
        o == format!("http://{host}") || o == format!("https://{host}")
    });
    if same {
        return Ok(());
    }
    Err(forbidden(
        "cross_origin",
        format!("a request from another origin ({origin}) is refused"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, http::HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn hosts() {
        let allowed = vec!["tidegate".to_string()];
        let uri = http::Uri::from_static("/");
        let ok = |v| host_allowed(&headers(&[("host", v)]), &uri, &allowed).is_ok();
        for good in [
            "127.0.0.1:9901",
            "[::1]:9901",
            "10.0.0.7",
            "localhost:9901",
            "LOCALHOST",
            "app.localhost:1",
            "tidegate:9901",
            "localhost.:9901",
        ] {
            assert!(ok(good), "{good} refused");
        }
        for bad in [
            "evil.example:9901",
            "evil.example",
            "127.0.0.1.evil.example",
            "localhost.evil.example",
            "[::1]x",
            "tidegate:99x",
            "",
        ] {
            assert!(!ok(bad), "{bad} accepted");
        }
    }

    #[test]
    fn origins() {
        let ok = |pairs: &[(&'static str, &'static str)]| same_origin(&headers(pairs)).is_ok();
        assert!(ok(&[("host", "127.0.0.1:9901")]));
        assert!(ok(&[
            ("host", "127.0.0.1:9901"),
            ("origin", "http://127.0.0.1:9901"),
            ("sec-fetch-site", "same-origin")
        ]));
        assert!(ok(&[
            ("host", "localhost:9901"),
            ("sec-fetch-site", "none")
        ]));
        assert!(!ok(&[
            ("host", "127.0.0.1:9901"),
            ("origin", "http://evil.example")
        ]));
        assert!(!ok(&[("host", "127.0.0.1:9901"), ("origin", "null")]));
        assert!(!ok(&[
            ("host", "127.0.0.1:9901"),
            ("origin", "http://127.0.0.1:3000")
        ]));
        assert!(!ok(&[
            ("host", "127.0.0.1:9901"),
            ("sec-fetch-site", "same-site")
        ]));
        assert!(!ok(&[
            ("host", "127.0.0.1:9901"),
            ("sec-fetch-site", "cross-site")
        ]));
    }

    #[test]
    fn json_types() {
        let ct = |s: &'static str| is_json(Some(&http::HeaderValue::from_static(s)));
        assert!(ct("application/json"));
        assert!(ct("Application/JSON; charset=utf-8"));
        assert!(!ct("application/merge-patch+json"));
        assert!(
            !ct("application/reports+json"),
            "browsers send it cross-origin"
        );
        assert!(!ct("application/x-www-form-urlencoded"));
        assert!(!ct("text/plain"));
        assert!(!ct("multipart/form-data; boundary=x"));
        assert!(!ct("text/json+json"));
        assert!(!is_json(None));
    }
}
