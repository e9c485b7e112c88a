//! Config: YAML file structs (`file`) → validation (`build`) → immutable `RuntimeConfig`.
//!
//! `load` is what `tidegate check`, startup and every reload call: read, parse with key paths,
//! validate the whole file, and return the runtime config or one typed error.

pub mod build;
pub mod duration;
pub mod error;
pub mod file;
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

/// Parse YAML text into file structs, with the key path (and line) of any error.
pub fn parse(text: &str) -> Result<file::FileConfig, ConfigError> {
    // Syntax first, so a broken document is reported as such rather than as a schema error
    // at whatever key the parser had reached.
    if let Err(e) = serde_yaml::from_str::<serde_yaml::Value>(text) {
        let loc = e.location();
        let mut message = e.to_string();
        if let Some(i) = message.find(" at line ") {
            message.truncate(i);
        }
        return Err(ConfigError::Syntax {
            line: loc.as_ref().map(|l| l.line()),
            column: loc.as_ref().map(|l| l.column()),
            message,
        });
    }
    let de = serde_yaml::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let (line, column) = match inner.location() {
            Some(l) => (Some(l.line()), Some(l.column())),
            None => (None, None),
        };
        let mut message = inner.to_string();
        // serde_yaml appends " at line X column Y"; we print the location our own way.
        if let Some(i) = message.find(" at line ") {
            message.truncate(i);
        }
        let path = if path.is_empty() || path == "." {
            "(top level)".into()
        } else {
            path
        };
        ConfigError::Schema {
            path,
            line,
            column,
            message,
        }
    })
}

/// Read, parse and validate `path`. Backend states come from `registry` (shared across reloads).
pub fn load(path: &Path, registry: &Registry) -> Result<Loaded, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        file: path.to_path_buf(),
        source,
    })?;
    load_str(&text, registry, &|k| std::env::var(k).ok())
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
