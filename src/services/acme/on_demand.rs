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
        let forget = Duration::from_secs(600);
        let mut limited_logged = false;
        while let Some(name) = rx.recv().await {
            if !config::build::is_dns_name(&name) || self.certs.has_acme(&name) {
                continue;
            }
            // A name asked about (approved or refused) is not asked again for 10 minutes.
            seen.retain(|_, t| t.elapsed() < forget);
            if seen.contains_key(&name) {
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
            let m = self.clone();
            tokio::spawn(async move { m.keep(vec![name]).await });
        }
    }
}

/// `GET ask?domain=NAME`: whether it answered 2xx.
async fn ask(url: &str, name: &str) -> Result<bool, String> {
    use http_body_util::BodyExt;
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
        let _ = resp.into_body().collect().await;
        Ok::<bool, String>(ok)
    };
    tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .map_err(|_| "no answer within 5s".to_string())?
}
