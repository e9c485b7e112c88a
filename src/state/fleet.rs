//! The fleet as this proxy sees it through the `control_store`: whether the shared state is
//! loaded (the proxy routes nothing before), whether the store answers (mutations are
//! refused while it does not), the revision applied here, and the other proxies as last
//! read from their heartbeats. The service that keeps it current is `services::fleet`.

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use arc_swap::ArcSwap;
use tokio::sync::{watch, Notify};

use crate::api::InFlight;

/// One proxy of the fleet as its last heartbeat told.
#[derive(Clone, Debug)]
pub struct Peer {
    pub node: String,
    /// Its admin address as it was bound.
    pub admin: String,
    /// Heartbeat age when read, and when that was.
    pub age: Duration,
    pub read_at: Instant,
    /// The revision of the shared state it had applied.
    pub rev: i64,
    /// In flight by backend id (`pool/name`); backends with nothing are left out.
    pub counts: BTreeMap<String, InFlight>,
    /// Requests and failures by `route` → `pool`, for ramps judged on the fleet's figures.
    pub outcomes: BTreeMap<String, BTreeMap<String, (u64, u64)>>,
    /// Its heartbeat is older than the TTL.
    pub lost: bool,
    /// This proxy itself.
    pub me: bool,
}

impl Peer {
    /// Heartbeat age now.
    pub fn age_now(&self) -> Duration {
        self.age.saturating_add(self.read_at.elapsed())
    }
}

/// The outcome of one publication round.
#[derive(Clone, Debug, Default)]
pub struct Round {
    pub done: u64,
    pub error: Option<String>,
}

/// See the module documentation.
#[derive(Debug)]
pub struct Fleet {
    enabled: bool,
    node: String,
    loaded: AtomicBool,
    down: Mutex<Option<String>>,
    rev: AtomicI64,
    /// The highest revision this proxy wrote.
    wrote: AtomicI64,
    /// Local overrides changed: the service publishes them.
    pub local: Notify,
    requested: AtomicU64,
    rounds: watch::Sender<Round>,
    peers: ArcSwap<Vec<Peer>>,
    /// When the heartbeat rows were last read successfully (`None`: never).
    peers_read: Mutex<Option<Instant>>,
    /// The store's state went back in time (a restored backup, a promoted replica): why.
    regressed: Mutex<Option<String>>,
    /// Set once this proxy has left the fleet (clean exit).
    left: watch::Sender<bool>,
    /// Held while rows from the store are applied, and while an admin call changes shared
    /// state: neither overwrites the other unseen.
    pub applying: tokio::sync::Mutex<()>,
    /// A proxy whose heartbeat is older is lost (also between two reads of the rows).
    ttl: Duration,
    /// Another proxy's admin address seen under this proxy's node name.
    name_taken: Mutex<Option<String>>,
}

impl Default for Fleet {
    fn default() -> Self {
        Fleet::new(None)
    }
}

impl Fleet {
    /// Without a store (`node` `None`) the proxy is alone and loaded from the start.
    pub fn new(node: Option<(String, Duration)>) -> Fleet {
        let (node, ttl) = match node {
            Some((n, t)) => (Some(n), t),
            None => (None, Duration::ZERO),
        };
        Fleet {
            applying: tokio::sync::Mutex::new(()),
            ttl,
            name_taken: Mutex::new(None),
            enabled: node.is_some(),
            loaded: AtomicBool::new(node.is_none()),
            node: node.unwrap_or_default(),
            down: Mutex::new(None),
            rev: AtomicI64::new(0),
            wrote: AtomicI64::new(0),
            local: Notify::new(),
            requested: AtomicU64::new(0),
            rounds: watch::channel(Round::default()).0,
            peers: ArcSwap::from_pointee(Vec::new()),
            peers_read: Mutex::new(None),
            regressed: Mutex::new(None),
            left: watch::channel(false).0,
        }
    }

    /// Whether a control store is configured.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// This proxy's name in the fleet.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Whether the shared state has been loaded (always, without a store). One atomic load:
    /// the proxy asks it for every request.
    pub fn is_loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    pub fn set_loaded(&self) {
        self.loaded.store(true, Ordering::Release);
    }

