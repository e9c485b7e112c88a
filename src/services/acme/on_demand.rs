//! On-demand certificates: names seen in handshakes that no certificate claims, approved
//! by the `ask` URL, ordered within `max_orders` per `per`.

use std::{
    collections::{HashMap, VecDeque},
    time::Duration,
};

use super::Managed;
use crate::config::{self, spec::OnDemand};

impl Managed {
    /// Names seen in handshakes that nothing serves: ask, then order within the limit.
    pub(super) async fn on_demand(self, od: OnDemand, mut rx: tokio::sync::mpsc::Receiver<String>) {
        let mut recent: VecDeque<std::time::Instant> = VecDeque::new();
        let mut seen: HashMap<String, std::time::Instant> = HashMap::new();
        let mut pruned = std::time::Instant::now();
        let forget = Duration::from_secs(600);
        let mut limited_logged = false;
        let active = self.restore_on_demand();
        while let Some(name) = rx.recv().await {
            let known = self.acme.domains.contains(&name) || self.certs.has_acme(&name);
            if !config::build::is_dns_name(&name) || known || lock(&active).contains(&name) {
                continue;
            }
            // A name asked about (approved or refused) is not asked again for 10 minutes;
            // the memory of that is pruned at most once a minute (or when it grows large),
            // not on every name of a flood.
            if seen.len() > 4096 || pruned.elapsed() > Duration::from_secs(60) {
                seen.retain(|_, t| t.elapsed() < forget);
                pruned = std::time::Instant::now();
            }
            if seen.contains_key(&name) || seen.len() > 65_536 {
                continue;
            }
            seen.insert(name.clone(), std::time::Instant::now());
            recent.retain(|t| t.elapsed() < od.per);
            if recent.len() >= od.max_orders as usize {
                if !limited_logged {
                    tracing::warn!(listener = %self.certs.listener, max_orders = od.max_orders, "on-demand certificates: rate limit reached; names are not ordered until it passes");
                    limited_logged = true;
                }
                seen.remove(&name);
                continue;
            }
            match ask(&od.ask, &name).await {
                Ok(true) => {}
                Ok(false) => {
                    tracing::info!(listener = %self.certs.listener, name, "on-demand certificate refused by ask");
                    continue;
                }
                Err(e) => {
                    tracing::warn!(listener = %self.certs.listener, name, error = %e, "on-demand: ask failed; not ordering");
                    continue;
                }
            }
            limited_logged = false;
            recent.push_back(std::time::Instant::now());
            tracing::info!(listener = %self.certs.listener, name, "on-demand certificate approved by ask; ordering");
            lock(&active).insert(name.clone());
            let (m, active) = (self.clone(), active.clone());
            tokio::spawn(async move {
                // One attempt: a name whose order fails is dropped (and, asked about again
                // later, counted again against max_orders), never retried forever.
                m.keep(vec![name.clone()], true).await;
                lock(&active).remove(&name);
            });
        }
    }

    /// Certificates ordered on demand before a restart: served again at once (for their
    /// name only) and renewed, without counting against `max_orders`. The names kept.
    fn restore_on_demand(&self) -> Active {
        let active: Active = Default::default();
        let Ok(dirs) = std::fs::read_dir(&self.acme.storage) else {
            return active;
        };
        for d in dirs.flatten().filter(|d| d.path().is_dir()) {
            let Ok(c) = super::files::load_stored(&d.path()) else {
                continue;
            };
            let [name] = c.info.names.as_slice() else {
                continue;
            };
            let configured = self.acme.domains.contains(name);
            if configured || c.info.not_after <= config::unix_now() {
                continue;
            }
            let name = name.clone();
            lock(&active).insert(name.clone());
            let (m, active) = (self.clone(), active.clone());
            tokio::spawn(async move {
                m.keep(vec![name.clone()], true).await;
                lock(&active).remove(&name);
            });
        }
        active
    }
}

/// Names with a certificate, or an order, under way.
type Active = std::sync::Arc<std::sync::Mutex<std::collections::HashSet<String>>>;

fn lock(a: &Active) -> std::sync::MutexGuard<'_, std::collections::HashSet<String>> {
    a.lock().unwrap_or_else(|p| p.into_inner())
}

/// `GET ask?domain=NAME`: whether it answered 2xx.
async fn ask(url: &str, name: &str) -> Result<bool, String> {
    let sep = if url.contains('?') { '&' } else { '?' };
    let uri: http::Uri = format!("{url}{sep}domain={name}")
        .parse()
        .map_err(|e| format!("{e}"))?;
    let client: hyper_util::client::legacy::Client<_, http_body_util::Empty<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let exchange = async {
        let resp = client.get(uri).await.map_err(|e| e.to_string())?;
        let ok = resp.status().is_success();
        // Only the status counts: the answer is read no further than 64 KiB.
        crate::services::capped::discard(resp.into_body(), 64 * 1024).await?;
        Ok::<bool, String>(ok)
    };
    tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .map_err(|_| "no answer within 5s".to_string())?
}
