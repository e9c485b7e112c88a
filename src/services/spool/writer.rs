//! Group commit: one task takes every write waiting, stores them in one transaction (one
//! fsync), then answers each. Another refreshes the routes' depths from the store every
//! second; a refresh that overlapped a commit is dropped (its counts may miss the fresh
//! items, and a missing item would let a new request overtake it).

use std::{
    sync::{atomic::Ordering, Arc},
    time::Duration,
};

use tokio::sync::mpsc;

use super::{store::Store, Spool, WriteReq};

/// Writes committed together at most.
const GROUP: usize = 256;
/// How often depths are read from the store (other proxies of a fleet write there too).
const REFRESH: Duration = Duration::from_secs(1);

pub(super) async fn run(spool: Arc<Spool>, store: Arc<Store>, mut rx: mpsc::Receiver<WriteReq>) {
    while let Some(first) = rx.recv().await {
        let mut group = vec![first];
        while group.len() < GROUP {
            match rx.try_recv() {
                Ok(r) => group.push(r),
                Err(_) => break,
            }
        }
        // A client that stopped waiting got a 503: storing its request now would deliver
        // what it was told was not kept (and it will send it again).
        group.retain(|r| !r.reply.is_closed());
        if !group.is_empty() {
            commit(&spool, &store, group).await;
        }
    }
}

/// Refresh the depths every second, until the process ends.
pub(super) async fn refresher(spool: Arc<Spool>, store: Arc<Store>) {
    let mut tick = tokio::time::interval(REFRESH);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        refresh(&spool, &store).await;
    }
}

async fn commit(spool: &Spool, store: &Store, group: Vec<WriteReq>) {
    let items: Vec<_> = group.iter().map(|r| r.item.clone()).collect();
    // Before and after: a refresh reading in between is dropped.
    spool.commits.fetch_add(1, Ordering::AcqRel);
    let stored = store.insert(&items).await;
    spool.commits.fetch_add(1, Ordering::AcqRel);
    match stored {
        Ok(ids) => {
            for (req, id) in group.into_iter().zip(ids) {
                let depth = spool.state.stats.spool_depth(&req.item.route);
                depth.committed(req.item.created_ms.max(0) as u64);
                tracing::info!(
                    route = %req.item.route,
                    id,
                    method = %req.item.method,
                    path = %req.item.target,
                    bytes = req.item.body.len(),
                    "request spooled"
                );
                // The client may have given up; the item is stored either way.
                let _ = req.reply.send(Ok(id));
            }
        }
        Err(e) => {
            tracing::error!(error = %e, items = group.len(), "spool write failed; answering 503");
            for req in group {
                let _ = req.reply.send(Err(e.to_string()));
            }
        }
    }
}

/// Set every known route's depth from the store (routes absent there are empty).
pub(super) async fn refresh(spool: &Spool, store: &Store) {
    let before = spool.commits.load(Ordering::Acquire);
    let counts = match store.counts().await {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(error = %e, "spool depth refresh failed");
            return;
        }
    };
    if before % 2 == 1 || spool.commits.load(Ordering::Acquire) != before {
        return;
    }
    for c in &counts {
        let depth = spool.state.stats.spool_depth(&c.route);
        depth.set(c.pending, c.dead, c.oldest_ms.map(|m| m.max(0) as u64));
    }
    for (route, depth) in spool.state.stats.spool_depths() {
        if !counts.iter().any(|c| *c.route == *route) {
            depth.set(0, 0, None);
        }
    }
}
