//! The connection to the server: sending commands, matching replies to them, and, when the
//! connection drops, reconnecting with backoff and catching up on every room from the last
//! id seen, so that the user sees each message exactly once.

use std::collections::{BTreeSet, VecDeque};
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

use crate::proto::{self, Event, Message};
use crate::secret::Secret;
use crate::target::Target;
use crate::tls::Tls;

mod connect;
mod login;
mod replies;

use connect::{is_permanent, open, what_happened, Conn, HELLO_NUDGE};
pub use login::Refused;
use login::{Login, Step};

/// What the link reports to the user interface.
#[derive(Debug)]
pub enum Update {
    /// A line from the server, after duplicates from catch-up were dropped.
    Event(Event),
    /// Our own message was stored: `OK SAY` with the text we said.
    Said(Message),
    /// A replayed message that came as the reply to `HISTORY` (not part of the live flow).
    Page(Message),
    /// Connected; `again` after a reconnect. `epoch`: the server's history epoch (`HELLO`),
    /// which the ids it sends belong to.
    Connected { again: bool, epoch: Option<String> },
    /// The resume point of `room` (after `since`) belongs to another history (the server's
    /// epoch differs: it restarted with a memory store, or is another database), so the room
    /// is joined with the default replay instead of `SINCE`.
    StaleResume { room: String, since: u64 },
    /// After a reconnect, every room is re-joined and what was missed has been shown:
    /// `messages` replayed over `rooms` rooms.
    CaughtUp { rooms: usize, messages: u64 },
    /// About to catch up on `room` from after `since`.
    CatchingUp { room: String, since: u64 },
    /// The server's history of `room` ends before the id we had seen (it was reset, as a
    /// memory-store server is by a restart): ids start again from `last_id`.
    HistoryReset { room: String, last_id: u64 },
    /// The connection is gone; `retry_in` is when the next attempt is, `None` if none is.
    Lost {
        reason: String,
        retry_in: Option<Duration>,
    },
    /// The link has stopped for good (after QUIT, or a failure it does not retry).
    Closed(Option<String>),
    /// A password was given for `nick`, which is not a registered name: it was not used, and
    /// the link goes on as a guest (and forgets the password).
    NotRegistered { nick: String },
}

/// How to join a room the first time.
#[derive(Debug, Clone)]
pub struct Join {
    pub room: String,
    /// The JOIN bound: "" (server default), "LAST n", "SINCE id" or "NONE".
    pub bound: String,
}

/// The server: its address as the user gave it (for messages and the state file), where that
/// leads, and TLS to it if the address asks for it.
#[derive(Debug, Clone)]
pub struct Server {
    pub shown: String,
    pub target: Target,
    pub tls: Option<Tls>,
}

impl std::fmt::Display for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)
    }
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub server: Server,
    pub nick: Option<String>,
    /// The password of `nick` if it is registered: kept (in memory only) to log in again
    /// after a reconnect, and replaced by `REGISTER`, `PASSWORD` or a `NICK` that succeed.
    pub password: Option<Secret>,
    pub joins: Vec<Join>,
    /// Reconnect after a drop (interactive and --follow); scripts fail instead.
    pub reconnect: bool,
    /// The history epoch that the joins' `SINCE` bounds were saved under (`None`: not known,
    /// so they are used as they are).
    pub epoch: Option<String>,
}

/// The room and bound of a `JOIN` line, if it is one.
fn join_args(line: &str) -> Option<(String, String)> {
    let (word, rest) = line.split_once(' ')?;
    if !word.eq_ignore_ascii_case("JOIN") {
        return None;
    }
    let (room, bound) = rest.trim().split_once(' ').unwrap_or((rest.trim(), ""));
    Some((room.to_string(), bound.trim().to_string()))
}

/// What a sent line is waiting for.
#[derive(Debug)]
enum Pending {
    Join {
        /// The SINCE bound sent, if any.
        since: Option<u64>,
        /// Re-joining after a reconnect (a refusal then means: try the connection again).
        rejoin: bool,
    },
    History,
    Say {
        room: Option<String>,
        text: String,
    },
    Quit,
    Ping,
    /// `NICK <name> [<password>]`: on `OK NICK` the password (or none, for a guest name) is
    /// the one to log in with from then on.
    Nick(Option<Secret>),
    /// `REGISTER <password>` or `PASSWORD <old> <new>`: on `OK`, the password from now on.
    NewPassword(Secret),
    Other,
}

/// A room joined, or being joined.
struct Room {
    name: String,
    /// The newest id shown from this room (0: none yet).
    last_id: u64,
    /// The server confirmed the join (`OK JOIN`). Until then a reconnect repeats the JOIN as
    /// first asked, rather than forget the room.
    confirmed: bool,
    /// The bound of the first JOIN.
    bound: String,
}

/// A handle for sending lines; dropping it (or sending QUIT) ends the link.
#[derive(Clone)]
pub struct Link {
    tx: mpsc::UnboundedSender<String>,
}

impl Link {
    /// Sends one protocol line (no line end).
    pub fn send(&self, line: impl Into<String>) {
        let _ = self.tx.send(line.into());
    }
}

