//! The directory of live servers, names and presence in PostgreSQL (schema.sql's migration 6;
//! what it is for: [`crate::cluster`]). Every write is one transaction that begins by
//! refreshing this server's row, so that the rows it writes always have their server.

use async_trait::async_trait;

use super::*;
use crate::cluster::ledger::{Lost, Slot, Write};
use crate::cluster::remote::RemoteMember;
use crate::cluster::{Directory, Written};

/// This server is alive now; `true` if its row had to be made.
const HEARTBEAT: &str = "INSERT INTO nodes (origin) VALUES ($1) \
     ON CONFLICT (origin) DO UPDATE SET seen = now() RETURNING (xmax = 0)";
/// Claims names (`$2` connections, `$3` lower-case keys, `$4` names): a name already held by
/// another server stays its; one held by this server (a connection that just left it) is
/// handed over. Returns the connections that got their names.
const CLAIM_NAMES: &str = "INSERT INTO live_names (key, name, node, conn) \
     SELECT c.key, c.name, $1, c.conn FROM unnest($2::bigint[], $3::text[], $4::text[]) \
       AS c(conn, key, name) \
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

/// A name's key: names are unique whatever their (ASCII) case.
fn key(name: &str) -> String {
    name.to_ascii_lowercase()
}

#[async_trait]
impl Directory for PgStore {
    async fn write(&self, writes: &[Write]) -> Result<Written, StoreError> {
        let me = self.origin.as_str();
        let mut claims: (Vec<i64>, Vec<String>, Vec<&str>) = Default::default();
        let mut released: Vec<i64> = Vec::new();
        let mut leaves: (Vec<i64>, Vec<&str>) = Default::default();
        let mut enters: (Vec<i64>, Vec<&str>, Vec<&str>) = Default::default();
        for w in writes {
            let conn = w.conn as i64;
            match (&w.slot, &w.name) {
                (Slot::Name, Some(name)) => {
                    claims.0.push(conn);
                    claims.1.push(key(name));
                    claims.2.push(name);
                }
                (Slot::Name, None) => released.push(conn),
                (Slot::Room(room), None) => {
                    leaves.0.push(conn);
                    leaves.1.push(room);
                }
                (Slot::Room(room), Some(name)) => {
                    enters.0.push(conn);
                    enters.1.push(room);
                    enters.2.push(name);
                }
            }
        }
        self.with_timeout("writing names and presence", async {
            let mut conn = self.connection().await?;
            let busy = Busy::new(&mut conn);
            let tx = busy
                .0
                .client
                .transaction()
                .await
                .map_err(|e| self.failed(e))?;
            let made: bool = tx
                .query_one(HEARTBEAT, &[&me])
                .await
                .map_err(|e| self.failed(e))?
                .get(0);
            let mut lost = Vec::new();
            // Each winner gives up its old name; each loser keeps it.
            let mut release: (Vec<i64>, Vec<Option<&str>>) =
                (released.clone(), vec![None; released.len()]);
            if !claims.0.is_empty() {
                let won: std::collections::HashSet<i64> = tx
                    .query(CLAIM_NAMES, &[&me, &claims.0, &claims.1, &claims.2])
                    .await
                    .map_err(|e| self.failed(e))?
                    .iter()
                    .map(|row| row.get(0))
                    .collect();
                for (i, conn) in claims.0.iter().enumerate() {
                    if won.contains(conn) {
                        release.0.push(*conn);
                        release.1.push(Some(&claims.1[i]));
                    } else {
                        lost.push(Lost {
                            conn: *conn as u64,
                            name: claims.2[i].into(),
                        });
                    }
                }
            }
            let statements: [(&str, &[&(dyn tokio_postgres::types::ToSql + Sync)], bool); 3] = [
                (
                    RELEASE_NAMES,
                    &[&me, &release.0, &release.1],
                    release.0.is_empty(),
                ),
                (
                    LEAVE_ROOMS,
                    &[&me, &leaves.0, &leaves.1],
                    leaves.0.is_empty(),
                ),
                (
                    ENTER_ROOMS,
                    &[&me, &enters.0, &enters.1, &enters.2],
                    enters.0.is_empty(),
                ),
            ];
            for (statement, params, empty) in statements {
                if !empty {
                    tx.execute(statement, params)
                        .await
                        .map_err(|e| self.failed(e))?;
                }
            }
            tx.commit().await.map_err(|e| self.failed(e))?;
            busy.done();
            Ok(Written { made, lost })
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
                .client
                .query(REMOVE_SILENT, &[&me, &secs])
                .await
                .map_err(|e| self.failed(e))?;
            busy.done();
            Ok(rows.iter().map(|row| row.get(0)).collect())
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
                .client
                .query(OTHERS, &[&me])
                .await
                .map_err(|e| self.failed(e))?;
            busy.done();
            Ok(rows
                .iter()
                .map(|row| RemoteMember {
                    node: row.get::<_, &str>(0).into(),
                    conn: row.get::<_, i64>(1) as u64,
                    room: row.get::<_, &str>(2).into(),
                    name: row.get::<_, &str>(3).into(),
                })
                .collect())
        })
        .await
    }

    async fn leave(&self) -> Result<(), StoreError> {
        let me = self.origin.as_str();
        self.with_timeout("leaving", async {
            let mut conn = self.connection().await?;
            let busy = Busy::new(&mut conn);
            busy.0
                .client
                .execute(LEAVE, &[&me])
                .await
                .map_err(|e| self.failed(e))?;
            busy.done();
            Ok(())
        })
        .await
    }
}
