//! Client verbs: talk to one or more tidegate admin APIs (`--admin URL`, repeatable: a
//! fleet), reading and writing the shared [`crate::api`] types.
//!
//! `status`, `drain`, `undrain`, `shift`, `reload`, `maintenance` live in their own files; this
//! file holds the HTTP client and the fleet helpers. Errors are one clear line and exit 2.

mod args;
mod deploy;
mod drain;
mod fleet;
mod node;
mod shift;
mod spool;
mod verbs;

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::TokioExecutor,
};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde::{de::DeserializeOwned, Serialize};

use crate::api::ErrorBody;
pub use args::{DeployArgs, RampOpts, ShiftArgs};
pub use deploy::{deploy, rollback};
pub use drain::{drain, undrain, DrainArgs, UndrainArgs};
pub use shift::shift;
pub use spool::{spool, SpoolVerb};
pub use verbs::{health, maintenance, reload, status, table};

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

/// Default time limit of one call.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

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

    fn unreachable(&self, reason: String) -> ClientError {
        ClientError::Unreachable {
            admin: self.base.clone(),
            reason,
        }
    }

    /// A request; answers (status, body bytes). 401 and transport errors are `Err`.
    pub async fn raw<B: Serialize>(
        &self,
        method: &str,
        path: &str,
        body: Option<&B>,
        timeout: Duration,
    ) -> Result<(u16, Bytes), ClientError> {
        let mut b = http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            b = b.header("authorization", format!("Bearer {t}"));
        }
        // Every mutation says it is JSON, with or without a body: the admin API refuses
        // the content types a web page could send.
        if method != "GET" && method != "HEAD" {
            b = b.header("content-type", "application/json");
        }
        let payload = match body {
            Some(v) => serde_json::to_vec(v).map_err(|e| ClientError::Usage(e.to_string()))?,
            None => Vec::new(),
        };
        let req = b
            .body(Full::new(Bytes::from(payload)))
            .map_err(|e| ClientError::Usage(format!("bad request: {e}")))?;
        let fut = async {
            let resp = self
                .http
                .request(req)
                .await
                .map_err(|e| self.unreachable(error_chain(&e)))?;
            let status = resp.status().as_u16();
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| self.unreachable(e.to_string()))?
                .to_bytes();
            Ok::<_, ClientError>((status, bytes))
        };
        let (status, bytes) = tokio::time::timeout(timeout, fut)
            .await
            .map_err(|_| self.unreachable(format!("no answer within {timeout:?}")))??;
        if status == 401 {
            return Err(ClientError::Unauthorized {
                admin: self.base.clone(),
            });
        }
        Ok((status, bytes))
    }

    /// A call whose answer is `T` for 2xx and for the statuses in `also`; any other status
    /// is an error with the API's message.
    pub async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&B>,
        also: &[u16],
    ) -> Result<(u16, T), ClientError> {
        let (status, bytes) = self.raw(method, path, body, CALL_TIMEOUT).await?;
        if !(200..300).contains(&status) && !also.contains(&status) {
            return Err(self.api_error(status, &bytes));
        }
        Ok((status, self.decode(status, &bytes)?))
    }

    /// `GET` of a `T`.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        Ok(self.call::<(), T>("GET", path, None, &[]).await?.1)
    }

    /// The body as `T`, or an error that says the answer was not what the API promises.
    pub fn decode<T: DeserializeOwned>(&self, status: u16, bytes: &[u8]) -> Result<T, ClientError> {
        serde_json::from_slice(bytes).map_err(|e| ClientError::Api {
            admin: self.base.clone(),
            status,
            message: format!(
                "unexpected answer ({e}): {}",
                String::from_utf8_lossy(bytes)
            ),
        })
    }

    /// The API error of a non-2xx answer.
    pub fn api_error(&self, status: u16, bytes: &[u8]) -> ClientError {
        let message = match serde_json::from_slice::<ErrorBody>(bytes) {
            Ok(e) => e.message,
            Err(_) => String::from_utf8_lossy(bytes).into_owned(),
        };
        ClientError::Api {
            admin: self.base.clone(),
            status,
            message,
        }
    }

    /// Whether `/readyz` answers 200 within `timeout`.
    pub async fn ready(&self, timeout: Duration) -> bool {
        matches!(
            self.raw::<()>("GET", "/readyz", None, timeout).await,
            Ok((200, _))
        )
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
        let default = std::env::var("TIDEGATE_ADMIN")
            .ok()
            .filter(|a| !a.trim().is_empty())
            .unwrap_or_else(|| "http://127.0.0.1:9901".to_string());
        vec![default]
    } else {
        admins.to_vec()
    };
    Ok(list.iter().map(|a| Admin::new(a, token.clone())).collect())
}

/// Everything but RFC 3986 unreserved characters is escaped in a path segment.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Percent-encode a path segment (backend names hold `:`).
pub fn seg(s: &str) -> String {
    utf8_percent_encode(s, SEGMENT).to_string()
}
