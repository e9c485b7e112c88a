//! Config (pure: no I/O beyond reading the file, no live state): YAML bytes (`parse`) →
//! file structs (`file`) → validation (`build`) → an immutable [`Spec`]; `diff` compares two.
//!
//! `load` is what `tidegate check`, startup and every reload call: read, parse with key paths,
//! validate the whole file, and return the spec or one typed error.

pub mod build;
pub mod diff;
pub mod duration;
pub mod error;
pub mod file;
pub mod inputs;
mod parse;
pub mod spec;
pub mod tls;
pub mod upstream;

use std::path::Path;

pub use error::ConfigError;
pub use inputs::{unix_now, Inputs};
pub use spec::Spec;

/// A validated config plus non-fatal warnings.
#[derive(Debug)]
pub struct Loaded {
    pub spec: Spec,
    pub warnings: Vec<String>,
}

pub use parse::{parse, parse_bytes};

/// Read, parse and validate `path`.
pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
    let bytes = std::fs::read(path).map_err(|source| ConfigError::Read {
        file: path.to_path_buf(),
        source,
    })?;
    load_with(&bytes, &Inputs::system())
}

/// Parse and validate a file's bytes (UTF-8, a byte order mark allowed).
pub fn load_bytes(
    bytes: &[u8],
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Loaded, ConfigError> {
    load_with(bytes, &Inputs::with_env(env))
}

/// Parse and validate a file's bytes, reading the world only through `io`.
pub fn load_with(bytes: &[u8], io: &Inputs) -> Result<Loaded, ConfigError> {
    let file = parse_bytes(bytes)?;
    let mut warnings = Vec::new();
    let spec = build::build(file, io, &mut warnings)?;
    Ok(Loaded { spec, warnings })
}

/// Parse and validate YAML text (tests and benches use this directly).
pub fn load_str(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Loaded, ConfigError> {
    let file = parse(text)?;
    let mut warnings = Vec::new();
    let spec = build::build(file, &Inputs::with_env(env), &mut warnings)?;
    Ok(Loaded { spec, warnings })
}

#[cfg(test)]
mod tests;
