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
//!
//! Each message must be answered within `--db-timeout` of its submission, however long it
//! waited in the queue behind a slow batch: a batch is given its earliest message's
//! deadline, and a message already past its own when the writer takes it is refused
//! (`STORE_UNAVAILABLE`) without ever being sent, so it is never stored.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

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

/// A stored message's answer, ready to go: its submitter's channel, and the answer.
pub type HeldAck = (oneshot::Sender<AckResult>, Ack);

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

    /// A batch is on its way to the store: [`Publish::publish`] or [`Publish::not_stored`]
    /// follows. (Servers sharing a database learn of stored batches from it, this one's
    /// included, and must know that one of their own may be about to show up.)
    fn storing(&mut self) {}

    /// The batch announced by [`Publish::storing`] was refused, or its outcome is unknown.
    fn not_stored(&mut self) {}

    /// Takes over the answers of the batch just published (in its order), to send them
    /// itself once the batch is delivered; those left in `acks` are sent now. (Servers
    /// sharing a database deliver a batch only after every earlier one of its rooms, from
    /// any server: an answer sent at commit could overtake those.)
    fn hold_acks(&mut self, _acks: &mut Vec<HeldAck>) {}
}

struct Job<T> {
    message: NewMessage,
    tag: T,
    /// Its submission plus `--db-timeout`: by then it is answered.
    deadline: Instant,
    ack: oneshot::Sender<AckResult>,
}

/// A handle for submitting messages; the task stops when every handle is dropped.
pub struct Writer<T> {
    tx: mpsc::Sender<Job<T>>,
    timeout: Duration,
}

impl<T> Clone for Writer<T> {
    fn clone(&self) -> Self {
        Writer {
            tx: self.tx.clone(),
            timeout: self.timeout,
        }
    }
}

