//! Request and response headers: the request's host, X-Forwarded-*, event-stream detection,
//! request ids and trace context.
//!
//! These run on every request, so they skip the allocations the obvious code makes: the Host
//! value is cloned (a reference count) rather than copied, IPv4 addresses are written without
//! the formatting machinery, and the event-stream check compares bytes in place. Measured with
//! callgrind under the compare harness's load: `forward_headers` 8,790 → 7,238 instructions per
//! request, `is_event_stream` 378 → 134. What remains is pingora's header insertion (a name
//! parse plus two maps that grow as headers are added).

use std::net::IpAddr;

use bytes::{BufMut, BytesMut};
use http::{header, HeaderName, HeaderValue};
use pingora::{
    http::{RequestHeader, ResponseHeader},
    prelude::*,
    proxy::Session,
};

use crate::{
    access_log::ids,
    config::spec::{RequestIdMode, TraceSpec},
};

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub(super) static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub(super) static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub(super) static REFERER: HeaderName = HeaderName::from_static("referer");
pub(super) static USER_AGENT: HeaderName = HeaderName::from_static("user-agent");
static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// Exactly one `X-Request-Id` on the request: the client's when it is valid and trusted,
/// else a new one. The backend gets it, the response and the access log carry it.
pub(super) fn ensure_request_id(req: &mut RequestHeader, mode: RequestIdMode) {
    let mut sent = req.headers.get_all(&REQUEST_ID).iter();
    let keep = mode == RequestIdMode::Trust
        && matches!((sent.next(), sent.next()), (Some(v), None) if ids::valid_request_id(v.as_bytes()));
    if keep {
        return;
    }
    let mut id = [0u8; 32];
    ids::mint_request_id_into(&mut id);
    // A minted id is plain hex: always a valid header value.
    if let Ok(v) = HeaderValue::from_bytes(&id) {
        let _ = req.insert_header(REQUEST_ID.clone(), v);
    }
}

/// With `trace.start`, a request without a valid `traceparent` gets a new trace (its stale
/// `tracestate` is dropped, as Trace Context requires). A valid one passes unchanged.
pub(super) fn start_trace(req: &mut RequestHeader, spec: &TraceSpec) {
    if !spec.start
        || req
            .headers
            .get(&TRACEPARENT)
            .is_some_and(|v| ids::trace_id(v.as_bytes()).is_some())
    {
        return;
    }
    let sampled = spec.sample >= 1.0 || fastrand::f64() < spec.sample;
    if let Ok(v) = HeaderValue::from_str(&ids::new_traceparent(sampled)) {
        let _ = req.insert_header(TRACEPARENT.clone(), v);
        req.remove_header(&TRACESTATE);
    }
}

pub(super) fn is_event_stream(resp: &ResponseHeader) -> bool {
    const SSE: &[u8] = b"text/event-stream";
    resp.headers
        .get(header::CONTENT_TYPE)
        .map(|v| v.as_bytes().trim_ascii_start())
        .is_some_and(|v| v.len() >= SSE.len() && v[..SSE.len()].eq_ignore_ascii_case(SSE))
}

/// The request's host: `Host` header (HTTP/1.1) or the URI authority (HTTP/2).
pub(super) fn request_host(req: &RequestHeader) -> Option<&str> {
    req.headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri.authority().map(|a| a.as_str()))
}

/// X-Forwarded-For (appended), X-Forwarded-Proto and X-Forwarded-Host (set), plus a Host
/// header for HTTP/2 clients whose authority came in the URI.
/// The client's address (the connection's peer), for TCP clients.
pub(super) fn client_ip(session: &Session) -> Option<IpAddr> {
    session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip())
}

pub(super) fn forward_headers(session: &Session, upstream: &mut RequestHeader) -> Result<()> {
    let client = client_ip(session);
    let tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
    forward(session.req_header(), client, tls, upstream)
}

fn forward(
    req: &RequestHeader,
    client: Option<IpAddr>,
    tls: bool,
    upstream: &mut RequestHeader,
) -> Result<()> {
    let host = match req.headers.get(header::HOST) {
        Some(h) => Some(h.clone()),
        None => req
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok()),
    };
    if let Some(ip) = client {
        let prev = upstream
            .headers
            .get(&X_FORWARDED_FOR)
            .map(|v| v.as_bytes().trim_ascii())
            .filter(|v| !v.is_empty());
        let mut v = BytesMut::with_capacity(prev.map_or(0, |p| p.len() + 2) + 39);
        if let Some(p) = prev {
            v.put_slice(p);
            v.put_slice(b", ");
        }
        put_ip(&mut v, ip);
        let v = HeaderValue::from_maybe_shared(v.freeze())
            .or_err(InvalidHTTPHeader, "X-Forwarded-For")?;
        upstream.insert_header("X-Forwarded-For", v)?;
    }
    let proto = HeaderValue::from_static(if tls { "https" } else { "http" });
    upstream.insert_header("X-Forwarded-Proto", proto)?;
    if let Some(h) = host {
        if !upstream.headers.contains_key(header::HOST) {
            upstream.insert_header(header::HOST, h.clone())?;
        }
        upstream.insert_header("X-Forwarded-Host", h)?;
    }
    Ok(())
}

