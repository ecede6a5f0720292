//! Express delivery: room traffic written to a waiting member's socket by one flusher task,
//! without waking the member's session.
//!
//! At paced traffic a delivery cost a wake-up of the member's task, two turns of its loop and
//! one vectored write, and only the write must happen. So a session with nothing to write,
//! nothing queued and no replay under way *arms* its mailbox before it waits
//! ([`Mailbox::arm`](crate::mailbox::Mailbox::arm)): it leaves there its socket (plain TCP
//! only: TLS and WebSocket connections frame their bytes in their own task) and, for each room
//! it is in, the last message id it showed. A batch for an armed mailbox is queued there as
//! for any other, but instead of waking the session the fan-out hands the mailbox to the
//! [`Flusher`] (a task per worker thread), which writes everything queued in it with one
//! non-blocking vectored write, decided as the session would decide it ([`LiveBatch::show`]).
//! The flusher runs once the fan-out has let go of the thread, so batches stored in quick
//! succession still reach a member in one write, as they did when each session woke.
//!
//! When the socket does not take everything, the mailbox is disarmed and the session woken:
//! what was not begun stays queued; the end of a line that was begun waits in the mailbox,
//! to be written before anything else. A session that wakes for any reason disarms first and
//! learns how far each room was shown meanwhile, so nothing is shown twice and nothing
//! overtakes: while armed, only the flusher writes to the socket (under the mailbox's lock);
//! once disarmed, only the session does.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;

use tokio::sync::mpsc;

use crate::connection::MAX_IOVECS;
use crate::fanout::Show;
use crate::mailbox::{ConnId, Delivery, Mailbox};
use crate::protocol::MessageId;
use crate::transport::Transport;

/// Flushes armed mailboxes that batches were queued in: a task per worker thread (each
/// mailbox always to the same one), woken once for any number of mailboxes (see the module
/// documentation).
#[derive(Default)]
pub struct Flusher {
    /// Made at the first use: empty outside a runtime, where each is flushed at once.
    shards: OnceLock<Vec<Shard>>,
}

/// One flushing task: the mailboxes waiting for it, and its wake-up. Dropped with the
/// flusher, which ends the task.
struct Shard {
    pending: Arc<Mutex<Vec<Arc<Mailbox>>>>,
    kick: mpsc::Sender<()>,
}

impl Flusher {
    /// Has `mailboxes` flushed soon, after the caller lets go of the thread.
    pub fn flush_soon(&self, mailboxes: Vec<Arc<Mailbox>>) {
        if mailboxes.is_empty() {
            return;
        }
        let shards = self.shards.get_or_init(|| {
            let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                return Vec::new();
            };
            // As many as the threads that ran the sessions' writes before.
            let n = runtime.metrics().num_workers().clamp(1, 64);
            (0..n)
                .map(|_| {
                    let pending = Arc::default();
                    let (kick, kicked) = mpsc::channel(1);
                    runtime.spawn(flush_when_kicked(Arc::clone(&pending), kicked));
                    Shard { pending, kick }
                })
                .collect()
        });
        if shards.is_empty() {
            return mailboxes.iter().for_each(|m| m.flush_express());
        }
        let mut kicked = [false; 64];
        for mailbox in mailboxes {
            // Mailboxes are at least 64 bytes apart: the low bits say little.
            let i = (Arc::as_ptr(&mailbox) as usize >> 6) % shards.len();
            shards[i]
                .pending
                .lock()
                .expect("flusher lock")
                .push(mailbox);
            kicked[i] = true;
        }
        for (shard, _) in shards.iter().zip(kicked).filter(|(_, k)| *k) {
            // Full: a kick is waiting already, and will find these too.
            let _ = shard.kick.try_send(());
        }
    }
}

async fn flush_when_kicked(pending: Arc<Mutex<Vec<Arc<Mailbox>>>>, mut kicked: mpsc::Receiver<()>) {
    let mut taken = Vec::new();
    while kicked.recv().await.is_some() {
        // Kicked from a worker thread, this task would run next (tokio's LIFO slot), before
        // the senders and the writer it woke: behind them instead, it finds every batch they
        // store meanwhile and writes them all at once, as each session did when it woke.
        tokio::task::yield_now().await;
        std::mem::swap(&mut taken, &mut *pending.lock().expect("flusher lock"));
        for mailbox in taken.drain(..) {
            mailbox.flush_express();
        }
    }
}

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

/// What became of a flush of an armed mailbox.
#[derive(Debug, PartialEq, Eq)]
pub enum Flushed {
    /// Everything queued was written (or had nothing to show): the session sleeps on.
    Done,
    /// The socket did not take everything: disarmed, and the session must wake to write the
    /// leftover and take what is still queued.
    Wake,
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

