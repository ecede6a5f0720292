//! The rooms one connection is in, and what it has shown of each: the one place that decides
//! whether a message is new to this client. Nothing is shown twice, and a client is never
//! shown its own message (it had `OK SAY` instead).
//!
//! Per room, `last_shown` is the id up to which live messages were shown (delivered,
//! replayed, or older than the join). It moves only with traffic taken in order and with
//! catch-ups, never with acks: an ack may overtake queued messages of others. So the ids of
//! our own messages acknowledged above `last_shown` are remembered until it passes them, for
//! a catch-up to skip.

use std::sync::Arc;

use crate::fanout::LiveBatch;
pub(super) use crate::fanout::Show;
use crate::mailbox::ConnId;
use crate::protocol::MessageId;

/// One room this connection is in.
struct Joined {
    room: Arc<str>,
    last_shown: MessageId,
}

/// The rooms a connection is in, in join order (the last one is the current room).
#[derive(Default)]
pub(super) struct JoinedRooms {
    rooms: Vec<Joined>,
    own: OwnIds,
}

impl JoinedRooms {
    /// The room `SAY` speaks in: the one joined last.
    pub fn current(&self) -> Option<&Arc<str>> {
        self.rooms.last().map(|j| &j.room)
    }

    /// How many rooms it is in.
    pub fn len(&self) -> usize {
        self.rooms.len()
    }

    pub fn contains(&self, room: &str) -> bool {
        self.rooms.iter().any(|j| *j.room == *room)
    }

    pub fn last_shown(&self, room: &str) -> Option<MessageId> {
        self.rooms
            .iter()
            .find(|j| *j.room == *room)
            .map(|j| j.last_shown)
    }

    pub fn names(&self) -> Vec<Arc<str>> {
        self.rooms.iter().map(|j| j.room.clone()).collect()
    }

    /// Makes `room` the current room. A room not joined yet starts after `replayed_through`;
    /// a re-joined one keeps its live feed as it was (messages already queued still arrive,
    /// even if the fresh replay showed them too).
    pub fn enter(&mut self, room: Arc<str>, replayed_through: MessageId) {
        let last_shown = match self.rooms.iter().position(|j| j.room == room) {
            Some(i) => self.rooms.remove(i).last_shown,
            None => replayed_through,
        };
        if self.rooms.is_empty() {
            // Most connections are in one room: no room for four.
            self.rooms.reserve_exact(1);
        }
        self.rooms.push(Joined { room, last_shown });
    }

    /// Each room with the id it is shown through.
    pub fn shown(&self) -> impl Iterator<Item = (&Arc<str>, MessageId)> {
        self.rooms.iter().map(|j| (&j.room, j.last_shown))
    }

    /// Leaves `room`, or the current room if `None`; returns the room left.
    pub fn leave(&mut self, room: Option<&str>) -> Option<Arc<str>> {
        let index = match room {
            Some(room) => self.rooms.iter().position(|j| *j.room == *room)?,
            None => self.rooms.len().checked_sub(1)?,
        };
        let gone = self.rooms.remove(index).room;
        self.own.forget(&gone, None);
        Some(gone)
    }

    /// Leaves every room; returns them.
    pub fn leave_all(&mut self) -> Vec<Arc<str>> {
        self.own = OwnIds::default();
        self.rooms.drain(..).map(|j| j.room).collect()
    }

    /// What to show of a live batch for member `me`; the room's `last_shown` moves past it.
    pub fn take_live(&mut self, batch: &LiveBatch, me: ConnId) -> Show {
        // Batches queued before a PART are not for us any more.
        let Some(joined) = self.rooms.iter_mut().find(|j| j.room == batch.room) else {
            return Show::Nothing;
        };
        let last_shown = joined.last_shown;
        if let Some(last) = batch.messages.last() {
            joined.last_shown = last_shown.max(last.id);
            self.own.forget(&batch.room, Some(joined.last_shown));
        }
        batch.show(me, last_shown)
    }

    /// Our own message `id` in `room` was stored: a catch-up must not show it.
    pub fn note_own(&mut self, room: &Arc<str>, id: MessageId) {
        // At or below last_shown, its batch was taken already; above, it is still queued or
        // was missed in a lag: remember it until last_shown passes it.
        if self.last_shown(room).is_some_and(|shown| id > shown) {
            self.own.note(room, id);
        }
    }

    /// True if a stored message of `room` is one of ours.
    pub fn is_own(&self, room: &str, id: MessageId) -> bool {
        self.own.contains(room, id)
    }

    /// A catch-up showed `room` through `id`.
    pub fn shown_through(&mut self, room: &str, id: MessageId) {
        if let Some(joined) = self.rooms.iter_mut().find(|j| *j.room == *room) {
            joined.last_shown = joined.last_shown.max(id);
            self.own.forget(room, Some(joined.last_shown));
        }
    }
}

