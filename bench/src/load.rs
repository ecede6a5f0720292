//! Driving a server: connecting clients, sending at full speed or a fixed rate, receiving
//! and timing every delivery.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use tokio::io::AsyncWriteExt;
use tokio::sync::{watch, Notify, Semaphore};
use tokio::task::JoinSet;

use crate::lines::{read_lines, Lines};
pub use crate::payload::{new_histogram, payload, stamp, tagged_payload_at, STAMP};
use crate::report::{Percentiles, Progress};
use crate::system;
use crate::target::{Event, Parser, Target};
use crate::transport::{Conn, ConnRead, ConnWrite, Transport};

/// Connections opened at once.
const CONNECT_PARALLELISM: usize = 64;

/// What one messaging run does.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Load {
    pub rooms: usize,
    /// Clients per room, senders included.
    pub clients: usize,
    /// Senders per room.
    pub senders: usize,
    /// Messages per sender.
    pub messages: u64,
    /// Messages per second per sender; 0 means as fast as possible.
    pub rate: f64,
    /// Payload bytes (at least the 16-digit send time).
    pub size: usize,
    /// Unacknowledged messages a sender may have in flight (targets that ack).
    pub window: u64,
}

impl Load {
    /// Deliveries the run expects: every message reaches every other member of its room.
    pub fn expected(&self) -> u64 {
        (self.rooms * self.senders) as u64 * self.messages * (self.clients as u64 - 1)
    }
}

/// What a messaging run measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LoadResult {
    pub connections: usize,
    pub messages_sent: u64,
    pub messages_acked: u64,
    pub expected_deliveries: u64,
    pub deliveries: u64,
    pub lost_deliveries: u64,
    /// From the first send to the last delivery (or ack, when nobody receives).
    pub seconds: f64,
    pub deliveries_per_sec: f64,
    pub messages_per_sec: f64,
    /// Offered load: deliveries per second the senders asked for (rate mode), else measured.
    pub offered_deliveries_per_sec: f64,
    pub latency_us: Percentiles,
    pub connect_us: Percentiles,
    /// The server's CPU time (all threads, user + system) from the first send to the end,
    /// per delivery (per acknowledged message when nobody receives), if its pid was given.
    pub server_cpu_ns_per_delivery: Option<f64>,
    /// The same CPU time as a share of one core.
    pub server_cpu_share: Option<f64>,
}

/// Counters shared by every task of a run.
#[derive(Default)]
pub struct Shared {
    pub delivered: AtomicU64,
    pub acked: AtomicU64,
    /// Nanoseconds since the epoch of the last delivery or ack.
    pub last_event_ns: AtomicU64,
}

impl Shared {
    /// Adds what one read brought, (deliveries, acks) read at `now`, to the run's counters,
    /// and the acks to the sender's `window`.
    pub fn add(&self, (delivered, acked): (u64, u64), window: Option<&Window>, now: u64) {
        if delivered > 0 {
            self.delivered.fetch_add(delivered, Ordering::Relaxed);
        }
        if acked > 0 {
            self.acked.fetch_add(acked, Ordering::Relaxed);
            if let Some(w) = window {
                w.acked.fetch_add(acked, Ordering::Release);
                w.moved.notify_one();
            }
        }
        if delivered > 0 || acked > 0 {
            self.last_event_ns.fetch_max(now, Ordering::Relaxed);
        }
    }
}

/// Flow control between a sender's writer and the reader that sees its acks.
#[derive(Default)]
pub struct Window {
    /// Messages the sender has handed to its connection (for the report of a stalled run).
    pub sent: AtomicU64,
    pub acked: AtomicU64,
    pub moved: Notify,
    /// What the sender's payloads carry after their stamp when its target echoes them back
    /// (Redis), so its own reader can drop them: linechat never sends a member its own
    /// messages, and every target's deliveries must mean the same (`Load::expected`). Empty
    /// for the other targets.
    mark: String,
}

impl Window {
    /// True if `payload` is this sender's own (marked) message.
    pub fn own(&self, payload: &[u8]) -> bool {
        !self.mark.is_empty()
            && payload.get(STAMP) == Some(&b' ')
            && payload[STAMP + 1..]
                .strip_prefix(self.mark.as_bytes())
                .is_some_and(|rest| rest.first().is_none_or(|&b| b == b' '))
    }
}

/// A unique prefix for this process's names, so runs never collide on nicks: not with other
/// processes, nor with the names of this process's previous run (plain, then TLS), which the
/// server may not have released yet.
pub fn run_tag() -> String {
    static RUNS: AtomicU64 = AtomicU64::new(0);
    match RUNS.fetch_add(1, Ordering::Relaxed) {
        0 => format!("b{}", std::process::id() % 100_000),
        n => format!("b{}r{n}", std::process::id() % 100_000),
    }
}