/// An address as text: IPv4 by hand (the common case, and `Display` costs ten times as much),
/// IPv6 through `Display`.
fn put_ip(out: &mut BytesMut, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, o) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.put_u8(b'.');
                }
                if o >= 100 {
                    out.put_u8(b'0' + o / 100);
                }
                if o >= 10 {
                    out.put_u8(b'0' + o / 10 % 10);
                }
                out.put_u8(b'0' + o % 10);
            }
        }
        IpAddr::V6(v6) => {
            use std::fmt::Write;
            let mut s = String::with_capacity(39);
            // Writing to a String cannot fail.
            let _ = write!(s, "{v6}");
            out.put_slice(s.as_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", b"/", None).expect("request");
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).expect("header");
        }
        r
    }

    fn get<'a>(r: &'a RequestHeader, name: &str) -> Vec<&'a str> {
        r.headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().expect("ascii"))
            .collect()
    }

    #[test]
    fn ip_text_matches_display() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.20.30.40",
            "192.168.100.255",
            "255.255.255.255",
            "::1",
            "2001:db8::8a2e:370:7334",
            "::ffff:10.0.0.1",
        ] {
            let ip: IpAddr = ip.parse().expect("ip");
            let mut b = BytesMut::new();
            put_ip(&mut b, ip);
            assert_eq!(&b[..], ip.to_string().as_bytes());
        }
    }

    #[test]
    fn sets_forwarded_headers() {
        let req = request(&[("Host", "app.example.com")]);
        let mut up = req.clone();
        forward(&req, "10.1.2.3".parse().ok(), false, &mut up).expect("forward");
        assert_eq!(get(&up, "x-forwarded-for"), ["10.1.2.3"]);
        assert_eq!(get(&up, "x-forwarded-proto"), ["http"]);
        assert_eq!(get(&up, "x-forwarded-host"), ["app.example.com"]);
        assert_eq!(get(&up, "host"), ["app.example.com"]);
        // Case is kept on the wire.
        let mut wire = Vec::new();
        up.header_to_h1_wire(&mut wire);
        let wire = String::from_utf8(wire).expect("utf8");
        assert!(wire.contains("X-Forwarded-For: 10.1.2.3\r\n"), "{wire}");
        assert!(wire.contains("Host: app.example.com\r\n"), "{wire}");
    }

    #[test]
    fn appends_to_an_existing_chain_and_replaces_spoofed_proto() {
        let req = request(&[
            ("Host", "h"),
            ("x-forwarded-for", " 1.1.1.1, 2.2.2.2 "),
            ("X-Forwarded-Proto", "gopher"),
        ]);
        let mut up = req.clone();
        forward(&req, "::1".parse().ok(), true, &mut up).expect("forward");
        assert_eq!(get(&up, "x-forwarded-for"), ["1.1.1.1, 2.2.2.2, ::1"]);
        assert_eq!(get(&up, "x-forwarded-proto"), ["https"]);
    }

    #[test]
    fn blank_chain_is_replaced() {
        let req = request(&[("Host", "h"), ("X-Forwarded-For", "  ")]);
        let mut up = req.clone();
        forward(&req, "10.0.0.9".parse().ok(), false, &mut up).expect("forward");
        assert_eq!(get(&up, "x-forwarded-for"), ["10.0.0.9"]);
    }

    #[test]
    fn http2_authority_becomes_host() {
        let mut req = request(&[]);
        req.set_uri("https://svc.example:8443/x".parse().expect("uri"));
        let mut up = req.clone();
        forward(&req, None, true, &mut up).expect("forward");
        assert_eq!(get(&up, "host"), ["svc.example:8443"]);
        assert_eq!(get(&up, "x-forwarded-host"), ["svc.example:8443"]);
        assert!(get(&up, "x-forwarded-for").is_empty());
    }

    #[test]
    fn event_stream_detection() {
        for (ct, sse) in [
            ("text/event-stream", true),
            ("  Text/Event-Stream; charset=utf-8", true),
            ("text/event", false),
            ("application/json", false),
        ] {
            let mut r = ResponseHeader::build(200, None).expect("resp");
            r.insert_header("Content-Type", ct).expect("ct");
            assert_eq!(is_event_stream(&r), sse, "{ct}");
        }
        let r = ResponseHeader::build(200, None).expect("resp");
        assert!(!is_event_stream(&r));
    }
}
