//! The fleet store: PostgreSQL, shared by several proxies. An item is claimed with
//! `FOR UPDATE SKIP LOCKED` inside a transaction that stays open while it is sent; the
//! outcome is written in that transaction. A proxy that dies mid-replay drops its connection,
//! the transaction rolls back and the item is pending again for another proxy. Strict order
//! (`concurrency: 1`) adds a transaction-scoped advisory lock per route, so one worker in the
//! whole fleet sends a route's head item at a time.

use std::{str::FromStr, time::Duration};

use sqlx::{
    postgres::{PgConnectOptions, PgPoolOptions},
    PgPool, Postgres, Transaction,
};
use tokio::sync::OnceCell;

use super::*;

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS tidegate_spool (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        route TEXT NOT NULL,
        method TEXT NOT NULL,
        target TEXT NOT NULL,
        headers BYTEA NOT NULL,
        body BYTEA NOT NULL,
        state TEXT NOT NULL DEFAULT 'pending',
        attempts BIGINT NOT NULL DEFAULT 0,
        created_ms BIGINT NOT NULL,
        next_ms BIGINT NOT NULL,
        last_error TEXT,
        last_status BIGINT)",
    "CREATE INDEX IF NOT EXISTS tidegate_spool_queue ON tidegate_spool (route, state, id)",
    // Before this time no proxy claims the row: its writer may still revoke it. Added only
    // when missing (an ALTER takes the table's exclusive lock even when it changes nothing,
    // and would wait behind every claim in flight), and never waiting long for the lock.
    "DO $$ BEGIN
       IF NOT EXISTS (SELECT 1 FROM information_schema.columns
                      WHERE table_name = 'tidegate_spool' AND column_name = 'visible_ms'
                        AND table_schema = current_schema()) THEN
         SET LOCAL lock_timeout = '2s';
         ALTER TABLE tidegate_spool ADD COLUMN visible_ms BIGINT NOT NULL DEFAULT 0;
       END IF;
     END $$",
];

/// Columns of a listed item (PostgreSQL's `length` of a bytea is an int4).
const PG_INFO_COLUMNS: &str = "id, route, method, target, state, attempts, created_ms, next_ms, \
     last_error, last_status, octet_length(body)::bigint";

/// Serializes schema creation across proxies starting together.
const SCHEMA_LOCK: i64 = 0x7469_6465_6761_7465; // "tidegate"

/// Server-side keepalives for a session (a pooler that refuses them is logged, not fatal).
async fn keepalives(conn: &mut sqlx::PgConnection) -> Result<(), sqlx::Error> {
    for set in [
        "SET tcp_keepalives_idle = 10",
        "SET tcp_keepalives_interval = 5",
        "SET tcp_keepalives_count = 3",
    ] {
        if let Err(e) = sqlx::query(set).execute(&mut *conn).await {
            tracing::debug!(error = %e, "spool store: TCP keepalives not set");
            break;
        }
    }
    Ok(())
}

/// The PostgreSQL store.
pub struct Pg {
    pool: PgPool,
    /// Claims and outcomes: sessions with `synchronous_commit = off` (an outcome lost in a
    /// database crash means the item is sent again, which at-least-once delivery allows; it
    /// saves a WAL flush per replayed item).
    replay: PgPool,
    schema: OnceCell<()>,
}

