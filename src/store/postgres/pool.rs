//! The pool's connections: each prepares the message statements when the pool opens it, and
//! the others (accounts, directory) at their first use, once each, and prepares again any that
//! a change of the schema made stale; a connection is thrown away rather than reused if an
//! operation on it was cut short.

use std::collections::HashMap;
use std::sync::Weak;

use bb8::ManageConnection;
use bb8_postgres::PostgresConnectionManager;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Row, Statement};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::errors::stale_statement;
use crate::store::health::Health;

/// Stores a batch: one statement, so one implicit transaction and one round trip. The batch
/// names its rooms (`$1`) and users (`$2`) once each, and each message points into them
/// (`$3`, `$4`, 1-based): each name is looked up once, here, by name, so that no id remembered
/// from earlier can go stale (emptied or restored tables may reuse it for another name). A
/// name that does not exist makes its id NULL, and then no row is inserted at all: the
/// statement stores nothing and says so by returning no row (no ERROR, which would write
/// the failing row, text and all, to the database's log, and no id taken). Rows are
/// inserted in array order (WITH ORDINALITY ... ORDER BY), so ids follow the batch; each row
/// comes back with the ids it was stored with, so that this is checked, not assumed. The triggers of schema.sql's migration 2 check (and lock) every room
/// and user the rows reference, once per statement.
///
/// Before any id is taken, the batch's rooms are locked (FOR NO KEY UPDATE, in id order, so
/// two batches never wait for each other in a circle): room ids are looked up in `locked`,
/// each look-up reading all of it (a scalar subquery checks that one row came), and every
/// inserted row needs them. Another server's batch into one of these rooms waits for this
/// one to commit, so within a room ids are taken in commit order (schema.sql's migration 5
/// says why that matters).
pub const INSERT_MESSAGES: &str = "WITH locked AS MATERIALIZED (SELECT id, name FROM rooms \
         WHERE name = ANY($1::text[]) ORDER BY id FOR NO KEY UPDATE) \
     INSERT INTO messages (room_id, user_id, body) \
     SELECT ids.rooms[batch.r], ids.users[batch.u], batch.body \
     FROM (SELECT \
         ARRAY(SELECT (SELECT id FROM locked WHERE name = n.name) \
               FROM unnest($1::text[]) WITH ORDINALITY AS n(name, i) ORDER BY n.i) AS rooms, \
         ARRAY(SELECT (SELECT id FROM users WHERE name = n.name) \
               FROM unnest($2::text[]) WITH ORDINALITY AS n(name, i) ORDER BY n.i) AS users) ids, \
       unnest($3::int[], $4::int[], $5::text[]) WITH ORDINALITY AS batch(r, u, body, n) \
     WHERE array_position(ids.rooms, NULL) IS NULL AND array_position(ids.users, NULL) IS NULL \
     ORDER BY batch.n \
     RETURNING id, created_at, room_id, user_id";
/// The newest `$3` messages of room `$1` with id < `$2`, newest first.
pub const PAGE_NEWEST: &str = "SELECT m.id, m.created_at, u.name, m.body \
     FROM messages m JOIN users u ON u.id = m.user_id \
     WHERE m.room_id = (SELECT id FROM rooms WHERE name = $1) AND m.id < $2 \
     ORDER BY m.id DESC LIMIT $3";
/// The oldest `$4` messages of room `$1` with `$2` < id < `$3`, oldest first.
pub const PAGE_OLDEST: &str = "SELECT m.id, m.created_at, u.name, m.body \
     FROM messages m JOIN users u ON u.id = m.user_id \
     WHERE m.room_id = (SELECT id FROM rooms WHERE name = $1) AND m.id > $2 AND m.id < $3 \
     ORDER BY m.id LIMIT $4";
