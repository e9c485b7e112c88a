//! Runtime overrides of the file config: split weights per route, a pool's members, and
//! maintenance mode. (Drains are overrides too; they live in the registry's drain cells.)
//! Overrides survive reloads (re-applied to every new table) and restarts (`state_file`).

use std::{collections::BTreeMap, time::Duration};

use serde::{Deserialize, Serialize};

use crate::{
    api::{BackendEntry, Checkpoint},
    config::spec::BackendSpec,
};

/// Newest DNS answers by backend address as written (`HOST:PORT`).
pub type Addresses = std::collections::HashMap<String, std::net::SocketAddr>;

/// Overrides as saved and applied.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Overrides {
    /// route → pool → weight.
    #[serde(default)]
    pub splits: BTreeMap<String, BTreeMap<String, u32>>,
    #[serde(default)]
    pub maintenance: Option<MaintenanceOverride>,
    /// pool → its members as requested (saved as given; `members` holds them validated).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub backends: BTreeMap<String, Vec<BackendEntry>>,
    /// pool → the validated, resolved form of `backends` (not saved: made again at start).
    #[serde(skip)]
    pub members: BTreeMap<String, Vec<BackendSpec>>,
    /// Newest answers for backend names (the resolver's; not saved).
    #[serde(skip)]
    pub addresses: Addresses,
    /// route → the state before its last deploy (for `tidegate rollback`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub checkpoints: BTreeMap<String, Checkpoint>,
}

/// Maintenance mode as requested through the API.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaintenanceOverride {
    #[serde(default)]
    pub routes: Option<Vec<String>>,
    #[serde(default)]
    pub methods: Option<Vec<String>>,
    pub retry_after_seconds: u64,
    #[serde(default)]
    pub message: Option<String>,
    /// Seconds since the Unix epoch.
    pub since: f64,
}

impl MaintenanceOverride {
    /// The form the proxy matches requests against.
    pub fn bind(&self) -> Maintenance {
        Maintenance {
            routes: self.routes.clone(),
            methods: self.methods.as_ref().map(|ms| {
                ms.iter()
                    .filter_map(|s| http::Method::from_bytes(s.as_bytes()).ok())
                    .collect()
            }),
            retry_after: Duration::from_secs(self.retry_after_seconds),
            message: self
                .message
                .clone()
                .unwrap_or_else(|| "down for maintenance".into()),
        }
    }
}

/// Maintenance mode: matching requests get 503 + `Retry-After` + a JSON body.
#[derive(Clone, Debug)]
pub struct Maintenance {
    /// Route names it applies to; `None` = every route.
    pub routes: Option<Vec<String>>,
    /// Methods it applies to; `None` = every method.
    pub methods: Option<Vec<http::Method>>,
    pub retry_after: Duration,
    pub message: String,
}

impl Maintenance {
    /// Whether a request on `route` with `method` is refused.
    pub fn matches(&self, route: &str, method: &http::Method) -> bool {
        self.routes
            .as_ref()
            .is_none_or(|rs| rs.iter().any(|r| r == route))
            && self.methods.as_ref().is_none_or(|ms| ms.contains(method))
    }
}
