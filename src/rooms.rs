//! The room registry: who is in which room, and fan-out of messages and presence lines.
//!
//! Delivery never waits: each member's queue is bounded in bytes. A member whose queue is over
//! budget stops being queued for (it *lags*) and later catches up from the store, so one slow
//! reader never stalls a room or the writer that publishes into it, and loses nothing.
//!
//! Messages travel as [`LiveBatch`]es: all the messages of one room that the writer stored
//! together, formatted once into one buffer. A member gets the whole batch with one queue
//! operation and usually writes it with one syscall; the few members that must skip some of
//! it (their own messages) take zero-copy slices.

use std::collections::{HashMap, VecDeque};
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::Notify;

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
    /// `only_ours` marks a batch of nothing but the recipient's own messages: nothing to show
    /// (and no cost), but it keeps the recipient's place in the room's order.
    Messages {
        batch: Arc<LiveBatch>,
        only_ours: bool,
    },
    /// A presence line (`JOINED`, `LEFT`, `NICK`) about a room.
    Presence { room: Arc<str>, line: Bytes },
}

impl Outbound {
    /// What the item counts against the connection's budget.
    pub fn cost(&self) -> usize {
        match self {
            Outbound::Messages {
                only_ours: true, ..
            } => 0,
            Outbound::Messages { batch, .. } => batch.bytes.len(),
            Outbound::Presence { line, .. } => line.len(),
        }
    }

    /// The room it is about.
    pub fn room(&self) -> &Arc<str> {
        match self {
            Outbound::Messages { batch, .. } => &batch.room,
            Outbound::Presence { room, .. } => room,
        }
    }
}

/// A connection's queue of room traffic, bounded in bytes. Unlike a channel it holds no
/// memory while empty, which matters with thousands of idle connections.
///
/// When the queue would go over its budget the connection is *lagging*: from then on nothing
/// more is queued for it, only the names of the rooms whose traffic it missed are noted. Its
/// session drains what was queued, then [`resume`](Inbox::resume)s and replays the gap from
/// the store. Everything queued before the gap is kept, so the client sees no hole.
#[derive(Debug, Default)]
pub struct Inbox {
    queue: Mutex<Queue>,
    /// Bytes queued and not yet taken by the session.
    queued: AtomicUsize,
    /// Signalled when items arrive, when the connection starts lagging, and when its login
    /// time is up.
    pub ready: Notify,
    /// Set while traffic is not queued because the queue overflowed. Changed only under the
    /// queue's lock (so deliveries and `resume` agree), read without it for cheap checks.
    lagging: AtomicBool,
    /// Set once the connection chose a name.
    named: AtomicBool,
    /// Set by the login watch when no name came in time.
    login_expired: AtomicBool,
}

#[derive(Debug, Default)]
struct Queue {
    items: VecDeque<Outbound>,
    /// Rooms whose traffic was not queued since the connection started lagging. Boxed, and
    /// allocated only then: every connection has a queue, and a `Vec` is three words.
    #[allow(clippy::box_collection)]
    missed: Option<Box<Vec<Arc<str>>>>,
}

impl Inbox {
    /// Moves queued items into `take` while it says so; returns how many.
    pub fn take_while(&self, mut take: impl FnMut(Outbound) -> bool) -> usize {
        let mut queue = self.queue.lock().expect("inbox lock");
        let mut n = 0;
        while let Some(item) = queue.items.pop_front() {
            self.queued.fetch_sub(item.cost(), Ordering::Relaxed);
            n += 1;
            if !take(item) {
                break;
            }
        }
        if queue.items.is_empty() && queue.items.capacity() > 16 {
            // Give back what a burst made it grow to.
            queue.items = VecDeque::new();
        }
        n
    }

    /// True while traffic is not being queued because the queue overflowed.
    pub fn is_lagging(&self) -> bool {
        self.lagging.load(Ordering::Relaxed)
    }

    /// Ends a lag once the session has taken everything queued before it: traffic is queued
    /// again from now on, and the rooms whose traffic was missed are returned for the session
    /// to replay from the store. `None` while not lagging or while items are still queued.
    pub fn resume(&self) -> Option<Vec<Arc<str>>> {
        let mut queue = self.queue.lock().expect("inbox lock");
        if !self.lagging.load(Ordering::Relaxed) || !queue.items.is_empty() {
            return None;
        }
        self.lagging.store(false, Ordering::Relaxed);
        Some(queue.missed.take().map(|rooms| *rooms).unwrap_or_default())
    }

