//! One connection: read lines, apply commands, write replies and live traffic.
//!
//! A session is one task that waits on whichever comes first: shutdown, room traffic, acks of
//! its `SAY`s, the socket becoming writable, its stall timer, or the next input line. Output goes through an [`Outbox`] of shared `Bytes` written with
//! vectored writes, so many queued lines leave in one syscall and nothing is copied per
//! recipient. Input is only read while the outbox is small: a client that does not read its
//! replies stops being read, rather than making the server buffer without bound.
//!
//! A client that reads too slowly for its rooms *lags* (see [`Inbox`]): once it has taken
//! what was queued, the session replays the gap from the store (`LAGGED`, then `MSG` lines)
//! and goes live again. Only a client that takes no bytes at all for `--stall-timeout` is
//! closed (`BYE too slow`).

use std::collections::VecDeque;
use std::future::Future;
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes};
use futures::stream::{FuturesOrdered, StreamExt};
use futures::FutureExt;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;

use crate::codec::{Frame, LineReader};
use crate::hub::Hub;
use crate::limits::Ticket;
use crate::protocol::{
    self, Command, ErrorCode, HistoryArgs, MessageId, MessageKind, ProtocolError, Replay,
};
use crate::rooms::{ConnHandle, Inbox, Outbound};
use crate::store::writer::AckResult;
use crate::store::{NewMessage, Page, StoreError, StoredMessage};

/// Pending output above which the session stops reading input and taking room traffic.
const OUTBOX_HIGH: usize = 64 * 1024;
/// Most `SAY`s in flight to the writer for one connection (pipelined clients).
const MAX_IN_FLIGHT: usize = 256;
/// Most buffers handed to one vectored write.
const MAX_IOVECS: usize = 64;
/// How long catching up waits after the store refused a replay.
const CATCH_UP_RETRY: Duration = Duration::from_secs(1);
/// Most input lines handled in one turn of a session's loop before it looks at its other
/// work (writing, acks, room traffic, shutdown).
const FRAMES_PER_TURN: usize = 64;

/// Serves one accepted connection until it closes. `_place` is its place in the server's
/// connection count, given back when the session ends.
pub async fn run(
    hub: Arc<Hub>,
    stream: TcpStream,
    peer: SocketAddr,
    shutdown: CancellationToken,
    _place: Ticket,
) {
    let (read, write) = stream.into_split();
    let reader = LineReader::new(read, hub.config.max_line);
    let handle = ConnHandle {
        id: hub.next_conn_id(),
        inbox: Arc::new(Inbox::default()),
        limit: hub.config.outbound_limit.max(1),
    };
    tracing::debug!(%peer, conn = handle.id, "connected");
    let mut session = Session {
        hub,
        handle,
        shutdown,
        nick: None,
        joined: Vec::new(),
        out: Outbox::default(),
        socket: write,
        acks: Acks::default(),
        errors: (0, 0),
        bucket: (0, 0.0),
        too_many_errors: false,
        behind: None,
        own: OwnIds::default(),
    };
    let end = session.serve(reader).await;
    session.leave_everything();
    session.handle.inbox.close();
    match end {
        End::TooSlow => {
            tracing::info!(%peer, "closed: too slow (took no output for the stall timeout)")
        }
        End::LoginTimeout => tracing::info!(%peer, "closed: no NICK within the login timeout"),
        End::TooManyErrors => tracing::info!(%peer, "closed: too many errors"),
        // A peer that stopped answering keepalive probes (or acks) vanished without a FIN.
        End::Io(e) if e.kind() == io::ErrorKind::TimedOut => {
            tracing::info!(%peer, "closed: the peer vanished (no answer to keepalive probes)")
        }
        End::Io(e) => tracing::debug!(%peer, error = %e, "closed: socket error"),
        other => tracing::debug!(%peer, reason = ?other, "closed"),
    }
}

/// Why a session ended.
#[derive(Debug)]
enum End {
    Quit,
    Eof,
    Shutdown,
    TooSlow,
    LoginTimeout,
    TooManyErrors,
    Io(io::Error),
}

/// One room this connection is in.
struct Joined {
    room: Arc<str>,
    /// Live messages with ids up to here were already shown (replayed or delivered), or
    /// predate the join.
    floor: MessageId,
}

/// Ids of this connection's own messages above their room's floor, acknowledged while the
/// room's earlier traffic was still queued or missed: a catch-up must not show them as
/// `MSG`. Boxed, and allocated only while there are some: every session carries one.
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

    /// Forgets the room's ids up to `floor` (all of them if `None`).
    fn forget(&mut self, room: &str, floor: Option<MessageId>) {
        if let Some(ids) = &mut self.0 {
            ids.retain(|(r, i)| **r != *room || floor.is_some_and(|f| *i > f));
            if ids.is_empty() {
                self.0 = None;
            }
        }
    }
}

