//! The `control_store`'s tables and the statements on them. Every call is bounded by
//! [`OP_TIMEOUT`]: a store behind a cut network fails fast instead of hanging a caller.
//!
//! - `tidegate_control (key, value, rev, updated_by, updated_at)`: the shared overrides,
//!   one row per drain, split, ramp, members list, checkpoint and the maintenance switch.
//! - `tidegate_control_meta (id = 1, rev, epoch)`: the revision; every write takes its row
//!   lock (so writes are serialized), bumps it and notifies `tidegate_control` with
//!   `REV NODE` as payload, all in one transaction. `epoch` is made once per database: a
//!   revision that goes backwards or an epoch that changes is a restored or replaced
//!   database (see `Run::regression`).
//!
//! What is read is capped like an API body: at most [`MAX_ROWS`] rows of at most
//! [`MAX_VALUE`] bytes each; more is an error (the last state is kept), never memory.
//! - `tidegate_heartbeats (node, instance, …, heartbeat)`: each proxy process's heartbeat
//!   and counts, one row per process (`instance`): during a graceful upgrade the old and the
//!   new process both count, and two proxies under one name do not hide each other.
//! - `tidegate_leases (name, holder, expires_at)`: the ramp stepper's lease (by the
//!   database's clock).
//! - `tidegate_ramp_steps (route, ramp_id, step, node, at)`: every ramp step, once (its key
//!   refuses a second).

use std::{collections::BTreeMap, future::Future, str::FromStr, time::Duration};

use serde_json::Value;
use sqlx::{
    postgres::{PgConnectOptions, PgListener, PgPoolOptions},
    PgPool, Postgres, Row, Transaction,
};

/// Longest any statement (or connection) may take.
pub const OP_TIMEOUT: Duration = Duration::from_secs(2);
pub use super::notes::{note_rev, Notes};

/// The notification channel.
pub const CHANNEL: &str = "tidegate_control";
/// Most rows read from one table (overrides or heartbeats).
pub const MAX_ROWS: i64 = 10_000;
/// Largest value (JSON) of one row, in bytes: the admin API's body limit.
pub const MAX_VALUE: i32 = 1 << 20;
/// Most bytes of all heartbeat rows together (read four times a second).
pub const MAX_BEATS_BYTES: i64 = 16 << 20;

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS tidegate_control (
        key text PRIMARY KEY, value jsonb NOT NULL, rev bigint NOT NULL,
        updated_by text NOT NULL, updated_at timestamptz NOT NULL DEFAULT now())",
    "CREATE TABLE IF NOT EXISTS tidegate_control_meta (id int PRIMARY KEY, rev bigint NOT NULL)",
    "INSERT INTO tidegate_control_meta (id, rev) VALUES (1, 0) ON CONFLICT DO NOTHING",
    // The database's identity: a new (or re-created) database gets a new one, so a proxy
    // notices it is not the store whose revisions it applied.
    "ALTER TABLE tidegate_control_meta ADD COLUMN IF NOT EXISTS epoch text",
    "UPDATE tidegate_control_meta SET epoch = md5(random()::text || clock_timestamp()::text)
     WHERE epoch IS NULL",
    "CREATE TABLE IF NOT EXISTS tidegate_heartbeats (
        node text NOT NULL, instance text NOT NULL, admin text NOT NULL, rev bigint NOT NULL,
        counts jsonb NOT NULL, outcomes jsonb NOT NULL,
        started_at timestamptz NOT NULL DEFAULT now(), heartbeat timestamptz NOT NULL,
        PRIMARY KEY (node, instance))",
    "CREATE TABLE IF NOT EXISTS tidegate_leases (
        name text PRIMARY KEY, holder text NOT NULL, expires_at timestamptz NOT NULL)",
    "CREATE TABLE IF NOT EXISTS tidegate_ramp_steps (
        route text NOT NULL, ramp_id text NOT NULL, step int NOT NULL, node text NOT NULL,
        at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (route, ramp_id, step))",
];

/// Serializes schema creation across a fleet starting at once.
const SCHEMA_LOCK: i64 = 0x7469_6465_6374_726c;

/// The shared state as read: revision and rows.
pub type Rows = BTreeMap<String, Value>;

/// One change: a key and its new value (`None`: removed).
pub type Change = (String, Option<Value>);

/// This process as its heartbeat row names it.
pub struct Me<'a> {
    pub node: &'a str,
    /// Unique per process start.
    pub instance: &'a str,
    pub admin: &'a str,
    pub rev: i64,
    pub ttl: Duration,
}

/// One heartbeat row as read.
pub struct Beat {
    pub node: String,
    pub admin: String,
    pub rev: i64,
    pub counts: Value,
    pub outcomes: Value,
    pub age: Duration,
    pub instance: String,
}

