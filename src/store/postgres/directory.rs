//! The directory of live servers, names and presence in PostgreSQL (schema.sql's migration 6;
//! what it is for: [`crate::cluster`]). Every write is one transaction that begins by
//! refreshing this server's row, so that the rows it writes always have their server.

use async_trait::async_trait;
use tokio_postgres::error::SqlState;
use tokio_postgres::Statement;

use super::*;
use crate::cluster::ledger::{Lost, Slot, Write};
use crate::cluster::remote::RemoteMember;
use crate::cluster::{Directory, Written};

/// This server is alive now; whether its row had to be made, and whether the directory
/// holds any room of its (a crash empties the unlogged `presence`).
const HEARTBEAT: &str = "WITH beat AS (INSERT INTO nodes (origin) VALUES ($1) \
       ON CONFLICT (origin) DO UPDATE SET seen = now() RETURNING (xmax = 0) AS made) \
     SELECT made, EXISTS (SELECT 1 FROM presence WHERE node = $1) FROM beat";
/// Claims names (`$2` connections, `$3` lower-case keys, `$4` names): a name already held by
/// another server stays its; one held by this server (a connection that just left it) is
/// handed over. Returns the connections that got their names. In key order: every server
/// locks names in one order, or two servers' batches claiming the same names deadlock (and
/// one's claimants are told `OK NICK` unconfirmed for names the other gave out).
const CLAIM_NAMES: &str = "INSERT INTO live_names (key, name, node, conn) \
     SELECT c.key, c.name, $1, c.conn FROM unnest($2::bigint[], $3::text[], $4::text[]) \
       AS c(conn, key, name) ORDER BY c.key \
     ON CONFLICT (key) DO UPDATE SET name = excluded.name, conn = excluded.conn \
       WHERE live_names.node = excluded.node \
     RETURNING conn";
/// Gives up the names of connections `$2` but for the key each keeps (`$3`, NULL: none).
const RELEASE_NAMES: &str = "DELETE FROM live_names l \
     USING unnest($2::bigint[], $3::text[]) AS r(conn, keep) \
     WHERE l.node = $1 AND l.conn = r.conn AND l.key IS DISTINCT FROM r.keep";
const LEAVE_ROOMS: &str = "DELETE FROM presence p \
     USING unnest($2::bigint[], $3::text[]) AS r(conn, room) \
     WHERE p.node = $1 AND p.conn = r.conn AND p.room = r.room";
const ENTER_ROOMS: &str = "INSERT INTO presence (node, conn, room, name) \
     SELECT $1, * FROM unnest($2::bigint[], $3::text[], $4::text[]) \
     ON CONFLICT (node, conn, room) DO UPDATE SET name = excluded.name \
       WHERE presence.name IS DISTINCT FROM excluded.name";
const REMOVE_SILENT: &str = "DELETE FROM nodes \
     WHERE origin <> $1 AND seen < now() - make_interval(secs => $2) RETURNING origin";
const OTHERS: &str = "SELECT node, conn, room, name FROM presence WHERE node <> $1";
const LEAVE: &str = "DELETE FROM nodes WHERE origin = $1";

/// Every statement, for the schema test to prepare against the tables.
pub const DIRECTORY_STATEMENTS: [&str; 8] = [
    HEARTBEAT,
    CLAIM_NAMES,
    RELEASE_NAMES,
    LEAVE_ROOMS,
    ENTER_ROOMS,
    REMOVE_SILENT,
    OTHERS,
    LEAVE,
];

/// A name's key: names are unique whatever their (ASCII) case.
fn key(name: &str) -> String {
    name.to_ascii_lowercase()
}

