//! Replay: per spooled route, `replay.concurrency` workers take the next item (the oldest
//! first; with concurrency 1 only ever the head, so order is strict), send it to a backend
//! the route would pick, and settle it: 2xx → delivered and removed; 408, 429, 5xx, a
//! connect failure or a timeout → tried again after a back-off; any other status, or
//! `max_attempts` reached → dead, kept for an operator. A replayed request counts as
//! in-flight on its backend, so a drain waits for it.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::TokioExecutor,
};
use pingora::server::ShutdownWatch;

use super::{
    now_ms,
    store::{Claim, Finish, Item, Next, Store},
    Spool, ATTEMPT_HEADER, ID_HEADER,
};
use crate::{
    access_log::{Outcome, Record},
    config::spec::ReplaySpec,
    routing::pick::Want,
    state::{table::Route, tracking::Tracking, AppState},
};

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// Longest answer to a replayed request that is read (and thrown away).
pub const MAX_ANSWER: u64 = 1 << 20;
/// How often the supervisor looks at the table for spooled routes.
const SUPERVISE: Duration = Duration::from_secs(1);
/// Longest sleep of an idle worker before it looks again.
const IDLE: Duration = Duration::from_secs(1);
/// Pauses after outcomes the store could not record: doubling from 1 s (a store that
/// cannot write is an outage of its own, whatever the route's back-off) up to 30 s.
const OUTCOME_BACKOFF: Duration = Duration::from_millis(500);
const OUTCOME_MAX_BACKOFF: Duration = Duration::from_secs(30);

/// What one attempt came to, before it is written to the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sent {
    /// The backend answered with this status.
    Status(u16),
    /// No answer: connect failure, reset, timeout.
    Failed(String),
}

/// Settle attempt number `attempt` (1-based) that ended as `sent`.
pub fn settle(sent: &Sent, attempt: u32, replay: &ReplaySpec, now_ms: i64) -> Finish {
    let (retryable, error, status) = match sent {
        Sent::Status(s) if (200..300).contains(s) => return Finish::Delivered,
        Sent::Status(s) => (
            *s == 408 || *s == 429 || *s >= 500,
            format!("backend answered {s}"),
            Some(i64::from(*s)),
        ),
        Sent::Failed(e) => (true, e.clone(), None),
    };
    let attempts = i64::from(attempt);
    if !retryable || attempt >= replay.max_attempts {
        return Finish::Dead {
            attempts,
            error,
            status,
        };
    }
    Finish::Retry {
        attempts,
        next_ms: now_ms + replay.delay_after(attempt).as_millis() as i64,
        error,
        status,
    }
}

/// Keep `replay.concurrency` workers per spooled route, following reloads, until shutdown.
pub async fn supervise(spool: Arc<Spool>, store: Arc<Store>, mut shutdown: ShutdownWatch) {
    let client: HttpClient = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build_http();
    let summary = Arc::new(Mutex::new(HashMap::new()));
    let mut running: HashMap<Arc<str>, (u32, Vec<tokio::task::JoinHandle<()>>)> = HashMap::new();
    loop {
        let table = spool.state.table_full();
        let wanted: HashMap<Arc<str>, u32> = table
            .routes
            .iter()
            .filter_map(|r| Some((r.name.clone(), r.spec.spool.as_ref()?.replay.concurrency)))
            .collect();
        running.retain(|name, (n, tasks)| {
            // A worker that ended (it panicked) is started again with its route's others.
            let keep = wanted.get(name) == Some(n) && !tasks.iter().any(|t| t.is_finished());
            if !keep {
                tasks.iter().for_each(|t| t.abort());
            }
            keep
        });
        for (name, n) in wanted {
            running.entry(name.clone()).or_insert_with(|| {
                let w = Worker {
                    spool: spool.clone(),
                    state: spool.state.clone(),
                    store: store.clone(),
                    client: client.clone(),
                    route: name,
                    strict: n == 1,
                    summary: summary.clone(),
                };
                let tasks = (0..n).map(|_| tokio::spawn(w.clone().run())).collect();
                (n, tasks)
            });
        }
        tokio::select! {
            _ = tokio::time::sleep(SUPERVISE) => {}
            _ = shutdown.changed() => break,
        }
    }
    // Items being sent finish (or stay pending); no new ones are taken.
    for (_, (_, tasks)) in running {
        tasks.iter().for_each(|t| t.abort());
    }
}

