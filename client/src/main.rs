//! linechat-client: a terminal client for linechat.
//!
//! On a terminal it is an interactive chat (line editing that incoming messages never garble,
//! local times, coloured nicks, slash commands, reconnect with catch-up). With input from a
//! pipe it says each line in `--room` and exits once all are acknowledged. `--history N` and
//! `--follow` print a room's messages for scripts.

mod interactive;
mod link;
mod proto;
mod render;
mod state;

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::Parser;
use linechat::budget::{Limit, Millis, TokenBucket};
use tokio::io::AsyncBufReadExt;
use tokio::sync::mpsc;

use link::{Join, Settings, Update};
use proto::Event;
use render::{Format, Style};

/// Chat on a linechat server from a terminal, or from a script.
#[derive(Parser, Debug, Clone)]
#[command(version, about)]
pub struct Cli {
    /// Server address.
    #[arg(long, env = "LINECHAT_SERVER", default_value = "127.0.0.1:7777")]
    server: String,
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
    let result = if cli.history.is_some() || cli.follow {
        read_room(&cli).await
    } else if std::io::stdin().is_terminal() {
        interactive::run(cli.clone()).await
    } else {
        say_lines(&cli).await
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
async fn say_lines(cli: &Cli) -> Result<ExitCode> {
    let room = cli.room()?;
    let Some(nick) = cli.nick.clone() else {
        bail!("--nick is needed when input is not a terminal (who is speaking?)");
    };
    let style = cli.style();
    let (tx, mut updates) = mpsc::channel(link::UPDATES);
    let link = link::start(
        Settings {
            server: cli.server.clone(),
            nick: Some(nick),
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
async fn read_room(cli: &Cli) -> Result<ExitCode> {
    let room = cli.room()?;
    let style = cli.style();
    let mut stdout = std::io::stdout();
    if !cli.follow {
        let n = cli.history.unwrap_or(0);
        let (tx, mut updates) = mpsc::channel(link::UPDATES);
        let link = link::start(
            Settings {
                server: cli.server.clone(),
                nick: None,
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
            server: cli.server.clone(),
            nick: Some(nick),
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
            Update::Closed(reason) => bail!("connection closed: {}", reason.unwrap_or_default()),
            _ => {}
        }
    }
    Ok(ExitCode::SUCCESS)
}
