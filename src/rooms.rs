//! The room registry: who is in which room, and fan-out of messages and presence lines.
//!
//! Delivery never waits: each member's queue is bounded in bytes, and a member whose queue is
//! over budget is told to go (`too_slow` is cancelled; its session says `BYE too slow` and
//! leaves). So one slow reader never stalls a room or the writer that publishes into it.
//!
//! Messages travel as [`LiveBatch`]es: all the messages of one room that the writer stored
//! together, formatted once into one buffer. A member gets the whole batch with one queue
//! operation and usually writes it with one syscall; the few members that must skip some of
//! it (their own messages) take zero-copy slices.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::protocol::{self, MessageId};

/// Identifies one connection for the server's lifetime.
pub type ConnId = u64;

/// Consecutive live messages of one room, formatted once and shared by every recipient.
#[derive(Debug)]
pub struct LiveBatch {
    pub room: Arc<str>,
    /// The `MSG ...\n` lines of every message, concatenated.
    pub bytes: Bytes,
    /// One entry per message, in id order.
    pub messages: Vec<BatchEntry>,
    /// The sender of every message, if they all have the same one.
    pub only_sender: Option<ConnId>,
}

/// Where one message sits in a [`LiveBatch`].
#[derive(Debug, Clone, Copy)]
pub struct BatchEntry {
    pub id: MessageId,
    /// The sender, who gets `OK SAY` instead of its own `MSG`.
    pub sender: ConnId,
    /// Where the message's line ends in `bytes`.
    pub end: usize,
}

impl LiveBatch {
    /// The byte ranges a member should get: messages newer than `floor` that `me` did not
    /// send, with neighbouring ranges merged (usually the whole batch in one range).
    pub fn ranges_for(&self, me: ConnId, floor: MessageId) -> Vec<Range<usize>> {
        let mut ranges: Vec<Range<usize>> = Vec::new();
        let mut start = 0;
        for m in &self.messages {
            if m.id > floor && m.sender != me {
                match ranges.last_mut() {
                    Some(last) if last.end == start => last.end = m.end,
                    _ => ranges.push(start..m.end),
                }
            }
            start = m.end;
        }
        ranges
    }
}

/// What a session's outbound queue carries.
#[derive(Debug)]
pub enum Outbound {
    /// Live messages; their room and ids let the session drop what its replay already showed.
    Messages(Arc<LiveBatch>),
    /// A presence line (`JOINED`, `LEFT`, `NICK`) about a room.
    Presence { room: Arc<str>, line: Bytes },
}

impl Outbound {
    /// What the item counts against the connection's budget.
    pub fn cost(&self) -> usize {
        match self {
            Outbound::Messages(b) => b.bytes.len(),
            Outbound::Presence { line, .. } => line.len(),
        }
    }
}

/// How the registry reaches one connection.
#[derive(Debug, Clone)]
pub struct ConnHandle {
    pub id: ConnId,
    pub tx: mpsc::UnboundedSender<Outbound>,
    /// Bytes sent on `tx` and not yet taken by the session; bounded by `limit`.
    pub queued: Arc<AtomicUsize>,
    pub limit: usize,
    /// Cancelled when the connection's queue went over its budget.
    pub too_slow: CancellationToken,
}

impl ConnHandle {
    fn deliver(&self, item: Outbound) {
        let cost = item.cost();
        let before = self.queued.fetch_add(cost, Ordering::Relaxed);
        // An empty queue always takes the item, so one large batch never counts as slowness;
        // the queue is bounded by the limit plus one batch.
        if (before > 0 && before + cost > self.limit) || self.too_slow.is_cancelled() {
            self.queued.fetch_sub(cost, Ordering::Relaxed);
            self.too_slow.cancel();
            return;
        }
        if self.tx.send(item).is_err() {
            self.queued.fetch_sub(cost, Ordering::Relaxed);
        }
    }

    /// The session took an item off its queue.
    pub fn taken(&self, item: &Outbound) {
        self.queued.fetch_sub(item.cost(), Ordering::Relaxed);
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

    /// Delivers a batch of live messages to every member of its room (the session of each
    /// member skips its own messages).
    pub fn publish(&self, batch: Arc<LiveBatch>) {
        let Some(room) = self.get(&batch.room) else {
            return;
        };
        let members = room.members.lock().expect("room lock");
        for (id, m) in members.iter() {
            if batch.only_sender != Some(*id) {
                m.conn.deliver(Outbound::Messages(batch.clone()));
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
