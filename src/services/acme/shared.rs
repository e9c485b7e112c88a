//! A fleet's ACME state on the PostgreSQL `spool_store`: certificates (so every proxy serves
//! the one a peer obtained, and restarts order nothing), one order at a time per set of
//! names (a transaction-scoped advisory lock, released however the orderer ends), and
//! HTTP-01 tokens (the CA may ask any proxy behind the name, not the one that ordered): every
//! proxy keeps a copy of the pending ones in memory, read every second
//! ([`TOKENS_EVERY`]), so a challenge request never waits on the database.

use std::{collections::HashMap, str::FromStr, sync::Arc, time::Duration};

use sqlx::{
    postgres::{PgConnectOptions, PgPoolOptions},
    PgPool, Postgres, Row, Transaction,
};
use tokio::sync::OnceCell;

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS tidegate_acme_certs (
        names text NOT NULL, directory text NOT NULL, cert_pem text NOT NULL,
        key_pem text NOT NULL, not_after bigint NOT NULL,
        updated_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (names, directory))",
    "CREATE TABLE IF NOT EXISTS tidegate_acme_tokens (
        token text PRIMARY KEY, key_authorization text NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now())",
];

/// Serializes schema creation across a fleet starting at once.
const SCHEMA_LOCK: i64 = 0x7469_6465_6163_6d65;

/// How often every proxy reads the fleet's pending tokens.
pub const TOKENS_EVERY: Duration = Duration::from_secs(1);
/// Longest a read of them may take.
const TOKENS_READ: Duration = Duration::from_secs(2);
/// How long an orderer waits after storing a token before the CA is told: one whole cycle
/// of the slowest peer's reading that still succeeds (pause, then a read that takes its
/// full time), and a second.
pub const TOKENS_SPREAD: Duration = Duration::from_secs(4);
/// Pending tokens read at most (an order has one per name; old ones are deleted).
const TOKENS_MAX: i64 = 1000;
/// Connections of the pool.
const POOL: u32 = 8;
/// Orders this proxy holds a lock (an open transaction: a connection) for at once; the rest
/// of the pool stays free for certificates and tokens however many names are ordered.
const ORDERS: usize = 3;

/// The shared store.
pub struct Shared {
    pool: PgPool,
    schema: OnceCell<()>,
    orders: Arc<tokio::sync::Semaphore>,
}

/// An order lock: held while the transaction is open (and one of [`ORDERS`]).
pub struct OrderLock {
    tx: Transaction<'static, Postgres>,
    _order: tokio::sync::OwnedSemaphorePermit,
}

fn err(e: sqlx::Error) -> String {
    format!("shared ACME store: {e}")
}

impl Shared {
    /// A lazily connecting pool (an unreachable database fails each use, not the start).
    pub fn open(url: &str) -> Result<Shared, String> {
        let opts = PgConnectOptions::from_str(url)
            .map_err(|e| format!("spool_store: invalid PostgreSQL URL: {e}"))?
            .application_name("tidegate-acme");
        let pool = PgPoolOptions::new()
            .max_connections(POOL)
            .acquire_timeout(Duration::from_secs(2))
            .connect_lazy_with(opts);
        Ok(Shared {
            pool,
            schema: OnceCell::new(),
            orders: Arc::new(tokio::sync::Semaphore::new(ORDERS)),
        })
    }

    async fn ready(&self) -> Result<&PgPool, String> {
        self.schema
            .get_or_try_init(|| async {
                crate::services::pg::create_schema(&self.pool, SCHEMA_LOCK, SCHEMA)
                    .await
                    .map_err(err)
            })
            .await?;
        Ok(&self.pool)
    }

    /// The certificate the fleet holds for `names` from `directory`: (chain, key).
    pub async fn load(
        &self,
        names: &str,
        directory: &str,
    ) -> Result<Option<(String, String)>, String> {
        let pool = self.ready().await?;
        let row = sqlx::query(
            "SELECT cert_pem, key_pem FROM tidegate_acme_certs WHERE names = $1 AND directory = $2",
        )
        .bind(names)
        .bind(directory)
        .fetch_optional(pool)
        .await
        .map_err(err)?;
        Ok(row.map(|r| (r.get(0), r.get(1))))
    }