/// For each range `i` (room `$1[i]`, ids `$2[i]..=$3[i]`), its oldest `$4` messages: one
/// round trip for every room of several notifications (`bus.rs`).
pub const READ_RANGES: &str = "SELECT q.i, m.id, m.created_at, u.name, m.body \
     FROM unnest($1::text[], $2::bigint[], $3::bigint[]) WITH ORDINALITY AS q(room, first, last, i) \
     CROSS JOIN LATERAL (SELECT id, created_at, user_id, body FROM messages \
         WHERE room_id = (SELECT id FROM rooms WHERE name = q.room) \
           AND id >= q.first AND id <= q.last ORDER BY id LIMIT $4) m \
     JOIN users u ON u.id = m.user_id \
     ORDER BY q.i, m.id";
/// The newest id in room `$1` (0 if none).
pub const LATEST_ID: &str = "SELECT coalesce(max(m.id), 0) FROM messages m \
     WHERE m.room_id = (SELECT id FROM rooms WHERE name = $1)";
/// Records users `$1` (each once, in order), or notes that they were seen.
pub(super) const UPSERT_USERS: &str =
    "INSERT INTO users (name) SELECT n FROM unnest($1::text[]) AS n \
     ON CONFLICT (name) DO UPDATE SET last_seen_at = now()";
/// This database's history epoch (schema.sql's migration 3).
pub const HISTORY_EPOCH: &str = "SELECT epoch FROM history_epoch";
/// Records room `$1`; one that exists is left as it is (no new row version, nothing to
/// commit).
pub(super) const UPSERT_ROOM: &str =
    "INSERT INTO rooms (name) VALUES ($1) ON CONFLICT (name) DO NOTHING";
/// Records users `$1` and rooms `$2`, all in one statement (one commit); names that exist are
/// left as they are. In name order, so that servers recording the same new names at once
/// take them in one order (users first: the SELECT reads `u` before `r`).
pub(super) const RECORD_NAMES: &str = "WITH u AS (INSERT INTO users (name) \
         SELECT n FROM unnest($1::text[]) AS n ORDER BY n ON CONFLICT (name) DO NOTHING \
         RETURNING 1), \
     r AS (INSERT INTO rooms (name) \
         SELECT n FROM unnest($2::text[]) AS n ORDER BY n ON CONFLICT (name) DO NOTHING \
         RETURNING 1) \
     SELECT (SELECT count(*) FROM u), (SELECT count(*) FROM r)";

/// What every pooled connection sets first.
///
/// Every statement here looks rows up by key, and its generic plan (checked in
/// tests/postgres.rs) is the one a custom plan would be. Left to choose, PostgreSQL plans the
/// INSERT anew for every batch (its generic plan's guessed array sizes cost more than a small
/// batch's real ones): 0.8 ms of the database's CPU a batch, more than the INSERT itself
/// (BENCHMARKS.md, "Three servers against one").
///
/// And every one of them, the triggers' queries included, finds its rows through an index.
/// While the tables are small (a thousand rooms), the generic plan, which guesses ten names
/// a batch, reads them whole instead, and every batch then read every room
/// (BENCHMARKS.md, "Paced traffic").
///
/// Nor is any worth compiling (JIT): their plans are small, and a guessed cost can pass
/// the threshold when the tables were never analyzed. A stopping server's removal of its
/// 5,000 connections from `presence` was once seen compiling (LLVM) for minutes.
pub const SESSION_SETTINGS: &str =
    "SET plan_cache_mode = force_generic_plan; SET enable_seqscan = off; SET jit = off";

/// The statements every pooled connection prepares when the pool opens it (the rest at their
/// first use): what messages need, so that a database that cannot run them is found out then.
const MESSAGE_STATEMENTS: [&str; 8] = [
    INSERT_MESSAGES,
    PAGE_NEWEST,
    PAGE_OLDEST,
    LATEST_ID,
    READ_RANGES,
    UPSERT_USERS,
    UPSERT_ROOM,
    RECORD_NAMES,
];

