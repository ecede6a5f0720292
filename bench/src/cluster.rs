//! The cluster scenario: several linechat servers on one database. Each room's members are
//! spread evenly over the nodes, with senders on every node; every delivery is checked (each
//! member must receive every message of its room exactly once, in one order shared by the
//! whole room) and timed, same-node and cross-node pairs apart.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::cluster_check::{check, Member};
use crate::lines::{read_lines, Lines};
use crate::load::{connect_all, new_histogram, room_name, Load, Shared, Window};
use crate::report::{Percentiles, Progress};
use crate::system;
use crate::target::Target;
use crate::transport::{ConnRead, ConnWrite, Transport};

/// Digits of the send time that open every payload; the sender's node follows.
const STAMP: usize = 16;
/// How long to keep listening after the last expected delivery, for late duplicates.
const GRACE: Duration = Duration::from_millis(500);

/// Whose CPU time the run reports: the nodes, and the database (the postmaster and every
/// process it started).
#[derive(Debug, Clone, Default)]
pub struct Cpu {
    pub server_pids: Vec<u32>,
    pub postmaster_pid: Option<u32>,
}

impl Cpu {
    fn seconds(&self) -> Result<(f64, Option<f64>)> {
        let mut servers = 0.0;
        for &pid in &self.server_pids {
            servers += system::cpu_seconds(pid)?;
        }
        let db = self
            .postmaster_pid
            .map(system::tree_cpu_seconds)
            .transpose()?;
        Ok((servers, db))
    }
}

/// What a cluster run measured.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ClusterResult {
    pub nodes: usize,
    pub connections: usize,
    pub messages_sent: u64,
    pub messages_acked: u64,
    pub expected_deliveries: u64,
    pub deliveries: u64,
    /// Deliveries a member should have had and never got.
    pub lost_deliveries: u64,
    /// Deliveries of an id the member already had.
    pub duplicated_deliveries: u64,
    /// Deliveries of an id no sender of the room was acknowledged (or the member's own).
    pub unexpected_deliveries: u64,
    /// Deliveries whose id is not above the member's previous one in the room.
    pub order_violations: u64,
    /// Members whose sequence differs from their room's (all acknowledged ids, in id order,
    /// less their own).
    pub members_off_sequence: u64,
    pub seconds: f64,
    pub deliveries_per_sec: f64,
    pub messages_per_sec: f64,
    /// Sender and receiver on one node.
    pub same_node_us: Percentiles,
    /// Sender and receiver on different nodes.
    pub cross_node_us: Percentiles,
    /// The nodes' CPU time (summed) per delivery, and as a share of one core.
    pub server_cpu_ns_per_delivery: Option<f64>,
    pub server_cpu_share: Option<f64>,
    /// The database's CPU time per delivery, and as a share of one core.
    pub db_cpu_ns_per_delivery: Option<f64>,
    pub db_cpu_share: Option<f64>,
}

impl ClusterResult {
    /// Nothing lost, nothing twice, nothing out of order.
    pub fn clean(&self) -> bool {
        self.lost_deliveries == 0
            && self.duplicated_deliveries == 0
            && self.unexpected_deliveries == 0
            && self.order_violations == 0
            && self.members_off_sequence == 0
            && self.messages_acked == self.messages_sent
    }
}

/// Which node member `j` of room `r` is on: rotated per room, so that with as many senders
/// as nodes every room has a sender on every node, and otherwise senders still land on all.
pub fn node_of(room: usize, member: usize, nodes: usize) -> usize {
    (room + member) % nodes
}

