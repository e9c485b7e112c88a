//! Demo pieces: an app backend used by `tidegate backend`, the demo and the integration
//! tests, and `tidegate demo` itself.

pub mod backend;
pub mod run;
