//! The chat scenario: the shape of a real chat server rather than a flood. By default 5,000
//! connections and 1,000 rooms of exactly 10 members: 10,000 memberships, two rooms per
//! connection on average, spread as chat users are (by connection index modulo 10: 4 in 10
//! are in one room, 3 in two, 2 in three, 1 in four; a connection's first room is its home).
//! Each room says one message every 2 s (`--rate 0.5`, messages a second per room) from a
//! random member, never the one that spoke last (seeded: every run says the same), rooms
//! staggered over the period so that the load is even; for `--duration` seconds (20).
//!
//! Every delivery is checked: each connection must receive every message of each of its
//! rooms but its own exactly once (what it should get is counted from the membership and the
//! schedule, before the run); a duplicate, a message of a room it is not in, or its own
//! message counts against the run. linechat says in the connection's current room, so a
//! member speaking in another of its rooms first makes it current with `JOIN <room> NONE`
//! (no replay, the live feed untouched; with PostgreSQL it reads the room's newest id), as a
//! client would; NATS gets a subject per room, a SUB per room on each connection, and
//! `echo: false` so that a sender does not receive its own message.
//!
//! The servers need nothing special for 5,000 connections from loopback: linechat counts
//! loopback against neither --max-per-ip nor --new-rooms-per-minute (unless
//! --limit-loopback), and its --max-connections (16,384) and --max-rooms-per-connection (100)
//! are above what this uses; it raises its own open-file limit to the hard limit, as the
//! bench does. Run it with --rate 0 as for every scenario (flood control would not bite at
//! this pace, but the suite's servers are the same).

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::lines::{read_lines, Lines};
use crate::load::{self, new_histogram, stamp, tagged_payload_at, Shared};
use crate::print::print_chat;
use crate::report::{Percentiles, Progress};
use crate::target::{Event, Parser, Target};
use crate::transport::{ConnWrite, Transport};
use crate::{system, Cli};

/// Rooms per connection, by connection index modulo 10: two on average.
const ROOMS_PER_CONNECTION: [usize; 10] = [1, 1, 1, 1, 2, 2, 2, 3, 3, 4];
/// The seed of the choice of speakers.
const SEED: u64 = 15;
/// From the last connection's join to the first message.
const SETTLE: Duration = Duration::from_secs(1);
/// How long to keep listening after the last expected delivery, for late duplicates.
const GRACE: Duration = Duration::from_millis(300);

/// The scenario's sizes.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Shape {
    pub connections: usize,
    pub rooms: usize,
    /// Members per room.
    pub members: usize,
    /// Messages a second per room.
    pub rate: f64,
    /// Messages per room.
    pub messages: u64,
    /// Payload bytes.
    pub size: usize,
}

impl Shape {
    pub fn of(cli: &Cli) -> Shape {
        let rooms = cli.rooms.unwrap_or(1000).max(1);
        let members = cli.clients.unwrap_or(10).max(2);
        let rate = cli.rate.filter(|r| *r > 0.0).unwrap_or(0.5);
        let duration = cli.duration.unwrap_or(20.0);
        Shape {
            // Two rooms per connection on average, as the membership deals them.
            connections: cli.connections.unwrap_or((rooms * members).div_ceil(2)),
            rooms,
            members,
            rate,
            messages: cli.messages.unwrap_or((duration * rate).round() as u64),
            size: cli.size.unwrap_or(64),
        }
    }
}

/// One message of the schedule: room `room`'s `seq`-th, said by connection `sender`, due
/// `at` after the start.
#[derive(Debug, Clone, Copy)]
struct Say {
    at: Duration,
    room: usize,
    seq: u64,
    sender: usize,
}

