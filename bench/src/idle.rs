//! The idle scenario: many connections, each with a name and a room, doing nothing: the
//! server's memory per connection, and its CPU time per connection opened.

use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::{json, Value};

use crate::load;
use crate::print::title_at;
use crate::report::{micros, table, Percentiles, Progress};
use crate::{system, Cli};

/// Opens the connections, lets the server settle, and reads its memory; fills `out` and
/// prints the table unless the output is JSON.
pub async fn scenario(
    cli: &Cli,
    progress: &Progress,
    out: &mut Value,
    rss_before: Option<u64>,
) -> Result<()> {
    let connections = cli.connections.unwrap_or(5000);
    let rooms = cli.rooms.unwrap_or(50).max(1);
    let (transport, addr) = cli.transport()?;
    out["transport"] = json!(transport.name());
    let cpu_before = cli.server_pid.map(system::cpu_seconds).transpose()?;
    let started = Instant::now();
    let (streams, connect) = load::connect_all(
        cli.target,
        &transport,
        &addr,
        connections,
        |i| vec![load::room_name(i % rooms)],
        progress,
    )
    .await?;
    let took = started.elapsed();
    // From the first connect to the last join: what opening them cost the server.
    let cpu_after = cli.server_pid.map(system::cpu_seconds).transpose()?;
    // Let the server settle (buffers freed, tasks parked) before measuring.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_after = cli.server_pid.map(system::rss_kib).transpose()?;
    let per_conn = match (rss_before, rss_after) {
        (Some(b), Some(a)) => Some((a.saturating_sub(b)) as f64 * 1024.0 / connections as f64),
        _ => None,
    };
    drop(streams);
    let cpu = cpu_before.zip(cpu_after).map(|(b, a)| a - b);
    let cpu_per_conn = cpu.map(|c| c * 1e6 / connections.max(1) as f64);
    let cpu_share = cpu.map(|c| c / took.as_secs_f64().max(1e-9));
    let connect = Percentiles::of(&connect);
    out["connections"] = json!(connections);
    out["rooms"] = json!(rooms);
    out["connect_seconds"] = json!(took.as_secs_f64());
    out["connect_us"] = json!(connect);
    out["server_rss_before_kib"] = json!(rss_before);
    out["server_rss_after_kib"] = json!(rss_after);
    out["rss_bytes_per_connection"] = json!(per_conn);
    out["server_cpu_us_per_connection"] = json!(cpu_per_conn);
    out["server_cpu_share"] = json!(cpu_share);
    if cli.json {
        return Ok(());
    }
    let mut rows = vec![
        (
            "connections".into(),
            format!("{connections} over {rooms} rooms"),
        ),
        (
            "connect + join".into(),
            format!(
                "{:.2} s in all; each p50 {} p99 {} max {}",
                took.as_secs_f64(),
                micros(connect.p50),
                micros(connect.p99),
                micros(connect.max)
            ),
        ),
    ];
    if let (Some(per), Some(share)) = (cpu_per_conn, cpu_share) {
        rows.push((
            "server CPU".into(),
            format!(
                "{per:.0} us per connection opened ({:.0}% of a core)",
                share * 100.0
            ),
        ));
    }
    if let (Some(b), Some(a), Some(p)) = (rss_before, rss_after, per_conn) {
        rows.push(("server RSS".into(), format!("{b} KiB -> {a} KiB")));
        rows.push((
            "RSS per connection".into(),
            format!("{:.2} KiB ({p:.0} bytes)", p / 1024.0),
        ));
    }
    table(&title_at(cli, transport.name(), &addr), &rows);
    Ok(())
}
