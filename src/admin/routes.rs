//! The documented route tables: each handler's `#[utoipa::path]` says its method and path
//! once, and both the router and the OpenAPI document ([`super::openapi`]) are built from
//! these tables, so neither can list a call the other lacks.

use std::sync::OnceLock;

use axum::{
    response::{IntoResponse, Response},
    routing::MethodRouter,
};
use utoipa_axum::{
    router::{OpenApiRouter, UtoipaMethodRouter},
    routes,
};

use super::{backends, deploy, drain, events, node, openapi, overrides, spool, status, Ctx};

/// What the router adds to the handlers of each `/api/` path: layers that run only once a
/// method matched (a method the path lacks stays routing's 405). The document passes none.
pub type Wrap<'a> = &'a dyn Fn(MethodRouter<Ctx>) -> MethodRouter<Ctx>;

/// Probes and metrics: no token (except `/metrics` with `metrics_auth`), no body checks.
pub fn probes() -> OpenApiRouter<Ctx> {
    OpenApiRouter::new()
        .routes(routes!(status::alive))
        .routes(routes!(status::ready))
        .routes(routes!(status::health))
        .routes(routes!(status::metrics))
}

/// `/api/v1/…`: the token (checked before routing), and what `wrap` adds.
// Long: the route table reads as one list, like the endpoint table of `admin`.
pub fn api(wrap: Wrap) -> OpenApiRouter<Ctx> {
    let w = |(schemas, paths, handlers): UtoipaMethodRouter<Ctx>| (schemas, paths, wrap(handlers));
    OpenApiRouter::new()
        .routes(w(routes!(document)))
        .routes(w(routes!(status::status)))
        .routes(w(routes!(events::events)))
        .routes(w(routes!(status::history)))
        .routes(w(routes!(status::reload)))
        .routes(w(routes!(drain::pool_status, drain::pool_drain)))
        .routes(w(routes!(drain::pool_undrain)))
        .routes(w(routes!(drain::pool_wait)))
        .routes(w(routes!(backends::get, backends::put, backends::delete)))
        .routes(w(routes!(drain::backend_status, drain::backend_drain)))
        .routes(w(routes!(drain::backend_undrain)))
        .routes(w(routes!(drain::backend_wait)))
        .routes(w(routes!(
            overrides::split_get,
            overrides::split_set,
            overrides::split_clear
        )))
        .routes(w(routes!(deploy::checkpoint)))
        .routes(w(routes!(deploy::rollback)))
        .routes(w(routes!(node::get, node::drain)))
        .routes(w(routes!(node::undrain)))
        .routes(w(routes!(node::wait)))
        .routes(w(routes!(spool::list, spool::purge)))
        .routes(w(routes!(spool::retry_all)))
        .routes(w(routes!(spool::delete_one)))
        .routes(w(routes!(spool::retry_one)))
        .routes(w(routes!(
            overrides::maintenance_on,
            overrides::maintenance_off
        )))
}

/// The document, built once.
fn json() -> &'static str {
    static DOC: OnceLock<String> = OnceLock::new();
    DOC.get_or_init(|| {
        let mut doc = OpenApiRouter::<Ctx>::with_openapi(openapi::frame())
            .merge(probes())
            .merge(api(&|handlers| handlers))
            .into_openapi();
        openapi::shared(&mut doc);
        // Serializing plain data structures cannot fail.
        serde_json::to_string_pretty(&doc).unwrap_or_default()
    })
}

/// `GET /api/v1/openapi.json`.
#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "status",
    responses((status = 200, description = "This document (OpenAPI 3.1)", content_type = "application/json", body = Object)))]
pub async fn document() -> Response {
    let mut r = ([(http::header::CONTENT_TYPE, "application/json")], json()).into_response();
    r.headers_mut().insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    r
}
