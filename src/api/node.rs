//! Node maintenance: a node's drain request.

use serde::{Deserialize, Serialize};

/// `POST /api/v1/nodes/{host}/drain`: deadlines as for one backend, and `mode`: `soft`
/// (those deadlines, else each pool's) or `hard` (deadlines now).
#[derive(Clone, Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeDrainRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = super::requests::duration_schema)]
    pub requests_deadline: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = super::requests::duration_schema)]
    pub streams_deadline: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = super::requests::duration_schema)]
    pub close_spread: Option<String>,
    #[serde(default)]
    pub mode: NodeDrainMode,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum NodeDrainMode {
    #[default]
    Soft,
    Hard,
}