/// A step the store refused.
#[derive(Debug)]
pub enum StepError {
    /// The lease is not ours (any more).
    NotHolder,
    /// The ramp changed since it was read (cancelled, replaced, stepped by another).
    Stale,
    Store(String),
}

/// The store's connections (a clone shares them).
#[derive(Clone)]
pub struct Store {
    pub pool: PgPool,
}

fn err(e: sqlx::Error) -> String {
    // The server's words: escaped (they reach the log, the status and the CLI).
    format!("control store: {}", crate::api::printable(&e.to_string()))
}

/// `f`, failed when it takes longer than [`OP_TIMEOUT`].
pub async fn bounded<T>(f: impl Future<Output = Result<T, String>>) -> Result<T, String> {
    match tokio::time::timeout(OP_TIMEOUT, f).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "control store: no answer within {} s",
            OP_TIMEOUT.as_secs()
        )),
    }
}

impl Store {
    /// A lazily connecting pool (an unreachable database fails each use, not the start).
    pub fn open(url: &str) -> Result<Store, String> {
        let opts = PgConnectOptions::from_str(url)
            .map_err(|e| format!("control_store: invalid PostgreSQL URL: {e}"))?
            .application_name("tidegate-control");
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(OP_TIMEOUT)
            .connect_lazy_with(opts);
        Ok(Store { pool })
    }

    /// Create the tables (once per fleet at a time).
    pub async fn schema(&self) -> Result<(), String> {
        bounded(async {
            crate::services::pg::create_schema(&self.pool, SCHEMA_LOCK, SCHEMA)
                .await
                .map_err(err)
        })
        .await
    }

    /// The whole shared state, as of one revision (one statement: one snapshot): the
    /// database's epoch, the revision and the rows.
    pub async fn read(&self) -> Result<(String, i64, Rows), String> {
        bounded(async {
            let rows = sqlx::query(
                "SELECT m.rev, m.epoch, c.key,
                        CASE WHEN octet_length(c.value::text) <= $1 THEN c.value END,
                        octet_length(c.value::text)
                 FROM tidegate_control_meta m
                 LEFT JOIN tidegate_control c ON true WHERE m.id = 1
                 ORDER BY c.key LIMIT $2",
            )
            .bind(MAX_VALUE)
            .bind(MAX_ROWS + 1)
            .fetch_all(&self.pool)
            .await
            .map_err(err)?;
            if rows.len() as i64 > MAX_ROWS {
                return Err(format!(
                    "control store: more than {MAX_ROWS} rows in tidegate_control; not read"
                ));
            }
            let mut rev = 0;
            let mut epoch = String::new();
            let mut out = Rows::new();
            for r in rows {
                rev = r.get::<i64, _>(0);
                epoch = r.get::<Option<String>, _>(1).unwrap_or_default();
                let Some(k) = r.get::<Option<String>, _>(2) else {
                    continue;
                };
                match r.get::<Option<Value>, _>(3) {
                    Some(v) => {
                        out.insert(k, v);
                    }
                    None => {
                        return Err(format!(
                            "control store: row {} is {} bytes, more than {MAX_VALUE}; not read",
                            crate::api::printable(&k),
                            r.get::<Option<i32>, _>(4).unwrap_or_default()
                        ))
                    }
                }
            }
            Ok((epoch, rev, out))
        })
        .await
    }

    /// Write `changes` as one new revision, and notify the fleet. Returns the revision.
    pub async fn publish(&self, node: &str, changes: &[Change]) -> Result<i64, String> {
        bounded(async {
            let mut tx = self.pool.begin().await.map_err(err)?;
            let rev = write(&mut tx, node, changes).await?;
            tx.commit().await.map_err(err)?;
            Ok(rev)
        })
        .await
    }

    /// Make step `step` of ramp `ramp_id` on `route`: only while `node` holds the lease,
    /// only once per step, only when the ramp still is as `check` expects it.
    pub async fn step(
        &self,
        (node, holder): (&str, &str),
        (route, ramp_id, step): (&str, &str, u32),
        check: impl FnOnce(Option<&Value>) -> bool,
        changes: &[Change],
    ) -> Result<i64, StepError> {
        let s = |e: sqlx::Error| StepError::Store(err(e));
        let run = async {
            let mut tx = self.pool.begin().await.map_err(s)?;
            hold_lease(&mut tx, holder).await?;
            let cur = sqlx::query("SELECT value FROM tidegate_control WHERE key = $1 FOR UPDATE")
                .bind(format!("ramp/{route}"))
                .fetch_optional(&mut *tx)
                .await
                .map_err(s)?
                .map(|r| r.get::<Value, _>(0));
            if !check(cur.as_ref()) {
                return Err(StepError::Stale);
            }
            let fresh = sqlx::query(
                "INSERT INTO tidegate_ramp_steps (route, ramp_id, step, node)
                 VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
            )
            .bind(route)
            .bind(ramp_id)
            .bind(step as i32)
            .bind(node)
            .execute(&mut *tx)
            .await
            .map_err(s)?;
            if fresh.rows_affected() == 0 {
                return Err(StepError::Stale);
            }
            let rev = write(&mut tx, node, changes)
                .await
                .map_err(StepError::Store)?;
            tx.commit().await.map_err(s)?;
            Ok(rev)
        };
        match tokio::time::timeout(OP_TIMEOUT, run).await {
            Ok(r) => r,
            Err(_) => Err(StepError::Store("control store: step timed out".into())),
        }
    }

