//! Matching the server's lines to what was sent: replies to commands (first in, first out;
//! `PONG` by kind), our own messages, and duplicates a catch-up would show twice.

use anyhow::{bail, Result};

use super::{Pending, Room, State, Update};
use crate::proto::{self, Event, Message};
use crate::secret::Secret;

/// The password word of a line we send, if it is one.
fn password(word: Option<&str>) -> Option<Secret> {
    Secret::new(word?.to_string()).ok()
}

impl State {
    pub(super) fn kind_of(&self, line: &str) -> Pending {
        let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
        match word.to_ascii_uppercase().as_str() {
            "JOIN" => Pending::Join {
                since: rest
                    .split_once(' ')
                    .and_then(|(_, b)| b.to_ascii_uppercase().strip_prefix("SINCE ")?.parse().ok()),
                rejoin: false,
            },
            "HISTORY" => Pending::History,
            "SAY" => Pending::Say {
                room: self.rooms.last().map(|r| r.name.clone()),
                text: rest.to_string(),
            },
            "QUIT" => Pending::Quit,
            "PING" => Pending::Ping,
            "NICK" => Pending::Nick(password(rest.split(' ').nth(1))),
            "REGISTER" => match password(Some(rest)) {
                Some(new) => Pending::NewPassword(new),
                None => Pending::Other,
            },
            "PASSWORD" => match password(rest.split(' ').nth(1)) {
                Some(new) => Pending::NewPassword(new),
                None => Pending::Other,
            },
            _ => Pending::Other,
        }
    }

    /// Notes a room being joined, so that a reconnect before its `OK JOIN` still joins it.
    pub(super) fn want(&mut self, room: &str, bound: &str) {
        if !self.rooms.iter().any(|r| r.name == room) {
            self.rooms.push(Room {
                name: room.to_string(),
                last_id: 0,
                confirmed: false,
                bound: bound.to_string(),
            });
        }
    }

    pub(super) fn room_mut(&mut self, name: &str) -> Option<&mut Room> {
        self.rooms.iter_mut().find(|r| r.name == name)
    }

    /// Handles one server line. Returns true for `BYE`, and an error when the connection
    /// should be made again (a room could not be re-joined).
    pub(super) fn on_line(&mut self, line: &str) -> Result<bool> {
        let event = proto::parse(line);
        match &event {
            Event::Message { live, message } => {
                let from_history = !live && matches!(self.pending.front(), Some(Pending::History));
                if from_history {
                    return Ok(self.queue_false(Update::Page(message.clone())));
                }
                let own = self.own.remove(&(message.room.clone(), message.id));
                let Some(room) = self.room_mut(&message.room) else {
                    // A replay for a JOIN whose OK has not come yet: the room is not in our
                    // list until then, so take it as new.
                    return Ok(self.queue_false(Update::Event(event)));
                };
                if message.id <= room.last_id || own {
                    return Ok(false);
                }
                room.last_id = message.id;
                let (name, last) = (message.room.clone(), message.id);
                if !self.own.is_empty() {
                    self.own.retain(|(r, id)| *r != name || *id > last);
                }
            }
            Event::Ok { command, rest } => {
                let pending = self.pending.pop_front();
                match (command.as_str(), pending) {
                    ("JOIN", pending) => {
                        let name = rest.first().cloned().unwrap_or_default();
                        let caught_up: u64 = rest.get(2).and_then(|n| n.parse().ok()).unwrap_or(0);
                        let (since, rejoin) = match pending {
                            Some(Pending::Join { since, rejoin }) => (since, rejoin),
                            _ => (None, false),
                        };
                        if rejoin {
                            let replayed = rest.get(1).and_then(|n| n.parse().ok()).unwrap_or(0);
                            self.rejoined(replayed);
                        }
                        let known = self.rooms.iter().position(|r| r.name == name);
                        let bound = known
                            .map(|i| self.rooms[i].bound.clone())
                            .unwrap_or_default();
                        let last_id = if since.is_some_and(|s| caught_up < s) {
                            // The server's history ends before what we saw: start over there.
                            self.own.retain(|(r, _)| *r != name);
                            self.queue(Update::HistoryReset {
                                room: name.clone(),
                                last_id: caught_up,
                            });
                            if let Some(i) = known {
                                self.rooms.remove(i);
                            }
                            caught_up
                        } else {
                            match known {
                                Some(i) => self.rooms.remove(i).last_id.max(caught_up),
                                None => caught_up,
                            }
                        };
                        self.rooms.push(Room {
                            name,
                            last_id,
                            confirmed: true,
                            bound,
                        });
                    }
                    ("PART", _) => {
                        if let Some(name) = rest.first() {
                            self.rooms.retain(|r| &r.name != name);
                        }
                    }
                    ("NICK", pending) => {
                        if let Some(nick) = rest.first() {
                            self.settings.nick = Some(nick.clone());
                        }
                        // The new name's password, or none for a guest name: the old name's
                        // password is never sent for another name.
                        if let Some(Pending::Nick(password)) = pending {
                            self.settings.password = password;
                        }
                    }
                    ("REGISTER" | "PASSWORD", Some(Pending::NewPassword(new))) => {
                        self.settings.password = Some(new);
                    }
                    ("SAY", Some(Pending::Say { room, text })) => {
                        let id: u64 = rest.first().and_then(|n| n.parse().ok()).unwrap_or(0);
                        let time = rest.get(1).cloned().unwrap_or_default();
                        let room = room.unwrap_or_default();
                        // Kept so that a catch-up replay does not show it a second time.
                        if self.room_mut(&room).is_some_and(|r| id > r.last_id) {
                            self.own.insert((room.clone(), id));
                        }
                        return Ok(self.queue_false(Update::Said(Message {
                            room,
                            id,
                            time,
                            nick: self.settings.nick.clone().unwrap_or_default(),
                            text,
                        })));
                    }
                    _ => {}
                }
            }
            Event::Err { code, text } => match self.pending.pop_front() {
                Some(Pending::Join { rejoin: true, .. }) => {
                    // The server undid the join (its store may be down): connect again
                    // rather than sit in a room we are not in.
                    bail!("could not re-join a room: {code} {text}");
                }
                Some(Pending::Join { rejoin: false, .. }) => {
                    // A first join refused: the room is not ours (a confirmed one stays).
                    self.rooms.retain(|r| r.confirmed);
                }
                _ => {}
            },
            Event::Pong(_) => {
                // PONG may overtake replies still owed for SAYs: it answers the oldest PING.
                if let Some(i) = self.pending.iter().position(|p| matches!(p, Pending::Ping)) {
                    self.pending.remove(i);
                }
            }
            Event::Bye(reason) => {
                self.bye = Some(reason.clone());
                self.queue(Update::Event(event));
                return Ok(true);
            }
            _ => {}
        }
        self.queue(Update::Event(event));
        Ok(false)
    }

    /// One re-join answered; after the last, the user learns it is all caught up.
    pub(super) fn rejoined(&mut self, replayed: u64) {
        if let Some((left, rooms, messages)) = &mut self.rejoins {
            *left -= 1;
            *messages += replayed;
            if *left == 0 {
                let (rooms, messages) = (*rooms, *messages);
                self.rejoins = None;
                self.queue(Update::CaughtUp { rooms, messages });
            }
        }
    }

    pub(super) fn queue_false(&mut self, update: Update) -> bool {
        self.queue(update);
        false
    }
}
