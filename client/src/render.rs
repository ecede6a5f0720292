//! How messages look: plain text for people (local time, coloured nicks on a terminal) or
//! JSON lines for programs.

use chrono::{DateTime, Local};

use crate::proto::Message;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// `[14:02] <alice> hello`, for people.
    Plain,
    /// One JSON object per line: room, id, time, nick, text.
    Json,
}

/// Renders messages and notices.
#[derive(Debug, Clone, Copy)]
pub struct Style {
    pub format: Format,
    pub colour: bool,
    /// Show the room with each message (when in several rooms).
    pub rooms: bool,
}

const COLOURS: [u8; 6] = [31, 32, 33, 34, 35, 36];

/// A nick's colour: the same nick always gets the same one.
fn colour_of(nick: &str) -> u8 {
    let hash = nick.bytes().fold(2166136261u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(16777619)
    });
    COLOURS[hash as usize % COLOURS.len()]
}

/// `HH:MM` in local time (with the date when it is not today).
pub fn local_time(rfc3339: &str) -> String {
    match DateTime::parse_from_rfc3339(rfc3339) {
        Ok(t) => {
            let t = t.with_timezone(&Local);
            if t.date_naive() == Local::now().date_naive() {
                t.format("%H:%M").to_string()
            } else {
                t.format("%Y-%m-%d %H:%M").to_string()
            }
        }
        Err(_) => rfc3339.to_string(),
    }
}

impl Style {
    pub fn message(&self, m: &Message) -> String {
        match self.format {
            Format::Json => serde_json::to_string(m).unwrap_or_default(),
            Format::Plain => {
                let room = if self.rooms {
                    format!("#{} ", m.room)
                } else {
                    String::new()
                };
                let nick = if self.colour {
                    format!("\x1b[1;{}m{}\x1b[0m", colour_of(&m.nick), m.nick)
                } else {
                    m.nick.clone()
                };
                format!("[{}] {room}<{nick}> {}", local_time(&m.time), m.text)
            }
        }
    }

    /// A line from the client itself (`* bob joined 4`, errors, markers).
    pub fn notice(&self, text: &str) -> String {
        if self.colour {
            format!("\x1b[2m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg() -> Message {
        Message {
            room: "4".into(),
            id: 7,
            time: "2026-11-24T08:00:00.000Z".into(),
            nick: "alice".into(),
            text: "hi \"there\"".into(),
        }
    }

    #[test]
    fn plain_and_json() {
        let plain = Style {
            format: Format::Plain,
            colour: false,
            rooms: false,
        };
        let line = plain.message(&msg());
        assert!(line.ends_with("<alice> hi \"there\""), "{line}");
        let json = Style {
            format: Format::Json,
            ..plain
        };
        let v: serde_json::Value = serde_json::from_str(&json.message(&msg())).unwrap();
        assert_eq!(v["room"], "4");
        assert_eq!(v["id"], 7);
        assert_eq!(v["nick"], "alice");
        assert_eq!(v["text"], "hi \"there\"");
        assert_eq!(v["time"], "2026-11-24T08:00:00.000Z");
    }

    #[test]
    fn nick_colours_are_stable() {
        assert_eq!(colour_of("alice"), colour_of("alice"));
    }
}
