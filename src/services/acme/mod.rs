//! ACME (RFC 8555) certificates for TLS listeners, through `instant-acme`: one account per
//! directory, kept under the storage directory (mode 0600) with the certificates, reused
//! across restarts; an order answered with HTTP-01 (tokens served before routing) and, for
//! names seen in handshakes, on-demand orders approved by an `ask` URL and rate-limited.
//! Certificates are renewed at two thirds of their lifetime; a failed order is retried
//! after a jittered, doubling back-off, and the certificate served keeps serving.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use async_trait::async_trait;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, ExternalAccountKey,
    Identifier, NewAccount, NewOrder, OrderStatus, RetryPolicy,
};
use pingora::{server::ShutdownWatch, services::background::BackgroundService};

use crate::{
    config::{
        self,
        spec::{AcmeChallenge, AcmeSpec},
        tls::{Served, Source},
    },
    state::{acme::AcmeBoard, certs::ListenerCerts, AppState},
};

pub mod alpn;
mod challenge;
mod check;
use challenge::{alpn_cert, Tokens};
pub(crate) use check::issued_as_ordered;
pub use check::renew_at;
pub(crate) mod files;
mod on_demand;
pub mod shared;

use files::{cert_dir, decode_b64url, load_stored, short_hash, store, write_private};

use shared::Shared;

/// An order that takes longer than this is abandoned (and retried after the back-off).
const ORDER_TIMEOUT: Duration = Duration::from_secs(120);

/// The background service.
pub struct AcmeService {
    pub state: Arc<AppState>,
}

#[async_trait]
impl BackgroundService for AcmeService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let spec = self.state.table().spec.clone();
        let shared = self.shared(&spec);
        let mut tasks = Vec::new();
        let http01 = spec.listeners.iter().any(|l| {
            l.tls
                .as_ref()
                .and_then(|t| t.acme.as_ref())
                .is_some_and(|a| a.challenge == AcmeChallenge::Http01)
        });
        if let (Some(s), true) = (&shared, http01) {
            let (s, state) = (s.clone(), self.state.clone());
            tasks.push(tokio::spawn(shared::mirror_tokens(s, state)));
        }
        for l in &spec.listeners {
            let Some(acme) = l.tls.as_ref().and_then(|t| t.acme.clone()) else {
                continue;
            };
            let Some(certs) = self.state.certs.of(&l.name).cloned() else {
                continue;
            };
            let m = Managed {
                state: self.state.clone(),
                certs,
                acme: Arc::new(acme),
                shared: shared.clone(),
            };
            if !m.acme.domains.is_empty() {
                let (m, names) = (m.clone(), m.acme.domains.clone());
                tasks.push(tokio::spawn(async move { m.keep(names, false).await }));
            }
            if let Some(od) = m.acme.on_demand.clone() {
                let (tx, rx) = tokio::sync::mpsc::channel(64);
                m.certs.want_unknown_names(tx);
                tasks.push(tokio::spawn(async move { m.on_demand(od, rx).await }));
            }
        }
        let _ = shutdown.changed().await;
        tasks.iter().for_each(|t| t.abort());
    }
}

impl AcmeService {
    /// The fleet's ACME store, when ACME is used and the spool store is PostgreSQL; tokens
    /// of peers are then answered here too.
    fn shared(&self, spec: &crate::config::Spec) -> Option<Arc<Shared>> {
        let acme = spec
            .listeners
            .iter()
            .any(|l| l.tls.as_ref().is_some_and(|t| t.acme.is_some()));
        let Some(crate::config::spec::SpoolStore::Postgres(url)) = &spec.spool_store else {
            return None;
        };
        if !acme {
            return None;
        }
        match Shared::open(&url.0) {
            Ok(s) => Some(Arc::new(s)),
            Err(e) => {
                tracing::warn!(error = %e, "ACME: the fleet's store cannot be used; this proxy orders its own certificates");
                None
            }
        }
    }
}

/// One listener's ACME work.
#[derive(Clone)]
struct Managed {
    state: Arc<AppState>,
    certs: Arc<ListenerCerts>,
    acme: Arc<AcmeSpec>,
    /// The fleet's store (with a PostgreSQL `spool_store`).
    shared: Option<Arc<Shared>>,
}

/// The back-off after `failures` failed orders in a row: `min` doubled per failure up to
/// `max`, then ±20 % jitter (so a fleet that failed together does not retry together).
pub fn backoff(min: Duration, max: Duration, failures: u32) -> Duration {
    let base = min
        .saturating_mul(1u32 << failures.saturating_sub(1).min(20))
        .min(max);
    let jitter = 0.8 + fastrand::f64() * 0.4;
    base.mul_f64(jitter)
}

