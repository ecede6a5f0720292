//! The wire protocol: parsing client commands and formatting server lines.
//!
//! Pure functions, no I/O, so that every rule here is unit-tested and fuzzed. PROTOCOL.md is
//! the specification; this module is its implementation.

mod errors;
mod lines;

use crate::accounts::Password;

pub use errors::{ErrorCode, ProtocolError};
pub use lines::{
    error_line, format_time, hello, line, message_line, ok_say, write_message_line, MessageKind,
    HELP,
};

use errors::err;

/// Longest nick in bytes (all nick characters are ASCII).
pub const MAX_NICK: usize = 32;
/// Longest room name in bytes (all room characters are ASCII).
pub const MAX_ROOM: usize = 64;

/// The most bytes a `HIST`/`MSG` line adds to its text: the word, room, id, time, nick,
/// spaces and LF.
pub const MESSAGE_LINE_OVERHEAD: usize = 5 + MAX_ROOM + 1 + 20 + 1 + 24 + 1 + MAX_NICK + 1 + 1;

/// A message id: unique and increasing within one room, starting at 1.
pub type MessageId = u64;

/// What `JOIN` replays before going live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replay {
    /// The server's default number of recent messages (`--history-on-join`).
    Default,
    /// The last N messages.
    Last(usize),
    /// Every message with an id greater than this one (catch-up after a reconnect).
    Since(MessageId),
    /// Nothing: only live messages from now on.
    None,
}

/// A page request: `HISTORY <room> [BEFORE <id>] [AFTER <id>] [LIMIT <n>]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HistoryArgs {
    pub before: Option<MessageId>,
    pub after: Option<MessageId>,
    pub limit: Option<usize>,
}

/// A `ROOMS [AFTER <room>] [LIMIT <n>]` request: the rooms after one, at most so many.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RoomsArgs {
    pub after: Option<String>,
    pub limit: Option<usize>,
}

/// One parsed client command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `NICK <name> [password]`: the password logs in to a registered name.
    Nick {
        name: String,
        password: Option<Password>,
    },
    /// `REGISTER <password>`: registers the current name.
    Register(Password),
    /// `PASSWORD <old> <new>`.
    Password {
        old: Password,
        new: Password,
    },
    /// `PRIVATE <room>`: members only from now on.
    Private(String),
    /// `PUBLIC <room>`: anyone again.
    Public(String),
    /// `INVITE <room> <name>`: a registered name becomes a member of a private room.
    Invite {
        room: String,
        name: String,
    },
    /// `UNINVITE <room> <name>`.
    Uninvite {
        room: String,
        name: String,
    },
    Join {
        room: String,
        replay: Replay,
    },
    Say(String),
    History {
        room: String,
        args: HistoryArgs,
    },
    Part(Option<String>),
    Who(Option<String>),
    Rooms(RoomsArgs),
    Ping(Option<String>),
    Help,
    Quit(Option<String>),
}

/// The rules for one kind of name: its characters, length and error code.
struct NameRules {
    code: ErrorCode,
    max: usize,
    /// Allowed besides ASCII letters and digits.
    punctuation: &'static [char],
    /// How the refusal begins: "a nick is".
    what: &'static str,
    /// The allowed characters, as the refusal lists them.
    allowed: &'static str,
}

const NICK_RULES: NameRules = NameRules {
    code: ErrorCode::BadNick,
    max: MAX_NICK,
    punctuation: &['_', '-'],
    what: "a nick is",
    allowed: "A-Z a-z 0-9 _ -",
};

const ROOM_RULES: NameRules = NameRules {
    code: ErrorCode::BadRoom,
    max: MAX_ROOM,
    punctuation: &['_', '-', '.'],
    what: "a room name is",
    allowed: "A-Z a-z 0-9 _ - .",
};

fn validate_name(rules: &NameRules, name: &str) -> Result<(), ProtocolError> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || rules.punctuation.contains(&c);
    if name.is_empty() || name.len() > rules.max || !name.chars().all(ok_char) {
        let NameRules {
            what, max, allowed, ..
        } = rules;
        return err(
            rules.code,
            format!("{what} 1 to {max} characters of {allowed}"),
        );
    }
    Ok(())
}