/// Opens `count` connections: connection `i` joins the rooms `rooms_of(i)`. Returns them in
/// order with their connect-and-join times.
pub async fn connect_all(
    target: Target,
    transport: &Transport,
    addr: &str,
    count: usize,
    rooms_of: impl Fn(usize) -> Vec<String>,
    progress: &Progress,
) -> Result<(Vec<(Conn, Vec<u8>)>, Histogram<u64>)> {
    let limit = Arc::new(Semaphore::new(CONNECT_PARALLELISM));
    let mut set = JoinSet::new();
    let tag = run_tag();
    for i in 0..count {
        let permit = limit.clone().acquire_owned().await?;
        let (addr, rooms, name) = (addr.to_string(), rooms_of(i), format!("{tag}_{i}"));
        let transport = transport.clone();
        set.spawn(async move {
            let started = Instant::now();
            let stream = target.connect(&transport, &addr, &name, &rooms).await;
            drop(permit);
            (i, stream, started.elapsed())
        });
    }
    let mut streams: Vec<Option<(Conn, Vec<u8>)>> = (0..count).map(|_| None).collect();
    let mut times = new_histogram();
    progress.start("connecting", count as u64);
    while let Some(joined) = set.join_next().await {
        let (i, stream, took) = joined?;
        streams[i] = Some(stream.with_context(|| format!("connection {i}"))?);
        times.saturating_record(took.as_micros() as u64);
        progress.inc(1);
    }
    progress.finish();
    Ok((streams.into_iter().map(Option::unwrap).collect(), times))
}