/// A pooled connection with its prepared statements.
pub struct PgConnection {
    pub(super) client: Client,
    /// Every statement prepared here, by its text.
    prepared: HashMap<&'static str, Statement>,
    /// Set while an operation runs. If the operation is cancelled (a timeout), the flag stays
    /// set and the pool discards the connection instead of handing it on mid-query: above all
    /// one whose INSERT was abandoned, which may still run when the database answers.
    pub(super) busy: bool,
}

impl PgConnection {
    /// `sql` prepared on this connection: parsed and planned at its first use here, then
    /// only bound and run, in one round trip instead of two. Only constant texts are kept,
    /// so this holds at most the store's statements.
    pub(super) async fn prepared(
        &mut self,
        sql: &'static str,
    ) -> Result<Statement, tokio_postgres::Error> {
        if let Some(statement) = self.prepared.get(sql) {
            return Ok(statement.clone());
        }
        let statement = self.client.prepare(sql).await?;
        self.prepared.insert(sql, statement.clone());
        Ok(statement)
    }

    /// Runs `sql`, [`prepared`](Self::prepared), with `params`: its rows.
    pub(super) async fn query(
        &mut self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, tokio_postgres::Error> {
        let statement = self.prepared(sql).await?;
        match self.client.query(&statement, params).await {
            Err(e) if stale_statement(&e) => {
                tracing::debug!(error = %e, "a prepared statement no longer fits the database; preparing again");
                self.forget_prepared();
                let statement = self.prepared(sql).await?;
                self.client.query(&statement, params).await
            }
            ran => ran,
        }
    }

    /// Drops every statement [`prepared`](Self::prepared) here: they are prepared anew.
    pub(super) fn forget_prepared(&mut self) {
        self.prepared.clear();
    }
}

/// Marks a connection busy for the life of an operation.
pub(super) struct Busy<'a>(pub(super) &'a mut PgConnection);

impl<'a> Busy<'a> {
    pub(super) fn new(conn: &'a mut PgConnection) -> Self {
        conn.busy = true;
        Busy(conn)
    }

    /// The operation completed: the connection is fit for reuse.
    pub(super) fn done(self) {
        self.0.busy = false;
    }
}

/// bb8-postgres's manager, plus preparing our statements on every new connection.
pub struct PgManager {
    pub(super) inner: PostgresConnectionManager<MakeRustlsConnect>,
}

impl ManageConnection for PgManager {
    type Connection = PgConnection;
    type Error = tokio_postgres::Error;

    async fn connect(&self) -> Result<PgConnection, tokio_postgres::Error> {
        let client = self.inner.connect().await?;
        client.batch_execute(SESSION_SETTINGS).await?;
        let mut conn = PgConnection {
            client,
            prepared: HashMap::new(),
            busy: false,
        };
        for sql in MESSAGE_STATEMENTS {
            conn.prepared(sql).await?;
        }
        Ok(conn)
    }

    async fn is_valid(&self, conn: &mut PgConnection) -> Result<(), tokio_postgres::Error> {
        conn.client.simple_query("").await.map(drop)
    }

    fn has_broken(&self, conn: &mut PgConnection) -> bool {
        conn.busy || conn.client.is_closed()
    }
}

/// Takes the errors of connections the pool opens in the background. bb8 reports a failed
/// attempt only here (a `get` waiting for it would wait out its whole timeout), so this is
/// where the store learns that the database refuses connections.
#[derive(Debug, Clone)]
pub(super) struct LogErrors {
    pub(super) health: Weak<Health>,
}

impl bb8::ErrorSink<tokio_postgres::Error> for LogErrors {
    fn sink(&self, e: tokio_postgres::Error) {
        // The health logs the outage once; each attempt only at debug.
        tracing::debug!("PostgreSQL connection failed: {e}");
        if let Some(health) = self.health.upgrade() {
            health.mark_down(&format!("cannot connect: {e}"));
        }
    }

    fn boxed_clone(&self) -> Box<dyn bb8::ErrorSink<tokio_postgres::Error>> {
        Box::new(self.clone())
    }
}
