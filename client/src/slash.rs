//! The interactive client's slash commands: what a typed line means.

pub const HELP: &[&str] = &[
    "/join <room>      join a room (it becomes the one you talk in)",
    "/part [room]      leave a room (default: the current one)",
    "/who [room]       who is in a room",
    "/rooms            rooms with people in them",
    "/history [n]      the last n messages of the current room (default 20)",
    "/nick <name>      change your name (a registered one asks for its password)",
    "/register         register your name, so that only you can take it (asks for a password)",
    "/password         change the password of your registered name",
    "/private [room]   make a room members-only (you own it; registered names only)",
    "/invite <name> [room]    let a registered name into a private room",
    "/uninvite <name> [room]  take a member out of a private room you own",
    "/public [room]    open a private room you own to everyone again",
    "/quit [reason]    leave",
    "/help             this list",
    "anything else is said in the current room",
];

/// What a typed line means.
#[derive(Debug, PartialEq, Eq)]
pub enum Input {
    Send(String),
    Quit(String),
    /// `/nick <name>`: may need a password, asked for if the server says so.
    Nick(String),
    /// `/register` and `/password`: passwords are asked for, never typed on the line.
    Register,
    Password,
    Help,
    Problem(String),
}

pub fn command(line: &str, current: Option<&str>) -> Input {
    let Some(slash) = line.strip_prefix('/') else {
        return Input::Send(format!("SAY {line}"));
    };
    let (word, rest) = slash.split_once(' ').unwrap_or((slash, ""));
    let rest = rest.trim();
    let need_room = |verb: &str| match (rest.is_empty(), current) {
        (false, _) => Input::Send(format!("{verb} {rest}")),
        (true, Some(room)) => Input::Send(format!("{verb} {room}")),
        (true, None) => Input::Problem(format!("! /{word} needs a room: you are in none")),
    };
    match word {
        "join" if !rest.is_empty() => Input::Send(format!("JOIN {rest}")),
        "join" => Input::Problem("! usage: /join <room>".into()),
        "part" => need_room("PART"),
        "who" => need_room("WHO"),
        "rooms" => Input::Send("ROOMS".into()),
        "private" => need_room("PRIVATE"),
        "public" => need_room("PUBLIC"),
        "invite" | "uninvite" => {
            let verb = word.to_ascii_uppercase();
            match (rest.split_once(' '), current) {
                _ if rest.is_empty() => Input::Problem(format!("! usage: /{word} <name> [room]")),
                (Some((name, room)), _) => Input::Send(format!("{verb} {} {name}", room.trim())),
                (None, Some(room)) => Input::Send(format!("{verb} {room} {rest}")),
                (None, None) => Input::Problem(format!("! /{word} needs a room: you are in none")),
            }
        }
        "history" => match (
            rest.parse::<usize>().ok().or(rest.is_empty().then_some(20)),
            current,
        ) {
            (Some(n), Some(room)) => Input::Send(format!("HISTORY {room} LIMIT {n}")),
            (None, _) => Input::Problem("! usage: /history [n]".into()),
            (_, None) => Input::Problem("! /history needs a room: you are in none".into()),
        },
        "nick" if !rest.is_empty() && !rest.contains(' ') => Input::Nick(rest.to_string()),
        "nick" => Input::Problem(
            "! usage: /nick <name> (the password of a registered name is asked for)".into(),
        ),
        "register" if rest.is_empty() => Input::Register,
        "password" if rest.is_empty() => Input::Password,
        "register" | "password" => Input::Problem(format!(
            "! type /{word} alone: passwords are asked for, so that they are not shown"
        )),
        "quit" if rest.is_empty() => Input::Quit("QUIT".into()),
        "quit" => Input::Quit(format!("QUIT {rest}")),
        "help" => Input::Help,
        _ => Input::Problem(format!("! unknown command /{word}; /help lists them")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slash_commands() {
        let send = |s: &str| Input::Send(s.to_string());
        assert_eq!(command("hello there", Some("4")), send("SAY hello there"));
        assert_eq!(command("/join dev", Some("4")), send("JOIN dev"));
        assert_eq!(command("/part", Some("4")), send("PART 4"));
        assert_eq!(command("/who", Some("4")), send("WHO 4"));
        assert_eq!(command("/history", Some("4")), send("HISTORY 4 LIMIT 20"));
        assert_eq!(command("/history 5", Some("4")), send("HISTORY 4 LIMIT 5"));
        assert_eq!(command("/nick bob", None), Input::Nick("bob".into()));
        assert!(matches!(
            command("/nick bob secret", None),
            Input::Problem(_)
        ));
        assert_eq!(command("/register", None), Input::Register);
        assert_eq!(command("/password", None), Input::Password);
        // A password typed on the line would be shown and kept in the line history.
        assert!(matches!(
            command("/register hunter22", None),
            Input::Problem(_)
        ));
        assert!(matches!(command("/password a b", None), Input::Problem(_)));
        assert_eq!(command("/rooms", None), send("ROOMS"));
        assert_eq!(command("/private", Some("4")), send("PRIVATE 4"));
        assert_eq!(command("/public dev", Some("4")), send("PUBLIC dev"));
        assert_eq!(command("/invite bob", Some("4")), send("INVITE 4 bob"));
        assert_eq!(
            command("/invite bob dev", Some("4")),
            send("INVITE dev bob")
        );
        assert_eq!(command("/uninvite bob", Some("4")), send("UNINVITE 4 bob"));
        assert!(matches!(command("/invite", Some("4")), Input::Problem(_)));
        assert!(matches!(command("/invite bob", None), Input::Problem(_)));
        assert_eq!(
            command("/quit bye all", None),
            Input::Quit("QUIT bye all".into())
        );
        assert_eq!(command("/help", None), Input::Help);
        assert!(matches!(command("/who", None), Input::Problem(_)));
        assert!(matches!(command("/fly", None), Input::Problem(_)));
    }
}
