//! Fan-out: from a batch the store has just stored to the mailbox of every member of its rooms.
//!
//! The writer calls [`Fanout::publish`] with each stored batch, in id order, before it sends
//! any of the batch's acks, so a message is never seen before it is stored nor acknowledged
//! before it is on its way. Each room's share of the batch is formatted once into one buffer,
//! a [`LiveBatch`]: a member gets the whole batch with one queue operation and usually writes
//! it with one syscall; the few members that must skip some of it (their own messages) take
//! zero-copy slices.

use std::ops::Range;
use std::sync::{Arc, OnceLock};

use bytes::{Bytes, BytesMut};

use crate::http::websocket::frames;
use crate::mailbox::ConnId;
use crate::protocol::{self, MessageId, MessageKind};
use crate::rooms::Rooms;
use crate::store::writer::{Publish, StoredBatch};

/// Bytes after which a room's share of a batch goes out as a further block: blocks stay well
/// under a member's mailbox limit.
const MAX_BLOCK: usize = 128 * 1024;

/// Consecutive live messages of one room, formatted once and shared by every recipient.
#[derive(Debug)]
pub struct LiveBatch {
    pub room: Arc<str>,
    /// The `MSG ...\n` lines of every message, concatenated.
    pub bytes: Bytes,
    /// One entry per message, in id order.
    pub messages: Vec<BatchEntry>,
    /// The sender of every message, if they all have the same one.
    pub only_sender: Option<ConnId>,
    /// The same lines as WebSocket text frames, made by the first WebSocket member to take
    /// the batch and shared by the others.
    pub websocket: OnceLock<WebSocketForm>,
}

/// A [`LiveBatch`] framed for WebSocket members: one text frame per message.
#[derive(Debug)]
pub struct WebSocketForm {
    bytes: Bytes,
    /// Where each message's frame ends in `bytes`, as `BatchEntry::end` does in the lines.
    ends: Vec<usize>,
}

/// Where one message sits in a [`LiveBatch`].
#[derive(Debug, Clone, Copy)]
pub struct BatchEntry {
    pub id: MessageId,
    /// The sender, who gets `OK SAY` instead of its own `MSG`.
    pub sender: ConnId,
    /// Where the message's line ends in `bytes`.
    pub end: usize,
}

impl LiveBatch {
    pub fn new(
        room: Arc<str>,
        bytes: Bytes,
        messages: Vec<BatchEntry>,
        only_sender: Option<ConnId>,
    ) -> LiveBatch {
        LiveBatch {
            room,
            bytes,
            messages,
            only_sender,
            websocket: OnceLock::new(),
        }
    }

    /// The messages within `range` of the lines (its ends are ends of messages, as
    /// [`LiveBatch::ranges_for`] gives them) as WebSocket frames.
    pub fn websocket_frames(&self, range: Range<usize>) -> Bytes {
        let form = self.websocket.get_or_init(|| {
            let bytes = frames::frame_lines(&self.bytes);
            let mut ends = Vec::with_capacity(self.messages.len());
            let mut start = 0;
            let mut framed = 0;
            for m in &self.messages {
                let len = m.end - start - 1;
                framed += frames::header_len(len) + len;
                ends.push(framed);
                start = m.end;
            }
            debug_assert_eq!(framed, bytes.len());
            WebSocketForm { bytes, ends }
        });
        let framed = |end: usize| match end {
            0 => 0,
            end => {
                let i = self
                    .messages
                    .binary_search_by_key(&end, |m| m.end)
                    .expect("a range ends at a message's end");
                form.ends[i]
            }
        };
        form.bytes.slice(framed(range.start)..framed(range.end))
    }

    /// What member `me`, who has shown the room through `last_shown`, should get of it.
    pub fn show(&self, me: ConnId, last_shown: MessageId) -> Show {
        if self
            .messages
            .iter()
            .all(|m| m.sender != me && m.id > last_shown)
        {
            return Show::All;
        }
        match self.ranges_for(me, last_shown) {
            ranges if ranges.is_empty() => Show::Nothing,
            ranges => Show::Ranges(ranges),
        }
    }

