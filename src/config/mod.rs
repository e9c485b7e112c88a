//! Config: YAML file structs (`file`) → validation (`build`) → immutable `RuntimeConfig`.
//!
//! `load` is what `tidegate check`, startup and every reload call: read, parse with key paths,
//! validate the whole file, and return the runtime config or one typed error.

pub mod build;
pub mod duration;
pub mod error;
pub mod file;
mod parse;
pub mod runtime;

use std::path::Path;

pub use error::ConfigError;
pub use runtime::RuntimeConfig;

use crate::state::backend::Registry;

/// A successfully built config plus non-fatal warnings.
#[derive(Debug)]
pub struct Loaded {
    pub config: RuntimeConfig,
    pub warnings: Vec<String>,
}

pub use parse::{parse, parse_bytes};

/// Read, parse and validate `path`. Backend states come from `registry` (shared across reloads).
pub fn load(path: &Path, registry: &Registry) -> Result<Loaded, ConfigError> {
    let bytes = std::fs::read(path).map_err(|source| ConfigError::Read {
        file: path.to_path_buf(),
        source,
    })?;
    load_bytes(&bytes, registry, &|k| std::env::var(k).ok())
}

/// Parse and validate a file's bytes (UTF-8, a byte order mark allowed).
pub fn load_bytes(
    bytes: &[u8],
    registry: &Registry,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Loaded, ConfigError> {
    let file = parse_bytes(bytes)?;
    let mut warnings = Vec::new();
    let config = build::build(file, registry, env, &mut warnings)?;
    Ok(Loaded { config, warnings })
}

/// Parse and validate YAML text (tests and benches use this directly).
pub fn load_str(
    text: &str,
    registry: &Registry,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Loaded, ConfigError> {
    let file = parse(text)?;
    let mut warnings = Vec::new();
    let config = build::build(file, registry, env, &mut warnings)?;
    Ok(Loaded { config, warnings })
}

#[cfg(test)]
mod tests;
