//! Request and response headers: the request's host, X-Forwarded-*, event-stream detection.

use pingora::{
    http::{RequestHeader, ResponseHeader},
    prelude::*,
    proxy::Session,
};

pub(super) fn is_event_stream(resp: &ResponseHeader) -> bool {
    resp.headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start()
                .to_ascii_lowercase()
                .starts_with("text/event-stream")
        })
}

/// The request's host: `Host` header (HTTP/1.1) or the URI authority (HTTP/2).
pub(super) fn request_host(req: &RequestHeader) -> Option<&str> {
    req.headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri.authority().map(|a| a.as_str()))
}

/// X-Forwarded-For (appended), X-Forwarded-Proto and X-Forwarded-Host (set), plus a Host
/// header for HTTP/2 clients whose authority came in the URI.
pub(super) fn forward_headers(session: &Session, upstream: &mut RequestHeader) -> Result<()> {
    let host = request_host(session.req_header()).map(str::to_owned);
    if let Some(ip) = session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip())
    {
        let xff = match upstream
            .headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
        {
            Some(prev) if !prev.trim().is_empty() => format!("{prev}, {ip}"),
            _ => ip.to_string(),
        };
        upstream.insert_header("x-forwarded-for", xff)?;
    }
    let tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
    upstream.insert_header("x-forwarded-proto", if tls { "https" } else { "http" })?;
    if let Some(h) = host {
        if upstream.headers.get(http::header::HOST).is_none() {
            upstream.insert_header(http::header::HOST, h.as_str())?;
        }
        upstream.insert_header("x-forwarded-host", h)?;
    }
    Ok(())
}
