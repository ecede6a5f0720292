//! How messages look: plain text for people (local time, coloured nicks on a terminal) or
//! JSON lines for programs.

use std::borrow::Cow;

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

/// Characters that change how a terminal lays out the text around them: the bidirectional
/// embeddings, overrides and isolates (U+202A..U+202E, U+2066..U+2069) can make a line read
/// as something else (a reversed URL, a nick that seems to say another's words), and the line
/// and paragraph separators (U+2028, U+2029) can make one message look like two. The server
/// passes them through in message text, as it must; a client shows them inert.
fn is_layout_control(c: char) -> bool {
    matches!(
        c,
        '\u{202A}'..='\u{202E}'
            | '\u{2066}'..='\u{2069}'
            | '\u{2028}'
            | '\u{2029}'
            // The directional marks (LRM, RLM, ALM): weaker, but they still reorder the
            // neutral characters around them.
            | '\u{200E}'
            | '\u{200F}'
            | '\u{061C}'
    )
}

/// `text` with every layout control written out visibly as `<U+202E>`, so that it affects
/// nothing around it.
pub fn inert(text: &str) -> Cow<'_, str> {
    if !text.chars().any(is_layout_control) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if is_layout_control(c) {
            out.push_str(&format!("<U+{:04X}>", c as u32));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// JSON text with the layout controls escaped (`\u202e`): the same string to a JSON parser,
/// but inert if the output is shown on a terminal.
fn inert_json(json: String) -> String {
    if !json.chars().any(is_layout_control) {
        return json;
    }
    let mut out = String::with_capacity(json.len() + 16);
    for c in json.chars() {
        if is_layout_control(c) {
            // Only ever inside a string (keys and punctuation are ASCII), where \uXXXX is valid.
            out.push_str(&format!("\\u{:04x}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

impl Style {
    pub fn message(&self, m: &Message) -> String {
        match self.format {
            Format::Json => inert_json(serde_json::to_string(m).unwrap_or_default()),
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
                format!(
                    "[{}] {room}<{nick}> {}",
                    local_time(&m.time),
                    inert(&m.text)
                )
            }
        }
    }

    /// A line from the client itself (`* bob joined 4`, errors, markers).
    /// Notices may quote the server (an `ERR` text, a `BYE` reason), which may quote what
    /// others typed: shown inert too.
    pub fn notice(&self, text: &str) -> String {
        let text = inert(text);
        if self.colour {
            format!("\x1b[2m{text}\x1b[0m")
        } else {
            text.into_owned()
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
    fn layout_controls_are_shown_inert() {
        let evil = "price: \u{202E}0.1$\u{202C} ok\u{2028}[12:00] <bob> fake";
        let plain = Style {
            format: Format::Plain,
            colour: false,
            rooms: false,
        };
        let m = Message {
            text: evil.into(),
            ..msg()
        };
        let line = plain.message(&m);
        assert!(
            line.ends_with("<alice> price: <U+202E>0.1$<U+202C> ok<U+2028>[12:00] <bob> fake"),
            "{line}"
        );
        for c in [
            '\u{202A}', '\u{202E}', '\u{2066}', '\u{2069}', '\u{2028}', '\u{2029}', '\u{200F}',
        ] {
            assert!(!inert(&format!("a{c}b")).contains(c), "{c:?}");
        }
        assert_eq!(inert("plain, naïve, 日本"), "plain, naïve, 日本");
        assert!(!plain.notice(evil).contains('\u{202E}'));
        // JSON: escaped, and still the same text to a parser.
        let json = Style {
            format: Format::Json,
            ..plain
        }
        .message(&m);
        assert!(
            json.is_ascii() || !json.chars().any(is_layout_control),
            "{json}"
        );
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["text"], evil);
    }

    #[test]
    fn nick_colours_are_stable() {
        assert_eq!(colour_of("alice"), colour_of("alice"));
    }
}
