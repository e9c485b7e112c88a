//! Group commit: one task takes every write waiting, stores them in one transaction (one
//! fsync), then answers each. Every write has a deadline below the client's wait: a group
//! that is not committed by its earliest deadline is abandoned (rolled back, and rows
//! whose commit may have landed are deleted before anything else is written), so a 503
//! means nothing was kept and a hung store does not hold later writes. Another refreshes the routes' depths from the store every
//! second; a refresh that overlapped a commit is dropped (its counts may miss the fresh
//! items, and a missing item would let a new request overtake it).

use std::{
    sync::{atomic::Ordering, Arc},
    time::Duration,
};

use tokio::sync::mpsc;

use super::{
    store::{Select, Store, StoreError},
    Spool, WriteReq,
};

/// Writes committed together at most.
const GROUP: usize = 256;
/// How often depths are read from the store (other proxies of a fleet write there too).
const REFRESH: Duration = Duration::from_secs(1);
/// Time limit of one delete of a timed-out write.
const REVOKE_CALL: Duration = Duration::from_secs(2);

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
        let now = tokio::time::Instant::now();
        group.retain(|r| !r.reply.is_closed() && r.deadline > now);
        if !group.is_empty() {
            commit(&spool, &store, group).await;
        }
    }
}

/// Delete rows whose commit is in doubt. Until they are gone the replayer skips them;
/// later writes wait (and, past their own deadline, get a 503 with nothing kept).
async fn revoke(spool: &Spool, store: &Store, ids: Vec<i64>) {
    if ids.is_empty() {
        return;
    }
    spool.revoke(&ids, true);
    let mut wait = Duration::from_millis(100);
    for &id in &ids {
        let sel = Select {
            id: Some(id),
            route: None,
            state: None,
        };
        loop {
            match tokio::time::timeout(REVOKE_CALL, store.delete(sel)).await {
                Ok(Ok(_)) => break,
                Ok(Err(e)) => {
                    tracing::warn!(id, error = %e, "spool: cannot delete an item whose write timed out; retrying")
                }
                Err(_) => {
                    tracing::warn!(id, "spool: the store does not answer; retrying the delete of a timed-out write")
                }
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(5));
        }
    }
    spool.revoke(&ids, false);
    tracing::warn!(
        items = ids.len(),
        "spool: a write timed out; its items were rolled back and the senders got 503"
    );
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
    let deadline = group.iter().map(|r| r.deadline).min();
    let staged = std::sync::Mutex::new(Vec::new());
    // Before and after: a refresh reading in between is dropped.
    spool.commits.fetch_add(1, Ordering::AcqRel);
    let stored = match deadline {
        Some(d) => tokio::time::timeout_at(d, store.insert(&items, &staged))
            .await
            .unwrap_or_else(|_| Err(StoreError("the store did not commit in time".into()))),
        None => Ok(Vec::new()),
    };
    if stored.is_err() {
        // Rows inserted before the failure may have been committed (a commit cut off by the
        // deadline): the clients get a 503, so these rows must go.
        let maybe = std::mem::take(&mut *staged.lock().unwrap_or_else(|p| p.into_inner()));
        revoke(spool, store, maybe).await;
    }
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