/// Connects once (so that a wrong address or a name in use is an error here, before any
/// user interface starts) and runs the link in a task.
/// Room for updates not yet taken by the user interface.
pub const UPDATES: usize = 1024;

pub async fn start(settings: Settings, updates: mpsc::Sender<Update>) -> Result<Link> {
    let (tx, rx) = mpsc::unbounded_channel();
    let mut state = State {
        settings,
        rooms: Vec::new(),
        own: BTreeSet::new(),
        updates,
        backlog: VecDeque::new(),
        outbox: rx,
        outbox_open: true,
        pending: VecDeque::new(),
        quitting: false,
        bye: None,
        rejoins: None,
        epoch: None,
    };
    let conn = state.connect(false).await?;
    tokio::spawn(state.run(conn));
    Ok(Link { tx })
}

struct State {
    settings: Settings,
    rooms: Vec<Room>,
    /// Our own stored messages (room, id) not yet passed by the room's `last_id`: a catch-up
    /// replays them, and they were shown already.
    own: BTreeSet<(String, u64)>,
    /// Bounded: a consumer that falls behind (a `--follow` whose output is not read) stops
    /// this task reading the socket; the server then lets us lag and catches us up later,
    /// instead of memory growing here.
    updates: mpsc::Sender<Update>,
    /// Updates from the line being handled, handed on before the next line is read.
    backlog: VecDeque<Update>,
    outbox: mpsc::UnboundedReceiver<String>,
    /// False once every `Link` handle is gone.
    outbox_open: bool,
    pending: VecDeque<Pending>,
    quitting: bool,
    /// The reason of a `BYE` the server sent on this connection.
    bye: Option<String>,
    /// After a reconnect: re-joins not yet answered, and the messages they replayed.
    rejoins: Option<(usize, usize, u64)>,
    /// The history epoch of the server last connected to.
    epoch: Option<String>,
}

impl State {
    async fn report(&self, update: Update) {
        let _ = self.updates.send(update).await;
    }

    /// Queues an update of the line being handled (see `backlog`).
    fn queue(&mut self, update: Update) {
        self.backlog.push_back(update);
    }

    /// Connects, names itself and (re)joins its rooms: the first time with the requested
    /// bounds, after a reconnect from the last id seen in each room.
    async fn connect(&mut self, again: bool) -> Result<Conn> {
        let addr = self.settings.server.shown.clone();
        let stream = open(&self.settings.server).await?;
        let (read, mut write) = tokio::io::split(stream);
        let mut read = BufReader::new(read);
        let mut line = String::new();
        // A linechat server says HELLO at once. A TLS port says nothing until it hears a
        // ClientHello: nudged with a blank line (which a linechat server ignores), it answers
        // ERR TLS_REQUIRED, instead of the client waiting out its login timeout.
        if self.settings.server.tls.is_none()
            && tokio::time::timeout(HELLO_NUDGE, read.fill_buf())
                .await
                .is_err()
        {
            write.write_all(b"\n").await?;
            write.flush().await?;
        }
        if read
            .read_line(&mut line)
            .await
            .map_err(|e| anyhow!("{addr}: {}", what_happened(&e)))?
            == 0
        {
            bail!("{addr} accepted the connection and closed it before saying HELLO");
        }
        if line.starts_with("ERR TLS_REQUIRED") {
            return Err(Refused::TlsRequired { server: addr }.into());
        }
        if !line.starts_with("HELLO") {
            bail!(
                "{addr} is not a linechat server (it said {:?})",
                line.trim_end()
            );
        }
        // The ids we hold (saved, or seen on the last connection) belong to the history of
        // `held`; a server that names another epoch has another history.
        let epoch = proto::hello_epoch(line.trim_end());
        let held = if again {
            self.epoch.clone()
        } else {
            self.settings.epoch.clone()
        };
        let stale = matches!((&held, &epoch), (Some(h), Some(e)) if h != e);
        self.epoch = epoch.clone();
        self.pending.clear();
        self.bye = None;
        if let Some(nick) = self.settings.nick.clone() {
            let mut login = Login::new(&addr, &nick, self.settings.password.clone());
            write
                .write_all(format!("{}\n", login.line()).as_bytes())
                .await?;
            write.flush().await?;
            loop {
                line.clear();
                if read.read_line(&mut line).await? == 0 {
                    bail!("{addr} closed the connection before accepting the name");
                }
                match login.on(&proto::parse(line.trim_end_matches(['\r', '\n']))) {
                    Step::Wait => {}
                    Step::Named(name) => {
                        self.settings.nick = Some(name);
                        break;
                    }
                    Step::Guest(plain) => {
                        self.settings.password = None;
                        self.report(Update::NotRegistered { nick: nick.clone() })
                            .await;
                        write.write_all(format!("{plain}\n").as_bytes()).await?;
                        write.flush().await?;
                    }
                    Step::Refused(refused) => return Err(refused.into()),
                }
            }
        }
        self.report(Update::Connected { again, epoch }).await;
        if stale {
            self.own.clear();
        }
        if !again {
            for j in self.settings.joins.clone() {
                self.want(&j.room, &j.bound);
            }
        }
        // A confirmed room: everything after the last message seen (SINCE 0 for a room
        // still empty). One never confirmed: the JOIN as first asked. A resume point from
        // another history is dropped: that room is joined as new.
        let joins: Vec<(String, String, Option<u64>)> = self
            .rooms
            .iter_mut()
            .map(|r| {
                let bound = if r.confirmed {
                    format!("SINCE {}", r.last_id)
                } else {
                    r.bound.clone()
                };
                let since = bound.strip_prefix("SINCE ").and_then(|s| s.parse().ok());
                match since.filter(|_| stale) {
                    Some(dropped) => {
                        (r.last_id, r.confirmed, r.bound) = (0, false, String::new());
                        (r.name.clone(), String::new(), Some(dropped))
                    }
                    None => (r.name.clone(), bound, None),
                }
            })
            .collect();
        if again {
            self.rejoins = (!joins.is_empty()).then_some((joins.len(), joins.len(), 0));
        }
        for (room, bound, dropped) in joins {
            if let Some(since) = dropped.filter(|&s| s > 0) {
                self.report(Update::StaleResume {
                    room: room.clone(),
                    since,
                })
                .await;
            }
            let since = bound.strip_prefix("SINCE ").and_then(|s| s.parse().ok());
            if let Some(since) = since.filter(|&s| s > 0 || !again) {
                self.report(Update::CatchingUp {
                    room: room.clone(),
                    since,
                })
                .await;
            }
            write
                .write_all(format!("JOIN {room} {bound}\n").as_bytes())
                .await?;
            self.pending.push_back(Pending::Join {
                since,
                rejoin: again,
            });
        }
        write.flush().await?;
        Ok((read.lines(), write))
    }