    /// Writes what was queued while armed, in order, with as few vectored writes as the
    /// socket allows; `taken` hears of each item gone from the queue (written, or with
    /// nothing to show). See [`Flushed`].
    pub fn flush(
        &mut self,
        items: &mut VecDeque<Delivery>,
        mut taken: impl FnMut(&Delivery),
    ) -> Flushed {
        debug_assert!(self.armed);
        while !items.is_empty() {
            // What each item shows, decided as the session would, room by room in order.
            let mut shown: Vec<MessageId> = self.rooms.iter().map(|s| s.now).collect();
            let mut pieces: Vec<Bytes> = Vec::new();
            let mut plan: Vec<Planned> = Vec::new();
            for item in items.iter() {
                let before = pieces.len();
                let moved = match item {
                    Delivery::Messages { batch, .. } => {
                        match self.rooms.iter().position(|s| s.room == batch.room) {
                            // Not our room any more: the session would drop it too.
                            None => None,
                            Some(i) => {
                                match batch.show(self.me, shown[i]) {
                                    Show::Nothing => {}
                                    Show::All => pieces.push(batch.bytes.clone()),
                                    Show::Ranges(ranges) => pieces
                                        .extend(ranges.into_iter().map(|r| batch.bytes.slice(r))),
                                }
                                let last = batch.messages.last().map_or(0, |m| m.id);
                                shown[i] = shown[i].max(last);
                                Some((i, shown[i]))
                            }
                        }
                    }
                    Delivery::Presence { room, line } => {
                        if self.rooms.iter().any(|s| s.room == *room) {
                            pieces.push(line.clone());
                        }
                        None
                    }
                };
                if pieces.len() > MAX_IOVECS {
                    pieces.truncate(before);
                    break;
                }
                let bytes = pieces[before..].iter().map(Bytes::len).sum();
                plan.push(Planned {
                    bytes,
                    end: pieces.len(),
                    moved,
                });
            }
            if plan.is_empty() {
                // One item in more pieces than a write takes: the session writes it.
                self.armed = false;
                return Flushed::Wake;
            }
            let mut written = if pieces.is_empty() {
                0
            } else {
                match self.write(&pieces) {
                    Some(n) => n,
                    None => {
                        self.armed = false;
                        return Flushed::Wake;
                    }
                }
            };
            let mut first_piece = 0;
            for Planned { bytes, end, moved } in plan {
                if written == 0 && bytes > 0 {
                    // Not begun: it stays queued, for the session.
                    self.armed = false;
                    return Flushed::Wake;
                }
                let item = items.pop_front().expect("planned from the queue");
                taken(&item);
                if let Some((i, id)) = moved {
                    self.rooms[i].now = id;
                }
                if written >= bytes {
                    written -= bytes;
                    first_piece = end;
                    continue;
                }
                // Begun but not finished: the rest goes first when the session wakes.
                let rest = Rest::after(&pieces[first_piece..end], written);
                self.leftover = rest.pieces;
                self.leftover_started = rest.started;
                self.armed = false;
                return Flushed::Wake;
            }
        }
        Flushed::Done
    }

    /// One non-blocking vectored write of `pieces`: `None` if the socket took nothing (full,
    /// or failed: the session will meet the error on its own write), else what it did not
    /// take.
    fn write(&self, pieces: &[Bytes]) -> Option<usize> {
        let Transport::Tcp(stream) = &*self.socket else {
            return None;
        };
        let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
        for (slot, piece) in slices.iter_mut().zip(pieces) {
            *slot = IoSlice::new(piece);
        }
        match stream.try_write_vectored(&slices[..pieces.len().min(MAX_IOVECS)]) {
            Ok(0) | Err(_) => None,
            Ok(n) => Some(n),
        }
    }
}

/// One queued item in a flush: its bytes, where its pieces end in the flush's, and the room
/// it moves on (the room's index, and the id it is then shown through).
struct Planned {
    bytes: usize,
    end: usize,
    moved: Option<(usize, MessageId)>,
}

/// What a write left: pieces are whole lines, except the first when `started`.
#[derive(Default)]
struct Rest {
    pieces: Vec<Bytes>,
    started: bool,
}

