//! In-memory history: the last `capacity` messages of each room, and at most `max_bytes` in
//! all (the oldest messages of any room go first), lost on restart.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use super::{HistoryStore, NewMessage, Page, StoreError, StoredMessage};
use crate::protocol::MessageId;

/// A bounded per-room log, bounded in bytes in all. Ids keep counting after old messages
/// are evicted.
pub struct MemoryStore {
    capacity: usize,
    /// Random, made at start: this store's history lives only as long as the store.
    epoch: u64,
    max_bytes: usize,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    rooms: HashMap<Arc<str>, RoomLog>,
    /// Each room that holds messages, by the arrival number of its oldest one: the first
    /// entry is the room holding the oldest message of all, the next to evict.
    oldest: BTreeSet<(u64, Arc<str>)>,
    /// Arrival numbers, counting every message stored (across rooms).
    arrivals: u64,
    /// What the messages held take, as [`footprint`] counts it.
    bytes: usize,
}

#[derive(Default)]
struct RoomLog {
    last_id: MessageId,
    /// The id of the last message evicted (0 if none).
    evicted_through: MessageId,
    /// Oldest first; ids strictly increasing.
    messages: VecDeque<StoredMessage>,
    /// The arrival number of each message in `messages`.
    arrivals: VecDeque<u64>,
}

/// What one stored message takes in memory, near enough: its text, its entry in the log and
/// its arrival number. (The nick is shared with the sender's other messages.)
fn footprint(m: &StoredMessage) -> usize {
    m.text.capacity() + std::mem::size_of::<StoredMessage>() + std::mem::size_of::<u64>()
}

impl MemoryStore {
    /// Keeps at most `capacity` messages per room (at least one), and no byte bound.
    pub fn new(capacity: usize) -> Self {
        MemoryStore::bounded(capacity, usize::MAX)
    }

    /// Keeps at most `capacity` messages per room (at least one) and about `max_bytes` of
    /// messages in all: past that the oldest messages, of whatever room, are evicted first.
    /// The newest message is always kept, however large.
    pub fn bounded(capacity: usize, max_bytes: usize) -> Self {
        MemoryStore {
            capacity: capacity.max(1),
            epoch: new_epoch(),
            max_bytes,
            state: Mutex::new(State::default()),
        }
    }

    /// Bytes of messages held, as counted against `max_bytes`.
    pub fn bytes(&self) -> usize {
        self.state.lock().expect("memory store lock").bytes
    }
}

impl State {
    /// Stores `message` in `room` as its next id, then evicts what the bounds no longer allow.
    fn push(
        &mut self,
        room: &Arc<str>,
        message: &NewMessage,
        millis: i64,
        capacity: usize,
    ) -> StoredMessage {
        self.arrivals += 1;
        let arrival = self.arrivals;
        let log = match self.rooms.get_mut(room) {
            Some(log) => log,
            None => self.rooms.entry(room.clone()).or_default(),
        };
        log.last_id += 1;
        let stored = StoredMessage {
            id: log.last_id,
            millis,
            nick: message.nick.clone(),
            text: message.text.clone(),
        };
        if log.messages.is_empty() {
            self.oldest.insert((arrival, room.clone()));
        }
        log.messages.push_back(stored.clone());
        log.arrivals.push_back(arrival);
        self.bytes += footprint(&stored);
        if log.messages.len() > capacity {
            self.evict_oldest_of(room);
        }
        stored
    }

    /// Evicts the oldest message of all while more than `max_bytes` are held, never the
    /// newest one.
    fn evict_to(&mut self, max_bytes: usize) {
        while self.bytes > max_bytes {
            let Some((arrival, room)) = self.oldest.first().cloned() else {
                return;
            };
            if arrival == self.arrivals {
                return;
            }
            self.evict_oldest_of(&room);
        }
    }

    /// Evicts a room's oldest message, keeping `oldest`, the byte count and the room's
    /// `evicted_through` right.
    fn evict_oldest_of(&mut self, room: &Arc<str>) {
        let Some(log) = self.rooms.get_mut(room) else {
            return;
        };
        let (Some(gone), Some(arrival)) = (log.messages.pop_front(), log.arrivals.pop_front())
        else {
            return;
        };
        log.evicted_through = gone.id;
        self.bytes -= footprint(&gone);
        let next = log.arrivals.front().copied();
        if log.messages.is_empty() {
            // An emptied log holds nothing but its counters (kept: ids never restart).
            log.messages = VecDeque::new();
            log.arrivals = VecDeque::new();
        }
        self.oldest.remove(&(arrival, room.clone()));
        if let Some(next) = next {
            self.oldest.insert((next, room.clone()));
        }
    }
}

