//! Group commit: one task takes every write waiting, stores them in one transaction (one
//! fsync), then answers each. Another refreshes the routes' depths from the store every
//! second; a refresh that overlapped a commit is dropped (its counts may miss the fresh
//! items, and a missing item would let a new request overtake it).
//!
//! A 503 means nothing was kept. Every write has a deadline below its client's wait; the
//! insert runs in a task of its own, and a group not committed by its earliest deadline is
//! answered 503 at once while that task is left to finish. Its rows (their ids are known
//! before the commit) are then revoked: never replayed by this process, deleted, and
//! checked gone, by a reaper in the background, so a stalled store never holds later
//! writes. A committed row whose client had left (it got no 202 and will send again) is
//! revoked the same way.
//!
//! Across proxies and restarts: each row is stored invisible to every replayer until its
//! writer's deadline plus [`REVOKE_MARGIN`] (`visible_ms`), and made visible at once when its
//! sender got its 202. A row whose sender got a 503 stays invisible while its writer's
//! reaper settles it: the insert is waited for at most [`SETTLE`] past the deadline, then its
//! database session is ended (its commit is then either done or undone), and the rows
//! found are deleted.

use std::{
    sync::{atomic::Ordering, Arc},
    time::Duration,
};

use tokio::{sync::mpsc, task::JoinHandle, time::Instant};

use super::{
    store::{Staged, Store, StoreError},
    Spool, WriteReq,
};

/// Writes committed together at most.
const GROUP: usize = 256;
/// How often depths are read from the store (other proxies of a fleet write there too).
const REFRESH: Duration = Duration::from_secs(1);
/// A write with less time than this before its deadline is answered 503 at once (it would
/// cut its whole group's commit short).
const MIN_LEFT: Duration = Duration::from_millis(500);
/// Time limit of one delete or check of revoked rows.
const REVOKE_CALL: Duration = Duration::from_secs(2);
/// How long past the writer's deadline a row stays invisible to every replayer (unless its
/// sender got its 202): the time its writer has to revoke it.
pub const REVOKE_MARGIN: Duration = Duration::from_secs(60);
/// How long the reaper waits for an insert past its deadline before ending its session.
const SETTLE: Duration = Duration::from_secs(3);

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
        let soon = Instant::now() + MIN_LEFT;
        let (group, late): (Vec<_>, Vec<_>) = group
            .into_iter()
            .filter(|r| !r.reply.is_closed())
            .partition(|r| r.deadline > soon);
        for r in late {
            let _ = r.reply.send(Err("no time left to commit".into()));
        }
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

async fn commit(spool: &Arc<Spool>, store: &Arc<Store>, group: Vec<WriteReq>) {
    let deadline = group
        .iter()
        .map(|r| r.deadline)
        .min()
        .unwrap_or_else(Instant::now);
    let visible_ms = super::now_ms()
        + (deadline.saturating_duration_since(Instant::now()) + REVOKE_MARGIN).as_millis() as i64;
    let items: Vec<_> = group
        .iter()
        .map(|r| super::store::NewItem {
            visible_ms,
            ..r.item.clone()
        })
        .collect();
    let staged = Arc::new(Staged::default());
    let mut task: JoinHandle<Result<Vec<i64>, StoreError>> = tokio::spawn({
        let (store, staged) = (store.clone(), staged.clone());
        async move { store.insert(&items, &staged).await }
    });
    // Before and after: a refresh reading in between is dropped.
    spool.commits.fetch_add(1, Ordering::AcqRel);
    let outcome = tokio::time::timeout_at(deadline, &mut task).await;
    spool.commits.fetch_add(1, Ordering::AcqRel);
    let ids = match outcome {
        Ok(Ok(Ok(ids))) => ids,
        not_committed => {
            let why = match not_committed {
                Ok(Ok(Err(e))) => e.to_string(),
                Ok(Err(e)) => format!("the store task failed: {e}"),
                _ => "the store did not commit in time".to_string(),
            };
            tracing::error!(error = %why, items = group.len(), "spool write failed; answering 503");
            for req in group {
                let _ = req.reply.send(Err(why.clone()));
            }
            // Rows inserted before the failure may be committed (a commit cut off by the
            // deadline): once the insert is over, they go.
            let unfinished = (!task.is_finished()).then_some(task);
            tokio::spawn(reap(spool.clone(), store.clone(), staged, unfinished));
            return;
        }
    };
    answer(spool, store, group, ids);
}

