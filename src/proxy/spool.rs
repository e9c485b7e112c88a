//! Spooling a request: the body is read (at most `max_body`), stored durably through the
//! spool's writer, and the client gets `202 Accepted` with the item's id, or the reason it
//! was not stored: 413 (too large), 503 + `Retry-After` (store full, or unavailable). Never
//! a 202 for an item that is not committed.

use bytes::{Bytes, BytesMut};
use http::header;
use pingora::{
    http::{RequestHeader, ResponseHeader},
    prelude::*,
    proxy::{FailToProxy, Session},
};

use super::{errors, headers::forward_headers, Ctx, Proxy};
use crate::{
    config::spec::SpoolSpec,
    services::spool::{now_ms, store::NewItem, SpoolError, ID_HEADER},
    state::table::Route,
};

/// Hop-by-hop headers (RFC 9110 7.6.1) and framing, not stored: the replay sets its own.
const NOT_STORED: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "expect",
];

/// The route's spool settings if it spools this request's method.
pub(super) fn spools<'a>(route: &'a Route, req: &RequestHeader) -> Option<&'a SpoolSpec> {
    // A gRPC call is never spooled: its client reads a 202 as an error and retries, and the
    // replay would run it a second time.
    route
        .spec
        .spool
        .as_ref()
        .filter(|s| s.spools(&req.method) && !super::grpc::is_grpc(req))
}

impl Proxy {
    /// A request of a spooled route that ended without a backend (every one refused, or
    /// the hold ran out while picking) and never reached one: spooled instead of `code`.
    pub(super) async fn spool_failed(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        code: u16,
    ) -> Option<FailToProxy> {
        if ctx.answered || !matches!(code, 502 | 503) {
            return None;
        }
        let route = ctx.route.clone()?;
        let spec = spools(&route, session.req_header())?;
        // A request that reached a backend may have been processed there: it is spooled
        // (sent again later) only where `retry_sent` would have sent it again at once.
        if ctx.connected && !route.spec.retry_sent.allows(&session.req_header().method) {
            return None;
        }
        // After a connection that died, the body read so far is in pingora's retry buffer
        // (64 KiB); beyond that it is gone and the request cannot be stored whole.
        let prefix = if ctx.connected {
            if session.as_ref().retry_buffer_truncated() {
                return None;
            }
            session.as_ref().get_retry_buffer().unwrap_or_default()
        } else {
            Bytes::new()
        };
        ctx.spooled = true;
        // pingora does not reuse a client connection after a failed proxy attempt (it ignores
        // `can_reuse_downstream` there): say so in the answer.
        session.set_keepalive(None);
        let written = self.spool_body(session, &route, spec, prefix).await;
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        Some(FailToProxy {
            error_code: status,
            // The body was read whole and the answer written: the connection is clean.
            can_reuse_downstream: written.is_ok() && status == 202,
        })
    }

    /// Store the request and answer; always `Ok(true)` once an answer was written.
    pub(super) async fn spool_request(
        &self,
        session: &mut Session,
        route: &Route,
        spec: &SpoolSpec,
    ) -> Result<bool> {
        self.spool_body(session, route, spec, Bytes::new()).await
    }

    /// [`Self::spool_request`] for a request whose first body bytes, `prefix`, were read
    /// already.
    async fn spool_body(
        &self,
        session: &mut Session,
        route: &Route,
        spec: &SpoolSpec,
        prefix: Bytes,
    ) -> Result<bool> {
        let depth = &route.stats.spool;
        if declared_length(session.req_header()).is_some_and(|n| n > spec.max_body) {
            return too_large(session, spec).await;
        }
        if depth.total() >= spec.max_items {
            let msg = "the spool of this request's route is full; retry later";
            tracing::warn!(route = %route.name, max_items = spec.max_items, "spool full; answering 503");
            session.set_keepalive(None);
            errors::respond(session, 503, "spool_full", msg).await?;
            return Ok(true);
        }
        // From here the request counts as queued: one released from a hold meanwhile goes
        // behind it, even while this body is still arriving.
        let writing = depth.begin_write();
        let Some(mut buffered) = self.reserve_body(session, route, prefix.len()).await? else {
            return Ok(true);
        };
        let limit = self.state.table().spec.spool_buffer;
        let body = match read_body(session, prefix, spec.max_body, &mut buffered, limit).await? {
            Body::Whole(b) => b,
            Body::TooLarge => return too_large(session, spec).await,
            Body::NoBudget(held) => {
                tracing::warn!(route = %route.name, bytes = held, spool_buffer = limit, "spool buffer full while the body arrived; answering 503");
                session.set_keepalive(None);
                let msg = format!(
                    "too many request bodies are being spooled at once (spool_buffer: {limit} bytes)"
                );
                errors::respond(session, 503, "spool_busy", &msg).await?;
                return Ok(true);
            }
        };
        let item = new_item(session, route, body)?;
        let written = self.spool.write(item, buffered).await;
        drop(writing);
        match written {
            Ok(id) => accepted(session, &route.name, id).await,
            Err(e) => {
                let kind = match e {
                    SpoolError::Busy => "spool_busy",
                    SpoolError::Unavailable(_) => "spool_unavailable",
                };
                tracing::error!(route = %route.name, error = %e, "request not spooled; answering 503");
                // The store's error text (hosts, SQL) is the log's, not the client's.
                let msg = match e {
                    SpoolError::Busy => "request not stored: the spool is busy; retry later",
                    SpoolError::Unavailable(_) => "request not stored: the spool is unavailable",
                };
                errors::respond(session, 503, kind, msg).await?;
                Ok(true)
            }
        }
    }

