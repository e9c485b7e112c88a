//! The embedded store: one SQLite file in WAL mode with `synchronous = FULL`, so a commit
//! is on disk (the WAL fsynced) before the client hears 202. Claims are this process's own
//! (no other process shares the file).

use std::{
    collections::HashSet,
    path::Path,
    sync::{Arc, Mutex},
    time::Duration,
};

use sqlx::{
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
    SqlitePool,
};

use super::*;

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS tidegate_spool (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        route TEXT NOT NULL,
        method TEXT NOT NULL,
        target TEXT NOT NULL,
        headers BLOB NOT NULL,
        body BLOB NOT NULL,
        state TEXT NOT NULL DEFAULT 'pending',
        attempts INTEGER NOT NULL DEFAULT 0,
        created_ms INTEGER NOT NULL,
        next_ms INTEGER NOT NULL,
        last_error TEXT,
        last_status INTEGER)",
    "CREATE INDEX IF NOT EXISTS tidegate_spool_queue ON tidegate_spool (route, state, id)",
];

type ClaimSet = Arc<Mutex<HashSet<i64>>>;

/// The embedded store.
pub struct Sqlite {
    pool: SqlitePool,
    /// Replay outcomes (`synchronous = NORMAL`).
    outcomes: SqlitePool,
    claimed: ClaimSet,
}

/// An id in the claim set; removed on drop.
pub struct Claimed {
    set: ClaimSet,
    id: i64,
}

impl Drop for Claimed {
    fn drop(&mut self) {
        lock(&self.set).remove(&self.id);
    }
}

fn lock(set: &ClaimSet) -> std::sync::MutexGuard<'_, HashSet<i64>> {
    // Single inserts and removes cannot leave the set inconsistent after a panic.
    set.lock().unwrap_or_else(|p| p.into_inner())
}

/// The database holds request bodies: create it mode 0600 (SQLite gives its `-wal` and
/// `-shm` files the database's mode) and tighten files an older version left readable.
fn private_db(path: &Path) -> Result<(), StoreError> {
    let err = |p: &Path, e: std::io::Error| StoreError(format!("{}: {e}", p.display()));
    match crate::services::persist::create_private(path) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(err(path, e)),
    }
    for suffix in ["", "-wal", "-shm"] {
        let mut name = path.as_os_str().to_os_string();
        name.push(suffix);
        let p = std::path::PathBuf::from(name);
        if crate::services::persist::tighten(&p).map_err(|e| err(&p, e))? {
            tracing::warn!(file = %p.display(), "spool file was readable by others; now mode 0600");
        }
    }
    Ok(())
}

