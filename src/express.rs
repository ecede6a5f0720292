//! Express delivery: room traffic written straight to a waiting member's socket by whoever
//! delivers it (the fan-out, or a session announcing presence), without waking the member.
//!
//! At paced traffic a delivery cost a wake-up of the member's task, two turns of its loop and
//! one vectored write, and only the write must happen. So a session with nothing to write,
//! nothing queued and no replay under way *arms* its mailbox before it waits
//! ([`Mailbox::arm`](crate::mailbox::Mailbox::arm)): it leaves there its socket (plain TCP
//! only: TLS and WebSocket connections frame their bytes in their own task) and, for each room
//! it is in, the last message id it showed. A delivery to an armed mailbox is decided as the
//! session would decide it ([`LiveBatch::show`]) and written with one non-blocking vectored
//! write. When the socket does not take all of it, the mailbox is disarmed and the session
//! woken:
//! - the socket took none of it: the delivery is queued, as for any session;
//! - the socket took part of it: the rest waits here, for the session to write before
//!   anything else.
//!
//! A session that wakes for any reason disarms first and learns how far each room was shown
//! meanwhile, so nothing is shown twice and nothing overtakes: while armed, only deliverers
//! write to the socket (under the mailbox's lock, in delivery order); once disarmed, only the
//! session does.

use std::io::IoSlice;
use std::sync::Arc;

use bytes::Bytes;

use crate::fanout::Show;
use crate::mailbox::{ConnId, Delivery};
use crate::protocol::MessageId;
use crate::transport::Transport;

/// Most buffers handed to one express write; a delivery in more pieces is queued instead.
const MAX_IOVECS: usize = 16;

/// A mailbox's express state; see the module documentation.
pub struct Express {
    socket: Arc<Transport>,
    me: ConnId,
    armed: bool,
    /// The rooms the session was in when it armed, with how far each is shown.
    rooms: Vec<Shown>,
    /// What the socket did not take of the delivery that disarmed it.
    leftover: Vec<Bytes>,
    /// The first of `leftover` is the end of a line whose start was written.
    leftover_started: bool,
}

struct Shown {
    room: Arc<str>,
    /// Shown through this id when the session armed.
    armed_at: MessageId,
    /// Shown through this id now.
    now: MessageId,
}

/// What became of one delivery to an armed mailbox.
#[derive(Debug)]
pub enum Outcome {
    /// Written, or nothing in it to show: the session need not wake.
    Done,
    /// Partly written; the rest waits for the session, which must wake.
    Partly,
    /// Not written: to be queued for the session, as if the mailbox were not armed.
    Refused(Delivery),
}

impl Express {
    pub fn new(socket: Arc<Transport>, me: ConnId) -> Express {
        Express {
            socket,
            me,
            armed: false,
            rooms: Vec::new(),
            leftover: Vec::new(),
            leftover_started: false,
        }
    }

    pub fn is_armed(&self) -> bool {
        self.armed
    }

    /// Arms with the rooms the session is in and how far it has shown each.
    pub fn arm<'a>(&mut self, rooms: impl Iterator<Item = (&'a Arc<str>, MessageId)>) {
        debug_assert!(
            self.leftover.is_empty(),
            "the session took the leftover first"
        );
        let mut n = 0;
        for (room, shown) in rooms {
            // Usually the same rooms as last time: no reference counts to touch.
            match self.rooms.get_mut(n) {
                Some(s) if Arc::ptr_eq(&s.room, room) => {
                    s.armed_at = shown;
                    s.now = shown;
                }
                Some(s) => {
                    *s = Shown {
                        room: room.clone(),
                        armed_at: shown,
                        now: shown,
                    }
                }
                None => self.rooms.push(Shown {
                    room: room.clone(),
                    armed_at: shown,
                    now: shown,
                }),
            }
            n += 1;
        }
        self.rooms.truncate(n);
        self.armed = true;
    }

    /// Disarms: `shown` hears of every room shown further since arming, `leftover` gets what
    /// must be written before anything else, each piece with whether its line was begun.
    pub fn disarm(
        &mut self,
        mut shown: impl FnMut(&Arc<str>, MessageId),
        mut leftover: impl FnMut(Bytes, bool),
    ) {
        self.armed = false;
        for s in &self.rooms {
            if s.now > s.armed_at {
                shown(&s.room, s.now);
            }
        }
        let mut started = std::mem::take(&mut self.leftover_started);
        for piece in self.leftover.drain(..) {
            leftover(piece, std::mem::take(&mut started));
        }
    }

    /// Writes `item` to the socket if it takes it; see [`Outcome`].
    pub fn deliver(&mut self, item: Delivery) -> Outcome {
        debug_assert!(self.armed);
        let (written, last) = match &item {
            Delivery::Messages { batch, .. } => {
                // Not our room any more: the session would drop it too.
                let Some(i) = self.rooms.iter().position(|s| s.room == batch.room) else {
                    return Outcome::Done;
                };
                let shown = self.rooms[i].now;
                let last = batch.messages.last().map_or(shown, |m| m.id.max(shown));
                let written = match batch.show(self.me, shown) {
                    Show::Nothing => Some(Rest::default()),
                    Show::All => self.write(std::slice::from_ref(&batch.bytes)),
                    Show::Ranges(ranges) => {
                        let pieces: Vec<Bytes> =
                            ranges.into_iter().map(|r| batch.bytes.slice(r)).collect();
                        self.write(&pieces)
                    }
                };
                (written, Some((i, last)))
            }
            Delivery::Presence { room, line } => {
                if !self.rooms.iter().any(|s| s.room == *room) {
                    return Outcome::Done;
                }
                (self.write(std::slice::from_ref(line)), None)
            }
        };
        let Some(rest) = written else {
            self.armed = false;
            return Outcome::Refused(item);
        };
        if let Some((i, last)) = last {
            self.rooms[i].now = last;
        }
        if rest.is_empty() {
            Outcome::Done
        } else {
            self.leftover = rest.pieces;
            self.leftover_started = rest.started;
            self.armed = false;
            Outcome::Partly
        }
    }

    /// One non-blocking vectored write of `pieces`: `None` if the socket took nothing (full,
    /// or failed: the session will meet the error on its own write), else what it did not
    /// take.
    fn write(&self, pieces: &[Bytes]) -> Option<Rest> {
        let Transport::Tcp(stream) = &*self.socket else {
            return None;
        };
        if pieces.len() > MAX_IOVECS {
            return None;
        }
        let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
        for (slot, piece) in slices.iter_mut().zip(pieces) {
            *slot = IoSlice::new(piece);
        }
        let mut written = match stream.try_write_vectored(&slices[..pieces.len()]) {
            Ok(0) | Err(_) => return None,
            Ok(n) => n,
        };
        let mut rest = Rest::default();
        for piece in pieces {
            if written >= piece.len() {
                written -= piece.len();
            } else {
                rest.started |= rest.pieces.is_empty() && written > 0;
                rest.pieces.push(piece.slice(written..));
                written = 0;
            }
        }
        Some(rest)
    }
}

