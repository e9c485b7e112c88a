//! A fleet's ACME state on the PostgreSQL `spool_store`: certificates (so every proxy serves
//! the one a peer obtained, and restarts order nothing), one order at a time per set of
//! names (a transaction-scoped advisory lock, released however the orderer ends), and
//! HTTP-01 tokens (the CA may ask any proxy behind the name, not the one that ordered).

use std::{str::FromStr, time::Duration};

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

/// The shared store.
pub struct Shared {
    pool: PgPool,
    schema: OnceCell<()>,
    /// Peers' token look-ups in flight: a flood of made-up challenge paths costs at most
    /// this many database queries at a time (the rest are answered 404 at once).
    lookups: tokio::sync::Semaphore,
}

/// An order lock: held while the transaction is open.
pub struct OrderLock(Transaction<'static, Postgres>);

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
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(2))
            .connect_lazy_with(opts);
        Ok(Shared {
            pool,
            schema: OnceCell::new(),
            lookups: tokio::sync::Semaphore::new(2),
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

    /// The right to order for `names` now (`None`: a peer is ordering them).
    pub async fn try_lock(&self, names: &str) -> Result<Option<OrderLock>, String> {
        let pool = self.ready().await?;
        let mut tx = pool.begin().await.map_err(err)?;
        let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock(hashtext($1))")
            .bind(format!("tidegate-acme:{names}"))
            .fetch_one(&mut *tx)
            .await
            .map_err(err)?;
        Ok(got.then_some(OrderLock(tx)))
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

    /// A token a peer is being validated with.
    pub async fn token(&self, token: &str) -> Result<Option<String>, String> {
        let pool = self.ready().await?;
        let ka = sqlx::query_scalar(
            "SELECT key_authorization FROM tidegate_acme_tokens WHERE token = $1",
        )
        .bind(token)
        .fetch_optional(pool)
        .await
        .map_err(err)?;
        Ok(ka)
    }
}

#[async_trait::async_trait]
impl crate::state::certs::PeerTokens for Shared {
    async fn token(&self, token: &str) -> Option<String> {
        let _turn = self.lookups.try_acquire().ok()?;
        let lookup = tokio::time::timeout(Duration::from_secs(2), Shared::token(self, token));
        match lookup
            .await
            .unwrap_or_else(|_| Err("no answer within 2s".into()))
        {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(error = %e, "ACME: cannot look up a peer's challenge token");
                None
            }
        }
    }
}

impl OrderLock {
    pub async fn release(self) {
        let _ = self.0.rollback().await;
    }
}
