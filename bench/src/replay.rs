//! The replay scenario: how long a JOIN takes in a room holding a large history, and what
//! the server's CPU time is per JOIN and per replayed message.

use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::load::{new_histogram, payload, run_tag};
use crate::print::title;
use crate::report::{spread, table, thousands, Percentiles, Progress};
use crate::target::Target;
use crate::{system, Cli};

/// The text of the message that marks a room as completely filled.
const FILLED: &str = "bench-fill-complete";

#[derive(Debug, serde::Serialize)]
pub struct ReplayResult {
    pub room: String,
    /// Messages this run added (0 if the room was already full).
    pub filled: u64,
    pub fill_seconds: f64,
    pub join_us: Percentiles,
    /// `HIST` lines the timed JOINs received.
    pub replayed: u64,
    /// The server's CPU time (user + system) over the timed JOINs (each with its PART),
    /// per JOIN, and per replayed message.
    pub server_cpu_us_per_join: Option<f64>,
    pub server_cpu_ns_per_replayed_message: Option<f64>,
    /// That CPU time as a share of one core.
    pub server_cpu_share: Option<f64>,
}

/// Runs the scenario for the command line; fills `out` and prints the table unless the
/// output is JSON.
pub async fn scenario(cli: &Cli, progress: &Progress, out: &mut Value) -> Result<()> {
    if cli.target != Target::Linechat {
        bail!("replay needs stored history: NATS core keeps none (n/a)");
    }
    let history = cli.history.unwrap_or(1_000_000);
    let replay = cli.replay.unwrap_or(100);
    let joins = cli.joins.unwrap_or(500);
    let r = run(
        &cli.addr,
        history,
        replay,
        joins,
        cli.size.unwrap_or(64),
        cli.server_pid,
        progress,
    )
    .await?;
    out["result"] = json!(r);
    if cli.json {
        return Ok(());
    }
    let j = &r.join_us;
    let mut rows = vec![
        (
            "room".into(),
            format!("{} holding {} messages", r.room, history),
        ),
        (
            "filled".into(),
            if r.filled > 0 {
                format!(
                    "{} messages in {:.1} s ({} /s acknowledged)",
                    r.filled,
                    r.fill_seconds,
                    thousands(r.filled as f64 / r.fill_seconds)
                )
            } else {
                "already full".into()
            },
        ),
        (format!("JOIN ... LAST {replay} ({joins} joins)"), spread(j)),
    ];
    if let (Some(join), Some(msg), Some(share)) = (
        r.server_cpu_us_per_join,
        r.server_cpu_ns_per_replayed_message,
        r.server_cpu_share,
    ) {
        rows.push((
            "server CPU".into(),
            format!(
                "{join:.0} us per JOIN (with its PART), {msg:.0} ns per replayed message ({:.0}% of a core)",
                share * 100.0
            ),
        ));
    }
    table(&title(cli), &rows);
    Ok(())
}

/// A linechat connection driven line by line.
struct Conn {
    stream: BufReader<TcpStream>,
    line: String,
}

impl Conn {
    async fn open(addr: &str, nick: &str) -> Result<Conn> {
        let stream = TcpStream::connect(addr).await.context("connect")?;
        stream.set_nodelay(true)?;
        let mut c = Conn {
            stream: BufReader::new(stream),
            line: String::new(),
        };
        c.until("HELLO").await?;
        c.send(&format!("NICK {nick}\n")).await?;
        c.until("OK NICK").await?;
        Ok(c)
    }

    async fn send(&mut self, text: &str) -> Result<()> {
        self.stream.get_mut().write_all(text.as_bytes()).await?;
        Ok(())
    }

    /// Reads up to a line starting with `prefix`; returns how many lines came before it.
    async fn until(&mut self, prefix: &str) -> Result<usize> {
        let mut before = 0;
        loop {
            self.line.clear();
            if self.stream.read_line(&mut self.line).await? == 0 {
                bail!("connection closed while waiting for {prefix}");
            }
            if self.line.starts_with(prefix) {
                return Ok(before);
            }
            if self.line.starts_with("ERR ") || self.line.starts_with("BYE ") {
                bail!("server said {}", self.line.trim_end());
            }
            before += 1;
        }
    }
}

