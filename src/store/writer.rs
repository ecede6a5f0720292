//! The batched writer: the single path from `SAY` to the store and on to the room.
//!
//! Sessions hand messages to one task, which takes everything that is waiting (up to a batch
//! size), stores it in one `append`, and then, in id order, publishes each message to its room
//! and acknowledges it to its sender. So a message is only ever seen or acknowledged after the
//! store holds it, live delivery follows id order, and a store that commits per call (the
//! PostgreSQL one) pays one commit per batch rather than per message.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::{HistoryStore, NewMessage, StoreError};
use crate::protocol::{self, MessageId, MessageKind};
use crate::rooms::{ConnId, LiveMessage, Rooms};

/// What the sender of a stored message learns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    pub id: MessageId,
    pub millis: i64,
}

/// The answer to one submitted message.
pub type AckResult = Result<Ack, StoreError>;

struct Job {
    message: NewMessage,
    sender: ConnId,
    ack: oneshot::Sender<AckResult>,
}

/// A handle for submitting messages; the task stops when every handle is dropped.
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<Job>,
}

impl Writer {
    /// Starts the writer task. `queue` bounds the messages waiting for it; `max_batch` bounds
    /// one `append`.
    pub fn spawn(
        store: Arc<dyn HistoryStore>,
        rooms: Arc<Rooms>,
        queue: usize,
        max_batch: usize,
    ) -> (Writer, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(queue.max(1));
        let task = tokio::spawn(run(store, rooms, rx, max_batch.max(1)));
        (Writer { tx }, task)
    }

    /// Queues a message, waiting while the writer's queue is full. The receiver yields the
    /// ack (or the store's refusal) once the message is stored and published.
    pub async fn submit(
        &self,
        message: NewMessage,
        sender: ConnId,
    ) -> oneshot::Receiver<AckResult> {
        let (ack, rx) = oneshot::channel();
        let job = Job {
            message,
            sender,
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

async fn run(
    store: Arc<dyn HistoryStore>,
    rooms: Arc<Rooms>,
    mut rx: mpsc::Receiver<Job>,
    max_batch: usize,
) {
    let mut jobs = Vec::with_capacity(max_batch);
    let mut batch = Vec::with_capacity(max_batch);
    let mut waiting = Vec::with_capacity(max_batch);
    while rx.recv_many(&mut jobs, max_batch).await > 0 {
        for job in jobs.drain(..) {
            batch.push(job.message);
            waiting.push((job.sender, job.ack));
        }
        match store.append(&batch).await {
            Ok(stored) => {
                for ((m, (sender, ack)), s) in batch.drain(..).zip(waiting.drain(..)).zip(stored) {
                    let line = protocol::message_line(
                        MessageKind::Live,
                        &m.room,
                        s.id,
                        s.millis,
                        &m.nick,
                        &m.text,
                    );
                    rooms.publish(Arc::new(LiveMessage {
                        room: m.room,
                        id: s.id,
                        line,
                        sender,
                    }));
                    let _ = ack.send(Ok(Ack {
                        id: s.id,
                        millis: s.millis,
                    }));
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, messages = batch.len(), "store refused a batch");
                for (_, ack) in waiting.drain(..) {
                    let _ = ack.send(Err(StoreError::Unavailable(e.to_string())));
                }
            }
        }
        batch.clear();
        waiting.clear();
    }
}
