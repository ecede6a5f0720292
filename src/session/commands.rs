//! One handler per command, and what every line goes through first: decoding, the error
//! budget, and the order of replies (anything but a `SAY` or a `PING` waits for the `SAY`s
//! before it). Flood control is not here: a connection over its rate is simply not read
//! (see `Session::within_flood_budget`).

use std::io;
use std::sync::Arc;

use crate::budget::{ErrorBudget, Millis};
use crate::cluster::ledger::Slot;
use crate::connection::{Frame, NotALine};
use crate::protocol::{self, Command, ErrorCode, ProtocolError, RoomsArgs};
use crate::rooms::RoomsFull;
use crate::store::NewMessage;

use super::listing::Listing;
use super::Session;

impl Session {
    /// Handles one input frame. `Some(reason)` means: close with `BYE <reason>`.
    pub(super) async fn on_frame(&mut self, frame: Frame) -> io::Result<Option<String>> {
        if let Frame::Ping(payload) = &frame {
            // The WebSocket's own ping, answered at once: it measures the connection.
            self.writer.push_pong(payload);
            return Ok(None);
        }
        if let Frame::Skipped = frame {
            // Input without a reply (a fragment, a pong): nothing to keep in order.
            return Ok(None);
        }
        let command = self.decode(frame);
        // Replies keep command order: anything but another SAY (or a PING, which measures the
        // server, never its store) waits for the SAYs in flight, at most the store's deadline.
        if !matches!(command, Ok(Some(Command::Say(_) | Command::Ping(_)))) {
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
        let done = match command {
            Command::Say(text) => self.say(text).await,
            Command::Nick { name, password } => self.nick(name, password).await,
            Command::Register(password) => self.register(password).await,
            Command::Password { old, new } => self.change_password(old, new).await,
            Command::Private(room) => self.make_private(room).await,
            Command::Public(room) => self.make_public(room).await,
            Command::Invite { room, name } => self.invite(room, name).await,
            Command::Uninvite { room, name } => self.uninvite(room, name).await,
            Command::Join { room, replay } => self.join(room, replay).await,
            Command::History { room, args } => self.history(room, args).await,
            Command::Part(room) => self.part(room),
            Command::Who(room) => self.who(room).await,
            Command::Rooms(args) => self.rooms(args).await,
            Command::Ping(token) => self.ping(token),
            Command::Help => self.help(),
            Command::Quit(reason) => return Ok(Some(reason.unwrap_or_else(|| "goodbye".into()))),
        };
        if let Err(e) = done {
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
            Frame::Skipped => return Ok(None),
            Frame::NotALine(why) => {
                return Err(ProtocolError::new(
                    ErrorCode::BadFrame,
                    match why {
                        NotALine::Binary => {
                            "lines travel in text frames; the binary frame was discarded"
                        }
                        NotALine::LineBreak => {
                            "one frame is one line, without line breaks inside; the frame \
                             was discarded"
                        }
                    },
                ))
            }
            Frame::Line(bytes) => bytes,
            Frame::Ping(_) => return Ok(None),
        };
        let text = std::str::from_utf8(&line).map_err(|_| {
            ProtocolError::new(
                ErrorCode::BadUtf8,
                "the line is not valid UTF-8; it was discarded",
            )
        })?;
        protocol::parse(text)
    }

    /// Sends `ERR`, counting it: past its error budget (`--max-errors`, refilled
    /// at that many a minute) the connection is closed. The store's own failures are not the
    /// client's and do not count: a client retrying through an outage is not closed for it.
    fn refuse(&mut self, e: ProtocolError) {
        let store_failed = matches!(
            e.code,
            ErrorCode::StoreUnavailable | ErrorCode::OutcomeUnknown
        );
        if let (Some(limit), false) = (&self.hub.error_limit, store_failed) {
            let now = Millis::now();
            let budget = self
                .errors
                .get_or_insert_with(|| Box::new(ErrorBudget::new(limit, now)));
            if !budget.charge(limit, now) {
                self.too_many_errors = true;
                return;
            }
        }
        self.writer.push(protocol::error_line(&e));
    }

    pub(super) fn require_nick(&self) -> Result<Arc<str>, ProtocolError> {
        self.nick.clone().ok_or_else(|| {
            ProtocolError::new(ErrorCode::NoNick, "choose a name first: NICK <name>")
        })
    }

    /// `SAY <text>`: handed to the writer; `OK SAY` comes when it is stored (see `on_acks`).
    async fn say(&mut self, text: String) -> Result<(), ProtocolError> {
        let nick = self.require_nick()?;
        self.require_account()?;
        let Some(room) = self.joined.current().cloned() else {
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
        let ack = self.hub.writer.submit(message, self.conn.id).await;
        self.acks.push_back(ack, room);
        Ok(())
    }

    /// `JOIN <room> [bound]`: subscribe, then replay (see the `replay` module).
    async fn join(&mut self, room: String, bound: protocol::Replay) -> Result<(), ProtocolError> {
        let nick = self.require_nick()?;
        self.require_account()?;
        let room: Arc<str> = room.into();
        self.check_entry(&room).await?;
        self.check_room_limits(&room)?;
        // A room already joined is in the store already, and a re-JOIN changes no membership.
        if !self.joined.contains(&room) {
            let store = self.hub.store.clone();
            if let Err(e) = self.until_shutdown(store.record_room(&room)).await {
                self.writer.push(e.line());
                return Ok(());
            }
        }
        let newly_joined = self
            .hub
            .rooms
            .join_within_limit(&room, &nick, &self.conn)
            .map_err(|RoomsFull| rooms_full(self.hub.config.max_rooms))?;
        if let (Some(cluster), true) = (self.hub.cluster.clone(), newly_joined) {
            // Written before the replay, so that other servers' members see JOINED before
            // anything this connection says there.
            let slot = Slot::Room(room.clone());
            let _ = self
                .until_shutdown(async {
                    cluster.set_and_wait(self.conn.id, slot, Some(nick)).await;
                    Ok(())
                })
                .await;
        }
        self.replay_on_join(room, bound, newly_joined).await;
        Ok(())
    }

    /// What one connection, one address and the server may make: a room not joined yet must
    /// fit in `--max-rooms-per-connection`, and a room that does not exist yet in
    /// `--max-rooms` and the address's `--new-rooms-per-minute`.
    fn check_room_limits(&self, room: &str) -> Result<(), ProtocolError> {
        let config = &self.hub.config;
        if self.joined.contains(room) {
            return Ok(());
        }
        let most = config.max_rooms_per_connection;
        if most > 0 && self.joined.len() >= most {
            return Err(ProtocolError::new(
                ErrorCode::TooManyRooms,
                format!(
                    "you are in {most} rooms, the most one connection may be in; PART one first"
                ),
            ));
        }
        if self.hub.rooms.exists(room) {
            return Ok(());
        }
        if config.max_rooms > 0 && self.hub.rooms.len() >= config.max_rooms {
            return Err(rooms_full(config.max_rooms));
        }
        let may_make = match self.reader.peer_ip() {
            Some(ip) => self.hub.new_rooms.try_take(ip, Millis::now()),
            None => true,
        };
        if !may_make {
            return Err(ProtocolError::new(
                ErrorCode::RoomRateLimited,
                format!(
                    "your address made {} new rooms in the last minute; join an existing room or wait",
                    config.new_rooms_per_minute
                ),
            ));
        }
        Ok(())
    }

    /// `PART [room]`: the named room, or the current one.
    fn part(&mut self, room: Option<String>) -> Result<(), ProtocolError> {
        let Some(gone) = self.joined.leave(room.as_deref()) else {
            let text = match room {
                Some(room) => format!("you are not in {room}"),
                None => "you are not in any room".to_string(),
            };
            return Err(ProtocolError::new(ErrorCode::NotInRoom, text));
        };
        self.hub.rooms.leave(&gone, self.conn.id);
        if let Some(cluster) = &self.hub.cluster {
            cluster.set(self.conn.id, Slot::Room(gone.clone()), None);
        }
        self.writer.push(protocol::line(&["OK", "PART", &gone]));
        Ok(())
    }

    /// `WHO [room]`: `MEMBER` lines, then `OK WHO <room> <count>`, listed as the client
    /// reads (see the `listing` module).
    async fn who(&mut self, room: Option<String>) -> Result<(), ProtocolError> {
        self.require_account()?;
        let room: Arc<str> = match room {
            Some(room) => room.into(),
            None => self.joined.current().cloned().ok_or_else(|| {
                ProtocolError::new(ErrorCode::MissingArgument, "usage: WHO <room>")
            })?,
        };
        self.check_entry(&room).await?;
        self.start_listing(Listing::members(room)).await
    }

    /// `ROOMS [AFTER <room>] [LIMIT <n>]`: `ROOM` lines, then `OK ROOMS <count>`, listed as
    /// the client reads.
    async fn rooms(&mut self, args: RoomsArgs) -> Result<(), ProtocolError> {
        self.require_account()?;
        self.start_listing(Listing::rooms(args.after, args.limit))
            .await
    }

    /// `PING [token]`: `PONG [token]`.
    fn ping(&mut self, token: Option<String>) -> Result<(), ProtocolError> {
        let mut words = vec!["PONG"];
        words.extend(token.as_deref());
        self.writer.push(protocol::line(&words));
        Ok(())
    }

    /// `HELP`: a `HELP` line per command, then `OK HELP`.
    fn help(&mut self) -> Result<(), ProtocolError> {
        for h in protocol::HELP {
            self.writer.push(protocol::line(&["HELP", h]));
        }
        self.writer.push(protocol::line(&["OK", "HELP"]));
        Ok(())
    }
}

/// `ERR ROOMS_FULL`: the server holds `--max-rooms` rooms.
fn rooms_full(most: usize) -> ProtocolError {
    ProtocolError::new(
        ErrorCode::RoomsFull,
        format!("the server holds {most} rooms, the most it takes; join an existing room"),
    )
}
