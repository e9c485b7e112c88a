//! What a drain is about: a whole pool (by name, so its removed-but-busy backends count too)
//! or one backend.

use std::sync::Arc;

use super::{backend::BackendState, registry::Registry};

/// What is drained.
#[derive(Clone, Debug)]
pub enum Target {
    Pool(Arc<str>),
    Backend(Arc<BackendState>),
}

impl Target {
    /// Backends whose work counts for this drain (removed-but-busy ones included).
    pub fn backends(&self, registry: &Registry) -> Vec<Arc<BackendState>> {
        match self {
            Target::Pool(p) => registry
                .all()
                .into_iter()
                .filter(|b| b.pool.name == *p)
                .collect(),
            Target::Backend(b) => vec![b.clone()],
        }
    }

    /// `pool` or `pool/backend`, for logs.
    pub fn name(&self) -> String {
        match self {
            Target::Pool(p) => p.to_string(),
            Target::Backend(b) => b.id.to_string(),
        }
    }
}
