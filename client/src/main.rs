//! linechat-client: a terminal client for linechat.
//!
//! On a terminal it is an interactive chat (line editing that incoming messages never garble,
//! local times, coloured nicks, slash commands, reconnect with catch-up). With input from a
//! pipe it says each line in `--room` and exits once all are acknowledged. `--history N` and
//! `--follow` print a room's messages for scripts. `tls://` servers are reached over TLS, and
//! a registered name logs in with its password (asked for, or from the environment or a file).

mod interactive;
mod link;
mod proto;
mod render;
mod secret;
mod slash;
mod state;
mod target;
mod tls;

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::Parser;
use linechat::budget::{Limit, Millis, TokenBucket};
use tokio::io::AsyncBufReadExt;
use tokio::sync::mpsc;

use link::{Join, Server, Settings, Update};
use proto::Event;
use render::{Format, Style};
use secret::Secret;
use target::Target;
use tls::Tls;

const AFTER_HELP: &str = "\
Passwords: a registered name needs its password. On a terminal the client asks for it (not
echoed), and /register and /password ask too. A script gives it in the environment variable
LINECHAT_PASSWORD or in --password-file (its first line); never as a flag value, which other
users could read in `ps`. The password is kept in memory only, to log in again after a
reconnect; it is never written to the state file.

Examples:
  linechat-client --server tls://chat.example.org:7443
  linechat-client --server tls://127.0.0.1:7443 --ca ca.pem --nick alice --room 4
  echo 'build finished' | LINECHAT_PASSWORD=... linechat-client --server tls://chat.example.org \\
      --nick ci-bot --room builds
";

/// Chat on a linechat server from a terminal, or from a script.
#[derive(Parser, Debug, Clone)]
#[command(version, about, after_help = AFTER_HELP)]
pub struct Cli {
    /// Server address: host:port for plain TCP, tls://host:port for TLS (the port defaults to
    /// 7777, or 7443 with TLS).
    #[arg(long, env = "LINECHAT_SERVER", default_value = "127.0.0.1:7777")]
    server: String,
    /// Speak TLS to a --server given as host:port (the same as writing tls://host:port).
    #[arg(long, env = "LINECHAT_TLS", value_parser = clap::builder::BoolishValueParser::new())]
    tls: bool,
    /// With TLS: trust only the CA certificate(s) in this PEM file, instead of the system's
    /// (/etc/ssl/certs). The server's certificate must name the host of --server either way.
    #[arg(long, env = "LINECHAT_CA", value_name = "PEM")]
    ca: Option<PathBuf>,
    /// Read the password of a registered --nick from the first line of this file (or set
    /// LINECHAT_PASSWORD; on a terminal it is asked for).
    #[arg(long, env = "LINECHAT_PASSWORD_FILE", value_name = "PATH")]
    password_file: Option<PathBuf>,
    /// Your name (asked for when interactive and not given).
    #[arg(long, env = "LINECHAT_NICK")]
    nick: Option<String>,
    /// The room to join (asked for when interactive and not given).
    #[arg(long, env = "LINECHAT_ROOM")]
    room: Option<String>,
    /// Output format for scripts.
    #[arg(long, value_enum, default_value_t = Format::Plain)]
    format: Format,
    /// Print the last N messages of --room and exit (with --follow: then keep printing).
    #[arg(long, value_name = "N")]
    history: Option<usize>,
    /// Keep printing the live messages of --room.
    #[arg(long)]
    follow: bool,
    /// With piped input: lines a second to send, after a burst of twice as many (0: as fast
    /// as the server takes them). The default keeps within a linechat server's default flood
    /// limit (20 a second, burst 40).
    #[arg(long, env = "LINECHAT_CLIENT_RATE", default_value_t = 20)]
    rate: u32,
}

/// Paces piped lines with the server's own token bucket (`linechat::budget`), so that a
/// script never sends faster than the server takes lines.
struct Pace {
    /// `None`: no pacing.
    limit: Option<Limit>,
    bucket: TokenBucket,
}

impl Pace {
    /// `rate` lines a second after a burst of twice as many, of which `spent` have already
    /// been sent (the NICK and JOIN of the connection).
    fn new(rate: u32, spent: u32) -> Pace {
        let burst = rate.saturating_mul(2);
        let limit = Limit::per_second(rate, burst);
        let bucket = match &limit {
            Some(limit) => {
                TokenBucket::with_tokens(limit, burst.saturating_sub(spent), Millis::now())
            }
            None => TokenBucket::default(),
        };
        Pace { limit, bucket }
    }