    /// Starts lagging again with these rooms still to replay (the replay could not finish).
    /// What was queued for them since the replay began is dropped: it is in the store, and
    /// delivered now it would overtake the part of the gap not yet replayed.
    pub fn lag(&self, rooms: Vec<Arc<str>>) {
        let mut queue = self.queue.lock().expect("inbox lock");
        self.lagging.store(true, Ordering::Relaxed);
        queue.items.retain(|item| {
            let keep = !rooms.contains(item.room());
            if !keep {
                self.queued.fetch_sub(item.cost(), Ordering::Relaxed);
            }
            keep
        });
        for room in rooms {
            queue.note_missed(&room);
        }
    }

    /// The connection chose a name: the login watch leaves it alone.
    pub fn named(&self) {
        self.named.store(true, Ordering::Relaxed);
    }

    pub fn is_named(&self) -> bool {
        self.named.load(Ordering::Relaxed)
    }

    /// True once the login watch found no name in time.
    pub fn login_expired(&self) -> bool {
        self.login_expired.load(Ordering::Relaxed)
    }

    /// Marks the connection as out of time to choose a name, unless it has one.
    pub fn expire_login(&self) {
        if !self.named.load(Ordering::Relaxed) {
            self.login_expired.store(true, Ordering::Relaxed);
            self.ready.notify_one();
        }
    }

    /// Empties the queue for good (the connection is closing).
    pub fn close(&self) {
        let mut queue = self.queue.lock().expect("inbox lock");
        *queue = Queue::default();
        self.lagging.store(true, Ordering::Relaxed);
        self.queued.store(usize::MAX / 2, Ordering::Relaxed);
    }
}

impl Queue {
    fn note_missed(&mut self, room: &Arc<str>) {
        let missed = self.missed.get_or_insert_with(Default::default);
        if !missed.iter().any(|r| r == room) {
            missed.push(room.clone());
        }
    }
}

/// How the registry reaches one connection.
#[derive(Debug, Clone)]
pub struct ConnHandle {
    pub id: ConnId,
    pub inbox: Arc<Inbox>,
    /// Bytes of queued traffic above which the connection lags.
    pub limit: usize,
}

impl ConnHandle {
    fn deliver(&self, item: Outbound) {
        let inbox = &*self.inbox;
        let mut queue = inbox.queue.lock().expect("inbox lock");
        // Once lagging, nothing more until the session has caught up: a later, smaller item
        // must not slip in after one that was refused, or the client would see a hole.
        if inbox.lagging.load(Ordering::Relaxed) {
            // A marker of our own messages alone is no reason to catch the room up: their
            // ids are known from their acks, and the room's next traffic moves past them.
            if !matches!(
                item,
                Outbound::Messages {
                    only_ours: true,
                    ..
                }
            ) {
                queue.note_missed(item.room());
            }
            return;
        }
        let cost = item.cost();
        let before = inbox.queued.fetch_add(cost, Ordering::Relaxed);
        // An empty queue always takes the item, so one large batch never counts as lagging;
        // the queue is bounded by the limit plus one batch.
        if cost > 0 && before > 0 && before + cost > self.limit {
            inbox.queued.fetch_sub(cost, Ordering::Relaxed);
            inbox.lagging.store(true, Ordering::Relaxed);
            queue.note_missed(item.room());
            drop(queue);
            inbox.ready.notify_one();
            return;
        }
        queue.items.push_back(item);
        drop(queue);
        inbox.ready.notify_one();
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
    /// member skips its own messages). The sender of a batch of only its own messages gets
    /// it marked `only_ours`, which keeps its place in the room's order at no cost.
    pub fn publish(&self, batch: Arc<LiveBatch>) {
        let Some(room) = self.get(&batch.room) else {
            return;
        };
        let members = room.members.lock().expect("room lock");
        for (id, m) in members.iter() {
            m.conn.deliver(Outbound::Messages {
                batch: batch.clone(),
                only_ours: batch.only_sender == Some(*id),
            });
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every idle connection may keep a few queue slots: they must stay small.
    #[test]
    fn an_outbound_item_is_no_bigger_than_a_presence_line() {
        assert_eq!(
            std::mem::size_of::<Outbound>(),
            std::mem::size_of::<Arc<str>>() + std::mem::size_of::<Bytes>()
        );
    }
}
