//! Message history: the [`HistoryStore`] trait, its two implementations (memory and
//! PostgreSQL), and the batched [`Writer`] that every `SAY` goes through. Storing only: what
//! happens to a message once stored (formatting, fan-out) is the writer's publisher's job.

pub mod health;
pub mod memory;
pub mod postgres;
pub mod writer;

use std::sync::Arc;

use async_trait::async_trait;
use tokio::time::Instant;

use crate::cluster::remote::Presence;
use crate::cluster::Directory;
use crate::protocol::MessageId;

pub use memory::MemoryStore;
pub use postgres::PgStore;
pub use writer::{Ack, Writer};

/// A message to be stored: who said what, where.
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub room: Arc<str>,
    pub nick: Arc<str>,
    pub text: String,
}

/// A stored message: the store gave it its id and time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    pub id: MessageId,
    /// Milliseconds since the Unix epoch, UTC.
    pub millis: i64,
    pub nick: Arc<str>,
    pub text: String,
}

/// Which slice of a room's history to read. Results are always oldest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Page {
    /// The newest `limit` messages with id < `before` (all ids if `None`).
    Newest {
        before: Option<MessageId>,
        limit: usize,
    },
    /// The oldest `limit` messages with `after` < id (< `before` if given).
    Oldest {
        after: MessageId,
        before: Option<MessageId>,
        limit: usize,
    },
}

/// Why the store could not do what was asked.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// Nothing was done. For a message: it is not stored and never will be, whatever the
    /// database does later (it was never sent, or the database answered that it rolled back).
    #[error("the message store is unavailable: {0}")]
    Unavailable(String),
    /// A message's INSERT was sent but not confirmed in time (or its connection broke before
    /// the answer came): it may or may not be stored. Only [`HistoryStore::append`] says so.
    #[error("the store did not confirm this message; it may or may not be stored: HISTORY will tell ({0})")]
    OutcomeUnknown(String),
}

/// What other servers sharing the store stored (and this one: see [`HistoryStore::subscribe`]),
/// in the order it was committed.
pub struct Subscription {
    /// How this server's own batches are marked in [`Stored::origin`].
    pub origin: String,
    /// Closes when the subscription is lost; subscribe again, then catch up from the store.
    pub events: tokio::sync::mpsc::Receiver<Event>,
}

/// What the database notified, in commit order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A transaction stored messages.
    Stored(Stored),
    /// A room's members changed, on some server ([`crate::cluster`]).
    Presence(Presence),
}

/// Messages one transaction stored, by room: for each room, its ids from `first` to `last`
/// are all this transaction's, and no other transaction stores ids in between.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub origin: String,
    pub rooms: Vec<(Arc<str>, MessageId, MessageId)>,
    /// The messages themselves, room by room as in `rooms`, when the notification carried
    /// them (it does when they fit): no need to read them back.
    pub carried: Option<Vec<Vec<StoredMessage>>>,
}

/// How a linechat server's origin begins (the rest is its own random name).
pub const SERVER_ORIGIN: &str = "linechat-";

impl Stored {
    /// True if a linechat server stored these messages. Other programs' inserts (a bulk
    /// load with psql) take no room locks, so their ids need not follow commit order: they
    /// are history only, never delivered live.
    pub fn by_a_server(&self) -> bool {
        self.origin.starts_with(SERVER_ORIGIN)
    }
}

/// Where history lives. Ids are unique and increasing within a room.
#[async_trait]
pub trait HistoryStore: Send + Sync + 'static {
    /// Stores a batch of messages atomically, returning them in the same order with ids and
    /// times. Ids within one room follow the batch order.
    async fn append(&self, batch: &[NewMessage]) -> Result<Vec<StoredMessage>, StoreError>;

    /// [`append`](HistoryStore::append), answering by `deadline` (the writer's: its earliest
    /// message's submission plus `--db-timeout`). A store that is never slow ignores it.
    async fn append_by(
        &self,
        batch: &[NewMessage],
        _deadline: Instant,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        self.append(batch).await
    }

    /// Reads one page of a room's history, oldest first. An unknown room has no history.
    async fn page(&self, room: &str, page: Page) -> Result<Vec<StoredMessage>, StoreError>;

    /// Several rooms' messages at once: for each `(room, first, last)`, at most `limit` of
    /// its messages with ids `first..=last`, oldest first (servers sharing the database read
    /// so the batches of each other's that their notifications did not carry, a round trip
    /// for many instead of one per room).
    async fn read_ranges(
        &self,
        ranges: &[(Arc<str>, MessageId, MessageId)],
        limit: usize,
    ) -> Result<Vec<Vec<StoredMessage>>, StoreError> {
        let mut read = Vec::with_capacity(ranges.len());
        for (room, first, last) in ranges {
            let page = Page::Oldest {
                after: first.saturating_sub(1),
                before: Some(last.saturating_add(1)),
                limit,
            };
            read.push(self.page(room, page).await?);
        }
        Ok(read)
    }

    /// The newest id in a room, 0 if it has none.
    async fn latest_id(&self, room: &str) -> Result<MessageId, StoreError>;

    /// The newest id in a room that the store has let go of (0 if it keeps everything). Ids
    /// up to it that a client has not seen are lost to that client.
    fn forgotten_through(&self, _room: &str) -> MessageId {
        0
    }

    /// This history's epoch: it differs between histories whose ids may repeat (each run of
    /// a memory store; each database), so that a client can tell whether an id it saved
    /// still means the same message here (`HELLO`'s `epoch=`, PROTOCOL.md). Never 0 for a
    /// store that has one; 0 means the store cannot tell, and `HELLO` then names none.
    fn epoch(&self) -> u64 {
        0
    }

    /// Records that a user of this name exists (on `NICK`), in the background, when the
    /// store has capacity to spare; never waits. Stores without users ignore it.
    fn record_user(&self, _nick: &str) {}

    /// Records that a room of this name exists (on `JOIN`). Stores without rooms ignore it.
    async fn record_room(&self, _room: &str) -> Result<(), StoreError> {
        Ok(())
    }

    /// True if other servers may store into this history too (PostgreSQL): this server then
    /// learns of every stored batch, its own included, through [`HistoryStore::subscribe`],
    /// and delivers them in the order they were committed.
    fn is_shared(&self) -> bool {
        false
    }

    /// Starts receiving what is stored, by any server, from now on. `None` if the store is
    /// not shared.
    async fn subscribe(&self) -> Option<Result<Subscription, StoreError>> {
        None
    }

    /// The directory of servers, names and presence that servers sharing this store keep
    /// ([`crate::cluster`]); `None` if the store is not shared.
    fn directory(&self) -> Option<&dyn Directory> {
        None
    }

    /// Asks the store whether it answers now, within `--db-timeout` (a load balancer's
    /// readiness probe, `/healthz`). A store in memory always does.
    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
