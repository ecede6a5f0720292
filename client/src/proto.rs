//! The server's lines, parsed into events the client acts on.

/// A stored or live message.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Message {
    pub room: String,
    pub id: u64,
    /// RFC 3339 UTC, as the server sent it.
    pub time: String,
    pub nick: String,
    pub text: String,
}

/// One line from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Hello(String),
    /// `MSG` (live) or `HIST` (stored).
    Message {
        live: bool,
        message: Message,
    },
    /// `OK <COMMAND> <rest>`.
    Ok {
        command: String,
        rest: Vec<String>,
    },
    /// `ERR <CODE> <text>`.
    Err {
        code: String,
        text: String,
    },
    Joined {
        room: String,
        nick: String,
    },
    Left {
        room: String,
        nick: String,
    },
    Renamed {
        room: String,
        old: String,
        new: String,
    },
    Member {
        room: String,
        nick: String,
    },
    Room {
        room: String,
        members: u64,
    },
    /// `LAGGED <room> <id> ...`: we read too slowly; the messages after `after` follow from
    /// the server's history.
    Lagged {
        room: String,
        after: u64,
    },
    /// `MISSED <room> <first> <last> ...`: those ids are gone from the server's history.
    Missed {
        room: String,
        first: u64,
        last: u64,
    },
    Pong(String),
    Help(String),
    Bye(String),
    Other(String),
}

/// Parses one line (without its line end).
pub fn parse(line: &str) -> Event {
    let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
    let words = |n: usize| -> Vec<&str> { rest.splitn(n, ' ').collect() };
    match word {
        "MSG" | "HIST" => {
            let w = words(5);
            match (w.as_slice(), w.get(1).and_then(|id| id.parse().ok())) {
                ([room, _, time, nick, text], Some(id)) => Event::Message {
                    live: word == "MSG",
                    message: Message {
                        room: room.to_string(),
                        id,
                        time: time.to_string(),
                        nick: nick.to_string(),
                        text: text.to_string(),
                    },
                },
                _ => Event::Other(line.to_string()),
            }
        }
        "OK" => {
            let mut w = rest.split(' ');
            let command = w.next().unwrap_or_default().to_string();
            Event::Ok {
                command,
                rest: w.map(str::to_string).collect(),
            }
        }
        "ERR" => {
            let (code, text) = rest.split_once(' ').unwrap_or((rest, ""));
            Event::Err {
                code: code.to_string(),
                text: text.to_string(),
            }
        }
        "JOINED" | "LEFT" | "MEMBER" => match words(2).as_slice() {
            [room, nick] => {
                let (room, nick) = (room.to_string(), nick.to_string());
                match word {
                    "JOINED" => Event::Joined { room, nick },
                    "LEFT" => Event::Left { room, nick },
                    _ => Event::Member { room, nick },
                }
            }
            _ => Event::Other(line.to_string()),
        },
        "NICK" => match words(3).as_slice() {
            [room, old, new] => Event::Renamed {
                room: room.to_string(),
                old: old.to_string(),
                new: new.to_string(),
            },
            _ => Event::Other(line.to_string()),
        },
        "ROOM" => match words(2).as_slice() {
            [room, n] => Event::Room {
                room: room.to_string(),
                members: n.parse().unwrap_or(0),
            },
            _ => Event::Other(line.to_string()),
        },
        "LAGGED" => match words(3).as_slice() {
            [room, after, ..] => match after.parse() {
                Ok(after) => Event::Lagged {
                    room: room.to_string(),
                    after,
                },
                Err(_) => Event::Other(line.to_string()),
            },
            _ => Event::Other(line.to_string()),
        },
        "MISSED" => match words(4).as_slice() {
            [room, first, last, ..] => match (first.parse(), last.parse()) {
                (Ok(first), Ok(last)) => Event::Missed {
                    room: room.to_string(),
                    first,
                    last,
                },
                _ => Event::Other(line.to_string()),
            },
            _ => Event::Other(line.to_string()),
        },
        "HELLO" => Event::Hello(rest.to_string()),
        "PONG" => Event::Pong(rest.to_string()),
        "HELP" => Event::Help(rest.to_string()),
        "BYE" => Event::Bye(rest.to_string()),
        _ => Event::Other(line.to_string()),
    }
}

/// The history epoch a `HELLO` line names (`epoch=<value>`, among the `key=value` words
/// right after the version), if any: message ids mean the same only under the same epoch.
pub fn hello_epoch(line: &str) -> Option<String> {
    line.split(' ')
        .skip(3)
        .take_while(|w| w.contains('='))
        .find_map(|w| w.strip_prefix("epoch="))
        .filter(|e| !e.is_empty())
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_epoch_is_a_key_word_after_the_version() {
        let hint = "- type NICK <name> to choose a name";
        assert_eq!(
            hello_epoch(&format!("HELLO linechat 0.1.0 epoch=00ab {hint}")),
            Some("00ab".into())
        );
        assert_eq!(
            hello_epoch(&format!("HELLO linechat 0.2.0 tls=no epoch=ff {hint}")),
            Some("ff".into())
        );
        // An older server names none; a word with `=` in the free text is not one.
        assert_eq!(hello_epoch(&format!("HELLO linechat 0.1.0 {hint}")), None);
        assert_eq!(hello_epoch("HELLO linechat 0.1.0 - a epoch=1"), None);
        assert_eq!(hello_epoch("HELLO linechat 0.1.0 epoch="), None);
    }

    #[test]
    fn parses_the_server_lines() {
        assert_eq!(
            parse("MSG 4 7 2026-11-24T08:00:00.000Z bob hi  there"),
            Event::Message {
                live: true,
                message: Message {
                    room: "4".into(),
                    id: 7,
                    time: "2026-11-24T08:00:00.000Z".into(),
                    nick: "bob".into(),
                    text: "hi  there".into(),
                }
            }
        );
        assert!(matches!(
            parse("HIST 4 1 t a b"),
            Event::Message { live: false, .. }
        ));
        assert_eq!(
            parse("OK JOIN 4 2 9"),
            Event::Ok {
                command: "JOIN".into(),
                rest: vec!["4".into(), "2".into(), "9".into()]
            }
        );
        assert_eq!(
            parse("ERR NICK_IN_USE bob is in use"),
            Event::Err {
                code: "NICK_IN_USE".into(),
                text: "bob is in use".into()
            }
        );
        assert_eq!(
            parse("NICK 4 a b"),
            Event::Renamed {
                room: "4".into(),
                old: "a".into(),
                new: "b".into()
            }
        );
        assert_eq!(parse("BYE too slow"), Event::Bye("too slow".into()));
        assert_eq!(
            parse("LAGGED 4 17 you fell behind"),
            Event::Lagged {
                room: "4".into(),
                after: 17
            }
        );
        assert_eq!(
            parse("MISSED 4 18 30 gone"),
            Event::Missed {
                room: "4".into(),
                first: 18,
                last: 30
            }
        );
    }
}
