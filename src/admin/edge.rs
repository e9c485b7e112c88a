//! The admin API's edges: unknown paths, and every non-JSON error (axum's own 405 with
//! `Allow`, extractor rejections, body limits) turned into the JSON error body.

use axum::{
    body::Body,
    http::{header, Request, StatusCode},
    response::{IntoResponse, Response},
};
use http_body_util::BodyExt;

use super::ApiError;

/// 404 for a path no route matches.
pub async fn not_found(req: Request<Body>) -> Response {
    ApiError::new(
        404,
        "not_found",
        format!("no admin endpoint at {}", req.uri().path()),
    )
    .into_response()
}

/// Errors axum answers by itself carry plain text (or nothing): give them the JSON body every
/// other error has, keeping status and headers (`Allow` on a 405).
pub async fn json_errors(resp: Response) -> Response {
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if status.as_u16() < 400 || is_json {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let text = match body.collect().await {
        Ok(b) => String::from_utf8_lossy(&b.to_bytes()).trim().to_string(),
        Err(_) => String::new(),
    };
    let (kind, message) = match status {
        StatusCode::METHOD_NOT_ALLOWED => {
            let allow = parts
                .headers
                .get(header::ALLOW)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            ("method_not_allowed", format!("allowed: {allow}"))
        }
        StatusCode::PAYLOAD_TOO_LARGE => ("body_too_large", "request body over 64 KiB".into()),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ("unsupported_media_type", text),
        StatusCode::NOT_FOUND => ("not_found", text),
        _ if status.is_client_error() => ("bad_request", text),
        _ => ("internal", text),
    };
    let mut fresh = ApiError::new(status.as_u16(), kind, message).into_response();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.remove(header::CONTENT_TYPE);
    for (k, v) in fresh.headers() {
        parts.headers.insert(k.clone(), v.clone());
    }
    if let Some(r) = fresh.extensions().get::<super::audit::Refusal>() {
        parts.extensions.insert(r.clone());
    }
    let body = std::mem::replace(fresh.body_mut(), Body::empty());
    Response::from_parts(parts, body)
}