/// What a chat run measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ChatResult {
    pub shape: Shape,
    /// Connections in 1, 2, 3, ... rooms.
    pub rooms_per_connection: Vec<usize>,
    pub messages_sent: u64,
    pub messages_acked: u64,
    /// linechat: re-JOINs that made another room current before a SAY.
    pub room_switches: u64,
    pub expected_deliveries: u64,
    /// Deliveries of messages the connection should have had, each counted once.
    pub deliveries: u64,
    pub lost_deliveries: u64,
    /// Connections that missed at least one delivery.
    pub connections_short: usize,
    pub duplicate_deliveries: u64,
    /// Messages of a room the connection is not in, its own, or not the bench's.
    pub unexpected_deliveries: u64,
    /// ERR lines the server sent.
    pub errors: u64,
    /// From the first message due to the last delivery.
    pub seconds: f64,
    pub deliveries_per_sec: f64,
    pub offered_deliveries_per_sec: f64,
    pub latency_us: Percentiles,
    pub connect_us: Percentiles,
    /// The server's CPU time (user + system) from the start to the last delivery, per
    /// delivery, if its pid was given; and as a share of one core.
    pub server_cpu_ns_per_delivery: Option<f64>,
    pub server_cpu_share: Option<f64>,
}

/// Runs the scenario for the command line; fills `out`, prints the table unless the output
/// is JSON, and says whether every delivery came exactly once.
pub async fn scenario(cli: &Cli, progress: &Progress, out: &mut Value) -> Result<bool> {
    let shape = Shape::of(cli);
    let r = run(
        cli.target,
        &cli.addr,
        &shape,
        patience(cli),
        cli.server_pid,
        progress,
    )
    .await?;
    out["result"] = json!(r);
    if !cli.json {
        print_chat(cli, &r);
    }
    Ok(r.lost_deliveries == 0 && r.duplicate_deliveries == 0 && r.unexpected_deliveries == 0)
}

fn patience(cli: &Cli) -> Duration {
    Duration::from_secs(cli.patience.max(1))
}

pub fn room_name(room: usize) -> String {
    format!("chat{room}")
}

/// The rooms of each connection, its home first: every room gets exactly `members`.
pub fn memberships(connections: usize, rooms: usize, members: usize) -> Result<Vec<Vec<usize>>> {
    let slots = rooms * members;
    ensure!(
        connections >= 1 && connections <= slots && slots <= connections * rooms,
        "{connections} connections cannot make {rooms} rooms of {members} members"
    );
    let mut counts: Vec<usize> = (0..connections)
        .map(|i| ROOMS_PER_CONNECTION[i % 10].min(rooms))
        .collect();
    let mut total: usize = counts.iter().sum();
    // Other sizes than the default's: even out to exactly `slots`, round robin.
    let mut i = 0;
    while total != slots {
        let c = &mut counts[i % connections];
        if total < slots && *c < rooms {
            *c += 1;
            total += 1;
        } else if total > slots && *c > 1 {
            *c -= 1;
            total -= 1;
        }
        i += 1;
    }
    // Slot j belongs to room j % rooms: each room gets `members` slots, and a connection's
    // consecutive slots are in different rooms, as it has at most `rooms` of them.
    let mut slot = 0;
    Ok(counts
        .into_iter()
        .map(|c| {
            let mine = (slot..slot + c).map(|j| j % rooms).collect();
            slot += c;
            mine
        })
        .collect())
}

/// SplitMix64: a small seeded generator, so that every run chooses the same speakers.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) % n as u64) as usize
    }
}

/// Every message of the run in time order: room r speaks at (r / rooms + k) / rate s.
fn schedule(shape: &Shape, members_of: &[Vec<usize>]) -> Vec<Say> {
    let mut rng = Rng(SEED);
    let mut says = Vec::new();
    for (room, members) in members_of.iter().enumerate() {
        let mut last = usize::MAX;
        for seq in 0..shape.messages {
            let mut pick = rng.below(members.len());
            if pick == last {
                pick = (pick + 1 + rng.below(members.len() - 1)) % members.len();
            }
            last = pick;
            let at = (room as f64 / shape.rooms as f64 + seq as f64) / shape.rate;
            says.push(Say {
                at: Duration::from_secs_f64(at),
                room,
                seq,
                sender: members[pick],
            });
        }
    }
    says.sort_by_key(|s| s.at);
    says
}

/// The tag of a message in its payload, after the send time: room.seq.sender.
fn tag(say: &Say) -> String {
    format!("{}.{}.{}", say.room, say.seq, say.sender)
}

fn parse_tag(payload: &[u8]) -> Option<(usize, u64, usize)> {
    let tag = payload.get(17..)?.split(|&b| b == b' ').next()?;
    let mut parts = std::str::from_utf8(tag).ok()?.split('.');
    let mut next = || parts.next()?.parse::<u64>().ok();
    Some((next()? as usize, next()?, next()? as usize))
}