/// Fills `bench-replay-<history>` with `history` messages unless a previous run did, then
/// times `joins` JOINs that replay `replay` messages each.
pub async fn run(
    addr: &str,
    history: u64,
    replay: usize,
    joins: usize,
    size: usize,
    server_pid: Option<u32>,
    progress: &Progress,
) -> Result<ReplayResult> {
    let room = format!("bench-replay-{history}");
    let tag = run_tag();
    let mut filler = Conn::open(addr, &format!("{tag}_fill")).await?;
    filler.send(&format!("JOIN {room} LAST 1\n")).await?;
    let mut full = false;
    loop {
        filler.line.clear();
        if filler.stream.read_line(&mut filler.line).await? == 0 {
            bail!("connection closed while joining {room}");
        }
        if filler.line.starts_with("HIST ") && filler.line.trim_end().ends_with(FILLED) {
            full = true;
        }
        if filler.line.starts_with("OK JOIN") {
            break;
        }
        if filler.line.starts_with("ERR ") || filler.line.starts_with("BYE ") {
            bail!("server said {}", filler.line.trim_end());
        }
    }
    let (mut filled, mut fill_seconds) = (0, 0.0);
    if !full {
        let started = Instant::now();
        progress.start("filling", history);
        let epoch = Instant::now();
        let window = 1024u64;
        let (mut sent, mut acked) = (0u64, 0u64);
        let mut out = String::new();
        while acked < history {
            out.clear();
            while sent < history && sent - acked < window {
                let text = if sent + 1 == history {
                    FILLED.to_string()
                } else {
                    String::from_utf8(payload(epoch, size)).expect("ascii")
                };
                out.push_str("SAY ");
                out.push_str(&text);
                out.push('\n');
                sent += 1;
            }
            if !out.is_empty() {
                filler.send(&out).await?;
            }
            filler.until("OK SAY").await?;
            acked += 1;
            if acked % 1024 == 0 {
                progress.set(acked);
            }
        }
        progress.finish();
        filled = history;
        fill_seconds = started.elapsed().as_secs_f64();
    }
    drop(filler);

    let mut joiner = Conn::open(addr, &format!("{tag}_join")).await?;
    let mut times = new_histogram();
    let mut replayed = 0u64;
    progress.start("joining", joins as u64);
    let cpu_before = server_pid.map(system::cpu_seconds).transpose()?;
    let joins_started = Instant::now();
    for _ in 0..joins {
        let started = Instant::now();
        joiner.send(&format!("JOIN {room} LAST {replay}\n")).await?;
        let lines = joiner.until("OK JOIN").await?;
        times.saturating_record(started.elapsed().as_micros() as u64);
        if lines < replay.min(history as usize) {
            bail!("JOIN replayed {lines} messages, not {replay}");
        }
        replayed += lines as u64;
        joiner.send(&format!("PART {room}\n")).await?;
        joiner.until("OK PART").await?;
        progress.inc(1);
    }
    let cpu_after = server_pid.map(system::cpu_seconds).transpose()?;
    let seconds = joins_started.elapsed().as_secs_f64();
    progress.finish();
    let cpu = cpu_before.zip(cpu_after).map(|(b, a)| a - b);
    Ok(ReplayResult {
        room,
        filled,
        fill_seconds,
        join_us: Percentiles::of(&times),
        replayed,
        server_cpu_us_per_join: cpu.map(|c| c * 1e6 / joins.max(1) as f64),
        server_cpu_ns_per_replayed_message: cpu.map(|c| c * 1e9 / replayed.max(1) as f64),
        server_cpu_share: cpu.map(|c| c / seconds.max(1e-9)),
    })
}
