//! `control_store`: one fleet, one truth. Every runtime override (drains, splits and ramps,
//! maintenance, runtime members, checkpoints) lives in PostgreSQL; each proxy applies what
//! the others change within a notification (LISTEN/NOTIFY, with a full re-read every
//! `resync` as a safety net), publishes what changes through it, and heartbeats its counts
//! so that "drained" is answered for the whole fleet.
//!
//! The loop, one task per proxy:
//! 1. connect: create the tables, LISTEN, read the whole state and apply it; only then is
//!    the proxy loaded (it answers 503 to traffic and `/readyz` before);
//! 2. serve: apply notified revisions, publish local changes, step ramps when holding the
//!    lease. Heartbeats (every 250 ms; the row is written when something changed, else every
//!    second) run in a task of their own ([`beat::Beater`]), so a stall here never makes
//!    this proxy's work invisible to the others or theirs old here;
//! 3. on any store error: degraded with the reason, mutations refused (503), the last state
//!    kept; back to 1 after 500 ms, which re-reads everything before applying notices.
//!
//! Leaves the fleet (its heartbeat row and lease) once shutdown has begun and nothing is in
//! flight.

mod beat;
mod notes;
mod regress;
pub mod rows;
mod stepper;
pub mod store;
mod sync;

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use pingora::{server::ShutdownWatch, services::background::BackgroundService};
use tokio::{
    sync::{mpsc, watch},
    time::{interval, Instant, MissedTickBehavior},
};

use crate::{config::spec::ControlStore, state::AppState};
use store::{Rows, StepError, Store};

pub use beat::BEAT;
/// Wait before reconnecting to a store that failed.
const RECONNECT: Duration = Duration::from_millis(500);

/// Background service for the fleet (does nothing without a `control_store`).
pub struct FleetService {
    pub state: Arc<AppState>,
}

#[async_trait]
impl BackgroundService for FleetService {
    async fn start(&self, _shutdown: ShutdownWatch) {
        let Some(cfg) = self.state.table().spec.control_store.clone() else {
            return;
        };
        let store = match Store::open(&cfg.url.0) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "control store unusable");
                self.state.fleet.set_down(Some(e));
                return;
            }
        };
        let mut run = Run::new(self.state.clone(), store, cfg);
        let (stop, stopped) = watch::channel(false);
        let beater = beat::Beater::new(
            run.state.clone(),
            run.store.clone(),
            run.cfg.node.clone(),
            run.cfg.heartbeat_ttl,
            run.instance.clone(),
        );
        let beats = tokio::spawn(beater.run(stopped));
        loop {
            let why = match run.connect().await {
                Ok(notes) => {
                    let out = run.serve(notes.0).await;
                    notes.1.abort();
                    match out {
                        Ok(()) => break,
                        Err(e) => e,
                    }
                }
                Err(e) => e,
            };
            run.down(why);
            if run.state.is_shutting_down() && run.state.active() == 0 {
                // Exiting without a store to tell: the others will see us lost.
                let _ = stop.send(true);
                let _ = beats.await;
                run.state.fleet.set_left();
                return;
            }
            tokio::time::sleep(RECONNECT).await;
        }
        // No heartbeat after the row is deleted.
        let _ = stop.send(true);
        let _ = beats.await;
        match run
            .store
            .leave(&run.cfg.node, &run.instance, &run.holder)
            .await
        {
            Ok(()) => tracing::info!(node = %run.cfg.node, "left the fleet"),
            Err(e) => tracing::warn!(error = %e, "could not leave the fleet cleanly"),
        }
        run.state.fleet.set_left();
    }
}

/// The loop's state.
struct Run {
    state: Arc<AppState>,
    store: Store,
    cfg: ControlStore,
    /// The rows as the store holds them (as of the last read or write).
    synced: Rows,
    /// This proxy's rows right after the last sync: what changed since is published.
    base: Rows,
    lease: bool,
    lease_at: Option<Instant>,
    /// The first heartbeat of each connection, before the proxy counts as loaded (then the
    /// beater's task takes over).
    first: beat::Beater,
    /// The config generation of the last full read.
    generation: u64,
    /// The store's epoch as first read (a new database has another).
    epoch: Option<String>,
    /// The highest revision live proxies had applied when this one loaded a store that was
    /// behind it (a store restored before this proxy started): still a regression until the
    /// store is past it.
    floor: i64,
    /// Unique to this process start, and the lease holder's name (node and instance).
    instance: String,
    holder: String,
}

