//! Admin listener: a small hand-written HTTP/1.1 API on its own socket.
//!
//! It runs in a pingora background service on a listener bound at startup, so it stays up
//! through shutdown (pingora closes its own listeners at SIGTERM) and a deploy tool can watch
//! the proxy drain. Endpoints:
//!
//! | method | path | auth | what |
//! |---|---|---|---|
//! | GET | `/healthz` | no | liveness: 200 while the process runs |
//! | GET | `/readyz` | no | 200 when listeners are up and not shutting down, else 503 |
//! | GET | `/health` | no | `healthy` / `degraded` / `unhealthy`, uptime, config generation |
//! | GET | `/api/v1/status` | token | generation, routes, splits, pools, backends, in-flight |
//! | POST | `/api/v1/config/reload` | token | re-read the file: 200 + summary, or 422 + error |
//! | POST | `/api/v1/pools/{pool}/drain` | token | start draining: 202 + drain status; 409 if already |
//! | POST | `/api/v1/pools/{pool}/undrain` | token | back to active: 200; 409 if not draining |
//! | GET | `/api/v1/pools/{pool}/drain` | token | drain status: state, in-flight by kind, streams |
//! | GET | `/api/v1/pools/{pool}/drain/wait?timeout=` | token | long-poll until drained or timeout |
//! | … | `/api/v1/pools/{pool}/backends/{backend}/…` | token | the same four for one backend |
//! | POST | `/api/v1/routes/{route}/split` | token | `{"split":{"blue":0,"green":100}}`: override the split |
//! | DELETE | `/api/v1/routes/{route}/split` | token | back to the file's split |
//! | POST | `/api/v1/maintenance` | token | enter: `{routes?, methods?, retry_after?, message?}` |
//! | DELETE | `/api/v1/maintenance` | token | exit |
//!
//! Errors are JSON (`{"error", "message", "status"}`): 401 with `WWW-Authenticate: Bearer`,
//! 404 for unknown paths, 405 with `Allow` for a known path and the wrong method.

mod auth;
mod body;
mod drain;
mod overrides;
mod routes;
mod status;

use std::{convert::Infallible, sync::Arc};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{body::Incoming, server::conn::http1, service::service_fn, Request, Response};
use hyper_util::rt::TokioIo;

use crate::state::AppState;

/// Response type of every admin handler.
pub type AdminResponse = Response<Full<Bytes>>;

/// Serve the admin API on `listener` until the process exits.
pub async fn serve(listener: tokio::net::TcpListener, state: Arc<AppState>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // Usually EMFILE: back off briefly instead of spinning.
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let state = state.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(routes::handle(&state, req).await) }
            });
            if let Err(e) = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), svc)
                .await
            {
                tracing::debug!(peer = %peer, error = %e, "admin connection ended with an error");
            }
        });
    }
}

/// A JSON response with Content-Length.
pub fn json(status: u16, v: &serde_json::Value) -> AdminResponse {
    let body = Bytes::from(format!("{v}\n"));
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::CACHE_CONTROL, "no-store")
        .body(Full::new(body))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

/// A JSON error response.
pub fn error(status: u16, kind: &str, message: &str) -> AdminResponse {
    json(
        status,
        &serde_json::json!({ "error": kind, "message": message, "status": status }),
    )
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

    /// The JSON response.
    pub fn response(&self) -> AdminResponse {
        let mut v = serde_json::json!({ "error": self.kind, "message": self.message, "status": self.status });
        if let Some(f) = self.field {
            v["field"] = serde_json::json!(f);
        }
        json(self.status, &v)
    }
}