/// Checks a nick: 1 to 32 characters of `A-Z a-z 0-9 _ -`.
pub fn validate_nick(nick: &str) -> Result<(), ProtocolError> {
    validate_name(&NICK_RULES, nick)
}

/// Checks a room name: 1 to 64 characters of `A-Z a-z 0-9 _ - .`.
pub fn validate_room(room: &str) -> Result<(), ProtocolError> {
    validate_name(&ROOM_RULES, room)
}

/// Checks free text (a message, a PING token, a QUIT reason): no control characters except
/// tab.
pub fn validate_text(text: &str) -> Result<(), ProtocolError> {
    if text.chars().any(|c| c.is_control() && c != '\t') {
        return err(
            ErrorCode::BadText,
            "text may not contain control characters (tab is allowed)",
        );
    }
    Ok(())
}

/// Splits off the first space-separated word; the rest keeps its spacing.
fn split_word(s: &str) -> (&str, &str) {
    match s.find(' ') {
        Some(i) => (&s[..i], &s[i + 1..]),
        None => (s, ""),
    }
}

/// Parses one line (already stripped of CR/LF and checked as UTF-8).
///
/// Returns `Ok(None)` for a blank line, which is ignored.
pub fn parse(line: &str) -> Result<Option<Command>, ProtocolError> {
    let trimmed = line.trim_start_matches(' ');
    if trimmed.trim_end_matches(' ').is_empty() {
        return Ok(None);
    }
    let (word, rest) = split_word(trimmed);
    let verb = word.to_ascii_uppercase();
    // Commands whose last argument is the rest of the line.
    match verb.as_str() {
        "SAY" => {
            if is_blank(rest) {
                return err(ErrorCode::MissingArgument, "usage: SAY <text>");
            }
            validate_text(rest)?;
            return Ok(Some(Command::Say(rest.to_string())));
        }
        "PING" => return Ok(Some(Command::Ping(free_text(rest)?))),
        "QUIT" => return Ok(Some(Command::Quit(free_text(rest)?))),
        _ => {}
    }
    let args: Vec<&str> = rest.split(' ').filter(|a| !a.is_empty()).collect();
    let command = match verb.as_str() {
        // Never quote a password back: these refusals name the usage, not the input.
        "NICK" => match args[..] {
            [] => return err(ErrorCode::MissingArgument, "usage: NICK <name> [password]"),
            [name] | [name, _] => {
                validate_nick(name)?;
                Command::Nick {
                    name: name.to_string(),
                    password: args.get(1).map(|p| Password::new(*p)),
                }
            }
            _ => {
                return err(
                    ErrorCode::TooManyArguments,
                    "usage: NICK <name> [password]; a password is one word",
                )
            }
        },
        "REGISTER" => {
            let [password] = exact::<1>(&verb, &args, "REGISTER <password> (one word)")?;
            Command::Register(Password::new(password))
        }
        "PASSWORD" => {
            let [old, new] = exact::<2>(&verb, &args, "PASSWORD <old> <new> (one word each)")?;
            Command::Password {
                old: Password::new(old),
                new: Password::new(new),
            }
        }
        "JOIN" => parse_join(&args)?,
        "PRIVATE" | "PUBLIC" => {
            let [room] = exact::<1>(&verb, &args, &format!("{verb} <room>"))?;
            validate_room(room)?;
            match verb.as_str() {
                "PRIVATE" => Command::Private(room.to_string()),
                _ => Command::Public(room.to_string()),
            }
        }
        "INVITE" | "UNINVITE" => {
            let [room, name] = exact::<2>(&verb, &args, &format!("{verb} <room> <name>"))?;
            validate_room(room)?;
            validate_nick(name)?;
            let (room, name) = (room.to_string(), name.to_string());
            match verb.as_str() {
                "INVITE" => Command::Invite { room, name },
                _ => Command::Uninvite { room, name },
            }
        }
        "HISTORY" => parse_history(&args)?,
        "PART" => Command::Part(optional_room(&verb, &args)?),
        "WHO" => Command::Who(optional_room(&verb, &args)?),
        "ROOMS" => parse_rooms(&args)?,
        "HELP" => Command::Help,
        _ => {
            return err(
                ErrorCode::UnknownCommand,
                format!("unknown command {word}; HELP lists the commands"),
            )
        }
    };
    Ok(Some(command))
}

