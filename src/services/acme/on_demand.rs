//! On-demand certificates: names seen in handshakes that no certificate claims, approved
//! by the `ask` URL, ordered within `max_orders` per `per`.

use std::{
    collections::{HashMap, VecDeque},
    time::Duration,
};

use super::Managed;
use crate::config::{self, spec::OnDemand};

/// Asks in flight at once (a slow `ask` endpoint does not make every name wait in line).
const ASKS: usize = 4;
/// Names waiting to be asked about, at most.
const WAITING: usize = 4096;

/// Names seen in handshakes, waiting to be asked about, with how often each was seen. A name
/// real clients use comes back with every handshake and is asked about first; a flood of
/// made-up names, each seen once, cannot push it out.
#[derive(Default)]
struct Waiting(HashMap<String, u32>);

impl Waiting {
    fn note(&mut self, name: String) {
        if let Some(n) = self.0.get_mut(&name) {
            *n = n.saturating_add(1);
            return;
        }
        if self.0.len() >= WAITING {
            // Full: make room only by dropping a name seen once (an arbitrary one: the map's
            // hashing is keyed at random), never one seen again.
            let once = self
                .0
                .iter()
                .find(|(_, n)| **n == 1)
                .map(|(k, _)| k.clone());
            match once {
                Some(k) => self.0.remove(&k),
                None => return,
            };
        }
        self.0.insert(name, 1);
    }

    /// The name seen most often.
    fn take(&mut self) -> Option<String> {
        let best = self.0.iter().max_by_key(|(_, n)| **n)?.0.clone();
        self.0.remove(&best);
        Some(best)
    }
}

/// Whether orders have reached `max_orders` within `per` (logged once per episode).
struct Limit {
    recent: VecDeque<std::time::Instant>,
    logged: bool,
}

impl Managed {
    /// Names seen in handshakes that nothing serves: ask (a few at once, the most wanted
    /// first), then order within the limit.
    pub(super) async fn on_demand(self, od: OnDemand, mut rx: tokio::sync::mpsc::Receiver<String>) {
        let mut waiting = Waiting::default();
        let mut asks: tokio::task::JoinSet<(String, Result<bool, String>)> = Default::default();
        let mut seen: HashMap<String, std::time::Instant> = HashMap::new();
        let mut pruned = std::time::Instant::now();
        let mut limit = Limit {
            recent: VecDeque::new(),
            logged: false,
        };
        let active = self.restore_on_demand();
        loop {
            while asks.len() < ASKS {
                let Some(name) = waiting.take() else { break };
                if self.limited(&od, &mut limit) {
                    waiting = Waiting::default();
                    break;
                }
                seen.insert(name.clone(), std::time::Instant::now());
                let url = od.ask.clone();
                asks.spawn(async move {
                    let answer = ask(&url, &name).await;
                    (name, answer)
                });
            }
            tokio::select! {
                got = rx.recv() => {
                    let Some(name) = got else { break };
                    // A name asked about (approved or refused) is not asked again for 10
                    // minutes; that memory is pruned at most once a minute (or when large).
                    if seen.len() > 4096 || pruned.elapsed() > Duration::from_secs(60) {
                        seen.retain(|_, t| t.elapsed() < Duration::from_secs(600));
                        pruned = std::time::Instant::now();
                    }
                    let known = self.acme.domains.contains(&name) || self.certs.has_acme(&name);
                    let skip = !config::build::is_dns_name(&name)
                        || known
                        || lock(&active).contains(&name)
                        || seen.contains_key(&name)
                        || seen.len() > 65_536;
                    if !skip {
                        waiting.note(name);
                    }
                }
                Some(done) = asks.join_next(), if !asks.is_empty() => {
                    if let Ok((name, answer)) = done {
                        self.answered(&od, name, answer, &active, &mut limit);
                    }
                }
            }
        }
    }

    /// Whether `max_orders` per `per` is reached.
    fn limited(&self, od: &OnDemand, limit: &mut Limit) -> bool {
        limit.recent.retain(|t| t.elapsed() < od.per);
        let reached = limit.recent.len() >= od.max_orders as usize;
        if reached && !limit.logged {
            tracing::warn!(listener = %self.certs.listener, max_orders = od.max_orders, "on-demand certificates: rate limit reached; names are not ordered until it passes");
        }
        limit.logged = reached;
        reached
    }

    /// The `ask` answered for `name`: order it when approved (and the limit allows).
    fn answered(
        &self,
        od: &OnDemand,
        name: String,
        answer: Result<bool, String>,
        active: &Active,
        limit: &mut Limit,
    ) {
        match answer {
            Ok(true) => {}
            Ok(false) => {
                tracing::info!(listener = %self.certs.listener, name, "on-demand certificate refused by ask");
                return;
            }
            Err(e) => {
                tracing::warn!(listener = %self.certs.listener, name, error = %e, "on-demand: ask failed; not ordering");
                return;
            }
        }
        // Asks run side by side: the limit is checked again as each approval comes in.
        if lock(active).contains(&name) || self.limited(od, limit) {
            return;
        }
        limit.recent.push_back(std::time::Instant::now());
        tracing::info!(listener = %self.certs.listener, name, "on-demand certificate approved by ask; ordering");
        lock(active).insert(name.clone());
        let (m, active) = (self.clone(), active.clone());
        tokio::spawn(async move {
            // One attempt: a name whose order fails is dropped (and, asked about again
            // later, counted again against max_orders), never retried forever.
            m.keep(vec![name.clone()], true).await;
            lock(&active).remove(&name);
        });
    }

    /// Before renewing an on-demand certificate: whether `ask` still approves `name`
    /// (`Err`: it did not answer; the renewal is retried after the back-off).
    pub(super) async fn asked_again(&self, name: &str) -> Result<bool, String> {
        let Some(od) = &self.acme.on_demand else {
            return Ok(true);
        };
        let approved = ask(&od.ask, name)
            .await
            .map_err(|e| format!("on-demand ask before renewal: {e}"))?;
        if !approved {
            tracing::info!(listener = %self.certs.listener, name, "on-demand certificate no longer approved by ask: not renewed (it serves until it expires; asked again in an hour)");
            self.board().failed(
                &self.certs.listener,
                name,
                "not renewed: refused by ask".into(),
            );
        }
        Ok(approved)
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
