//! `routes[i].affinity` and `routes[i].force_pool` as written.

use serde::Deserialize;

use crate::config::duration::HumanDuration;

/// What keys a request to its pool (and, with `scope: backend`, its backend).
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum FileAffinityKey {
    /// A random key in a cookie tidegate sets on the first response.
    #[default]
    Cookie,
    /// The value of a request header (a user or tenant id set by an edge or the client).
    Header,
    /// The client's address (the peer of the connection).
    ClientIp,
}

/// What the key keeps.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum FileAffinityScope {
    /// The pool: the backend inside it is picked by weight.
    #[default]
    Pool,
    /// The pool and the backend inside it (consistent hashing by backend weight).
    Backend,
}

/// `routes[i].affinity`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileAffinity {
    #[serde(default)]
    pub key: FileAffinityKey,
    /// The cookie's name (`key: cookie`).
    #[serde(default)]
    pub cookie: Option<String>,
    /// The header's name (`key: header`, required then).
    #[serde(default)]
    pub header: Option<String>,
    /// The cookie's lifetime (`Max-Age`).
    #[serde(default)]
    pub max_age: Option<HumanDuration>,
    #[serde(default)]
    pub scope: FileAffinityScope,
}

/// What a forced pool that cannot take the request does.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum FileForceFallback {
    /// The normal pick (split, affinity).
    #[default]
    Split,
    /// 503 `forced_pool_unavailable`.
    Refuse,
}

/// `routes[i].force_pool`: a header or cookie naming an allowed pool pins the request to it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileForcePool {
    #[serde(default)]
    pub header: Option<String>,
    #[serde(default)]
    pub cookie: Option<String>,
    /// The pools that may be forced (each in the route's split, weight 0 allowed).
    pub pools: Vec<String>,
    #[serde(default)]
    pub fallback: FileForceFallback,
    /// A value the header or cookie must carry after the pool's name (`green:VALUE`), read
    /// from an environment variable or a file; without it, the pool is not forced.
    #[serde(default)]
    pub secret_env: Option<String>,
    #[serde(default)]
    pub secret_file: Option<std::path::PathBuf>,
    /// Client addresses (IPs or CIDR blocks) that may force a pool; others get the split.
    #[serde(default)]
    pub clients: Vec<String>,
}
