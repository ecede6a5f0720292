//! The batched writer: the single path from `SAY` into the store.
//!
//! Sessions hand messages to one task, which takes everything that is waiting (up to a batch
//! size), stores it in one `append`, hands the stored batch to its [`Publish`]er (the fan-out),
//! and only then acknowledges each message to its sender. So a message is only ever seen or
//! acknowledged after the store holds it, live delivery follows id order, and a store that
//! commits per call (the PostgreSQL one) pays one commit per batch rather than per message.
//!
//! The writer knows nothing of rooms or connections: each message carries a tag of the
//! caller's (the sender's connection id) that it hands back with the stored message.
//!
//! A failed batch is answered with the store's error, as it is: a refusal (never stored) or
//! an unknown outcome (see [`StoreError`]); its messages are published to nobody. The store
//! bounds every `append` (the PostgreSQL one by `--db-timeout`, and it fails at once while
//! the database is known to be down), so a frozen database cannot wedge the writer.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::{HistoryStore, NewMessage, StoreError, StoredMessage};
use crate::protocol::MessageId;

/// What the sender of a stored message learns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    pub id: MessageId,
    pub millis: i64,
}

/// The answer to one submitted message.
pub type AckResult = Result<Ack, StoreError>;

/// A batch as the store returned it: each message with what it was stored as and its tag,
/// in id order.
#[derive(Debug, Clone, Copy)]
pub struct StoredBatch<'a, T> {
    messages: &'a [NewMessage],
    stored: &'a [StoredMessage],
    tags: &'a [T],
}

