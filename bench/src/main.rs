//! linechat-bench: drives a running linechat (or NATS) server over real TCP (or TLS, or
//! WebSocket) and reports throughput, latency, lost deliveries, connect time, server memory
//! and, with --server-pid, the server's CPU time (per delivery, per connection, per JOIN);
//! and TLS handshakes per second.
//!
//! Run the load generator on a core of its own, away from the server:
//! `taskset -c 1 linechat-bench fanout --server-pid $(pgrep -n linechat)`.

mod chat;
mod cluster;
mod cluster_check;
mod handshakes;
mod idle;
mod lines;
mod load;
mod logins;
mod payload;
mod plot;
mod print;
mod replay;
mod report;
mod system;
mod target;
mod transport;
mod ws;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Result};
use clap::{Parser, ValueEnum};
use serde_json::json;

use load::Load;
use print::{print_handshakes, print_load, series_of};
use report::{micros, table, Progress};
use target::Target;
use transport::{Cipher, TlsClient, Transport};

/// Benchmark a linechat server (or NATS, for comparison) over real TCP.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// What to measure (each sets the defaults below; any flag overrides them).
    #[arg(value_enum)]
    scenario: Scenario,

    /// The kind of server at --addr.
    #[arg(long, value_enum, default_value_t = Target::Linechat)]
    target: Target,

    /// Server address.
    #[arg(long, default_value = "127.0.0.1:7777")]
    addr: String,

    /// The server's process id, to report its memory (RSS) and CPU time (every scenario).
    #[arg(long)]
    server_pid: Option<u32>,

    /// The server's TLS listener. fanout, bigroom and persist then run twice, over plain TCP
    /// at --addr and over TLS here, and report both side by side; handshakes needs it.
    #[arg(long, requires = "ca")]
    tls_addr: Option<String>,
    /// PEM file of the CA (or the self-signed certificate) the TLS client trusts.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// The name the server's certificate must be for.
    #[arg(long, default_value = "localhost")]
    server_name: String,
    /// The TLS 1.3 cipher suite to offer (default: rustls's order, AES-256-GCM first).
    #[arg(long, value_enum, default_value_t = Cipher::Default)]
    tls_cipher: Cipher,
    /// With --tls-addr: run over TLS only, not over plain TCP as well (idle: over TLS).
    #[arg(long, requires = "tls_addr", conflicts_with = "ws_only")]
    tls_only: bool,

    /// The server's HTTP listener: fanout, bigroom and persist then also run over a WebSocket
    /// to ws://ADDR/ws per client (a text frame a line), reported beside plain TCP.
    #[arg(long)]
    ws_addr: Option<String>,
    /// With --ws-addr: run over WebSocket only (idle: over WebSocket).
    #[arg(long, requires = "ws_addr")]
    ws_only: bool,

    /// Rooms (subjects, for NATS).
    #[arg(long)]
    rooms: Option<usize>,
    /// Clients per room, senders included (chat: members per room).
    #[arg(long)]
    clients: Option<usize>,
    /// Senders per room.
    #[arg(long)]
    senders: Option<usize>,
    /// Messages per sender (chat: per room).
    #[arg(long)]
    messages: Option<u64>,
    /// Messages per second per sender (0: as fast as possible; chat: per room, default 0.5).
    #[arg(long)]
    rate: Option<f64>,
    /// Seconds to send at --rate (sets --messages; chat: 20).
    #[arg(long)]
    duration: Option<f64>,
    /// Payload bytes; each payload starts with its send time.
    #[arg(long)]
    size: Option<usize>,
    /// Unacknowledged messages per sender (linechat acks every message).
    #[arg(long, default_value_t = 256)]
    window: u64,

    /// idle, chat: connections to open (chat: by default half the memberships, rooms x
    /// clients, so that a connection is in two rooms on average).
    #[arg(long)]
    connections: Option<usize>,
    /// replay: messages the room holds.
    #[arg(long)]
    history: Option<u64>,
    /// replay: messages each JOIN replays.
    #[arg(long)]
    replay: Option<usize>,
    /// replay: JOINs to time.
    #[arg(long)]
    joins: Option<usize>,

    /// latency: password logins a second beside the chat load (each a new connection that
    /// logs in to a registered name and quits): what argon2 checks cost chat latency.
    #[arg(long, default_value_t = 0.0)]
    logins: f64,

    /// latency: per-sender rates to sweep for --plot (offered load on the x axis).
    #[arg(long, value_delimiter = ',')]
    sweep: Vec<f64>,
    /// Draw latency percentiles against offered load into this SVG file (latency scenario).
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Also read series from earlier --json outputs of latency sweeps, for one combined plot.
    #[arg(long)]
    plot_with: Vec<PathBuf>,
    /// Only draw --plot from the --plot-with files; run nothing.
    #[arg(long, requires = "plot")]
    plot_only: bool,

    /// cluster: the servers' addresses, comma-separated (default: --addr alone).
    #[arg(long, value_delimiter = ',')]
    nodes: Vec<String>,
    /// cluster: every server's process id, comma-separated; their CPU times are summed.
    #[arg(long, value_delimiter = ',')]
    server_pids: Vec<u32>,
    /// cluster: the database's postmaster; its CPU time and its children's is reported.
    #[arg(long)]
    postmaster_pid: Option<u32>,
    /// cluster: messages per second per room, shared by its senders (0: full speed).
    #[arg(long, default_value_t = 0.0)]
    room_rate: f64,

    /// Seconds without any progress before giving up on missing deliveries.
    #[arg(long, default_value_t = 20)]
    patience: u64,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
