//! `GET /ui`: the status page, served from the binary (no external asset, works offline).
//! The page holds no data: it reads `/api/v1/events` and calls the API with the bearer token
//! the user types (kept in the tab's sessionStorage, sent in a header, never in a URL).
//! Served with a Content-Security-Policy that allows only its own script and style (no
//! inline script) and forbids framing.

use axum::response::{IntoResponse, Response};
use http::{header, HeaderValue};

const PAGE: &str = include_str!("ui/index.html");
const SCRIPT: &str = include_str!("ui/app.js");
const STYLE: &str = include_str!("ui/app.css");

/// Only the page's own files; API calls and the event stream to this origin; no framing.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

fn serve(body: &'static str, content_type: &'static str) -> Response {
    let mut r = body.into_response();
    let h = r.headers_mut();
    for (k, v) in [
        (header::CONTENT_TYPE, content_type),
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CACHE_CONTROL, "no-cache"),
    ] {
        h.insert(k, HeaderValue::from_static(v));
    }
    r
}

/// `GET /ui`.
pub async fn page() -> Response {
    serve(PAGE, "text/html; charset=utf-8")
}

/// `GET /ui/app.js`.
pub async fn script() -> Response {
    serve(SCRIPT, "text/javascript; charset=utf-8")
}

/// `GET /ui/app.css`.
pub async fn style() -> Response {
    serve(STYLE, "text/css; charset=utf-8")
}
