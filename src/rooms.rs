//! The room registry: who is in which room, and fan-out of messages and presence lines.
//!
//! Delivery never waits: each member has a bounded queue, and a member whose queue is full is
//! told to go (`too_slow` is cancelled; its session says `BYE too slow` and leaves). So one
//! slow reader never stalls a room or the writer that publishes into it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::protocol::{self, MessageId};

/// Identifies one connection for the server's lifetime.
pub type ConnId = u64;

/// A live message as every recipient gets it: formatted once, shared by reference.
#[derive(Debug)]
pub struct LiveMessage {
    pub room: Arc<str>,
    pub id: MessageId,
    /// The whole `MSG ...\n` line.
    pub line: Bytes,
    /// The sender, who gets `OK SAY` instead of its own `MSG`.
    pub sender: ConnId,
}

/// What a session's outbound queue carries.
#[derive(Debug)]
pub enum Outbound {
    /// A live message; its room and id let the session drop what its replay already showed.
    Message(Arc<LiveMessage>),
    /// A presence line (`JOINED`, `LEFT`, `NICK`) about a room.
    Presence { room: Arc<str>, line: Bytes },
}

/// How the registry reaches one connection.
#[derive(Debug, Clone)]
pub struct ConnHandle {
    pub id: ConnId,
    pub tx: mpsc::Sender<Outbound>,
    /// Cancelled when the connection's queue overflowed.
    pub too_slow: CancellationToken,
}

impl ConnHandle {
    fn deliver(&self, item: Outbound) {
        if let Err(mpsc::error::TrySendError::Full(_)) = self.tx.try_send(item) {
            self.too_slow.cancel();
        }
    }
}

struct Member {
    nick: Arc<str>,
    conn: ConnHandle,
}

#[derive(Default)]
struct Room {
    members: Mutex<HashMap<ConnId, Member>>,
}

impl Room {
    fn broadcast(members: &HashMap<ConnId, Member>, except: ConnId, room: &Arc<str>, line: Bytes) {
        for (id, m) in members {
            if *id != except {
                m.conn.deliver(Outbound::Presence {
                    room: room.clone(),
                    line: line.clone(),
                });
            }
        }
    }
}

/// All rooms that have at least one member.
#[derive(Default)]
pub struct Rooms {
    rooms: Mutex<HashMap<Arc<str>, Arc<Room>>>,
}

impl Rooms {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a member and tells the others (`JOINED`). Returns false if it was already there.
    pub fn join(&self, room: &Arc<str>, nick: &Arc<str>, conn: &ConnHandle) -> bool {
        let mut rooms = self.rooms.lock().expect("rooms lock");
        let entry = rooms.entry(room.clone()).or_default();
        let mut members = entry.members.lock().expect("room lock");
        if members.contains_key(&conn.id) {
            return false;
        }
        let line = protocol::line(&["JOINED", room, nick]);
        Room::broadcast(&members, conn.id, room, line);
        members.insert(
            conn.id,
            Member {
                nick: nick.clone(),
                conn: conn.clone(),
            },
        );
        true
    }

    /// Removes a member and tells the others (`LEFT`). Returns false if it was not there.
    pub fn leave(&self, room: &str, conn: ConnId) -> bool {
        let mut rooms = self.rooms.lock().expect("rooms lock");
        let Some((name, entry)) = rooms.get_key_value(room) else {
            return false;
        };
        let mut members = entry.members.lock().expect("room lock");
        let Some(gone) = members.remove(&conn) else {
            return false;
        };
        let line = protocol::line(&["LEFT", room, &gone.nick]);
        Room::broadcast(&members, conn, name, line);
        if members.is_empty() {
            drop(members);
            rooms.remove(room);
        }
        true
    }

    /// Records a new nick in the given rooms and tells their members (`NICK <room> <old> <new>`).
    pub fn rename(&self, rooms: &[Arc<str>], conn: ConnId, old: &str, new: &Arc<str>) {
        let registry = self.rooms.lock().expect("rooms lock");
        for room in rooms {
            let Some(entry) = registry.get(room) else {
                continue;
            };
            let mut members = entry.members.lock().expect("room lock");
            if let Some(m) = members.get_mut(&conn) {
                m.nick = new.clone();
                let line = protocol::line(&["NICK", room, old, new]);
                Room::broadcast(&members, conn, room, line);
            }
        }
    }

    /// Delivers a live message to every member of its room but the sender.
    pub fn publish(&self, msg: Arc<LiveMessage>) {
        let Some(room) = self.get(&msg.room) else {
            return;
        };
        let members = room.members.lock().expect("room lock");
        for (id, m) in members.iter() {
            if *id != msg.sender {
                m.conn.deliver(Outbound::Message(msg.clone()));
            }
        }
    }

    fn get(&self, room: &str) -> Option<Arc<Room>> {
        self.rooms.lock().expect("rooms lock").get(room).cloned()
    }

    /// The nicks in a room, sorted; empty for a room nobody is in.
    pub fn members(&self, room: &str) -> Vec<Arc<str>> {
        let Some(room) = self.get(room) else {
            return Vec::new();
        };
        let mut nicks: Vec<Arc<str>> = room
            .members
            .lock()
            .expect("room lock")
            .values()
            .map(|m| m.nick.clone())
            .collect();
        nicks.sort();
        nicks
    }

    /// Every room with members, with its member count, sorted by name.
    pub fn list(&self) -> Vec<(Arc<str>, usize)> {
        let rooms = self.rooms.lock().expect("rooms lock");
        let mut list: Vec<(Arc<str>, usize)> = rooms
            .iter()
            .map(|(name, r)| (name.clone(), r.members.lock().expect("room lock").len()))
            .collect();
        list.sort();
        list
    }
}
