//! What this server wants the shared directory to hold (its connections' names and rooms)
//! against what it has written there: the difference is what the next write sends. Pure, so
//! that its bookkeeping is tested on its own.
//!
//! Memory stays bounded by this server's own connections and rooms, whatever clients do and
//! however long the database is away: a change that is undone before it is written (a JOIN
//! then a PART) leaves nothing behind, so what waits is at most what is wanted plus what is
//! written.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::mailbox::ConnId;

/// One entry a connection holds in the directory.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Slot {
    /// Its name (unique across servers).
    Name,
    /// Its membership of a room, under its name.
    Room(Arc<str>),
}

pub type Key = (ConnId, Slot);

/// A change to write: the slot's name from now on (`None`: remove it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    pub conn: ConnId,
    pub slot: Slot,
    pub name: Option<Arc<str>>,
}

/// What came of a name claim that was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lost {
    pub conn: ConnId,
    /// The name that another server holds.
    pub name: Arc<str>,
}

#[derive(Debug, Default)]
pub struct Ledger {
    wanted: HashMap<Key, Arc<str>>,
    written: HashMap<Key, Arc<str>>,
    /// Keys whose wanted and written values differ.
    dirty: HashSet<Key>,
    /// Keys of the write under way: not settled until it is done, even if what is wanted
    /// meanwhile went back to what was written before (a `JOIN` just after a `PART`: the
    /// `PART` is being written, and the `JOIN` is written after it).
    flying: HashSet<Key>,
    /// Room slots in `written`.
    written_rooms: usize,
}

impl Ledger {
    /// From now on `key` should read `name` (`None`: be absent).
    pub fn set(&mut self, key: Key, name: Option<Arc<str>>) {
        match name {
            Some(name) => self.wanted.insert(key.clone(), name),
            None => self.wanted.remove(&key),
        };
        self.recheck(key);
    }

    fn recheck(&mut self, key: Key) {
        if self.wanted.get(&key) == self.written.get(&key) {
            self.dirty.remove(&key);
        } else {
            self.dirty.insert(key);
        }
    }

    /// True if nothing is waiting to be written.
    pub fn is_clean(&self) -> bool {
        self.dirty.is_empty()
    }

    /// True if `key` is written as wanted.
    pub fn is_settled(&self, key: &Key) -> bool {
        !self.dirty.contains(key) && !self.flying.contains(key)
    }

    /// What `key` reads in the directory, as far as this server knows.
    pub fn written(&self, key: &Key) -> Option<&Arc<str>> {
        self.written.get(key)
    }

    /// At most `max` changes to write, in a stable order (by connection, its name before
    /// its rooms). They are under way until [`done`](Self::done) or
    /// [`failed`](Self::failed).
    pub fn writes(&mut self, max: usize) -> Vec<Write> {
        let mut keys: Vec<&Key> = self.dirty.iter().collect();
        if keys.len() > max {
            keys.select_nth_unstable(max);
            keys.truncate(max);
        }
        keys.sort();
        let writes: Vec<Write> = keys
            .into_iter()
            .map(|(conn, slot)| Write {
                conn: *conn,
                slot: slot.clone(),
                name: self.wanted.get(&(*conn, slot.clone())).cloned(),
            })
            .collect();
        self.flying = writes.iter().map(|w| (w.conn, w.slot.clone())).collect();
        writes
    }

    /// The write under way failed: nothing of it was written, and what it held is still
    /// dirty if it still differs from what was written before.
    pub fn failed(&mut self) {
        self.flying.clear();
    }

