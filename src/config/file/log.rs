//! `access_log:` and `trace:` as written.

use serde::Deserialize;

/// One line per request and per stream, when it ends.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileAccessLog {
    #[serde(default = "default_enabled")]
    pub enabled: bool,
    /// `stdout`, `stderr`, or an absolute file path (reopened on SIGUSR1).
    #[serde(default = "default_access_log_path")]
    pub path: String,
    /// `json`, `logfmt` or `combined` (nginx).
    #[serde(default = "default_access_log_format")]
    pub format: String,
    /// Share of plain successful requests logged (0.0-1.0); errors, holds, retries, spools
    /// and every non-proxied outcome are always logged.
    #[serde(default = "default_sample")]
    pub sample: f64,
    /// Paths never logged: exact, or a prefix when the entry ends with `*`.
    #[serde(default)]
    pub exclude_paths: Vec<String>,
    /// Log the query string (off: queries often carry tokens).
    #[serde(default)]
    pub query: bool,
    /// Request header names to add (Authorization, Proxy-Authorization and Cookie never are).
    #[serde(default)]
    pub request_headers: Vec<String>,
    /// Response header names to add (Set-Cookie never is).
    #[serde(default)]
    pub response_headers: Vec<String>,
}

impl Default for FileAccessLog {
    fn default() -> Self {
        Self {
            enabled: true,
            path: default_access_log_path(),
            format: default_access_log_format(),
            sample: default_sample(),
            exclude_paths: Vec::new(),
            query: false,
            request_headers: Vec::new(),
            response_headers: Vec::new(),
        }
    }
}

fn default_enabled() -> bool {
    true
}

/// Default destination: standard output (what `docker logs` and log collectors read).
pub fn default_access_log_path() -> String {
    "stdout".into()
}

/// Default format: one JSON object per line.
pub fn default_access_log_format() -> String {
    "json".into()
}

fn default_sample() -> f64 {
    1.0
}

/// W3C Trace Context.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileTrace {
    /// Start a trace (a new `traceparent`) for a request that came without a valid one.
    #[serde(default)]
    pub start: bool,
    /// Share of the traces tidegate starts that are flagged sampled (0.0-1.0).
    #[serde(default = "default_sample")]
    pub sample: f64,
}