    /// LISTEN on the notification channel, in a connection of its own.
    pub async fn listen(&self) -> Result<Notes, String> {
        let l = bounded(async {
            let mut l = PgListener::connect_with(&self.pool).await.map_err(err)?;
            l.listen(CHANNEL).await.map_err(err)?;
            Ok(l)
        })
        .await?;
        Ok(super::notes::receive(l))
    }

    /// Take or renew the ramp lease for `ttl`; whether `holder` (node and instance) holds it.
    pub async fn lease(&self, holder: &str, ttl: Duration) -> Result<bool, String> {
        bounded(async {
            let row = sqlx::query(
                "INSERT INTO tidegate_leases (name, holder, expires_at)
                 VALUES ('ramps', $1, now() + $2 * interval '1 millisecond')
                 ON CONFLICT (name) DO UPDATE SET holder = EXCLUDED.holder,
                     expires_at = EXCLUDED.expires_at
                 WHERE tidegate_leases.holder = EXCLUDED.holder
                    OR tidegate_leases.expires_at < now()
                 RETURNING holder",
            )
            .bind(holder)
            .bind(ttl.as_millis() as f64)
            .fetch_optional(&self.pool)
            .await
            .map_err(err)?;
            Ok(row.is_some())
        })
        .await
    }

    /// Every proxy's heartbeat.
    pub async fn peers(&self) -> Result<Vec<Beat>, String> {
        bounded(async { self.read_beats().await }).await
    }