    /// `writes` are in the directory, but for the name claims in `lost`: those names are
    /// held elsewhere, so each of those connections keeps the name it had written (if any),
    /// which is wanted again. Keys changed meanwhile stay dirty.
    pub fn done(&mut self, writes: Vec<Write>, lost: &[Lost]) {
        self.flying.clear();
        let lost: HashSet<ConnId> = lost.iter().map(|l| l.conn).collect();
        for w in writes {
            let key = (w.conn, w.slot);
            if key.1 == Slot::Name && lost.contains(&w.conn) {
                if self.wanted.get(&key) == w.name.as_ref() {
                    match self.written.get(&key) {
                        Some(kept) => self.wanted.insert(key.clone(), kept.clone()),
                        None => self.wanted.remove(&key),
                    };
                }
            } else {
                let was = match w.name {
                    Some(name) => self.written.insert(key.clone(), name),
                    None => self.written.remove(&key),
                };
                if matches!(key.1, Slot::Room(_)) {
                    match (was.is_some(), self.written.contains_key(&key)) {
                        (false, true) => self.written_rooms += 1,
                        (true, false) => self.written_rooms -= 1,
                        _ => {}
                    }
                }
            }
            self.recheck(key);
        }
    }

    /// True if some room membership is written (the directory should hold some for this
    /// server).
    pub fn has_written_rooms(&self) -> bool {
        self.written_rooms > 0
    }

    /// The directory lost this server's rooms but not its names (PostgreSQL empties the
    /// unlogged `presence` after a crash): they are to be written again.
    pub fn forget_written_rooms(&mut self) {
        self.written.retain(|(_, slot), _| *slot == Slot::Name);
        self.written_rooms = 0;
        let lost = self.wanted.keys().filter(|(_, slot)| *slot != Slot::Name);
        self.dirty.extend(lost.cloned());
    }

    /// The directory lost what this server wrote (its node was taken for dead and removed,
    /// or the database emptied the tables): everything wanted is to be written again.
    pub fn forget_written(&mut self) {
        self.written.clear();
        self.written_rooms = 0;
        self.dirty = self.wanted.keys().cloned().collect();
    }

