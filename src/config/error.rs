//! Config errors: one typed variant per rule, each naming the key path (and line when known).

use std::path::PathBuf;

/// Why a config file was refused. `Display` is one line, fit for `tidegate check` and logs.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("YAML syntax error{}: {message}", at_line(*line, *column))]
    Syntax {
        line: Option<usize>,
        column: Option<usize>,
        message: String,
    },
    #[error("not a text file{}: {message}", at_line(Some(*line), Some(*column)))]
    Encoding {
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{path}: duplicate key {key:?}{}{}", first_line.map(|l| format!(" (first at line {l})")).unwrap_or_default(), at_line(*line, *column))]
    DuplicateKey {
        path: String,
        key: String,
        first_line: Option<usize>,
        line: Option<usize>,
        column: Option<usize>,
    },
    #[error("{path}: {message}{}", at_line(*line, *column))]
    Schema {
        path: String,
        line: Option<usize>,
        column: Option<usize>,
        message: String,
    },
    #[error("{path}: unknown pool {pool:?} (defined pools: {known})")]
    UnknownPool {
        path: String,
        pool: String,
        known: String,
    },
    #[error("{path}: {value} is out of range ({min}..={max})")]
    OutOfRange {
        path: String,
        value: i64,
        min: i64,
        max: i64,
    },
    #[error("{path}: bad address {value:?}: {reason}")]
    BadAddress {
        path: String,
        value: String,
        reason: String,
    },
    #[error("{path}: duplicate {what} {name:?}{}", first.as_ref().map(|f| format!(" (first at {f})")).unwrap_or_default())]
    Duplicate {
        path: String,
        what: &'static str,
        name: String,
        first: Option<String>,
    },
    #[error("{path}: {what}")]
    Empty { path: String, what: &'static str },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
    #[error("{path}: {message}")]
    Tls { path: String, message: String },
    #[error("{path}: {message}")]
    Security { path: String, message: String },
}

fn at_line(line: Option<usize>, column: Option<usize>) -> String {
    match (line, column) {
        (Some(l), Some(c)) => format!(" (line {l}, column {c})"),
        (Some(l), None) => format!(" (line {l})"),
        _ => String::new(),
    }
}

impl ConfigError {
    /// The key path the error is about, when it has one.
    pub fn path(&self) -> Option<&str> {
        match self {
            ConfigError::Read { .. }
            | ConfigError::Syntax { .. }
            | ConfigError::Encoding { .. } => None,
            ConfigError::Schema { path, .. }
            | ConfigError::DuplicateKey { path, .. }
            | ConfigError::UnknownPool { path, .. }
            | ConfigError::OutOfRange { path, .. }
            | ConfigError::BadAddress { path, .. }
            | ConfigError::Duplicate { path, .. }
            | ConfigError::Empty { path, .. }
            | ConfigError::Invalid { path, .. }
            | ConfigError::Tls { path, .. }
            | ConfigError::Security { path, .. } => Some(path),
        }
    }

    /// Short machine-readable kind, for JSON replies and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            ConfigError::Read { .. } => "read",
            ConfigError::Syntax { .. } => "syntax",
            ConfigError::Encoding { .. } => "encoding",
            ConfigError::DuplicateKey { .. } => "duplicate",
            ConfigError::Schema { .. } => "schema",
            ConfigError::UnknownPool { .. } => "unknown_pool",
            ConfigError::OutOfRange { .. } => "out_of_range",
            ConfigError::BadAddress { .. } => "bad_address",
            ConfigError::Duplicate { .. } => "duplicate",
            ConfigError::Empty { .. } => "empty",
            ConfigError::Invalid { .. } => "invalid",
            ConfigError::Tls { .. } => "tls",
            ConfigError::Security { .. } => "security",
        }
    }
}
