//! What the ACME service is doing, per listener and certificate (its names): orders that
//! succeeded and failed, the last error, when the certificate is due for renewal. Read by
//! status, health and metrics.

use std::{collections::BTreeMap, sync::Mutex};

use crate::config::tls::CertInfo;

/// One managed certificate.
#[derive(Clone, Debug, Default)]
pub struct AcmeEntry {
    pub listener: String,
    /// Names, comma-separated.
    pub names: String,
    pub orders_ok: u64,
    pub orders_failed: u64,
    /// The last failed order's error, cleared by a success.
    pub last_error: Option<String>,
    /// The certificate served, if any: not after, and when it is due for renewal.
    pub not_after: Option<i64>,
    pub renew_at: Option<i64>,
}

#[derive(Debug, Default)]
pub struct AcmeBoard(Mutex<BTreeMap<(String, String), AcmeEntry>>);

impl AcmeBoard {
    fn with(&self, listener: &str, names: &str, f: impl FnOnce(&mut AcmeEntry)) {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let e = m
            .entry((listener.to_string(), names.to_string()))
            .or_insert_with(|| AcmeEntry {
                listener: listener.to_string(),
                names: names.to_string(),
                ..Default::default()
            });
        f(e);
    }

    /// A certificate is wanted and none is served yet.
    pub fn wanted(&self, listener: &str, names: &str) {
        self.with(listener, names, |_| {});
    }

    /// A certificate serves (stored or just ordered), due for renewal at `renew_at`.
    pub fn served(&self, listener: &str, names: &str, info: &CertInfo, renew_at: i64) {
        self.with(listener, names, |e| {
            e.not_after = Some(info.not_after);
            e.renew_at = Some(renew_at);
        });
    }

    /// An order succeeded (after `served`).
    pub fn ordered(&self, listener: &str, names: &str) {
        self.with(listener, names, |e| {
            e.orders_ok += 1;
            e.last_error = None;
        });
    }

    pub fn failed(&self, listener: &str, names: &str, error: String) {
        self.with(listener, names, |e| {
            e.orders_failed += 1;
            e.last_error = Some(error);
        });
    }

    pub fn entries(&self) -> Vec<AcmeEntry> {
        let m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        m.values().cloned().collect()
    }
}

impl AcmeEntry {
    /// Why this makes the proxy degraded at `now`, if it does: no certificate yet and the
    /// last order failed, or renewal overdue and failing.
    pub fn trouble(&self, now: i64) -> Option<String> {
        let err = self.last_error.as_deref()?;
        match (self.not_after, self.renew_at) {
            (None, _) => Some(format!(
                "listener {}: no ACME certificate for {} yet: {err}",
                self.listener, self.names
            )),
            (Some(na), Some(due)) if now >= due => Some(format!(
                "listener {}: ACME renewal for {} is failing ({err}); the certificate expires at {na}",
                self.listener, self.names
            )),
            _ => None,
        }
    }
}
