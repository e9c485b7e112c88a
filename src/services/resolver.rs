//! Backend names (`HOST:PORT`) resolved again in the background every `resolve_interval`,
//! never on the request path, and names that have no address yet (runtime members, which
//! the admin API and the fleet store unresolved) every second. Each lookup is bounded. A changed answer keeps the backend's id and state: requests in
//! flight finish on the old address, new ones go to the new one (a new table is published
//! with the same generation). A failed lookup keeps the last good address and is logged once
//! until it succeeds again; a name that never resolved keeps its backend unavailable.
//!
//! Test seam: `TIDEGATE_HOSTS_FILE` names a hosts-format file (`IP NAME…` lines) consulted
//! before the system resolver.

use std::{collections::HashSet, net::SocketAddr, sync::Arc, time::Duration};

use async_trait::async_trait;
use pingora::{server::ShutdownWatch, services::background::BackgroundService};

use crate::state::{table::Addresses, AppState};

/// The background service.
pub struct Resolver {
    pub state: Arc<AppState>,
}

#[async_trait]
impl BackgroundService for Resolver {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut failing: HashSet<String> = HashSet::new();
        let mut last_full = tokio::time::Instant::now();
        let mut first = true;
        loop {
            // The first round at once (names restored from state_file or the fleet); then
            // every second, or as soon as runtime members are set.
            if !first {
                // Every `resolve_interval` when that is shorter than a second.
                let every = self
                    .state
                    .table()
                    .spec
                    .resolve_interval
                    .map_or(UNRESOLVED_EVERY, |i| i.min(UNRESOLVED_EVERY));
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = self.state.resolve_now.notified() => {}
                    _ = shutdown.changed() => return,
                }
            }
            first = false;
            // Every name at `resolve_interval`; names that have no address yet (runtime
            // members are stored unresolved) every second, with or without it.
            let interval = self.state.table().spec.resolve_interval;
            let full = interval.is_some_and(|i| last_full.elapsed() >= i);
            if full {
                last_full = tokio::time::Instant::now();
            }
            self.round(&mut failing, !full).await;
        }
    }
}

/// How often names without an address are looked up.
const UNRESOLVED_EVERY: Duration = Duration::from_secs(1);
/// Longest one lookup may take (a slow DNS server delays only its own name).
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

impl Resolver {
    /// Resolve the table's backend names once (`only_unresolved`: those without an address
    /// yet); publish when an answer changed.
    async fn round(&self, failing: &mut HashSet<String>, only_unresolved: bool) {
        let table = self.state.table_full();
        let mut answers: Addresses = self.state.overrides().addresses;
        let all: HashSet<String> = table
            .backends()
            .map(|(_, b)| b.spec.address.clone())
            .filter(|a| a.parse::<SocketAddr>().is_err())
            .collect();
        answers.retain(|k, _| all.contains(k));
        let names: Vec<String> = all
            .iter()
            .filter(|n| {
                !only_unresolved
                    || (!answers.contains_key(*n)
                        && table
                            .backends()
                            .any(|(_, b)| b.spec.address == **n && b.addr.is_none()))
            })
            .cloned()
            .collect();
        if names.is_empty() {
            return;
        }
        let before_round = answers.clone();
        for name in names {
            match lookup(&name).await {
                Some(a) => {
                    if failing.remove(&name) {
                        tracing::info!(address = %name, resolved = %a, "backend name resolves again");
                    }
                    let before = answers.insert(name.clone(), a);
                    let current = table
                        .backends()
                        .find(|(_, b)| b.spec.address == name)
                        .and_then(|(_, b)| b.addr);
                    if before.or(current).is_some_and(|old| old != a) {
                        tracing::info!(address = %name, old = ?before.or(current), new = %a, "backend name moved");
                    }
                }
                None => {
                    if failing.insert(name.clone()) {
                        tracing::warn!(address = %name, "backend name does not resolve; keeping the last good address");
                    }
                }
            }
        }
        if only_unresolved && answers == before_round {
            return;
        }
        self.state.set_addresses(answers);
    }
}

/// One lookup: the hosts-file seam, then the system resolver (IPv4 preferred).
async fn lookup(name: &str) -> Option<SocketAddr> {
    let (host, port) = name.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    if let Some(ip) = hosts_file(host) {
        return Some(SocketAddr::new(ip, port));
    }
    let addrs: Vec<SocketAddr> =
        tokio::time::timeout(LOOKUP_TIMEOUT, tokio::net::lookup_host(name))
            .await
            .ok()?
            .ok()?
            .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
}

fn hosts_file(host: &str) -> Option<std::net::IpAddr> {
    let path = std::env::var_os("TIDEGATE_HOSTS_FILE")?;
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .map(|l| l.split('#').next().unwrap_or(""))
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            let ip: std::net::IpAddr = parts.next()?.parse().ok()?;
            parts.any(|n| n.eq_ignore_ascii_case(host)).then_some(ip)
        })
        .next()
}
