//! Where spooled requests live: an embedded SQLite file (one proxy) or PostgreSQL (a fleet).
//!
//! Both keep one table, `tidegate_spool`, ordered by id (= arrival order). An item is
//! claimed before it is sent: in SQLite by this process's claim set, in PostgreSQL by a row
//! lock held in an open transaction, so a proxy killed mid-replay leaves its item pending for
//! another (the transaction rolls back with the connection). With `concurrency: 1` a route
//! is replayed by one worker of one proxy at a time (a PostgreSQL advisory lock) and only
//! its oldest item is ever sent: strict order.

/// Bind a selection's values ([`where_clause`]) to a query, in order.
macro_rules! bind_all {
    ($q:expr, $binds:expr) => {{
        let mut q = $q;
        for b in $binds {
            q = match b {
                Bind::Int(i) => q.bind(*i),
                Bind::Text(t) => q.bind(t.clone()),
            };
        }
        q
    }};
}

/// The statement recording how an attempt ended: the same SQL for both stores.
macro_rules! outcome_query {
    ($id:expr, $how:expr) => {
        match $how {
            Finish::Delivered => {
                sqlx::query("DELETE FROM tidegate_spool WHERE id = $1").bind($id)
            }
            Finish::Retry {
                attempts,
                next_ms,
                error,
                status,
            } => sqlx::query(
                "UPDATE tidegate_spool SET attempts = $2, next_ms = $3, last_error = $4, last_status = $5
                 WHERE id = $1",
            )
            .bind($id)
            .bind(*attempts)
            .bind(*next_ms)
            .bind(error.clone())
            .bind(*status),
            Finish::Dead {
                attempts,
                error,
                status,
            } => sqlx::query(
                "UPDATE tidegate_spool SET state = 'dead', attempts = $2, last_error = $3, last_status = $4
                 WHERE id = $1",
            )
            .bind($id)
            .bind(*attempts)
            .bind(error.clone())
            .bind(*status),
        }
    };
}

mod postgres;
mod sqlite;

use std::sync::Arc;

use crate::config::spec::SpoolStore;

/// A request to store.
#[derive(Debug, Clone)]
pub struct NewItem {
    pub route: String,
    pub method: String,
    /// Path and query, as the backend gets them.
    pub target: String,
    /// `name: value\r\n` lines (hop-by-hop headers removed, X-Forwarded-* added).
    pub headers: Vec<u8>,
    pub body: bytes::Bytes,
    pub created_ms: i64,
    /// No proxy claims it before this time (ms since the epoch): its writer's deadline and
    /// a margin, while the writer may still revoke it (a commit whose answer came too late:
    /// its sender got a 503). Cleared as soon as the sender got its 202.
    pub visible_ms: i64,
}

/// What an insert has done so far, for a writer that stops waiting for it: the ids of the
/// rows inserted (they may be committed) and the database session doing it (to end it).
#[derive(Debug, Default)]
pub struct Staged {
    pub ids: std::sync::Mutex<Vec<i64>>,
    pub session: std::sync::Mutex<Option<i32>>,
}