/// What a write left: pieces are whole lines, except the first when `started`.
#[derive(Default)]
struct Rest {
    pieces: Vec<Bytes>,
    started: bool,
}

impl Rest {
    fn is_empty(&self) -> bool {
        self.pieces.is_empty()
    }
}

impl std::fmt::Debug for Express {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Express")
            .field("me", &self.me)
            .field("armed", &self.armed)
            .field("rooms", &self.rooms.len())
            .field("leftover", &self.leftover.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures::FutureExt;
    use tokio::io::AsyncReadExt;
    use tokio::net::{TcpListener, TcpStream};

    use super::*;
    use crate::fanout::{BatchEntry, LiveBatch};
    use crate::mailbox::Mailbox;

    const ME: ConnId = 1;
    const OTHER: ConnId = 2;

    /// A server-side socket (as the session's transport) and the client's end.
    async fn pair() -> (Arc<Transport>, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (Arc::new(Transport::Tcp(server)), client)
    }

    /// A batch of room `room` with one line per `(id, sender, text)`.
    fn batch(room: &str, messages: &[(MessageId, ConnId, &str)]) -> Delivery {
        let mut bytes = Vec::new();
        let mut entries = Vec::new();
        for &(id, sender, text) in messages {
            bytes.extend_from_slice(format!("MSG {room} {id} {text}\n").as_bytes());
            entries.push(BatchEntry {
                id,
                sender,
                end: bytes.len(),
            });
        }
        Delivery::Messages {
            batch: Arc::new(LiveBatch::new(room.into(), bytes.into(), entries, None)),
            only_ours: false,
        }
    }

    fn presence(room: &str, line: &str) -> Delivery {
        Delivery::Presence {
            room: room.into(),
            line: Bytes::from(line.to_string()),
        }
    }

    async fn read_exactly(client: &mut TcpStream, n: usize) -> String {
        let mut buf = vec![0; n];
        tokio::time::timeout(Duration::from_secs(5), client.read_exact(&mut buf))
            .await
            .expect("the bytes arrive")
            .unwrap();
        String::from_utf8(buf).unwrap()
    }

    /// What disarming reports: rooms shown further, and the leftover with its begun flags.
    fn disarm(mailbox: &Mailbox) -> (Vec<(String, MessageId)>, Vec<(Bytes, bool)>) {
        let (mut shown, mut rest) = (Vec::new(), Vec::new());
        mailbox.disarm(
            |room, id| shown.push((room.to_string(), id)),
            |piece, begun| rest.push((piece, begun)),
        );
        (shown, rest)
    }

    fn woken(mailbox: &Mailbox) -> bool {
        mailbox.ready.wait().now_or_never().is_some()
    }

    #[tokio::test]
    async fn an_armed_mailbox_writes_what_the_session_would_show_without_waking_it() {
        let (socket, mut client) = pair().await;
        let mailbox = Mailbox::new(1 << 20);
        let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
        assert!(mailbox.arm(&socket, ME, [(&a, 5), (&b, 0)].into_iter()));
        // Already shown (5), our own (7), and new from others (6, 8).
        mailbox.deliver(batch(
            "a",
            &[
                (5, OTHER, "old"),
                (6, OTHER, "x"),
                (7, ME, "mine"),
                (8, OTHER, "y"),
            ],
        ));
        mailbox.deliver(batch("c", &[(1, OTHER, "not our room")]));
        mailbox.deliver(presence("b", "JOINED b carol\n"));
        mailbox.deliver(presence("c", "JOINED c carol\n"));
        let expected = "MSG a 6 x\nMSG a 8 y\nJOINED b carol\n";
        assert_eq!(read_exactly(&mut client, expected.len()).await, expected);
        assert!(!woken(&mailbox), "the session slept through it");
        assert_eq!(taken(&mailbox), 0, "nothing was queued");
        let (shown, rest) = disarm(&mailbox);
        assert_eq!(shown, [("a".to_string(), 8)]);
        assert!(rest.is_empty());
        // Disarmed: deliveries queue for the session again.
        mailbox.deliver(batch("a", &[(9, OTHER, "z")]));
        assert!(woken(&mailbox));
        assert_eq!(taken(&mailbox), 1);
    }

    #[tokio::test]
    async fn our_own_messages_alone_move_the_room_on_and_write_nothing() {
        let (socket, _client) = pair().await;
        let mailbox = Mailbox::new(1 << 20);
        let a: Arc<str> = "a".into();
        assert!(mailbox.arm(&socket, ME, [(&a, 0)].into_iter()));
        mailbox.deliver(batch("a", &[(3, ME, "mine")]));
        assert!(!woken(&mailbox));
        assert_eq!(disarm(&mailbox).0, [("a".to_string(), 3)]);
    }

    #[tokio::test]
    async fn a_socket_that_takes_part_leaves_the_rest_first_and_the_rest_queued_behind() {
        let (socket, mut client) = pair().await;
        let mailbox = Mailbox::new(1 << 30);
        let a: Arc<str> = "a".into();
        assert!(mailbox.arm(&socket, ME, [(&a, 0)].into_iter()));
        // Far more than a socket buffer holds: it takes part of the line.
        let long = "x".repeat(64 << 20);
        mailbox.deliver(batch("a", &[(1, OTHER, &long)]));
        assert!(woken(&mailbox), "the session must write the rest");
        // Nothing more goes to the socket behind the rest's back.
        mailbox.deliver(batch("a", &[(2, OTHER, "after")]));
        let (shown, rest) = disarm(&mailbox);
        assert_eq!(shown, [("a".to_string(), 1)]);
        assert_eq!(rest.len(), 1);
        assert!(
            rest[0].1,
            "the line was begun: it must not be dropped as unstarted"
        );
        let line = format!("MSG a 1 {long}\n");
        assert!(
            rest[0].0.len() < line.len()
                && line.ends_with(std::str::from_utf8(&rest[0].0).unwrap())
        );
        assert_eq!(taken(&mailbox), 1, "the later batch waits in the queue");
        // The socket got exactly the start of the line.
        let written = line.len() - rest[0].0.len();
        let got = read_exactly(&mut client, written).await;
        assert!(line.starts_with(&got));
    }

    #[tokio::test]
    async fn a_full_socket_refuses_and_the_delivery_is_queued_as_usual() {
        let (socket, _client) = pair().await;
        let Transport::Tcp(stream) = &*socket else {
            unreachable!()
        };
        // Fill the socket: the client never reads.
        let chunk = vec![b'.'; 1 << 20];
        while stream.try_write(&chunk).is_ok() {}
        let mailbox = Mailbox::new(1 << 20);
        let a: Arc<str> = "a".into();
        assert!(mailbox.arm(&socket, ME, [(&a, 0)].into_iter()));
        mailbox.deliver(batch("a", &[(1, OTHER, "one")]));
        assert!(woken(&mailbox));
        let (shown, rest) = disarm(&mailbox);
        assert!(
            shown.is_empty(),
            "nothing was shown: the session shows it from the queue"
        );
        assert!(rest.is_empty());
        assert_eq!(taken(&mailbox), 1);
    }

    #[tokio::test]
    async fn it_arms_only_with_nothing_queued_and_never_writes_while_lagging() {
        let (socket, _client) = pair().await;
        let mailbox = Mailbox::new(1 << 20);
        let a: Arc<str> = "a".into();
        mailbox.deliver(presence("a", "JOINED a x\n"));
        assert!(
            !mailbox.arm(&socket, ME, [(&a, 0)].into_iter()),
            "an item waits"
        );
        assert_eq!(taken(&mailbox), 1);
        assert!(mailbox.arm(&socket, ME, [(&a, 0)].into_iter()));
        // The server lost its notifications: a quiet catch-up, nothing written meanwhile.
        mailbox.catch_up_quietly(vec![a.clone()]);
        mailbox.deliver(batch("a", &[(1, OTHER, "one")]));
        assert_eq!(disarm(&mailbox).0, []);
        assert!(mailbox.is_lagging());
    }

    /// Takes everything queued; returns how many items.
    fn taken(mailbox: &Mailbox) -> usize {
        mailbox.take_while(|_| true)
    }
}