    pub async fn save(
        &self,
        names: &str,
        directory: &str,
        chain: &str,
        key: &str,
        not_after: i64,
    ) -> Result<(), String> {
        let pool = self.ready().await?;
        sqlx::query(
            "INSERT INTO tidegate_acme_certs (names, directory, cert_pem, key_pem, not_after)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (names, directory) DO UPDATE SET cert_pem = $3, key_pem = $4,
                 not_after = $5, updated_at = now()",
        )
        .bind(names)
        .bind(directory)
        .bind(chain)
        .bind(key)
        .bind(not_after)
        .execute(pool)
        .await
        .map_err(err)?;
        Ok(())
    }

    /// The right to order for `names` now (`None`: a peer is ordering them, or this proxy
    /// has [`ORDERS`] orders under way already; ask again later).
    pub async fn try_lock(&self, names: &str) -> Result<Option<OrderLock>, String> {
        let Ok(permit) = self.orders.clone().try_acquire_owned() else {
            return Ok(None);
        };
        let pool = self.ready().await?;
        let mut tx = pool.begin().await.map_err(err)?;
        let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock(hashtext($1))")
            .bind(format!("tidegate-acme:{names}"))
            .fetch_one(&mut *tx)
            .await
            .map_err(err)?;
        Ok(got.then_some(OrderLock { tx, _order: permit }))
    }

    pub async fn put_token(&self, token: &str, key_authorization: &str) -> Result<(), String> {
        let pool = self.ready().await?;
        sqlx::query(
            "INSERT INTO tidegate_acme_tokens (token, key_authorization) VALUES ($1, $2)
             ON CONFLICT (token) DO UPDATE SET key_authorization = $2",
        )
        .bind(token)
        .bind(key_authorization)
        .execute(pool)
        .await
        .map_err(err)?;
        Ok(())
    }

    pub async fn remove_token(&self, token: &str) -> Result<(), String> {
        let pool = self.ready().await?;
        // Old tokens of orderers that died go too.
        sqlx::query(
            "DELETE FROM tidegate_acme_tokens WHERE token = $1 OR created_at < now() - interval '1 hour'",
        )
        .bind(token)
        .execute(pool)
        .await
        .map_err(err)?;
        Ok(())
    }

    /// The fleet's pending tokens (the newest [`TOKENS_MAX`] of the last hour; rows that
    /// are not a plausible token and key authorization are left out: the table is input).
    pub async fn tokens(&self) -> Result<HashMap<String, String>, String> {
        let pool = self.ready().await?;
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT token, key_authorization FROM tidegate_acme_tokens
             WHERE created_at > now() - interval '1 hour' AND length(token) <= 128
               AND length(key_authorization) <= 512
             ORDER BY created_at DESC LIMIT $1",
        )
        .bind(TOKENS_MAX)
        .fetch_all(pool)
        .await
        .map_err(err)?;
        Ok(rows.into_iter().collect())
    }
}

/// Every [`TOKENS_EVERY`]: the fleet's pending tokens into this proxy's memory. A read that
/// fails or stalls (bounded to 2 s) keeps the last copy.
pub async fn mirror_tokens(shared: Arc<Shared>, state: Arc<crate::state::AppState>) {
    let mut failing = false;
    loop {
        let read = tokio::time::timeout(TOKENS_READ, shared.tokens()).await;
        match read.unwrap_or_else(|_| Err("no answer within 2s".into())) {
            Ok(tokens) => {
                failing = false;
                state.challenges.set_peer_tokens(tokens);
            }
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(error = %e, "ACME: cannot read the fleet's challenge tokens (the last ones read are answered)");
            }
            Err(_) => {}
        }
        tokio::time::sleep(TOKENS_EVERY).await;
    }
}

impl OrderLock {
    pub async fn release(self) {
        let _ = self.tx.rollback().await;
    }
}