impl Sqlite {
    /// Open (creating) the file and its table.
    pub async fn open(path: &Path) -> Result<Sqlite, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError(format!("{}: {e}", dir.display())))?;
        }
        private_db(path)?;
        let opts = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: every commit syncs the WAL; a 202 is never answered for an item a power
            // cut could lose.
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(opts.clone())
            .await
            .map_err(|e| StoreError(format!("{}: {e}", path.display())))?;
        for stmt in SCHEMA {
            sqlx::query(stmt).execute(&pool).await?;
        }
        // Outcomes of replays commit without their own WAL sync (the next stored item's
        // commit syncs them): one lost in a power cut means the item is sent again, which
        // at-least-once delivery allows.
        let outcomes = SqlitePoolOptions::new()
            .max_connections(2)
            .connect_with(opts.synchronous(SqliteSynchronous::Normal))
            .await
            .map_err(|e| StoreError(format!("{}: {e}", path.display())))?;
        Ok(Sqlite {
            pool,
            outcomes,
            claimed: ClaimSet::default(),
        })
    }

    pub async fn insert(&self, items: &[NewItem], staged: &Staged) -> Result<Vec<i64>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let mut ids = Vec::with_capacity(items.len());
        for it in items {
            let (id,): (i64,) = sqlx::query_as(
                "INSERT INTO tidegate_spool (route, method, target, headers, body, created_ms, next_ms)
                 VALUES ($1, $2, $3, $4, $5, $6, $6) RETURNING id",
            )
            .bind(&it.route)
            .bind(&it.method)
            .bind(&it.target)
            .bind(&it.headers)
            .bind(&it.body[..])
            .bind(it.created_ms)
            .fetch_one(&mut *tx)
            .await?;
            ids.push(id);
            // Known before the commit: if the caller gives up during it, it deletes these.
            staged
                .ids
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(id);
        }
        tx.commit().await?;
        Ok(ids)
    }

    pub async fn claim(&self, route: &str, strict: bool, now_ms: i64) -> Result<Next, StoreError> {
        // Candidates: the head only (strict), or enough due items to pass the claimed ones.
        let skip = if strict {
            0
        } else {
            lock(&self.claimed).len() as i64
        };
        // Strict: the head whatever its due time; otherwise due items only.
        let due_by = if strict { i64::MAX } else { now_ms };
        let rows: Vec<ItemRow> = sqlx::query_as(&format!(
            "SELECT {ITEM_COLUMNS} FROM tidegate_spool
             WHERE route = $1 AND state = 'pending' AND next_ms <= $3 ORDER BY id LIMIT $2"
        ))
        .bind(route)
        .bind(skip + 1)
        .bind(due_by)
        .fetch_all(&self.pool)
        .await?;
        if rows.is_empty() && strict {
            return Ok(Next::Empty);
        }
        if let Some(next) = self.pick(rows, strict, now_ms) {
            return Ok(next);
        }
        // Every candidate is claimed or waiting: the earliest due time of the rest.
        let (due,): (Option<i64>,) = sqlx::query_as(
            "SELECT min(next_ms) FROM tidegate_spool WHERE route = $1 AND state = 'pending'",
        )
        .bind(route)
        .fetch_one(&self.pool)
        .await?;
        Ok(match due {
            Some(d) if d > now_ms => Next::NotDue(d),
            Some(_) => Next::Busy,
            None => Next::Empty,
        })
    }

    /// The first candidate neither claimed nor waiting, claimed now; `None` when every
    /// candidate is (strict: the head decides).
    fn pick(&self, rows: Vec<ItemRow>, strict: bool, now_ms: i64) -> Option<Next> {
        let mut set = lock(&self.claimed);
        for row in rows {
            if set.contains(&row.0) {
                if strict {
                    return Some(Next::Busy);
                }
                continue;
            }
            if row.8 > now_ms {
                if strict {
                    return Some(Next::NotDue(row.8));
                }
                continue;
            }
            set.insert(row.0);
            let claimed = Claimed {
                set: self.claimed.clone(),
                id: row.0,
            };
            return Some(Next::Item(Claim {
                item: item(row),
                hold: Hold::Sqlite(claimed),
            }));
        }
        strict.then_some(Next::Busy)
    }

    pub async fn finish(&self, claim: Claimed, id: i64, how: &Finish) -> Result<(), StoreError> {
        finish(&self.outcomes, id, how).await?;
        drop(claim);
        Ok(())
    }

    pub async fn counts(&self) -> Result<Vec<RouteCounts>, StoreError> {
        let rows: Vec<(String, String, i64, Option<i64>)> = sqlx::query_as(
            "SELECT route, state, count(*), min(created_ms) FROM tidegate_spool GROUP BY route, state",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(fold_counts(rows))
    }

    pub async fn list(
        &self,
        sel: Select<'_>,
        limit: i64,
    ) -> Result<(Vec<ItemInfo>, i64), StoreError> {
        let (cond, binds) = where_clause(&sel, 1);
        let sql = format!(
            "SELECT {INFO_COLUMNS} FROM tidegate_spool WHERE {cond} ORDER BY id LIMIT {limit}"
        );
        let q = bind_all!(sqlx::query_as::<_, InfoRow>(&sql), &binds);
        let rows = q.fetch_all(&self.pool).await?;
        let sql = format!("SELECT count(*) FROM tidegate_spool WHERE {cond}");
        let q = bind_all!(sqlx::query_as::<_, (i64,)>(&sql), &binds);
        let (total,) = q.fetch_one(&self.pool).await?;
        Ok((rows.into_iter().map(info).collect(), total))
    }

    pub async fn revive(&self, sel: Select<'_>, now_ms: i64) -> Result<u64, StoreError> {
        let sel = Select {
            state: Some("dead"),
            ..sel
        };
        let (cond, binds) = where_clause(&sel, 2);
        let sql = format!(
            "UPDATE tidegate_spool SET state = 'pending', attempts = 0, next_ms = $1 WHERE {cond}"
        );
        let q = bind_all!(sqlx::query(&sql).bind(now_ms), &binds);
        Ok(q.execute(&self.pool).await?.rows_affected())
    }

    /// Run one statement on the write pool.
    pub async fn execute(&self, sql: &str) -> Result<(), StoreError> {
        sqlx::query(sql).execute(&self.pool).await?;
        Ok(())
    }

    /// The ids a `SELECT id …` returns.
    pub async fn ids(&self, sql: &str) -> Result<Vec<i64>, StoreError> {
        let rows: Vec<(i64,)> = sqlx::query_as(sql).fetch_all(&self.pool).await?;
        Ok(rows.into_iter().map(|(id,)| id).collect())
    }

    pub async fn delete(&self, sel: Select<'_>) -> Result<u64, StoreError> {
        let (cond, binds) = where_clause(&sel, 1);
        let claimed: Vec<i64> = lock(&self.claimed).iter().copied().collect();
        let skip = if claimed.is_empty() {
            String::new()
        } else {
            let ids: Vec<String> = claimed.iter().map(i64::to_string).collect();
            format!(" AND id NOT IN ({})", ids.join(","))
        };
        let sql = format!("DELETE FROM tidegate_spool WHERE {cond}{skip}");
        let q = bind_all!(sqlx::query(&sql), &binds);
        Ok(q.execute(&self.pool).await?.rows_affected())
    }
}

/// Record an attempt's end (outside any claim transaction: SQLite claims are in memory).
async fn finish(pool: &SqlitePool, id: i64, how: &Finish) -> Result<(), StoreError> {
    let q = outcome_query!(id, how);
    q.execute(pool).await?;
    Ok(())
}

/// `(route, state, count, oldest)` rows → one entry per route.
pub(super) fn fold_counts(rows: Vec<(String, String, i64, Option<i64>)>) -> Vec<RouteCounts> {
    let mut out: Vec<RouteCounts> = Vec::new();
    for (route, state, n, oldest) in rows {
        let i = match out.iter().position(|c| c.route == route) {
            Some(i) => i,
            None => {
                out.push(RouteCounts {
                    route,
                    ..Default::default()
                });
                out.len() - 1
            }
        };
        let c = &mut out[i];
        let n = n.max(0) as u64;
        match state.as_str() {
            "pending" => {
                c.pending = n;
                c.oldest_ms = oldest;
            }
            _ => c.dead += n,
        }
    }
    out.sort_by(|a, b| a.route.cmp(&b.route));
    out
}
