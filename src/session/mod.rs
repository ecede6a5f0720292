//! One connection's task: read lines, do what they say, write replies and room traffic.
//!
//! [`run`] drives a [`Session`] through [`Session::serve`], a loop that waits on whichever
//! comes first: shutdown, the socket taking bytes, the stall timer, acks of its `SAY`s, room
//! traffic in its mailbox, or the next input line. Then it closes: `BYE <reason>` after
//! answering everything it read. The rest of the session lives in:
//! - [`commands`]: one handler per command;
//! - [`account`]: names that need a password (`NICK` with one, `REGISTER`, `PASSWORD`);
//! - [`replay`]: history for `JOIN` and `HISTORY`, and the catch-up after a lag;
//! - [`listing`]: `ROOMS` and `WHO`, a slice at a time;
//! - [`private`]: members-only rooms (`PRIVATE`, `INVITE`, ...) and who may enter one;
//! - [`joined`]: the rooms it is in and what it has shown of each (no message twice, never
//!   the client's own);
//! - [`acks`]: `SAY`s in flight, answered in the order they were said;
//! - [`store_call`]: store calls that give way to shutdown, and their `ERR`s;
//! - [`stall`]: a client that takes no bytes (closed, `BYE too slow`), and catch-up retries.
//!
//! Input is only read while little output waits: a client that does not read its replies
//! stops being read, rather than making the server buffer without bound. A client that reads
//! too slowly for its rooms lags (see [`crate::mailbox`]): once it has taken what was queued,
//! the session catches the gap up from the store and goes live again.

mod account;
mod acks;
mod close;
mod commands;
mod flood;
mod joined;
mod listing;
mod private;
mod replay;
mod stall;
mod store_call;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use std::pin::Pin;

use bytes::Bytes;
use futures::FutureExt;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;

use crate::admission::Ticket;
use crate::budget::{ErrorBudget, Millis, TokenBucket};
use crate::connection::{self, Frame, LineReader, LineWriter};
use crate::hub::Hub;
use crate::mailbox::{ConnHandle, Delivery, Eviction, Mailbox};
use crate::protocol::{self, ErrorCode, ProtocolError};
use crate::store::StoreError;
use crate::transport::Transport;

use acks::Acks;
use close::End;
use flood::flood_timer;
use joined::{JoinedRooms, Show};
use replay::ForwardReplay;
use stall::StallWatch;

/// Pending output above which the session stops reading input and taking room traffic.
const OUTPUT_HIGH: usize = 64 * 1024;
/// Most `SAY`s in flight to the writer for one connection (pipelined clients).
const MAX_IN_FLIGHT: usize = 256;
/// Most input lines handled in one turn of the loop before it looks at its other work
/// (writing, acks, room traffic, shutdown).
const FRAMES_PER_TURN: usize = 64;

/// Serves one accepted connection (plain, or TLS after its handshake) until it closes.
/// `place` is its place in the server's connection count, given back when the session ends.
///
/// Not an `async fn`: the session is made before the future, so that the future holds the
/// session alone and not also the arguments it was made from (an async fn keeps its
/// arguments' slots for its whole life), which would make every connection's task larger.
pub fn run(
    hub: Arc<Hub>,
    transport: Transport,
    peer: SocketAddr,
    accepted: Instant,
    shutdown: CancellationToken,
    place: Ticket,
) -> impl std::future::Future<Output = ()> + Send {
    let open = crate::telemetry::connection_opened(transport.kind());
    let mut session = Session::new(hub, transport, shutdown);
    // No timer of its own (thousands of pending timers cost memory): the server's login
    // watch marks the mailbox if no name came in time, counting from accept.
    session
        .hub
        .logins
        .watch_from(&session.conn.mailbox, accepted);
    async move {
        tracing::debug!(%peer, conn = session.conn.id, "connected");
        let end = session.serve().await;
        // Boxed, as the command handlers: closing is rare, and its future would otherwise
        // make every idle connection's larger.
        Box::pin(session.close(&end)).await;
        session.leave_everything();
        session.conn.mailbox.close();
        if let Some(why) = end.forced() {
            crate::telemetry::forced_close(why);
        }
        end.log(peer);
        drop(place);
        drop(open);
    }
}

