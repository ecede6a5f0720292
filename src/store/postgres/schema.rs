//! The database's schema: schema.sql's numbered migrations, applied once each, and the
//! database itself in zero-config mode.

use tokio_postgres::{Client, NoTls};

use super::unavailable;
use crate::store::StoreError;

/// The schema, as numbered migrations (see the file's header).
pub const SCHEMA: &str = include_str!("../../../schema.sql");

/// Key for the advisory lock that serialises migrations between servers.
const MIGRATION_LOCK: i64 = 0x6c69_6e65_6368_6174; // "linechat"

/// Brings the schema up to date: applies each `-- migration N` section of schema.sql newer
/// than the recorded version, in one transaction, under an advisory lock so that two servers
/// starting together do not race.
pub async fn migrate(client: &Client) -> Result<(), StoreError> {
    let run = async {
        // Quiet the "already exists, skipping" notices of an up-to-date database.
        client
            .batch_execute("BEGIN; SET LOCAL client_min_messages = warning")
            .await?;
        client
            .execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await?;
        client
            .batch_execute(
                "CREATE TABLE IF NOT EXISTS schema_version (
                     version    integer PRIMARY KEY,
                     applied_at timestamptz NOT NULL DEFAULT now())",
            )
            .await?;
        let row = client
            .query_one("SELECT coalesce(max(version), 0) FROM schema_version", &[])
            .await?;
        let current: i32 = row.try_get(0)?;
        for (version, sql) in migrations() {
            if version > current {
                tracing::info!(version, "applying schema migration");
                client.batch_execute(&sql).await?;
                client
                    .execute(
                        "INSERT INTO schema_version (version) VALUES ($1)",
                        &[&version],
                    )
                    .await?;
            }
        }
        client.batch_execute("COMMIT").await
    };
    match run.await {
        Ok(()) => Ok(()),
        Err(e) => {
            let _ = client.batch_execute("ROLLBACK").await;
            Err(unavailable(format!("schema migration failed: {e}")))
        }
    }
}

/// The numbered sections of schema.sql, in order: each starts at a line `-- migration N`.
pub fn migrations() -> Vec<(i32, String)> {
    let mut out: Vec<(i32, String)> = Vec::new();
    for line in SCHEMA.lines() {
        let header = line
            .strip_prefix("-- migration ")
            .and_then(|n| n.trim().parse::<i32>().ok());
        match (header, out.last_mut()) {
            (Some(version), _) => out.push((version, String::new())),
            (None, Some((_, body))) => {
                body.push_str(line);
                body.push('\n');
            }
            (None, None) => {}
        }
    }
    out
}

/// Creates database `name` if it does not exist, connecting through `admin` (a config for a
/// database that exists, such as `postgres`).
pub async fn ensure_database(admin: &tokio_postgres::Config, name: &str) -> Result<(), StoreError> {
    let (client, connection) = admin.connect(NoTls).await.map_err(unavailable)?;
    let driver = tokio::spawn(connection);
    let exists = client
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
        .await
        .map_err(unavailable)?
        .is_some();
    if !exists {
        // CREATE DATABASE takes no parameters; the name is a quoted identifier.
        let ident = format!("\"{}\"", name.replace('"', "\"\""));
        client
            .batch_execute(&format!("CREATE DATABASE {ident}"))
            .await
            .map_err(unavailable)?;
    }
    drop(client);
    let _ = driver.await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What each migration does is checked against a real database in tests/postgres.rs;
    /// here, only that schema.sql's sections are numbered 1, 2, 3... with none empty.
    #[test]
    fn schema_sections_are_numbered_in_order() {
        let m = migrations();
        assert!(!m.is_empty());
        for (i, (version, sql)) in m.iter().enumerate() {
            assert_eq!(*version, i as i32 + 1);
            assert!(!sql.trim().is_empty(), "migration {version} is empty");
        }
    }
}
