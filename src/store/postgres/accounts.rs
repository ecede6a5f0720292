//! Accounts in PostgreSQL: the `users` table's `password_hash` (schema.sql, migration 4).
//! Every server on the database sees the same accounts. Each statement is prepared on a
//! pooled connection at its first use there ([`super::pool::PgConnection::prepared`]).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use async_trait::async_trait;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use super::pool::Busy;
use super::PgStore;
use crate::accounts::{Access, Account, AccountStore};
use crate::store::StoreError;

/// Names compare as `lower(name COLLATE "C")`, ASCII folding whatever the database's locale
/// (the index of migration 4); the server passes names already folded where it can.
const FIND: &str = "SELECT name, password_hash FROM users \
     WHERE lower(name COLLATE \"C\") = lower($1 COLLATE \"C\") AND password_hash IS NOT NULL";
/// A guest name's row (made by its first message or NICK) gets the hash; a registered one
/// keeps its own, and then no row comes back.
const REGISTER: &str = "INSERT INTO users (name, password_hash) VALUES ($1, $2) \
     ON CONFLICT (name) DO UPDATE SET password_hash = EXCLUDED.password_hash \
     WHERE users.password_hash IS NULL RETURNING id";
const SET_PASSWORD: &str = "UPDATE users SET password_hash = $3 \
     WHERE lower(name COLLATE \"C\") = lower($1 COLLATE \"C\") AND password_hash IS NOT NULL \
     AND ($2::text IS NULL OR password_hash = $2) RETURNING id";
/// One statement, so all or nothing: the name becomes a guest name, leaves every private
/// room's members, and each room it owned passes to its oldest other member (or to nobody:
/// owner '' matches no name, and the room stays private). Whoever registers the name later
/// gets none of it.
const UNREGISTER: &str = "WITH gone AS (UPDATE users SET password_hash = NULL \
     WHERE lower(name COLLATE \"C\") = $1 AND password_hash IS NOT NULL RETURNING id), \
     handed AS (UPDATE private_rooms p SET owner = coalesce((SELECT m.member \
       FROM private_room_members m WHERE m.room = p.room AND m.member <> $1 \
       ORDER BY m.added_at, m.member LIMIT 1), '') WHERE p.owner = $1), \
     forgot AS (DELETE FROM private_room_members WHERE member = $1) \
     SELECT id FROM gone";
/// Which of these lower-case names are registered, with their hashes.
const REGISTERED_AMONG: &str = "SELECT lower(name COLLATE \"C\"), password_hash FROM users \
     WHERE lower(name COLLATE \"C\") = ANY($1) AND password_hash IS NOT NULL";
const ROOM_ACCESS: &str = "SELECT p.owner, EXISTS (SELECT FROM private_room_members m \
     WHERE m.room = p.room AND m.member = $2) FROM private_rooms p WHERE p.room = $1";
/// The owner is the room's first member.
const MAKE_PRIVATE: &str = "WITH made AS (INSERT INTO private_rooms (room, owner) \
     VALUES ($1, $2) ON CONFLICT DO NOTHING RETURNING room, owner) \
     INSERT INTO private_room_members (room, member) SELECT room, owner FROM made RETURNING room";
const MAKE_PUBLIC: &str = "DELETE FROM private_rooms WHERE room = $1 AND owner = $2 RETURNING room";
const INVITE: &str = "INSERT INTO private_room_members (room, member) \
     SELECT room, $2 FROM private_rooms WHERE room = $1 ON CONFLICT DO NOTHING RETURNING room";
const UNINVITE: &str = "DELETE FROM private_room_members m USING private_rooms p \
     WHERE m.room = $1 AND m.member = $2 AND p.room = m.room AND p.owner <> m.member \
     RETURNING m.room";
const LIST: &str = "SELECT name FROM users WHERE password_hash IS NOT NULL ORDER BY name";
/// Of these rooms, those private to `$2` (a lower-case name, or '' for a guest).
const HIDDEN_AMONG: &str = "SELECT p.room FROM private_rooms p WHERE p.room = ANY($1) \
     AND NOT EXISTS (SELECT FROM private_room_members m WHERE m.room = p.room AND m.member = $2)";

impl PgStore {
    /// Runs `sql` with `params` within the store's deadline: its rows, or `None` if it broke
    /// a unique constraint.
    pub(super) async fn run(
        &self,
        what: &str,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Vec<Row>>, StoreError> {
        self.with_timeout(what, async {
            let mut conn = self.connection().await?;
            let busy = Busy::new(&mut conn);
            let rows = busy.0.query(sql, params).await;
            match rows {
                Ok(rows) => {
                    busy.done();
                    Ok(Some(rows))
                }
                Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
                    busy.done();
                    Ok(None)
                }
                Err(e) => Err(self.failed(e)),
            }
        })
        .await
    }