struct Session {
    hub: Arc<Hub>,
    /// This connection as the rooms see it: its id and mailbox.
    conn: ConnHandle,
    shutdown: CancellationToken,
    reader: LineReader,
    writer: LineWriter,
    nick: Option<Arc<str>>,
    /// The name is registered and this connection logged in to it (its password, or
    /// `REGISTER`).
    registered: bool,
    joined: JoinedRooms,
    acks: Acks,
    flood: TokenBucket,
    /// Set while the connection is over its flood budget: input is not read until it fires.
    flood_wait: Option<Pin<Box<Sleep>>>,
    /// Made at the first refusal: most connections never err.
    errors: Option<Box<ErrorBudget>>,
    /// Set when the connection has erred too often: close with `BYE` at the next chance.
    too_many_errors: bool,
    /// Present only while output waits on the socket or the mailbox lags.
    stall: Option<Box<StallWatch>>,
    /// A long reply in progress: a `JOIN ... SINCE` replay, a catch-up, or a listing.
    forward: Option<Box<ForwardReplay>>,
}

impl Session {
    fn new(hub: Arc<Hub>, transport: Transport, shutdown: CancellationToken) -> Session {
        let (reader, writer) = connection::split(transport, hub.config.max_line);
        let conn = ConnHandle {
            id: hub.next_conn_id(),
            mailbox: Arc::new(Mailbox::new(hub.config.outbound_limit)),
        };
        hub.mailboxes.register(&conn);
        let flood = match &hub.flood_limit {
            Some(limit) => TokenBucket::full(limit, Millis::now()),
            None => TokenBucket::default(),
        };
        Session {
            hub,
            conn,
            shutdown,
            reader,
            writer,
            nick: None,
            registered: false,
            joined: JoinedRooms::default(),
            acks: Acks::default(),
            flood,
            flood_wait: None,
            errors: None,
            too_many_errors: false,
            stall: None,
            forward: None,
        }
    }

    /// The loop: returns why the session ends. Shutdown is seen at the top of each turn: the
    /// server cancels the token, then wakes every mailbox.
    async fn serve(&mut self) -> End {
        self.writer.push(protocol::hello(
            env!("CARGO_PKG_VERSION"),
            self.hub.store.epoch(),
        ));
        // One signal wakes the session for room traffic, the login watch and shutdown (the
        // server notifies every mailbox after cancelling the token); it needs no waiter node.
        let mailbox = self.conn.mailbox.clone();
        loop {
            if self.shutdown.is_cancelled() {
                return End::Shutdown;
            }
            if let Some(end) = self.forced_end() {
                return end;
            }
            let room_for_output = self.writer.pending() < OUTPUT_HIGH;
            if self.forward.is_some() {
                // A replay in progress goes on while the client takes what it is sent.
                if room_for_output && !self.shutdown.is_cancelled() {
                    Box::pin(self.forward_next_page()).await;
                    continue;
                }
            } else {
                if room_for_output {
                    self.take_room_traffic();
                }
                // The socket took everything queued before the gap: catch it up.
                if self.catch_up_due() {
                    if let Some((rooms, quietly)) = mailbox.resume() {
                        Box::pin(self.start_catch_up(rooms, quietly)).await;
                        continue;
                    }
                }
            }
            self.watch_or_forget_stall();
            let busy = self.forward.is_some();
            let can_read = !busy
                && self.writer.pending() < OUTPUT_HIGH
                && self.acks.len() < MAX_IN_FLIGHT
                && self.within_flood_budget();
            // The write comes first in this biased select: if another branch wins while output
            // waits, the socket is full, and a stall may begin.
            let had_output = self.writer.has_pending();
            // While it waits with nothing to write, the flusher writes its room traffic to its
            // socket; it takes the socket back first thing when it wakes, whatever woke it.
            let armed = !had_output && !busy && self.arm_express();
            let event = tokio::select! {
                biased;
                written = self.writer.write_some(), if had_output => Event::Written(written),
                _ = stall::timer(&mut self.stall), if self.stall.is_some() => Event::StallTimer,
                Some(ack) = self.acks.next(), if !self.acks.is_empty() => Event::Ack(ack),
                // Over its budget, the connection is not read until a token is back.
                _ = flood_timer(&mut self.flood_wait), if self.flood_wait.is_some() => {
                    Event::FloodTimer
                }
                // Handled at the top of the loop. Shutdown comes this way too, so it is waited
                // for even while a replay is busy.
                _ = mailbox.ready.wait() => Event::Woken,
                frame = self.reader.next(), if can_read => Event::Input(frame),
            };
            if armed {
                self.disarm_express();
            }
            let mut wrote = false;
            match event {
                Event::Written(written) => {
                    if let Err(e) = written {
                        return End::Io(e);
                    }
                    wrote = true;
                    self.wrote();
                }
                Event::StallTimer => self.on_stall_timer(),
                Event::Ack(ack) => self.on_acks(ack),
                Event::FloodTimer => self.flood_wait = None,
                Event::Woken => {}
                Event::Input(frame) => {
                    if let Some(end) = self.on_input(frame).await {
                        return end;
                    }
                }
            }
            if had_output && !wrote {
                self.watch_stall();
            }
        }
    }