fn is_blank(s: &str) -> bool {
    s.trim_matches([' ', '\t']).is_empty()
}

/// An optional free-text argument: trimmed, `None` if blank.
fn free_text(s: &str) -> Result<Option<String>, ProtocolError> {
    let s = s.trim_matches([' ', '\t']);
    if s.is_empty() {
        return Ok(None);
    }
    validate_text(s)?;
    Ok(Some(s.to_string()))
}

fn exact<'a, const N: usize>(
    verb: &str,
    args: &[&'a str],
    usage: &str,
) -> Result<[&'a str; N], ProtocolError> {
    if args.len() < N {
        return err(ErrorCode::MissingArgument, format!("usage: {usage}"));
    }
    if args.len() > N {
        return err(
            ErrorCode::TooManyArguments,
            format!("{verb} takes {N} argument(s); usage: {usage}"),
        );
    }
    Ok(std::array::from_fn(|i| args[i]))
}

fn optional_room(verb: &str, args: &[&str]) -> Result<Option<String>, ProtocolError> {
    match args {
        [] => Ok(None),
        [room] => {
            validate_room(room)?;
            Ok(Some(room.to_string()))
        }
        _ => err(ErrorCode::TooManyArguments, format!("usage: {verb} [room]")),
    }
}

fn number<T: std::str::FromStr>(keyword: &str, value: Option<&&str>) -> Result<T, ProtocolError> {
    let Some(value) = value else {
        return err(
            ErrorCode::MissingArgument,
            format!("{keyword} needs a number after it"),
        );
    };
    // Plain decimal digits only: no sign, no spaces.
    let digits = !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit());
    digits.then(|| value.parse().ok()).flatten().ok_or_else(|| {
        ProtocolError::new(
            ErrorCode::BadArgument,
            format!("{keyword} takes a whole number, not {value}"),
        )
    })
}

const JOIN_USAGE: &str = "JOIN <room> [LAST <n> | SINCE <id> | NONE]";

fn parse_join(args: &[&str]) -> Result<Command, ProtocolError> {
    let Some((room, bounds)) = args.split_first() else {
        return err(ErrorCode::MissingArgument, format!("usage: {JOIN_USAGE}"));
    };
    validate_room(room)?;
    let replay = match bounds {
        [] => Replay::Default,
        [word, rest @ ..] => {
            let keyword = word.to_ascii_uppercase();
            let (replay, used) = match keyword.as_str() {
                "LAST" => (Replay::Last(number("LAST", rest.first())?), 2),
                "SINCE" => (Replay::Since(number("SINCE", rest.first())?), 2),
                "NONE" => (Replay::None, 1),
                _ => {
                    return err(
                        ErrorCode::BadArgument,
                        format!("unknown replay bound {word}; usage: {JOIN_USAGE}"),
                    )
                }
            };
            if bounds.len() > used {
                return err(ErrorCode::TooManyArguments, format!("usage: {JOIN_USAGE}"));
            }
            replay
        }
    };
    Ok(Command::Join {
        room: room.to_string(),
        replay,
    })
}

const HISTORY_USAGE: &str = "HISTORY <room> [BEFORE <id>] [AFTER <id>] [LIMIT <n>]";

