//! The room registry: who is in which room under which name, presence lines (`JOINED`,
//! `LEFT`, `NICK`) to the other members, and handing each published batch to every member's
//! mailbox.
//!
//! Two levels of locks: the registry's, held only to find or drop a room, and each room's
//! own, held while its members are told something. Delivering never waits (mailboxes are
//! bounded and never block), and is never done under the registry's lock, so that one busy
//! room cannot hold up the rest of the server.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use crate::cluster::remote::{Presence, RemoteMember, RemoteMembers};
use crate::express::Flusher;
use crate::fanout::LiveBatch;
use crate::mailbox::{ConnHandle, ConnId, Delivery};
use crate::protocol;

struct Member {
    nick: Arc<str>,
    conn: ConnHandle,
}

#[derive(Default)]
struct Room {
    members: Mutex<Members>,
    /// How many members it has, readable without waiting for the room's lock (`ROOMS`).
    count: AtomicUsize,
}

#[derive(Default)]
struct Members {
    by_conn: HashMap<ConnId, Member>,
    /// Set when the last member left and the room is being dropped from the registry: a
    /// joiner that finds it so looks the room up again.
    closed: bool,
}

impl Members {
    /// Sends a presence line to every member but `except`.
    fn tell_others(&self, except: ConnId, room: &Arc<str>, line: Bytes) {
        for (id, m) in &self.by_conn {
            if *id != except {
                m.conn.mailbox.deliver(Delivery::Presence {
                    room: room.clone(),
                    line: line.clone(),
                });
            }
        }
    }
}

/// A `JOIN` would have made a room beyond `--max-rooms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoomsFull;

/// All rooms that have at least one member. Ordered by name, so that `ROOMS` can be listed a
/// slice at a time from where the last slice ended.
#[derive(Default)]
pub struct Rooms {
    rooms: Mutex<BTreeMap<Arc<str>, Arc<Room>>>,
    /// Most rooms at once (0: unlimited).
    max_rooms: usize,
    /// Members on other servers sharing the database ([`crate::cluster`]): listed by `WHO`
    /// and `ROOMS`, never delivered to.
    remote: Mutex<RemoteMembers>,
    /// Writes batches to the sockets of members whose sessions wait ([`crate::express`]).
    flusher: Flusher,
}

impl Rooms {
    pub fn new() -> Self {
        Self::default()
    }

    /// A registry that holds at most `max_rooms` rooms (0: unlimited).
    pub fn with_max_rooms(max_rooms: usize) -> Self {
        Rooms {
            max_rooms,
            ..Self::default()
        }
    }

    fn get(&self, room: &str) -> Option<Arc<Room>> {
        self.rooms.lock().expect("rooms lock").get(room).cloned()
    }

    /// Adds a member and tells the others (`JOINED`). Returns false if it was already there.
    pub fn join(&self, room: &Arc<str>, nick: &Arc<str>, conn: &ConnHandle) -> bool {
        self.join_within_limit(room, nick, conn).unwrap_or(false)
    }

    /// True if the room exists (has members).
    pub fn exists(&self, room: &str) -> bool {
        self.rooms.lock().expect("rooms lock").contains_key(room)
    }

    /// As [`join`](Self::join), but a room that does not exist yet is only made while the
    /// registry holds fewer than its most rooms.
    pub fn join_within_limit(
        &self,
        room: &Arc<str>,
        nick: &Arc<str>,
        conn: &ConnHandle,
    ) -> Result<bool, RoomsFull> {
        loop {
            let entry = {
                let mut rooms = self.rooms.lock().expect("rooms lock");
                match rooms.get(room) {
                    Some(entry) => entry.clone(),
                    None => {
                        if self.max_rooms > 0 && rooms.len() >= self.max_rooms {
                            return Err(RoomsFull);
                        }
                        rooms.entry(room.clone()).or_default().clone()
                    }
                }
            };
            let mut members = entry.members.lock().expect("room lock");
            if members.closed {
                // Emptied since we looked it up: drop it from the registry if it is still
                // there, and look again.
                drop(members);
                self.forget_closed(room, &entry);
                continue;
            }
            if members.by_conn.contains_key(&conn.id) {
                return Ok(false);
            }
            members.tell_others(conn.id, room, protocol::line(&["JOINED", room, nick]));
            let member = Member {
                nick: nick.clone(),
                conn: conn.clone(),
            };
            members.by_conn.insert(conn.id, member);
            entry.count.store(members.by_conn.len(), Ordering::Relaxed);
            return Ok(true);
        }
    }