enum Scenario {
    /// 10 rooms x 50 clients, 2 senders x 2,000 messages of 64 bytes, full speed.
    Fanout,
    /// 1 room x 500 clients, 1 sender x 5,000 messages.
    Bigroom,
    /// 10 rooms x 50 clients, 1 sender per room at 200 messages/s for 10 s.
    Latency,
    /// 5,000 idle connections over 50 rooms: server memory per connection.
    Idle,
    /// JOIN latency in a room of 1,000,000 messages, replaying 100 (linechat only).
    Replay,
    /// Acknowledged (stored) messages per second from many concurrent senders.
    Persist,
    /// New connections per second to HELLO by 16 clients for 10 s: full TLS handshakes at
    /// --tls-addr, and plain TCP at --addr for comparison; server CPU per connection.
    Handshakes,
    /// Servers on one database (--nodes): 10 rooms x 48 members spread over them, 3 senders
    /// per room x 2,000 messages, full speed (or --room-rate); every delivery checked.
    Cluster,
    /// A real chat server's shape: 5,000 connections in 1,000 rooms of 10 members (two rooms
    /// per connection on average), each room saying one message every 2 s from a random
    /// member, for 20 s; every delivery checked (see bench/src/chat.rs).
    Chat,
}

impl Cli {
    /// The transports to run over, each with its address: plain TCP at --addr (unless
    /// --tls-only or --ws-only), then TLS at --tls-addr if given (unless --ws-only), then
    /// WebSocket at --ws-addr if given (unless --tls-only).
    fn transports(&self, resume: bool) -> Result<Vec<(Transport, String)>> {
        let mut out = Vec::new();
        if !self.tls_only && !self.ws_only {
            out.push((Transport::Plain, self.addr.clone()));
        }
        if let (Some(addr), Some(ca), false) = (&self.tls_addr, &self.ca, self.ws_only) {
            let tls = TlsClient::new(ca, &self.server_name, resume, self.tls_cipher)?;
            out.push((Transport::Tls(tls), addr.clone()));
        }
        if let (Some(addr), false) = (&self.ws_addr, self.tls_only) {
            out.push((Transport::Ws, addr.clone()));
        }
        Ok(out)
    }

