//! The batched writer: the single path from `SAY` to the store and on to the room.
//!
//! Sessions hand messages to one task, which takes everything that is waiting (up to a batch
//! size), stores it in one `append`, and then, in id order, publishes each message to its room
//! and acknowledges it to its sender. So a message is only ever seen or acknowledged after the
//! store holds it, live delivery follows id order, and a store that commits per call (the
//! PostgreSQL one) pays one commit per batch rather than per message.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use bytes::BytesMut;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::{HistoryStore, NewMessage, StoreError};
use crate::protocol::{self, MessageId, MessageKind};
use crate::rooms::{BatchEntry, ConnId, LiveBatch, Rooms};

/// Bytes after which a room's share of a batch goes out as a further block.
const MAX_BLOCK: usize = 128 * 1024;

/// How long batches are refused at once after the store failed one.
const RETRY_AFTER: Duration = Duration::from_secs(1);

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
    let mut acks = Vec::with_capacity(max_batch);
    // Messages stored together usually share their time: format it once.
    let mut time = (i64::MIN, String::new());
    // After a failure, batches are refused at once for a moment instead of each waiting out
    // the store's timeout, so that queued SAYs are answered promptly during an outage.
    let mut refuse_until: Option<(Instant, String)> = None;
    while rx.recv_many(&mut jobs, max_batch).await > 0 {
        for job in jobs.drain(..) {
            batch.push(job.message);
            waiting.push((job.sender, job.ack));
        }
        let appended = match &refuse_until {
            Some((until, why)) if Instant::now() < *until => {
                Err(StoreError::Unavailable(why.clone()))
            }
            _ => store.append(&batch).await,
        };
        let appended_ok = appended.is_ok();
        match appended {
            Ok(stored) => {
                // One shared buffer per room: formatted once, fanned out once.
                let mut by_room: Vec<(Arc<str>, BytesMut, Vec<BatchEntry>)> = Vec::new();
                for ((m, (sender, ack)), s) in batch.drain(..).zip(waiting.drain(..)).zip(stored) {
                    if time.0 != s.millis {
                        time = (s.millis, protocol::format_time(s.millis));
                    }
                    // The room's open block, or a new one when it has none or it is full:
                    // blocks stay well under a member's queue budget.
                    let open = by_room
                        .iter()
                        .rposition(|(r, b, _)| *r == m.room && b.len() < MAX_BLOCK);
                    let slot = match open {
                        Some(i) => i,
                        None => {
                            by_room.push((m.room.clone(), BytesMut::new(), Vec::new()));
                            by_room.len() - 1
                        }
                    };
                    let (_, bytes, entries) = &mut by_room[slot];
                    protocol::write_message_line(
                        bytes,
                        MessageKind::Live,
                        &m.room,
                        s.id,
                        &time.1,
                        &m.nick,
                        &m.text,
                    );
                    entries.push(BatchEntry {
                        id: s.id,
                        sender,
                        end: bytes.len(),
                    });
                    acks.push((
                        ack,
                        Ack {
                            id: s.id,
                            millis: s.millis,
                        },
                    ));
                }
                for (room, bytes, messages) in by_room {
                    let first = messages[0].sender;
                    let only_sender = messages.iter().all(|m| m.sender == first).then_some(first);
                    rooms.publish(Arc::new(LiveBatch {
                        room,
                        bytes: bytes.freeze(),
                        messages,
                        only_sender,
                    }));
                }
                for (ack, result) in acks.drain(..) {
                    let _ = ack.send(Ok(result));
                }
            }
            Err(e) => {
                if refuse_until
                    .as_ref()
                    .is_none_or(|(until, _)| Instant::now() >= *until)
                {
                    tracing::warn!(error = %e, messages = batch.len(), "store refused a batch");
                    refuse_until = Some((Instant::now() + RETRY_AFTER, e.to_string()));
                }
                for (_, ack) in waiting.drain(..) {
                    let _ = ack.send(Err(StoreError::Unavailable(e.to_string())));
                }
            }
        }
        if appended_ok {
            refuse_until = None;
        }
        batch.clear();
        waiting.clear();
    }
}
