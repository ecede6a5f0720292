//! Server lines: formatted once into `Bytes` (messages, replies, errors, the greeting and
//! `HELP`), to be shared by every connection that sends them.

use bytes::{Bytes, BytesMut};

use super::{MessageId, ProtocolError};

/// Formats a time in milliseconds since the Unix epoch as RFC 3339 UTC with milliseconds.
pub fn format_time(millis: i64) -> String {
    match chrono::DateTime::from_timestamp_millis(millis) {
        Some(t) => t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        None => "1970-01-01T00:00:00.000Z".to_string(),
    }
}

/// Which of the two message lines to format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKind {
    /// `MSG`: delivered live.
    Live,
    /// `HIST`: replayed from the store.
    Stored,
}

/// `MSG|HIST <room> <id> <time> <nick> <text>\n`, formatted once and shared as `Bytes`.
pub fn message_line(
    kind: MessageKind,
    room: &str,
    id: MessageId,
    millis: i64,
    nick: &str,
    text: &str,
) -> Bytes {
    let mut out = BytesMut::with_capacity(48 + room.len() + nick.len() + text.len());
    write_message_line(&mut out, kind, room, id, &format_time(millis), nick, text);
    out.freeze()
}

/// Appends a message line to `out`, with its time already formatted.
pub fn write_message_line(
    out: &mut BytesMut,
    kind: MessageKind,
    room: &str,
    id: MessageId,
    time: &str,
    nick: &str,
    text: &str,
) {
    let word: &[u8] = match kind {
        MessageKind::Live => b"MSG ",
        MessageKind::Stored => b"HIST ",
    };
    let mut digits = itoa::Buffer::new();
    for part in [
        word,
        room.as_bytes(),
        b" ",
        digits.format(id).as_bytes(),
        b" ",
        time.as_bytes(),
        b" ",
        nick.as_bytes(),
        b" ",
        text.as_bytes(),
        b"\n",
    ] {
        out.extend_from_slice(part);
    }
}

/// `OK SAY <id> <time>\n`.
pub fn ok_say(id: MessageId, time: &str) -> Bytes {
    let mut out = BytesMut::with_capacity(16 + 20 + time.len());
    out.extend_from_slice(b"OK SAY ");
    out.extend_from_slice(itoa::Buffer::new().format(id).as_bytes());
    out.extend_from_slice(b" ");
    out.extend_from_slice(time.as_bytes());
    out.extend_from_slice(b"\n");
    out.freeze()
}

/// `ERR <CODE> <text>\n`.
pub fn error_line(e: &ProtocolError) -> Bytes {
    // Every `ERR` is made here, and made only to be sent: counted by its code.
    crate::telemetry::error_sent(e.code);
    let mut line = format!("ERR {} ", e.code.as_str());
    // The text may quote the client's input: control characters in it are written as escapes
    // (`\x1b`, `\u{85}`), so an error never carries a CR or a terminal escape back.
    for c in e.text.chars() {
        match c {
            '\t' => line.push(c),
            c if c.is_control() && c.is_ascii() => line.push_str(&format!("\\x{:02x}", c as u32)),
            c if c.is_control() => line.push_str(&c.escape_unicode().to_string()),
            c => line.push(c),
        }
    }
    line.push('\n');
    Bytes::from(line)
}

/// Any other server line: the words joined by single spaces, then LF.
pub fn line(words: &[&str]) -> Bytes {
    let mut s = words.join(" ");
    s.push('\n');
    Bytes::from(s)
}

/// The greeting: `HELLO linechat <version> [epoch=<16 hex digits>] - <hint>`. The epoch (0:
/// the store has none) names the history that message ids belong to (PROTOCOL.md, HELLO).
pub fn hello(version: &str, epoch: u64) -> Bytes {
    const HINT: &str = "- type NICK <name> to choose a name, then JOIN <room>, then SAY <text>. HELP lists every command.";
    if epoch == 0 {
        line(&["HELLO", "linechat", version, HINT])
    } else {
        line(&[
            "HELLO",
            "linechat",
            version,
            &format!("epoch={epoch:016x}"),
            HINT,
        ])
    }
}

/// The `HELP` text, one `HELP` line each.
pub const HELP: &[&str] = &[
    "NICK <name> [password]   choose your name (1-32 of A-Z a-z 0-9 _ -); a registered one needs its password",
    "REGISTER <password>      keep your current name: from then on only NICK <name> <password> takes it",
    "PASSWORD <old> <new>     change the password of your registered name",
    "JOIN <room> [LAST <n> | SINCE <id> | NONE]   join a room; replays history first",
    "SAY <text>               say text in your current room (the one you joined last)",
    "HISTORY <room> [BEFORE <id>] [AFTER <id>] [LIMIT <n>]   page through a room's history",
    "PART [room]              leave a room (default: your current room)",
    "PRIVATE <room>           make a room you are in members-only (registered names; you own it)",
    "INVITE <room> <name>     let a registered name into a private room you are a member of",
    "UNINVITE <room> <name>   take a member out of a private room you own",
    "PUBLIC <room>            open a private room you own to everyone again",
    "WHO [room]               list a room's members",
    "ROOMS [AFTER <room>] [LIMIT <n>]   list rooms with members, by name",
    "PING [token]             the server answers PONG [token]",
    "HELP                     this list",
    "QUIT [reason]            the server answers BYE and closes",
];
