//! Certificates in status: what each TLS listener serves, and what tidegate keeps over
//! ACME.

use serde::{Deserialize, Serialize};

/// One certificate tidegate keeps over ACME.
#[derive(Clone, Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AcmeStatus {
    pub listener: String,
    /// Its names, comma-separated.
    pub names: String,
    pub orders_ok: u64,
    pub orders_failed: u64,
    /// The last failed order's error (cleared by a success): the last renewal's result.
    #[serde(default)]
    pub last_error: Option<String>,
    /// The certificate served (none yet: `null`), and when it is due for renewal.
    #[serde(default)]
    pub not_after: Option<i64>,
    #[serde(default)]
    pub renew_at: Option<i64>,
}

/// One certificate a TLS listener serves.
#[derive(Clone, Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CertificateStatus {
    pub listener: String,
    /// DNS names it is served for (the first pair of a listener is also its default).
    pub names: Vec<String>,
    pub issuer: String,
    /// Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
    /// `file` or `acme`.
    pub source: String,
    /// The certificate file (file certificates).
    #[serde(default)]
    pub file: Option<String>,
    /// When the certificate now served was loaded (Unix seconds).
    pub loaded_at: i64,
    /// The last reload that was refused (the certificate above kept serving).
    #[serde(default)]
    pub last_error: Option<String>,
    pub reloads_ok: u64,
    pub reloads_failed: u64,
}