impl Managed {
    fn board(&self) -> &AcmeBoard {
        &self.state.acme
    }

    /// Keep a certificate for `names`: the stored one while it is good, a new one when it
    /// is due; failures retried with back-off.
    /// `on_demand`: the certificate serves its name only, and an order that fails with
    /// nothing served yet is not retried (the name is dropped).
    async fn keep(self, names: Vec<String>, on_demand: bool) {
        let mark = |c: Arc<Served>| if on_demand { c.only_named() } else { c };
        let key = names.join(",");
        let dir = cert_dir(&self.acme.storage, &names);
        let now = config::unix_now();
        let mut due = now;
        match load_stored(&dir) {
            Ok(c) if c.info.not_after > now => {
                due = renew_at(&c.info);
                tracing::info!(listener = %self.certs.listener, names = %key, not_after = c.info.not_after, "ACME certificate loaded from storage");
                self.board()
                    .served(&self.certs.listener, &key, &c.info, due);
                self.certs.install(&key, mark(c), now, due);
            }
            _ => self.board().wanted(&self.certs.listener, &key),
        }
        let mut failures = 0;
        loop {
            let wait = (due - config::unix_now()).max(0) as u64;
            tokio::time::sleep(Duration::from_secs(wait)).await;
            let Some(attempt) = self.renewal(&names, &dir, on_demand).await else {
                // Not approved any more; asked again hourly, so a name approved later is
                // renewed (the certificate stays installed, so handshakes do not ask).
                due = config::unix_now() + 3600;
                continue;
            };
            match attempt {
                Ok(c) => {
                    failures = 0;
                    // Never due at once again (a CA that backdates or issues short-lived
                    // certificates): at least half the remaining lifetime away.
                    let now = config::unix_now();
                    due = renew_at(&c.info).max(now + (c.info.not_after - now) / 2);
                    tracing::info!(listener = %self.certs.listener, names = %key, not_after = c.info.not_after, renew_at = due, "ACME certificate obtained");
                    self.board()
                        .served(&self.certs.listener, &key, &c.info, due);
                    self.board().ordered(&self.certs.listener, &key);
                    self.certs.install(&key, mark(c), config::unix_now(), due);
                }
                Err(e) => {
                    failures += 1;
                    let pause = backoff(self.acme.retry_min, self.acme.retry_max, failures);
                    tracing::warn!(listener = %self.certs.listener, names = %key, attempt = failures, retry_in_ms = pause.as_millis() as u64, error = %e, "ACME order failed; the certificate served (if any) keeps serving");
                    self.board().failed(&self.certs.listener, &key, e);
                    if on_demand && !self.certs.has_acme(&key) {
                        return;
                    }
                    tokio::time::sleep(pause).await;
                    due = config::unix_now();
                }
            }
        }
    }

    /// One order (or the fleet's certificate); `None` when an on-demand name being renewed
    /// is no longer approved by the `ask` (asked again before each renewal: what serves now
    /// serves until it expires).
    async fn renewal(
        &self,
        names: &[String],
        dir: &Path,
        on_demand: bool,
    ) -> Option<Result<Arc<Served>, String>> {
        let key = names.join(",");
        if on_demand && self.certs.has_acme(&key) {
            match self.asked_again(&key).await {
                Ok(true) => {}
                Ok(false) => return None,
                Err(e) => return Some(Err(e)),
            }
        }
        Some(self.obtain(names, dir).await)
    }

