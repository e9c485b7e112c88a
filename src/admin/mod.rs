//! Admin listener: axum on its own socket, with one route table.
//!
//! It runs in a pingora background service on a listener bound at startup, so it stays up
//! through shutdown (pingora closes its own listeners at SIGTERM) and a deploy tool can watch
//! the proxy drain. Bodies are the shared types of [`crate::api`].
//!
//! | method | path | auth | what |
//! |---|---|---|---|
//! | GET | `/healthz` | no | liveness: 200 while the process runs |
//! | GET | `/readyz` | no | 200 when listeners are up and not shutting down, else 503 |
//! | GET | `/health` | no | `healthy` / `degraded` / `unhealthy`, uptime, config generation |
//! | GET | `/metrics` | with `metrics_auth` | Prometheus text |
//! | GET | `/ui` (+ `/ui/app.js`, `/ui/app.css`) | no (the page holds no data) | the live status page |
//! | GET | `/api/v1/openapi.json` | token | this table as an OpenAPI 3.1 document ([`openapi`]) |
//! | GET | `/api/v1/status` | token | generation, routes, splits, pools, backends, in-flight |
//! | GET | `/api/v1/events` | token | the status as server-sent events, on every change, and history |
//! | GET | `/api/v1/history?since=` | token | the last 15 minutes per pool (2 s samples) and marks of changes |
//! | POST | `/api/v1/config/reload` | token | re-read the file: 200 + summary, or 422 + error |
//! | POST | `/api/v1/pools/{pool}/drain` | token | start draining: 202 + drain status; 409 if already |
//! | POST | `/api/v1/pools/{pool}/undrain` | token | back to active: 200; 409 if not draining |
//! | GET | `/api/v1/pools/{pool}/drain` | token | drain status: state, in-flight by kind, streams |
//! | GET | `/api/v1/pools/{pool}/drain/wait?timeout=` | token | long-poll until drained or timeout |
//! | … | `/api/v1/pools/{pool}/backends/{backend}/…` | token | the same four for one backend |
//! | GET, PUT, DELETE | `/api/v1/pools/{pool}/backends` | token | runtime members of a pool |
//! | GET | `/api/v1/routes/{route}/split` | token | the route's split, override and ramp |
//! | POST, PUT | `/api/v1/routes/{route}/split` | token | override the split, or ramp to it |
//! | DELETE | `/api/v1/routes/{route}/split` | token | back to the file's split |
//! | PUT | `/api/v1/routes/{route}/checkpoint` | token | record the state before a deploy |
//! | POST | `/api/v1/routes/{route}/rollback` | token | restore it, undrain the old pools |
//! | POST | `/api/v1/nodes/{host}/drain` | token | drain every backend on the host (`mode`: soft/hard) |
//! | POST | `/api/v1/nodes/{host}/undrain` | token | back to active, every backend on the host |
//! | GET | `/api/v1/nodes/{host}/drain[/wait]` | token | their drain statuses; wait until all drained |
//! | POST, PUT | `/api/v1/maintenance` | token | enter: `{routes?, methods?, retry_after?, message?}` |
//! | DELETE | `/api/v1/maintenance` | token | exit |
//! | GET | `/api/v1/spool?route=&state=&limit=` | token | spooled items (oldest first) and depths |
//! | DELETE | `/api/v1/spool?state=&route=` | token | purge dead (or pending) items |
//! | POST | `/api/v1/spool/retry` | token | `{route?}`: dead items become pending again |
//! | POST | `/api/v1/spool/{id}/retry` | token | one dead item becomes pending again |
//! | DELETE | `/api/v1/spool/{id}` | token | delete one item |
//!
//! Before routing, [`guard`] refuses what a web page of another origin could send (Host not
//! an address of this listener, another `Origin` or `Sec-Fetch-Site`: 403), a call under
//! `/api/` without the token (401, also for unknown paths) and a mutation without
//! `Content-Type: application/json` (415, with or without a body).
//!
//! With a `control_store`, a change to the shared state is refused with 503 while the store
//! is unreachable, and answered only once the store holds it ([`fleet`]); drain answers
//! and the status then speak for the whole fleet.
//!
//! Every mutation, allowed or refused, is one line of the audit trail ([`audit`]).
//!
//! Every error is JSON (`api::ErrorBody`): 401 with `WWW-Authenticate: Bearer`, 403 from the
//! guard, 404 for unknown paths, 405 with `Allow`, 400 for bad input (before any handler
//! changes state), 413 over 64 KiB, 415 for a body or a mutation that is not JSON.

mod audit;
mod auth;
mod backends;
mod body;
mod deploy;
mod drain;
mod edge;
mod events;
mod fleet;
mod guard;
mod node;
mod openapi;
mod overrides;
mod routes;
mod spool;
mod status;
mod ui;
mod view;

use std::sync::Arc;

use axum::{
    extract::{DefaultBodyLimit, FromRef},
    middleware,
    response::{IntoResponse, Response},
    routing::get,
    Json, Router,
};

use crate::{api::ErrorBody, metrics::Metrics, services::spool::Spool, state::AppState};