    /// Arms the mailbox for express delivery ([`crate::express`]) if the connection is a
    /// plain socket in some room; true if it did.
    fn arm_express(&self) -> bool {
        if self.joined.len() == 0 || self.shutdown.is_cancelled() {
            return false;
        }
        let Some(socket) = self.writer.plain_socket() else {
            return false;
        };
        self.conn
            .mailbox
            .arm(socket, self.conn.id, self.joined.shown())
    }

    /// Takes the socket back from express delivery: the rooms it showed meanwhile count as
    /// shown, and what the socket did not take yet is written first.
    fn disarm_express(&mut self) {
        let Session {
            conn,
            joined,
            writer,
            ..
        } = self;
        conn.mailbox.disarm(
            |room, id| joined.shown_through(room, id),
            |rest, begun| writer.push_rest(rest, begun),
        );
    }

    /// A reason to close that came from outside the client's lines.
    fn forced_end(&self) -> Option<End> {
        if let Some(why) = self.conn.mailbox.eviction() {
            Some(match why {
                Eviction::LoginTimeout => End::LoginTimeout,
                Eviction::NameRegistered => End::NameRegistered,
                Eviction::AccountChanged => End::AccountChanged,
                Eviction::NameTaken => End::NameTaken,
            })
        } else if self.stall.as_ref().is_some_and(|s| s.is_stalled()) {
            Some(End::TooSlow)
        } else if self.too_many_errors {
            Some(End::TooManyErrors)
        } else {
            None
        }
    }

    /// Handles the line just read and those already buffered behind it, up to a turn's
    /// worth (a pipelining client sends many per packet). `Some` when the session ends.
    async fn on_input(&mut self, first: Option<io::Result<Frame>>) -> Option<End> {
        let mut frame = first;
        for turn in 1..=FRAMES_PER_TURN {
            let quit = match frame {
                // Half-closed by the client: answer what it sent, then close.
                None => return Some(End::Eof),
                Some(Err(e)) => return Some(End::on_read_error(e)),
                // Boxed: the handlers' futures are large and rarely pending, and keeping them
                // out of the session's own future keeps idle connections small.
                Some(Ok(frame)) => {
                    self.spend_flood_token();
                    Box::pin(self.on_frame(frame)).await
                }
            };
            match quit {
                Ok(Some(reason)) => return Some(End::Quit(reason)),
                Err(e) => return Some(End::Io(e)),
                Ok(None) if self.too_many_errors => return Some(End::TooManyErrors),
                Ok(None) => {}
            }
            if self.forward.is_some() {
                // A replay began: nothing else until it is done.
                break;
            }
            // Room traffic keeps flowing between the lines of a long turn.
            if self.writer.pending() < OUTPUT_HIGH {
                self.take_room_traffic();
            }
            let full = self.writer.pending() >= OUTPUT_HIGH || self.acks.len() >= MAX_IN_FLIGHT;
            // At shutdown the lines still buffered are refused, not done.
            if full
                || turn == FRAMES_PER_TURN
                || self.shutdown.is_cancelled()
                || !self.within_flood_budget()
            {
                break;
            }
            match self.reader.next().now_or_never() {
                Some(next) => frame = next,
                None => break,
            }
        }
        None
    }