/// Runs one messaging load and waits for every delivery, or until nothing has arrived for
/// `patience`.
pub async fn run(
    target: Target,
    transport: &Transport,
    addr: &str,
    load: &Load,
    patience: Duration,
    server_pid: Option<u32>,
    progress: &Progress,
) -> Result<LoadResult> {
    let count = load.rooms * load.clients;
    let (streams, connect_times) = connect_all(
        target,
        transport,
        addr,
        count,
        |i| vec![room_name(i / load.clients)],
        progress,
    )
    .await?;
    let epoch = Instant::now();
    let shared = Arc::new(Shared::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut readers = JoinSet::new();
    let mut senders = JoinSet::new();
    // A watch, not a Notify: `notify_waiters` wakes only senders already waiting, and on a
    // loaded machine some were not yet, so whole rooms never sent ("lost" deliveries).
    let (go_tx, go) = watch::channel(false);
    // Write halves stay open until the run ends: dropping one would half-close it.
    let mut open_writes: Vec<ConnWrite> = Vec::new();
    let mut windows: Vec<Arc<Window>> = Vec::new();
    // Write halves held when everything is sent: one per connection, and one per publisher.
    let mut writes = count;
    for (i, (stream, leftover)) in streams.into_iter().enumerate() {
        let (read, mut write) = stream.into_split();
        let is_sender = i % load.clients < load.senders;
        let window = Arc::new(Window {
            mark: match is_sender && target.echoes() {
                true => format!("s{i}"),
                false => String::new(),
            },
            ..Window::default()
        });
        if is_sender {
            windows.push(window.clone());
            // Redis: the sender publishes on a connection of its own, whose reader sees the
            // acks; the subscribed one's write half stays open, unused.
            if let Some(publisher) = target.publisher(transport, addr).await? {
                let (publisher_read, publisher_write) = publisher.into_split();
                readers.spawn(receive(
                    target,
                    publisher_read,
                    Vec::new(),
                    shared.clone(),
                    Some(window.clone()),
                    epoch,
                    stop_rx.clone(),
                ));
                open_writes.push(std::mem::replace(&mut write, publisher_write));
                writes += 1;
            }
        }
        readers.spawn(receive(
            target,
            read,
            leftover,
            shared.clone(),
            is_sender.then(|| window.clone()),
            epoch,
            stop_rx.clone(),
        ));
        if is_sender {
            let room = room_name(i / load.clients);
            let (load, mut go) = (load.clone(), go.clone());
            // Senders are independent people: in rate mode each starts its own share of a
            // period later, rather than all of them at once every period (in lockstep, every
            // message of a period reached the bench's one thread in the same instant, and
            // reading them all was most of the latency measured).
            let senders_in_all = (load.rooms * load.senders).max(1);
            let order = (i / load.clients) * load.senders + i % load.clients;
            let offset = if load.rate > 0.0 {
                Duration::from_secs_f64(order as f64 / (senders_in_all as f64 * load.rate))
            } else {
                Duration::ZERO
            };
            senders.spawn(async move {
                let _ = go.wait_for(|go| *go).await;
                tokio::time::sleep(offset).await;
                send(target, write, &room, &load, window, epoch).await
            });
        } else {
            open_writes.push(write);
        }
    }
    // Give every sender task a moment to wait on `go`, then start them together.
    tokio::task::yield_now().await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started_ns = epoch.elapsed().as_nanos() as u64;
    let cpu_before = server_pid.map(system::cpu_seconds).transpose()?;
    let _ = go_tx.send(true);

    let expected = load.expected();
    let sent_total = (load.rooms * load.senders) as u64 * load.messages;
    let want_acks = if target.acks() { sent_total } else { 0 };
    wait(
        &shared,
        (expected, want_acks),
        patience,
        Instant::now(),
        progress,
        || {
            while let Some(done) = senders.try_join_next() {
                open_writes.push(done??);
            }
            // Every sender has returned its write half: everything was sent.
            Ok(open_writes.len() == writes)
        },
    )
    .await?;
    progress.finish();
    let cpu_after = server_pid.map(system::cpu_seconds).transpose()?;
    let cpu_wall = (epoch.elapsed().as_nanos() as u64 - started_ns) as f64 / 1e9;
    let stalled: Vec<String> = windows
        .iter()
        .filter_map(|w| {
            let (sent, acked) = (
                w.sent.load(Ordering::Relaxed),
                w.acked.load(Ordering::Relaxed),
            );
            // NATS and IRC ack nothing: only a sender that did not send all has stalled.
            let unacked = target.acks() && acked < sent;
            (sent < load.messages || unacked).then(|| format!("sent {sent} acked {acked}"))
        })
        .collect();
    if !stalled.is_empty() {
        eprintln!(
            "linechat-bench: {} sender(s) stalled: {}",
            stalled.len(),
            stalled.join("; ")
        );
    }
    let _ = stop_tx.send(true);
    senders.abort_all();
    drop(open_writes);
    let mut latency = new_histogram();
    while let Some(h) = readers.join_next().await {
        if let Ok(h) = h {
            latency.add(h).expect("same bounds");
        }
    }
    let delivered = shared.delivered.load(Ordering::Relaxed);
    let acked = shared.acked.load(Ordering::Relaxed);
    let cpu = cpu_before.zip(cpu_after).map(|(b, a)| a - b);
    let last_ns = shared.last_event_ns.load(Ordering::Relaxed);
    let seconds = (last_ns.saturating_sub(started_ns)) as f64 / 1e9;
    let per_sec = |n: u64| {
        if seconds > 0.0 {
            n as f64 / seconds
        } else {
            0.0
        }
    };
    let offered = if load.rate > 0.0 {
        load.rate * (load.rooms * load.senders) as f64 * (load.clients - 1) as f64
    } else {
        per_sec(delivered)
    };
    Ok(LoadResult {
        connections: count,
        messages_sent: sent_total,
        messages_acked: acked,
        expected_deliveries: expected,
        deliveries: delivered,
        lost_deliveries: expected.saturating_sub(delivered),
        seconds,
        deliveries_per_sec: per_sec(delivered),
        messages_per_sec: per_sec(if target.acks() { acked } else { sent_total }),
        offered_deliveries_per_sec: offered,
        latency_us: Percentiles::of(&latency),
        connect_us: Percentiles::of(&connect_times),
        server_cpu_ns_per_delivery: cpu.map(|c| c * 1e9 / delivered.max(acked).max(1) as f64),
        server_cpu_share: cpu.map(|c| c / cpu_wall),
    })
}

/// Waits until `want` (deliveries, acks) have come and `all_sent()` says every message went
/// out, or until nothing has come for `patience` (a clock that starts no sooner than
/// `quiet_from`, when the last message is due).
pub async fn wait(
    shared: &Shared,
    want: (u64, u64),
    patience: Duration,
    quiet_from: Instant,
    progress: &Progress,
    mut all_sent: impl FnMut() -> Result<bool>,
) -> Result<()> {
    let (expected, want_acks) = want;
    progress.start("delivering", expected.max(want_acks));
    let mut last_seen = (0, 0);
    let mut quiet_since = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let sent = all_sent()?;
        let delivered = shared.delivered.load(Ordering::Relaxed);
        let acked = shared.acked.load(Ordering::Relaxed);
        progress.set(if expected > 0 { delivered } else { acked });
        if delivered >= expected && acked >= want_acks && sent {
            break;
        }
        if (delivered, acked) != last_seen || Instant::now() < quiet_from {
            last_seen = (delivered, acked);
            quiet_since = Instant::now();
        } else if quiet_since.elapsed() >= patience {
            break;
        }
    }
    progress.finish();
    Ok(())
}

pub fn room_name(room: usize) -> String {
    format!("bench{room}")
}