    /// True if a line may go now (and takes its token).
    fn take(&mut self) -> bool {
        match &self.limit {
            Some(limit) => self.bucket.try_take(limit, Millis::now()),
            None => true,
        }
    }

    /// When the next line may go.
    fn next_at(&self) -> tokio::time::Instant {
        let wait = match &self.limit {
            Some(limit) => self.bucket.until_next(limit, Millis::now()),
            None => std::time::Duration::ZERO,
        };
        tokio::time::Instant::now() + wait
    }
}

impl Cli {
    fn style(&self) -> Style {
        let colour = self.format == Format::Plain
            && std::io::stdout().is_terminal()
            && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
        Style {
            format: self.format,
            colour,
            rooms: false,
        }
    }

    /// The server to connect to, with TLS set up if its address asks for it.
    fn endpoint(&self) -> Result<Server> {
        let target = Target::parse(&self.server, self.tls)?;
        let tls = match (target.tls, &self.ca) {
            (true, ca) => Some(Tls::new(&target.host, ca.as_deref())?),
            (false, Some(_)) => bail!(
                "--ca is for TLS, and --server {} is plain TCP: use tls://{} or add --tls",
                self.server,
                self.server
            ),
            (false, None) => None,
        };
        Ok(Server {
            shown: self.server.clone(),
            target,
            tls,
        })
    }

    /// The password given for --nick (LINECHAT_PASSWORD or --password-file), if any.
    fn password(&self) -> Result<Option<Secret>> {
        let env = std::env::var(secret::ENV).ok();
        Ok(secret::given(self.password_file.as_deref(), env)?)
    }