    /// [`run`](Self::run) for a statement whose rows do not matter, nor a unique violation.
    pub(super) async fn rows(
        &self,
        what: &str,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, StoreError> {
        Ok(self.run(what, sql, params).await?.unwrap_or_default())
    }
}

#[async_trait]
impl AccountStore for PgStore {
    async fn find(&self, name: &str) -> Result<Option<Account>, StoreError> {
        let rows = self.rows("reading an account", FIND, &[&name]).await?;
        let Some(row) = rows.first() else {
            return Ok(None);
        };
        let read = || {
            Ok(Account {
                name: Arc::from(row.try_get::<_, &str>(0)?),
                hash: row.try_get(1)?,
            })
        };
        read().map(Some).map_err(|e| self.unreadable(e))
    }

    async fn register(&self, name: &str, hash: &str) -> Result<bool, StoreError> {
        // None: another spelling of the name was registered meanwhile.
        let rows = self
            .run("registering a name", REGISTER, &[&name, &hash])
            .await?;
        Ok(rows.is_some_and(|rows| !rows.is_empty()))
    }

    async fn set_password(
        &self,
        name: &str,
        expected: Option<&str>,
        hash: &str,
    ) -> Result<bool, StoreError> {
        let rows = self
            .rows(
                "changing a password",
                SET_PASSWORD,
                &[&name, &expected, &hash],
            )
            .await?;
        Ok(!rows.is_empty())
    }

    async fn unregister(&self, name: &str) -> Result<bool, StoreError> {
        let key = name.to_ascii_lowercase();
        let rows = self
            .rows("removing an account", UNREGISTER, &[&key])
            .await?;
        Ok(!rows.is_empty())
    }

    async fn list(&self) -> Result<Vec<Arc<str>>, StoreError> {
        let rows = self.rows("listing accounts", LIST, &[]).await?;
        rows.iter()
            .map(|r| Ok(Arc::from(r.try_get::<_, &str>(0)?)))
            .collect::<Result<_, _>>()
            .map_err(|e| self.unreadable(e))
    }

    async fn registered_among(
        &self,
        keys: &[String],
    ) -> Result<HashMap<String, String>, StoreError> {
        let rows = self
            .rows("checking names", REGISTERED_AMONG, &[&keys])
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect::<Result<_, _>>()
            .map_err(|e| self.unreadable(e))
    }

    async fn hidden_among(
        &self,
        rooms: &[Arc<str>],
        member: Option<&str>,
    ) -> Result<HashSet<String>, StoreError> {
        let rooms: Vec<&str> = rooms.iter().map(|r| &**r).collect();
        let member = member.unwrap_or("");
        let rows = self
            .rows("listing rooms", HIDDEN_AMONG, &[&rooms, &member])
            .await?;
        rows.iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>()
            .map_err(|e| self.unreadable(e))
    }

    async fn room_access(&self, room: &str, member: Option<&str>) -> Result<Access, StoreError> {
        let member = member.unwrap_or("");
        let rows = self
            .rows("reading a room's members", ROOM_ACCESS, &[&room, &member])
            .await?;
        let Some(row) = rows.first() else {
            return Ok(Access::Public);
        };
        let read = || Ok((row.try_get::<_, &str>(0)?, row.try_get::<_, bool>(1)?));
        Ok(match read().map_err(|e| self.unreadable(e))? {
            (owner, _) if owner == member => Access::Owner,
            (_, true) => Access::Member,
            (_, false) => Access::Outsider,
        })
    }

    async fn make_private(&self, room: &str, owner: &str) -> Result<bool, StoreError> {
        let rows = self
            .rows("making a room private", MAKE_PRIVATE, &[&room, &owner])
            .await?;
        Ok(!rows.is_empty())
    }

    async fn make_public(&self, room: &str, owner: &str) -> Result<bool, StoreError> {
        let rows = self
            .rows("making a room public", MAKE_PUBLIC, &[&room, &owner])
            .await?;
        Ok(!rows.is_empty())
    }

    async fn invite(&self, room: &str, member: &str) -> Result<bool, StoreError> {
        let rows = self.rows("inviting", INVITE, &[&room, &member]).await?;
        Ok(!rows.is_empty())
    }

    async fn uninvite(&self, room: &str, member: &str) -> Result<bool, StoreError> {
        let rows = self.rows("uninviting", UNINVITE, &[&room, &member]).await?;
        Ok(!rows.is_empty())
    }
}