impl<T: Copy + Send + 'static> Writer<T> {
    /// Starts the writer task. `queue` bounds the messages waiting for it; `max_batch` bounds
    /// one `append`; `timeout` (`--db-timeout`) is how long after its submission a message
    /// is answered, at the latest.
    pub fn spawn(
        store: Arc<dyn HistoryStore>,
        publisher: impl Publish<T>,
        queue: usize,
        max_batch: usize,
        timeout: Duration,
    ) -> (Writer<T>, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(queue.max(1));
        let task = tokio::spawn(run(store, publisher, rx, max_batch.max(1)));
        (Writer { tx, timeout }, task)
    }

    /// Queues a message, waiting while the writer's queue is full. The receiver yields the
    /// ack (or the store's refusal) once the message is stored and published.
    pub async fn submit(&self, message: NewMessage, tag: T) -> oneshot::Receiver<AckResult> {
        let (ack, rx) = oneshot::channel();
        // Stamped before any wait for room in the queue: that wait counts too.
        let deadline = Instant::now() + self.timeout;
        let job = Job {
            message,
            tag,
            deadline,
            ack,
        };
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
    let mut answers: Vec<HeldAck> = Vec::with_capacity(max_batch);
    // Refusals are logged once per run of failures, not per batch.
    let mut failing = false;
    let metrics = crate::telemetry::metrics();
    while rx.recv_many(&mut jobs, max_batch).await > 0 {
        let now = Instant::now();
        let mut deadline = None::<Instant>;
        let mut expired = 0;
        for job in jobs.drain(..) {
            if job.deadline <= now {
                // Its time went waiting behind slower batches: refused, and never sent.
                expired += 1;
                let _ = job.ack.send(Err(StoreError::Unavailable(
                    "the store did not take it within --db-timeout; it is not stored".into(),
                )));
                continue;
            }
            deadline = Some(deadline.map_or(job.deadline, |d| d.min(job.deadline)));
            messages.push(job.message);
            tags.push(job.tag);
            acks.push(job.ack);
        }
        if expired > 0 && !std::mem::replace(&mut failing, true) {
            tracing::warn!(
                messages = expired,
                "refused messages that waited for the store past --db-timeout"
            );
        }
        let Some(deadline) = deadline else {
            continue;
        };
        metrics.batch_size.record(messages.len() as f64);
        let started = Instant::now();
        publisher.storing();
        let appended = store.append_by(&messages, deadline).await;
        metrics
            .commit_seconds
            .record(started.elapsed().as_secs_f64());
        let appended = appended.and_then(|stored| {
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
                metrics.said.increment(stored.len() as u64);
                publisher.publish(StoredBatch::new(&messages, &stored, &tags));
                answers.extend(acks.drain(..).zip(&stored).map(|(ack, s)| {
                    let answer = Ack {
                        id: s.id,
                        millis: s.millis,
                    };
                    (ack, answer)
                }));
                publisher.hold_acks(&mut answers);
                for (ack, answer) in answers.drain(..) {
                    let _ = ack.send(Ok(answer));
                }
            }
            Err(e) => {
                publisher.not_stored();
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

    const TIMEOUT: Duration = Duration::from_secs(5);

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
        let (writer, task) = Writer::spawn(store, recorder.clone(), 16, 4, TIMEOUT);
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
            let (writer, _task) = Writer::spawn(store, recorder.clone(), 16, 16, TIMEOUT);
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
        let (writer, _task) = Writer::spawn(store, recorder.clone(), 16, 16, TIMEOUT);
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

    /// A store whose appends wait until let go, recording the deadline each was given.
    struct Gated {
        store: MemoryStore,
        entered: tokio::sync::Notify,
        gate: tokio::sync::Semaphore,
        deadlines: Mutex<Vec<Instant>>,
    }

    #[async_trait]
    impl HistoryStore for Gated {
        async fn append(&self, _: &[NewMessage]) -> Result<Vec<StoredMessage>, StoreError> {
            unreachable!("the writer gives every batch its deadline")
        }

        async fn append_by(
            &self,
            batch: &[NewMessage],
            deadline: Instant,
        ) -> Result<Vec<StoredMessage>, StoreError> {
            self.deadlines.lock().unwrap().push(deadline);
            self.entered.notify_one();
            self.gate.acquire().await.unwrap().forget();
            self.store.append(batch).await
        }

        async fn page(&self, room: &str, page: Page) -> Result<Vec<StoredMessage>, StoreError> {
            self.store.page(room, page).await
        }

        async fn latest_id(&self, room: &str) -> Result<MessageId, StoreError> {
            self.store.latest_id(room).await
        }
    }

    /// A message queued behind a batch that outlasts its deadline is refused when the writer
    /// gets to it, and never stored; the batch before it was given its own message's
    /// deadline, counted from submission.
    #[tokio::test]
    async fn a_message_that_waited_past_its_deadline_is_refused_and_never_stored() {
        let timeout = Duration::from_millis(300);
        let recorder = Recorder::default();
        let store = Arc::new(Gated {
            store: MemoryStore::new(100),
            entered: tokio::sync::Notify::new(),
            gate: tokio::sync::Semaphore::new(0),
            deadlines: Mutex::new(Vec::new()),
        });
        let (writer, _task) = Writer::spawn(store.clone(), recorder.clone(), 16, 16, timeout);
        let before = Instant::now();
        let first = writer.submit(message("a"), 1).await;
        let after = Instant::now();
        store.entered.notified().await;
        let late = writer.submit(message("b"), 2).await;
        // The first batch takes longer than the second message may wait.
        tokio::time::sleep(timeout * 2).await;
        store.gate.add_permits(16);
        assert_eq!(first.await.unwrap().unwrap().id, 1);
        let refused = late.await.unwrap();
        assert!(
            matches!(refused, Err(StoreError::Unavailable(_))),
            "refused as never stored: {refused:?}"
        );
        let deadlines = store.deadlines.lock().unwrap().clone();
        assert_eq!(
            deadlines.len(),
            1,
            "the late message was never sent: {deadlines:?}"
        );
        assert!(before + timeout <= deadlines[0] && deadlines[0] <= after + timeout);
        let page = Page::Newest {
            before: None,
            limit: 10,
        };
        let kept: Vec<_> = store.store.page("r", page).await.unwrap();
        assert_eq!(kept.len(), 1, "only the first message is stored");
        assert_eq!(kept[0].text, "a");
        // The writer goes on: the next message is stored.
        let next = writer.submit(message("c"), 3).await;
        assert_eq!(next.await.unwrap().unwrap().id, 2);
    }
}