impl Pg {
    /// A lazily connecting pool: an unreachable database fails each use, not the start.
    pub fn open(url: &str) -> Result<Pg, StoreError> {
        let opts = PgConnectOptions::from_str(url)
            .map_err(|e| StoreError(format!("spool_store: invalid PostgreSQL URL: {e}")))?
            .application_name("tidegate");
        // sqlx offers no client-side TCP keepalive; the server's probes end the session of
        // a proxy that vanished (its row locks, i.e. its claims, go to another proxy).
        // Every call is also bounded on tidegate's side. Set per session, not as startup
        // options (PgBouncer refuses those).
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(2))
            .after_connect(|conn, _| Box::pin(async move { keepalives(conn).await }))
            .connect_lazy_with(opts.clone());
        let replay = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(2))
            .after_connect(|conn, _| {
                Box::pin(async move {
                    keepalives(&mut *conn).await?;
                    sqlx::query("SET synchronous_commit = off")
                        .execute(conn)
                        .await
                        .map(|_| ())
                })
            })
            .connect_lazy_with(opts);
        Ok(Pg {
            pool,
            replay,
            schema: OnceCell::new(),
        })
    }

    /// The pool, once the table exists (created on first successful use).
    async fn ready(&self) -> Result<&PgPool, StoreError> {
        self.schema
            .get_or_try_init(|| async {
                crate::services::pg::create_schema(&self.pool, SCHEMA_LOCK, SCHEMA).await?;
                Ok::<(), StoreError>(())
            })
            .await?;
        Ok(&self.pool)
    }

    pub async fn insert(&self, items: &[NewItem], staged: &Staged) -> Result<Vec<i64>, StoreError> {
        let mut tx = self.ready().await?.begin().await?;
        // The session, so a writer that stops waiting for the commit can end it.
        let (pid,): (i32,) = sqlx::query_as("SELECT pg_backend_pid()")
            .fetch_one(&mut *tx)
            .await?;
        *staged.session.lock().unwrap_or_else(|p| p.into_inner()) = Some(pid);
        // A statement the server cannot finish in time (a lock, a stalled disk) fails there,
        // below the writer's deadline. For this transaction only.
        sqlx::query("SET LOCAL statement_timeout = '3s'")
            .execute(&mut *tx)
            .await?;
        let mut ids = Vec::with_capacity(items.len());
        for it in items {
            let (id,): (i64,) = sqlx::query_as(
                "INSERT INTO tidegate_spool
                     (route, method, target, headers, body, created_ms, next_ms, visible_ms)
                 VALUES ($1, $2, $3, $4, $5, $6, $6, $7) RETURNING id",
            )
            .bind(&it.route)
            .bind(&it.method)
            .bind(&it.target)
            .bind(&it.headers)
            .bind(&it.body[..])
            .bind(it.created_ms)
            .bind(it.visible_ms)
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
        // PostgreSQL's default synchronous_commit: the commit returns once the WAL is flushed.
        tx.commit().await?;
        Ok(ids)
    }

    pub async fn claim(&self, route: &str, strict: bool, now_ms: i64) -> Result<Next, StoreError> {
        self.ready().await?;
        let mut tx = self.replay.begin().await?;
        if strict {
            return Self::claim_head(tx, route, now_ms).await;
        }
        let row: Option<ItemRow> = sqlx::query_as(&format!(
            "SELECT {ITEM_COLUMNS} FROM tidegate_spool
             WHERE route = $1 AND state = 'pending' AND next_ms <= $2 AND visible_ms <= $2
             ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED"
        ))
        .bind(route)
        .bind(now_ms)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(r) = row {
            return Ok(claimed(r, tx));
        }
        let (due,): (Option<i64>,) = sqlx::query_as(
            "SELECT min(greatest(next_ms, visible_ms)) FROM tidegate_spool
             WHERE route = $1 AND state = 'pending'",
        )
        .bind(route)
        .fetch_one(&mut *tx)
        .await?;
        Ok(match due {
            Some(d) if d > now_ms => Next::NotDue(d),
            Some(_) => Next::Busy,
            None => Next::Empty,
        })
    }

    /// Strict order: the route's advisory lock and its head in one round trip (no head when
    /// another worker of the fleet holds the lock).
    async fn claim_head(
        mut tx: Transaction<'static, Postgres>,
        route: &str,
        now_ms: i64,
    ) -> Result<Next, StoreError> {
        // The route's lock and its head in one round trip: no head when the lock is taken.
        let row: LockedRow = sqlx::query_as(
            "WITH l AS (SELECT pg_try_advisory_xact_lock(hashtext('tidegate_spool'), hashtext($1)) AS got)
             SELECT l.got, s.id, s.route, s.method, s.target, s.headers, s.body, s.attempts,
                    s.created_ms, greatest(s.next_ms, s.visible_ms)
             FROM l LEFT JOIN LATERAL (
                 SELECT * FROM tidegate_spool
                 WHERE l.got AND route = $1 AND state = 'pending' ORDER BY id LIMIT 1 FOR UPDATE
             ) s ON TRUE",
        )
        .bind(route)
        .fetch_one(&mut *tx)
        .await?;
        Ok(match row {
            (false, ..) => Next::Busy,
            (
                true,
                Some(id),
                Some(route),
                Some(method),
                Some(target),
                Some(headers),
                Some(body),
                Some(attempts),
                Some(created),
                Some(next),
            ) => {
                let r = (
                    id, route, method, target, headers, body, attempts, created, next,
                );
                if next > now_ms {
                    Next::NotDue(next)
                } else {
                    claimed(r, tx)
                }
            }
            _ => Next::Empty,
        })
    }

    pub async fn finish(
        mut tx: Transaction<'static, Postgres>,
        id: i64,
        how: &Finish,
    ) -> Result<(), StoreError> {
        let q = outcome_query!(id, how);
        // On a `replay` session: the commit does not wait for the WAL flush.
        q.execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn counts(&self) -> Result<Vec<RouteCounts>, StoreError> {
        let rows: Vec<(String, String, i64, Option<i64>)> = sqlx::query_as(
            "SELECT route, state, count(*), min(created_ms) FROM tidegate_spool GROUP BY route, state",
        )
        .fetch_all(self.ready().await?)
        .await?;
        Ok(super::sqlite::fold_counts(rows))
    }

    pub async fn list(
        &self,
        sel: Select<'_>,
        limit: i64,
    ) -> Result<(Vec<ItemInfo>, i64), StoreError> {
        let pool = self.ready().await?;
        let (cond, binds) = where_clause(&sel, 1);
        let sql = format!(
            "SELECT {PG_INFO_COLUMNS} FROM tidegate_spool WHERE {cond} ORDER BY id LIMIT {limit}"
        );
        let q = bind_all!(sqlx::query_as::<_, InfoRow>(&sql), &binds);
        let rows = q.fetch_all(pool).await?;
        let sql = format!("SELECT count(*) FROM tidegate_spool WHERE {cond}");
        let q = bind_all!(sqlx::query_as::<_, (i64,)>(&sql), &binds);
        let (total,) = q.fetch_one(pool).await?;
        Ok((rows.into_iter().map(info).collect(), total))
    }

    pub async fn revive(&self, sel: Select<'_>, now_ms: i64) -> Result<u64, StoreError> {
        let pool = self.ready().await?;
        let sel = Select {
            state: Some("dead"),
            ..sel
        };
        let (cond, binds) = where_clause(&sel, 2);
        let sql = format!(
            "UPDATE tidegate_spool SET state = 'pending', attempts = 0, next_ms = $1 WHERE {cond}"
        );
        let q = bind_all!(sqlx::query(&sql).bind(now_ms), &binds);
        Ok(q.execute(pool).await?.rows_affected())
    }

    /// Run one statement on a `replay` session (no wait for the WAL flush: these settle
    /// nothing a crash must keep, and they must not wait behind a stalled commit).
    pub async fn execute_replay(&self, sql: &str) -> Result<(), StoreError> {
        self.ready().await?;
        sqlx::query(sql).execute(&self.replay).await?;
        Ok(())
    }

    /// Run one statement.
    pub async fn execute(&self, sql: &str) -> Result<(), StoreError> {
        sqlx::query(sql).execute(self.ready().await?).await?;
        Ok(())
    }

    /// The ids a `SELECT id …` returns.
    pub async fn ids(&self, sql: &str) -> Result<Vec<i64>, StoreError> {
        let rows: Vec<(i64,)> = sqlx::query_as(sql).fetch_all(self.ready().await?).await?;
        Ok(rows.into_iter().map(|(id,)| id).collect())
    }

    pub async fn delete(&self, sel: Select<'_>) -> Result<u64, StoreError> {
        let pool = self.ready().await?;
        let (cond, binds) = where_clause(&sel, 1);
        // Rows locked by a replay in flight (here or on another proxy) are skipped.
        let sql = format!(
            "DELETE FROM tidegate_spool WHERE id IN
             (SELECT id FROM tidegate_spool WHERE {cond} FOR UPDATE SKIP LOCKED)"
        );
        let q = bind_all!(sqlx::query(&sql), &binds);
        Ok(q.execute(pool).await?.rows_affected())
    }
}

/// The strict claim's row: whether the route's lock was taken, and its head if any.
type LockedRow = (
    bool,
    Option<i64>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<Vec<u8>>,
    Option<Vec<u8>>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
);

fn claimed(r: ItemRow, tx: Transaction<'static, Postgres>) -> Next {
    Next::Item(Claim {
        item: item(r),
        hold: Hold::Postgres(Box::new(tx)),
    })
}