impl Rest {
    /// What is left of `pieces` once `written` bytes of them went.
    fn after(pieces: &[Bytes], mut written: usize) -> Rest {
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
        rest
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
    type Disarmed = (Vec<(String, MessageId)>, Vec<(Bytes, bool)>);

    fn disarm(mailbox: &Mailbox) -> Disarmed {
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

    /// Takes everything queued; returns how many items.
    fn taken(mailbox: &Mailbox) -> usize {
        mailbox.take_while(|_| true)
    }

    #[tokio::test]
    async fn an_armed_mailbox_writes_what_the_session_would_show_without_waking_it() {
        let (socket, mut client) = pair().await;
        let mailbox = Mailbox::new(1 << 20);
        let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
        assert!(mailbox.arm(&socket, ME, [(&a, 5), (&b, 0)].into_iter()));
        // Already shown (5), our own (7), and new from others (6, 8); then more of a, of a
        // room we are not in, and of b: four batches, one write.
        let held = [
            batch(
                "a",
                &[
                    (5, OTHER, "old"),
                    (6, OTHER, "x"),
                    (7, ME, "mine"),
                    (8, OTHER, "y"),
                ],
            ),
            batch("a", &[(8, OTHER, "again"), (9, OTHER, "z")]),
            batch("c", &[(1, OTHER, "not our room")]),
            batch("b", &[(3, OTHER, "in b")]),
        ];
        for item in held {
            assert!(mailbox.deliver(item), "held for the flusher");
        }
        assert!(!woken(&mailbox));
        mailbox.flush_express();
        let expected = "MSG a 6 x\nMSG a 8 y\nMSG a 9 z\nMSG b 3 in b\n";
        assert_eq!(read_exactly(&mut client, expected.len()).await, expected);
        assert!(!woken(&mailbox), "the session slept through it");
        assert_eq!(taken(&mailbox), 0, "nothing is left queued");
        let (shown, rest) = disarm(&mailbox);
        assert_eq!(shown, [("a".to_string(), 9), ("b".to_string(), 3)]);
        assert!(rest.is_empty());
        // Disarmed: deliveries queue for the session, and wake it.
        assert!(!mailbox.deliver(batch("a", &[(10, OTHER, "z")])));
        assert!(woken(&mailbox));
        assert_eq!(taken(&mailbox), 1);
    }

    #[tokio::test]
    async fn presence_wakes_an_armed_session_and_keeps_its_place() {
        let (socket, _client) = pair().await;
        let mailbox = Mailbox::new(1 << 20);
        let a: Arc<str> = "a".into();
        assert!(mailbox.arm(&socket, ME, [(&a, 0)].into_iter()));
        assert!(mailbox.deliver(batch("a", &[(1, OTHER, "x")])));
        assert!(!mailbox.deliver(presence("a", "JOINED a carol\n")));
        assert!(woken(&mailbox));
        // The session woke first: it takes both, in order; the flusher finds it disarmed.
        disarm(&mailbox);
        mailbox.flush_express();
        let mut messages_first = Vec::new();
        mailbox.take_while(|item| {
            messages_first.push(matches!(item, Delivery::Messages { .. }));
            true
        });
        assert_eq!(messages_first, [true, false]);
    }

    #[tokio::test]
    async fn our_own_messages_alone_move_the_room_on_and_write_nothing() {
        let (socket, _client) = pair().await;
        let mailbox = Mailbox::new(1 << 20);
        let a: Arc<str> = "a".into();
        assert!(mailbox.arm(&socket, ME, [(&a, 0)].into_iter()));
        assert!(mailbox.deliver(batch("a", &[(3, ME, "mine")])));
        mailbox.flush_express();
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
        mailbox.deliver(batch("a", &[(2, OTHER, "after")]));
        mailbox.flush_express();
        assert!(woken(&mailbox), "the session must write the rest");
        let (shown, rest) = disarm(&mailbox);
        assert_eq!(shown, [("a".to_string(), 1)]);
        assert_eq!(rest.len(), 1);
        assert!(
            rest[0].1,
            "the line was begun: it must not be dropped as unstarted"
        );
        let line = format!("MSG a 1 {long}\n");
        let tail = std::str::from_utf8(&rest[0].0).unwrap();
        assert!(tail.len() < line.len() && line.ends_with(tail));
        assert_eq!(taken(&mailbox), 1, "the later batch waits in the queue");
        // The socket got exactly the start of the line.
        let got = read_exactly(&mut client, line.len() - tail.len()).await;
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
        assert!(mailbox.deliver(batch("a", &[(1, OTHER, "one")])));
        mailbox.flush_express();
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
        assert!(!mailbox.deliver(batch("a", &[(1, OTHER, "one")])));
        mailbox.flush_express();
        assert_eq!(disarm(&mailbox).0, []);
        assert!(mailbox.is_lagging());
    }

    #[tokio::test]
    async fn the_flusher_writes_held_batches_once_the_deliverer_lets_go() {
        let (socket, mut client) = pair().await;
        let mailbox = Arc::new(Mailbox::new(1 << 20));
        let a: Arc<str> = "a".into();
        assert!(mailbox.arm(&socket, ME, [(&a, 0)].into_iter()));
        let flusher = Flusher::default();
        for id in 1..=3 {
            assert!(mailbox.deliver(batch("a", &[(id, OTHER, "m")])));
            flusher.flush_soon(vec![mailbox.clone()]);
        }
        let expected = "MSG a 1 m\nMSG a 2 m\nMSG a 3 m\n";
        assert_eq!(read_exactly(&mut client, expected.len()).await, expected);
        assert!(!woken(&mailbox));
    }
}