/// One connection's reader: checks and times each delivery against its rooms.
struct Member {
    target: Target,
    parser: Parser,
    me: usize,
    rooms: Vec<usize>,
    seen: HashSet<(usize, u64)>,
    hist: Histogram<u64>,
    got: u64,
    duplicates: u64,
    unexpected: u64,
    errors: u64,
    /// Since the last read: deliveries and acks to add to the run's counters.
    fresh: (u64, u64),
    shared: Arc<Shared>,
}

impl Member {
    fn new(target: Target, me: usize, rooms: &[usize], shared: Arc<Shared>) -> Member {
        Member {
            target,
            parser: Parser::default(),
            me,
            rooms: rooms.to_vec(),
            seen: HashSet::new(),
            hist: new_histogram(),
            got: 0,
            duplicates: 0,
            unexpected: 0,
            errors: 0,
            fresh: (0, 0),
            shared,
        }
    }
}

impl Lines for Member {
    /// A chat connection reads a few lines a second; 5,000 of 256 KiB would be 1.3 GB.
    const BUFFER: usize = 16 * 1024;

    fn line(&mut self, line: &[u8], now: u64) {
        match self.parser.line(self.target, line) {
            Event::Payload(p) => match parse_tag(p) {
                Some((room, seq, from)) if from != self.me && self.rooms.contains(&room) => {
                    if !self.seen.insert((room, seq)) {
                        self.duplicates += 1;
                        return;
                    }
                    self.got += 1;
                    self.fresh.0 += 1;
                    if let Some(sent) = stamp(p) {
                        self.hist.saturating_record(now.saturating_sub(sent) / 1000);
                    }
                }
                _ => self.unexpected += 1,
            },
            Event::Ack => self.fresh.1 += 1,
            Event::Other if line.starts_with(b"ERR ") || line.starts_with(b"-ERR") => {
                self.errors += 1
            }
            Event::Ping | Event::Other => {}
        }
    }

    fn end_of_read(&mut self, now: u64) {
        self.shared.add(std::mem::take(&mut self.fresh), None, now);
    }
}

/// Says one connection's messages, each when it is due, stamped with when it was due.
async fn speak(
    target: Target,
    mut write: ConnWrite,
    mut current: String,
    says: Vec<Say>,
    (start, epoch, size): (Instant, Instant, usize),
    switches: Arc<AtomicU64>,
) -> Result<ConnWrite> {
    let mut out = Vec::new();
    for say in says {
        let due = start + say.at;
        tokio::time::sleep_until(due.into()).await;
        out.clear();
        let room = room_name(say.room);
        if target == Target::Linechat && current != room {
            switches.fetch_add(1, Ordering::Relaxed);
        }
        target.switch_room(&room, &mut current, &mut out);
        let payload = tagged_payload_at(epoch, due, &tag(&say), size);
        target.publish(&room, &payload, &mut out);
        write.write_all(&out).await.context("send")?;
        write.flush().await.context("send")?;
    }
    Ok(write)
}