    /// Moves room traffic from the mailbox to the socket's queue while it has room.
    fn take_room_traffic(&mut self) {
        let mailbox = self.conn.mailbox.clone();
        mailbox.take_while(|item| {
            self.on_room_traffic(item);
            self.writer.pending() < OUTPUT_HIGH
        });
    }

    fn on_room_traffic(&mut self, item: Delivery) {
        match item {
            Delivery::Presence { room, line } => {
                // Lines queued before a PART are not for us any more.
                if self.joined.contains(&room) {
                    self.writer.push(line);
                }
            }
            Delivery::Messages { batch, .. } => match self.joined.take_live(&batch, self.conn.id) {
                Show::Nothing => {}
                Show::All => self.writer.push_live(&batch, 0..batch.bytes.len()),
                Show::Ranges(ranges) => {
                    for range in ranges {
                        self.writer.push_live(&batch, range);
                    }
                }
            },
        }
    }

    /// True when a lagging connection may be caught up now: its socket took everything
    /// queued before the gap, and no refused catch-up waits for its retry.
    fn catch_up_due(&self) -> bool {
        self.conn.mailbox.is_lagging()
            && !self.writer.has_pending()
            && !self.shutdown.is_cancelled()
            && self
                .stall
                .as_ref()
                .is_none_or(|s| s.catch_up_due(Instant::now()))
    }
}

/// What woke the session's loop.
enum Event {
    Written(io::Result<()>),
    StallTimer,
    Ack((acks::AckOutcome, Arc<str>)),
    FloodTimer,
    Woken,
    Input(Option<io::Result<Frame>>),
}

impl Drop for Session {
    fn drop(&mut self) {
        self.hub.mailboxes.unregister(self.conn.id);
    }
}

/// `ERR STORE_UNAVAILABLE` (nothing was done) or `ERR OUTCOME_UNKNOWN` (a `SAY` that may or
/// may not be stored), with the store's reason.
fn store_error(e: &StoreError) -> Bytes {
    protocol::error_line(&store_refusal(e))
}

fn store_refusal(e: &StoreError) -> ProtocolError {
    let code = match e {
        StoreError::Unavailable(_) => ErrorCode::StoreUnavailable,
        StoreError::OutcomeUnknown(_) => ErrorCode::OutcomeUnknown,
    };
    ProtocolError::new(code, e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every connection is one task holding this future; idle connections cost mostly this.
    /// It was 1,016 bytes (in a test build) before the reader polled readiness itself, `run`
    /// stopped keeping its arguments, and room traffic and shutdown came through one signal
    /// that needs no waiter node; it is 584 now (576 on an older compiler). tokio rounds a
    /// task up to a multiple of 128 bytes, so a few bytes more can cost 128 a connection.
    #[tokio::test]
    async fn an_idle_connection_task_stays_small() {
        let store: Arc<dyn crate::store::HistoryStore> =
            Arc::new(crate::store::MemoryStore::new(10));
        let accounts = Arc::new(crate::accounts::MemoryAccounts::default());
        let (hub, _) = Hub::start(crate::Config::default(), store, accounts);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let place = crate::admission::Admission::new(0, 0, false)
            .admit(addr.ip())
            .ok()
            .unwrap();
        let task = run(
            hub,
            Transport::Tcp(stream),
            addr,
            Instant::now(),
            CancellationToken::new(),
            place,
        );
        let size = std::mem::size_of_val(&task);
        assert!(size <= 640, "a connection's future is {size} bytes");
    }
}
