//! Demo pieces: an app backend used by `tidegate backend`, the demo and the integration tests.

pub mod backend;
