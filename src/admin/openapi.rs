//! The admin API as an OpenAPI 3.1 document (served by [`super::routes::document`]),
//! generated (by utoipa) from the route tables and the body types of [`crate::api`],
//! the ones the server writes and the CLI reads. What every call shares (the token, the
//! guard's 403, the body checks' 413/415, the fleet's 503) is added here, from the same
//! rules the middleware applies.

use http::Method;
use utoipa::{
    openapi::{
        path::{Operation, PathItem},
        security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme},
        ContentBuilder, OpenApi, Ref, RefOr, ResponseBuilder,
    },
    OpenApi as _,
};

use super::fleet;

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "tidegate admin API",
        description = "Drain, weights, members and maintenance of a tidegate proxy. Calls under \
            `/api/` need the bearer token (`admin.token`); every error is an `ErrorBody`.",
    ),
    // The event stream's `data:` payloads (`status`, `history`, `sample` events).
    components(schemas(
        crate::api::ErrorBody,
        crate::api::StatusEvent,
        crate::api::History,
        crate::api::Sample
    )),
    tags(
        (name = "health", description = "Probes and metrics"),
        (name = "status", description = "What the proxy is doing"),
        (name = "drain", description = "Draining pools and backends"),
        (name = "backends", description = "Runtime members of a pool"),
        (name = "routes", description = "Splits, ramps, deploy checkpoints"),
        (name = "nodes", description = "Every backend on one host"),
        (name = "maintenance", description = "Answer 503 instead of proxying"),
        (name = "spool", description = "Requests kept while no backend could take them"),
        (name = "config", description = "The config file"),
    )
)]
struct Doc;

/// The document's frame: title, tags, the event stream's payload schemas.
pub(super) fn frame() -> OpenApi {
    Doc::openapi()
}

/// What every call shares, as the middleware applies it.
pub(super) fn shared(doc: &mut OpenApi) {
    doc.components
        .get_or_insert_with(Default::default)
        .add_security_scheme(
            "token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("`admin.token` (or the file `admin.token_file` names)"))
                    .build(),
            ),
        );
    for (path, item) in doc.paths.paths.iter_mut() {
        for (method, op) in operations(item) {
            shared_op(path, &method, op);
        }
    }
}

fn operations(item: &mut PathItem) -> Vec<(Method, &mut Operation)> {
    [
        (Method::GET, item.get.as_mut()),
        (Method::PUT, item.put.as_mut()),
        (Method::POST, item.post.as_mut()),
        (Method::DELETE, item.delete.as_mut()),
    ]
    .into_iter()
    .filter_map(|(m, op)| op.map(|op| (m, op)))
    .collect()
}

fn shared_op(path: &str, method: &Method, op: &mut Operation) {
    // Unique by construction (utoipa would take the handler's name: `get` twice, and one id
    // for both methods of a POST|PUT handler): `post_api_v1_routes_route_split`.
    let words: Vec<&str> = path
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect();
    op.operation_id = Some(format!(
        "{}_{}",
        method.as_str().to_ascii_lowercase(),
        words.join("_")
    ));
    let token = SecurityRequirement::new("token", Vec::<String>::new());
    if path.starts_with("/api/") {
        op.security = Some(vec![token]);
        error(op, 401, "The token is missing or wrong");
    } else if path == "/metrics" {
        // With `admin.metrics_auth` only.
        op.security = Some(vec![SecurityRequirement::default(), token]);
    }
    // The probes skip the guard (one bit each, read by probes that send any Host).
    if path != "/healthz" && path != "/readyz" {
        error(
            op,
            403,
            "Refused by the guard: a Host that is not this listener's, or a call from another \
             origin's page",
        );
    }
    let api = path.starts_with("/api/");
    let takes_input =
        op.request_body.is_some() || op.parameters.as_ref().is_some_and(|p| !p.is_empty());
    // Every `/api/` call's body is checked (one JSON object, no repeated key), any method.
    if takes_input || api {
        error(op, 400, "Invalid input: the `field` names it");
    }
    if api {
        error(op, 413, "The body is over 64 KiB");
        error(op, 415, "A body that is not `application/json` (or, for a call that changes state, no such `Content-Type` at all)");
    }
    if fleet::changes_shared_state(method, path) {
        error(
            op,
            503,
            "With a `control_store`: the store is unreachable, the shared state not loaded \
             or gone back in time; nothing changed",
        );
    }
}

/// Add an `ErrorBody` answer unless the call documents its own.
fn error(op: &mut Operation, status: u16, description: &str) {
    let code = status.to_string();
    if op.responses.responses.contains_key(&code) {
        return;
    }
    let body = ContentBuilder::new()
        .schema(Some(RefOr::Ref(Ref::from_schema_name("ErrorBody"))))
        .build();
    let r = ResponseBuilder::new()
        .description(description)
        .content("application/json", body)
        .build();
    op.responses.responses.insert(code, RefOr::T(r));
}
