//! Taking a name on a new connection: `NICK <name>`, or `NICK <name> <password>` for a
//! registered one, and what each reply means. Also the refusals that end a connection
//! attempt, and which of them connecting again cannot fix.

use crate::proto::Event;
use crate::secret::Secret;

/// Why a connection attempt was refused by the server or its certificate (rather than lost
/// on the way).
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("{server}: {reason}")]
    Tls { server: String, reason: String },
    #[error("{server} takes TLS only: connect with --server tls://{server} (or add --tls)")]
    TlsRequired { server: String },
    #[error("the name {nick} is in use on {server}; choose another")]
    NameInUse { server: String, nick: String },
    #[error("{nick} is a registered name on {server}: its password is needed (asked for on a terminal; in a script, give it in LINECHAT_PASSWORD or --password-file)")]
    PasswordNeeded { server: String, nick: String },
    #[error("wrong password for {nick} on {server}")]
    WrongPassword { server: String, nick: String },
    #[error("{server} refuses more password attempts for now: {text}")]
    TooManyGuesses { server: String, text: String },
    #[error("{server} is too busy to check a password: {text}")]
    Busy { server: String, text: String },
    #[error("{server} refused the name {nick}: {code} {text}")]
    Name {
        server: String,
        nick: String,
        code: String,
        text: String,
    },
}

impl Refused {
    /// Connecting again, as it is, would be refused again: a certificate, a password, a
    /// name the server will not take. (A name still held by our own dropped connection, or a
    /// busy server, may work a little later.)
    pub fn is_permanent(&self) -> bool {
        !matches!(self, Refused::NameInUse { .. } | Refused::Busy { .. })
    }
}

/// What to do after a reply to our NICK.
#[derive(Debug)]
pub enum Step {
    /// Not a reply to NICK: keep reading.
    Wait,
    /// The name is ours, spelled as the server has it.
    Named(String),
    /// The name is not registered, so the password was not used: send this plain NICK and go
    /// on as a guest.
    Guest(String),
    Refused(Refused),
}

/// The NICK exchange of one connection.
pub struct Login {
    server: String,
    nick: String,
    password: Option<Secret>,
}

impl Login {
    pub fn new(server: &str, nick: &str, password: Option<Secret>) -> Login {
        Login {
            server: server.to_string(),
            nick: nick.to_string(),
            password,
        }
    }

    /// The NICK line to send (it may hold the password: never show it).
    pub fn line(&self) -> String {
        match &self.password {
            Some(p) => format!("NICK {} {}", self.nick, p.expose()),
            None => format!("NICK {}", self.nick),
        }
    }

    pub fn on(&mut self, event: &Event) -> Step {
        let (server, nick) = (self.server.clone(), self.nick.clone());
        match event {
            Event::Ok { command, rest } if command == "NICK" => {
                Step::Named(rest.first().cloned().unwrap_or(nick))
            }
            Event::Err { code, text } => Step::Refused(match code.as_str() {
                "NICK_IN_USE" => Refused::NameInUse { server, nick },
                "NICK_REGISTERED" if self.password.is_none() => {
                    Refused::PasswordNeeded { server, nick }
                }
                "WRONG_PASSWORD" => Refused::WrongPassword { server, nick },
                "NOT_REGISTERED" if self.password.is_some() => {
                    self.password = None;
                    return Step::Guest(self.line());
                }
                "TOO_MANY_GUESSES" => Refused::TooManyGuesses {
                    server,
                    text: text.clone(),
                },
                "SERVER_BUSY" => Refused::Busy {
                    server,
                    text: text.clone(),
                },
                _ => Refused::Name {
                    server,
                    nick,
                    code: code.clone(),
                    text: text.clone(),
                },
            }),
            _ => Step::Wait,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::parse;

    fn pw(s: &str) -> Option<Secret> {
        Some(Secret::new(s.into()).unwrap())
    }

    #[test]
    fn a_guest_name_is_taken_with_a_plain_nick() {
        let mut login = Login::new("s", "bob", None);
        assert_eq!(login.line(), "NICK bob");
        assert!(matches!(login.on(&parse("JOINED 4 x")), Step::Wait));
        assert!(matches!(login.on(&parse("OK NICK bob")), Step::Named(n) if n == "bob"));
        let refused = |line: &str| match Login::new("s", "bob", None).on(&parse(line)) {
            Step::Refused(r) => r,
            other => panic!("{other:?}"),
        };
        let in_use = refused("ERR NICK_IN_USE bob is in use");
        assert!(matches!(in_use, Refused::NameInUse { .. }));
        assert!(!in_use.is_permanent());
        let registered = refused("ERR NICK_REGISTERED bob is registered; NICK bob <password>");
        assert!(matches!(registered, Refused::PasswordNeeded { .. }));
        assert!(registered.is_permanent());
        assert!(matches!(
            refused("ERR BAD_NICK no"),
            Refused::Name { code, .. } if code == "BAD_NICK"
        ));
    }

    #[test]
    fn a_registered_name_logs_in_with_its_password() {
        let mut login = Login::new("s", "alice", pw("hunter2hunter2"));
        assert_eq!(login.line(), "NICK alice hunter2hunter2");
        // The server's spelling of the name wins.
        assert!(matches!(login.on(&parse("OK NICK Alice")), Step::Named(n) if n == "Alice"));
        let wrong = match login.on(&parse("ERR WRONG_PASSWORD wrong password for alice")) {
            Step::Refused(r) => r,
            other => panic!("{other:?}"),
        };
        assert!(wrong.is_permanent());
        assert_eq!(wrong.to_string(), "wrong password for alice on s");
        let busy = match login.on(&parse("ERR SERVER_BUSY try again")) {
            Step::Refused(r) => r,
            other => panic!("{other:?}"),
        };
        assert!(!busy.is_permanent());
        assert!(matches!(
            login.on(&parse("ERR TOO_MANY_GUESSES wait 30 s")),
            Step::Refused(Refused::TooManyGuesses { .. })
        ));
    }

    #[test]
    fn a_password_for_a_name_not_registered_is_dropped_for_a_plain_nick() {
        let mut login = Login::new("s", "carol", pw("whatever-it-is"));
        match login.on(&parse("ERR NOT_REGISTERED carol is not registered")) {
            Step::Guest(line) => assert_eq!(line, "NICK carol"),
            other => panic!("{other:?}"),
        }
        assert_eq!(login.line(), "NICK carol");
        assert!(matches!(login.on(&parse("OK NICK carol")), Step::Named(_)));
    }
}
