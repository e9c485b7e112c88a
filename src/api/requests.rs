//! Request bodies of the admin API's calls that change state: drains, splits, maintenance,
//! pool members. Unknown fields are refused (`deny_unknown_fields`, `additionalProperties:
//! false` in the OpenAPI document).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The schema of a duration in a request body (`"30s"`, `"10m"`, `"1h30m"`, `"0"`), or null.
pub fn duration_schema() -> utoipa::openapi::schema::Object {
    use utoipa::openapi::schema::{ObjectBuilder, SchemaType, Type};
    ObjectBuilder::new()
        .schema_type(SchemaType::from_iter([Type::String, Type::Null]))
        .pattern(Some(
            "^ *(0|([0-9]+ *(nsec|ns|usec|us|msec|ms|seconds|second|sec|s|minutes|minute|min|m\
             |hours|hour|hr|h|days|day|d|weeks|week|w|months|month|M|years|year|y) *)+)$",
        ))
        .description(Some(
            "A duration: `500ms`, `30s`, `10m`, `1h30m`; `0` for none",
        ))
        .build()
}

/// `POST /api/v1/pools/{pool}[/backends/{backend}]/drain`: every field optional (absent =
/// the pool's configured value; `"0"` = wait forever).
#[derive(Clone, Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DrainRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = duration_schema)]
    pub requests_deadline: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = duration_schema)]
    pub streams_deadline: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = duration_schema)]
    pub close_spread: Option<String>,
}

/// `POST /api/v1/routes/{route}/split`: the split now, or a ramp to it with `over` (and
/// `step`, default a tenth of `over`); with `max_error_rate` the server rolls the ramp back
/// when the pools gaining weight fail more than that share of at least `min_requests`
/// requests in a step.
#[derive(Clone, Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SplitRequest {
    /// Weight by pool (0 to 10,000), at least one pool.
    pub split: BTreeMap<String, i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = duration_schema)]
    pub over: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = duration_schema)]
    pub step: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0, maximum = 1)]
    pub max_error_rate: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_requests: Option<u64>,
}

/// `POST /api/v1/maintenance`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MaintenanceRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routes: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub methods: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = duration_schema)]
    pub retry_after: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// One backend of `PUT /api/v1/pools/{pool}/backends` (also how a runtime override is saved).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BackendEntry {
    /// `IP:PORT` or `HOST:PORT`.
    #[schema(min_length = 1)]
    pub address: String,
    /// 1 to 1000 (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 1000)]
    pub weight: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// `PUT /api/v1/pools/{pool}/backends` as an object (a bare array is accepted too).
#[derive(Clone, Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BackendsRequest {
    #[schema(min_items = 1)]
    pub backends: Vec<BackendEntry>,
}

/// The body of `PUT /api/v1/pools/{pool}/backends`: `{"backends": […]}` or the bare array.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum BackendsBody {
    Object(BackendsRequest),
    List(Vec<BackendEntry>),
}

impl BackendsBody {
    /// The members, whichever form they came in.
    pub fn into_entries(self) -> Vec<BackendEntry> {
        match self {
            BackendsBody::Object(o) => o.backends,
            BackendsBody::List(l) => l,
        }
    }
}