    /// Why the store cannot be used now (`None`: it answers, or there is none).
    pub fn down(&self) -> Option<String> {
        self.down.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Record that the store answers (`None`) or why it does not; whether that changed.
    pub fn set_down(&self, why: Option<String>) -> bool {
        let mut d = self.down.lock().unwrap_or_else(|p| p.into_inner());
        let changed = d.is_some() != why.is_some();
        *d = why;
        changed
    }

    /// Another proxy's admin address, when one heartbeats under this proxy's node name.
    pub fn name_taken(&self) -> Option<String> {
        self.name_taken
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn set_name_taken(&self, other: Option<String>) {
        *self.name_taken.lock().unwrap_or_else(|p| p.into_inner()) = other;
    }

    /// The revision of the shared state applied here.
    pub fn rev(&self) -> i64 {
        self.rev.load(Ordering::Acquire)
    }

    pub fn set_rev(&self, rev: i64) {
        self.rev.fetch_max(rev, Ordering::AcqRel);
    }

    /// After a full read: the store's revision, even a lower one (a database restored or
    /// created again).
    pub fn reset_rev(&self, rev: i64) {
        self.rev.store(rev, Ordering::Release);
    }

    /// A revision this proxy wrote itself (a published change, a ramp step): a drain
    /// answer asks the others to have applied at least that far.
    pub fn wrote(&self, rev: i64) {
        self.wrote.fetch_max(rev, Ordering::AcqRel);
    }

    /// The revision the fleet must have applied for a change made here to be everywhere.
    pub fn wanted_rev(&self) -> i64 {
        self.rev().max(self.wrote.load(Ordering::Acquire))
    }

    /// Whether `p` is lost now: its heartbeat, as last read and aged since, is past the TTL.
    pub fn is_lost(&self, p: &Peer) -> bool {
        !p.me && (p.lost || p.age_now() > self.ttl)
    }

    /// Ask for the local overrides to be published (after a change through the API).
    pub fn changed(&self) {
        if self.enabled {
            self.local.notify_one();
        }
    }

    /// The round a publication that starts now will report as done; the service takes it
    /// before it reads the local state.
    pub fn take_round(&self) -> u64 {
        self.requested.load(Ordering::Acquire)
    }

    /// Report a publication round as done (with its error, if it failed).
    pub fn round_done(&self, round: u64, error: Option<String>) {
        self.rounds.send_modify(|r| {
            r.done = r.done.max(round);
            r.error = error;
        });
    }

    /// Wait until what was changed before this call is in the store: `Ok` when it is, the
    /// store's error when it failed or `timeout` passed. Immediate without a store.
    pub async fn flush(&self, timeout: Duration) -> Result<(), String> {
        if !self.enabled {
            return Ok(());
        }
        let mine = self.requested.fetch_add(1, Ordering::AcqRel) + 1;
        let mut rx = self.rounds.subscribe();
        self.local.notify_one();
        let wait = async {
            rx.wait_for(|r| r.done >= mine)
                .await
                .map(|r| r.error.clone())
        };
        match tokio::time::timeout(timeout, wait).await {
            Ok(Ok(error)) => error.map_or(Ok(()), Err),
            Ok(Err(_)) => Err("the control store service stopped".into()),
            Err(_) => Err(format!(
                "the control store did not confirm the change within {} ms",
                timeout.as_millis()
            )),
        }
    }

    /// This proxy has left the fleet (its heartbeat row and lease are gone).
    pub fn set_left(&self) {
        self.left.send_replace(true);
    }

    /// At a clean exit: wait (at most `timeout`) until this proxy has left the fleet, so the
    /// others do not report it as lost. Immediate without a store.
    pub async fn wait_left(&self, timeout: Duration) {
        if !self.enabled {
            return;
        }
        let mut rx = self.left.subscribe();
        let _ = tokio::time::timeout(timeout, rx.wait_for(|l| *l)).await;
    }

    /// The proxies as last read (this one included).
    pub fn peers(&self) -> Arc<Vec<Peer>> {
        self.peers.load_full()
    }

    pub fn set_peers(&self, peers: Vec<Peer>) {
        self.peers.store(Arc::new(peers));
        *self.peers_read.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
    }

    /// How long ago the others' heartbeats were last read (`None`: never).
    pub fn peers_read_age(&self) -> Option<Duration> {
        self.peers_read
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map(|at| at.elapsed())
    }

    /// Whether this proxy's view of the others is older than the TTL (its reads stall or
    /// fail): their counts are not known, so nothing is answered drained for the fleet.
    pub fn is_stale(&self) -> bool {
        self.enabled && self.peers_read_age().is_none_or(|age| age > self.ttl)
    }

    /// Reads of the store that used to succeed have not for longer than the TTL (a store
    /// that stalls before it errors): changes are refused as while it is unreachable.
    pub fn reads_stalled(&self) -> bool {
        self.enabled && self.peers_read_age().is_some_and(|age| age > self.ttl)
    }

    /// The heartbeat TTL.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Why the store's state is older than what this proxy had applied (`None`: it is not).
    pub fn regressed(&self) -> Option<String> {
        self.regressed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Record (or clear) a store that went back in time; whether that changed.
    pub fn set_regressed(&self, why: Option<String>) -> bool {
        let mut r = self.regressed.lock().unwrap_or_else(|p| p.into_inner());
        let changed = r.is_some() != why.is_some();
        *r = why;
        changed
    }
}