impl<'a, T> StoredBatch<'a, T> {
    /// The three slices must be of one length (panics otherwise).
    pub fn new(messages: &'a [NewMessage], stored: &'a [StoredMessage], tags: &'a [T]) -> Self {
        assert!(messages.len() == stored.len() && stored.len() == tags.len());
        StoredBatch {
            messages,
            stored,
            tags,
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (&'a NewMessage, &'a StoredMessage, &'a T)> {
        self.messages
            .iter()
            .zip(self.stored)
            .zip(self.tags)
            .map(|((m, s), t)| (m, s, t))
    }
}

/// Where the writer hands each stored batch, before any of its acks is sent.
pub trait Publish<T>: Send + 'static {
    fn publish(&mut self, batch: StoredBatch<'_, T>);
}

struct Job<T> {
    message: NewMessage,
    tag: T,
    ack: oneshot::Sender<AckResult>,
}

/// A handle for submitting messages; the task stops when every handle is dropped.
pub struct Writer<T> {
    tx: mpsc::Sender<Job<T>>,
}

impl<T> Clone for Writer<T> {
    fn clone(&self) -> Self {
        Writer {
            tx: self.tx.clone(),
        }
    }
}

impl<T: Copy + Send + 'static> Writer<T> {
    /// Starts the writer task. `queue` bounds the messages waiting for it; `max_batch` bounds
    /// one `append`.
    pub fn spawn(
        store: Arc<dyn HistoryStore>,
        publisher: impl Publish<T>,
        queue: usize,
        max_batch: usize,
    ) -> (Writer<T>, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(queue.max(1));
        let task = tokio::spawn(run(store, publisher, rx, max_batch.max(1)));
        (Writer { tx }, task)
    }

    /// Queues a message, waiting while the writer's queue is full. The receiver yields the
    /// ack (or the store's refusal) once the message is stored and published.
    pub async fn submit(&self, message: NewMessage, tag: T) -> oneshot::Receiver<AckResult> {
        let (ack, rx) = oneshot::channel();
        let job = Job { message, tag, ack };
        if let Err(mpsc::error::SendError(job)) = self.tx.send(job).await {
            let _ = job.ack.send(Err(StoreError::Unavailable(
                "the writer has stopped".into(),
            )));
        }
        rx
    }
}

async fn run<T: Copy + Send + 'static>(
    store: Arc<dyn HistoryStore>,
    mut publisher: impl Publish<T>,
    mut rx: mpsc::Receiver<Job<T>>,
    max_batch: usize,
) {
    let mut jobs = Vec::with_capacity(max_batch);
    let mut messages = Vec::with_capacity(max_batch);
    let mut tags = Vec::with_capacity(max_batch);
    let mut acks = Vec::with_capacity(max_batch);
    // Refusals are logged once per run of failures, not per batch.
    let mut failing = false;
    while rx.recv_many(&mut jobs, max_batch).await > 0 {
        for job in jobs.drain(..) {
            messages.push(job.message);
            tags.push(job.tag);
            acks.push(job.ack);
        }
        let appended = store.append(&messages).await.and_then(|stored| {
            // Every message gets its answer: a store that returned another number of rows
            // than it was given has failed, and may have stored some of them.
            if stored.len() == messages.len() {
                Ok(stored)
            } else {
                tracing::error!(
                    given = messages.len(),
                    returned = stored.len(),
                    "the store returned another number of messages than it was given"
                );
                Err(StoreError::OutcomeUnknown(
                    "the store did not confirm every message".into(),
                ))
            }
        });
        match appended {
            Ok(stored) => {
                if std::mem::take(&mut failing) {
                    tracing::info!("the store takes messages again");
                }
                publisher.publish(StoredBatch::new(&messages, &stored, &tags));
                for (ack, s) in acks.drain(..).zip(&stored) {
                    let _ = ack.send(Ok(Ack {
                        id: s.id,
                        millis: s.millis,
                    }));
                }
            }
            Err(e) => {
                match &e {
                    // Rare (the store goes down after it), and each one matters.
                    StoreError::OutcomeUnknown(_) => tracing::warn!(
                        error = %e,
                        messages = messages.len(),
                        "the store did not confirm a batch: it may or may not be stored"
                    ),
                    StoreError::Unavailable(_) if !failing => {
                        tracing::warn!(error = %e, messages = messages.len(), "store refused a batch")
                    }
                    StoreError::Unavailable(_) => {}
                }
                failing = true;
                for ack in acks.drain(..) {
                    let _ = ack.send(Err(e.clone()));
                }
            }
        }
        messages.clear();
        tags.clear();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use async_trait::async_trait;

    use super::*;
    use crate::store::{MemoryStore, Page};

    /// Records what it was handed to publish.
    #[derive(Clone, Default)]
    struct Recorder(Arc<Mutex<Vec<(String, MessageId, u32)>>>);

    impl Publish<u32> for Recorder {
        fn publish(&mut self, batch: StoredBatch<'_, u32>) {
            let mut seen = self.0.lock().unwrap();
            for (m, s, tag) in batch.iter() {
                seen.push((m.text.clone(), s.id, *tag));
            }
        }
    }

    fn message(text: &str) -> NewMessage {
        NewMessage {
            room: "r".into(),
            nick: "n".into(),
            text: text.into(),
        }
    }

    #[tokio::test]
    async fn stores_then_publishes_then_acknowledges() {
        let recorder = Recorder::default();
        let store = Arc::new(MemoryStore::new(100));
        let (writer, task) = Writer::spawn(store, recorder.clone(), 16, 4);
        let mut acks = Vec::new();
        for (i, text) in ["a", "b", "c", "d", "e"].iter().enumerate() {
            acks.push(writer.submit(message(text), i as u32).await);
        }
        let mut ids = Vec::new();
        for ack in acks {
            let ack = ack.await.unwrap().unwrap();
            ids.push(ack.id);
        }
        assert_eq!(ids, [1, 2, 3, 4, 5]);
        let published = recorder.0.lock().unwrap().clone();
        let expected: Vec<_> = ["a", "b", "c", "d", "e"]
            .iter()
            .enumerate()
            .map(|(i, t)| (t.to_string(), i as u64 + 1, i as u32))
            .collect();
        assert_eq!(published, expected);
        drop(writer);
        task.await.unwrap();
    }

    /// A store that loses the last row of every batch it is given.
    struct ShortStore(MemoryStore);

    #[async_trait]
    impl HistoryStore for ShortStore {
        async fn append(&self, batch: &[NewMessage]) -> Result<Vec<StoredMessage>, StoreError> {
            let mut stored = self.0.append(batch).await?;
            stored.pop();
            Ok(stored)
        }

        async fn page(&self, room: &str, page: Page) -> Result<Vec<StoredMessage>, StoreError> {
            self.0.page(room, page).await
        }

        async fn latest_id(&self, room: &str) -> Result<MessageId, StoreError> {
            self.0.latest_id(room).await
        }
    }

    /// A store whose first append fails with the given error, without storing anything.
    struct FailsOnce(MemoryStore, Mutex<Option<StoreError>>);

    #[async_trait]
    impl HistoryStore for FailsOnce {
        async fn append(&self, batch: &[NewMessage]) -> Result<Vec<StoredMessage>, StoreError> {
            let failure = self.1.lock().unwrap().take();
            match failure {
                Some(e) => Err(e),
                None => self.0.append(batch).await,
            }
        }

        async fn page(&self, room: &str, page: Page) -> Result<Vec<StoredMessage>, StoreError> {
            self.0.page(room, page).await
        }

        async fn latest_id(&self, room: &str) -> Result<MessageId, StoreError> {
            self.0.latest_id(room).await
        }
    }

    #[tokio::test]
    async fn a_failed_batch_is_answered_with_the_stores_own_error_and_the_writer_moves_on() {
        for failure in [
            StoreError::Unavailable("refused".into()),
            StoreError::OutcomeUnknown("no answer".into()),
        ] {
            let recorder = Recorder::default();
            let store = Arc::new(FailsOnce(
                MemoryStore::new(100),
                Mutex::new(Some(failure.clone())),
            ));
            let (writer, _task) = Writer::spawn(store, recorder.clone(), 16, 16);
            let failed = writer.submit(message("a"), 1).await.await.unwrap();
            assert_eq!(
                failed.unwrap_err().to_string(),
                failure.to_string(),
                "the sender learns which failure it was"
            );
            let stored = writer.submit(message("b"), 2).await.await.unwrap();
            assert_eq!(stored.unwrap().id, 1, "the next batch is stored at once");
            let published = recorder.0.lock().unwrap().clone();
            assert_eq!(published, [("b".to_string(), 1, 2)], "only what was stored");
        }
    }

    #[tokio::test]
    async fn a_store_that_returns_fewer_rows_fails_the_batch_and_every_ack_is_answered() {
        let recorder = Recorder::default();
        let store = Arc::new(ShortStore(MemoryStore::new(100)));
        let (writer, _task) = Writer::spawn(store, recorder.clone(), 16, 16);
        let first = writer.submit(message("a"), 1).await;
        let second = writer.submit(message("b"), 2).await;
        for ack in [first, second] {
            let answer = ack.await.expect("every message is answered");
            // Some of it was stored: not a refusal.
            assert!(
                matches!(answer, Err(StoreError::OutcomeUnknown(_))),
                "no ack for an unconfirmed batch: {answer:?}"
            );
        }
        assert!(recorder.0.lock().unwrap().is_empty(), "nothing published");
    }
}