/// Largest admin request body.
const MAX_BODY: usize = 64 * 1024;

/// Open `GET /api/v1/events` streams, counted by a guard each stream owns.
#[derive(Debug, Default)]
pub struct EventStreams(std::sync::atomic::AtomicU64);

impl EventStreams {
    /// Streams open now.
    pub fn open(&self) -> u64 {
        // Relaxed: a statistic.
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn opened(&self) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    fn close(&self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// What the handlers share.
#[derive(Clone)]
pub struct Ctx {
    pub state: Arc<AppState>,
    pub metrics: Arc<Metrics>,
    pub spool: Arc<Spool>,
    pub events: Arc<EventStreams>,
}

impl Ctx {
    /// The handlers' shared state.
    pub fn new(state: Arc<AppState>, metrics: Arc<Metrics>, spool: Arc<Spool>) -> Ctx {
        Ctx {
            state,
            metrics,
            spool,
            events: Arc::default(),
        }
    }
}

impl FromRef<Ctx> for Arc<EventStreams> {
    fn from_ref(c: &Ctx) -> Self {
        c.events.clone()
    }
}

impl FromRef<Ctx> for Arc<Spool> {
    fn from_ref(c: &Ctx) -> Self {
        c.spool.clone()
    }
}

impl FromRef<Ctx> for Arc<AppState> {
    fn from_ref(c: &Ctx) -> Self {
        c.state.clone()
    }
}

impl FromRef<Ctx> for Arc<Metrics> {
    fn from_ref(c: &Ctx) -> Self {
        c.metrics.clone()
    }
}

/// The admin API's router: the documented tables of [`routes`] (also the OpenAPI document's
/// source), the status page, and the layers every call passes.
pub fn router(ctx: Ctx) -> Router {
    let state = ctx.state.clone();
    let (probes, _) = routes::probes().split_for_parts();
    let gate = state.clone();
    // Innermost first: the body is read and checked before the gate, whose lock is then
    // never held while a client sends slowly; a mutation must be JSON before either.
    let checks = move |handlers: axum::routing::MethodRouter<Ctx>| {
        handlers
            .route_layer(middleware::from_fn_with_state(gate.clone(), fleet::gate))
            .route_layer(middleware::from_fn(body::check_layer))
            .route_layer(middleware::from_fn(guard::json_only))
    };
    let (api, _) = routes::api(&checks).split_for_parts();
    let api = api.fallback(edge::not_found);
    Router::new()
        .merge(probes)
        .route("/ui", get(ui::page))
        .route("/ui/", get(ui::page))
        .route("/ui/app.js", get(ui::script))
        .route("/ui/app.css", get(ui::style))
        .merge(api)
        .fallback(edge::not_found)
        .layer(middleware::from_fn_with_state(state, guard::check))
        .layer(middleware::map_response(edge::json_errors))
        .layer(middleware::from_fn(audit::record))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(ctx)
}

/// Serve the admin API on `listener` until the process exits.
pub async fn serve(listener: tokio::net::TcpListener, ctx: Ctx) {
    let app = router(ctx).into_make_service_with_connect_info::<std::net::SocketAddr>();
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "admin listener stopped");
    }
}

/// A JSON API error, turned into a response at the edge.
#[derive(Debug)]
pub struct ApiError {
    pub status: u16,
    pub kind: &'static str,
    pub message: String,
    /// The offending request field, for 400s.
    pub field: Option<&'static str>,
}

impl ApiError {
    /// An error without a field.
    pub fn new(status: u16, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            kind,
            message: message.into(),
            field: None,
        }
    }

    /// A 400 about one field.
    pub fn field(field: &'static str, message: &str) -> Self {
        Self {
            status: 400,
            kind: "bad_request",
            message: format!("{field}: {message}"),
            field: Some(field),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.kind.to_string(),
            message: self.message,
            status: self.status,
            field: self.field.map(str::to_string),
            request_id: None,
        };
        let mut r = json(self.status, &body);
        r.extensions_mut().insert(audit::Refusal {
            kind: self.kind,
            message: body.message,
        });
        r
    }
}

/// A JSON response with `Cache-Control: no-store`.
pub fn json<T: serde::Serialize>(status: u16, body: &T) -> Response {
    let code =
        http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    let mut r = (code, Json(body)).into_response();
    r.headers_mut().insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    r
}

/// `cargo fuzz`: an admin body, parsed as every mutating endpoint parses its own.
#[doc(hidden)]
pub fn fuzz_body(data: &[u8]) {
    let b = axum::body::Bytes::copy_from_slice(data);
    let _ = body::parse::<crate::api::DrainRequest>(&b);
    let _ = body::parse::<crate::api::SplitRequest>(&b);
    let _ = body::parse::<crate::api::MaintenanceRequest>(&b);
    if let Ok(r) = body::parse::<crate::api::BackendsRequest>(&b) {
        let _ = crate::config::build::runtime_backends("p", &r.backends);
    }
    let _ = body::parse::<crate::api::NodeDrainRequest>(&b);
    let _ = body::parse::<crate::api::SpoolRetryRequest>(&b);
}