    /// Take the body's bytes from the budget every spooled body shares; `None` when they
    /// are not free (a 503 was answered).
    async fn reserve_body(
        &self,
        session: &mut Session,
        route: &Route,
        prefix_len: usize,
    ) -> Result<Option<crate::services::spool::Buffered>> {
        // The body is held in memory until it is stored: take its bytes (the declared
        // length; without one, chunked or HTTP/2, the reservation grows with each chunk
        // read, so slow uploads hold only what they sent) from the budget all spooled
        // bodies share. Held until the write is over.
        let req = session.req_header();
        let want = declared_length(req).unwrap_or(0);
        let limit = self.state.table().spec.spool_buffer;
        let Some(buffered) = self.spool.reserve(want.max(prefix_len as u64), limit) else {
            tracing::warn!(route = %route.name, bytes = want, spool_buffer = limit, "spool buffer full; answering 503");
            session.set_keepalive(None);
            let msg = format!(
                "too many request bodies are being spooled at once (spool_buffer: {limit} bytes)"
            );
            errors::respond(session, 503, "spool_busy", &msg).await?;
            return Ok(None);
        };
        Ok(Some(buffered))
    }
}

/// The stored form of the request: method, target, headers as the backend would get them.
fn new_item(session: &Session, route: &Route, body: Bytes) -> Result<NewItem> {
    Ok(NewItem {
        route: route.name.to_string(),
        method: session.req_header().method.to_string(),
        target: session
            .req_header()
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string(),
        headers: stored_headers(session, route)?,
        body,
        created_ms: now_ms(),
        // Set by the writer from its deadline.
        visible_ms: 0,
    })
}

fn declared_length(req: &RequestHeader) -> Option<u64> {
    req.headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

/// What reading a spooled body gave.
enum Body {
    Whole(Bytes),
    /// Longer than the route's `max_body`.
    TooLarge,
    /// The shared budget could not cover it (bytes read so far).
    NoBudget(u64),
}

/// The whole body, within `max` and within the budget `buffered` holds (grown from the
/// shared `limit` as bytes arrive beyond it: a body without a declared length, as every
/// HTTP/2 body, is budgeted by what it really is).
async fn read_body(
    session: &mut Session,
    prefix: Bytes,
    max: u64,
    buffered: &mut crate::services::spool::Buffered,
    limit: u64,
) -> Result<Body> {
    if prefix.len() as u64 > max {
        return Ok(Body::TooLarge);
    }
    if !buffered.grow_to(prefix.len() as u64, limit) {
        return Ok(Body::NoBudget(prefix.len() as u64));
    }
    let mut buf = BytesMut::from(&prefix[..]);
    while let Some(chunk) = session.read_request_body().await? {
        let total = (buf.len() + chunk.len()) as u64;
        if total > max {
            return Ok(Body::TooLarge);
        }
        if !buffered.grow_to(total, limit) {
            return Ok(Body::NoBudget(total));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(Body::Whole(buf.freeze()))
}

async fn too_large(session: &mut Session, spec: &SpoolSpec) -> Result<bool> {
    // The rest of the body is not read: the connection cannot carry another request.
    session.set_keepalive(None);
    let msg = format!(
        "the body is larger than the spool's max_body ({} bytes)",
        spec.max_body
    );
    errors::respond(session, 413, "body_too_large", &msg).await?;
    Ok(true)
}

/// `name: value\r\n` lines as the backend would get them: X-Forwarded-* added, hop-by-hop
/// headers and those named in `Connection` removed.
fn stored_headers(session: &Session, route: &Route) -> Result<Vec<u8>> {
    let mut up = session.req_header().clone();
    forward_headers(session, &mut up)?;
    super::affinity::strip_forcing(route, &mut up);
    let named: Vec<String> = up
        .headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .collect();
    let mut out = Vec::with_capacity(512);
    for (name, value) in up.headers.iter() {
        let n = name.as_str();
        if NOT_STORED.contains(&n) || named.iter().any(|c| c == n) {
            continue;
        }
        out.extend_from_slice(n.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    Ok(out)
}

/// `202 Accepted` with the id in a header and in the JSON body.
async fn accepted(session: &mut Session, route: &str, id: i64) -> Result<bool> {
    let body = crate::api::SpoolAccepted {
        spooled: true,
        id,
        route: route.to_string(),
        status: 202,
    };
    let mut v = serde_json::to_vec(&body).unwrap_or_default();
    v.push(b'\n');
    let mut resp = ResponseHeader::build(202, Some(5))?;
    resp.insert_header(header::CONTENT_TYPE, "application/json")?;
    resp.insert_header(header::CONTENT_LENGTH, v.len().to_string())?;
    resp.insert_header(header::CACHE_CONTROL, "no-store")?;
    resp.insert_header(ID_HEADER, id.to_string())?;
    errors::put_request_id(&mut resp, errors::request_id(session).as_deref())?;
    session.write_response_header(Box::new(resp), false).await?;
    session
        .write_response_body(Some(Bytes::from(v)), true)
        .await?;
    Ok(true)
}
