//! What the PostgreSQL stores (spool, ACME, control) share: their tables are created once per
//! fleet at a time, under a transaction-scoped advisory lock (a fleet starting at once runs
//! `CREATE … IF NOT EXISTS` one proxy after another, not into each other).

use sqlx::PgPool;

/// Run `statements` in one transaction, holding advisory lock `lock` for it.
pub async fn create_schema(
    pool: &PgPool,
    lock: i64,
    statements: &[&str],
) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(lock)
        .execute(&mut *tx)
        .await?;
    for stmt in statements {
        sqlx::query(stmt).execute(&mut *tx).await?;
    }
    tx.commit().await
}
