//! The durable spool: requests of a spooled route that find no backend are stored, answered
//! `202`, and replayed in arrival order once a backend is back (also after a restart).
//!
//! - [`store`]: the embedded SQLite file or PostgreSQL (fleet), behind one `Store`.
//! - [`writer`]: one task commits writes in groups (one fsync for all writes waiting) and
//!   refreshes each route's depth from the store every second.
//! - [`replay`]: per spooled route, `replay.concurrency` workers claim, send and settle
//!   items; the supervisor follows reloads.
//!
//! Delivery is at least once: an item whose answer was lost (timeout, crash after sending)
//! is sent again, with the same `Tidegate-Spool-Id` and a higher `Tidegate-Spool-Attempt`.

pub mod replay;
pub mod store;
mod writer;

use std::{
    collections::HashSet,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, OnceLock,
    },
    time::Duration,
};

use async_trait::async_trait;
use pingora::{server::ShutdownWatch, services::background::BackgroundService};
use tokio::sync::{mpsc, oneshot};

use crate::state::AppState;
use store::{NewItem, Store};

/// Header carrying the item id, on the 202 and on every replay.
pub const ID_HEADER: &str = "tidegate-spool-id";
/// Header carrying the attempt number (1 = first) on every replay.
pub const ATTEMPT_HEADER: &str = "tidegate-spool-attempt";

/// Longest wait for a write to be committed before the client gets a 503.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// The writer abandons a write not committed this long after it was queued: well before
/// the client's wait ends, so the client never gets a 503 for a row committed after it.
pub const WRITE_BUDGET: Duration = Duration::from_millis(4000);
/// Writes queued for the writer at most (beyond: 503, like a full store).
const WRITE_QUEUE: usize = 4096;

/// Why a request could not be spooled.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("the spool store is not available: {0}")]
    Unavailable(String),
    #[error("the spool's write queue is full")]
    Busy,
}

/// One write waiting for its commit.
struct WriteReq {
    item: NewItem,
    /// Not committed by then: abandoned, and the client gets a 503.
    deadline: tokio::time::Instant,
    /// The body's share of `spool_buffer`, given back when the write is over.
    _buffered: Buffered,
    reply: oneshot::Sender<Result<i64, String>>,
}

/// The spool handle shared by the proxy, the admin API and the spool service.
pub struct Spool {
    pub state: Arc<AppState>,
    store: OnceLock<Arc<Store>>,
    /// Why the store is not open (yet), for errors and status.
    open_error: Mutex<Option<String>>,
    tx: mpsc::Sender<WriteReq>,
    rx: Mutex<Option<mpsc::Receiver<WriteReq>>>,
    /// Bumped before and after every commit (odd = a commit under way): a depth refresh
    /// that saw it move is dropped.
    commits: AtomicU64,
    /// Bytes of request bodies being read or written now (bounded by `spool_buffer`).
    buffered: Arc<AtomicU64>,
    /// Ids of abandoned writes whose rows may exist until their delete lands: never replayed.
    revoked: Mutex<HashSet<i64>>,
}

impl Spool {
    /// A spool whose store the service opens when it starts.
    pub fn new(state: Arc<AppState>) -> Arc<Spool> {
        let (tx, rx) = mpsc::channel(WRITE_QUEUE);
        Arc::new(Spool {
            state,
            store: OnceLock::new(),
            open_error: Mutex::new(None),
            tx,
            rx: Mutex::new(Some(rx)),
            commits: AtomicU64::new(0),
            revoked: Mutex::new(HashSet::new()),
            buffered: Arc::default(),
        })
    }

    /// The open store, or why there is none.
    pub fn store(&self) -> Result<&Arc<Store>, SpoolError> {
        self.store.get().ok_or_else(|| {
            let why = self
                .open_error
                .lock()
                .ok()
                .and_then(|e| e.clone())
                .unwrap_or_else(|| {
                    if self.state.table().spec.spool_store.is_some() {
                        "the spool store is being opened".into()
                    } else {
                        "no spool_store is configured".into()
                    }
                });
            SpoolError::Unavailable(why)
        })
    }