/// Whether maintenance covers any method the route spools (its replays wait).
fn in_maintenance(table: &crate::state::table::Table, route: &Route) -> bool {
    table.maintenance.as_ref().is_some_and(|m| {
        let spooled = route
            .spec
            .spool
            .as_ref()
            .map_or(&[][..], |s| &s.methods[..]);
        spooled.iter().any(|method| m.matches(&route.name, method))
    })
}

/// The pause after the `n`th outcome in a row that the store could not record.
fn outcome_pause(n: u32) -> Duration {
    OUTCOME_BACKOFF
        .saturating_mul(1 << n.min(6))
        .min(OUTCOME_MAX_BACKOFF)
}

/// Delivered and dead items of a route since its spool was last empty.
type Summary = Arc<Mutex<HashMap<Arc<str>, (u64, u64)>>>;

#[derive(Clone)]
struct Worker {
    spool: Arc<Spool>,
    state: Arc<AppState>,
    store: Arc<Store>,
    client: HttpClient,
    route: Arc<str>,
    strict: bool,
    summary: Summary,
}

impl Worker {
    async fn run(self) {
        let depth = self.state.stats.spool_depth(&self.route);
        // Consecutive outcomes the store could not record: each doubles the pause before the
        // next claim (an item sent but not recorded is sent again, so not in a tight loop).
        let mut unrecorded = 0u32;
        loop {
            if depth.pending() == 0 {
                self.log_empty();
                let _ = tokio::time::timeout(IDLE, depth.committed.notified()).await;
                continue;
            }
            let table = self.state.table_full();
            let Some(route) = table.routes.iter().find(|r| r.name == self.route).cloned() else {
                return;
            };
            let Some(replay) = route.spec.spool.as_ref().map(|s| s.replay.clone()) else {
                return;
            };
            if in_maintenance(&table, &route) || route.pick_pool(&Want::default()).is_err() {
                // Nothing to send to, or the route is in maintenance: wait for a backend
                // (health, undrain, reload) or the end of maintenance.
                let _ = tokio::time::timeout(IDLE, self.state.availability.notified()).await;
                continue;
            }
            match self.store.claim(&self.route, self.strict, now_ms()).await {
                Ok(Next::Item(claim)) if self.spool.is_revoked(claim.item.id) => {
                    // Its write timed out and its delete is under way: never sent.
                    drop(claim);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Ok(Next::Item(claim)) => {
                    if self.deliver(&route, &replay, claim).await {
                        unrecorded = 0;
                    } else {
                        unrecorded = unrecorded.saturating_add(1);
                        tokio::time::sleep(outcome_pause(unrecorded)).await;
                    }
                }
                Ok(Next::NotDue(at)) => {
                    let wait = Duration::from_millis((at - now_ms()).clamp(1, 1000) as u64);
                    tokio::time::sleep(wait).await;
                }
                Ok(Next::Empty) => {
                    self.log_empty();
                    let _ = tokio::time::timeout(IDLE, depth.committed.notified()).await;
                }
                Ok(Next::Busy) => tokio::time::sleep(Duration::from_millis(50)).await,
                Err(e) => {
                    tracing::warn!(route = %self.route, error = %e, "spool replay: store unavailable");
                    tokio::time::sleep(IDLE).await;
                }
            }
        }
    }

    /// Send one claimed item and record the outcome; `false` when the store could not
    /// record it (the item stays pending and will be sent again).
    async fn deliver(&self, route: &Route, replay: &ReplaySpec, claim: Claim) -> bool {
        let item = &claim.item;
        let attempt = u32::try_from(item.attempts + 1).unwrap_or(u32::MAX);
        let picked = route
            .pick_avoiding(&Want::default(), &|_| false)
            .and_then(|(_, b, _)| Some((b, b.addr?)));
        let started = std::time::Instant::now();
        let refusal = picked.and_then(|(b, _)| {
            let pool = &b.state.pool.name;
            let cfg = self.state.table();
            cfg.pools.get(pool)?.spec.upstream.replay_refusal(pool)
        });
        let sent = match picked {
            // A reload made the pool HTTP/2 or TLS: the item waits (retried after back-off).
            Some(_) if refusal.is_some() => Sent::Failed(refusal.unwrap_or_default()),
            Some((b, addr)) => {
                let uri: http::Uri = item.target.parse().unwrap_or_default();
                let _tracking = Tracking::new(b.state.clone(), route.name.clone(), uri, None);
                self.send(item, addr, attempt, replay.timeout).await
            }
            _ => Sent::Failed("no backend available".into()),
        };
        let backend = picked.map(|(b, _)| &*b.state);
        log_replay(
            &self.state,
            route,
            backend,
            item,
            attempt,
            &sent,
            started.elapsed(),
        );
        let how = settle(&sent, attempt, replay, now_ms());
        let (id, created) = (item.id, item.created_ms);
        let result = match &how {
            Finish::Delivered => "delivered",
            Finish::Retry { .. } => "retry",
            Finish::Dead { .. } => "dead",
        };
        if let Err(e) = self.store.finish(claim, &how).await {
            tracing::warn!(route = %self.route, id, result, error = %e, "spool: could not record a replay; the item stays pending and is sent again after a pause");
            return false;
        }
        self.state
            .stats
            .spool_replays
            .with_label_values(&[&self.route, result])
            .inc();
        let depth = self.state.stats.spool_depth(&self.route);
        match how {
            Finish::Delivered => depth.left_pending(),
            Finish::Dead { .. } => depth.died(),
            Finish::Retry { .. } => {}
        }
        if !matches!(how, Finish::Retry { .. }) {
            self.count(matches!(how, Finish::Dead { .. }));
        }
        self.log_settled(&how, id, attempt, now_ms() - created);
        true
    }

    fn log_settled(&self, how: &Finish, id: i64, attempt: u32, age_ms: i64) {
        match how {
            Finish::Dead { error, .. } => {
                tracing::warn!(route = %self.route, id, attempt, age_ms, error = %error, "spooled request is dead (kept for an operator)")
            }
            Finish::Retry { error, next_ms, .. } => {
                tracing::info!(route = %self.route, id, attempt, retry_in_ms = next_ms - now_ms(), error = %error, "spooled request will be retried")
            }
            Finish::Delivered => {
                tracing::info!(route = %self.route, id, attempt, age_ms, "spooled request delivered")
            }
        }
    }

    /// One HTTP exchange with the backend, the answer read to its end (at most
    /// [`MAX_ANSWER`] bytes).
    async fn send(&self, item: &Item, addr: SocketAddr, attempt: u32, timeout: Duration) -> Sent {
        let req = match request(item, addr, attempt) {
            Ok(r) => r,
            Err(e) => return Sent::Failed(format!("stored request is invalid: {e}")),
        };
        let exchange = async {
            let resp = self.client.request(req).await.map_err(|e| e.to_string())?;
            let status = resp.status().as_u16();
            // Read to its end (the connection is reused), kept nowhere, and only so far: an
            // endless answer is a failed attempt, not memory.
            crate::services::capped::discard(resp.into_body(), MAX_ANSWER).await?;
            Ok::<u16, String>(status)
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(Ok(status)) => Sent::Status(status),
            Ok(Err(e)) => Sent::Failed(e),
            Err(_) => Sent::Failed(format!("no answer within {}s", timeout.as_secs_f64())),
        }
    }

    fn count(&self, dead: bool) {
        let mut s = self.summary.lock().unwrap_or_else(|p| p.into_inner());
        let e = s.entry(self.route.clone()).or_default();
        if dead {
            e.1 += 1;
        } else {
            e.0 += 1;
        }
    }

    /// One line when a route's spool has become empty again.
    fn log_empty(&self) {
        let mut s = self.summary.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((delivered, dead)) = s.remove(&self.route) {
            tracing::info!(route = %self.route, delivered, dead, "spool is empty again");
        }
    }
}

/// The access log line of one replay attempt (outcome `replayed`, or `replay_failed` without
/// an answer), with the request id the client got when it was spooled.
fn log_replay(
    state: &AppState,
    route: &Route,
    backend: Option<&crate::state::backend::BackendState>,
    item: &Item,
    attempt: u32,
    sent: &Sent,
    took: Duration,
) {
    let cfg = state.table();
    let spec = &cfg.spec.access_log;
    let path = item.target.split('?').next().unwrap_or("/");
    if !spec.enabled || spec.excludes(path) {
        return;
    }
    let (status, outcome, error) = match sent {
        Sent::Status(s) => (*s, Outcome::Replayed, None),
        Sent::Failed(e) => (0, Outcome::ReplayFailed, Some(e.as_str())),
    };
    let record = Record {
        time: std::time::SystemTime::now(),
        request_id: stored_header(&item.headers, "x-request-id"),
        trace_id: stored_header(&item.headers, "traceparent")
            .and_then(|v| crate::access_log::ids::trace_id(v.as_bytes())),
        client: None,
        method: &item.method,
        host: stored_header(&item.headers, "host"),
        path,
        query: item
            .target
            .split_once('?')
            .map(|(_, q)| q)
            .filter(|_| spec.query),
        protocol: "HTTP/1.1",
        status,
        bytes_in: item.body.len() as u64,
        bytes_out: 0,
        duration: took,
        connect: None,
        first_byte: None,
        held: Duration::ZERO,
        route: Some(&route.name),
        pool: backend.map(|b| &*b.pool.name),
        backend: backend.map(|b| &*b.name),
        pick: None,
        kind: "http",
        attempts: attempt,
        outcome,
        spool_id: Some(item.id),
        error,
        referer: None,
        user_agent: stored_header(&item.headers, "user-agent"),
        request_headers: Vec::new(),
        response_headers: Vec::new(),
    };
    state.access_log.write(spec.format, &record);
}

/// A header of a stored request (`name: value` lines).
pub(crate) fn stored_header<'a>(headers: &'a [u8], name: &str) -> Option<&'a str> {
    headers.split(|b| *b == b'\n').find_map(|line| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let colon = line.iter().position(|b| *b == b':')?;
        line[..colon]
            .eq_ignore_ascii_case(name.as_bytes())
            .then(|| std::str::from_utf8(line[colon + 1..].trim_ascii()).ok())
            .flatten()
    })
}