    fn room(&self) -> Result<String> {
        match &self.room {
            Some(room) => Ok(room.clone()),
            None => bail!("--room is needed here (which room?)"),
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.endpoint() {
        Err(e) => Err(e),
        Ok(server) if cli.history.is_some() || cli.follow => read_room(&cli, server).await,
        Ok(server) if std::io::stdin().is_terminal() => interactive::run(cli.clone(), server).await,
        Ok(server) => say_lines(&cli, server).await,
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("linechat-client: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Scripted: each input line is said in --room; exits once every line is acknowledged.
async fn say_lines(cli: &Cli, server: Server) -> Result<ExitCode> {
    let room = cli.room()?;
    let Some(nick) = cli.nick.clone() else {
        bail!("--nick is needed when input is not a terminal (who is speaking?)");
    };
    let style = cli.style();
    let (tx, mut updates) = mpsc::channel(link::UPDATES);
    let link = link::start(
        Settings {
            server,
            nick: Some(nick),
            password: cli.password()?,
            joins: vec![Join {
                room: room.clone(),
                bound: "NONE".into(),
            }],
            reconnect: false,
            epoch: None,
        },
        tx,
    )
    .await?;
    let mut input = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    // A line read but not yet sent, waiting for its turn.
    let mut waiting: Option<String> = None;
    // Kept under the server's flood limit, with its NICK and JOIN (and a spare) counted.
    let mut pace = Pace::new(cli.rate, 3);
    let (mut sent, mut answered, mut refused) = (0u64, 0u64, 0u64);
    let mut eof = false;
    let mut joined = false;
    let mut stdout = std::io::stdout();
    loop {
        if eof && joined && waiting.is_none() && answered == sent {
            break;
        }
        if joined && waiting.is_some() && pace.take() {
            let line = waiting.take().unwrap_or_default();
            link.send(format!("SAY {line}"));
            sent += 1;
        }
        tokio::select! {
            line = input.next_line(), if !eof && joined && waiting.is_none() => match line? {
                Some(line) if line.trim().is_empty() => {}
                Some(line) => waiting = Some(line),
                None => eof = true,
            },
            _ = tokio::time::sleep_until(pace.next_at()), if joined && waiting.is_some() => {}
            update = updates.recv() => match update {
                Some(Update::Said(m)) => {
                    answered += 1;
                    writeln!(stdout, "{}", style.message(&m))?;
                }
                Some(Update::Event(Event::Message { message, .. })) => {
                    writeln!(stdout, "{}", style.message(&message))?;
                }
                Some(Update::Event(Event::Ok { command, .. })) if command == "JOIN" => joined = true,
                Some(Update::Event(Event::Err { code, text })) => {
                    if !joined {
                        bail!("cannot join {room}: {code} {text}");
                    }
                    answered += 1;
                    refused += 1;
                    eprintln!("linechat-client: refused: {code} {text}");
                }
                Some(Update::Event(Event::Bye(reason))) => bail!("the server closed: {reason}"),
                Some(Update::Closed(reason)) => {
                    bail!("connection lost{}", reason.map(|r| format!(": {r}")).unwrap_or_default())
                }
                Some(Update::Lost { reason, .. }) => bail!("connection lost: {reason}"),
                Some(Update::NotRegistered { nick }) => not_registered(&nick, &cli.server),
                None => bail!("connection lost"),
                Some(_) => {}
            },
        }
    }
    stdout.flush()?;
    link.send("QUIT");
    // Wait for the goodbye, briefly: everything is acknowledged already.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        while let Some(u) = updates.recv().await {
            if matches!(u, Update::Closed(_)) {
                break;
            }
        }
    })
    .await;
    Ok(if refused == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `--history N` and/or `--follow`: print a room's messages.
async fn read_room(cli: &Cli, server: Server) -> Result<ExitCode> {
    let room = cli.room()?;
    let style = cli.style();
    let mut stdout = std::io::stdout();
    if !cli.follow {
        let n = cli.history.unwrap_or(0);
        let (tx, mut updates) = mpsc::channel(link::UPDATES);
        let link = link::start(
            Settings {
                server: server.clone(),
                nick: None,
                password: None,
                joins: Vec::new(),
                reconnect: false,
                epoch: None,
            },
            tx,
        )
        .await?;
        // Page backwards until N messages or the start of the room.
        let mut messages: Vec<proto::Message> = Vec::new();
        let mut before: Option<u64> = None;
        while messages.len() < n {
            let want = (n - messages.len()).min(500);
            let bound = before.map(|b| format!(" BEFORE {b}")).unwrap_or_default();
            link.send(format!("HISTORY {room} LIMIT {want}{bound}"));
            let mut page = Vec::new();
            loop {
                match updates.recv().await {
                    Some(Update::Page(m)) => page.push(m),
                    Some(Update::Event(Event::Ok { command, .. })) if command == "HISTORY" => break,
                    Some(Update::Event(Event::Err { code, text })) => bail!("{code} {text}"),
                    Some(Update::Closed(reason)) => {
                        bail!("connection lost: {}", reason.unwrap_or_default())
                    }
                    None => bail!("connection lost"),
                    Some(_) => {}
                }
            }
            let got = page.len();
            before = page.first().map(|m| m.id);
            page.extend(messages);
            messages = page;
            if got == 0 {
                break;
            }
        }
        for m in &messages {
            writeln!(stdout, "{}", style.message(m))?;
        }
        link.send("QUIT");
        return Ok(ExitCode::SUCCESS);
    }
    // Following needs a name to join with.
    let nick = cli
        .nick
        .clone()
        .unwrap_or_else(|| format!("follow-{}", std::process::id() % 100_000));
    let bound = match cli.history {
        Some(n) => format!("LAST {n}"),
        None => "NONE".into(),
    };
    let (tx, mut updates) = mpsc::channel(link::UPDATES);
    let _link = link::start(
        Settings {
            server,
            nick: Some(nick),
            password: cli.password()?,
            joins: vec![Join { room, bound }],
            reconnect: true,
            epoch: None,
        },
        tx,
    )
    .await?;
    while let Some(update) = updates.recv().await {
        match update {
            Update::Event(Event::Message { message, .. }) => {
                writeln!(stdout, "{}", style.message(&message))?;
                stdout.flush()?;
            }
            Update::Lost { reason, retry_in } => eprintln!(
                "linechat-client: disconnected: {reason}; trying again in {:.1}s",
                retry_in.unwrap_or_default().as_secs_f32()
            ),
            Update::Connected { again: true, .. } => {
                eprintln!("linechat-client: reconnected to {}; catching up", cli.server)
            }
            Update::CaughtUp { messages, .. } => {
                eprintln!("linechat-client: caught up ({messages} missed messages)")
            }
            Update::StaleResume { room, since } => eprintln!(
                "linechat-client: {room}: the server's history is another one now (restarted or replaced), so #{since} means nothing there; its recent messages follow"
            ),
            Update::Event(Event::Missed { room, first, last }) => eprintln!(
                "linechat-client: messages {first} to {last} in {room} are no longer in the server's history"
            ),
            Update::Event(Event::Err { code, text }) => bail!("{code} {text}"),
            Update::NotRegistered { nick } => not_registered(&nick, &cli.server),
            Update::Closed(reason) => bail!("connection closed: {}", reason.unwrap_or_default()),
            _ => {}
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A password was given for a name that is not registered: it was not used.
fn not_registered(nick: &str, server: &str) {
    eprintln!(
        "linechat-client: {nick} is not a registered name on {server}: the password was not used; going on as a guest"
    );
}