struct Session {
    hub: Arc<Hub>,
    handle: ConnHandle,
    shutdown: CancellationToken,
    nick: Option<Arc<str>>,
    /// In join order: the last one is the current room.
    joined: Vec<Joined>,
    out: Outbox,
    socket: OwnedWriteHalf,
    /// Acks of submitted `SAY`s, answered in the order they were said.
    acks: Acks,
    /// Refused lines in the current minute: (minute, count), kept small.
    errors: (u16, u16),
    /// Flood control: (when last refilled, in `clock_ms`, tokens left); (0, 0) before the
    /// first line.
    bucket: (u32, f32),
    /// Set when the connection has erred too often: close with `BYE` at the next chance.
    too_many_errors: bool,
    /// Present only while output waits on the socket or the inbox lags.
    behind: Option<Box<Behind>>,
    own: OwnIds,
}

/// A connection that is behind: bytes wait for its socket, or its inbox lags.
struct Behind {
    /// Wakes the session to check for a stall, or to retry a catch-up.
    timer: Pin<Box<Sleep>>,
    /// When the socket last took bytes, or when output began to wait.
    progress_at: Instant,
    /// Output was waiting when last looked at.
    waiting: bool,
    /// No byte was taken for `--stall-timeout`: close with `BYE too slow`.
    stalled: bool,
    /// The store refused a catch-up: try again from this time.
    retry_at: Option<Instant>,
}

impl Behind {
    fn new(stall: Duration) -> Box<Behind> {
        let now = Instant::now();
        Box::new(Behind {
            timer: Box::pin(tokio::time::sleep_until(now + stall)),
            progress_at: now,
            waiting: false,
            stalled: false,
            retry_at: None,
        })
    }
}

/// Waits for the timer of a connection that is behind; forever for one that is not. (A plain
/// poll function: an `async fn` would add its state to every session's future.)
fn behind_timer(behind: &mut Option<Box<Behind>>) -> impl Future<Output = ()> + '_ {
    std::future::poll_fn(move |cx| match behind {
        Some(b) => b.timer.as_mut().poll(cx),
        None => std::task::Poll::Pending,
    })
}

impl Session {
    async fn serve(&mut self, mut reader: LineReader) -> End {
        self.out.push(protocol::line(&[
            "HELLO",
            "linechat",
            env!("CARGO_PKG_VERSION"),
            "- type NICK <name> to choose a name, then JOIN <room>, then SAY <text>. HELP lists every command.",
        ]));
        // Created once: registering a waiter anew on every turn of the loop is measurable.
        let shutdown = self.shutdown.clone();
        let inbox = self.handle.inbox.clone();
        let shutdown = shutdown.cancelled();
        let traffic = inbox.ready.notified();
        tokio::pin!(shutdown, traffic);
        // No timer of its own (thousands of pending timers cost memory): the hub's login
        // watch marks the inbox if no name came in time.
        self.hub.logins.watch(&inbox);
        loop {
            if inbox.login_expired() {
                Box::pin(self.close("login timeout: choose a name with NICK sooner", &mut reader))
                    .await;
                return End::LoginTimeout;
            }
            if self.behind.as_ref().is_some_and(|b| b.stalled) {
                self.out.drop_unstarted();
                Box::pin(self.close("too slow", &mut reader)).await;
                return End::TooSlow;
            }
            if self.out.bytes < OUTBOX_HIGH {
                self.take_room_traffic();
            }
            // Not keeping up, or lagging: watch for a stall.
            if self.out.bytes >= OUTBOX_HIGH || inbox.is_lagging() {
                self.behind();
            }
            self.track_waiting();
            if inbox.is_lagging() {
                let retry_due = !self.shutdown.is_cancelled()
                    && self
                        .behind
                        .as_ref()
                        .is_none_or(|b| b.retry_at.is_none_or(|at| at <= Instant::now()));
                // The socket took everything queued before the gap: replay it.
                if self.out.is_empty() && retry_due {
                    if let Some(rooms) = inbox.resume() {
                        if let Err(e) = Box::pin(self.catch_up(rooms)).await {
                            return End::Io(e);
                        }
                        continue;
                    }
                }
            } else if self.out.is_empty() && self.behind.is_some() {
                self.behind = None;
            }
            let room_for_output = self.out.bytes < OUTBOX_HIGH;
            let can_read = room_for_output && self.acks.len() < MAX_IN_FLIGHT;
            // The write comes first in this biased select: if another branch wins while output
            // waits, the socket is full, and a stall may begin.
            let had_output = !self.out.is_empty();
            let mut wrote = false;
            tokio::select! {
                biased;
                _ = &mut shutdown => {
                    // Answer what was said before, then refuse the lines already read.
                    self.settle_acks().await;
                    self.refuse_unread(&mut reader);
                    Box::pin(self.close("server shutting down", &mut reader)).await;
                    return End::Shutdown;
                }
                written = self.out.write_some(&mut self.socket), if !self.out.is_empty() => {
                    if let Err(e) = written {
                        return End::Io(e);
                    }
                    wrote = true;
                    self.wrote();
                }
                _ = behind_timer(&mut self.behind), if self.behind.is_some() => {
                    self.on_behind_timer();
                }
                Some(ack) = self.acks.next(), if !self.acks.is_empty() => {
                    // The room traffic of these messages is queued before their acks: taking
                    // it first moves the floors past them, so they need not be remembered.
                    if self.out.bytes < OUTBOX_HIGH {
                        self.take_room_traffic();
                    }
                    // Acks come a batch at a time: answer all that are ready in one go.
                    self.answer_ack(ack);
                    while let Some(Some(ack)) = self.acks.next().now_or_never() {
                        self.answer_ack(ack);
                    }
                    self.acks.release_if_empty();
                }
                _ = &mut traffic => {
                    // Handled at the top of the loop; wait for the next signal afresh.
                    traffic.set(inbox.ready.notified());
                }

                frame = reader.next(), if can_read => {
                    // Take the lines that are already here without going round the loop for
                    // each (a pipelining client sends many per packet), within limits.
                    let mut frame = frame;
                    for turn in 1..=FRAMES_PER_TURN {
                        match frame {
                            // Boxed: the handlers' futures are large and rarely pending, and
                            // keeping them out of the session's own future keeps idle
                            // connections small.
                            Some(Ok(frame)) => match Box::pin(self.on_frame(frame)).await {
                                Ok(None) if self.too_many_errors => {
                                    Box::pin(self.close("too many errors", &mut reader)).await;
                                    return End::TooManyErrors;
                                }
                                Ok(None) => {}
                                Ok(Some(reason)) => {
                                    Box::pin(self.close(&reason, &mut reader)).await;
                                    return End::Quit;
                                }
                                Err(e) => return End::Io(e),
                            },
                            Some(Err(e)) => return End::Io(e),
                            None => {
                                // Half-closed by the client: answer what it sent, then close.
                                Box::pin(self.close("end of input", &mut reader)).await;
                                return End::Eof;
                            }
                        }
                        // Room traffic keeps flowing between the lines of a long turn.
                        if self.out.bytes < OUTBOX_HIGH {
                            self.take_room_traffic();
                        }
                        let full = self.out.bytes >= OUTBOX_HIGH || self.acks.len() >= MAX_IN_FLIGHT;
                        // At shutdown the lines still buffered are refused, not done.
                        if full || turn == FRAMES_PER_TURN || self.shutdown.is_cancelled() {
                            break;
                        }
                        match reader.next().now_or_never() {
                            Some(next) => frame = next,
                            None => break,
                        }
                    }
                }
            }
            if had_output && !wrote {
                self.behind();
            }
        }
    }

