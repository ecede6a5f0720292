//! Private rooms: `PRIVATE`, `PUBLIC`, `INVITE`, `UNINVITE`, and the check that `JOIN`,
//! `HISTORY` and `WHO` make of a room the connection is not in.
//!
//! Members are registered names; who may enter is asked of the store each time (it is shared
//! by every server on the database), never taken from this server's memory. Making a room
//! private does not put out those already in it (as IRC's `+i`): `WHO` shows who they are.

use std::collections::HashSet;
use std::sync::Arc;

use crate::accounts::Access;
use crate::protocol::{self, ErrorCode, ProtocolError};

use super::Session;

fn refusal(code: ErrorCode, text: impl Into<String>) -> ProtocolError {
    ProtocolError::new(code, text)
}

impl Session {
    /// The lower-case name this connection is logged in to, if it is registered.
    pub(super) fn account_key(&self) -> Option<String> {
        self.registered
            .then(|| self.nick.as_deref().map(str::to_ascii_lowercase))
            .flatten()
    }

    /// What this connection may do with `room`, asked of the store.
    pub(super) async fn access(&self, room: &str) -> Result<Access, ProtocolError> {
        let key = self.account_key();
        let store = self.hub.accounts.store.clone();
        Ok(self
            .until_shutdown(store.room_access(room, key.as_deref()))
            .await?)
    }

    /// Refuses a room that is private to this connection, unless it is in it (then the store
    /// is not asked).
    pub(super) async fn check_entry(&self, room: &str) -> Result<(), ProtocolError> {
        if self.joined.contains(room) || self.access(room).await?.may_enter() {
            return Ok(());
        }
        Err(refusal(
            ErrorCode::PrivateRoom,
            format!("{room} is private: a member must INVITE your registered name"),
        ))
    }

    /// Of `rooms`, those this connection may not see listed (private, and it is not a member).
    pub(super) async fn hidden_rooms(
        &self,
        rooms: &[Arc<str>],
    ) -> Result<HashSet<String>, ProtocolError> {
        if rooms.is_empty() {
            return Ok(HashSet::new());
        }
        let key = self.account_key();
        let store = self.hub.accounts.store.clone();
        Ok(self
            .until_shutdown(store.hidden_among(rooms, key.as_deref()))
            .await?)
    }

    /// `PRIVATE <room>`: a room the connection is in becomes members-only, owned by its
    /// registered name.
    pub(super) async fn make_private(&mut self, room: String) -> Result<(), ProtocolError> {
        let owner = self.require_registered("own a private room")?;
        if !self.joined.contains(&room) {
            return Err(refusal(
                ErrorCode::NotInRoom,
                format!("join {room} first: only a room you are in can be made private"),
            ));
        }
        match self.access(&room).await? {
            Access::Public => {
                let store = self.hub.accounts.store.clone();
                if !self
                    .until_shutdown(store.make_private(&room, &owner))
                    .await?
                {
                    // Made private by someone else meanwhile.
                    return Err(not_a_member(&room));
                }
                tracing::info!(%room, %owner, "room made private");
            }
            Access::Owner | Access::Member => {}
            Access::Outsider => return Err(not_a_member(&room)),
        }
        self.writer.push(protocol::line(&["OK", "PRIVATE", &room]));
        Ok(())
    }

    /// `PUBLIC <room>`: its owner opens a private room to everyone again.
    pub(super) async fn make_public(&mut self, room: String) -> Result<(), ProtocolError> {
        let owner = self.require_registered("open a private room")?;
        match self.access(&room).await? {
            Access::Public => {}
            Access::Owner => {
                let store = self.hub.accounts.store.clone();
                self.until_shutdown(store.make_public(&room, &owner))
                    .await?;
                tracing::info!(%room, %owner, "room made public");
            }
            Access::Member => return Err(not_the_owner(&room)),
            Access::Outsider => return Err(not_a_member(&room)),
        }
        self.writer.push(protocol::line(&["OK", "PUBLIC", &room]));
        Ok(())
    }

    /// `INVITE <room> <name>`: a member lets another registered name in.
    pub(super) async fn invite(&mut self, room: String, name: String) -> Result<(), ProtocolError> {
        self.require_registered("invite")?;
        match self.access(&room).await? {
            Access::Owner | Access::Member => {}
            Access::Public => {
                return Err(refusal(
                    ErrorCode::BadArgument,
                    format!("{room} is not private: anyone may join it"),
                ))
            }
            Access::Outsider => return Err(not_a_member(&room)),
        }
        let store = self.hub.accounts.store.clone();
        let Some(account) = self.until_shutdown(store.find(&name)).await? else {
            return Err(refusal(
                ErrorCode::NotRegistered,
                format!("{name} is not registered; only registered names can be members"),
            ));
        };
        let key = account.name.to_ascii_lowercase();
        self.until_shutdown(store.invite(&room, &key)).await?;
        self.writer
            .push(protocol::line(&["OK", "INVITE", &room, &account.name]));
        Ok(())
    }

    /// `UNINVITE <room> <name>`: the owner takes a member out (one already in the room stays
    /// until it leaves).
    pub(super) async fn uninvite(
        &mut self,
        room: String,
        name: String,
    ) -> Result<(), ProtocolError> {
        let owner = self.require_registered("uninvite")?;
        match self.access(&room).await? {
            Access::Owner => {}
            Access::Member => return Err(not_the_owner(&room)),
            Access::Outsider => return Err(not_a_member(&room)),
            Access::Public => {
                return Err(refusal(
                    ErrorCode::BadArgument,
                    format!("{room} is not private"),
                ))
            }
        }
        let key = name.to_ascii_lowercase();
        if key == owner {
            return Err(refusal(
                ErrorCode::BadArgument,
                "the owner stays a member; PUBLIC opens the room instead",
            ));
        }
        let store = self.hub.accounts.store.clone();
        if !self.until_shutdown(store.uninvite(&room, &key)).await? {
            return Err(refusal(
                ErrorCode::BadArgument,
                format!("{name} is not a member of {room}"),
            ));
        }
        self.writer
            .push(protocol::line(&["OK", "UNINVITE", &room, &name]));
        Ok(())
    }

    /// The lower-case registered name this connection is logged in to, or a refusal saying
    /// that only one may `what`.
    fn require_registered(&self, what: &str) -> Result<String, ProtocolError> {
        let name: Arc<str> = self.require_nick()?;
        self.account_key().ok_or_else(|| {
            refusal(
                ErrorCode::NotRegistered,
                format!("{name} is not registered; only a registered name may {what} (REGISTER <password>)"),
            )
        })
    }
}

fn not_a_member(room: &str) -> ProtocolError {
    refusal(
        ErrorCode::PrivateRoom,
        format!("{room} is private and you are not a member"),
    )
}

fn not_the_owner(room: &str) -> ProtocolError {
    refusal(
        ErrorCode::NotRoomOwner,
        format!("only the owner of {room} may do that"),
    )
}
