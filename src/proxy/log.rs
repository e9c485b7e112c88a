//! The access log line of a request, when it ends: what tidegate did ([`outcome`]) and the
//! record the line is made from. Formatting is cheap and bounded; the line is handed to the
//! queue without waiting (`state::access_log`).

use std::time::SystemTime;

use http::HeaderName;
use pingora::{proxy::Session, ErrorSource, ErrorType};

use super::{
    errors::request_id_str,
    headers::{request_host, REFERER, TRACEPARENT, USER_AGENT},
    Ctx,
};
use crate::{
    access_log::{ids, Outcome, Record},
    config::spec::AccessLogSpec,
    services::spool::ID_HEADER,
    state::{items::EndReason, AppState},
};

/// What tidegate did, from the request's context, its response and its error.
pub(super) fn outcome(ctx: &Ctx, status: Option<u16>, e: Option<&pingora::Error>) -> Outcome {
    if let Some(why) = ctx.backend.as_ref().and_then(|t| t.item().ended()) {
        return match why {
            EndReason::Shutdown => Outcome::Shutdown,
            _ => Outcome::DrainDeadline,
        };
    }
    let downstream = e.is_some_and(|e| e.esource() == &ErrorSource::Downstream);
    if ctx.spooled && !downstream {
        return if status == Some(202) {
            Outcome::Spooled
        } else {
            Outcome::SpoolRefused
        };
    }
    if let Some(o) = ctx.outcome {
        return o;
    }
    let Some(e) = e else {
        // Held: it waited in the queue (not just passed through it, finding a backend at
        // once).
        return if ctx.hold.waited >= std::time::Duration::from_millis(1) {
            Outcome::Held
        } else if ctx.attempts > 1 {
            Outcome::Retried
        } else {
            Outcome::Proxied
        };
    };
    match (e.esource(), e.etype()) {
        // The client was too slow (client_read, websocket_idle).
        (ErrorSource::Downstream, ErrorType::ReadTimedout) => Outcome::Timeout,
        (ErrorSource::Downstream, _) => Outcome::ClientGone,
        (_, ErrorType::ReadTimedout | ErrorType::WriteTimedout | ErrorType::ConnectTimedout) => {
            Outcome::Timeout
        }
        _ => Outcome::UpstreamError,
    }
}

fn protocol(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_11 => "HTTP/1.1",
        http::Version::HTTP_2 => "HTTP/2.0",
        http::Version::HTTP_09 => "HTTP/0.9",
        _ => "HTTP/3.0",
    }
}

/// A short reason for a failed request.
fn error_text(e: &pingora::Error) -> String {
    match (e.etype(), &e.context) {
        (ErrorType::HTTPStatus(_), Some(c)) => c.as_str().to_string(),
        (t, _) => t.as_str().to_string(),
    }
}

/// `http`, `sse`, `websocket`: as classified on the response, else as asked.
fn kind(ctx: &Ctx) -> &'static str {
    match &ctx.backend {
        Some(t) => t.item().kind().as_str(),
        None if ctx.upgrade => "websocket",
        None => "http",
    }
}

/// `access_log.sample` thins out plain successes only.
fn sampled_out(spec: &AccessLogSpec, outcome: Outcome, status: Option<u16>) -> bool {
    outcome.is_plain()
        && status.is_some_and(|s| s < 500)
        && spec.sample < 1.0
        && fastrand::f64() >= spec.sample
}

/// Write the request's line (unless the log is off, the path excluded, or sampled out).
pub(super) fn access(state: &AppState, session: &Session, e: Option<&pingora::Error>, ctx: &Ctx) {
    let cfg = state.table();
    let spec = &cfg.spec.access_log;
    let req = session.req_header();
    if !spec.enabled || spec.excludes(req.uri.path()) {
        return;
    }
    let resp = session.response_written();
    let status = resp.map(|r| r.status.as_u16());
    let outcome = outcome(ctx, status, e);
    if sampled_out(spec, outcome, status) {
        return;
    }
    let error = e.filter(|_| !outcome.is_plain()).map(error_text);
    let header = |name: &HeaderName| req.headers.get(name).and_then(|v| v.to_str().ok());
    let kind = kind(ctx);
    let record = Record {
        time: SystemTime::now(),
        request_id: request_id_str(req),
        trace_id: req
            .headers
            .get(&TRACEPARENT)
            .and_then(|v| ids::trace_id(v.as_bytes())),
        client: session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip()),
        method: req.method.as_str(),
        host: request_host(req),
        path: req.uri.path(),
        query: req.uri.query().filter(|_| spec.query),
        protocol: protocol(req.version),
        status: status.unwrap_or(499),
        bytes_in: session.body_bytes_read() as u64,
        bytes_out: session.body_bytes_sent() as u64,
        duration: ctx.started.elapsed(),
        connect: ctx.connect_time,
        first_byte: ctx.first_byte,
        held: ctx.hold.waited,
        route: ctx.route.as_ref().map(|r| &*r.name),
        pool: ctx.pool.as_ref().map(|p| &*p.name),
        // The last backend tried (a failed connect drops its tracking).
        backend: ctx.last_backend.as_deref(),
        pick: ctx.how.map(|h| h.as_str()),
        kind,
        attempts: ctx.attempts,
        outcome,
        // Only tidegate's own 202 (a backend could send the header too).
        spool_id: resp
            .filter(|_| outcome == Outcome::Spooled)
            .and_then(|r| r.headers.get(ID_HEADER))
            .and_then(|v| v.to_str().ok()?.parse().ok()),
        error: error.as_deref(),
        referer: header(&REFERER),
        user_agent: header(&USER_AGENT),
        request_headers: extra(&spec.request_headers, &req.headers),
        response_headers: resp.map_or_else(Vec::new, |r| extra(&spec.response_headers, &r.headers)),
    };
    state.access_log.write(spec.format, &record);
}

/// The configured headers present in `h`, values cut to 1 KiB.
fn extra<'a>(names: &'a [http::HeaderName], h: &'a http::HeaderMap) -> Vec<(&'a str, &'a str)> {
    names
        .iter()
        .filter_map(|n| {
            let v = h.get(n)?.to_str().ok()?;
            let mut end = v.len().min(1024);
            while !v.is_char_boundary(end) {
                end -= 1;
            }
            Some((n.as_str(), &v[..end]))
        })
        .collect()
}