impl Run {
    fn new(state: Arc<AppState>, store: Store, cfg: ControlStore) -> Run {
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let instance = format!("{}-{}", std::process::id(), since.as_nanos());
        let generation = state.table().generation;
        let first = beat::Beater::new(
            state.clone(),
            store.clone(),
            cfg.node.clone(),
            cfg.heartbeat_ttl,
            instance.clone(),
        );
        Run {
            state,
            store,
            synced: Rows::new(),
            base: Rows::new(),
            lease: false,
            lease_at: None,
            first,
            generation,
            epoch: None,
            floor: 0,
            holder: format!("{} {instance}", cfg.node),
            instance,
            cfg,
        }
    }

    fn down(&mut self, why: String) {
        // Changes waiting for their publication are not in the store: their callers get 503
        // (the full read on reconnect replaces them with the fleet's state).
        let pending = self.state.fleet.take_round();
        self.state.fleet.round_done(pending, Some(why.clone()));
        if self.state.fleet.set_down(Some(why.clone())) {
            tracing::error!(error = %why, "control store unreachable: serving with the last shared state; changes refused");
        }
        self.lease = false;
    }

    /// Tables, LISTEN, the whole state read and applied. Returns the notifications (their
    /// revision; `None` once the connection is lost) and the task that receives them.
    async fn connect(&mut self) -> Result<store::Notes, String> {
        self.store.schema().await?;
        let notes = self.store.listen().await?;
        // The whole state, then a first heartbeat (whether the node name is ours), before
        // the proxy counts as loaded.
        let first = async {
            self.reread(true).await?;
            self.first.beat().await
        };
        if let Err(e) = first.await {
            notes.1.abort();
            return Err(e);
        }
        // Changes still waiting were made before the full read, which replaced them with
        // the fleet's state: their callers get 503, not a 200 for a change that is gone.
        let pending = self.state.fleet.take_round();
        let why = "the control store came back and its state replaced the change; try again";
        self.state.fleet.round_done(pending, Some(why.into()));
        if self.state.fleet.set_down(None) {
            tracing::info!("control store reachable again: shared state read again");
        }
        if !self.state.fleet.is_loaded() {
            self.state.fleet.set_loaded();
            tracing::info!(node = %self.cfg.node, rev = self.state.fleet.rev(), "shared state loaded from the control store");
        }
        Ok(notes)
    }

    /// Read the whole state and apply what differs from what was last synced. `full`: the
    /// local state is replaced by the fleet's (after a reconnect), else local changes not
    /// published yet go out first.
    // Long: the regression checks must sit between the read and the apply they guard.
    async fn reread(&mut self, full: bool) -> Result<(), String> {
        if !full {
            self.publish().await?;
        }
        let (epoch, rev, remote) = self.store.read().await?;
        if !self.state.fleet.is_loaded() {
            // A proxy that starts has no state of its own to compare: the live proxies'
            // heartbeats say how far the fleet had come.
            let live = self
                .store
                .peers()
                .await?
                .into_iter()
                .filter(|b| b.age < self.cfg.heartbeat_ttl && b.instance != self.instance)
                .map(|b| b.rev)
                .max()
                .unwrap_or(0);
            if live > rev {
                self.floor = live;
            }
        }
        if let Some(why) =
            regress::regression(&self.state, self.epoch.as_deref(), self.floor, &epoch, rev)
        {
            // Keep the live state: adopting an older one would undo acknowledged changes
            // (undrain what operators drained, move splits back) on every proxy at once.
            if self.state.fleet.set_regressed(Some(why.clone())) {
                tracing::error!(reason = %why, "the control store went back in time (restored from a backup? a replica promoted?): keeping this proxy's live state and refusing changes; see the README's recovery steps");
            }
            return Ok(());
        }
        // Back in step (an operator moved the revision past this proxy's): the store's
        // state is adopted whole.
        let full = if self.state.fleet.is_loaded() && self.state.fleet.set_regressed(None) {
            self.floor = 0;
            tracing::warn!(
                rev,
                "the control store's revision is past this proxy's again: adopting its state"
            );
            true
        } else {
            full
        };
        self.epoch = Some(epoch);
        let known = match (full, self.state.fleet.is_loaded()) {
            // After a reconnect: whatever this proxy holds becomes the fleet's state.
            (true, true) => sync::local(&self.state),
            // At start: the fleet's rows apply; what only this proxy's file declares stays.
            (true, false) => Rows::new(),
            (false, _) => self.synced.clone(),
        };
        let changes = sync::diff(&known, &remote);
        if full {
            let (_, after, _) = self.apply(changes, None).await?;
            self.base = after;
            self.state.fleet.reset_rev(rev);
        } else if !changes.is_empty() {
            let base = Some(self.base.clone());
            let (before, after, applied) = self.apply(changes, base).await?;
            self.settle(&applied, &before, &after);
            self.state.fleet.set_rev(rev);
        } else {
            self.state.fleet.set_rev(rev);
        }
        self.synced = remote;
        Ok(())
    }