/// The stored request as an HTTP request to `addr`, with the spool headers.
pub(crate) fn request(
    item: &Item,
    addr: SocketAddr,
    attempt: u32,
) -> Result<http::Request<Full<Bytes>>, String> {
    let method = http::Method::from_bytes(item.method.as_bytes()).map_err(|e| e.to_string())?;
    let uri: http::Uri = format!("http://{addr}{}", item.target)
        .parse()
        .map_err(|e: http::uri::InvalidUri| e.to_string())?;
    let mut req = http::Request::builder().method(method).uri(uri);
    for line in item.headers.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        // Set below, once: a stored copy (an item kept by an older version that did not
        // drop a client's own) must not add a second value.
        if name.eq_ignore_ascii_case(ID_HEADER.as_bytes())
            || name.eq_ignore_ascii_case(ATTEMPT_HEADER.as_bytes())
        {
            continue;
        }
        req = req.header(name, value);
    }
    req.header(ID_HEADER, item.id)
        .header(ATTEMPT_HEADER, attempt)
        .body(Full::new(Bytes::from(item.body.clone())))
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replay() -> ReplaySpec {
        ReplaySpec {
            max_attempts: 3,
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(3),
            concurrency: 1,
            timeout: Duration::from_secs(5),
        }
    }

    #[test]
    fn outcomes_follow_the_status() {
        let r = replay();
        assert_eq!(settle(&Sent::Status(204), 1, &r, 0), Finish::Delivered);
        for s in [408, 429, 500, 503] {
            assert!(
                matches!(
                    settle(&Sent::Status(s), 1, &r, 0),
                    Finish::Retry { next_ms: 1000, .. }
                ),
                "{s}"
            );
        }
        for s in [301, 400, 404, 422] {
            assert!(
                matches!(settle(&Sent::Status(s), 1, &r, 0), Finish::Dead { .. }),
                "{s}"
            );
        }
        let failed = Sent::Failed("refused".into());
        assert!(matches!(
            settle(&failed, 2, &r, 0),
            Finish::Retry { next_ms: 2000, .. }
        ));
        assert!(matches!(
            settle(&failed, 3, &r, 0),
            Finish::Dead { attempts: 3, .. }
        ));
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let r = replay();
        let d: Vec<u64> = (1..=5).map(|a| r.delay_after(a).as_secs()).collect();
        assert_eq!(d, [1, 2, 3, 3, 3]);
    }
}