impl Staged {
    pub fn ids(&self) -> Vec<i64> {
        self.ids.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn session(&self) -> Option<i32> {
        *self.session.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A stored request being replayed.
#[derive(Debug, Clone)]
pub struct Item {
    pub id: i64,
    pub route: String,
    pub method: String,
    pub target: String,
    pub headers: Vec<u8>,
    pub body: Vec<u8>,
    /// Attempts finished before this one.
    pub attempts: i64,
    pub created_ms: i64,
}

/// An item as listed for an operator (no body).
#[derive(Debug, Clone)]
pub struct ItemInfo {
    pub id: i64,
    pub route: String,
    pub method: String,
    pub target: String,
    pub state: String,
    pub attempts: i64,
    pub created_ms: i64,
    pub next_ms: i64,
    pub last_error: Option<String>,
    pub last_status: Option<i64>,
    pub body_bytes: i64,
}

/// Row shape shared by both stores' list queries.
type InfoRow = (
    i64,
    String,
    String,
    String,
    String,
    i64,
    i64,
    i64,
    Option<String>,
    Option<i64>,
    i64,
);

fn info(
    (
        id,
        route,
        method,
        target,
        state,
        attempts,
        created_ms,
        next_ms,
        last_error,
        last_status,
        body_bytes,
    ): InfoRow,
) -> ItemInfo {
    ItemInfo {
        id,
        route,
        method,
        target,
        state,
        attempts,
        created_ms,
        next_ms,
        last_error,
        last_status,
        body_bytes,
    }
}

/// Row shape of a claimed item.
type ItemRow = (i64, String, String, String, Vec<u8>, Vec<u8>, i64, i64, i64);

fn item((id, route, method, target, headers, body, attempts, created_ms, _next): ItemRow) -> Item {
    Item {
        id,
        route,
        method,
        target,
        headers,
        body,
        attempts,
        created_ms,
    }
}

/// Counts of one route.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteCounts {
    pub route: String,
    pub pending: u64,
    pub dead: u64,
    /// Creation time (unix ms) of the oldest pending item.
    pub oldest_ms: Option<i64>,
}

/// What a finished attempt leaves in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finish {
    /// Delivered: removed.
    Delivered,
    /// Try again at `next_ms`.
    Retry {
        attempts: i64,
        next_ms: i64,
        error: String,
        status: Option<i64>,
    },
    /// Kept for an operator.
    Dead {
        attempts: i64,
        error: String,
        status: Option<i64>,
    },
}

/// The next item of a route, or why there is none.
pub enum Next {
    Item(Claim),
    /// The head (or every item) waits for its back-off until this time (unix ms).
    NotDue(i64),
    Empty,
    /// Another worker (or proxy) holds the route or its head item.
    Busy,
}

/// A claimed item; dropping it without [`Store::finish`] leaves the item pending.
pub struct Claim {
    pub item: Item,
    hold: Hold,
}

enum Hold {
    Sqlite(sqlite::Claimed),
    Postgres(Box<sqlx::Transaction<'static, sqlx::Postgres>>),
}

/// Items to change with an operator call: one id, or all (of a route).
#[derive(Debug, Clone, Copy)]
pub struct Select<'a> {
    pub id: Option<i64>,
    pub route: Option<&'a str>,
    pub state: Option<&'a str>,
}

/// A store failure (the message never holds the URL).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StoreError(pub String);

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        // sqlx's messages name hosts and errors, never the password.
        StoreError(e.to_string())
    }
}

/// The configured store.
pub enum Store {
    Sqlite(sqlite::Sqlite),
    Postgres(postgres::Pg),
}

impl Store {
    /// Open the store (PostgreSQL connects lazily: an unreachable database is an error on
    /// use, not at start).
    pub async fn open(cfg: &SpoolStore) -> Result<Arc<Store>, StoreError> {
        Ok(Arc::new(match cfg {
            SpoolStore::Embedded(path) => Store::Sqlite(sqlite::Sqlite::open(path).await?),
            SpoolStore::Postgres(url) => Store::Postgres(postgres::Pg::open(&url.0)?),
        }))
    }