/// Answer each committed write with its id; a client that left meanwhile gets its row
/// revoked.
fn answer(spool: &Arc<Spool>, store: &Arc<Store>, group: Vec<WriteReq>, ids: Vec<i64>) {
    let mut gone = Vec::new();
    let mut answered = Vec::new();
    for (req, id) in group.into_iter().zip(ids) {
        let (route, created, method, target, bytes) = (
            req.item.route.clone(),
            req.item.created_ms.max(0) as u64,
            req.item.method.clone(),
            req.item.target.clone(),
            req.item.body.len(),
        );
        if req.reply.send(Ok(id)).is_err() {
            // The client left before its 202: it will send again, so this copy must go.
            gone.push(id);
            continue;
        }
        answered.push(id);
        spool.state.stats.spool_depth(&route).committed(created);
        tracing::info!(route = %route, id, method = %method, path = %target, bytes, "request spooled");
    }
    if !answered.is_empty() {
        // Their senders have their 202: replay takes them now, not at the margin's end (if
        // this fails, they are replayed once the margin has passed).
        let store = store.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(REVOKE_CALL, store.make_visible(&answered)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, items = answered.len(), "spool: items not made visible yet; they are replayed once their margin has passed"),
                Err(_) => tracing::warn!(items = answered.len(), "spool: items not made visible yet; they are replayed once their margin has passed"),
            }
        });
    }
    if !gone.is_empty() {
        tracing::warn!(
            items = gone.len(),
            "spool: clients left before their 202; their items are revoked"
        );
        let staged = Staged::default();
        *staged.ids.lock().unwrap_or_else(|p| p.into_inner()) = gone;
        tokio::spawn(reap(spool.clone(), store.clone(), Arc::new(staged), None));
    }
}

/// Revoke the rows in `staged` once `insert` (if still running) is over: they are never
/// replayed here, and are deleted until the store confirms they are gone. An insert still
/// running [`SETTLE`] later has its database session ended first (a commit whose answer
/// does not come is then settled either way).
// Long: settle the insert (wait, end its session), then delete until the store agrees.
async fn reap(
    spool: Arc<Spool>,
    store: Arc<Store>,
    staged: Arc<Staged>,
    insert: Option<JoinHandle<Result<Vec<i64>, StoreError>>>,
) {
    spool.revoke(&staged.ids());
    if let Some(mut t) = insert {
        // Its commit may still land: wait for the insert to be over, for a while.
        if tokio::time::timeout(SETTLE, &mut t).await.is_err() {
            match staged.session() {
                Some(pid) => {
                    tracing::warn!(session = pid, "spool: an insert past its deadline does not finish; ending its database session");
                    match tokio::time::timeout(REVOKE_CALL, store.end_session(pid)).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => {
                            tracing::warn!(error = %e, "spool: could not end the insert's session")
                        }
                        Err(_) => {
                            tracing::warn!("spool: could not end the insert's session in time")
                        }
                    }
                }
                None => tracing::warn!("spool: an insert past its deadline does not finish"),
            }
            // Ended (or unreachable): either way, no more waiting on it.
            let _ = tokio::time::timeout(REVOKE_CALL, &mut t).await;
            t.abort();
        }
        spool.revoke(&staged.ids());
    }
    let ids = staged.ids();
    if ids.is_empty() {
        return;
    }
    let mut wait = Duration::from_millis(100);
    loop {
        let gone = async {
            store.delete_ids(&ids).await?;
            store.existing(&ids).await
        };
        match tokio::time::timeout(REVOKE_CALL, gone).await {
            Ok(Ok(left)) if left.is_empty() => break,
            Ok(Ok(left)) => tracing::warn!(
                items = left.len(),
                "spool: revoked items still stored; deleting again"
            ),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "spool: cannot delete revoked items yet; retrying")
            }
            Err(_) => tracing::warn!(
                "spool: the store does not answer; retrying the delete of revoked items"
            ),
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(30));
    }
    tracing::warn!(
        items = ids.len(),
        "spool: revoked items deleted (their senders got no 202)"
    );
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