    /// How many keys are held or waiting (for the tests of its bound).
    #[cfg(test)]
    fn size(&self) -> usize {
        self.wanted.len() + self.written.len() + self.dirty.len() + self.flying.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room(conn: ConnId, room: &str) -> Key {
        (conn, Slot::Room(room.into()))
    }

    fn name(s: &str) -> Option<Arc<str>> {
        Some(s.into())
    }

    #[test]
    fn what_is_wanted_is_written_once_and_names_go_first() {
        let mut ledger = Ledger::default();
        ledger.set(room(1, "r"), name("alice"));
        ledger.set((1, Slot::Name), name("alice"));
        let writes = ledger.writes(10);
        assert_eq!(writes.len(), 2);
        assert_eq!(writes[0].slot, Slot::Name, "its name before its rooms");
        assert!(!ledger.is_clean(), "dirty until written");
        ledger.done(writes, &[]);
        assert!(ledger.is_clean());
        assert!(ledger.writes(10).is_empty());
        assert_eq!(ledger.written(&(1, Slot::Name)), name("alice").as_ref());
    }

    #[test]
    fn a_change_undone_before_it_is_written_leaves_nothing() {
        let mut ledger = Ledger::default();
        for i in 0..10_000 {
            let key = room(1, &format!("r{i}"));
            ledger.set(key.clone(), name("alice"));
            ledger.set(key, None);
        }
        assert!(ledger.is_clean());
        assert_eq!(ledger.size(), 0, "nothing kept for rooms joined and left");
    }

    #[test]
    fn a_change_made_while_writing_is_written_next() {
        let mut ledger = Ledger::default();
        ledger.set(room(1, "r"), name("alice"));
        let writes = ledger.writes(10);
        ledger.set(room(1, "r"), name("alicia"));
        ledger.done(writes, &[]);
        assert!(!ledger.is_settled(&room(1, "r")));
        let next = ledger.writes(10);
        assert_eq!(next[0].name, name("alicia"));
        ledger.done(next, &[]);
        assert!(ledger.is_clean());
    }

    #[test]
    fn a_failed_write_is_sent_again_and_a_leave_meanwhile_undoes_a_write() {
        let mut ledger = Ledger::default();
        ledger.set(room(1, "r"), name("alice"));
        let writes = ledger.writes(10);
        ledger.done(writes, &[]);
        ledger.set(room(1, "r"), None);
        let writes = ledger.writes(10);
        assert_eq!(writes[0].name, None, "a removal");
        // Not written (the database is away): still wanted, still sent next time.
        ledger.failed();
        assert_eq!(ledger.writes(10), writes);
        ledger.done(writes, &[]);
        assert!(ledger.is_clean());
        assert_eq!(ledger.size(), 0);
    }

    #[test]
    fn a_change_undone_while_it_is_written_is_not_settled_until_written_again() {
        let mut ledger = Ledger::default();
        let key = room(1, "r");
        ledger.set(key.clone(), name("alice"));
        let writes = ledger.writes(10);
        ledger.done(writes, &[]);
        // A PART under way, and a JOIN meanwhile: the JOIN waits for the PART, then itself.
        ledger.set(key.clone(), None);
        let part = ledger.writes(10);
        ledger.set(key.clone(), name("alice"));
        assert!(!ledger.is_settled(&key), "the PART is still being written");
        ledger.done(part, &[]);
        assert!(!ledger.is_settled(&key));
        let join = ledger.writes(10);
        assert_eq!(join[0].name, name("alice"));
        ledger.done(join, &[]);
        assert!(ledger.is_settled(&key));
        // Undone while a write fails: settled again, with nothing to write.
        ledger.set(key.clone(), None);
        let _part = ledger.writes(10);
        ledger.set(key.clone(), name("alice"));
        assert!(!ledger.is_settled(&key));
        ledger.failed();
        assert!(ledger.is_settled(&key));
        assert!(ledger.writes(10).is_empty());
        assert_eq!(ledger.size(), 2, "wanted and written, nothing else");
    }

    #[test]
    fn a_lost_claim_keeps_the_name_written_before() {
        let mut ledger = Ledger::default();
        ledger.set((1, Slot::Name), name("alice"));
        let writes = ledger.writes(10);
        ledger.done(writes, &[]);
        ledger.set((1, Slot::Name), name("bob"));
        let writes = ledger.writes(10);
        let lost = [Lost {
            conn: 1,
            name: "bob".into(),
        }];
        ledger.done(writes, &lost);
        assert!(ledger.is_clean(), "nothing more to write");
        assert_eq!(ledger.written(&(1, Slot::Name)), name("alice").as_ref());
        // A first claim lost: no name at all.
        ledger.set((2, Slot::Name), name("bob"));
        let writes = ledger.writes(10);
        ledger.done(
            writes,
            &[Lost {
                conn: 2,
                name: "bob".into(),
            }],
        );
        assert!(ledger.is_clean());
        assert_eq!(ledger.written(&(2, Slot::Name)), None);
    }

    #[test]
    fn everything_is_written_again_once_the_directory_forgot_it() {
        let mut ledger = Ledger::default();
        ledger.set((1, Slot::Name), name("alice"));
        ledger.set(room(1, "r"), name("alice"));
        let writes = ledger.writes(10);
        ledger.done(writes, &[]);
        ledger.forget_written();
        let again = ledger.writes(10);
        assert_eq!(again.len(), 2);
        assert_eq!(ledger.writes(1).len(), 1, "at most max a write");
        ledger.done(again, &[]);
        assert!(ledger.is_clean());
    }

    #[test]
    fn rooms_lost_by_the_directory_are_written_again_and_names_kept() {
        let mut ledger = Ledger::default();
        ledger.set((1, Slot::Name), name("alice"));
        ledger.set(room(1, "r"), name("alice"));
        let writes = ledger.writes(10);
        ledger.done(writes, &[]);
        assert!(ledger.has_written_rooms());
        ledger.forget_written_rooms();
        assert!(!ledger.has_written_rooms());
        let again = ledger.writes(10);
        assert_eq!(again.len(), 1, "the room only");
        assert_eq!(again[0].slot, Slot::Room("r".into()));
        ledger.done(again, &[]);
        assert!(ledger.has_written_rooms() && ledger.is_clean());
        ledger.set(room(1, "r"), None);
        let gone = ledger.writes(10);
        ledger.done(gone, &[]);
        assert!(!ledger.has_written_rooms());
    }
}