    /// Which kind of store this is (for logs and status).
    pub fn kind(&self) -> &'static str {
        match self {
            Store::Sqlite(_) => "embedded",
            Store::Postgres(_) => "postgres",
        }
    }

    /// Store `items` in one durable transaction; their ids in order.
    /// Store `items` in one transaction; their ids. Each id is pushed to `staged` as soon as
    /// its row is inserted, before the commit: a caller that stops waiting (drops this
    /// future) knows which rows may have been committed.
    pub async fn insert(&self, items: &[NewItem], staged: &Staged) -> Result<Vec<i64>, StoreError> {
        match self {
            Store::Sqlite(s) => s.insert(items, staged).await,
            Store::Postgres(p) => p.insert(items, staged).await,
        }
    }

    /// Claim the next item of `route` due at `now_ms`. `strict`: only the oldest pending one.
    pub async fn claim(&self, route: &str, strict: bool, now_ms: i64) -> Result<Next, StoreError> {
        match self {
            Store::Sqlite(s) => s.claim(route, strict, now_ms).await,
            Store::Postgres(p) => p.claim(route, strict, now_ms).await,
        }
    }

    /// Record how a claimed item's attempt ended.
    pub async fn finish(&self, claim: Claim, how: &Finish) -> Result<(), StoreError> {
        match (self, claim.hold) {
            (Store::Sqlite(s), Hold::Sqlite(c)) => s.finish(c, claim.item.id, how).await,
            (Store::Postgres(_), Hold::Postgres(tx)) => {
                postgres::Pg::finish(*tx, claim.item.id, how).await
            }
            _ => Err(StoreError("claim from another store".into())),
        }
    }

    /// Pending and dead counts by route.
    pub async fn counts(&self) -> Result<Vec<RouteCounts>, StoreError> {
        match self {
            Store::Sqlite(s) => s.counts().await,
            Store::Postgres(p) => p.counts().await,
        }
    }

    /// Items matching `sel`, oldest first, at most `limit`; and how many match in all.
    pub async fn list(
        &self,
        sel: Select<'_>,
        limit: i64,
    ) -> Result<(Vec<ItemInfo>, i64), StoreError> {
        match self {
            Store::Sqlite(s) => s.list(sel, limit).await,
            Store::Postgres(p) => p.list(sel, limit).await,
        }
    }

    /// Dead items matching `sel` become pending again (attempts from zero, due now).
    pub async fn revive(&self, sel: Select<'_>, now_ms: i64) -> Result<u64, StoreError> {
        match self {
            Store::Sqlite(s) => s.revive(sel, now_ms).await,
            Store::Postgres(p) => p.revive(sel, now_ms).await,
        }
    }

    /// Delete items matching `sel` (an item being replayed is left alone).
    pub async fn delete(&self, sel: Select<'_>) -> Result<u64, StoreError> {
        match self {
            Store::Sqlite(s) => s.delete(sel).await,
            Store::Postgres(p) => p.delete(sel).await,
        }
    }

    /// Delete these items, claimed or not (revoked writes).
    /// The rows' senders got their 202: replay may take them at once.
    pub async fn make_visible(&self, ids: &[i64]) -> Result<(), StoreError> {
        match self {
            // One process: its replay knows what it revoked.
            Store::Sqlite(_) => Ok(()),
            Store::Postgres(p) => {
                let sql = format!(
                    "UPDATE tidegate_spool SET visible_ms = 0 WHERE id IN ({})",
                    id_list(ids)
                );
                p.execute_replay(&sql).await
            }
        }
    }

    /// End the database session of an insert that does not finish (a commit whose answer
    /// never comes): its outcome is then settled, one way or the other.
    pub async fn end_session(&self, session: i32) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(_) => Ok(()),
            Store::Postgres(p) => {
                // With a timeout (PostgreSQL 14+) it returns once the session is gone, so
                // its commit is settled before the rows are looked for.
                let waited = format!("SELECT pg_terminate_backend({session}, 5000)");
                match p.execute_replay(&waited).await {
                    Ok(()) => Ok(()),
                    Err(_) => {
                        p.execute_replay(&format!("SELECT pg_terminate_backend({session})"))
                            .await
                    }
                }
            }
        }
    }

    pub async fn delete_ids(&self, ids: &[i64]) -> Result<(), StoreError> {
        let sql = format!("DELETE FROM tidegate_spool WHERE id IN ({})", id_list(ids));
        match self {
            Store::Sqlite(s) => s.execute(&sql).await,
            Store::Postgres(p) => p.execute(&sql).await,
        }
    }

    /// Which of these items are still stored.
    pub async fn existing(&self, ids: &[i64]) -> Result<Vec<i64>, StoreError> {
        let sql = format!(
            "SELECT id FROM tidegate_spool WHERE id IN ({})",
            id_list(ids)
        );
        match self {
            Store::Sqlite(s) => s.ids(&sql).await,
            Store::Postgres(p) => p.ids(&sql).await,
        }
    }
}

/// `1,2,3` (integers only: nothing to quote).
fn id_list(ids: &[i64]) -> String {
    let v: Vec<String> = ids.iter().map(i64::to_string).collect();
    if v.is_empty() {
        "NULL".into()
    } else {
        v.join(",")
    }
}

/// The `WHERE` clause for a selection, with `$n` placeholders from `first`: `(sql, binds)`.
fn where_clause(sel: &Select<'_>, first: usize) -> (String, Vec<Bind>) {
    let mut parts = Vec::new();
    let mut binds = Vec::new();
    let mut n = first;
    if let Some(id) = sel.id {
        parts.push(format!("id = ${n}"));
        binds.push(Bind::Int(id));
        n += 1;
    }
    if let Some(r) = sel.route {
        parts.push(format!("route = ${n}"));
        binds.push(Bind::Text(r.to_string()));
        n += 1;
    }
    if let Some(s) = sel.state {
        parts.push(format!("state = ${n}"));
        binds.push(Bind::Text(s.to_string()));
    }
    if parts.is_empty() {
        return ("TRUE".into(), binds);
    }
    (parts.join(" AND "), binds)
}

/// A bound value of a dynamic `WHERE`.
#[derive(Debug, Clone)]
enum Bind {
    Int(i64),
    Text(String),
}

/// Columns of a listed item.
const INFO_COLUMNS: &str = "id, route, method, target, state, attempts, created_ms, next_ms, \
     last_error, last_status, length(body)";
/// Columns of a claimed item.
const ITEM_COLUMNS: &str =
    "id, route, method, target, headers, body, attempts, created_ms, next_ms";