    /// Publish what changed here since the last sync.
    async fn publish(&mut self) -> Result<(), String> {
        if self.state.fleet.regressed().is_some() {
            // Nothing is written to a store that went back in time (each write would move
            // its revision toward this proxy's and end the regression unseen). Changes from
            // the API are refused meanwhile; the drain machine's own go out after.
            return Ok(());
        }
        let round = self.state.fleet.take_round();
        let mut local = sync::local(&self.state);
        // A row gone here because this proxy's config no longer names its pool or route (a
        // reload) is not the fleet's to lose: not deleted, and kept as it was.
        for (k, v) in &self.base {
            if !local.contains_key(k) && !sync::named_here(&self.state, k) {
                local.insert(k.clone(), v.clone());
            }
        }
        let changes = sync::diff(&self.base, &local);
        let out = if changes.is_empty() {
            Ok(())
        } else {
            match self.store.publish(&self.cfg.node, &changes).await {
                Ok(rev) => {
                    tracing::info!(rev, rows = changes.len(), "published to the control store");
                    for (k, v) in &changes {
                        match v {
                            Some(v) => self.synced.insert(k.clone(), v.clone()),
                            None => self.synced.remove(k),
                        };
                    }
                    self.base = local;
                    self.own_rev(rev);
                    Ok(())
                }
                Err(e) => Err(e),
            }
        };
        self.state.fleet.round_done(round, out.clone().err());
        out
    }

