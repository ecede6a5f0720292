//! The interactive chat: a line editor whose input incoming messages never garble (they are
//! printed above it), slash commands, and a printer that turns server events into text.
//! Passwords are asked for with echo off (a registered name, `/register`, `/password`).

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use rustyline::error::ReadlineError;
use rustyline::{DefaultEditor, ExternalPrinter};
use tokio::sync::mpsc;

use crate::link::{self, Join, Link, Refused, Server, Settings, Update};
use crate::proto::{Event, Message};
use crate::render::{Format, Style};
use crate::secret::{self, Secret};
use crate::slash::{command, Input, HELP};
use crate::state::State;
use crate::Cli;

fn ask(editor: &mut DefaultEditor, prompt: &str) -> Result<String> {
    loop {
        match editor.readline(prompt) {
            Ok(answer) if !answer.trim().is_empty() => return Ok(answer.trim().to_string()),
            Ok(_) => {}
            Err(ReadlineError::Interrupted | ReadlineError::Eof) => bail!("cancelled"),
            Err(e) => return Err(e.into()),
        }
    }
}

/// What the input side needs to know: the rooms, current last.
type Rooms = Arc<Mutex<Vec<String>>>;

/// How many replies the output side has handled, so that the input side can wait for the
/// answer to a JOIN or PART before it draws the next prompt (which names the room).
#[derive(Default)]
struct Replies {
    count: Mutex<u64>,
    moved: std::sync::Condvar,
    /// A name the server answered `NICK_REGISTERED` for: the input side asks for its
    /// password and sends the NICK again.
    registered: Mutex<Option<String>>,
}

impl Replies {
    fn password_wanted(&self, name: String) {
        *self.registered.lock().expect("registered") = Some(name);
    }

    /// The registered name last asked for, once.
    fn take_password_wanted(&self) -> Option<String> {
        self.registered.lock().expect("registered").take()
    }

    fn handled(&self) {
        *self.count.lock().expect("replies") += 1;
        self.moved.notify_all();
    }

    /// Waiting is over for good.
    fn give_up(&self) {
        *self.count.lock().expect("replies") = u64::MAX / 2;
        self.moved.notify_all();
    }

    /// Waits (a little at most) until `n` replies were handled.
    fn wait_for(&self, n: u64) {
        let count = self.count.lock().expect("replies");
        let _ = self
            .moved
            .wait_timeout_while(count, Duration::from_secs(3), |c| *c < n);
    }
}

/// Asks for the password of `nick` (echo off); `None` if the user gave up (an empty line).
fn ask_password(nick: &str) -> Result<Option<Secret>> {
    Ok(secret::prompt(&format!(
        "{nick} is registered; password (Enter alone to choose another name): "
    ))?)
}