    /// Removes a member and tells the others (`LEFT`). Returns false if it was not there.
    pub fn leave(&self, room: &str, conn: ConnId) -> bool {
        let found = {
            let rooms = self.rooms.lock().expect("rooms lock");
            rooms
                .get_key_value(room)
                .map(|(n, r)| (n.clone(), r.clone()))
        };
        let Some((name, entry)) = found else {
            return false;
        };
        let mut members = entry.members.lock().expect("room lock");
        let Some(gone) = members.by_conn.remove(&conn) else {
            return false;
        };
        entry.count.store(members.by_conn.len(), Ordering::Relaxed);
        members.tell_others(conn, &name, protocol::line(&["LEFT", room, &gone.nick]));
        if members.by_conn.is_empty() {
            members.closed = true;
            drop(members);
            self.forget_closed(room, &entry);
        }
        true
    }

    /// Drops `entry` from the registry if it is still the room's entry there.
    fn forget_closed(&self, room: &str, entry: &Arc<Room>) {
        let mut rooms = self.rooms.lock().expect("rooms lock");
        if rooms.get(room).is_some_and(|e| Arc::ptr_eq(e, entry)) {
            rooms.remove(room);
        }
    }

    /// Records a new nick in the given rooms and tells their members (`NICK <room> <old> <new>`).
    pub fn rename(&self, rooms: &[Arc<str>], conn: ConnId, old: &str, new: &Arc<str>) {
        for room in rooms {
            let Some(entry) = self.get(room) else {
                continue;
            };
            let mut members = entry.members.lock().expect("room lock");
            if let Some(m) = members.by_conn.get_mut(&conn) {
                m.nick = new.clone();
                members.tell_others(conn, room, protocol::line(&["NICK", room, old, new]));
            }
        }
    }

    /// Delivers a batch of live messages to every member of its room (the session of each
    /// member skips its own messages). The sender of a batch of only its own messages gets
    /// it marked `only_ours`, which keeps its place in the room's order at no cost.
    ///
    /// Returns how many message lines that makes (each message to each member but its
    /// sender), for the metrics: counted per batch, not per member.
    pub fn publish(&self, batch: Arc<LiveBatch>) -> u64 {
        let Some(room) = self.get(&batch.room) else {
            return 0;
        };
        let members = room.members.lock().expect("room lock");
        let mut armed = Vec::new();
        for (id, m) in &members.by_conn {
            let held = m.conn.mailbox.deliver(Delivery::Messages {
                batch: batch.clone(),
                only_ours: batch.only_sender == Some(*id),
            });
            if held {
                armed.push(m.conn.mailbox.clone());
            }
        }
        self.flusher.flush_soon(armed);
        // Senders still in the room do not get their own messages: one look-up per message
        // (or one per batch of a single sender), never one per member.
        let own = match batch.only_sender {
            Some(sender) if members.by_conn.contains_key(&sender) => batch.messages.len(),
            Some(_) => 0,
            None => batch
                .messages
                .iter()
                .filter(|m| members.by_conn.contains_key(&m.sender))
                .count(),
        };
        (members.by_conn.len() * batch.messages.len() - own) as u64
    }

