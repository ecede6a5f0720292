//! What the benchmark prints: a table per run, and the series of a latency sweep.

use crate::load::Load;
use crate::report::{micros, spread, table, thousands};
use crate::transport::Transport;
use crate::{chat, handshakes, load, plot, Cli};

pub fn title(cli: &Cli) -> String {
    title_at(cli, "", &cli.addr)
}

/// "fanout against linechat at 127.0.0.1:7443 (tls)".
pub fn title_at(cli: &Cli, transport: &str, addr: &str) -> String {
    let over = if transport.is_empty() {
        String::new()
    } else {
        format!(" ({transport})")
    };
    format!(
        "{:?} against {:?} at {addr}{over}",
        cli.scenario, cli.target
    )
    .to_lowercase()
}

pub fn print_handshakes(cli: &Cli, addr: &str, r: &handshakes::HandshakeResult) {
    let mut rows = vec![
        (
            "connections".into(),
            format!(
                "{} in {:.1} s by {} clients ({} failed)",
                r.connections, r.seconds, r.clients, r.failures
            ),
        ),
        (
            if r.transport == "tls" {
                "full handshakes/s".into()
            } else {
                "connections/s".into()
            },
            thousands(r.per_sec),
        ),
        (
            "connect to HELLO".into(),
            format!(
                "p50 {} p99 {} max {}",
                micros(r.latency_us.p50),
                micros(r.latency_us.p99),
                micros(r.latency_us.max)
            ),
        ),
    ];
    if let (Some(per), Some(share)) = (r.server_cpu_us_per_connection, r.server_cpu_share) {
        rows.push((
            "server CPU".into(),
            format!(
                "{per:.0} us per connection ({:.0}% of a core)",
                share * 100.0
            ),
        ));
    }
    table(&title_at(cli, r.transport, addr), &rows);
}

/// Latency series (p50, p99, p99.9 against offered load) from a latency run's JSON.
pub fn series_of(run: &serde_json::Value) -> Vec<plot::Series> {
    let target = run["target"].as_str().unwrap_or("?").to_string();
    let points = run["points"].as_array().cloned().unwrap_or_default();
    [("p50", "p50"), ("p99", "p99"), ("p99.9", "p999")]
        .iter()
        .map(|(label, key)| plot::Series {
            name: format!("{target} {label}"),
            points: points
                .iter()
                .map(|p| {
                    (
                        p["result"]["offered_deliveries_per_sec"]
                            .as_f64()
                            .unwrap_or(0.0),
                        p["result"]["latency_us"][key].as_f64().unwrap_or(0.0),
                    )
                })
                .collect(),
        })
        .collect()
}

pub fn print_load(
    cli: &Cli,
    transport: &Transport,
    addr: &str,
    load: &Load,
    r: &load::LoadResult,
    rss_before: Option<u64>,
    rss_after: Option<u64>,
) {
    let mut rows = vec![
        (
            "shape".into(),
            format!(
                "{} rooms x {} clients, {} sender(s) x {} messages of {} bytes, {}",
                load.rooms,
                load.clients,
                load.senders,
                load.messages,
                load.size,
                if load.rate > 0.0 {
                    format!("{} msg/s per sender", load.rate)
                } else {
                    "full speed".into()
                }
            ),
        ),
        (
            "deliveries".into(),
            format!(
                "{} of {} ({} lost) in {:.2} s",
                r.deliveries, r.expected_deliveries, r.lost_deliveries, r.seconds
            ),
        ),
        ("deliveries/s".into(), thousands(r.deliveries_per_sec)),
        (
            if cli.target.acks() {
                "messages acknowledged/s".into()
            } else {
                "messages sent/s".into()
            },
            format!(
                "{} ({} of {})",
                thousands(r.messages_per_sec),
                if cli.target.acks() {
                    r.messages_acked
                } else {
                    r.messages_sent
                },
                r.messages_sent
            ),
        ),
        ("latency".into(), spread(&r.latency_us)),
        (
            "connect + join".into(),
            format!(
                "{} connections, each p50 {} p99 {}",
                r.connections,
                micros(r.connect_us.p50),
                micros(r.connect_us.p99)
            ),
        ),
    ];
    if let (Some(ns), Some(share)) = (r.server_cpu_ns_per_delivery, r.server_cpu_share) {
        rows.push((
            "server CPU".into(),
            format!(
                "{ns:.0} ns per {} ({:.0}% of a core)",
                if r.expected_deliveries > 0 {
                    "delivery"
                } else {
                    "message"
                },
                share * 100.0
            ),
        ));
    }
    if let (Some(b), Some(a)) = (rss_before, rss_after) {
        rows.push((
            "server RSS".into(),
            format!(
                "{b} KiB before, {a} KiB after ({:.1} KiB per connection)",
                a.saturating_sub(b) as f64 / r.connections.max(1) as f64
            ),
        ));
    }
    table(&title_at(cli, transport.name(), addr), &rows);
}

pub fn print_chat(cli: &Cli, r: &chat::ChatResult) {
    let s = &r.shape;
    let in_rooms: Vec<String> = r
        .rooms_per_connection
        .iter()
        .enumerate()
        .map(|(i, n)| format!("{n} in {}", i + 1))
        .collect();
    let mut rows = vec![
        (
            "shape".into(),
            format!(
                "{} rooms x {} members over {} connections (rooms each: {})",
                s.rooms,
                s.members,
                s.connections,
                in_rooms.join(", ")
            ),
        ),
        (
            "messages".into(),
            format!(
                "1 every {:.1} s per room from a random member, {} per room of {} bytes: {} sent, {} acknowledged{}",
                1.0 / s.rate,
                s.messages,
                s.size,
                r.messages_sent,
                r.messages_acked,
                if cli.target.acks() {
                    format!(", {} room switches (re-JOIN)", r.room_switches)
                } else {
                    String::new()
                }
            ),
        ),
        (
            "deliveries".into(),
            format!(
                "{} of {} ({} lost, {} connections short; {} duplicated, {} unexpected) in {:.2} s",
                r.deliveries,
                r.expected_deliveries,
                r.lost_deliveries,
                r.connections_short,
                r.duplicate_deliveries,
                r.unexpected_deliveries,
                r.seconds
            ),
        ),
        (
            "deliveries/s".into(),
            format!(
                "{} (offered {})",
                thousands(r.deliveries_per_sec),
                thousands(r.offered_deliveries_per_sec)
            ),
        ),
        (
            "latency".into(),
            spread(&r.latency_us),
        ),
        (
            "connect + join".into(),
            format!(
                "each p50 {} p99 {}",
                micros(r.connect_us.p50),
                micros(r.connect_us.p99)
            ),
        ),
    ];
    if let (Some(ns), Some(share)) = (r.server_cpu_ns_per_delivery, r.server_cpu_share) {
        rows.push((
            "server CPU".into(),
            format!("{ns:.0} ns per delivery ({:.0}% of a core)", share * 100.0),
        ));
    }
    if r.errors > 0 {
        rows.push(("server errors".into(), format!("{} ERR lines", r.errors)));
    }
    table(&title(cli), &rows);
}
