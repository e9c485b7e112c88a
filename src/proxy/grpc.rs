//! gRPC through tidegate: recognising a call, and answering one in gRPC's own terms. A gRPC
//! client reads a status from `grpc-status` / `grpc-message`, not from the HTTP status, so
//! tidegate's own answers (no backend, maintenance, hold timeout, 502, ended at a deadline)
//! are HTTP 200 with the status in trailers, the way Envoy answers: "trailers-only" (one
//! HEADERS frame ending the stream) before a response began, trailers after the backend's
//! messages once it did.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use pingora::{
    http::{RequestHeader, ResponseHeader},
    prelude::*,
    protocols::http::ServerSession,
    proxy::Session,
};

/// gRPC status codes tidegate answers with.
pub const UNKNOWN: u8 = 2;
pub const INTERNAL: u8 = 13;
pub const UNAVAILABLE: u8 = 14;
pub const UNIMPLEMENTED: u8 = 12;
pub const RESOURCE_EXHAUSTED: u8 = 8;
pub const UNAUTHENTICATED: u8 = 16;
pub const PERMISSION_DENIED: u8 = 7;

/// A gRPC call: `Content-Type: application/grpc`, `application/grpc+proto`, … (gRPC-Web,
/// which carries its trailers in the body over HTTP/1.1, is plain HTTP here).
pub fn is_grpc(req: &RequestHeader) -> bool {
    // gRPC runs over HTTP/2 POSTs only: an HTTP/1.1 request claiming the content type is
    // plain HTTP (its read timeout, deadlines and error bodies stay those of HTTP).
    req.version == http::Version::HTTP_2
        && req.method == http::Method::POST
        && req
            .headers
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| is_grpc_type(v.as_bytes()))
}

fn is_grpc_type(v: &[u8]) -> bool {
    const T: &[u8] = b"application/grpc";
    v.len() >= T.len()
        && v[..T.len()].eq_ignore_ascii_case(T)
        && matches!(v.get(T.len()), None | Some(b'+') | Some(b';'))
}

/// The gRPC status for an HTTP status tidegate would have answered (gRPC's own mapping of
/// HTTP to gRPC statuses, as Envoy applies it).
/// A gRPC call can go only to a pool that speaks HTTP/2 (trailers carry its status); to an
/// `http1` pool it is refused with UNIMPLEMENTED (the access log names the pool).
pub fn check_pool(pool: Option<&crate::state::table::Pool>) -> pingora::Result<()> {
    match pool {
        Some(p) if !p.spec.upstream.is_h2() => Err(pingora::Error::explain(
            pingora::ErrorType::HTTPStatus(501),
            // Client-facing: no pool name (the access log has it).
            "the pool for this call speaks HTTP/1.1; gRPC needs protocol: h2c, h2 or auto",
        )),
        _ => Ok(()),
    }
}

pub fn status_for_http(code: u16) -> u8 {
    match code {
        400 => INTERNAL,
        401 => UNAUTHENTICATED,
        403 => PERMISSION_DENIED,
        // 501: ours, for a gRPC call routed to a pool that speaks HTTP/1.1.
        404 | 501 => UNIMPLEMENTED,
        413 | 431 => RESOURCE_EXHAUSTED,
        429 | 502 | 503 | 504 => UNAVAILABLE,
        _ => UNKNOWN,
    }
}

/// `grpc-message`: percent-encoded outside printable ASCII (the gRPC wire rule).
fn message_value(msg: &str) -> HeaderValue {
    let mut out = String::with_capacity(msg.len());
    for b in msg.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    HeaderValue::from_str(&out).unwrap_or_else(|_| HeaderValue::from_static("tidegate"))
}

fn status_headers(status: u8, msg: &str) -> HeaderMap {
    let mut h = HeaderMap::with_capacity(2);
    h.insert("grpc-status", HeaderValue::from(u16::from(status)));
    h.insert("grpc-message", message_value(msg));
    h
}

/// Answer a call that has no response yet: HTTP 200, trailers-only.
pub async fn respond(
    session: &mut Session,
    status: u8,
    msg: &str,
    request_id: Option<&str>,
    retry_after: Option<u64>,
) -> Result<()> {
    let mut resp = ResponseHeader::build(200, Some(6))?;
    if let Some(id) = request_id {
        resp.insert_header(super::headers::REQUEST_ID.clone(), id)?;
    }
    resp.insert_header(http::header::CONTENT_TYPE, "application/grpc")?;
    resp.insert_header(http::header::CACHE_CONTROL, "no-store")?;
    for (k, v) in status_headers(status, msg) {
        if let Some(k) = k {
            resp.insert_header(k, v)?;
        }
    }
    if let Some(s) = retry_after {
        resp.insert_header(http::header::RETRY_AFTER, s.to_string())?;
    }
    match session.as_downstream_mut() {
        // One HEADERS frame that ends the stream.
        ServerSession::H2(h2) => h2.write_response_header(Box::new(resp), true),
        _ => {
            resp.insert_header(http::header::CONTENT_LENGTH, "0")?;
            session.write_response_header(Box::new(resp), false).await?;
            session.write_response_body(Some(Bytes::new()), true).await
        }
    }
}

/// End a call whose response began (the backend's messages went out): trailers with
/// `status`. Only HTTP/2 carries trailers; an HTTP/1.1 client sees the body end.
pub async fn end(session: &mut Session, status: u8, msg: &str) -> Result<()> {
    match session.as_downstream_mut() {
        ServerSession::H2(h2) => h2.write_trailers(status_headers(status, msg)),
        _ => session.write_response_body(Some(Bytes::new()), true).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_content_types() {
        for yes in [
            "application/grpc",
            "application/grpc+proto",
            "Application/GRPC; charset=x",
        ] {
            assert!(is_grpc_type(yes.as_bytes()), "{yes}");
        }
        for no in [
            "application/grpc-web",
            "application/grpcx",
            "application/json",
            "",
        ] {
            assert!(!is_grpc_type(no.as_bytes()), "{no}");
        }
    }

    #[test]
    fn messages_are_percent_encoded() {
        assert_eq!(message_value("50% off\n").to_str().unwrap(), "50%25 off%0A");
        assert_eq!(message_value("é").to_str().unwrap(), "%C3%A9");
        assert_eq!(status_for_http(503), UNAVAILABLE);
        assert_eq!(status_for_http(404), UNIMPLEMENTED);
    }
}