/// A random, non-zero 64-bit value (std's hasher keys are random per process and per call).
fn new_epoch() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_i64(now_millis());
    hasher.finish().max(1)
}

fn now_millis() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl RoomLog {
    /// Index of the first message with id > `id`.
    fn first_after(&self, id: MessageId) -> usize {
        self.messages.partition_point(|m| m.id <= id)
    }

    /// Index of the first message with id >= `id` (the end if `None`).
    fn first_at_or_after(&self, id: Option<MessageId>) -> usize {
        match id {
            Some(id) => self.messages.partition_point(|m| m.id < id),
            None => self.messages.len(),
        }
    }

    fn page(&self, page: Page) -> Vec<StoredMessage> {
        let (start, end) = match page {
            Page::Newest { before, limit } => {
                let end = self.first_at_or_after(before);
                (end.saturating_sub(limit), end)
            }
            Page::Oldest {
                after,
                before,
                limit,
            } => {
                let start = self.first_after(after);
                let end = self.first_at_or_after(before).max(start);
                (start, end.min(start.saturating_add(limit)))
            }
        };
        self.messages.range(start..end).cloned().collect()
    }
}

#[async_trait]
impl HistoryStore for MemoryStore {
    async fn append(&self, batch: &[NewMessage]) -> Result<Vec<StoredMessage>, StoreError> {
        let millis = now_millis();
        let mut state = self.state.lock().expect("memory store lock");
        let stored = batch
            .iter()
            .map(|m| {
                let stored = state.push(&m.room, m, millis, self.capacity);
                state.evict_to(self.max_bytes);
                stored
            })
            .collect();
        Ok(stored)
    }

    async fn page(&self, room: &str, page: Page) -> Result<Vec<StoredMessage>, StoreError> {
        let state = self.state.lock().expect("memory store lock");
        Ok(state
            .rooms
            .get(room)
            .map(|log| log.page(page))
            .unwrap_or_default())
    }

    async fn latest_id(&self, room: &str) -> Result<MessageId, StoreError> {
        let state = self.state.lock().expect("memory store lock");
        Ok(state.rooms.get(room).map_or(0, |log| log.last_id))
    }

    fn epoch(&self) -> u64 {
        self.epoch
    }

    fn forgotten_through(&self, room: &str) -> MessageId {
        let state = self.state.lock().expect("memory store lock");
        state.rooms.get(room).map_or(0, |log| log.evicted_through)
    }
}