    /// Says `BYE <reason>` after answering every `SAY` in flight and leaving every room, then
    /// closes the socket. A client that is still sending is read (and ignored) until it closes
    /// too, within `--close-grace`: closing with unread input would send a reset, and a reset
    /// can destroy the client's copy of the last replies and the `BYE`.
    async fn close(&mut self, reason: &str, reader: &mut LineReader) {
        self.settle_acks().await;
        // Leave first, so the rooms stop queueing for us while the last lines drain.
        self.leave_everything();
        self.out.push(protocol::line(&["BYE", reason]));
        let grace = self.hub.config.close_grace;
        let _ = tokio::time::timeout(grace, async {
            self.out.flush(&mut self.socket).await?;
            self.socket.shutdown().await?;
            // Linger only for a client that is still sending (a line read, or part of one):
            // an idle one is closed at once.
            let sending = matches!(reader.next().now_or_never(), Some(Some(Ok(_))));
            if sending || reader.has_partial_line() {
                while let Some(Ok(_)) = reader.next().await {}
            }
            io::Result::Ok(())
        })
        .await;
    }

    /// At shutdown: every complete line already read from the socket gets
    /// `ERR SHUTTING_DOWN`, so that nothing the server took in goes unanswered.
    fn refuse_unread(&mut self, reader: &mut LineReader) {
        while let Some(Ok(frame)) = reader.next_buffered() {
            if let Frame::Line(line) = &frame {
                if line.iter().all(|b| *b == b' ') {
                    continue;
                }
            }
            self.out.push(protocol::error_line(&ProtocolError::new(
                ErrorCode::ShuttingDown,
                "the server is shutting down; this was not done",
            )));
        }
    }

    fn leave_everything(&mut self) {
        for j in self.joined.drain(..) {
            self.hub.rooms.leave(&j.room, self.handle.id);
        }
        if let Some(nick) = &self.nick {
            self.hub.nicks.release(nick, self.handle.id);
        }
    }

    /// Moves room traffic from the inbox to the outbox while the outbox has room.
    fn take_room_traffic(&mut self) {
        let inbox = self.handle.inbox.clone();
        inbox.take_while(|item| {
            self.on_room_traffic(item);
            self.out.bytes < OUTBOX_HIGH
        });
    }