    /// Until the store fails (`Err`) or this proxy is done (`Ok`).
    async fn serve(&mut self, mut notes: mpsc::Receiver<Option<i64>>) -> Result<(), String> {
        let mut beat = interval(BEAT);
        beat.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut resync = interval(self.cfg.resync);
        resync.set_missed_tick_behavior(MissedTickBehavior::Delay);
        resync.tick().await;
        loop {
            tokio::select! {
                n = notes.recv() => match n {
                    Some(Some(rev)) => {
                        let mut newest = rev;
                        while let Ok(Some(r)) = notes.try_recv() {
                            newest = newest.max(r);
                        }
                        // Our own writes come back too: applied already (`rev` is the
                        // revision up to which everything is applied here).
                        if newest > self.state.fleet.rev() {
                            self.reread(false).await?;
                        }
                    }
                    _ => return Err("control store: the notification connection was lost".into()),
                },
                _ = self.state.fleet.local.notified() => self.publish().await?,
                _ = resync.tick() => {
                    // After a reload, rows skipped for pools or routes this proxy did not name
                    // may apply now: a full read (local changes published first).
                    let generation = self.state.table().generation;
                    if generation != self.generation {
                        self.publish().await?;
                        self.reread(true).await?;
                        self.generation = generation;
                    } else {
                        self.reread(false).await?;
                    }
                }
                _ = beat.tick() => {
                    self.step_ramps().await?;
                    if self.state.is_shutting_down() && self.state.active() == 0 {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Hold (or try to take) the ramp lease while a ramp runs; step the ramps due.
    // Long: lease, due steps and each step's outcome are one decision per tick.
    async fn step_ramps(&mut self) -> Result<(), String> {
        // Not on a store that went back in time: its ramp rows are older than ours.
        if !stepper::any_running(&self.state) || self.state.fleet.regressed().is_some() {
            return Ok(());
        }
        if self
            .lease_at
            .is_none_or(|at| at.elapsed() >= stepper::LEASE_RENEW)
        {
            let held = self.store.lease(&self.holder, stepper::LEASE_TTL).await?;
            if held && !self.lease {
                tracing::info!(node = %self.cfg.node, "holding the ramp lease: this proxy steps the fleet's ramps");
            }
            self.lease = held;
            self.lease_at = Some(Instant::now());
        }
        if !self.lease {
            return Ok(());
        }
        let due = stepper::due(&self.state);
        if !due.is_empty() {
            // What changed here goes out first: a step never hides a change not yet published.
            self.publish().await?;
        }
        for t in due {
            let changes = t.changes();
            let key = (t.route.as_str(), t.id.as_str(), t.k);
            match self
                .store
                .step(
                    (&self.cfg.node, &self.holder),
                    key,
                    |v| t.still(v),
                    &changes,
                )
                .await
            {
                Ok(rev) => {
                    tracing::info!(route = %t.route, step = t.k, of = t.before.steps_total, state = ?t.after.state, rev, "ramp stepped");
                    self.applied(changes, rev).await?;
                }
                Err(StepError::NotHolder) => {
                    self.lease = false;
                    return Ok(());
                }
                // The ramp changed under us: a read brings the new one. When it does not (the
                // row cannot be applied here), the ramp stops here rather than retrying.
                Err(StepError::Stale) => {
                    self.reread(false).await?;
                    if self.state.ramps.get(&t.route).as_ref() == Some(&t.before) {
                        tracing::warn!(route = %t.route, "the fleet's ramp row does not match the ramp here; not stepping it");
                        self.state
                            .ramps
                            .cancel(&t.route, "the fleet's ramp row is not valid");
                    }
                }
                Err(StepError::Store(e)) => return Err(e),
            }
        }
        Ok(())
    }

    /// Rows this proxy wrote itself in a step: applied here too, and synced.
    async fn applied(&mut self, changes: Vec<store::Change>, rev: i64) -> Result<(), String> {
        for (k, v) in &changes {
            match v {
                Some(v) => self.synced.insert(k.clone(), v.clone()),
                None => self.synced.remove(k),
            };
        }
        let base = Some(self.base.clone());
        let (before, after, applied) = self.apply(changes, base).await?;
        self.settle(&applied, &before, &after);
        self.own_rev(rev);
        Ok(())
    }

    /// Apply rows from the store here (off the async threads: members are resolved), with
    /// admin changes held off; this proxy's rows just before and just after, and the rows
    /// applied. With `base`: a row changed here and not published yet is not overwritten
    /// (it is newer, and the admin call that made it waits for its publication).
    async fn apply(
        &self,
        changes: Vec<store::Change>,
        base: Option<Rows>,
    ) -> Result<(Rows, Rows, Vec<store::Change>), String> {
        let st = self.state.clone();
        tokio::task::spawn_blocking(move || {
            let _held = st.fleet.applying.blocking_lock();
            let before = sync::local(&st);
            let applied: Vec<store::Change> = changes
                .into_iter()
                .filter(|(k, _)| base.as_ref().is_none_or(|b| before.get(k) == b.get(k)))
                .collect();
            if !applied.is_empty() {
                sync::apply(&st, &applied);
            }
            (before, sync::local(&st), applied)
        })
        .await
        .map_err(|e| format!("applying the shared state: {e}"))
    }

    /// After applying `changes`: a row now as the store has it is synced; a row this proxy
    /// could not apply (unchanged here) is not published either; a row that changed here
    /// otherwise (the admin API meanwhile) stays to be published.
    fn settle(&mut self, changes: &[store::Change], before: &Rows, after: &Rows) {
        for (k, remote) in changes {
            let now = after.get(k);
            if now == remote.as_ref() || now == before.get(k) {
                match now {
                    Some(v) => self.base.insert(k.clone(), v.clone()),
                    None => self.base.remove(k),
                };
            }
        }
    }

    /// A revision this proxy wrote: everything up to it is applied here only when nobody
    /// wrote in between (else the other's notification brings a read that covers both).
    fn own_rev(&self, rev: i64) {
        self.state.fleet.wrote(rev);
        if rev == self.state.fleet.rev() + 1 {
            self.state.fleet.set_rev(rev);
        }
    }
}