    /// The byte ranges a member should get: messages newer than `last_shown` that `me` did
    /// not send, with neighbouring ranges merged (usually the whole batch in one range).
    pub fn ranges_for(&self, me: ConnId, last_shown: MessageId) -> Vec<Range<usize>> {
        let mut ranges: Vec<Range<usize>> = Vec::new();
        let mut start = 0;
        for m in &self.messages {
            if m.id > last_shown && m.sender != me {
                match ranges.last_mut() {
                    Some(last) if last.end == start => last.end = m.end,
                    _ => ranges.push(start..m.end),
                }
            }
            start = m.end;
        }
        ranges
    }
}

/// What to show of a live batch.
#[derive(Debug, PartialEq, Eq)]
pub enum Show {
    /// Nothing: not our room any more, or nothing new.
    Nothing,
    /// The whole batch (the usual case, without allocating).
    All,
    /// These byte ranges of it.
    Ranges(Vec<Range<usize>>),
}

/// Formats stored batches into [`LiveBatch`]es and publishes them to their rooms.
pub struct Fanout {
    rooms: Arc<Rooms>,
    /// The last time formatted: messages stored together usually share it.
    time: (i64, String),
    /// `linechat_messages_delivered_total`.
    delivered: metrics::Counter,
}

impl Fanout {
    pub fn new(rooms: Arc<Rooms>) -> Fanout {
        Fanout {
            rooms,
            time: (i64::MIN, String::new()),
            delivered: crate::telemetry::metrics().delivered.clone(),
        }
    }
}

/// A room's share of a batch being formatted.
struct Block {
    room: Arc<str>,
    bytes: BytesMut,
    messages: Vec<BatchEntry>,
}