    fn on_room_traffic(&mut self, item: Outbound) {
        match item {
            Outbound::Presence { room, line } => {
                // Lines queued before a PART are not for us any more.
                if self.joined.iter().any(|j| j.room == room) {
                    self.out.push(line);
                }
            }
            Outbound::Messages { batch, .. } => {
                // Batches queued before a PART are not for us any more.
                let Some(joined) = self.joined.iter_mut().find(|j| j.room == batch.room) else {
                    return;
                };
                let (me, floor) = (self.handle.id, joined.floor);
                if let Some(last) = batch.messages.last() {
                    joined.floor = floor.max(last.id);
                    self.own.forget(&batch.room, Some(joined.floor));
                }
                // The usual case, without allocating: the whole block is for us.
                if batch
                    .messages
                    .iter()
                    .all(|m| m.sender != me && m.id > floor)
                {
                    self.out.push(batch.bytes.clone());
                    return;
                }
                for range in batch.ranges_for(me, floor) {
                    self.out.push(batch.bytes.slice(range));
                }
            }
        }
    }

    fn answer_ack(&mut self, (ack, room): (AckOutcome, Arc<str>)) {
        let line = match ack {
            Ok(Ok(ack)) => {
                self.note_own(&room, ack.id);
                protocol::ok_say(ack.id, self.acks.time(ack.millis))
            }
            Ok(Err(e)) => store_error(&e),
            Err(_) => store_error(&StoreError::Unavailable("the writer has stopped".into())),
        };
        self.out.push(line);
    }

    /// Notes the id of our own message, so that a catch-up never shows it to us as `MSG`.
    fn note_own(&mut self, room: &Arc<str>, id: MessageId) {
        let Some(joined) = self.joined.iter_mut().find(|j| j.room == *room) else {
            return;
        };
        // Above the floor, its batch is still queued, or was missed in a
        // lag: remember it until the floor passes it. (Only traffic taken in order and
        // catch-ups move floors: an ack may overtake queued messages of others.)
        if id > joined.floor {
            self.own.note(room, id);
        }
    }

    /// After a write: a connection whose output still waits is behind, and the write was
    /// progress.
    fn wrote(&mut self) {
        if self.out.is_empty() && self.behind.is_none() {
            return;
        }
        let waiting = !self.out.is_empty();
        let b = self.behind();
        b.progress_at = Instant::now();
        b.waiting = waiting;
    }

    /// The connection's [`Behind`] state, made if it has none.
    fn behind(&mut self) -> &mut Behind {
        let stall = self.hub.config.stall_timeout;
        self.behind.get_or_insert_with(|| Behind::new(stall))
    }

    /// Notes when output begins to wait, which is when a stall can begin.
    fn track_waiting(&mut self) {
        if let Some(b) = &mut self.behind {
            let waiting = !self.out.is_empty();
            if waiting && !b.waiting {
                b.progress_at = Instant::now();
            }
            b.waiting = waiting;
        }
    }

    /// The timer of a connection that is behind fired: find a stall, or set the next wake-up
    /// (the stall deadline, a catch-up retry, or a look round after `--stall-timeout`).
    fn on_behind_timer(&mut self) {
        self.track_waiting();
        let stall = self.hub.config.stall_timeout;
        let Some(b) = self.behind.as_mut() else {
            return;
        };
        let now = Instant::now();
        let mut next = now + stall;
        if b.waiting {
            let deadline = b.progress_at + stall;
            if now >= deadline {
                b.stalled = true;
                return;
            }
            next = deadline;
        }
        if let Some(at) = b.retry_at.filter(|at| *at > now) {
            next = next.min(at);
        }
        b.timer.as_mut().reset(next);
    }