#[cfg(test)]
impl MemoryStore {
    /// A store keeping `capacity` a room, with `n` messages said in `room` (`m1`, `m2`...).
    pub(crate) async fn filled(room: &str, n: usize, capacity: usize) -> MemoryStore {
        let store = MemoryStore::new(capacity);
        let batch: Vec<NewMessage> = (1..=n)
            .map(|i| NewMessage {
                room: room.into(),
                nick: "n".into(),
                text: format!("m{i}"),
            })
            .collect();
        store.append(&batch).await.unwrap();
        store
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn ids(store: &MemoryStore, page: Page) -> Vec<MessageId> {
        store
            .page("r", page)
            .await
            .unwrap()
            .iter()
            .map(|m| m.id)
            .collect()
    }

    #[tokio::test]
    async fn pages_both_ways() {
        let s = MemoryStore::filled("r", 10, 100).await;
        let newest = |before, limit| Page::Newest { before, limit };
        let oldest = |after, before, limit| Page::Oldest {
            after,
            before,
            limit,
        };
        assert_eq!(ids(&s, newest(None, 3)).await, vec![8, 9, 10]);
        assert_eq!(ids(&s, newest(Some(8), 3)).await, vec![5, 6, 7]);
        assert_eq!(ids(&s, newest(Some(2), 3)).await, vec![1]);
        assert_eq!(ids(&s, oldest(0, None, 3)).await, vec![1, 2, 3]);
        assert_eq!(ids(&s, oldest(8, None, 3)).await, vec![9, 10]);
        assert_eq!(ids(&s, oldest(3, Some(6), 10)).await, vec![4, 5]);
        assert_eq!(ids(&s, oldest(6, Some(3), 10)).await, Vec::<u64>::new());
        assert_eq!(s.latest_id("r").await.unwrap(), 10);
        assert_eq!(s.latest_id("other").await.unwrap(), 0);
    }

    #[tokio::test]
    async fn bounded_per_room_and_ids_keep_counting() {
        let s = MemoryStore::filled("r", 10, 4).await;
        assert_eq!(
            ids(
                &s,
                Page::Newest {
                    before: None,
                    limit: 100
                }
            )
            .await,
            vec![7, 8, 9, 10]
        );
        assert_eq!(s.latest_id("r").await.unwrap(), 10);
        assert_eq!(s.forgotten_through("r"), 6);
        assert_eq!(
            MemoryStore::filled("r", 3, 4).await.forgotten_through("r"),
            0
        );
    }

    fn said(room: &str, text: &str) -> NewMessage {
        NewMessage {
            room: room.into(),
            nick: "n".into(),
            text: text.to_string(),
        }
    }

    async fn all_ids(store: &MemoryStore, room: &str) -> Vec<MessageId> {
        let page = Page::Oldest {
            after: 0,
            before: None,
            limit: usize::MAX,
        };
        store
            .page(room, page)
            .await
            .unwrap()
            .iter()
            .map(|m| m.id)
            .collect()
    }

    /// The byte bound evicts the oldest message of all, whichever room it is in, and each
    /// room's `forgotten_through` names exactly what it lost.
    #[tokio::test]
    async fn over_its_byte_bound_the_oldest_of_all_rooms_go_first() {
        let text = "x".repeat(100);
        let one = footprint(&StoredMessage {
            id: 1,
            millis: 0,
            nick: "n".into(),
            text: text.clone(),
        });
        let store = MemoryStore::bounded(100, 5 * one);
        // Arrival order: a1 b1 a2 c1 b2, then a3 (one too many) and c2.
        for room in ["a", "b", "a", "c", "b"] {
            store.append(&[said(room, &text)]).await.unwrap();
        }
        assert_eq!(store.bytes(), 5 * one);
        let after = |room: &'static str, text: &str| said(room, text);
        store.append(&[after("a", &text)]).await.unwrap(); // a3: a1 goes
        assert_eq!(all_ids(&store, "a").await, vec![2, 3]);
        assert_eq!(store.forgotten_through("a"), 1);
        assert_eq!(all_ids(&store, "b").await, vec![1, 2]);
        store.append(&[after("c", &text)]).await.unwrap(); // c2: b1 goes
        assert_eq!(all_ids(&store, "b").await, vec![2]);
        assert_eq!(store.forgotten_through("b"), 1);
        store.append(&[after("b", &text)]).await.unwrap(); // b3: a2 goes
        assert_eq!(all_ids(&store, "a").await, vec![3]);
        assert_eq!(store.forgotten_through("a"), 2);
        assert_eq!(all_ids(&store, "c").await, vec![1, 2]);
        assert_eq!(store.forgotten_through("c"), 0, "c has lost nothing yet");
        assert_eq!(store.bytes(), 5 * one);
        // One message larger than the whole bound: everything else goes, it stays.
        let huge = "y".repeat(10 * text.len());
        store.append(&[after("d", &huge)]).await.unwrap();
        for (room, last) in [("a", 3), ("b", 3), ("c", 2)] {
            assert!(all_ids(&store, room).await.is_empty(), "{room} emptied");
            assert_eq!(
                store.forgotten_through(room),
                last,
                "{room}: all it held is gone"
            );
            assert_eq!(
                store.latest_id(room).await.unwrap(),
                last,
                "ids keep counting"
            );
        }
        assert_eq!(
            all_ids(&store, "d").await,
            vec![1],
            "the newest is always kept"
        );
        store.append(&[after("a", &text)]).await.unwrap();
        assert_eq!(all_ids(&store, "a").await, vec![4], "ids are not reused");
        assert_eq!(all_ids(&store, "d").await, Vec::<MessageId>::new());
        assert_eq!(store.bytes(), one);
    }

    /// The per-room bound and the byte bound together keep the accounting exact: after
    /// any mix of both kinds of eviction, the bytes counted are the bytes held.
    #[tokio::test]
    async fn both_bounds_together_keep_the_count_of_bytes_exact() {
        let store = MemoryStore::bounded(3, 4_000);
        for i in 0..500 {
            let room = ["a", "b", "c", "d"][i * i % 4];
            let text = "z".repeat(i % 97 + 1);
            store.append(&[said(room, &text)]).await.unwrap();
            let state = store.state.lock().unwrap();
            let held: usize = state
                .rooms
                .values()
                .flat_map(|log| log.messages.iter())
                .map(footprint)
                .sum();
            assert_eq!(state.bytes, held);
            assert!(held <= 4_000);
            let nonempty = state
                .rooms
                .values()
                .filter(|l| !l.messages.is_empty())
                .count();
            assert_eq!(
                state.oldest.len(),
                nonempty,
                "one entry per room holding messages"
            );
            for log in state.rooms.values() {
                assert!(log.messages.len() <= 3);
                assert_eq!(log.messages.len(), log.arrivals.len());
                if let Some(first) = log.messages.front() {
                    assert_eq!(log.evicted_through + 1, first.id, "nothing lost unsaid");
                }
            }
        }
    }
}
