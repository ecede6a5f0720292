//! `protocol::parse` on arbitrary input.
//!
//! The input is one line as the session would see it (the codec has already split at LF and
//! dropped a CR before it). Non-UTF-8 input is skipped: the session answers `ERR BAD_UTF8`
//! before it ever calls `parse`.
//!
//! Checks:
//! - `parse` does not panic;
//! - a blank line (only spaces) is `Ok(None)`, and only a blank line is;
//! - an accepted command, written back in canonical form, parses to the same command;
//! - an `ERR` line for a line without LF is exactly one line.
#![no_main]

use libfuzzer_sys::fuzz_target;
use linechat::protocol::{self, Command, HistoryArgs, Replay, RoomsArgs};

fuzz_target!(|data: &[u8]| {
    let Ok(line) = std::str::from_utf8(data) else {
        return;
    };
    match protocol::parse(line) {
        Ok(None) => assert!(line.bytes().all(|b| b == b' '), "{line:?} is not blank"),
        Ok(Some(command)) => {
            let canonical = canonical(&command);
            assert_eq!(
                protocol::parse(&canonical),
                Ok(Some(command.clone())),
                "{line:?} parsed to {command:?}, but its canonical form {canonical:?} did not"
            );
        }
        Err(e) => {
            assert!(!line.bytes().all(|b| b == b' '), "blank line refused");
            // An ERR is one line, and never echoes a control character (tab aside).
            let out = protocol::error_line(&e);
            let text = std::str::from_utf8(&out).expect("ERR is UTF-8");
            let body = text.strip_suffix('\n').expect("ERR ends with LF");
            assert!(
                !body.chars().any(|c| c.is_control() && c != '\t'),
                "{out:?}"
            );
        }
    }
});

/// The command as a client would normally type it.
fn canonical(command: &Command) -> String {
    fn opt(verb: &str, arg: &Option<String>) -> String {
        match arg {
            Some(a) => format!("{verb} {a}"),
            None => verb.to_string(),
        }
    }
    match command {
        Command::Nick { name, password } => match password {
            Some(password) => format!("NICK {name} {}", password.expose()),
            None => format!("NICK {name}"),
        },
        Command::Register(password) => format!("REGISTER {}", password.expose()),
        Command::Password { old, new } => {
            format!("PASSWORD {} {}", old.expose(), new.expose())
        }
        Command::Private(room) => format!("PRIVATE {room}"),
        Command::Public(room) => format!("PUBLIC {room}"),
        Command::Invite { room, name } => format!("INVITE {room} {name}"),
        Command::Uninvite { room, name } => format!("UNINVITE {room} {name}"),
        Command::Join { room, replay } => match replay {
            Replay::Default => format!("JOIN {room}"),
            Replay::Last(n) => format!("JOIN {room} LAST {n}"),
            Replay::Since(id) => format!("JOIN {room} SINCE {id}"),
            Replay::None => format!("JOIN {room} NONE"),
        },
        Command::Say(text) => format!("SAY {text}"),
        Command::History { room, args } => {
            let HistoryArgs {
                before,
                after,
                limit,
            } = args;
            let mut s = format!("HISTORY {room}");
            if let Some(id) = before {
                s += &format!(" BEFORE {id}");
            }
            if let Some(id) = after {
                s += &format!(" AFTER {id}");
            }
            if let Some(n) = limit {
                s += &format!(" LIMIT {n}");
            }
            s
        }
        Command::Part(room) => opt("PART", room),
        Command::Who(room) => opt("WHO", room),
        Command::Rooms(RoomsArgs { after, limit }) => {
            let mut s = "ROOMS".to_string();
            if let Some(room) = after {
                s += &format!(" AFTER {room}");
            }
            if let Some(n) = limit {
                s += &format!(" LIMIT {n}");
            }
            s
        }
        Command::Ping(token) => opt("PING", token),
        Command::Help => "HELP".to_string(),
        Command::Quit(reason) => opt("QUIT", reason),
    }
}