pub async fn run(
    nodes: &[String],
    load: &Load,
    patience: Duration,
    cpu: &Cpu,
    progress: &Progress,
) -> Result<ClusterResult> {
    let n = nodes.len().max(1);
    let count = load.rooms * load.clients;
    // Members in global order k = room * clients + member; each node's share connects to it.
    let mut conns: Vec<Option<_>> = (0..count).map(|_| None).collect();
    for (node, addr) in nodes.iter().enumerate() {
        let mine: Vec<usize> = (0..count)
            .filter(|&k| node_of(k / load.clients, k % load.clients, n) == node)
            .collect();
        let (streams, _) = connect_all(
            Target::Linechat,
            &Transport::Plain,
            addr,
            mine.len(),
            |i| vec![room_name(mine[i] / load.clients)],
            progress,
        )
        .await
        .with_context(|| format!("node {node} at {addr}"))?;
        for (k, s) in mine.iter().zip(streams) {
            conns[*k] = Some(s);
        }
    }
    let epoch = Instant::now();
    let shared = Arc::new(Shared::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let (go_tx, go) = watch::channel(false);
    let mut readers = JoinSet::new();
    let mut senders = JoinSet::new();
    let mut open_writes: Vec<ConnWrite> = Vec::new();
    for (k, conn) in conns.into_iter().enumerate() {
        let (stream, leftover) = conn.expect("every member connected");
        let (room, member) = (k / load.clients, k % load.clients);
        let node = node_of(room, member, n);
        let (read, write) = stream.into_split();
        let window = (member < load.senders).then(|| Arc::new(Window::default()));
        readers.spawn(receive(
            read,
            leftover,
            Member {
                room,
                node,
                sender: member < load.senders,
                ..Member::default()
            },
            shared.clone(),
            window.clone(),
            n,
            epoch,
            stop_rx.clone(),
        ));
        match window {
            Some(window) => {
                let (load, mut go) = (load.clone(), go.clone());
                senders.spawn(async move {
                    let _ = go.wait_for(|go| *go).await;
                    send(write, node, &load, window, epoch).await
                });
            }
            None => open_writes.push(write),
        }
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started_ns = epoch.elapsed().as_nanos() as u64;
    let cpu_before = cpu.seconds()?;
    let _ = go_tx.send(true);

    let expected = load.expected();
    let sent_total = (load.rooms * load.senders) as u64 * load.messages;
    progress.start("delivering", expected);
    let mut last_seen = (0, 0);
    let mut quiet_since = Instant::now();
    let mut done_at: Option<Instant> = None;
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        while let Some(done) = senders.try_join_next() {
            open_writes.push(done??);
        }
        let delivered = shared.delivered.load(Ordering::Relaxed);
        let acked = shared.acked.load(Ordering::Relaxed);
        progress.set(delivered);
        if delivered >= expected && acked >= sent_total && open_writes.len() == count {
            // Keep reading a moment: a duplicate would arrive after the last expected one.
            match done_at {
                Some(t) if t.elapsed() >= GRACE => break,
                Some(_) => continue,
                None => done_at = Some(Instant::now()),
            }
        }
        if (delivered, acked) != last_seen {
            last_seen = (delivered, acked);
            quiet_since = Instant::now();
        } else if quiet_since.elapsed() >= patience {
            break;
        }
    }
    progress.finish();
    // CPU up to the last expected delivery, not through the grace period.
    let cpu_after = cpu.seconds()?;
    let _ = stop_tx.send(true);
    senders.abort_all();
    drop(open_writes);
    let mut members = Vec::with_capacity(count);
    while let Some(m) = readers.join_next().await {
        members.push(m?);
    }
    let mut r = check(&members, load);
    let (mut same, mut cross) = (new_histogram(), new_histogram());
    for m in &members {
        same.add(&m.same).expect("same bounds");
        cross.add(&m.cross).expect("same bounds");
    }
    let last_ns = shared.last_event_ns.load(Ordering::Relaxed);
    let seconds = last_ns.saturating_sub(started_ns) as f64 / 1e9;
    let cpu_wall = match done_at {
        Some(t) => t.duration_since(epoch).as_secs_f64() - started_ns as f64 / 1e9,
        None => seconds,
    }
    .max(1e-9);
    let per = |c: f64| (c * 1e9 / r.deliveries.max(1) as f64, c / cpu_wall);
    let servers = per(cpu_after.0 - cpu_before.0);
    if !cpu.server_pids.is_empty() {
        r.server_cpu_ns_per_delivery = Some(servers.0);
        r.server_cpu_share = Some(servers.1);
    }
    if let (Some(b), Some(a)) = (cpu_before.1, cpu_after.1) {
        let db = per(a - b);
        r.db_cpu_ns_per_delivery = Some(db.0);
        r.db_cpu_share = Some(db.1);
    }
    r.nodes = n;
    r.connections = count;
    r.messages_sent = sent_total;
    r.messages_acked = shared.acked.load(Ordering::Relaxed);
    r.seconds = seconds;
    if seconds > 0.0 {
        r.deliveries_per_sec = r.deliveries as f64 / seconds;
        r.messages_per_sec = r.messages_acked as f64 / seconds;
    }
    r.same_node_us = Percentiles::of(&same);
    r.cross_node_us = Percentiles::of(&cross);
    Ok(r)
}

/// "<send time, 16 digits> <node> xxx...": the time and the sender's node.
fn payload(epoch: Instant, at: Instant, node: usize, size: usize, out: &mut Vec<u8>) {
    let ns = at.saturating_duration_since(epoch).as_nanos() as u64;
    let start = out.len();
    out.extend_from_slice(format!("{ns:0STAMP$} {node} ").as_bytes());
    let len = out.len() - start;
    if size > len {
        out.resize(start + size, b'x');
    }
}

/// Splits a payload into its send time and its sender's node.
fn parse_payload(p: &[u8]) -> Option<(u64, usize)> {
    let text = std::str::from_utf8(p).ok()?;
    let mut fields = text.split(' ');
    let ns = fields.next()?.parse().ok()?;
    let node = fields.next()?.parse().ok()?;
    Some((ns, node))
}

/// Says `load.messages` messages, at `load.rate` or as fast as the window allows.
async fn send(
    mut write: ConnWrite,
    node: usize,
    load: &Load,
    window: Arc<Window>,
    epoch: Instant,
) -> Result<ConnWrite> {
    let start = Instant::now();
    let mut out = Vec::with_capacity(64 * 1024);
    let mut sent = 0u64;
    while sent < load.messages {
        let mut allowed = load.messages - sent;
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
            // Paced: stamped with when it was due, so falling behind counts as latency.
            let at = if load.rate > 0.0 {
                start + Duration::from_secs_f64((sent + i) as f64 / load.rate)
            } else {
                Instant::now()
            };
            out.extend_from_slice(b"SAY ");
            payload(epoch, at, node, load.size, &mut out);
            out.push(b'\n');
        }
        write.write_all(&out).await.context("send")?;
        sent += allowed;
    }
    Ok(write)
}