    async fn run(mut self, conn: Conn) {
        let mut conn = Some(conn);
        let mut delay = Duration::from_millis(500);
        loop {
            let mut reason = match conn.take() {
                Some(c) => match self.serve(c).await {
                    Ok(()) => return self.report(Update::Closed(None)).await,
                    Err(e) => e.to_string(),
                },
                None => unreachable!(),
            };
            if self.quitting || !self.settings.reconnect {
                return self.report(Update::Closed(Some(reason))).await;
            }
            // Reconnect with backoff until it works.
            loop {
                self.report(Update::Lost {
                    reason: reason.clone(),
                    retry_in: Some(delay),
                })
                .await;
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
                match self.connect(true).await {
                    Ok(c) => {
                        conn = Some(c);
                        delay = Duration::from_millis(500);
                        break;
                    }
                    Err(e) if self.outbox.is_closed() => {
                        return self.report(Update::Closed(Some(e.to_string()))).await;
                    }
                    // A refused certificate or password stays refused: stop, and say why.
                    Err(e) if is_permanent(&e) => {
                        let reason = format!("{e:#}; not trying again");
                        return self.report(Update::Closed(Some(reason))).await;
                    }
                    // The next report says why this attempt failed (refused, reset...), not
                    // why the connection was lost in the first place.
                    Err(e) => reason = format!("{e:#}"),
                }
            }
        }
    }

    /// Runs one connection until it ends: `Ok` after our QUIT, `Err` when it was lost.
    async fn serve(&mut self, (mut read, mut write): Conn) -> Result<()> {
        loop {
            tokio::select! {
                line = read.next_line() => {
                    let line = match line {
                        // A TLS peer that closed without its close_notify: for a line
                        // protocol, the end of the connection all the same (a cut last line
                        // is not taken as a line).
                        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => None,
                        line => line.map_err(|e| anyhow!("{}", what_happened(&e)))?,
                    };
                    let Some(line) = line else {
                        if self.quitting {
                            return Ok(());
                        }
                        match &self.bye {
                            Some(reason) => bail!("the server closed the connection: {reason}"),
                            None => bail!("the server closed the connection without a BYE"),
                        }
                    };
                    let bye = self.on_line(line.trim_end_matches('\r'));
                    while let Some(update) = self.backlog.pop_front() {
                        self.report(update).await;
                    }
                    if bye? && self.quitting {
                        return Ok(());
                    }
                }
                out = self.outbox.recv(), if self.outbox_open => {
                    let Some(out) = out else {
                        // The user interface is gone: leave politely.
                        self.outbox_open = false;
                        self.quitting = true;
                        write.write_all(b"QUIT\n").await?;
                        write.flush().await?;
                        continue;
                    };
                    let pending = self.kind_of(&out);
                    if let Some((room, bound)) = join_args(&out) {
                        self.want(&room, &bound);
                    }
                    if matches!(pending, Pending::Quit) {
                        self.quitting = true;
                    }
                    self.pending.push_back(pending);
                    write.write_all(format!("{out}\n").as_bytes()).await?;
                    write.flush().await?;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_errors_say_what_happened() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(what_happened(&refused).contains("refused"));
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert!(what_happened(&reset).contains("reset"));
    }
}
