//! The `SAY`s a connection has in flight, answered in the order they were said (the writer
//! may answer them a batch at a time, and a refusal can overtake an ack of another batch).

use std::collections::VecDeque;
use std::sync::Arc;

use futures::stream::{FuturesOrdered, StreamExt};
use tokio::sync::oneshot;

use futures::FutureExt;

use crate::protocol;
use crate::store::StoreError;

use super::{store_error, Session, OUTPUT_HIGH};
use crate::store::writer::AckResult;

/// What became of one `SAY`: the writer's answer, or its end.
pub(super) type AckOutcome = Result<AckResult, oneshot::error::RecvError>;

/// Acks of submitted `SAY`s, in order. Allocated only while some are pending, so that a quiet
/// connection carries none of it.
#[derive(Default)]
pub(super) struct Acks(Option<Box<Pending>>);

#[derive(Default)]
struct Pending {
    queue: FuturesOrdered<oneshot::Receiver<AckResult>>,
    /// The room of each pending ack, in the same order.
    rooms: VecDeque<Arc<str>>,
    /// The last ack time formatted, with its milliseconds: acks of a batch share it.
    time: (i64, String),
}

impl Acks {
    pub fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |p| p.queue.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn push_back(&mut self, ack: oneshot::Receiver<AckResult>, room: Arc<str>) {
        let pending = self.0.get_or_insert_with(Default::default);
        pending.queue.push_back(ack);
        pending.rooms.push_back(room);
    }

    /// The next ack in order, with its room; `None` when none are pending.
    pub async fn next(&mut self) -> Option<(AckOutcome, Arc<str>)> {
        let pending = self.0.as_mut()?;
        let outcome = pending.queue.next().await?;
        let room = pending.rooms.pop_front().expect("a room for every ack");
        Some((outcome, room))
    }

    /// `millis` formatted, reusing the last formatting when the time is the same.
    pub fn time(&mut self, millis: i64) -> &str {
        let pending = self.0.get_or_insert_with(Default::default);
        if pending.time.0 != millis || pending.time.1.is_empty() {
            pending.time = (millis, protocol::format_time(millis));
        }
        &pending.time.1
    }

    /// Gives the memory back once nothing is pending.
    pub fn release_if_empty(&mut self) {
        if self.is_empty() {
            self.0 = None;
        }
    }
}

impl Session {
    /// Acks come a batch at a time: answers this one and all that are ready behind it.
    pub(super) fn on_acks(&mut self, first: (AckOutcome, Arc<str>)) {
        // The room traffic of these messages is queued before their acks: taking it first
        // moves `last_shown` past them, so they need not be remembered.
        if self.writer.pending() < OUTPUT_HIGH {
            self.take_room_traffic();
        }
        self.answer_ack(first);
        while let Some(Some(ack)) = self.acks.next().now_or_never() {
            self.answer_ack(ack);
        }
        self.acks.release_if_empty();
    }

    pub(super) fn answer_ack(&mut self, (ack, room): (AckOutcome, Arc<str>)) {
        let line = match ack {
            Ok(Ok(ack)) => {
                self.joined.note_own(&room, ack.id);
                protocol::ok_say(ack.id, self.acks.time(ack.millis))
            }
            Ok(Err(e)) => store_error(&e),
            // The writer ended without answering: the message may have been on its way.
            Err(_) => store_error(&StoreError::OutcomeUnknown(
                "the writer stopped before the store confirmed it".into(),
            )),
        };
        self.writer.push(line);
    }

    /// Waits for every `SAY` in flight, so replies keep the order of the commands.
    pub(super) async fn settle_acks(&mut self) {
        while let Some(ack) = self.acks.next().await {
            self.answer_ack(ack);
        }
        self.acks.release_if_empty();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::writer::Ack;
    use crate::store::StoreError;

    #[tokio::test]
    async fn answers_come_in_the_order_said_whatever_order_they_arrive_in() {
        let mut acks = Acks::default();
        let (first, first_rx) = oneshot::channel();
        let (second, second_rx) = oneshot::channel();
        acks.push_back(first_rx, "a".into());
        acks.push_back(second_rx, "b".into());
        assert_eq!(acks.len(), 2);
        second
            .send(Err(StoreError::Unavailable("down".into())))
            .unwrap();
        first.send(Ok(Ack { id: 7, millis: 0 })).unwrap();
        let (outcome, room) = acks.next().await.unwrap();
        assert_eq!((outcome.unwrap().unwrap().id, &*room), (7, "a"));
        let (outcome, room) = acks.next().await.unwrap();
        assert!(outcome.unwrap().is_err());
        assert_eq!(&*room, "b");
        assert!(acks.next().await.is_none());
        acks.release_if_empty();
        assert!(acks.0.is_none());
    }

    #[tokio::test]
    async fn a_writer_that_stopped_is_an_answer_too() {
        let mut acks = Acks::default();
        let (dropped, rx) = oneshot::channel::<AckResult>();
        acks.push_back(rx, "a".into());
        drop(dropped);
        let (outcome, _) = acks.next().await.unwrap();
        assert!(outcome.is_err());
    }
}
