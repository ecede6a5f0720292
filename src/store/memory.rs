//! In-memory history: the last `capacity` messages of each room, lost on restart.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use async_trait::async_trait;

use super::{HistoryStore, NewMessage, Page, StoreError, StoredMessage};
use crate::protocol::MessageId;

/// A bounded per-room log. Ids keep counting after old messages are evicted.
pub struct MemoryStore {
    capacity: usize,
    /// Random, made at start: this store's history lives only as long as the store.
    epoch: u64,
    rooms: Mutex<HashMap<String, RoomLog>>,
}

#[derive(Default)]
struct RoomLog {
    last_id: MessageId,
    /// The id of the last message evicted (0 if none).
    evicted_through: MessageId,
    /// Oldest first; ids strictly increasing.
    messages: VecDeque<StoredMessage>,
}

impl MemoryStore {
    /// Keeps at most `capacity` messages per room (at least one).
    pub fn new(capacity: usize) -> Self {
        MemoryStore {
            capacity: capacity.max(1),
            epoch: new_epoch(),
            rooms: Mutex::new(HashMap::new()),
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
        let mut rooms = self.rooms.lock().expect("memory store lock");
        let stored = batch
            .iter()
            .map(|m| {
                let log = rooms.entry(m.room.to_string()).or_default();
                log.last_id += 1;
                let stored = StoredMessage {
                    id: log.last_id,
                    millis,
                    nick: m.nick.clone(),
                    text: m.text.clone(),
                };
                if log.messages.len() >= self.capacity {
                    if let Some(gone) = log.messages.pop_front() {
                        log.evicted_through = gone.id;
                    }
                }
                log.messages.push_back(stored.clone());
                stored
            })
            .collect();
        Ok(stored)
    }

    async fn page(&self, room: &str, page: Page) -> Result<Vec<StoredMessage>, StoreError> {
        let rooms = self.rooms.lock().expect("memory store lock");
        Ok(rooms
            .get(room)
            .map(|log| log.page(page))
            .unwrap_or_default())
    }

    async fn latest_id(&self, room: &str) -> Result<MessageId, StoreError> {
        let rooms = self.rooms.lock().expect("memory store lock");
        Ok(rooms.get(room).map_or(0, |log| log.last_id))
    }

    fn epoch(&self) -> u64 {
        self.epoch
    }

    fn forgotten_through(&self, room: &str) -> MessageId {
        let rooms = self.rooms.lock().expect("memory store lock");
        rooms.get(room).map_or(0, |log| log.evicted_through)
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
}
