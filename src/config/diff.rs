//! What changed between two specs, by name: routes and pools added, removed or changed, and
//! the settings a reload cannot apply (they need a restart or a graceful upgrade).

use serde::{Deserialize, Serialize};

use super::spec::Spec;

/// A typed diff of two specs (old → new).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Diff {
    pub routes_added: Vec<String>,
    pub routes_removed: Vec<String>,
    pub routes_changed: Vec<String>,
    pub pools_added: Vec<String>,
    pub pools_removed: Vec<String>,
    pub pools_changed: Vec<String>,
    /// Keys read at start only.
    pub needs_restart: Vec<RestartKey>,
}

/// A setting read at start only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub enum RestartKey {
    #[serde(rename = "listeners")]
    Listeners,
    #[serde(rename = "admin.address")]
    AdminAddress,
    #[serde(rename = "server")]
    Server,
    #[serde(rename = "config_watch")]
    ConfigWatch,
    #[serde(rename = "spool_store")]
    SpoolStore,
    #[serde(rename = "control_store")]
    ControlStore,
}

impl RestartKey {
    /// The key as written in the file.
    pub fn as_str(self) -> &'static str {
        match self {
            RestartKey::Listeners => "listeners",
            RestartKey::AdminAddress => "admin.address",
            RestartKey::Server => "server",
            RestartKey::ConfigWatch => "config_watch",
            RestartKey::SpoolStore => "spool_store",
            RestartKey::ControlStore => "control_store",
        }
    }
}

impl Diff {
    /// Compare `old` with `new`.
    pub fn between(old: &Spec, new: &Spec) -> Diff {
        let mut d = Diff::default();
        for r in &new.routes {
            match old.routes.iter().find(|o| o.name == r.name) {
                None => d.routes_added.push(r.name.to_string()),
                Some(o) if o != r => d.routes_changed.push(r.name.to_string()),
                _ => {}
            }
        }
        for o in &old.routes {
            if !new.routes.iter().any(|r| r.name == o.name) {
                d.routes_removed.push(o.name.to_string());
            }
        }
        for (n, p) in &new.pools {
            match old.pools.get(n) {
                None => d.pools_added.push(n.to_string()),
                Some(o) if o != p => d.pools_changed.push(n.to_string()),
                _ => {}
            }
        }
        for n in old.pools.keys() {
            if !new.pools.contains_key(n) {
                d.pools_removed.push(n.to_string());
            }
        }
        if old.listeners != new.listeners {
            d.needs_restart.push(RestartKey::Listeners);
        }
        if old.admin.addr != new.admin.addr {
            d.needs_restart.push(RestartKey::AdminAddress);
        }
        if old.server != new.server {
            d.needs_restart.push(RestartKey::Server);
        }
        if old.config_watch != new.config_watch {
            d.needs_restart.push(RestartKey::ConfigWatch);
        }
        if old.spool_store != new.spool_store {
            d.needs_restart.push(RestartKey::SpoolStore);
        }
        if old.control_store != new.control_store {
            d.needs_restart.push(RestartKey::ControlStore);
        }
        d
    }

    /// Whether routing changed at all (routes or pools).
    pub fn routing_changed(&self) -> bool {
        !(self.routes_added.is_empty()
            && self.routes_removed.is_empty()
            && self.routes_changed.is_empty()
            && self.pools_added.is_empty()
            && self.pools_removed.is_empty()
            && self.pools_changed.is_empty())
    }
}
