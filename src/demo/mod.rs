//! Demo pieces, part of the binary (not the library): an app backend used by
//! `tidegate backend`, the demo and the integration tests (which include `backend.rs` by
//! path), and `tidegate demo` itself.

pub mod backend;
pub mod run;