fn parse_history(args: &[&str]) -> Result<Command, ProtocolError> {
    let Some((room, mut rest)) = args.split_first() else {
        return err(
            ErrorCode::MissingArgument,
            format!("usage: {HISTORY_USAGE}"),
        );
    };
    validate_room(room)?;
    let mut h = HistoryArgs::default();
    while let [word, tail @ ..] = rest {
        let keyword = word.to_ascii_uppercase();
        let slot_is_set = match keyword.as_str() {
            "BEFORE" => h.before.replace(number("BEFORE", tail.first())?).is_some(),
            "AFTER" => h.after.replace(number("AFTER", tail.first())?).is_some(),
            "LIMIT" => h.limit.replace(number("LIMIT", tail.first())?).is_some(),
            _ => {
                return err(
                    ErrorCode::BadArgument,
                    format!("unknown HISTORY bound {word}; usage: {HISTORY_USAGE}"),
                )
            }
        };
        if slot_is_set {
            return err(
                ErrorCode::BadArgument,
                format!("{keyword} given twice; usage: {HISTORY_USAGE}"),
            );
        }
        rest = &tail[1..];
    }
    Ok(Command::History {
        room: room.to_string(),
        args: h,
    })
}

const ROOMS_USAGE: &str = "ROOMS [AFTER <room>] [LIMIT <n>]";