/// Publishes `load.messages` payloads, at `load.rate` or as fast as the window allows.
async fn send(
    target: Target,
    mut write: ConnWrite,
    room: &str,
    load: &Load,
    window: Arc<Window>,
    epoch: Instant,
) -> Result<ConnWrite> {
    let start = Instant::now();
    let mut out = Vec::with_capacity(64 * 1024);
    let mut sent = 0u64;
    while sent < load.messages {
        // How many may go now: the window, and in rate mode what is due.
        let mut allowed = load.messages - sent;
        if target.acks() {
            loop {
                let moved = window.moved.notified();
                tokio::pin!(moved);
                moved.as_mut().enable();
                let in_flight = sent - window.acked.load(Ordering::Acquire);
                if in_flight < load.window {
                    allowed = allowed.min(load.window - in_flight);
                    break;
                }
                moved.await;
            }
        }
        if load.rate > 0.0 {
            let due = (start.elapsed().as_secs_f64() * load.rate) as u64 + 1;
            if due <= sent {
                let next = start + Duration::from_secs_f64(sent as f64 / load.rate);
                tokio::time::sleep_until(next.into()).await;
                continue;
            }
            allowed = allowed.min(due - sent);
        }
        allowed = allowed.min(256);
        out.clear();
        for i in 0..allowed {
            // In rate mode a message is stamped with when it was due, not when it went out,
            // so time spent behind schedule (or waiting for acks) counts as latency.
            let stamp_at = if load.rate > 0.0 {
                start + Duration::from_secs_f64((sent + i) as f64 / load.rate)
            } else {
                Instant::now()
            };
            let payload = tagged_payload_at(epoch, stamp_at, &window.mark, load.size);
            target.publish(room, &payload, &mut out);
        }
        write.write_all(&out).await.context("send")?;
        // Plain TCP: nothing to do; TLS: records still held by rustls go out now.
        write.flush().await.context("send")?;
        sent += allowed;
        window.sent.store(sent, Ordering::Relaxed);
    }
    Ok(write)
}

/// A load run's reader: counts and times deliveries, counts acks (and opens its sender's
/// window), and adds both to the run's counters after each read.
struct Counter {
    target: Target,
    parser: Parser,
    hist: Histogram<u64>,
    delivered: u64,
    acked: u64,
    shared: Arc<Shared>,
    window: Option<Arc<Window>>,
}

impl Lines for Counter {
    fn line(&mut self, line: &[u8], now: u64) {
        match self.parser.line(self.target, line) {
            Event::Payload(p) if self.window.as_ref().is_some_and(|w| w.own(p)) => {}
            Event::Payload(p) => {
                self.delivered += 1;
                if let Some(sent) = stamp(p) {
                    self.hist.saturating_record(now.saturating_sub(sent) / 1000);
                }
            }
            Event::Ack => self.acked += 1,
            Event::Ping | Event::Other => {}
        }
    }

    fn end_of_read(&mut self, now: u64) {
        let fresh = (
            std::mem::take(&mut self.delivered),
            std::mem::take(&mut self.acked),
        );
        self.shared.add(fresh, self.window.as_deref(), now);
    }
}

/// Reads one connection until told to stop, counting and timing deliveries and acks.
async fn receive(
    target: Target,
    read: ConnRead,
    leftover: Vec<u8>,
    shared: Arc<Shared>,
    window: Option<Arc<Window>>,
    epoch: Instant,
    stop: watch::Receiver<bool>,
) -> Histogram<u64> {
    let mut counter = Counter {
        target,
        parser: Parser::default(),
        hist: new_histogram(),
        delivered: 0,
        acked: 0,
        shared,
        window,
    };
    read_lines(read, leftover, epoch, stop, &mut counter).await;
    counter.hist
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payload::payload_at;

    #[test]
    fn payload_carries_its_send_time() {
        let epoch = Instant::now() - Duration::from_secs(3);
        let p = payload(epoch, 64);
        assert_eq!(p.len(), 64);
        let ns = stamp(&p).unwrap();
        assert!(ns >= 3_000_000_000);
        assert_eq!(stamp(&payload(epoch, 0)).map(|_| ()), Some(()));
    }

    #[test]
    fn a_sender_knows_its_own_payloads() {
        let epoch = Instant::now();
        let w = |mark: &str| Window {
            mark: mark.into(),
            ..Window::default()
        };
        let p = tagged_payload_at(epoch, Instant::now(), "s1", 64);
        assert_eq!(p.len(), 64);
        assert!(w("s1").own(&p));
        assert!(!w("s10").own(&p) && !w("s").own(&p) && !w("").own(&p));
        assert!(w("s1").own(&tagged_payload_at(epoch, epoch, "s1", 0)));
        assert!(!w("s1").own(&payload_at(epoch, epoch, 64)));
    }
}