    /// The one transport of a scenario that measures a single server state (idle): TLS with
    /// --tls-only, WebSocket with --ws-only, else plain TCP (two in one server would mix
    /// their memory).
    fn transport(&self) -> Result<(Transport, String)> {
        Ok(match (self.tls_only, self.ws_only) {
            (true, _) | (_, true) => self.transports(true)?.remove(0),
            _ => (Transport::Plain, self.addr.clone()),
        })
    }

    fn load(&self) -> Load {
        let (rooms, clients, senders, messages, rate) = match self.scenario {
            Scenario::Fanout => (10, 50, 2, 2000, 0.0),
            Scenario::Bigroom => (1, 500, 1, 5000, 0.0),
            Scenario::Latency => (10, 50, 1, 2000, 200.0),
            Scenario::Persist => (50, 1, 1, 2000, 0.0),
            Scenario::Cluster => (10, 48, 3, 2000, 0.0),
            Scenario::Idle | Scenario::Replay | Scenario::Handshakes | Scenario::Chat => {
                (0, 0, 0, 0, 0.0)
            }
        };
        let rate = self.rate.unwrap_or(rate);
        let messages = match (self.duration, self.messages) {
            (_, Some(m)) => m,
            (Some(d), None) if rate > 0.0 => (d * rate).round() as u64,
            _ => messages,
        };
        let clients = self.clients.unwrap_or(clients).max(1);
        Load {
            rooms: self.rooms.unwrap_or(rooms),
            clients,
            senders: self.senders.unwrap_or(senders).min(clients),
            messages,
            rate,
            size: self.size.unwrap_or(64),
            window: self.window.max(1),
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("linechat-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: &Cli) -> Result<()> {
    system::raise_fd_limit();
    if cli.plot_only {
        let mut series = Vec::new();
        for other in &cli.plot_with {
            let text = std::fs::read_to_string(other)?;
            series.extend(series_of(&serde_json::from_str(&text)?));
        }
        let path = cli.plot.as_ref().expect("clap requires --plot");
        std::fs::write(path, plot::svg("latency against offered load", &series))?;
        return Ok(());
    }
    let progress = Progress::new(!cli.json);
    let rss_before = cli.server_pid.map(system::rss_kib).transpose()?;
    let mut out = json!({
        "scenario": cli.scenario,
        "target": cli.target,
        "addr": cli.addr,
    });
    if cli.tls_addr.is_some() {
        out["tls_addr"] = json!(cli.tls_addr);
        out["tls_cipher"] = json!(cli.tls_cipher);
    }
    if cli.ws_addr.is_some() {
        out["ws_addr"] = json!(cli.ws_addr);
    }
    let mut clean = true;
    match cli.scenario {
        Scenario::Fanout | Scenario::Bigroom | Scenario::Persist => {
            let load = cli.load();
            out["load"] = json!(load);
            let mut rates = Vec::new();
            for (i, (transport, addr)) in cli.transports(true)?.iter().enumerate() {
                let rss_before = cli.server_pid.map(system::rss_kib).transpose()?;
                let result = load::run(
                    cli.target,
                    transport,
                    addr,
                    &load,
                    patience(cli),
                    cli.server_pid,
                    &progress,
                )
                .await?;
                let rss_after = cli.server_pid.map(system::rss_kib).transpose()?;
                rates.push((transport.name(), result.deliveries_per_sec));
                // The first run is "result" (the plain one, when there are more), as before;
                // the others are under their transport's name ("tls", "ws").
                let key = if i == 0 { "result" } else { transport.name() };
                out[key] = json!(result);
                out[format!("{key}_transport")] = json!(transport.name());
                out[format!("{key}_server_rss_kib")] = json!(rss_after);
                if !cli.json {
                    print_load(cli, transport, addr, &load, &result, rss_before, rss_after);
                }
            }
            if let [("plain", plain), ref others @ ..] = rates[..] {
                for &(name, rate) in others {
                    let ratio = if plain > 0.0 { rate / plain } else { 0.0 };
                    out[format!("{name}_vs_plain")] = json!(ratio);
                    if !cli.json {
                        println!("{name} / plain deliveries per second: {ratio:.2}");
                    }
                }
            }
        }
        Scenario::Cluster => clean = cluster_check::scenario(cli, &progress, &mut out).await?,
        Scenario::Handshakes => {
            if cli.tls_addr.is_none() {
                bail!("handshakes needs --tls-addr (and --ca)");
            }
            let clients = cli.clients.unwrap_or(16);
            let duration = Duration::from_secs_f64(cli.duration.unwrap_or(10.0));
            let mut results = Vec::new();
            // No resumption: every TLS connection is a full handshake.
            for (transport, addr) in cli.transports(false)? {
                let r = handshakes::run(
                    &transport,
                    &addr,
                    clients,
                    duration,
                    cli.server_pid,
                    &progress,
                )
                .await?;
                if !cli.json {
                    print_handshakes(cli, &addr, &r);
                }
                results.push(r);
            }
            out["results"] = json!(results);
        }
        Scenario::Latency => {
            let base = cli.load();
            let rates = if cli.sweep.is_empty() {
                vec![base.rate]
            } else {
                cli.sweep.clone()
            };
            let mut points = Vec::new();
            for rate in rates {
                let duration = cli.duration.unwrap_or(10.0);
                let load = Load {
                    rate,
                    messages: cli.messages.unwrap_or((duration * rate).round() as u64),
                    ..base.clone()
                };
                let storm = match cli.logins > 0.0 {
                    true => Some(logins::Storm::start(&cli.addr, cli.logins).await?),
                    false => None,
                };
                let result = load::run(
                    cli.target,
                    &Transport::Plain,
                    &cli.addr,
                    &load,
                    patience(cli),
                    cli.server_pid,
                    &progress,
                )
                .await?;
                let logins = match storm {
                    Some(storm) => Some(storm.stop().await?),
                    None => None,
                };
                if !cli.json {
                    let rss = cli.server_pid.map(system::rss_kib).transpose()?;
                    print_load(
                        cli,
                        &Transport::Plain,
                        &cli.addr,
                        &load,
                        &result,
                        rss_before,
                        rss,
                    );
                    if let Some(l) = &logins {
                        let row = format!(
                            "{} a second: {} logged in, {} refused; login p50 {} p99 {}",
                            l.per_second,
                            l.logged_in,
                            l.refused,
                            micros(l.login_us.p50),
                            micros(l.login_us.p99)
                        );
                        table("password logins beside it", &[("logins".into(), row)]);
                    }
                }
                points
                    .push(json!({"rate": rate, "load": load, "result": result, "logins": logins}));
            }
            out["points"] = json!(points);
            if let Some(path) = &cli.plot {
                let mut series = series_of(&out);
                for other in &cli.plot_with {
                    let text = std::fs::read_to_string(other)?;
                    series.extend(series_of(&serde_json::from_str(&text)?));
                }
                let title = format!(
                    "latency vs offered load: {} rooms x {} clients, {} sender(s) per room",
                    base.rooms, base.clients, base.senders
                );
                std::fs::write(path, plot::svg(&title, &series))?;
                if !cli.json {
                    println!("plot written to {}", path.display());
                }
            }
        }
        Scenario::Idle => idle::scenario(cli, &progress, &mut out, rss_before).await?,
        Scenario::Replay => replay::scenario(cli, &progress, &mut out).await?,
        Scenario::Chat => clean = chat::scenario(cli, &progress, &mut out).await?,
    }
    if cli.json {
        println!("{out}");
    }
    anyhow::ensure!(clean, "deliveries lost, duplicated or out of order");
    Ok(())
}

fn patience(cli: &Cli) -> Duration {
    Duration::from_secs(cli.patience.max(1))
}
