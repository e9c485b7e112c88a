//! Client verbs: talk to one or more tidegate admin APIs (`--admin URL`, repeatable: a fleet).
//!
//! `status`, `drain`, `undrain`, `shift`, `reload`, `maintenance` live in their own files; this
//! file holds the HTTP client and the fleet helpers. Errors are one clear line and exit 2.

mod drain;
mod shift;
mod verbs;

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::TokioExecutor,
};
use serde_json::Value;

pub use drain::{drain, undrain, DrainArgs};
pub use shift::{shift, ShiftArgs};
pub use verbs::{maintenance, reload, status};

/// Exit codes of client verbs.
pub mod exit {
    /// Success (for `drain --wait`: drained).
    pub const OK: u8 = 0;
    /// `drain --wait` timed out; `shift` rolled back; `reload` refused the file.
    pub const NOT_DONE: u8 = 1;
    /// Could not do it: admin unreachable, 401, unknown pool, bad arguments.
    pub const ERROR: u8 = 2;
}

/// A client-side failure, printed as one line.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{admin}: cannot reach the admin API: {reason}")]
    Unreachable { admin: String, reason: String },
    #[error("{admin}: unauthorized: set TIDEGATE_ADMIN_TOKEN or --token-file")]
    Unauthorized { admin: String },
    #[error("{admin}: {status}: {message}")]
    Api {
        admin: String,
        status: u16,
        message: String,
    },
    #[error("{0}")]
    Usage(String),
}

/// One admin API endpoint with its token.
#[derive(Clone)]
pub struct Admin {
    pub base: String,
    token: Option<String>,
    http: Client<HttpConnector, Full<Bytes>>,
}

impl Admin {
    /// `base` like `http://127.0.0.1:9901` (a bare `host:port` gets `http://`).
    pub fn new(base: &str, token: Option<String>) -> Self {
        let base = base.trim_end_matches('/');
        let base = if base.contains("://") {
            base.to_string()
        } else {
            format!("http://{base}")
        };
        Self {
            base,
            token,
            http: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// A request; answers (status, JSON body). 401 and transport errors are `Err`.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        timeout: Duration,
    ) -> Result<(u16, Value), ClientError> {
        let mut b = http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            b = b.header("authorization", format!("Bearer {t}"));
        }
        let payload = body.map(|v| v.to_string()).unwrap_or_default();
        if body.is_some() {
            b = b.header("content-type", "application/json");
        }
        let req = b
            .body(Full::new(Bytes::from(payload)))
            .map_err(|e| ClientError::Usage(format!("bad request: {e}")))?;
        let unreachable = |reason: String| ClientError::Unreachable {
            admin: self.base.clone(),
            reason,
        };
        let fut = async {
            let resp = self
                .http
                .request(req)
                .await
                .map_err(|e| unreachable(error_chain(&e)))?;
            let status = resp.status().as_u16();
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| unreachable(e.to_string()))?
                .to_bytes();
            Ok::<_, ClientError>((status, bytes))
        };
        let (status, bytes) = tokio::time::timeout(timeout, fut)
            .await
            .map_err(|_| unreachable(format!("no answer within {timeout:?}")))??;
        if status == 401 {
            return Err(ClientError::Unauthorized {
                admin: self.base.clone(),
            });
        }
        let v = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        Ok((status, v))
    }

    /// A call whose non-2xx answer is an error with the API's message.
    pub async fn ok(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, ClientError> {
        let (status, v) = self
            .call(method, path, body, Duration::from_secs(30))
            .await?;
        if status >= 300 {
            return Err(self.api_error(status, &v));
        }
        Ok(v)
    }

    /// The API error of a non-2xx answer.
    pub fn api_error(&self, status: u16, v: &Value) -> ClientError {
        let message = v["message"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| v.to_string());
        ClientError::Api {
            admin: self.base.clone(),
            status,
            message,
        }
    }

    /// Raw text of a GET (for `/metrics`).
    pub async fn text(&self, path: &str) -> Result<String, ClientError> {
        let (status, v) = self
            .call("GET", path, None, Duration::from_secs(30))
            .await?;
        match v {
            Value::String(s) if status < 300 => Ok(s),
            other if status < 300 => Ok(other.to_string()),
            other => Err(self.api_error(status, &other)),
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

/// The fleet from `--admin` flags (default the local admin) and the token.
pub fn fleet(
    admins: &[String],
    token_file: Option<&std::path::Path>,
) -> Result<Vec<Admin>, ClientError> {
    let token = match token_file {
        Some(p) => Some(
            std::fs::read_to_string(p)
                .map_err(|e| ClientError::Usage(format!("--token-file {}: {e}", p.display())))?
                .trim()
                .to_string(),
        ),
        None => std::env::var("TIDEGATE_ADMIN_TOKEN")
            .ok()
            .filter(|t| !t.trim().is_empty()),
    };
    let list = if admins.is_empty() {
        vec!["http://127.0.0.1:9901".to_string()]
    } else {
        admins.to_vec()
    };
    Ok(list.iter().map(|a| Admin::new(a, token.clone())).collect())
}

/// Percent-encode a path segment (backend names hold `:`).
pub fn seg(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