fn parse_rooms(mut rest: &[&str]) -> Result<Command, ProtocolError> {
    let mut r = RoomsArgs::default();
    while let [word, tail @ ..] = rest {
        let keyword = word.to_ascii_uppercase();
        let slot_is_set = match keyword.as_str() {
            "AFTER" => {
                let Some(room) = tail.first() else {
                    return err(
                        ErrorCode::MissingArgument,
                        format!("AFTER needs a room after it; usage: {ROOMS_USAGE}"),
                    );
                };
                validate_room(room)?;
                r.after.replace(room.to_string()).is_some()
            }
            "LIMIT" => r.limit.replace(number("LIMIT", tail.first())?).is_some(),
            _ => {
                return err(
                    ErrorCode::BadArgument,
                    format!("unknown ROOMS keyword {word}; usage: {ROOMS_USAGE}"),
                )
            }
        };
        if slot_is_set {
            return err(
                ErrorCode::BadArgument,
                format!("{keyword} given twice; usage: {ROOMS_USAGE}"),
            );
        }
        rest = &tail[1..];
    }
    Ok(Command::Rooms(r))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(line: &str) -> Command {
        parse(line).unwrap().unwrap()
    }

    fn code(line: &str) -> ErrorCode {
        parse(line).unwrap_err().code
    }

    /// Lines the parser refuses, with the code each gets.
    const REFUSED: &[(&str, ErrorCode)] = &[
        ("SAY", ErrorCode::MissingArgument),
        ("SAY    ", ErrorCode::MissingArgument),
        ("SAY a\u{0}b", ErrorCode::BadText),
        ("SAY a\rb", ErrorCode::BadText),
        // Only spaces make a line blank, and only spaces come before the command word.
        ("\t", ErrorCode::UnknownCommand),
        (" \t ", ErrorCode::UnknownCommand),
        ("\tPING", ErrorCode::UnknownCommand),
        ("JOIN", ErrorCode::MissingArgument),
        ("JOIN 4 LAST", ErrorCode::MissingArgument),
        ("JOIN 4 LAST x", ErrorCode::BadArgument),
        ("JOIN 4 LAST -1", ErrorCode::BadArgument),
        ("JOIN 4 SOON", ErrorCode::BadArgument),
        ("JOIN 4 NONE 1", ErrorCode::TooManyArguments),
        ("JOIN bad/room", ErrorCode::BadRoom),
        ("HISTORY", ErrorCode::MissingArgument),
        ("HISTORY 4 BEFORE", ErrorCode::MissingArgument),
        ("HISTORY 4 BEFORE 1 BEFORE 2", ErrorCode::BadArgument),
        ("HISTORY 4 UNTIL 2", ErrorCode::BadArgument),
        ("NICK a.b", ErrorCode::BadNick),
        ("NICK al!ce", ErrorCode::BadNick),
        ("NICK é", ErrorCode::BadNick),
        ("NICK", ErrorCode::MissingArgument),
        ("NICK a b c", ErrorCode::TooManyArguments),
        ("NICK a.b secret-word", ErrorCode::BadNick),
        ("REGISTER", ErrorCode::MissingArgument),
        ("REGISTER two words", ErrorCode::TooManyArguments),
        ("PASSWORD old", ErrorCode::MissingArgument),
        ("PASSWORD a b c", ErrorCode::TooManyArguments),
        ("PART a b", ErrorCode::TooManyArguments),
        ("PRIVATE", ErrorCode::MissingArgument),
        ("PRIVATE a/b", ErrorCode::BadRoom),
        ("PUBLIC a b", ErrorCode::TooManyArguments),
        ("INVITE r", ErrorCode::MissingArgument),
        ("INVITE r bad!name", ErrorCode::BadNick),
        ("UNINVITE r/x bob", ErrorCode::BadRoom),
        ("ROOMS x", ErrorCode::BadArgument),
        ("ROOMS LIMIT", ErrorCode::MissingArgument),
        ("ROOMS AFTER", ErrorCode::MissingArgument),
        ("ROOMS AFTER a/b", ErrorCode::BadRoom),
        ("ROOMS LIMIT 1 LIMIT 2", ErrorCode::BadArgument),
        ("FLY", ErrorCode::UnknownCommand),
        ("QUIT bye\u{7}", ErrorCode::BadText),
        ("PING \u{1b}x", ErrorCode::BadText),
        ("JOIN 4 SINCE +5", ErrorCode::BadArgument),
    ];

    #[test]
    fn hello_names_the_epoch_after_the_version_when_there_is_one() {
        let hint = "- type NICK <name> to choose a name, then JOIN <room>, then SAY <text>. HELP lists every command.\n";
        assert_eq!(hello("0.1.0", 0), format!("HELLO linechat 0.1.0 {hint}"));
        assert_eq!(
            hello("0.1.0", 0xab),
            format!("HELLO linechat 0.1.0 epoch=00000000000000ab {hint}")
        );
        assert_eq!(
            hello("0.1.0", u64::MAX),
            format!("HELLO linechat 0.1.0 epoch=ffffffffffffffff {hint}")
        );
    }

    #[test]
    fn every_refusal_has_its_code() {
        for (line, want) in REFUSED {
            assert_eq!(code(line), *want, "{line:?}");
        }
    }

    #[test]
    fn verbs_are_case_insensitive_and_spacing_is_forgiving() {
        let nick = |name: &str| Command::Nick {
            name: name.into(),
            password: None,
        };
        assert_eq!(ok("nick alice"), nick("alice"));
        assert_eq!(ok("  NiCk   alice  "), nick("alice"));
        assert_eq!(parse("").unwrap(), None);
        assert_eq!(parse("   ").unwrap(), None);
        assert_eq!(ok("   PING \t tok \t"), Command::Ping(Some("tok".into())));
    }

    #[test]
    fn say_keeps_the_rest_of_the_line_verbatim() {
        assert_eq!(ok("SAY hi  there "), Command::Say("hi  there ".into()));
        assert_eq!(ok("say \tx"), Command::Say("\tx".into()));
    }

    #[test]
    fn join_bounds() {
        let join = |room: &str, replay| Command::Join {
            room: room.into(),
            replay,
        };
        assert_eq!(ok("JOIN 4"), join("4", Replay::Default));
        assert_eq!(ok("JOIN 4 last 10"), join("4", Replay::Last(10)));
        assert_eq!(ok("JOIN a.b SINCE 7"), join("a.b", Replay::Since(7)));
        assert_eq!(ok("JOIN x none"), join("x", Replay::None));
        assert_eq!(
            code(&format!("JOIN {}", "r".repeat(65))),
            ErrorCode::BadRoom
        );
    }

    #[test]
    fn history_bounds() {
        let Command::History { room, args } = ok("history 4 before 10 AFTER 2 limit 5") else {
            panic!()
        };
        assert_eq!(room, "4");
        assert_eq!(
            args,
            HistoryArgs {
                before: Some(10),
                after: Some(2),
                limit: Some(5)
            }
        );
    }

    #[test]
    fn rooms_bounds() {
        assert_eq!(ok("ROOMS"), Command::Rooms(RoomsArgs::default()));
        assert_eq!(
            ok("rooms limit 20 after dev.x"),
            Command::Rooms(RoomsArgs {
                after: Some("dev.x".into()),
                limit: Some(20)
            })
        );
    }

    #[test]
    fn passwords_are_one_word_and_never_quoted_back() {
        assert_eq!(
            ok("NICK alice s3cret-word"),
            Command::Nick {
                name: "alice".into(),
                password: Some(Password::new("s3cret-word"))
            }
        );
        assert_eq!(
            ok("register  s3cret-word "),
            Command::Register(Password::new("s3cret-word"))
        );
        assert_eq!(
            ok("PASSWORD old-word new-word"),
            Command::Password {
                old: Password::new("old-word"),
                new: Password::new("new-word")
            }
        );
        for line in [
            "NICK alice s3cret-word extra",
            "REGISTER s3cret-word extra",
            "PASSWORD s3cret-word",
            "PASSWORD s3cret-word b c",
        ] {
            let refusal = parse(line).unwrap_err();
            assert!(!refusal.text.contains("s3cret"), "{line}: {refusal}");
        }
        let shown = format!("{:?}", ok("NICK alice s3cret-word"));
        assert!(!shown.contains("s3cret"), "{shown}");
    }

    #[test]
    fn names() {
        assert!(validate_nick(&"a".repeat(32)).is_ok());
        assert!(validate_room("a.b_c-9").is_ok());
        assert_eq!(
            parse("NICK a!").unwrap_err().text,
            "a nick is 1 to 32 characters of A-Z a-z 0-9 _ -"
        );
        assert_eq!(
            parse("JOIN a!").unwrap_err().text,
            "a room name is 1 to 64 characters of A-Z a-z 0-9 _ - ."
        );
        assert_eq!(
            code(&format!("NICK {}", "a".repeat(33))),
            ErrorCode::BadNick
        );
    }

    #[test]
    fn ping_and_quit_take_the_rest() {
        assert_eq!(ok("PING"), Command::Ping(None));
        assert_eq!(ok("PING a b"), Command::Ping(Some("a b".into())));
        assert_eq!(ok("QUIT"), Command::Quit(None));
        assert_eq!(
            ok("QUIT gone home"),
            Command::Quit(Some("gone home".into()))
        );
        assert_eq!(ok("QUIT \t "), Command::Quit(None));
        assert_eq!(
            code("JOIN 4 LAST 99999999999999999999999"),
            ErrorCode::BadArgument
        );
    }

    #[test]
    fn message_lines() {
        let l = message_line(
            MessageKind::Live,
            "4",
            7,
            1_795_507_200_123,
            "bob",
            "hi there",
        );
        assert_eq!(&l[..], b"MSG 4 7 2026-11-24T08:00:00.123Z bob hi there\n");
        let h = message_line(MessageKind::Stored, "4", 7, 0, "bob", "x");
        assert_eq!(&h[..], b"HIST 4 7 1970-01-01T00:00:00.000Z bob x\n");
    }

    #[test]
    fn error_text_escapes_control_characters() {
        let e = ProtocolError::new(
            ErrorCode::UnknownCommand,
            "unknown command a\x1b[31m\r\u{85}\tb",
        );
        assert_eq!(
            &error_line(&e)[..],
            b"ERR UNKNOWN_COMMAND unknown command a\\x1b[31m\\x0d\\u{85}\tb\n"
        );
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(s in "\\PC*") {
            let _ = parse(&s);
        }

        #[test]
        fn parse_never_panics_on_command_like_input(
            verb in "(?i)(nick|join|say|history|part|who|rooms|ping|help|quit|x)",
            args in proptest::collection::vec("[a-zA-Z0-9 ._\\-]{0,12}", 0..6),
        ) {
            let line = format!("{verb} {}", args.join(" "));
            let _ = parse(&line);
        }

        #[test]
        fn say_round_trips(text in "[^\\p{Cc}]*[^\\p{Cc} \t][^\\p{Cc}]*") {
            proptest::prop_assert_eq!(parse(&format!("SAY {text}")).unwrap(), Some(Command::Say(text)));
        }
    }
}
