//! The handshakes scenario: new connections per second, each timed from `connect` to the
//! server's `HELLO` line, by several clients at once. Over TLS every one is a full handshake
//! (the client keeps no session to resume); over plain TCP the same loop shows what a
//! connection costs without TLS. The server's CPU time per connection comes from
//! /proc/<pid>/stat.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use tokio::io::AsyncReadExt;
use tokio::task::JoinSet;

use crate::load::new_histogram;
use crate::report::{Percentiles, Progress};
use crate::system;
use crate::transport::Transport;

#[derive(Debug, Clone, serde::Serialize)]
pub struct HandshakeResult {
    pub transport: &'static str,
    pub clients: usize,
    /// Connections that got their HELLO.
    pub connections: u64,
    pub failures: u64,
    pub seconds: f64,
    pub per_sec: f64,
    /// From `connect` to the end of the HELLO line.
    pub latency_us: Percentiles,
    /// The server's CPU time (user + system) over the run, divided by `connections`.
    pub server_cpu_us_per_connection: Option<f64>,
    /// The server's CPU time over the run, as a share of one core.
    pub server_cpu_share: Option<f64>,
}

/// Opens connections from `clients` tasks for `duration`, each closed (with a reset, so that
/// no TIME_WAIT piles up on the client's ports) as soon as its HELLO is read.
pub async fn run(
    transport: &Transport,
    addr: &str,
    clients: usize,
    duration: Duration,
    server_pid: Option<u32>,
    progress: &Progress,
) -> Result<HandshakeResult> {
    let done = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(AtomicU64::new(0));
    let first_error = Arc::new(Mutex::new(None::<String>));
    let cpu_before = server_pid.map(system::cpu_seconds).transpose()?;
    let started = Instant::now();
    let deadline = started + duration;
    let mut set = JoinSet::new();
    for _ in 0..clients.max(1) {
        let (transport, addr) = (transport.clone(), addr.to_owned());
        let (done, failures, first_error) = (done.clone(), failures.clone(), first_error.clone());
        set.spawn(async move {
            let mut hist = new_histogram();
            let mut buf = [0u8; 512];
            while Instant::now() < deadline {
                let t0 = Instant::now();
                match hello(&transport, &addr, &mut buf).await {
                    Ok(()) => {
                        hist.saturating_record(t0.elapsed().as_micros() as u64);
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        failures.fetch_add(1, Ordering::Relaxed);
                        first_error
                            .lock()
                            .unwrap()
                            .get_or_insert_with(|| format!("{e:#}"));
                        // A refused burst would otherwise spin.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            hist
        });
    }
    progress.start(
        &format!("{} connections", transport.name()),
        duration.as_secs(),
    );
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        progress.set(started.elapsed().as_secs());
    }
    let mut latency = new_histogram();
    while let Some(h) = set.join_next().await {
        latency.add(h?).expect("same bounds");
    }
    let seconds = started.elapsed().as_secs_f64();
    progress.finish();
    let cpu_after = server_pid.map(system::cpu_seconds).transpose()?;
    let connections = done.load(Ordering::Relaxed);
    let failures = failures.load(Ordering::Relaxed);
    if connections == 0 {
        let why = first_error.lock().unwrap().take().unwrap_or_default();
        bail!("no {} connection reached HELLO: {why}", transport.name());
    }
    let cpu = cpu_before.zip(cpu_after).map(|(b, a)| a - b);
    Ok(HandshakeResult {
        transport: transport.name(),
        clients,
        connections,
        failures,
        seconds,
        per_sec: connections as f64 / seconds,
        latency_us: Percentiles::of(&latency),
        server_cpu_us_per_connection: cpu.map(|c| c * 1e6 / connections as f64),
        server_cpu_share: cpu.map(|c| c / seconds),
    })
}

/// One connection: connect (and handshake), read the HELLO line, close.
async fn hello(transport: &Transport, addr: &str, buf: &mut [u8]) -> Result<()> {
    let mut conn = transport.connect(addr).await?;
    let mut filled = 0;
    loop {
        let n = conn.read(&mut buf[filled..]).await?;
        if n == 0 {
            bail!("closed before HELLO");
        }
        filled += n;
        if buf[..filled].contains(&b'\n') {
            break;
        }
        if filled == buf.len() {
            bail!("no line in the first {filled} bytes");
        }
    }
    if !buf.starts_with(b"HELLO") {
        bail!(
            "not a HELLO: {:?}",
            String::from_utf8_lossy(&buf[..filled.min(80)])
        );
    }
    conn.tcp().set_zero_linger()?;
    Ok(())
}