    /// A new certificate for `names`, kept under `dir`: with a shared store, the one a peer
    /// just obtained, else one ordered here while holding the fleet's lock for the names.
    async fn obtain(&self, names: &[String], dir: &Path) -> Result<Arc<Served>, String> {
        let Some(shared) = self.shared.clone() else {
            return self.order_and_keep(names, dir).await.map(|(c, _)| c);
        };
        let key = names.join(",");
        let deadline = tokio::time::Instant::now() + ORDER_TIMEOUT;
        loop {
            if let Some(c) = self.fleet_cert(&shared, &key, dir).await? {
                return Ok(c);
            }
            if let Some(lock) = shared.try_lock(&key).await? {
                let out = self.order_for_fleet(&shared, &key, names, dir).await;
                lock.release().await;
                return out;
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(
                    "a peer of the fleet has been ordering these names for too long".into(),
                );
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Holding the fleet's lock: order, and share the result.
    async fn order_for_fleet(
        &self,
        shared: &Shared,
        key: &str,
        names: &[String],
        dir: &Path,
    ) -> Result<Arc<Served>, String> {
        // A peer may have finished just before the lock was free.
        if let Some(c) = self.fleet_cert(shared, key, dir).await? {
            return Ok(c);
        }
        let (c, (chain, pem)) = self.order_and_keep(names, dir).await?;
        let directory = &self.acme.directory;
        if let Err(e) = shared
            .save(key, directory, &chain, &pem, c.info.not_after)
            .await
        {
            tracing::warn!(names = key, error = %e, "ACME certificate not shared with the fleet (it serves here)");
        }
        Ok(c)
    }

    /// The fleet's certificate for `key`, when it is good and not yet due (kept under `dir`).
    async fn fleet_cert(
        &self,
        shared: &Shared,
        key: &str,
        dir: &Path,
    ) -> Result<Option<Arc<Served>>, String> {
        let Some((chain, pem)) = shared.load(key, &self.acme.directory).await? else {
            return Ok(None);
        };
        let Ok((ck, info)) = config::tls::load_pair(chain.as_bytes(), pem.as_bytes()) else {
            return Ok(None);
        };
        if renew_at(&info) <= config::unix_now() {
            return Ok(None);
        }
        store(dir, &chain, &pem).map_err(|e| format!("cannot store the certificate: {e}"))?;
        tracing::info!(listener = %self.certs.listener, names = key, not_after = info.not_after, "ACME certificate taken from the fleet's store");
        Ok(Some(Arc::new(Served {
            key: ck,
            info,
            source: Source::Acme,
            only_named: false,
        })))
    }

    /// Order a certificate for `names` and keep it under `dir`: it, and (chain, key) PEM.
    async fn order_and_keep(
        &self,
        names: &[String],
        dir: &Path,
    ) -> Result<(Arc<Served>, (String, String)), String> {
        let order = tokio::time::timeout(ORDER_TIMEOUT, self.order(names)).await;
        let order = order.map_err(|_| "the order timed out".to_string())?;
        let (chain, key) = order.inspect_err(|e| {
            // The CA forgot the account (a test CA restarted, an account deactivated): the
            // next attempt makes a new one.
            if e.contains("accountDoesNotExist") {
                let _ = std::fs::remove_file(self.account_file());
            }
        })?;
        let (ck, info) = config::tls::load_pair(chain.as_bytes(), key.as_bytes())
            .map_err(|e| format!("the CA's certificate is unusable: {e}"))?;
        // A CA's answer is input too: a certificate already expired (or not valid yet), or
        // not for every name ordered, is a failed order (backed off; the old one serves),
        // never installed and re-ordered in a loop.
        issued_as_ordered(&info, names, config::unix_now())?;
        store(dir, &chain, &key).map_err(|e| format!("cannot store the certificate: {e}"))?;
        let served = Arc::new(Served {
            key: ck,
            info,
            source: Source::Acme,
            only_named: false,
        });
        Ok((served, (chain, key)))
    }

    /// One order, its challenges answered: (chain PEM, key PEM).
    async fn order(&self, names: &[String]) -> Result<(String, String), String> {
        let account = self.account().await?;
        let ids: Vec<Identifier> = names.iter().map(|n| Identifier::Dns(n.clone())).collect();
        let mut order = account
            .new_order(&NewOrder::new(&ids))
            .await
            .map_err(|e| format!("new order: {e}"))?;
        let mut tokens = Tokens(&self.state, Vec::new(), Vec::new());
        let done = self.validate_and_finalize(&mut order, &mut tokens).await;
        // Only now: the CA validates after `set_ready`, and may ask any proxy.
        if let Some(shared) = &self.shared {
            for t in &tokens.1 {
                let _ = shared.remove_token(t).await;
            }
        }
        done
    }

    /// Answer the challenges, wait for validation, finalize: (chain PEM, key PEM).
    async fn validate_and_finalize(
        &self,
        order: &mut instant_acme::Order,
        tokens: &mut Tokens<'_>,
    ) -> Result<(String, String), String> {
        self.answer_challenges(order, tokens).await?;
        let retry = RetryPolicy::new().timeout(Duration::from_secs(60));
        let status = order
            .poll_ready(&retry)
            .await
            .map_err(|e| format!("waiting for validation: {e}"))?;
        if status != OrderStatus::Ready {
            return Err(format!("validation failed: order is {status:?}"));
        }
        let key = order
            .finalize()
            .await
            .map_err(|e| format!("finalize: {e}"))?;
        let chain = order
            .poll_certificate(&retry)
            .await
            .map_err(|e| format!("certificate: {e}"))?;
        Ok((chain, key))
    }

    /// Serve each pending authorization's challenge (HTTP-01 tokens also to the fleet) and
    /// tell the CA it is ready.
    async fn answer_challenges(
        &self,
        order: &mut instant_acme::Order,
        tokens: &mut Tokens<'_>,
    ) -> Result<(), String> {
        let mut auths = order.authorizations();
        while let Some(a) = auths.next().await {
            let mut a = a.map_err(|e| format!("authorization: {e}"))?;
            match a.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => continue,
                other => return Err(format!("authorization is {other:?}")),
            }
            if self.acme.challenge == AcmeChallenge::TlsAlpn01 {
                let mut ch = a
                    .challenge(ChallengeType::TlsAlpn01)
                    .ok_or("the CA offers no tls-alpn-01 challenge")?;
                let name = ch.identifier().to_string();
                let cert = alpn_cert(&name, ch.key_authorization().digest().as_ref())?;
                tokens.put_alpn(&name, cert);
                ch.set_ready()
                    .await
                    .map_err(|e| format!("challenge: {e}"))?;
                continue;
            }
            let mut ch = a
                .challenge(ChallengeType::Http01)
                .ok_or("the CA offers no http-01 challenge")?;
            let ka = ch.key_authorization();
            tokens.put(&ch.token, ka.as_str());
            if let Some(shared) = &self.shared {
                shared.put_token(&ch.token, ka.as_str()).await?;
                // Every proxy reads the fleet's tokens each second: the CA, which may ask
                // any of them, is told once every peer whose reads succeed has it.
                tokio::time::sleep(shared::TOKENS_SPREAD).await;
            }
            ch.set_ready()
                .await
                .map_err(|e| format!("challenge: {e}"))?;
        }
        Ok(())
    }

    fn account_file(&self) -> PathBuf {
        let a = &self.acme;
        a.storage
            .join(format!("account-{}.json", short_hash(&a.directory)))
    }

    /// The account for this directory: stored credentials, or a new account (stored).
    async fn account(&self) -> Result<Account, String> {
        let a = &self.acme;
        let builder = || match &a.ca_file {
            Some(ca) => Account::builder_with_root(ca),
            None => Account::builder(),
        };
        let file = self.account_file();
        if let Ok(text) = std::fs::read_to_string(&file) {
            if let Ok(creds) = serde_json::from_str::<AccountCredentials>(&text) {
                let b = builder().map_err(|e| format!("ACME client: {e}"))?;
                return b
                    .from_credentials(creds)
                    .await
                    .map_err(|e| format!("account: {e}"));
            }
        }
        let contact = a.email.as_ref().map(|e| format!("mailto:{e}"));
        let contact: Vec<&str> = contact.iter().map(String::as_str).collect();
        let eab = match &a.eab {
            Some((kid, key)) => Some(ExternalAccountKey::new(
                kid.clone(),
                &decode_b64url(&key.0)?,
            )),
            None => None,
        };
        let new = NewAccount {
            contact: &contact,
            terms_of_service_agreed: true,
            only_return_existing: false,
        };
        let b = builder().map_err(|e| format!("ACME client: {e}"))?;
        let (account, creds) = b
            .create(&new, a.directory.clone(), eab.as_ref())
            .await
            .map_err(|e| format!("new account: {e}"))?;
        let text = serde_json::to_string(&creds).map_err(|e| e.to_string())?;
        write_private(&file, text.as_bytes())
            .map_err(|e| format!("cannot store the account: {e}"))?;
        tracing::info!(directory = %a.directory, "ACME account created");
        Ok(account)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn back_off_doubles_within_jitter_up_to_the_cap() {
        let (min, max) = (Duration::from_secs(10), Duration::from_secs(60));
        for (n, want) in [(1, 10.0), (2, 20.0), (3, 40.0), (4, 60.0), (30, 60.0)] {
            let got = backoff(min, max, n).as_secs_f64();
            assert!(
                got >= want * 0.8 - 0.01 && got <= want * 1.2 + 0.01,
                "{n}: {got}"
            );
        }
    }

    #[test]
    fn renewal_is_due_two_thirds_into_the_lifetime() {
        let info = config::tls::CertInfo {
            names: vec![],
            issuer: String::new(),
            not_before: 1000,
            not_after: 1900,
        };
        assert_eq!(renew_at(&info), 1600);
    }
}