    // Long: the size limits are one statement with the read they bound.
    async fn read_beats(&self) -> Result<Vec<Beat>, String> {
        // Sizes first, in the database: a row too big, or too many bytes in all, is an
        // error before anything big is sent here. Too much is an error, not a row left
        // out: a proxy not counted could make a drain look done (a failed read makes this
        // proxy's view stale: never drained).
        let rows = sqlx::query(
            // A row written by hand may say `-infinity`: very old, not an error.
            "WITH b AS (
                SELECT node, admin, rev, counts, outcomes, instance, heartbeat,
                       octet_length(counts::text) + octet_length(outcomes::text)
                           + octet_length(node) + octet_length(admin)
                           + octet_length(instance) AS size
                FROM tidegate_heartbeats ORDER BY node, instance LIMIT $1),
             t AS (SELECT b.*, sum(size) OVER () AS total FROM b)
             SELECT CASE WHEN size <= $2 AND total <= $3 THEN node END,
                    CASE WHEN size <= $2 AND total <= $3 THEN admin END, rev,
                    CASE WHEN size <= $2 AND total <= $3 THEN counts END,
                    CASE WHEN size <= $2 AND total <= $3 THEN outcomes END,
                    CASE WHEN size <= $2 AND total <= $3 THEN instance END,
                    CASE WHEN isfinite(heartbeat)
                         THEN extract(epoch FROM now() - heartbeat)::float8 ELSE 1e12 END,
                    size, total::bigint
             FROM t",
        )
        .bind(MAX_ROWS + 1)
        .bind(MAX_VALUE)
        .bind(MAX_BEATS_BYTES)
        .fetch_all(&self.pool)
        .await
        .map_err(err)?;
        if rows.len() as i64 > MAX_ROWS {
            return Err(format!(
                "control store: more than {MAX_ROWS} heartbeat rows; not read"
            ));
        }
        if let Some(r) = rows.first() {
            let total = r.get::<Option<i64>, _>(8).unwrap_or(0);
            if total > MAX_BEATS_BYTES {
                return Err(format!(
                    "control store: the heartbeat rows hold {total} bytes, more than {MAX_BEATS_BYTES}; not read"
                ));
            }
        }
        if rows.iter().any(|r| r.get::<Option<String>, _>(0).is_none()) {
            return Err(format!(
                "control store: a heartbeat row is more than {MAX_VALUE} bytes; not read"
            ));
        }
        Ok(rows
            .into_iter()
            .map(|r| Beat {
                node: r.get(0),
                admin: r.get(1),
                rev: r.get(2),
                counts: r.get(3),
                outcomes: r.get(4),
                // A heartbeat row written by hand may hold any time: infinite (or not a
                // number) ages as very old, a future one as 0.
                age: Duration::try_from_secs_f64(r.get::<f64, _>(6).max(0.0))
                    .unwrap_or(Duration::MAX),
                instance: r.get(5),
            })
            .collect())
    }

    /// Write this process's heartbeat; forget this node's rows of earlier processes on the
    /// same admin address silent past the TTL (a crash and a restart: their work died with
    /// them); read every proxy's.
    pub async fn beat(
        &self,
        me: &Me<'_>,
        counts: &Value,
        outcomes: &Value,
    ) -> Result<Vec<Beat>, String> {
        bounded(async {
            sqlx::query(
                "INSERT INTO tidegate_heartbeats
                     (node, instance, admin, rev, counts, outcomes, heartbeat)
                 VALUES ($1, $2, $3, $4, $5, $6, now())
                 ON CONFLICT (node, instance) DO UPDATE SET admin = $3, rev = $4, counts = $5,
                     outcomes = $6, heartbeat = now()",
            )
            .bind(me.node)
            .bind(me.instance)
            .bind(me.admin)
            .bind(me.rev)
            .bind(counts)
            .bind(outcomes)
            .execute(&self.pool)
            .await
            .map_err(err)?;
            sqlx::query(
                "DELETE FROM tidegate_heartbeats WHERE node = $1 AND admin = $2
                 AND instance <> $3 AND heartbeat < now() - $4 * interval '1 millisecond'",
            )
            .bind(me.node)
            .bind(me.admin)
            .bind(me.instance)
            .bind(me.ttl.as_millis() as f64)
            .execute(&self.pool)
            .await
            .map_err(err)?;
            self.read_beats().await
        })
        .await
    }

    /// Forget proxies silent for an hour.
    pub async fn prune(&self) -> Result<(), String> {
        bounded(async {
            sqlx::query(
                "DELETE FROM tidegate_heartbeats WHERE heartbeat < now() - interval '1 hour'",
            )
            .execute(&self.pool)
            .await
            .map_err(err)?;
            Ok(())
        })
        .await
    }

    /// A clean exit: this proxy leaves the fleet and its lease.
    pub async fn leave(&self, node: &str, instance: &str, holder: &str) -> Result<(), String> {
        bounded(async {
            sqlx::query("DELETE FROM tidegate_heartbeats WHERE node = $1 AND instance = $2")
                .bind(node)
                .bind(instance)
                .execute(&self.pool)
                .await
                .map_err(err)?;
            sqlx::query("DELETE FROM tidegate_leases WHERE holder = $1")
                .bind(holder)
                .execute(&self.pool)
                .await
                .map_err(err)?;
            Ok(())
        })
        .await
    }
}

/// Inside `tx`: the revision's row first (every writer takes it first: no deadlock with a
/// proxy publishing a cancel while this one steps), then the lease, if `node` holds it.
async fn hold_lease(tx: &mut Transaction<'static, Postgres>, node: &str) -> Result<(), StepError> {
    let s = |e: sqlx::Error| StepError::Store(err(e));
    sqlx::query("SELECT rev FROM tidegate_control_meta WHERE id = 1 FOR UPDATE")
        .execute(&mut **tx)
        .await
        .map_err(s)?;
    let held = sqlx::query(
        "SELECT 1 FROM tidegate_leases WHERE name = 'ramps' AND holder = $1
         AND expires_at > now() FOR UPDATE",
    )
    .bind(node)
    .fetch_optional(&mut **tx)
    .await
    .map_err(s)?;
    held.map(|_| ()).ok_or(StepError::NotHolder)
}

/// Inside `tx`: bump the revision (its row lock serializes writers), apply `changes`,
/// notify. Returns the new revision.
async fn write(
    tx: &mut Transaction<'static, Postgres>,
    node: &str,
    changes: &[Change],
) -> Result<i64, String> {
    let rev: i64 =
        sqlx::query("UPDATE tidegate_control_meta SET rev = rev + 1 WHERE id = 1 RETURNING rev")
            .fetch_one(&mut **tx)
            .await
            .map_err(err)?
            .get(0);
    for (key, value) in changes {
        match value {
            Some(v) => sqlx::query(
                "INSERT INTO tidegate_control (key, value, rev, updated_by) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (key) DO UPDATE SET value = $2, rev = $3, updated_by = $4,
                     updated_at = now()",
            )
            .bind(key)
            .bind(v)
            .bind(rev)
            .bind(node),
            None => sqlx::query("DELETE FROM tidegate_control WHERE key = $1").bind(key),
        }
        .execute(&mut **tx)
        .await
        .map_err(err)?;
    }
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(CHANNEL)
        .bind(format!("{rev} {node}"))
        .execute(&mut **tx)
        .await
        .map_err(err)?;
    Ok(rev)
}