    /// Replays what a lag made the client miss, room by room: `LAGGED`, then `MISSED` if the
    /// store let some of it go, then every later message as `MSG`. Live traffic is queued
    /// again meanwhile; what the replay already showed is dropped from it by the floor.
    async fn catch_up(&mut self, rooms: Vec<Arc<str>>) -> io::Result<()> {
        tracing::debug!(
            conn = self.handle.id,
            rooms = rooms.len(),
            "catching up after a lag"
        );
        // Our own messages in the gap are known by their acks: take them all first.
        self.settle_acks().await;
        let mut rooms = rooms.into_iter();
        while let Some(room) = rooms.next() {
            match self.catch_up_room(&room).await {
                Ok(true) => {}
                // Shutting down or stalled: the main loop closes the connection.
                Ok(false) => return Ok(()),
                Err(Replayed::Io(e)) => return Err(e),
                Err(Replayed::Store(e)) => {
                    tracing::warn!(conn = self.handle.id, error = %e, "catch-up after a lag deferred");
                    let mut left = vec![room];
                    left.extend(rooms);
                    self.handle.inbox.lag(left);
                    let b = self.behind();
                    let at = Instant::now() + CATCH_UP_RETRY;
                    b.retry_at = Some(at);
                    let next = at.min(b.timer.deadline());
                    b.timer.as_mut().reset(next);
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// Catches up one room. False if the session is stopping.
    async fn catch_up_room(&mut self, room: &Arc<str>) -> Result<bool, Replayed> {
        let Some(index) = self.joined.iter().position(|j| j.room == *room) else {
            // Left since: nothing to catch up.
            return Ok(true);
        };
        let store = self.hub.store.clone();
        let limit = self.hub.config.max_page.max(1);
        let mut cursor = self.joined[index].floor;
        let mut first_page = true;
        loop {
            // Read before the page: the store only ever lets go of more.
            let forgotten = store.forgotten_through(room);
            let messages = store
                .page(
                    room,
                    Page::Oldest {
                        after: cursor,
                        before: None,
                        limit,
                    },
                )
                .await?;
            if std::mem::take(&mut first_page) {
                // Only once the store answered: a failed attempt is retried, not announced.
                self.out.push(protocol::line(&[
                    "LAGGED",
                    room,
                    &cursor.to_string(),
                    "you fell behind: the messages after this id follow, then live ones; JOINED, LEFT and NICK lines were skipped",
                ]));
            }
            // Ids between the cursor and the first message kept are gone. (With an empty page,
            // only as far as the store said before the read: ids stored since arrive live.)
            let missed_to = match messages.first() {
                Some(first) => store.forgotten_through(room).min(first.id - 1),
                None => forgotten,
            };
            if missed_to > cursor {
                self.out.push(protocol::line(&[
                    "MISSED",
                    room,
                    &(cursor + 1).to_string(),
                    &missed_to.to_string(),
                    "these messages were dropped from history before you could read them",
                ]));
                cursor = missed_to;
            }
            for m in &messages {
                if !self.own.contains(room, m.id) {
                    self.out.push(protocol::message_line(
                        MessageKind::Live,
                        room,
                        m.id,
                        m.millis,
                        &m.nick,
                        &m.text,
                    ));
                }
            }
            if let Some(last) = messages.last() {
                cursor = last.id;
            }
            let joined = &mut self.joined[index];
            joined.floor = joined.floor.max(cursor);
            let floor = joined.floor;
            self.own.forget(room, Some(floor));
            // Never more than about a page waiting, however many pages or rooms there are.
            if self.out.bytes >= OUTBOX_HIGH && !self.flush_unless_stopping().await? {
                return Ok(false);
            }
            if messages.len() < limit {
                return Ok(true);
            }
        }
    }

    /// Waits for every `SAY` in flight, so replies keep the order of the commands.
    async fn settle_acks(&mut self) {
        while let Some(ack) = self.acks.next().await {
            self.answer_ack(ack);
        }
        self.acks.release_if_empty();
    }

    /// Flood control: a token bucket of `--burst` lines refilled at `--rate` a second.
    /// False when the line is over the limit.
    fn take_token(&mut self) -> bool {
        let (rate, burst) = (self.hub.config.rate, self.hub.config.burst.max(1));
        if rate == 0 {
            return true;
        }
        let now = clock_ms();
        let (last, tokens) = self.bucket;
        let elapsed = now.wrapping_sub(last);
        let refilled = if self.bucket == (0, 0.0) {
            burst as f32
        } else {
            (tokens + elapsed as f32 * rate as f32 / 1000.0).min(burst as f32)
        };
        if refilled >= 1.0 {
            self.bucket = (now, refilled - 1.0);
            true
        } else {
            self.bucket = (now, refilled);
            false
        }
    }

    /// Sends `ERR`, counting it: past `--max-errors` in a minute the connection is closed.
    fn refuse(&mut self, e: ProtocolError) {
        let max = self.hub.config.max_errors;
        if max > 0 {
            let minute = (std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs()
                / 60) as u16;
            if self.errors.0 != minute {
                self.errors = (minute, 0);
            }
            self.errors.1 = self.errors.1.saturating_add(1);
            if u32::from(self.errors.1) > max {
                self.too_many_errors = true;
                return;
            }
        }
        self.out.push(protocol::error_line(&e));
    }

    /// Handles one input frame. `Some(reason)` means: close with `BYE <reason>`.
    async fn on_frame(&mut self, frame: Frame) -> io::Result<Option<String>> {
        let mut command = self.decode(frame);
        // QUIT is never refused: leaving must always work.
        let counted = matches!(command, Ok(Some(ref c)) if !matches!(c, Command::Quit(_)));
        if counted && !self.take_token() {
            let rate = self.hub.config.rate;
            command = Err(ProtocolError::new(
                ErrorCode::RateLimited,
                format!("slow down: at most {rate} lines a second; this one was not done"),
            ));
        }
        // Replies keep command order: anything but another SAY waits for the SAYs in flight.
        if !matches!(command, Ok(Some(Command::Say(_)))) {
            self.settle_acks().await;
        }
        let command = match command {
            Ok(Some(command)) => command,
            Ok(None) => return Ok(None),
            Err(e) => {
                self.refuse(e);
                return Ok(None);
            }
        };
        let result = match command {
            Command::Say(text) => self.say(text).await,
            Command::Nick(nick) => self.nick(nick),
            Command::Join { room, replay } => self.join(room, replay).await?,
            Command::History { room, args } => self.history(room, args).await,
            Command::Part(room) => self.part(room),
            Command::Who(room) => self.who(room),
            Command::Rooms => {
                self.rooms();
                Ok(())
            }
            Command::Ping(token) => {
                let mut words = vec!["PONG"];
                words.extend(token.as_deref());
                self.out.push(protocol::line(&words));
                Ok(())
            }
            Command::Help => {
                for h in protocol::HELP {
                    self.out.push(protocol::line(&["HELP", h]));
                }
                self.out.push(protocol::line(&["OK", "HELP"]));
                Ok(())
            }
            Command::Quit(reason) => return Ok(Some(reason.unwrap_or_else(|| "goodbye".into()))),
        };
        if let Err(e) = result {
            self.refuse(e);
        }
        Ok(None)
    }

    /// Turns an input frame into a command: `Ok(None)` for a blank line.
    fn decode(&self, frame: Frame) -> Result<Option<Command>, ProtocolError> {
        let line = match frame {
            Frame::TooLong => {
                return Err(ProtocolError::new(
                    ErrorCode::LineTooLong,
                    format!(
                        "lines are at most {} bytes; the line was discarded",
                        self.hub.config.max_line
                    ),
                ))
            }
            Frame::Line(bytes) => bytes,
        };
        let text = std::str::from_utf8(&line).map_err(|_| {
            ProtocolError::new(
                ErrorCode::BadUtf8,
                "the line is not valid UTF-8; it was discarded",
            )
        })?;
        protocol::parse(text)
    }

    fn require_nick(&self) -> Result<Arc<str>, ProtocolError> {
        self.nick.clone().ok_or_else(|| {
            ProtocolError::new(ErrorCode::NoNick, "choose a name first: NICK <name>")
        })
    }

    fn current_room(&self) -> Option<&Arc<str>> {
        self.joined.last().map(|j| &j.room)
    }

    async fn say(&mut self, text: String) -> Result<(), ProtocolError> {
        let nick = self.require_nick()?;
        let Some(room) = self.current_room().cloned() else {
            return Err(ProtocolError::new(
                ErrorCode::NotInRoom,
                "join a room first: JOIN <room>",
            ));
        };
        let message = NewMessage {
            room: room.clone(),
            nick,
            text,
        };
        let ack = self.hub.writer.submit(message, self.handle.id).await;
        self.acks.push_back(ack, room);
        Ok(())
    }

    fn nick(&mut self, nick: String) -> Result<(), ProtocolError> {
        let old = self.nick.clone();
        if old.as_deref() != Some(nick.as_str()) {
            if !self.hub.nicks.claim(&nick, old.as_deref(), self.handle.id) {
                return Err(ProtocolError::new(
                    ErrorCode::NickInUse,
                    format!("{nick} is in use; choose another"),
                ));
            }
            let new: Arc<str> = nick.as_str().into();
            // In the background: a name is for live connections and must not wait on the
            // database (the first message records its sender anyway).
            self.hub.store.record_user(&new);
            if let Some(old) = &old {
                let rooms: Vec<Arc<str>> = self.joined.iter().map(|j| j.room.clone()).collect();
                self.hub.rooms.rename(&rooms, self.handle.id, old, &new);
            }
            self.nick = Some(new);
            self.handle.inbox.named();
        }
        self.out.push(protocol::line(&["OK", "NICK", &nick]));
        Ok(())
    }

    /// Joins (or re-joins) a room: subscribe first, then replay, so that replay and live
    /// traffic meet without a gap; live messages up to the replayed id are dropped later.
    async fn join(
        &mut self,
        room: String,
        replay: Replay,
    ) -> io::Result<Result<(), ProtocolError>> {
        let nick = match self.require_nick() {
            Ok(nick) => nick,
            Err(e) => return Ok(Err(e)),
        };
        let room: Arc<str> = room.into();
        if let Err(e) = self.hub.store.record_room(&room).await {
            self.out.push(store_error(&e));
            return Ok(Ok(()));
        }
        let existing = self.joined.iter().position(|j| j.room == room);
        let newly_joined = self.hub.rooms.join(&room, &nick, &self.handle);
        let (replayed, floor) = match self.replay(&room, replay).await {
            Ok(done) => done,
            Err(Replayed::Io(e)) => return Err(e),
            Err(Replayed::Store(e)) => {
                if newly_joined {
                    self.hub.rooms.leave(&room, self.handle.id);
                }
                self.out.push(store_error(&e));
                return Ok(Ok(()));
            }
        };
        // Re-joining keeps the live feed as it was: messages already queued for us still
        // arrive, even if the fresh replay showed them too.
        let live_floor = match existing {
            Some(i) => self.joined.remove(i).floor,
            None => floor,
        };
        if self.joined.is_empty() {
            // Most connections are in one room: no room for four.
            self.joined.reserve_exact(1);
        }
        self.joined.push(Joined {
            room: room.clone(),
            floor: live_floor,
        });
        self.out.push(protocol::line(&[
            "OK",
            "JOIN",
            &room,
            &replayed.to_string(),
            &floor.to_string(),
        ]));
        Ok(Ok(()))
    }

    /// Replays history for a JOIN. Returns how many lines were sent and the id up to which
    /// the client is now caught up.
    async fn replay(
        &mut self,
        room: &Arc<str>,
        replay: Replay,
    ) -> Result<(usize, MessageId), Replayed> {
        let store = self.hub.store.clone();
        let max_page = self.hub.config.max_page;
        let newest = |limit: usize| Page::Newest {
            before: None,
            limit: limit.min(max_page),
        };
        let page = match replay {
            Replay::Default => newest(self.hub.config.history_on_join),
            Replay::Last(n) => newest(n),
            Replay::None => return Ok((0, store.latest_id(room).await?)),
            Replay::Since(since) => return self.replay_since(room, since).await,
        };
        let messages = store.page(room, page).await?;
        let floor = match (messages.last(), page) {
            (Some(m), _) => m.id,
            // LAST 0 asked for nothing: start after whatever the room holds now.
            (None, Page::Newest { limit: 0, .. }) => store.latest_id(room).await?,
            // The room was empty when read. Asking for its newest id now could name a
            // message stored since, which would then be neither replayed nor delivered.
            (None, _) => 0,
        };
        self.push_stored(room, &messages);
        Ok((messages.len(), floor))
    }

    /// Replays everything after `since`, a page at a time, flushing between pages so that a
    /// long catch-up never sits in memory whole.
    async fn replay_since(
        &mut self,
        room: &Arc<str>,
        since: MessageId,
    ) -> Result<(usize, MessageId), Replayed> {
        let store = self.hub.store.clone();
        let limit = self.hub.config.max_page.max(1);
        // Read before the first page: every message stored after this has a greater id and
        // reaches us live (we subscribed before), so it is a safe place to start live from
        // if `since` turns out to be beyond the room's end.
        let newest_before = store.latest_id(room).await?;
        let mut cursor = since;
        let mut replayed = 0;
        loop {
            let page = Page::Oldest {
                after: cursor,
                before: None,
                limit,
            };
            let messages = store.page(room, page).await?;
            self.push_stored(room, &messages);
            replayed += messages.len();
            let Some(last) = messages.last() else {
                // Caught up. If `since` is beyond the room's end (a reset store), start live
                // from the real end rather than hide messages up to `since`.
                let floor = if cursor > since {
                    cursor
                } else {
                    since.min(newest_before)
                };
                return Ok((replayed, floor));
            };
            cursor = last.id;
            if messages.len() < limit || !self.flush_unless_stopping().await? {
                return Ok((replayed, cursor));
            }
        }
    }

    fn push_stored(&mut self, room: &str, messages: &[StoredMessage]) {
        for m in messages {
            self.out.push(protocol::message_line(
                MessageKind::Stored,
                room,
                m.id,
                m.millis,
                &m.nick,
                &m.text,
            ));
        }
    }

    /// Writes out everything pending. False if shutdown came first or the client stalled
    /// (the main loop then says `BYE`).
    async fn flush_unless_stopping(&mut self) -> io::Result<bool> {
        let shutdown = self.shutdown.clone();
        if !self.out.is_empty() {
            self.behind();
        }
        while !self.out.is_empty() {
            self.track_waiting();
            if shutdown.is_cancelled() || self.behind.as_ref().is_some_and(|b| b.stalled) {
                return Ok(false);
            }
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Ok(false),
                written = self.out.write_some(&mut self.socket) => {
                    written?;
                    self.wrote();
                }
                _ = behind_timer(&mut self.behind), if self.behind.is_some() => {
                    self.on_behind_timer();
                }
            }
        }
        Ok(true)
    }

    async fn history(&mut self, room: String, args: HistoryArgs) -> Result<(), ProtocolError> {
        let limit = args
            .limit
            .unwrap_or(self.hub.config.history_on_join)
            .min(self.hub.config.max_page);
        let page = match args.after {
            Some(after) => Page::Oldest {
                after,
                before: args.before,
                limit,
            },
            None => Page::Newest {
                before: args.before,
                limit,
            },
        };
        match self.hub.store.page(&room, page).await {
            Ok(messages) => {
                self.push_stored(&room, &messages);
                self.out.push(protocol::line(&[
                    "OK",
                    "HISTORY",
                    &room,
                    &messages.len().to_string(),
                ]));
            }
            Err(e) => self.out.push(store_error(&e)),
        }
        Ok(())
    }

    fn part(&mut self, room: Option<String>) -> Result<(), ProtocolError> {
        let index = match &room {
            Some(room) => self.joined.iter().position(|j| *j.room == **room),
            None => self.joined.len().checked_sub(1),
        };
        let Some(index) = index else {
            let text = match room {
                Some(room) => format!("you are not in {room}"),
                None => "you are not in any room".to_string(),
            };
            return Err(ProtocolError::new(ErrorCode::NotInRoom, text));
        };
        let gone = self.joined.remove(index);
        self.hub.rooms.leave(&gone.room, self.handle.id);
        self.own.forget(&gone.room, None);
        self.out.push(protocol::line(&["OK", "PART", &gone.room]));
        Ok(())
    }

    fn who(&mut self, room: Option<String>) -> Result<(), ProtocolError> {
        let room: Arc<str> = match room {
            Some(room) => room.into(),
            None => self.current_room().cloned().ok_or_else(|| {
                ProtocolError::new(ErrorCode::MissingArgument, "usage: WHO <room>")
            })?,
        };
        let members = self.hub.rooms.members(&room);
        for nick in &members {
            self.out.push(protocol::line(&["MEMBER", &room, nick]));
        }
        self.out.push(protocol::line(&[
            "OK",
            "WHO",
            &room,
            &members.len().to_string(),
        ]));
        Ok(())
    }

    fn rooms(&mut self) {
        let rooms = self.hub.rooms.list();
        for (room, members) in &rooms {
            self.out
                .push(protocol::line(&["ROOM", room, &members.to_string()]));
        }
        self.out
            .push(protocol::line(&["OK", "ROOMS", &rooms.len().to_string()]));
    }
}

/// Milliseconds on a process-wide clock, wrapping (only differences are used).
fn clock_ms() -> u32 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let start = START.get_or_init(std::time::Instant::now);
    (start.elapsed().as_millis() as u64 & u64::from(u32::MAX)) as u32 | 1
}

/// Acks of submitted `SAY`s, in the order they were said. Allocated only while some are
/// pending, so that a quiet connection carries none of it.
#[derive(Default)]
struct Acks(Option<Box<PendingAcks>>);

#[derive(Default)]
struct PendingAcks {
    queue: FuturesOrdered<oneshot::Receiver<AckResult>>,
    /// The room of each pending ack, in the same order.
    rooms: VecDeque<Arc<str>>,
    /// The last ack time formatted, with its milliseconds: acks of a batch share it.
    time: (i64, String),
}

type AckOutcome = Result<AckResult, oneshot::error::RecvError>;

impl Acks {
    fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |p| p.queue.len())
    }