/// The id of `MSG <room> <id> ...` or `OK SAY <id> ...`, and for a MSG its payload.
fn parse_line(line: &[u8]) -> Option<(u64, Option<&[u8]>)> {
    let (rest, is_msg) = if let Some(rest) = line.strip_prefix(b"MSG ") {
        let space = rest.iter().position(|&b| b == b' ')?;
        (&rest[space + 1..], true)
    } else {
        (line.strip_prefix(b"OK SAY ")?, false)
    };
    let mut parts = rest.splitn(4, |&b| b == b' ');
    let id = std::str::from_utf8(parts.next()?).ok()?.parse().ok()?;
    if !is_msg {
        return Some((id, None));
    }
    let _time = parts.next()?;
    let _nick = parts.next()?;
    Some((id, Some(parts.next().unwrap_or_default())))
}

/// One member's reader: its room's ids in arrival order, its own acknowledged ids, and the
/// latency of each delivery by sender's node.
struct Reader {
    me: Member,
    shared: Arc<Shared>,
    window: Option<Arc<Window>>,
    nodes: usize,
    /// Since the last read: deliveries and acks to add to the run's counters.
    fresh: (u64, u64),
}

impl Lines for Reader {
    fn line(&mut self, line: &[u8], now: u64) {
        let me = &mut self.me;
        match parse_line(line.strip_suffix(b"\r").unwrap_or(line)) {
            Some((id, Some(p))) => {
                self.fresh.0 += 1;
                me.ids.push(id);
                if let Some((sent, from)) = parse_payload(p) {
                    let us = now.saturating_sub(sent) / 1000;
                    match from == me.node || self.nodes == 1 {
                        true => me.same.saturating_record(us),
                        false => me.cross.saturating_record(us),
                    }
                }
            }
            Some((id, None)) => {
                self.fresh.1 += 1;
                me.own.push(id);
            }
            None => {}
        }
    }

    fn end_of_read(&mut self, now: u64) {
        let fresh = std::mem::take(&mut self.fresh);
        self.shared.add(fresh, self.window.as_deref(), now);
    }
}

/// Reads one member's connection until told to stop.
#[allow(clippy::too_many_arguments)]
async fn receive(
    read: ConnRead,
    leftover: Vec<u8>,
    mut me: Member,
    shared: Arc<Shared>,
    window: Option<Arc<Window>>,
    nodes: usize,
    epoch: Instant,
    stop: watch::Receiver<bool>,
) -> Member {
    me.same = new_histogram();
    me.cross = new_histogram();
    let mut reader = Reader {
        me,
        shared,
        window,
        nodes,
        fresh: (0, 0),
    };
    read_lines(read, leftover, epoch, stop, &mut reader).await;
    reader.me
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_and_payloads_parse() {
        let epoch = Instant::now() - Duration::from_secs(2);
        let mut p = Vec::new();
        payload(epoch, Instant::now(), 2, 64, &mut p);
        assert_eq!(p.len(), 64);
        let (ns, node) = parse_payload(&p).unwrap();
        assert!(ns >= 2_000_000_000);
        assert_eq!(node, 2);
        let line = b"MSG bench3 42 2026-11-24T08:00:00.000Z b1_7 0000000000001234 1 xx";
        let (id, payload) = parse_line(line).unwrap();
        assert_eq!(id, 42);
        assert_eq!(parse_payload(payload.unwrap()), Some((1234, 1)));
        assert_eq!(
            parse_line(b"OK SAY 43 2026-11-24T08:00:00.000Z"),
            Some((43, None))
        );
        assert_eq!(parse_line(b"JOINED bench3 b1_8"), None);
    }

    #[test]
    fn every_node_gets_members_and_senders() {
        for room in 0..10 {
            let mut per_node = [0; 3];
            for member in 0..48 {
                per_node[node_of(room, member, 3)] += 1;
            }
            assert_eq!(per_node, [16, 16, 16]);
            let senders: Vec<_> = (0..3).map(|m| node_of(room, m, 3)).collect();
            assert!((0..3).all(|n| senders.contains(&n)));
        }
    }
}