impl Publish<ConnId> for Fanout {
    fn publish(&mut self, batch: StoredBatch<'_, ConnId>) {
        let mut blocks: Vec<Block> = Vec::new();
        for (message, stored, &sender) in batch.iter() {
            if self.time.0 != stored.millis {
                self.time = (stored.millis, protocol::format_time(stored.millis));
            }
            // The room's open block, or a new one when it has none or it is full.
            let open = blocks
                .iter()
                .rposition(|b| b.room == message.room && b.bytes.len() < MAX_BLOCK);
            let block = match open {
                Some(i) => &mut blocks[i],
                None => {
                    blocks.push(Block {
                        room: message.room.clone(),
                        bytes: BytesMut::new(),
                        messages: Vec::new(),
                    });
                    blocks.last_mut().expect("just pushed")
                }
            };
            protocol::write_message_line(
                &mut block.bytes,
                MessageKind::Live,
                &message.room,
                stored.id,
                &self.time.1,
                &message.nick,
                &message.text,
            );
            block.messages.push(BatchEntry {
                id: stored.id,
                sender,
                end: block.bytes.len(),
            });
        }
        let mut delivered = 0;
        for Block {
            room,
            bytes,
            messages,
        } in blocks
        {
            let first = messages[0].sender;
            let only_sender = messages.iter().all(|m| m.sender == first).then_some(first);
            delivered += self.rooms.publish(Arc::new(LiveBatch::new(
                room,
                bytes.freeze(),
                messages,
                only_sender,
            )));
        }
        // Once per stored batch, whatever its number of recipients.
        self.delivered.increment(delivered);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mailbox::{ConnHandle, Delivery, Mailbox};
    use crate::store::{NewMessage, StoredMessage};

    fn member(rooms: &Rooms, room: &str, id: ConnId) -> ConnHandle {
        let conn = ConnHandle {
            id,
            mailbox: Arc::new(Mailbox::new(1 << 20)),
        };
        rooms.join(&room.into(), &format!("n{id}").into(), &conn);
        conn
    }

    fn batches(conn: &ConnHandle) -> Vec<(Arc<LiveBatch>, bool)> {
        let mut out = Vec::new();
        conn.mailbox.take_while(|item| {
            if let Delivery::Messages { batch, only_ours } = item {
                out.push((batch, only_ours));
            }
            true
        });
        out
    }

    #[test]
    fn a_stored_batch_reaches_each_room_formatted_once() {
        let rooms = Arc::new(Rooms::new());
        let alice = member(&rooms, "a", 1);
        let bob = member(&rooms, "b", 2);
        let message = |room: &str, text: &str| NewMessage {
            room: room.into(),
            nick: "alice".into(),
            text: text.into(),
        };
        let stored = |id| StoredMessage {
            id,
            millis: 1_795_507_200_123,
            nick: "alice".into(),
            text: String::new(),
        };
        let messages = [
            message("a", "one"),
            message("b", "two"),
            message("a", "three"),
        ];
        let stored = [stored(1), stored(1), stored(2)];
        let senders = [1, 1, 1];
        Fanout::new(rooms.clone()).publish(StoredBatch::new(&messages, &stored, &senders));

        let got = batches(&alice);
        assert_eq!(got.len(), 1);
        let (batch, only_ours) = &got[0];
        assert!(only_ours, "alice sent everything in room a");
        assert_eq!(
            &batch.bytes[..],
            b"MSG a 1 2026-11-24T08:00:00.123Z alice one\nMSG a 2 2026-11-24T08:00:00.123Z alice three\n"
        );
        assert_eq!(
            batch.messages.iter().map(|m| m.id).collect::<Vec<_>>(),
            [1, 2]
        );
        let got = batches(&bob);
        assert_eq!(got.len(), 1);
        assert!(!got[0].1);
        assert_eq!(
            &got[0].0.bytes[..],
            b"MSG b 1 2026-11-24T08:00:00.123Z alice two\n"
        );
    }

    #[test]
    fn ranges_skip_own_and_already_shown_messages() {
        let entry = |id, sender, end| BatchEntry { id, sender, end };
        let batch = LiveBatch {
            room: "r".into(),
            bytes: Bytes::from_static(b"1\n2\n3\n4\n"),
            messages: vec![
                entry(1, 7, 2),
                entry(2, 8, 4),
                entry(3, 7, 6),
                entry(4, 8, 8),
            ],
            only_sender: None,
            websocket: Default::default(),
        };
        assert_eq!(batch.ranges_for(9, 0), vec![0..8]);
        assert_eq!(batch.ranges_for(7, 0), vec![2..4, 6..8]);
        assert_eq!(batch.ranges_for(9, 2), vec![4..8]);
        assert_eq!(batch.ranges_for(8, 4), Vec::<Range<usize>>::new());
    }

    #[test]
    fn a_websocket_member_gets_the_same_messages_framed() {
        let entry = |id, sender, end| BatchEntry { id, sender, end };
        let long = format!("{}\n", "z".repeat(200));
        let lines = format!("1\n{long}3\n");
        let batch = LiveBatch::new(
            "r".into(),
            Bytes::from(lines),
            vec![entry(1, 7, 2), entry(2, 8, 203), entry(3, 7, 205)],
            None,
        );
        let all = batch.websocket_frames(0..205);
        assert_eq!(all, frames::frame_lines(&batch.bytes));
        assert_eq!(&batch.websocket_frames(0..2)[..], b"\x81\x011");
        assert_eq!(&batch.websocket_frames(203..205)[..], b"\x81\x013");
        assert_eq!(
            batch.websocket_frames(2..203),
            frames::frame_lines(long.as_bytes())
        );
        // Made once, shared by every later member.
        assert_eq!(batch.websocket_frames(0..205).as_ptr(), all.as_ptr());
    }
}