pub async fn run(cli: Cli, server: Server) -> Result<ExitCode> {
    let mut editor = DefaultEditor::new()?;
    let mut nick = match cli.nick.clone() {
        Some(nick) => nick,
        None => ask(&mut editor, "Your name: ")?,
    };
    let room = match cli.room.clone() {
        Some(room) => room,
        None => ask(&mut editor, "Room to join (for example 4): ")?,
    };
    // Given in the environment or a file, else asked for if the name turns out registered.
    let mut password = cli.password()?;
    let state = Arc::new(Mutex::new(State::load()));
    let (tx, updates) = mpsc::channel(link::UPDATES);
    let link = loop {
        let saved = state
            .lock()
            .expect("state")
            .last_id(&cli.server, &nick, &room);
        let (since, epoch) = saved.unzip();
        let settings = Settings {
            server: server.clone(),
            nick: Some(nick.clone()),
            password: password.clone(),
            joins: vec![Join {
                room: room.clone(),
                bound: since.map(|id| format!("SINCE {id}")).unwrap_or_default(),
            }],
            reconnect: true,
            epoch: epoch.flatten(),
        };
        let e = match link::start(settings, tx.clone()).await {
            Ok(link) => break link,
            Err(e) => e,
        };
        // A name in use: another name. A registered one: its password (or another name).
        let in_use = match e.downcast_ref::<Refused>() {
            Some(Refused::NameInUse { .. }) => {
                println!("{e}");
                true
            }
            Some(Refused::PasswordNeeded { .. }) => false,
            Some(Refused::WrongPassword { .. }) => {
                println!("! {e}");
                false
            }
            _ => return Err(e),
        };
        password = if in_use { None } else { ask_password(&nick)? };
        if password.is_none() {
            nick = ask(&mut editor, "Another name: ")?;
        }
    };
    let style = Style {
        format: Format::Plain,
        colour: std::io::stdout().is_terminal()
            && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
        rooms: false,
    };
    let rooms: Rooms = Arc::new(Mutex::new(Vec::new()));
    let replies = Arc::new(Replies::default());
    let printer = editor.create_external_printer()?;
    let mut view = View {
        style,
        printer,
        state: state.clone(),
        server: server.shown.clone(),
        nick,
        rooms: rooms.clone(),
        replies: replies.clone(),
        catching_up: Vec::new(),
        who: Vec::new(),
        listing: Vec::new(),
        saved: Instant::now(),
        epoch: None,
    };
    view.say(&style.notice(&format!(
        "* connected to {}; /help lists the commands",
        cli.server
    )));
    let input_link = link.clone();
    std::thread::spawn(move || read_input(editor, input_link, rooms, replies));
    let closed = view.run(updates).await;
    state.lock().expect("state").save();
    drop(link);
    match closed {
        None => Ok(ExitCode::SUCCESS),
        Some(reason) => {
            eprintln!("linechat-client: {reason}");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// The input side: reads lines and turns them into commands.
fn read_input(mut editor: DefaultEditor, link: Link, rooms: Rooms, replies: Arc<Replies>) {
    // Replies expected so far: the first JOIN's, then one per command sent.
    let mut expected = 1;
    replies.wait_for(expected);
    loop {
        let current = rooms.lock().expect("rooms").last().cloned();
        let prompt = match &current {
            Some(room) => format!("[{room}] "),
            None => "> ".to_string(),
        };
        match editor.readline(&prompt) {
            Ok(line) => {
                if line.trim().is_empty() {
                    continue;
                }
                let _ = editor.add_history_entry(line.as_str());
                match command(&line, current.as_deref()) {
                    Input::Send(line) => {
                        let moves = line.starts_with("JOIN ") || line.starts_with("PART");
                        link.send(line);
                        expected += 1;
                        if moves {
                            replies.wait_for(expected);
                        }
                    }
                    Input::Quit(line) => {
                        link.send(line);
                        return;
                    }
                    Input::Nick(name) => {
                        link.send(format!("NICK {name}"));
                        expected += 1;
                        replies.wait_for(expected);
                        // A registered name: its password, then the NICK again.
                        if replies.take_password_wanted().is_some_and(|n| n == name) {
                            if let Ok(Some(password)) = secret::prompt(&format!(
                                "Password for {name} (Enter alone to keep your name): "
                            )) {
                                link.send(format!("NICK {name} {}", password.expose()));
                                expected += 1;
                                replies.wait_for(expected);
                            }
                        }
                    }
                    Input::Register => {
                        match secret::prompt_new("Password for your name (not shown): ") {
                            Ok(Some(password)) => {
                                link.send(format!("REGISTER {}", password.expose()));
                                expected += 1;
                                replies.wait_for(expected);
                            }
                            Ok(None) => println!("* not registered"),
                            Err(e) => println!("! {e}"),
                        }
                    }
                    Input::Password => {
                        let asked =
                            secret::prompt("Current password (not shown): ").and_then(|old| {
                                match old {
                                    Some(old) => {
                                        Ok(secret::prompt_new("New password: ")?
                                            .map(|new| (old, new)))
                                    }
                                    None => Ok(None),
                                }
                            });
                        match asked {
                            Ok(Some((old, new))) => {
                                link.send(format!("PASSWORD {} {}", old.expose(), new.expose()));
                                expected += 1;
                                replies.wait_for(expected);
                            }
                            Ok(None) => println!("* password not changed"),
                            Err(e) => println!("! {e}"),
                        }
                    }
                    Input::Help => {
                        for h in HELP {
                            println!("{h}");
                        }
                    }
                    Input::Problem(text) => println!("{text}"),
                }
            }
            Err(ReadlineError::Interrupted | ReadlineError::Eof) => {
                link.send("QUIT");
                return;
            }
            Err(e) => {
                eprintln!("linechat-client: {e}");
                link.send("QUIT");
                return;
            }
        }
    }
}

/// The output side: turns updates into lines above the input.
struct View<P: ExternalPrinter> {
    style: Style,
    printer: P,
    state: Arc<Mutex<State>>,
    server: String,
    nick: String,
    rooms: Rooms,
    replies: Arc<Replies>,
    /// Rooms being caught up on, with the messages shown so far.
    catching_up: Vec<(String, usize)>,
    who: Vec<String>,
    listing: Vec<String>,
    saved: Instant,
    /// The server's history epoch, which the ids shown belong to.
    epoch: Option<String>,
}

impl<P: ExternalPrinter> View<P> {
    fn say(&mut self, line: &str) {
        // With its line end: between two prompts the printer writes the text as it is.
        let _ = self.printer.print(format!("{line}\n"));
    }

    fn notice(&mut self, text: &str) {
        let line = self.style.notice(text);
        self.say(&line);
    }

    fn show(&mut self, m: &Message) {
        let line = self.style.message(m);
        self.say(&line);
        let mut state = self.state.lock().expect("state");
        state.shown(
            &self.server,
            &self.nick,
            &m.room,
            m.id,
            self.epoch.as_deref(),
        );
        if self.saved.elapsed() > Duration::from_secs(2) {
            state.save();
            self.saved = Instant::now();
        }
    }

    /// Runs until the link closes; returns why, if it was not our own QUIT.
    async fn run(&mut self, mut updates: mpsc::Receiver<Update>) -> Option<String> {
        while let Some(update) = updates.recv().await {
            match update {
                Update::Event(event) => self.on_event(event),
                Update::Said(m) => {
                    self.show(&m);
                    self.replies.handled();
                }

                Update::Page(m) => {
                    let line = self.style.message(&m);
                    self.say(&line);
                }
                Update::Connected { again: true, epoch } => {
                    self.epoch = epoch;
                    // Replies of the old connection are gone and re-joins add new ones: the
                    // count no longer matches, so stop waiting on it.
                    self.replies.give_up();
                    self.notice("* reconnected; catching up");
                }
                Update::CaughtUp { rooms, messages } => self.notice(&format!(
                    "* caught up: {messages} missed message{} in {rooms} room{}",
                    if messages == 1 { "" } else { "s" },
                    if rooms == 1 { "" } else { "s" }
                )),
                Update::HistoryReset { room, last_id } => {
                    self.state.lock().expect("state").reset(
                        &self.server,
                        &self.nick,
                        &room,
                        last_id,
                        self.epoch.as_deref(),
                    );
                    self.notice(&format!(
                        "* the server's history of {room} was reset; what you saw before is gone"
                    ));
                }
                Update::Connected {
                    again: false,
                    epoch,
                } => self.epoch = epoch,
                Update::StaleResume { room, since } => {
                    self.state.lock().expect("state").reset(
                        &self.server,
                        &self.nick,
                        &room,
                        0,
                        self.epoch.as_deref(),
                    );
                    self.notice(&format!(
                        "* {room}: the server's history is not the one you last saw (it was restarted or replaced), so #{since} means nothing there; showing its recent messages instead"
                    ));
                }
                Update::CatchingUp { room, since } => {
                    self.notice(&format!(
                        "--- {room}: what was said while you were away (after #{since}) ---"
                    ));
                    self.catching_up.push((room, 0));
                }
                Update::Lost { reason, retry_in } => self.notice(&format!(
                    "* disconnected: {reason}; trying again in {:.1}s",
                    retry_in.unwrap_or_default().as_secs_f32()
                )),
                Update::Closed(reason) => return reason,
                Update::NotRegistered { nick } => self.notice(&format!(
                    "* {nick} is not a registered name, so the password was not used; you are a guest (/register registers it)"
                )),
            }
        }
        None
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::Message { message, .. } => {
                if let Some(c) = self.catching_up.iter_mut().find(|c| c.0 == message.room) {
                    c.1 += 1;
                }
                self.show(&message);
            }
            Event::Ok { command, rest } => {
                self.on_ok(&command, &rest);
                self.replies.handled();
            }
            Event::Err { code, text } => {
                if code == "NICK_REGISTERED" {
                    let name = text.split(' ').next().unwrap_or_default().to_string();
                    self.notice(&format!("* {name} is a registered name"));
                    self.replies.password_wanted(name);
                } else {
                    self.notice(&format!("! {code}: {text}"));
                }
                self.replies.handled();
            }
            Event::Joined { room, nick } => self.notice(&format!("* {nick} joined {room}")),
            Event::Left { room, nick } => self.notice(&format!("* {nick} left {room}")),
            Event::Renamed { room, old, new } => {
                self.notice(&format!("* {old} is now {new} (in {room})"))
            }
            Event::Member { nick, .. } => self.who.push(nick),
            Event::Room { room, members } => self.listing.push(format!("{room} ({members})")),
            Event::Bye(reason) => self.notice(&format!("* the server said goodbye: {reason}")),
            Event::Lagged { room, .. } => self.notice(&format!(
                "* fell behind in {room}; catching up from history"
            )),
            Event::Missed { room, first, last } => self.notice(&format!(
                "* messages {first} to {last} in {room} are no longer in the server's history"
            )),
            Event::Pong(_) | Event::Hello(_) | Event::Help(_) => {}
            Event::Other(line) => self.say(&line),
        }
    }

    fn on_ok(&mut self, command: &str, rest: &[String]) {
        let first = rest.first().cloned().unwrap_or_default();
        match command {
            "JOIN" => {
                {
                    let mut rooms = self.rooms.lock().expect("rooms");
                    rooms.retain(|r| *r != first);
                    rooms.push(first.clone());
                    self.style.rooms = rooms.len() > 1;
                }
                match self.catching_up.iter().position(|c| c.0 == first) {
                    Some(i) => {
                        let (room, n) = self.catching_up.remove(i);
                        let what = match n {
                            0 => "nothing new".to_string(),
                            1 => "1 new message".to_string(),
                            n => format!("{n} new messages"),
                        };
                        self.notice(&format!("--- {room}: {what}; now live ---"));
                    }
                    None => self.notice(&format!("* you joined {first}; you talk here now")),
                }
                self.state.lock().expect("state").save();
            }
            "PART" => {
                let mut rooms = self.rooms.lock().expect("rooms");
                rooms.retain(|r| *r != first);
                self.style.rooms = rooms.len() > 1;
                let now = rooms.last().cloned();
                drop(rooms);
                match now {
                    Some(room) => self.notice(&format!("* you left {first}; you talk in {room}")),
                    None => self.notice(&format!("* you left {first}; /join a room to talk")),
                }
            }
            "NICK" => {
                self.nick = first.clone();
                self.notice(&format!("* you are now {first}"));
            }
            "WHO" => {
                let who = std::mem::take(&mut self.who).join(", ");
                self.notice(&format!("* in {first}: {who}"));
            }
            "ROOMS" => {
                let listing = std::mem::take(&mut self.listing);
                if listing.is_empty() {
                    self.notice("* no room has anyone in it");
                } else {
                    self.notice(&format!("* rooms: {}", listing.join(", ")));
                }
            }
            "HISTORY" => self.notice("--- end of history ---"),
            "REGISTER" => self.notice(&format!(
                "* {first} is registered: from now on it takes your password"
            )),
            "PASSWORD" => self.notice("* your password is changed"),
            "PRIVATE" => self.notice(&format!(
                "* {first} is members-only now: /invite <name> lets someone in"
            )),
            "PUBLIC" => self.notice(&format!("* {first} is open to everyone again")),
            "INVITE" => self.notice(&format!(
                "* {} may join {first} now",
                rest.get(1).map_or("", String::as_str)
            )),
            "UNINVITE" => self.notice(&format!(
                "* {} is no longer a member of {first}",
                rest.get(1).map_or("", String::as_str)
            )),
            _ => {}
        }
    }
}