/// One write's changes, as the statements take them.
#[derive(Default)]
struct Batch<'a> {
    claims: (Vec<i64>, Vec<String>, Vec<&'a str>),
    released: Vec<i64>,
    leaves: (Vec<i64>, Vec<&'a str>),
    enters: (Vec<i64>, Vec<&'a str>, Vec<&'a str>),
}

impl<'a> Batch<'a> {
    fn new(writes: &'a [Write]) -> Batch<'a> {
        let mut b = Batch::default();
        for w in writes {
            let conn = w.conn as i64;
            match (&w.slot, &w.name) {
                (Slot::Name, Some(name)) => {
                    b.claims.0.push(conn);
                    b.claims.1.push(key(name));
                    b.claims.2.push(name);
                }
                (Slot::Name, None) => b.released.push(conn),
                (Slot::Room(room), None) => {
                    b.leaves.0.push(conn);
                    b.leaves.1.push(room);
                }
                (Slot::Room(room), Some(name)) => {
                    b.enters.0.push(conn);
                    b.enters.1.push(room);
                    b.enters.2.push(name);
                }
            }
        }
        b
    }
}

/// Attempts at a write that PostgreSQL aborts to break a deadlock: two servers' batches can
/// lock each other's names in opposite orders (one claims a name whose row the other is
/// releasing, while the other does the same), and the victim is not refused for it. A write
/// whose prepared statements no longer fit the database is tried again the same way.
const DEADLOCK_ATTEMPTS: usize = 3;
/// How long a write that lost a deadlock waits before its next attempt (times the attempts
/// made): long enough for the other write to commit.
const DEADLOCK_PAUSE: Duration = Duration::from_millis(20);

/// The batch in one transaction, which begins by refreshing this server's row.
async fn write_once(
    conn: &mut PgConnection,
    me: &str,
    b: &Batch<'_>,
) -> Result<Written, tokio_postgres::Error> {
    // Prepared before the transaction; after this connection's first write, at no cost.
    let [heartbeat, claim_names, release_names, leave_rooms, enter_rooms] = [
        conn.prepared(HEARTBEAT).await?,
        conn.prepared(CLAIM_NAMES).await?,
        conn.prepared(RELEASE_NAMES).await?,
        conn.prepared(LEAVE_ROOMS).await?,
        conn.prepared(ENTER_ROOMS).await?,
    ];
    let tx = conn.client.transaction().await?;
    let beat = tx.query_one(&heartbeat, &[&me]).await?;
    let (made, has_rooms): (bool, bool) = (beat.try_get(0)?, beat.try_get(1)?);
    let mut lost = Vec::new();
    // Each winner gives up its old name; each loser keeps it.
    let mut release: (Vec<i64>, Vec<Option<&str>>) =
        (b.released.clone(), vec![None; b.released.len()]);
    if !b.claims.0.is_empty() {
        let won: std::collections::HashSet<i64> = tx
            .query(&claim_names, &[&me, &b.claims.0, &b.claims.1, &b.claims.2])
            .await?
            .iter()
            .map(|row| row.try_get(0))
            .collect::<Result<_, _>>()?;
        for (i, conn) in b.claims.0.iter().enumerate() {
            if won.contains(conn) {
                release.0.push(*conn);
                release.1.push(Some(&b.claims.1[i]));
            } else {
                lost.push(Lost {
                    conn: *conn as u64,
                    name: b.claims.2[i].into(),
                });
            }
        }
    }
    let statements: [(
        Statement,
        &[&(dyn tokio_postgres::types::ToSql + Sync)],
        bool,
    ); 3] = [
        (
            release_names,
            &[&me, &release.0, &release.1],
            release.0.is_empty(),
        ),
        (
            leave_rooms,
            &[&me, &b.leaves.0, &b.leaves.1],
            b.leaves.0.is_empty(),
        ),
        (
            enter_rooms,
            &[&me, &b.enters.0, &b.enters.1, &b.enters.2],
            b.enters.0.is_empty(),
        ),
    ];
    for (statement, params, empty) in statements {
        if !empty {
            tx.execute(&statement, params).await?;
        }
    }
    tx.commit().await?;
    Ok(Written {
        made,
        has_rooms,
        lost,
    })
}

#[async_trait]
impl Directory for PgStore {
    async fn write(&self, writes: &[Write]) -> Result<Written, StoreError> {
        let me = self.origin.as_str();
        let batch = Batch::new(writes);
        self.with_timeout("writing names and presence", async {
            let mut conn = self.connection().await?;
            let busy = Busy::new(&mut conn);
            let mut attempt = 1;
            let written = loop {
                match write_once(busy.0, me, &batch).await {
                    Ok(written) => break written,
                    Err(e)
                        if attempt < DEADLOCK_ATTEMPTS
                            && e.code() == Some(&SqlState::T_R_DEADLOCK_DETECTED) =>
                    {
                        tracing::debug!("writing names and presence deadlocked with another server's write; again");
                        // The other write goes on once this one is rolled back: tried again
                        // at once, this one could lock the other's rows again before it
                        // commits, and deadlock with it a second time.
                        tokio::time::sleep(DEADLOCK_PAUSE * attempt as u32).await;
                        attempt += 1;
                    }
                    Err(e) if attempt < DEADLOCK_ATTEMPTS && errors::stale_statement(&e) => {
                        tracing::debug!(error = %e, "a prepared statement no longer fits the database; preparing again");
                        busy.0.forget_prepared();
                        attempt += 1;
                    }
                    Err(e) => return Err(self.failed(e)),
                }
            };
            busy.done();
            Ok(written)
        })
        .await
    }

    async fn remove_silent(&self, timeout: Duration) -> Result<Vec<String>, StoreError> {
        let me = self.origin.as_str();
        let secs = timeout.as_secs_f64();
        self.with_timeout("removing silent servers", async {
            let mut conn = self.connection().await?;
            let busy = Busy::new(&mut conn);
            let rows = busy
                .0
                .query(REMOVE_SILENT, &[&me, &secs])
                .await
                .map_err(|e| self.failed(e))?;
            busy.done();
            rows.iter()
                .map(|row| row.try_get(0))
                .collect::<Result<_, _>>()
                .map_err(|e| self.unreadable(e))
        })
        .await
    }

    async fn others(&self) -> Result<Vec<RemoteMember>, StoreError> {
        let me = self.origin.as_str();
        self.with_timeout("reading who is on other servers", async {
            let mut conn = self.connection().await?;
            let busy = Busy::new(&mut conn);
            let rows = busy
                .0
                .query(OTHERS, &[&me])
                .await
                .map_err(|e| self.failed(e))?;
            busy.done();
            rows.iter()
                .map(|row| {
                    Ok(RemoteMember {
                        node: row.try_get::<_, &str>(0)?.into(),
                        conn: row.try_get::<_, i64>(1)? as u64,
                        room: row.try_get::<_, &str>(2)?.into(),
                        name: row.try_get::<_, &str>(3)?.into(),
                    })
                })
                .collect::<Result<_, _>>()
                .map_err(|e| self.unreadable(e))
        })
        .await
    }

    async fn leave(&self) -> Result<(), StoreError> {
        let me = self.origin.as_str();
        self.with_timeout("leaving", async {
            let mut conn = self.connection().await?;
            let busy = Busy::new(&mut conn);
            busy.0
                .query(LEAVE, &[&me])
                .await
                .map_err(|e| self.failed(e))?;
            busy.done();
            Ok(())
        })
        .await
    }
}