/// Connects every member, says the schedule, and checks what each connection received.
pub async fn run(
    target: Target,
    addr: &str,
    shape: &Shape,
    patience: Duration,
    server_pid: Option<u32>,
    progress: &Progress,
) -> Result<ChatResult> {
    let rooms_of = memberships(shape.connections, shape.rooms, shape.members)?;
    let mut members_of = vec![Vec::new(); shape.rooms];
    for (c, rooms) in rooms_of.iter().enumerate() {
        for &r in rooms {
            members_of[r].push(c);
        }
    }
    let says = schedule(shape, &members_of);
    let mut expected = vec![0u64; shape.connections];
    let mut says_of = vec![Vec::new(); shape.connections];
    for say in &says {
        for &m in members_of[say.room].iter().filter(|&&m| m != say.sender) {
            expected[m] += 1;
        }
        says_of[say.sender].push(*say);
    }
    let (streams, connect_times) = load::connect_all(
        target,
        &Transport::Plain,
        addr,
        shape.connections,
        |i| rooms_of[i].iter().map(|&r| room_name(r)).collect(),
        progress,
    )
    .await?;
    let epoch = Instant::now();
    let shared = Arc::new(Shared::default());
    let switches = Arc::new(AtomicU64::new(0));
    let (stop_tx, stop_rx) = watch::channel(false);
    let (mut readers, mut speakers) = (JoinSet::new(), JoinSet::new());
    // Write halves stay open until the run ends: dropping one would half-close it.
    let mut open_writes: Vec<ConnWrite> = Vec::new();
    // The presence lines of the joins (JOINED to the members already in) may still be on
    // their way: the first message is due once they have drained, and the clock and the CPU
    // count start then.
    let start = Instant::now() + SETTLE;
    let size = shape.size;
    for (i, ((stream, leftover), mine)) in streams.into_iter().zip(says_of).enumerate() {
        let (read, write) = stream.into_split();
        let mut member = Member::new(target, i, &rooms_of[i], shared.clone());
        let stop = stop_rx.clone();
        readers.spawn(async move {
            read_lines(read, leftover, epoch, stop, &mut member).await;
            member
        });
        if mine.is_empty() {
            open_writes.push(write);
            continue;
        }
        // After connecting, linechat's current room is the last one joined.
        let current = room_name(*rooms_of[i].last().expect("a room at least"));
        let switches = switches.clone();
        speakers.spawn(speak(
            target,
            write,
            current,
            mine,
            (start, epoch, size),
            switches,
        ));
    }
    tokio::time::sleep_until(start.into()).await;
    let cpu_before = server_pid.map(system::cpu_seconds).transpose()?;
    let sent_total = says.len() as u64;
    let want_acks = if target.acks() { sent_total } else { 0 };
    let last_due = start + says.last().map_or(Duration::ZERO, |s| s.at);
    let total_expected: u64 = expected.iter().sum();
    load::wait(
        &shared,
        (total_expected, want_acks),
        patience,
        last_due,
        progress,
        || {
            while let Some(done) = speakers.try_join_next() {
                open_writes.push(done??);
            }
            Ok(speakers.is_empty())
        },
    )
    .await?;
    let cpu_after = server_pid.map(system::cpu_seconds).transpose()?;
    let cpu_wall = start.elapsed().as_secs_f64();
    tokio::time::sleep(GRACE).await;
    let _ = stop_tx.send(true);
    speakers.abort_all();
    drop(open_writes);
    let mut members: Vec<Member> = Vec::with_capacity(shape.connections);
    while let Some(m) = readers.join_next().await {
        members.push(m?);
    }
    let mut latency = new_histogram();
    let (mut got, mut lost, mut short) = (0, 0, 0);
    let (mut duplicates, mut unexpected, mut errors) = (0, 0, 0);
    for m in &members {
        latency.add(&m.hist).expect("same bounds");
        got += m.got;
        let missed = expected[m.me].saturating_sub(m.got);
        lost += missed;
        short += usize::from(missed > 0);
        duplicates += m.duplicates;
        unexpected += m.unexpected;
        errors += m.errors;
    }
    let started_ns = start.saturating_duration_since(epoch).as_nanos() as u64;
    let last_ns = shared.last_event_ns.load(Ordering::Relaxed);
    let seconds = last_ns.saturating_sub(started_ns) as f64 / 1e9;
    let cpu = cpu_before.zip(cpu_after).map(|(b, a)| a - b);
    let mut rooms_per_connection = vec![0; rooms_of.iter().map(Vec::len).max().unwrap_or(0)];
    for rooms in &rooms_of {
        rooms_per_connection[rooms.len() - 1] += 1;
    }
    Ok(ChatResult {
        shape: shape.clone(),
        rooms_per_connection,
        messages_sent: sent_total,
        messages_acked: shared.acked.load(Ordering::Relaxed),
        room_switches: switches.load(Ordering::Relaxed),
        expected_deliveries: total_expected,
        deliveries: got,
        lost_deliveries: lost,
        connections_short: short,
        duplicate_deliveries: duplicates,
        unexpected_deliveries: unexpected,
        errors,
        seconds,
        deliveries_per_sec: if seconds > 0.0 {
            got as f64 / seconds
        } else {
            0.0
        },
        offered_deliveries_per_sec: shape.rate * (shape.rooms * (shape.members - 1)) as f64,
        latency_us: Percentiles::of(&latency),
        connect_us: Percentiles::of(&connect_times),
        server_cpu_ns_per_delivery: cpu.map(|c| c * 1e9 / got.max(1) as f64),
        server_cpu_share: cpu.map(|c| c / cpu_wall.max(1e-9)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_room_gets_its_members_and_a_connection_its_rooms_once() {
        for (connections, rooms, members) in [(5000, 1000, 10), (100, 20, 10), (7, 3, 4)] {
            let of = memberships(connections, rooms, members).unwrap();
            assert_eq!(of.len(), connections);
            let mut size = vec![0; rooms];
            for mine in &of {
                assert!(!mine.is_empty());
                let distinct: HashSet<_> = mine.iter().collect();
                assert_eq!(distinct.len(), mine.len());
                for &r in mine {
                    size[r] += 1;
                }
            }
            assert!(size.iter().all(|&s| s == members), "{size:?}");
        }
        let of = memberships(5000, 1000, 10).unwrap();
        let count = |n| of.iter().filter(|m| m.len() == n).count();
        assert_eq!(
            (count(1), count(2), count(3), count(4)),
            (2000, 1500, 1000, 500)
        );
        assert!(memberships(11, 1, 10).is_err());
    }

    #[test]
    fn speakers_are_members_and_change_every_time() {
        let shape = Shape {
            connections: 100,
            rooms: 20,
            members: 10,
            rate: 0.5,
            messages: 10,
            size: 64,
        };
        let of = memberships(100, 20, 10).unwrap();
        let mut members_of = vec![Vec::new(); 20];
        for (c, rooms) in of.iter().enumerate() {
            for &r in rooms {
                members_of[r].push(c);
            }
        }
        let says = schedule(&shape, &members_of);
        assert_eq!(says.len(), 200);
        assert!(says.windows(2).all(|w| w[0].at <= w[1].at));
        for (room, members) in members_of.iter().enumerate() {
            let speakers: Vec<usize> = says
                .iter()
                .filter(|s| s.room == room)
                .map(|s| s.sender)
                .collect();
            assert!(speakers.iter().all(|s| members.contains(s)));
            assert!(speakers.windows(2).all(|w| w[0] != w[1]));
            let distinct: HashSet<_> = speakers.iter().collect();
            assert!(distinct.len() > 3, "{speakers:?}");
        }
    }

    #[test]
    fn a_payload_carries_its_tag() {
        let epoch = Instant::now();
        let say = Say {
            at: Duration::ZERO,
            room: 12,
            seq: 3,
            sender: 4567,
        };
        let p = tagged_payload_at(epoch, epoch, &tag(&say), 64);
        assert_eq!(p.len(), 64);
        assert_eq!(parse_tag(&p), Some((12, 3, 4567)));
        assert_eq!(stamp(&p), Some(0));
        assert_eq!(
            parse_tag(&tagged_payload_at(epoch, epoch, "1.2.3", 0)),
            Some((1, 2, 3))
        );
    }

    #[test]
    fn a_member_counts_each_message_of_its_rooms_once_and_never_its_own() {
        let epoch = Instant::now();
        let shared = Arc::new(Shared::default());
        let mut m = Member::new(Target::Linechat, 1, &[0, 2], shared.clone());
        let msg = |room: usize, seq: u64, sender: usize| {
            let say = Say {
                at: Duration::ZERO,
                room,
                seq,
                sender,
            };
            let p = tagged_payload_at(epoch, epoch, &tag(&say), 64);
            let mut line = format!("MSG chat{room} 9 2026-12-03T00:00:00.000Z b_{sender} ");
            line.push_str(std::str::from_utf8(&p).unwrap());
            line
        };
        for line in [
            msg(0, 0, 5),
            msg(2, 0, 6),
            msg(0, 0, 5),
            msg(1, 0, 5),
            msg(0, 1, 1),
        ] {
            m.line(line.as_bytes(), 1000);
        }
        m.line(b"OK SAY 10 2026-12-03T00:00:00.000Z", 1000);
        m.line(b"ERR NOT_IN_ROOM you are in no room", 1000);
        m.end_of_read(1000);
        assert_eq!((m.got, m.duplicates, m.unexpected, m.errors), (2, 1, 2, 1));
        assert_eq!(shared.delivered.load(Ordering::Relaxed), 2);
        assert_eq!(shared.acked.load(Ordering::Relaxed), 1);
    }
}