    /// Has every member catch every room it is in up from the store, quietly: the server
    /// lost track of what was stored for a while (its notifications, see `bus.rs`).
    pub fn catch_up_everyone(&self) {
        let rooms: Vec<(Arc<str>, Arc<Room>)> = {
            let rooms = self.rooms.lock().expect("rooms lock");
            rooms.iter().map(|(n, r)| (n.clone(), r.clone())).collect()
        };
        for (name, room) in rooms {
            let members = room.members.lock().expect("room lock");
            for m in members.by_conn.values() {
                m.conn.mailbox.catch_up_quietly(vec![name.clone()]);
            }
        }
    }

    /// A room's members on another server changed: its members here are told.
    pub fn remote_changed(&self, change: &Presence) {
        let told = self.remote.lock().expect("remote lock").apply(change);
        self.tell_all(told);
    }

    /// Who is on other servers, read anew: members here are told what changed.
    pub fn remote_replaced(&self, all: Vec<RemoteMember>) {
        let told = self.remote.lock().expect("remote lock").replace(all);
        for told in told {
            self.tell_all(Some(told));
        }
    }

    fn tell_all(&self, told: Option<(Arc<str>, Bytes)>) {
        let Some((room, line)) = told else {
            return;
        };
        if let Some(entry) = self.get(&room) {
            // No connection here has id 0: everyone is told.
            entry
                .members
                .lock()
                .expect("room lock")
                .tell_others(0, &room, line);
        }
    }

    /// The nicks in a room, sorted; empty for a room nobody is in.
    pub fn members(&self, room: &str) -> Vec<Arc<str>> {
        self.members_after(room, None, usize::MAX)
    }

    /// At most `max` of a room's nicks that sort after `after`, sorted: one slice of a `WHO`
    /// reply, which is listed a slice at a time as the client reads it.
    pub fn members_after(&self, room: &str, after: Option<&str>, max: usize) -> Vec<Arc<str>> {
        let mut nicks = self
            .remote
            .lock()
            .expect("remote lock")
            .members_after(room, after, max);
        if let Some(room) = self.get(room) {
            let members = room.members.lock().expect("room lock");
            nicks.extend(
                members
                    .by_conn
                    .values()
                    .filter(|m| after.is_none_or(|after| *m.nick > *after))
                    .map(|m| m.nick.clone()),
            );
        }
        if nicks.len() > max {
            nicks.select_nth_unstable(max);
            nicks.truncate(max);
        }
        nicks.sort();
        nicks
    }

    /// Every room with members, with its member count, sorted by name.
    pub fn list(&self) -> Vec<(Arc<str>, usize)> {
        self.list_after(None, usize::MAX)
    }

    /// At most `max` rooms with members whose names sort after `after`, with their member
    /// counts, sorted by name: one slice of a `ROOMS` reply. Counts are read without the
    /// rooms' locks: a room busy telling its members something does not hold up the list.
    pub fn list_after(&self, after: Option<&str>, max: usize) -> Vec<(Arc<str>, usize)> {
        let remote = self
            .remote
            .lock()
            .expect("remote lock")
            .rooms_after(after, max);
        let rooms = self.rooms.lock().expect("rooms lock");
        let from = match after {
            Some(after) => Bound::Excluded(after),
            None => Bound::Unbounded,
        };
        let here = rooms
            .range::<str, _>((from, Bound::Unbounded))
            .map(|(name, r)| (name.clone(), r.count.load(Ordering::Relaxed)))
            .filter(|(_, count)| *count > 0)
            .take(max);
        // Both sorted by name: merged, with the counts of a room on both sides added.
        let mut merged: BTreeMap<Arc<str>, usize> = here.collect();
        for (room, count) in remote {
            *merged.entry(room).or_default() += count;
        }
        merged.into_iter().take(max).collect()
    }

    /// How many rooms there are, and how many members they have together (a connection in
    /// three rooms counts three times). Counts are read without the rooms' locks.
    pub fn totals(&self) -> (usize, usize) {
        let rooms = self.rooms.lock().expect("rooms lock");
        let members = rooms
            .values()
            .map(|r| r.count.load(Ordering::Relaxed))
            .sum();
        (rooms.len(), members)
    }

