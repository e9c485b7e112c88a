//! Error responses the proxy writes itself: JSON bodies with a status, kind and message.

use bytes::Bytes;
use pingora::{
    http::ResponseHeader,
    prelude::*,
    proxy::Session,
    ErrorSource,
    ErrorType::{self, HTTPStatus},
};

/// The request id hygiene put on the request (every request past it has one).
pub fn request_id(session: &Session) -> Option<String> {
    request_id_str(session.req_header()).map(str::to_string)
}

/// The request's `X-Request-Id`, borrowed.
pub fn request_id_str(req: &pingora::http::RequestHeader) -> Option<&str> {
    req.headers
        .get(&super::headers::REQUEST_ID)
        .and_then(|v| v.to_str().ok())
}

/// `{"error": kind, "message": ..., "status": code, "request_id": ...}`: the admin API's
/// error body, with the request id a user can quote.
pub fn json_error_body(code: u16, kind: &str, message: &str, request_id: Option<&str>) -> Bytes {
    let body = crate::api::ErrorBody {
        error: kind.to_string(),
        message: message.to_string(),
        status: code,
        field: None,
        request_id: request_id.map(str::to_string),
    };
    let mut v = serde_json::to_vec(&body).unwrap_or_default();
    v.push(b'\n');
    Bytes::from(v)
}

/// Write a complete JSON error response (a gRPC status to a gRPC call).
pub async fn respond(session: &mut Session, code: u16, kind: &str, message: &str) -> Result<()> {
    let id = request_id(session);
    if super::grpc::is_grpc(session.req_header()) {
        let status = super::grpc::status_for_http(code);
        let retry = (code == 503).then_some(1);
        return super::grpc::respond(session, status, message, id.as_deref(), retry).await;
    }
    let body = json_error_body(code, kind, message, id.as_deref());
    let mut resp = ResponseHeader::build(code, Some(5))?;
    put_request_id(&mut resp, id.as_deref())?;
    resp.insert_header(http::header::CONTENT_TYPE, "application/json")?;
    resp.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())?;
    resp.insert_header(http::header::CACHE_CONTROL, "no-store")?;
    if code == 503 {
        resp.insert_header(http::header::RETRY_AFTER, "1")?;
    }
    session.write_error_response(resp, body).await
}

/// The status to answer for a proxy error (0 = the client is gone, write nothing).
/// Mirrors pingora's default policy.
pub fn status_for(e: &Error) -> u16 {
    match e.etype() {
        HTTPStatus(code) => *code,
        // Like nginx: a backend that stops answering is a gateway timeout, not a bad gateway.
        ErrorType::ReadTimedout | ErrorType::WriteTimedout
            if e.esource() == &ErrorSource::Upstream =>
        {
            504
        }
        _ => match e.esource() {
            ErrorSource::Upstream => 502,
            ErrorSource::Downstream => match e.etype() {
                ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => 0,
                _ => 400,
            },
            ErrorSource::Internal | ErrorSource::Unset => 500,
        },
    }
}

/// A short kind and a human message for the JSON body.
pub fn describe(e: &Error, code: u16) -> (&'static str, String) {
    let ctx = e.context.as_ref().map(|c| c.as_str().to_string());
    let kind = match code {
        400 => "bad_request",
        404 => "no_route",
        502 => "bad_gateway",
        503 => "no_available_backend",
        504 => "gateway_timeout",
        _ => "proxy_error",
    };
    let msg = match (e.etype(), ctx) {
        (HTTPStatus(_), Some(c)) => c,
        (ErrorType::ConnectRefused | ErrorType::ConnectTimedout | ErrorType::ConnectError, _) => {
            "no backend could be reached".to_string()
        }
        (t, _) => format!("upstream error: {}", t.as_str()),
    };
    (kind, msg)
}

/// 503 for maintenance mode: `Retry-After` and a JSON body that says when to retry.
pub async fn respond_maintenance(
    session: &mut Session,
    m: &crate::state::overrides::Maintenance,
) -> Result<()> {
    let secs = m.retry_after.as_secs();
    let id = request_id(session);
    if super::grpc::is_grpc(session.req_header()) {
        // UNAVAILABLE rather than RESOURCE_EXHAUSTED: maintenance passes, and gRPC clients
        // retry UNAVAILABLE by default.
        let msg = m.message.as_str();
        let (status, id) = (super::grpc::UNAVAILABLE, id.as_deref());
        return super::grpc::respond(session, status, msg, id, Some(secs)).await;
    }
    let v = serde_json::json!({
        "error": "maintenance",
        "message": m.message,
        "retry_after_seconds": secs,
        "status": 503,
        "request_id": id,
    });
    let body = Bytes::from(format!("{v}\n"));
    let mut resp = ResponseHeader::build(503, Some(5))?;
    put_request_id(&mut resp, id.as_deref())?;
    resp.insert_header(http::header::CONTENT_TYPE, "application/json")?;
    resp.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())?;
    resp.insert_header(http::header::CACHE_CONTROL, "no-store")?;
    resp.insert_header(http::header::RETRY_AFTER, secs.to_string())?;
    session.write_error_response(resp, body).await
}

/// `X-Request-Id` on a response tidegate writes itself.
pub fn put_request_id(resp: &mut ResponseHeader, id: Option<&str>) -> Result<()> {
    if let Some(id) = id {
        resp.insert_header(super::headers::REQUEST_ID.clone(), id)?;
    }
    Ok(())
}