    /// `millis` formatted, reusing the last formatting when the time is the same.
    fn time(&mut self, millis: i64) -> &str {
        let pending = self.0.get_or_insert_with(Default::default);
        if pending.time.0 != millis || pending.time.1.is_empty() {
            pending.time = (millis, protocol::format_time(millis));
        }
        &pending.time.1
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn push_back(&mut self, ack: oneshot::Receiver<AckResult>, room: Arc<str>) {
        let pending = self.0.get_or_insert_with(Default::default);
        pending.queue.push_back(ack);
        pending.rooms.push_back(room);
    }

    /// The next ack in order, with its room; `None` when none are pending.
    async fn next(&mut self) -> Option<(AckOutcome, Arc<str>)> {
        let pending = self.0.as_mut()?;
        let outcome = pending.queue.next().await?;
        let room = pending.rooms.pop_front().expect("a room for every ack");
        Some((outcome, room))
    }

    fn release_if_empty(&mut self) {
        if self.is_empty() {
            self.0 = None;
        }
    }
}

/// Why a replay stopped early.
enum Replayed {
    Store(StoreError),
    Io(io::Error),
}

impl From<StoreError> for Replayed {
    fn from(e: StoreError) -> Self {
        Replayed::Store(e)
    }
}

impl From<io::Error> for Replayed {
    fn from(e: io::Error) -> Self {
        Replayed::Io(e)
    }
}

fn store_error(e: &StoreError) -> Bytes {
    protocol::error_line(&ProtocolError::new(
        ErrorCode::StoreUnavailable,
        e.to_string(),
    ))
}

/// Lines waiting to be written, as shared buffers.
#[derive(Default)]
struct Outbox {
    queue: VecDeque<Bytes>,
    /// Bytes not yet written.
    bytes: usize,
    /// True once the front buffer is partly written.
    started: bool,
}

impl Outbox {
    fn push(&mut self, line: Bytes) {
        self.bytes += line.len();
        self.queue.push_back(line);
    }

    fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Drops everything not yet begun, keeping a partly written line so the stream stays
    /// line-aligned (used before `BYE too slow`).
    fn drop_unstarted(&mut self) {
        let keep = usize::from(self.started);
        self.queue.truncate(keep);
        self.bytes = self.queue.iter().map(Bytes::len).sum();
    }

    /// One vectored write of as many queued buffers as fit. Cancel-safe: the queue only
    /// advances after a write returns. The iovec array lives on the stack of each poll, not
    /// in the future, so a session waiting to write stays small.
    async fn write_some(&mut self, socket: &mut OwnedWriteHalf) -> io::Result<()> {
        let written = std::future::poll_fn(|cx| {
            let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
            let mut count = 0;
            for (slot, buf) in slices.iter_mut().zip(&self.queue) {
                *slot = IoSlice::new(buf);
                count += 1;
            }
            std::pin::Pin::new(&mut *socket).poll_write_vectored(cx, &slices[..count])
        })
        .await?;
        if written == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        self.advance(written);
        Ok(())
    }

    fn advance(&mut self, mut written: usize) {
        self.bytes -= written;
        if written > 0 && self.bytes == 0 {
            // All sent: give the queue's memory back (idle connections keep none).
            self.queue = VecDeque::new();
            self.started = false;
            return;
        }
        while written > 0 {
            let front = self.queue.front_mut().expect("wrote more than queued");
            if written >= front.len() {
                written -= front.len();
                self.queue.pop_front();
                self.started = false;
            } else {
                front.advance(written);
                self.started = true;
                written = 0;
            }
        }
    }

    async fn flush(&mut self, socket: &mut OwnedWriteHalf) -> io::Result<()> {
        while !self.is_empty() {
            self.write_some(socket).await?;
        }
        Ok(())
    }
}