    /// How many rooms there are.
    pub fn len(&self) -> usize {
        self.rooms.lock().expect("rooms lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::Duration;

    use super::*;
    use crate::mailbox::Mailbox;

    fn conn(id: ConnId) -> ConnHandle {
        ConnHandle {
            id,
            mailbox: Arc::new(Mailbox::new(1 << 20)),
        }
    }

    fn lines(conn: &ConnHandle) -> Vec<String> {
        let mut out = Vec::new();
        conn.mailbox.take_while(|item| {
            if let Delivery::Presence { line, .. } = item {
                out.push(String::from_utf8_lossy(&line).trim_end().to_string());
            }
            true
        });
        out
    }

    #[test]
    fn presence_goes_to_the_others() {
        let rooms = Rooms::new();
        let (a, b) = (conn(1), conn(2));
        assert!(rooms.join(&"r".into(), &"alice".into(), &a));
        assert!(rooms.join(&"r".into(), &"bob".into(), &b));
        assert!(!rooms.join(&"r".into(), &"bob".into(), &b), "already there");
        rooms.rename(&["r".into()], 2, "bob", &"robert".into());
        assert_eq!(
            rooms.members("r"),
            ["alice", "robert"].map(Arc::<str>::from)
        );
        assert!(rooms.leave("r", 2));
        assert!(!rooms.leave("r", 2));
        assert_eq!(
            lines(&a),
            ["JOINED r bob", "NICK r bob robert", "LEFT r robert"]
        );
        assert!(lines(&b).is_empty(), "nobody is told about themselves");
        assert_eq!(rooms.list(), vec![(Arc::from("r"), 1)]);
        assert!(rooms.leave("r", 1));
        assert!(rooms.list().is_empty(), "an empty room is dropped");
        assert!(
            rooms.join(&"r".into(), &"alice".into(), &a),
            "and made anew"
        );
    }

    /// Telling a room's members something must not hold the registry: while one member's
    /// mailbox is slow to take a presence line, other rooms go on being joined and listed.
    #[test]
    fn a_member_slow_to_take_presence_holds_up_only_its_room() {
        let rooms = Arc::new(Rooms::new());
        let stuck = conn(1);
        rooms.join(&"a".into(), &"stuck".into(), &stuck);
        let held = stuck.mailbox.hold_lock();
        let joiner = {
            let rooms = rooms.clone();
            std::thread::spawn(move || rooms.join(&"a".into(), &"late".into(), &conn(2)))
        };
        // Give the joiner time to reach the held mailbox (if it has not, the rest of the test
        // proves nothing but still passes; it never fails for that reason).
        std::thread::sleep(Duration::from_millis(200));
        let (done, finished) = mpsc::channel();
        {
            let rooms = rooms.clone();
            std::thread::spawn(move || {
                rooms.join(&"b".into(), &"other".into(), &conn(3));
                let listed = rooms.list().len();
                let _ = done.send(listed);
            });
        }
        let listed = finished.recv_timeout(Duration::from_secs(20));
        drop(held);
        assert!(joiner.join().unwrap());
        assert!(
            listed.is_ok(),
            "joining and listing another room waited for a member of room a"
        );
    }

    /// What `publish` reports delivered (the metrics' count): each message to each member
    /// but its sender, whether the batch has one sender or several, or one who left.
    #[test]
    fn a_publish_counts_each_message_to_each_member_but_its_sender() {
        use crate::fanout::BatchEntry;
        let rooms = Rooms::new();
        let members: Vec<ConnHandle> = (1..=4).map(conn).collect();
        for m in &members {
            rooms.join(&"r".into(), &format!("n{}", m.id).into(), m);
        }
        let batch = |senders: &[ConnId]| {
            let messages = senders
                .iter()
                .enumerate()
                .map(|(i, &sender)| BatchEntry {
                    id: i as u64 + 1,
                    sender,
                    end: i + 1,
                })
                .collect::<Vec<_>>();
            let first = senders[0];
            Arc::new(LiveBatch {
                room: "r".into(),
                bytes: Bytes::from(vec![b'\n'; senders.len()]),
                only_sender: senders.iter().all(|s| *s == first).then_some(first),
                websocket: Default::default(),
                messages,
            })
        };
        assert_eq!(
            rooms.publish(batch(&[1, 1, 1])),
            9,
            "3 messages to 3 others"
        );
        assert_eq!(
            rooms.publish(batch(&[1, 2])),
            6,
            "2 messages to 3 others each"
        );
        assert_eq!(
            rooms.publish(batch(&[9, 9])),
            8,
            "its sender left: 2 to all 4"
        );
        assert_eq!(rooms.publish(batch(&[1, 9])), 7);
        assert_eq!(rooms.totals(), (1, 4));
        let nobody = LiveBatch {
            room: "empty".into(),
            bytes: Bytes::from_static(b"\n"),
            messages: batch(&[1]).messages.clone(),
            only_sender: Some(1),
            websocket: Default::default(),
        };
        assert_eq!(rooms.publish(Arc::new(nobody)), 0, "a room nobody is in");
    }

    #[test]
    fn rooms_and_members_are_listed_a_slice_at_a_time() {
        let rooms = Rooms::with_max_rooms(3);
        let (a, b) = (conn(1), conn(2));
        for name in ["c", "a", "b"] {
            assert_eq!(
                rooms.join_within_limit(&name.into(), &"x".into(), &a),
                Ok(true)
            );
        }
        assert_eq!(
            rooms.join_within_limit(&"d".into(), &"x".into(), &a),
            Err(RoomsFull),
            "a fourth room is not made"
        );
        assert_eq!(
            rooms.join_within_limit(&"a".into(), &"y".into(), &b),
            Ok(true),
            "an existing room is joined at the limit"
        );
        let names = |list: Vec<(Arc<str>, usize)>| -> Vec<String> {
            list.iter().map(|(n, c)| format!("{n}:{c}")).collect()
        };
        assert_eq!(names(rooms.list_after(None, 2)), ["a:2", "b:1"]);
        assert_eq!(names(rooms.list_after(Some("a"), 5)), ["b:1", "c:1"]);
        assert_eq!(names(rooms.list_after(Some("aa"), 1)), ["b:1"]);
        assert!(rooms.list_after(Some("c"), 5).is_empty());
        assert!(rooms.leave("c", 1));
        assert!(rooms
            .join_within_limit(&"d".into(), &"x".into(), &a)
            .is_ok());
        for (id, nick) in [(3, "m"), (4, "Z"), (5, "k"), (6, "zz")] {
            rooms.join(&"d".into(), &nick.into(), &conn(id));
        }
        let nicks = |v: Vec<Arc<str>>| v.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        assert_eq!(nicks(rooms.members_after("d", None, 2)), ["Z", "k"]);
        assert_eq!(nicks(rooms.members_after("d", Some("k"), 2)), ["m", "x"]);
        assert_eq!(nicks(rooms.members_after("d", Some("x"), 2)), ["zz"]);
        assert!(rooms.members_after("nowhere", None, 2).is_empty());
    }

    #[test]
    fn a_room_emptied_while_someone_joins_it_is_not_lost() {
        let rooms = Arc::new(Rooms::new());
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let rooms = rooms.clone();
                std::thread::spawn(move || {
                    let me = conn(t);
                    for _ in 0..2000 {
                        assert!(rooms.join(&"r".into(), &format!("n{t}").into(), &me));
                        assert!(rooms.leave("r", t));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(rooms.list().is_empty());
        let last = conn(9);
        rooms.join(&"r".into(), &"last".into(), &last);
        assert_eq!(rooms.members("r"), [Arc::<str>::from("last")]);
    }
}
