//! `http:` (request hygiene and request ids), `access_log:` and `trace:`.

use super::invalid;
use crate::config::{error::ConfigError, file::*, spec::*};

/// Headers that carry credentials: never logged, even when listed.
const SECRET_HEADERS: [&str; 4] = [
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
];

/// Validate `access_log:`.
pub fn build_access_log(
    f: &FileAccessLog,
    warnings: &mut Vec<String>,
) -> Result<AccessLogSpec, ConfigError> {
    let dest = match f.path.as_str() {
        "stdout" | "-" => LogDest::Stdout,
        "stderr" => LogDest::Stderr,
        "" => return Err(invalid("access_log.path", "stdout, stderr or a file path")),
        p => {
            let path = std::path::PathBuf::from(p);
            if !path.is_absolute() {
                return Err(invalid(
                    "access_log.path",
                    "a file must be an absolute path (or stdout, stderr)",
                ));
            }
            if !path.parent().is_some_and(|d| d.is_dir()) {
                return Err(invalid(
                    "access_log.path",
                    format!("the directory of {p:?} does not exist"),
                ));
            }
            LogDest::File(path)
        }
    };
    let format = match f.format.as_str() {
        "json" => LogFormat::Json,
        "logfmt" => LogFormat::Logfmt,
        "combined" => LogFormat::Combined,
        other => {
            return Err(invalid(
                "access_log.format",
                format!("unknown format {other:?}: json, logfmt or combined"),
            ))
        }
    };
    let exclude = f
        .exclude_paths
        .iter()
        .enumerate()
        .map(|(i, p)| path_match(&format!("access_log.exclude_paths[{i}]"), p))
        .collect::<Result<_, _>>()?;
    Ok(AccessLogSpec {
        enabled: f.enabled,
        dest,
        format,
        sample: ratio("access_log.sample", f.sample)?,
        exclude,
        query: f.query,
        request_headers: headers("access_log.request_headers", &f.request_headers, warnings)?,
        response_headers: headers("access_log.response_headers", &f.response_headers, warnings)?,
    })
}

/// Validate `trace:`.
pub fn build_trace(f: &FileTrace) -> Result<TraceSpec, ConfigError> {
    Ok(TraceSpec {
        start: f.start,
        sample: ratio("trace.sample", f.sample)?,
    })
}

/// Validate `http:`.
pub fn build_http(h: &FileHttp) -> Result<HttpSettings, ConfigError> {
    if !(1024..=1024 * 1024).contains(&h.max_request_header_bytes) {
        return Err(ConfigError::OutOfRange {
            path: "http.max_request_header_bytes".into(),
            value: h.max_request_header_bytes.min(i64::MAX as u64) as i64,
            min: 1024,
            max: 1024 * 1024,
        });
    }
    Ok(HttpSettings {
        // In range checked above.
        max_request_header_bytes: h.max_request_header_bytes as usize,
        underscores_in_headers: h.underscores_in_headers,
        allow_trace: h.allow_trace,
        request_id: build_request_id(&h.request_id)?,
    })
}

/// Validate `http.request_id`.
fn build_request_id(mode: &str) -> Result<RequestIdMode, ConfigError> {
    match mode {
        "trust" => Ok(RequestIdMode::Trust),
        "replace" => Ok(RequestIdMode::Replace),
        other => Err(invalid(
            "http.request_id",
            format!("unknown mode {other:?}: trust or replace"),
        )),
    }
}

fn ratio(path: &str, v: f64) -> Result<f64, ConfigError> {
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(invalid(path, format!("{v} is not a ratio from 0.0 to 1.0")))
    }
}

fn path_match(path: &str, p: &str) -> Result<PathMatch, ConfigError> {
    if !p.starts_with('/') {
        return Err(invalid(path, format!("{p:?} must start with /")));
    }
    Ok(match p.strip_suffix('*') {
        Some(prefix) => PathMatch {
            path: prefix.to_string(),
            prefix: true,
        },
        None => PathMatch {
            path: p.to_string(),
            prefix: false,
        },
    })
}

/// Header names, lowercased and deduplicated; credential headers left out with a warning.
fn headers(
    path: &str,
    names: &[String],
    warnings: &mut Vec<String>,
) -> Result<Vec<http::HeaderName>, ConfigError> {
    let mut out: Vec<http::HeaderName> = Vec::new();
    for (i, n) in names.iter().enumerate() {
        let name = http::HeaderName::from_bytes(n.trim().as_bytes())
            .map_err(|_| invalid(format!("{path}[{i}]"), format!("invalid header name {n:?}")))?;
        if SECRET_HEADERS.contains(&name.as_str()) {
            warnings.push(format!(
                "{path}[{i}]: {n} carries credentials and is never logged"
            ));
            continue;
        }
        if !out.contains(&name) {
            out.push(name);
        }
    }
    Ok(out)
}