/// Ids of this connection's own messages above their room's `last_shown`. Boxed, and
/// allocated only while there are some: every session carries one.
#[derive(Default)]
#[allow(clippy::box_collection)]
struct OwnIds(Option<Box<Vec<RoomId>>>);

/// A message id with its room.
type RoomId = (Arc<str>, MessageId);

impl OwnIds {
    fn note(&mut self, room: &Arc<str>, id: MessageId) {
        self.0
            .get_or_insert_with(Default::default)
            .push((room.clone(), id));
    }

    fn contains(&self, room: &str, id: MessageId) -> bool {
        self.0
            .as_ref()
            .is_some_and(|ids| ids.iter().any(|(r, i)| *i == id && **r == *room))
    }

    /// Forgets the room's ids up to `through` (all of them if `None`).
    fn forget(&mut self, room: &str, through: Option<MessageId>) {
        if let Some(ids) = &mut self.0 {
            ids.retain(|(r, i)| **r != *room || through.is_some_and(|t| *i > t));
            if ids.is_empty() {
                self.0 = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::ops::Range;

    use bytes::Bytes;

    use super::*;
    use crate::fanout::BatchEntry;

    const ME: ConnId = 1;
    const OTHER: ConnId = 2;

    /// A batch of one-byte lines with these (id, sender) pairs.
    fn batch(room: &str, messages: &[(MessageId, ConnId)]) -> LiveBatch {
        LiveBatch {
            room: room.into(),
            bytes: Bytes::from(vec![b'x'; messages.len()]),
            messages: messages
                .iter()
                .enumerate()
                .map(|(i, &(id, sender))| BatchEntry {
                    id,
                    sender,
                    end: i + 1,
                })
                .collect(),
            only_sender: None,
            websocket: Default::default(),
        }
    }

    #[test]
    fn live_messages_are_shown_once_and_never_our_own() {
        let mut joined = JoinedRooms::default();
        joined.enter("r".into(), 2);
        assert_eq!(
            joined.take_live(&batch("r", &[(3, OTHER), (4, OTHER)]), ME),
            Show::All
        );
        assert_eq!(joined.last_shown("r"), Some(4));
        // A replayed stretch comes again live: skipped.
        assert_eq!(
            joined.take_live(&batch("r", &[(4, OTHER)]), ME),
            Show::Nothing
        );
        assert_eq!(
            joined.take_live(&batch("r", &[(5, ME), (6, OTHER)]), ME),
            Show::Ranges(vec![Range { start: 1, end: 2 }])
        );
        assert_eq!(joined.take_live(&batch("r", &[(7, ME)]), ME), Show::Nothing);
        assert_eq!(joined.last_shown("r"), Some(7));
        assert_eq!(
            joined.take_live(&batch("gone", &[(1, OTHER)]), ME),
            Show::Nothing,
            "traffic of a room left"
        );
    }

    #[test]
    fn own_ids_acknowledged_ahead_of_the_feed_are_skipped_by_a_catch_up() {
        let mut joined = JoinedRooms::default();
        let room: Arc<str> = "r".into();
        joined.enter(room.clone(), 10);
        joined.note_own(&room, 9); // at or below last_shown: nothing to remember
        joined.note_own(&room, 12);
        joined.note_own(&room, 15);
        assert!(!joined.is_own("r", 9));
        assert!(joined.is_own("r", 12) && joined.is_own("r", 15));
        assert!(!joined.is_own("r", 13));
        joined.shown_through("r", 13);
        assert!(!joined.is_own("r", 12), "forgotten once shown past");
        assert!(joined.is_own("r", 15));
        joined.take_live(&batch("r", &[(16, OTHER)]), ME);
        assert!(!joined.is_own("r", 15));
        assert!(joined.own.0.is_none(), "no memory kept once none are left");
    }

    #[test]
    fn a_re_join_keeps_its_feed_and_becomes_current() {
        let mut joined = JoinedRooms::default();
        joined.enter("a".into(), 5);
        joined.enter("b".into(), 1);
        assert_eq!(joined.current().map(|r| &**r), Some("b"));
        joined.enter("a".into(), 50);
        assert_eq!(joined.current().map(|r| &**r), Some("a"));
        assert_eq!(
            joined.last_shown("a"),
            Some(5),
            "the live feed goes on as it was"
        );
        assert_eq!(joined.leave(None).as_deref(), Some("a"));
        assert_eq!(joined.current().map(|r| &**r), Some("b"));
        assert_eq!(joined.leave(Some("nowhere")), None);
        assert_eq!(joined.leave_all(), vec![Arc::<str>::from("b")]);
        assert!(joined.current().is_none());
    }
}