    /// Store one request durably; its id once committed.
    pub async fn write(&self, item: NewItem, buffered: Buffered) -> Result<i64, SpoolError> {
        if self.store.get().is_none() {
            // Opening failed: say why at once. Otherwise the store is being opened (the
            // first seconds of the process): the write waits for it.
            if let Some(why) = self.open_error.lock().ok().and_then(|e| e.clone()) {
                return Err(SpoolError::Unavailable(why));
            }
        }
        let (reply, rx) = oneshot::channel();
        let deadline = tokio::time::Instant::now() + WRITE_BUDGET;
        self.tx
            .try_send(WriteReq {
                item,
                deadline,
                _buffered: buffered,
                reply,
            })
            .map_err(|_| SpoolError::Busy)?;
        match tokio::time::timeout(WRITE_TIMEOUT, rx).await {
            Ok(Ok(Ok(id))) => Ok(id),
            Ok(Ok(Err(e))) => Err(SpoolError::Unavailable(e)),
            Ok(Err(_)) => Err(SpoolError::Unavailable("the spool writer stopped".into())),
            Err(_) => Err(SpoolError::Unavailable(format!(
                "no commit within {}s",
                WRITE_TIMEOUT.as_secs()
            ))),
        }
    }
}

/// Bytes of the spool's memory budget held by one request until its write is over (also
/// while it waits in the writer's queue).
pub struct Buffered(Arc<AtomicU64>, u64);

impl Drop for Buffered {
    fn drop(&mut self) {
        self.0.fetch_sub(self.1, Ordering::AcqRel);
    }
}

impl Buffered {
    /// Hold at least `total` bytes, taking what is missing from the shared `limit`; `false`
    /// when it is not free (the reservation is unchanged).
    pub fn grow_to(&mut self, total: u64, limit: u64) -> bool {
        let extra = total.saturating_sub(self.1);
        if extra == 0 {
            return true;
        }
        let ok = self
            .0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                held.checked_add(extra).filter(|&n| n <= limit)
            })
            .is_ok();
        if ok {
            self.1 += extra;
        }
        ok
    }
}

impl Spool {
    /// Take `bytes` of the `limit` shared by every spooled body, before reading one; `None`
    /// when they are not free (the caller answers 503 + Retry-After).
    pub fn reserve(&self, bytes: u64, limit: u64) -> Option<Buffered> {
        // AcqRel: the sum is the admission decision; concurrent reservations must all see it.
        self.buffered
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                held.checked_add(bytes).filter(|&n| n <= limit)
            })
            .ok()
            .map(|_| Buffered(self.buffered.clone(), bytes))
    }

    /// Mark ids as revoked, for the life of the process (ids are never reused, and a
    /// revoked row must never be replayed here, even if its delete comes late).
    fn revoke(&self, ids: &[i64]) {
        let mut set = self.revoked.lock().unwrap_or_else(|p| p.into_inner());
        set.extend(ids.iter().copied());
    }

    /// Whether an item belongs to a write whose client got no 202.
    pub fn is_revoked(&self, id: i64) -> bool {
        self.revoked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&id)
    }

    /// Read every route's depth from the store now (after an operator's change).
    pub async fn refresh_now(&self) {
        if let Ok(store) = self.store() {
            writer::refresh(self, store).await;
        }
    }
}

/// Unix time in milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The spool service: opens the store, then runs the writer and the replay supervisor.
pub struct SpoolService {
    pub spool: Arc<Spool>,
}

#[async_trait]
impl BackgroundService for SpoolService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let spool = &self.spool;
        let Some(rx) = spool.rx.lock().ok().and_then(|mut r| r.take()) else {
            return;
        };
        let store = loop {
            let cfg = spool.state.table().spec.spool_store.clone();
            if let Some(cfg) = cfg {
                match Store::open(&cfg).await {
                    Ok(s) => break s,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot open the spool store; retrying in 5s");
                        if let Ok(mut slot) = spool.open_error.lock() {
                            *slot = Some(e.to_string());
                        }
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                _ = shutdown.changed() => return,
            }
        };
        tracing::info!(store = store.kind(), "spool store open");
        // Set once: this is the only place that sets it, and the service starts once.
        let _ = spool.store.set(store.clone());
        tokio::spawn(writer::run(spool.clone(), store.clone(), rx));
        tokio::spawn(writer::refresher(spool.clone(), store.clone()));
        replay::supervise(spool.clone(), store, shutdown).await;
    }
}
