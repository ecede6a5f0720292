//! Express delivery (src/express.rs) attacked from outside: real TCP, the server on tokio's
//! multi-thread runtime (as in production), so that a fan-out on one worker thread writes to
//! a member's socket while its session is polled on another. Every test checks the protocol's
//! promises, not the mechanism: every live `MSG` exactly once, in id order, never one's own,
//! nothing after `OK PART`, presence in order, `BYE` last and line-aligned.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{memory_config, parse_message, Client, TestServer, PATIENCE};
use linechat::Config;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// A member whose every line is collected by a task of its own while the test writes.
struct Peer {
    nick: String,
    seen: Arc<Mutex<Vec<String>>>,
    writer: OwnedWriteHalf,
    reading: JoinHandle<()>,
}

impl Peer {
    /// Logs in as `nick` and joins `rooms` (`NONE`: no replay) in order: the last is current.
    async fn join(addr: SocketAddr, nick: &str, rooms: &[&str]) -> Peer {
        Peer::join_with(TcpStream::connect(addr).await.unwrap(), nick, rooms).await
    }

    async fn join_with(stream: TcpStream, nick: &str, rooms: &[&str]) -> Peer {
        let (r, mut writer) = stream.into_split();
        let mut lines = BufReader::new(r).lines();
        macro_rules! next {
            () => {
                tokio::time::timeout(PATIENCE, lines.next_line())
                    .await
                    .expect("a line in time")
                    .unwrap()
                    .expect("open")
            };
        }
        assert!(next!().starts_with("HELLO "));
        writer
            .write_all(format!("NICK {nick}\n").as_bytes())
            .await
            .unwrap();
        assert_eq!(next!(), format!("OK NICK {nick}"));
        for room in rooms {
            writer
                .write_all(format!("JOIN {room} NONE\n").as_bytes())
                .await
                .unwrap();
            // Presence of earlier joiners may come first; nothing else can.
            loop {
                let line = next!();
                if line.starts_with(&format!("OK JOIN {room} ")) {
                    break;
                }
                assert!(line.starts_with("JOINED "), "{line}");
            }
        }
        let seen = Arc::new(Mutex::new(Vec::new()));
        let collected = seen.clone();
        let reading = tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                collected.lock().unwrap().push(line);
            }
        });
        Peer {
            nick: nick.to_string(),
            seen,
            writer,
            reading,
        }
    }

    async fn send(&mut self, text: &str) {
        self.writer.write_all(text.as_bytes()).await.unwrap();
    }

    fn lines(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }

    /// Waits (within the patience) until `f` holds of the lines seen so far.
    async fn wait_for(&self, what: &str, f: impl Fn(&[String]) -> bool) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while !f(&self.seen.lock().unwrap()) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{}: waited in vain for {what}; last lines: {:?}",
                self.nick,
                self.lines().iter().rev().take(5).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Every line it got, once the server closed the connection.
    async fn finish(self) -> Vec<String> {
        tokio::time::timeout(PATIENCE, self.reading)
            .await
            .expect("the server closes the connection")
            .unwrap();
        Arc::try_unwrap(self.seen).unwrap().into_inner().unwrap()
    }
}

/// The id in `OK SAY <id> <time>`.
fn ack_id(line: &str) -> Option<u64> {
    line.strip_prefix("OK SAY ")
        .map(|rest| rest.split(' ').next().unwrap().parse().unwrap())
}

/// A deterministic pause of 0 to 2 ms, different for each (who, step).
fn jitter(who: usize, step: usize) -> Duration {
    Duration::from_micros(((who * 7919 + step * 104_729) % 2000) as u64)
}

/// The ids of the `MSG`s of `room` among `lines`, checking each is well formed.
fn msg_ids(lines: &[String], room: &str) -> Vec<u64> {
    lines
        .iter()
        .filter(|l| l.starts_with(&format!("MSG {room} ")))
        .map(|l| parse_message(l).id)
        .collect()
}

/// Says `text_of(0..total)` in the talker's current room, ten lines a write, each ten
/// waiting for their acks (then `after_ten`, with how many are acked, and `pause`); returns
/// the acked ids.
async fn say_by_tens(
    talker: &mut Client,
    total: usize,
    text_of: impl Fn(usize) -> String,
    pause: Duration,
    mut after_ten: impl FnMut(usize),
) -> Vec<u64> {
    let mut acked = Vec::new();
    for chunk in (0..total).collect::<Vec<_>>().chunks(10) {
        let out: String = chunk
            .iter()
            .map(|&i| format!("SAY {}\n", text_of(i)))
            .collect();
        talker.send_raw(out.as_bytes()).await;
        for _ in chunk {
            let (_, ok) = talker.until("OK SAY ").await;
            acked.push(ack_id(&ok).unwrap());
        }
        after_ten(acked.len());
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
    }
    acked
}

/// Many members in several rooms talk (pipelining, with pauses, so that the others wait
/// armed between messages) and ping (input that wakes a session while a fan-out may be
/// writing to its socket). Each must see every other member's message of its rooms exactly
/// once, in id order per room, never its own, every `PONG`, only whole lines, and at
/// shutdown `BYE` after everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_members_of_several_rooms_talking_and_pinging_see_everything_once_in_order() {
    const SAYS: usize = 150;
    let server = TestServer::start().await;
    // Joined in this order: the last is where each speaks.
    let memberships: [&[&str]; 9] = [
        &["r0"],
        &["r0", "r1"],
        &["r2", "r1", "r0"],
        &["r1"],
        &["r2", "r1"],
        &["r0", "r2"],
        &["r2"],
        &["r1", "r0", "r2"],
        &["r0", "r1"],
    ];
    let mut peers = Vec::new();
    for (i, rooms) in memberships.iter().enumerate() {
        peers.push(Peer::join(server.addr, &format!("m{i}"), rooms).await);
    }
    // Everyone talks at once, each from its own task.
    let mut talking = Vec::new();
    for (i, mut peer) in peers.into_iter().enumerate() {
        talking.push(tokio::spawn(async move {
            let mut pings = 0;
            for k in 0..SAYS {
                let mut out = format!("SAY m{i}-{k}\n");
                if k % 7 == i % 7 {
                    out.push_str(&format!("PING p{k}\n"));
                    pings += 1;
                }
                if k % 10 == 3 {
                    // A burst: several lines in one packet.
                    out.push_str(&format!("SAY m{i}-{k}b\nPING q{k}\n"));
                    pings += 1;
                }
                peer.send(&out).await;
                tokio::time::sleep(jitter(i, k)).await;
            }
            (peer, pings)
        }));
    }
    let mut peers = Vec::new();
    for t in talking {
        peers.push(t.await.unwrap());
    }
    for (peer, pings) in &peers {
        let says = SAYS + (0..SAYS).filter(|k| k % 10 == 3).count();
        peer.wait_for("its acks and pongs", |lines| {
            lines.iter().filter(|l| l.starts_with("OK SAY ")).count() == says
                && lines.iter().filter(|l| l.starts_with("PONG ")).count() == *pings
        })
        .await;
    }
    // What each room carried: the acked ids of those who speak there.
    let mut carried: HashMap<&str, Vec<u64>> = HashMap::new();
    for ((peer, _), rooms) in peers.iter().zip(&memberships) {
        let current = rooms.last().unwrap();
        carried
            .entry(current)
            .or_default()
            .extend(peer.lines().iter().filter_map(|l| ack_id(l)));
    }
    for ids in carried.values_mut() {
        ids.sort_unstable();
    }
    for ((peer, _), rooms) in peers.iter().zip(&memberships) {
        let own: Vec<u64> = peer.lines().iter().filter_map(|l| ack_id(l)).collect();
        for room in *rooms {
            // Ids are per room: its own are those of the room it speaks in.
            let mine = |id: &u64| room == rooms.last().unwrap() && own.contains(id);
            let want = carried[room].iter().filter(|id| !mine(id)).count();
            peer.wait_for(&format!("all of {room}"), |lines| {
                msg_ids(lines, room).len() >= want
            })
            .await;
        }
    }
    server.stop().await.unwrap();
    for ((peer, pings), rooms) in peers.into_iter().zip(&memberships) {
        let nick = peer.nick.clone();
        let mut lines = peer.finish().await;
        assert_eq!(
            lines.pop().as_deref(),
            Some("BYE server shutting down"),
            "{nick}: BYE last"
        );
        let own: Vec<u64> = lines.iter().filter_map(|l| ack_id(l)).collect();
        let mut shown: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        let mut pongs = 0;
        for line in &lines {
            if line.starts_with("MSG ") {
                let m = parse_message(line);
                assert_ne!(m.nick, nick, "{nick} shown its own message: {line}");
                assert!(rooms.contains(&m.room.as_str()), "{nick}: {line}");
                assert!(
                    m.text.starts_with(&format!("{}-", m.nick)),
                    "{nick}: {line}"
                );
                shown.entry(m.room).or_default().push(m.id);
            } else if line.starts_with("PONG ") {
                pongs += 1;
            } else {
                assert!(
                    line.starts_with("OK SAY ")
                        || line.starts_with("JOINED ")
                        || line.starts_with("LEFT "),
                    "{nick}: unexpected or torn line {line:?}"
                );
            }
        }
        assert_eq!(pongs, pings, "{nick}: every PONG");
        // An OK SAY never comes before a MSG of its room with a smaller id (none lagged).
        let current = rooms.last().unwrap();
        let mut later: Vec<u64> = msg_ids(&lines, current);
        later.reverse();
        for line in &lines {
            if line.starts_with(&format!("MSG {current} ")) {
                later.pop();
            } else if let Some(id) = ack_id(line) {
                assert!(
                    later.iter().all(|&m| m > id),
                    "{nick}: OK SAY {id} before a MSG with a smaller id"
                );
            }
        }
        for room in *rooms {
            let mine = |id: &u64| room == rooms.last().unwrap() && own.contains(id);
            let want: Vec<u64> = carried[room]
                .iter()
                .copied()
                .filter(|id| !mine(id))
                .collect();
            let got = shown.remove(*room).unwrap_or_default();
            assert_eq!(
                got.len(),
                want.len(),
                "{nick} in {room}: as many as carried"
            );
            assert_eq!(got, want, "{nick} in {room}: once each, in id order");
        }
    }
}

/// Presence and messages of one room keep their order for members waiting armed: a member
/// that joins and parts between messages is seen to do so exactly between them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn presence_lines_keep_their_place_among_messages() {
    const ROUNDS: usize = 150;
    let server = TestServer::start().await;
    let mut talker = server.login("talker").await;
    talker.join("p NONE").await;
    let mut watchers = Vec::new();
    for i in 0..4 {
        watchers.push(Peer::join(server.addr, &format!("w{i}"), &["q", "p"]).await);
    }
    let mut comer = server.login("comer").await;
    let mut expected = Vec::new();
    for i in 0..ROUNDS {
        talker.say(&format!("a{i}")).await;
        expected.push(format!("a{i}"));
        comer.send("JOIN p NONE").await;
        comer.until("OK JOIN p ").await;
        expected.push("JOINED p comer".to_string());
        talker.say(&format!("b{i}")).await;
        expected.push(format!("b{i}"));
        if i % 2 == 0 {
            comer.send("PART p").await;
            comer.until("OK PART p").await;
        } else {
            // Leaving by disconnecting: LEFT comes from the closing session.
            comer.send("QUIT").await;
            comer.until_closed_after("BYE goodbye").await;
            comer = server.login("comer").await;
        }
        expected.push("LEFT p comer".to_string());
    }
    talker.say("end").await;
    expected.push("end".to_string());
    for w in &watchers {
        w.wait_for("the end", |lines| {
            lines.last().is_some_and(|l| l.ends_with(" end"))
        })
        .await;
        let got: Vec<String> = w
            .lines()
            .iter()
            .filter(|l| !l.starts_with("JOINED p w") && !l.starts_with("JOINED q w"))
            .map(|l| {
                if l.starts_with("MSG ") {
                    parse_message(l).text
                } else {
                    l.clone()
                }
            })
            .collect();
        assert_eq!(got, expected, "{}", w.nick);
    }
    server.stop().await.unwrap();
}

/// A member parts and re-joins a room again and again while it is busy: after `OK PART`
/// nothing of the room arrives, and each membership shows the room's messages from just after
/// the `<last-id>` of its `OK JOIN`, without a gap, once each.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nothing_after_part_and_no_gap_after_rejoin_while_the_room_is_busy() {
    const ROUNDS: usize = 120;
    let server = TestServer::start().await;
    let mut talker = server.login("talker").await;
    talker.join("x NONE").await;
    let mut member = server.login("member").await;
    member.join("y NONE").await;
    member.join("x NONE").await;
    talker.expect("JOINED x member").await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopping = stop.clone();
    let talking = tokio::spawn(async move {
        let mut acked = Vec::new();
        let mut k = 0;
        while !stopping.load(std::sync::atomic::Ordering::Relaxed) {
            talker
                .send_raw(format!("SAY t{k}\nSAY t{k}b\n").as_bytes())
                .await;
            for _ in 0..2 {
                let (_, ok) = talker.until("OK SAY ").await;
                acked.push(ack_id(&ok).unwrap());
            }
            k += 1;
            tokio::time::sleep(jitter(1, k)).await;
        }
        (talker, acked)
    });
    // Each membership: the OK JOIN's last id, and the ids shown until OK PART.
    let mut memberships: Vec<(u64, Vec<u64>)> = Vec::new();
    let mut since = 0;
    let mut shown = Vec::new();
    for i in 0..ROUNDS {
        member.send("PART x").await;
        loop {
            let line = member.line().await;
            if line == "OK PART x" {
                break;
            }
            assert!(line.starts_with("MSG x "), "{line}");
            shown.push(parse_message(&line).id);
        }
        memberships.push((since, std::mem::take(&mut shown)));
        // Out of the room: not a line of it, however busy it is.
        tokio::time::sleep(jitter(i, 3)).await;
        member.send(&format!("PING out{i}")).await;
        member.expect(&format!("PONG out{i}")).await;
        member.send("JOIN x NONE").await;
        let (before, ok) = member.until("OK JOIN x ").await;
        assert!(before.is_empty(), "after OK PART x: {before:?}");
        since = ok.rsplit(' ').next().unwrap().parse().unwrap();
        tokio::time::sleep(jitter(i, 5)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (_talker, acked) = talking.await.unwrap();
    member.send("PART x").await;
    let (rest, _) = member.until("OK PART x").await;
    memberships.push((since, rest.iter().map(|l| parse_message(l).id).collect()));
    let mut nonempty = 0;
    for (since, ids) in &memberships {
        let from = acked
            .iter()
            .position(|id| id > since)
            .unwrap_or(acked.len());
        assert!(from + ids.len() <= acked.len(), "more than was said");
        assert_eq!(
            *ids,
            acked[from..from + ids.len()],
            "the membership after {since} shows the room from there, no gap, once each"
        );
        nonempty += usize::from(!ids.is_empty());
    }
    assert!(nonempty > ROUNDS / 4, "the room was busy while joined");
    server.stop().await.unwrap();
}

/// Re-joins (`JOIN` again, `LAST n`, `SINCE id`) and joins of another room while the room is
/// busy never touch the live feed: every message arrives once as `MSG`, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rejoins_and_replays_never_duplicate_or_drop_live_messages() {
    const SAYS: usize = 600;
    let server = TestServer::start().await;
    let mut talker = server.login("talker").await;
    talker.join("a NONE").await;
    let mut member = Peer::join(server.addr, "member", &["a"]).await;
    let talking = tokio::spawn(async move {
        let mut acked = Vec::new();
        for k in 0..SAYS {
            acked.push(talker.say(&format!("t{k}")).await);
            tokio::time::sleep(jitter(2, k)).await;
        }
        acked
    });
    let mut oks = 0;
    for i in 0..60 {
        let command = match i % 5 {
            0 => "JOIN a\n".to_string(),
            1 => "JOIN a LAST 3\n".to_string(),
            2 => format!("JOIN a SINCE {}\n", i * 5),
            3 => "JOIN b NONE\nSAY in b\nJOIN a NONE\n".to_string(),
            _ => "JOIN b\nPART b\n".to_string(),
        };
        member.send(&command).await;
        oks += command.lines().count();
        member
            .wait_for("its replies", |lines| {
                lines
                    .iter()
                    .filter(|l| l.starts_with("OK ") || l.starts_with("ERR "))
                    .count()
                    == oks
            })
            .await;
        tokio::time::sleep(jitter(i, 9)).await;
    }
    let acked = talking.await.unwrap();
    member
        .wait_for("every message", |lines| {
            msg_ids(lines, "a").len() >= acked.len()
        })
        .await;
    server.stop().await.unwrap();
    let lines = member.finish().await;
    assert!(
        lines.iter().all(|l| !l.starts_with("ERR ")),
        "{:?}",
        lines.iter().find(|l| l.starts_with("ERR "))
    );
    assert_eq!(msg_ids(&lines, "a"), acked, "live: once each, in order");
}

/// A member that reads in bursts with long pauses (its small socket fills and drains, so
/// express writes take all, part, or none), behind a room with long lines of varying length:
/// every message arrives once, in order, whole, with `LAGGED` where the feed broke off.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reader_that_stops_and_goes_gets_every_message_once_and_whole() {
    const TOTAL: usize = 3000;
    let config = Config {
        outbound_limit: 64 * 1024,
        ..memory_config()
    };
    let server = TestServer::start_with(config).await;
    let mut talker = server.login("talker").await;
    talker.join("r NONE").await;
    let mut slow = Client::connect_small(server.addr).await;
    slow.send("NICK slow").await;
    slow.expect("OK NICK slow").await;
    slow.send("JOIN r NONE").await;
    let (_, ok) = slow.until("OK JOIN r ").await;
    let mut last_shown: u64 = ok.rsplit(' ').next().unwrap().parse().unwrap();
    talker.expect("JOINED r slow").await;
    let text_of = |i: usize| format!("{i} {}", "x".repeat(1000 + (i * 337) % 3000));
    let (progress_tx, progress) = tokio::sync::watch::channel(0usize);
    let talking = tokio::spawn(async move {
        let pause = Duration::from_millis(1);
        let acked = say_by_tens(&mut talker, TOTAL, text_of, pause, |n| {
            let _ = progress_tx.send(n);
        })
        .await;
        (talker, acked)
    });
    let (mut got, mut lagged) = (Vec::new(), 0);
    let mut burst = 0;
    while got.len() < TOTAL {
        let line = slow.line().await;
        if let Some(rest) = line.strip_prefix("LAGGED r ") {
            let after: u64 = rest.split(' ').next().unwrap().parse().unwrap();
            assert_eq!(after, last_shown, "LAGGED names the last id delivered");
            lagged += 1;
            continue;
        }
        let m = parse_message(&line);
        assert_eq!((m.kind.as_str(), m.nick.as_str()), ("MSG", "talker"));
        assert!(m.id > last_shown, "in order, no duplicate: {line:.40}");
        assert_eq!(m.text, text_of(got.len()), "whole, and no gap");
        last_shown = m.id;
        got.push(m.id);
        burst += 1;
        if got.len() == 100 {
            // A long pause first, so that it surely lags: 5 MB, more than the kernel buffers.
            let mut progress = progress.clone();
            progress.wait_for(|&n| n >= TOTAL * 2 / 3).await.unwrap();
        }
        if burst == 150 {
            burst = 0;
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    }
    let (_talker, acked) = talking.await.unwrap();
    assert_eq!(got, acked);
    // Nothing more but, possibly, a LAGGED with nothing after it: the live traffic that came
    // during the last catch-up overflowed, though the catch-up had shown it (so before
    // express delivery too; a wart, not a gap).
    slow.send("PING sync").await;
    let (rest, _) = slow.until("PONG sync").await;
    for line in rest {
        assert_eq!(
            line.split(' ').take(3).collect::<Vec<_>>(),
            ["LAGGED", "r", &last_shown.to_string()]
        );
    }
    assert!(lagged > 0, "it lagged");
    server.stop().await.unwrap();
}

/// The shared check of lags and catch-up, on the multi-thread runtime.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lag_and_catch_up_stay_exact_on_the_multi_thread_runtime() {
    let config = Config {
        outbound_limit: 256 * 1024,
        ..memory_config()
    };
    let server = TestServer::start_with(config).await;
    common::check_lag_and_replay(&server).await;
    server.stop().await.unwrap();
}

/// A member that never reads, behind lines of many lengths (express writes end mid-line),
/// is closed `BYE too slow`: what it finally reads is whole lines, a prefix of the room's
/// traffic, then `BYE too slow`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn too_slow_is_still_line_aligned_after_express_writes_mid_line() {
    let config = Config {
        stall_timeout: Duration::from_secs(1),
        close_grace: Duration::from_secs(1),
        ..memory_config()
    };
    let server = TestServer::start_with(config).await;
    let mut talker = server.login("talker").await;
    talker.join("r NONE").await;
    let mut stuck = Client::connect_small(server.addr).await;
    stuck.send("NICK stuck").await;
    stuck.expect("OK NICK stuck").await;
    stuck.send("JOIN r NONE").await;
    stuck.until("OK JOIN r ").await;
    talker.expect("JOINED r stuck").await;
    let text_of = |i: usize| format!("{i} {}", "y".repeat(500 + (i * 211) % 2500));
    let mut i = 0;
    // Paced, so that it waits armed between messages while its socket fills.
    loop {
        let out: String = (i..i + 5)
            .map(|j| format!("SAY {}\n", text_of(j)))
            .collect();
        talker.send_raw(out.as_bytes()).await;
        let mut left = false;
        for _ in 0..5 {
            let (before, _) = talker.until("OK SAY ").await;
            left |= before.iter().any(|l| l == "LEFT r stuck");
        }
        i += 5;
        if left {
            break;
        }
        assert!(i < 20_000, "never closed as too slow");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let mut next = 0;
    let mut last = None;
    while let Some(line) = stuck.try_line().await {
        if let Some(prev) = last.take() {
            assert!(
                prev != "BYE too slow",
                "BYE too slow is the last line, not {line:.40}"
            );
        }
        if line.starts_with("MSG ") {
            assert_eq!(
                parse_message(&line).text,
                text_of(next),
                "whole lines, no gap"
            );
            next += 1;
        } else {
            assert!(
                line.starts_with("LAGGED r ") || line == "BYE too slow",
                "{line:.60}"
            );
        }
        last = Some(line);
    }
    assert_eq!(last.as_deref(), Some("BYE too slow"));
    assert!(next > 0 && next < i, "{next} of {i}");
    server.stop().await.unwrap();
}

/// Clients that half-close mid-traffic get every answer, `BYE end of input`, then the end
/// of the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_half_closing_member_gets_its_answers_bye_and_the_end() {
    let server = TestServer::start().await;
    let mut talker = server.login("talker").await;
    talker.join("h NONE").await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopping = stop.clone();
    let talking = tokio::spawn(async move {
        let mut k = 0;
        while !stopping.load(std::sync::atomic::Ordering::Relaxed) {
            talker.send(&format!("SAY t{k}")).await;
            talker.until("OK SAY ").await;
            k += 1;
            tokio::time::sleep(jitter(3, k)).await;
        }
        talker
    });
    for i in 0..40 {
        let stream = TcpStream::connect(server.addr).await.unwrap();
        let (r, mut w) = stream.into_split();
        let mut lines = BufReader::new(r).lines();
        w.write_all(format!("NICK h{i}\nJOIN h NONE\n").as_bytes())
            .await
            .unwrap();
        tokio::time::sleep(jitter(i, 1) * 5).await;
        w.write_all(format!("SAY bye{i}\nPING last").as_bytes())
            .await
            .unwrap();
        w.shutdown().await.unwrap();
        let mut got = Vec::new();
        loop {
            let line = tokio::time::timeout(PATIENCE, lines.next_line())
                .await
                .unwrap_or_else(|_| panic!("h{i}: no end of stream; got {got:?}"))
                .unwrap();
            match line {
                Some(line) => got.push(line),
                None => break,
            }
        }
        assert_eq!(got.last().map(String::as_str), Some("BYE end of input"));
        assert!(got.iter().any(|l| l.starts_with("OK SAY ")), "{got:?}");
        assert!(got.iter().any(|l| l == "PONG last"), "{got:?}");
        let ids = msg_ids(&got, "h");
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    talking.await.unwrap();
    server.stop().await.unwrap();
}

/// Members that reset their connection (RST) at any moment while long lines are being
/// written to them: the server carries on, the others get everything, and the room forgets
/// them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn members_resetting_mid_delivery_harm_nobody_else() {
    const RESETS: usize = 40;
    let server = TestServer::start().await;
    let mut talker = server.login("talker").await;
    talker.join("z NONE").await;
    let watcher = Peer::join(server.addr, "watcher", &["z"]).await;
    talker.expect("JOINED z watcher").await;
    let addr = server.addr;
    let joined = watcher.seen.clone();
    let resetting = tokio::spawn(async move {
        for i in 0..RESETS {
            let stream = TcpStream::connect(addr).await.unwrap();
            socket2::SockRef::from(&stream)
                .set_recv_buffer_size(4096)
                .unwrap();
            let mut stream = stream;
            stream
                .write_all(format!("NICK x{i}\nJOIN z NONE\n").as_bytes())
                .await
                .unwrap();
            // In the room (so its LEFT must come), then gone at any moment.
            let deadline = tokio::time::Instant::now() + PATIENCE;
            let mine = format!("JOINED z x{i}");
            while !joined.lock().unwrap().contains(&mine) {
                assert!(tokio::time::Instant::now() < deadline, "{mine}");
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            tokio::time::sleep(jitter(i, 2) * 10).await;
            socket2::SockRef::from(&stream)
                .set_linger(Some(Duration::ZERO))
                .unwrap();
            drop(stream);
        }
    });
    let payload = "r".repeat(4000);
    let mut acked = Vec::new();
    for k in 0..400 {
        acked.push(talker.say(&format!("{k} {payload}")).await);
        if k % 4 == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    resetting.await.unwrap();
    watcher
        .wait_for("every message and every LEFT", |lines| {
            msg_ids(lines, "z").len() >= acked.len()
                && lines.iter().filter(|l| l.starts_with("LEFT z x")).count() == RESETS
        })
        .await;
    talker.send("WHO z").await;
    let (_, ok) = talker.until("OK WHO z ").await;
    assert_eq!(ok, "OK WHO z 2");
    server.stop().await.unwrap();
    let lines = watcher.finish().await;
    assert_eq!(msg_ids(&lines, "z"), acked);
    for (k, line) in lines.iter().filter(|l| l.starts_with("MSG ")).enumerate() {
        assert_eq!(parse_message(line).text, format!("{k} {payload}"));
    }
}

/// WebSocket members (never armed) share a room with plain ones (armed): each kind gets every
/// message once, in order, and the plain ones' express writes never reach a WebSocket.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn websocket_and_plain_members_of_one_room_each_get_everything() {
    const SAYS: usize = 300;
    let server = TestServer::start_web_with(memory_config()).await;
    let http = server.http_addr.unwrap();
    let mut ws = common::web::WsClient::login(http, "web").await;
    ws.send("JOIN w NONE").await;
    ws.until("OK JOIN w ").await;
    let mut ws_seen = Vec::new();
    let plain = Peer::join(server.addr, "plain", &["w"]).await;
    assert_eq!(ws.line().await, "JOINED w plain");
    let mut talker = server.login("talker").await;
    talker.join("w NONE").await;
    assert_eq!(ws.line().await, "JOINED w talker");
    let (mut acked, mut ws_own) = (Vec::new(), Vec::new());
    for k in 0..SAYS {
        acked.push(talker.say(&format!("t{k}")).await);
        if k % 3 == 0 {
            // The WebSocket member speaks too: the plain ones get it by express.
            ws.send(&format!("SAY from web {k}")).await;
            let seen = ws.until("OK SAY ").await;
            acked.push(ack_id(seen.last().unwrap()).unwrap());
            ws_own.push(*acked.last().unwrap());
            ws_seen.extend(seen);
        }
        tokio::time::sleep(jitter(4, k)).await;
    }
    acked.sort_unstable();
    plain
        .wait_for("everything", |lines| {
            msg_ids(lines, "w").len() >= acked.len()
        })
        .await;
    let others: Vec<u64> = acked
        .iter()
        .copied()
        .filter(|id| !ws_own.contains(id))
        .collect();
    while msg_ids(&ws_seen, "w").len() < others.len() {
        ws_seen.push(ws.line().await);
    }
    assert_eq!(msg_ids(&ws_seen, "w"), others, "the WebSocket member");
    server.stop().await.unwrap();
    let lines = plain.finish().await;
    assert_eq!(msg_ids(&lines, "w"), acked, "the plain member");
}

/// Members of many rooms keep leaving and re-entering some while every room is busy, all at
/// once (the rooms an armed mailbox shows change between each wait): in every membership
/// each room's messages arrive from just after the `OK JOIN`'s `<last-id>`, once each, in
/// order, without a gap, and none after `OK PART`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn members_churning_through_busy_rooms_see_each_membership_exactly() {
    const ROOMS: usize = 6;
    const CHURNERS: usize = 4;
    const ROUNDS: usize = 60;
    let server = TestServer::start().await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut talkers = Vec::new();
    for r in 0..ROOMS {
        let mut talker = server.login(&format!("t{r}")).await;
        talker.join(&format!("c{r} NONE")).await;
        let stopping = stop.clone();
        talkers.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut k = 0;
            while !stopping.load(std::sync::atomic::Ordering::Relaxed) {
                acked.push(talker.say(&format!("{r}-{k}")).await);
                k += 1;
                tokio::time::sleep(jitter(r, k)).await;
            }
            (talker, acked)
        }));
    }
    let mut churners = Vec::new();
    for c in 0..CHURNERS {
        let mut member = server.login(&format!("ch{c}")).await;
        let addr_lines = tokio::spawn(async move {
            let mut lines = Vec::new();
            let mut joined = [false; ROOMS];
            for round in 0..ROUNDS * 2 {
                let r = (c * 5 + round * 7 + round / 3) % ROOMS;
                let command = if joined[r] {
                    format!("PART c{r}")
                } else {
                    format!("JOIN c{r} NONE")
                };
                joined[r] = !joined[r];
                member.send(&command).await;
                let reply = format!("OK {} c{r}", &command[..4]);
                loop {
                    let line = member.line().await;
                    let done = line.starts_with(&reply);
                    lines.push(line);
                    if done {
                        break;
                    }
                }
                tokio::time::sleep(jitter(c, round) * 3).await;
            }
            for (r, _) in joined.iter().enumerate().filter(|(_, j)| **j) {
                member.send(&format!("PART c{r}")).await;
                let (before, ok) = member.until(&format!("OK PART c{r}")).await;
                lines.extend(before);
                lines.push(ok);
            }
            (member, lines)
        });
        churners.push(addr_lines);
    }
    let mut seen = Vec::new();
    for c in churners {
        seen.push(c.await.unwrap());
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut carried = Vec::new();
    let mut keep = Vec::new();
    for t in talkers {
        let (talker, acked) = t.await.unwrap();
        keep.push(talker);
        carried.push(acked);
    }
    let mut shown_any = 0;
    for (member, lines) in &seen {
        let _ = member;
        // Per room: the membership under way (its last id and what it showed), if any.
        let mut open: HashMap<String, (u64, Vec<u64>)> = HashMap::new();
        for line in lines {
            let words: Vec<&str> = line.splitn(6, ' ').collect();
            match words[..] {
                ["OK", "JOIN", room, _, last] => {
                    assert!(open
                        .insert(room.to_string(), (last.parse().unwrap(), Vec::new()))
                        .is_none());
                }
                ["OK", "PART", room] => {
                    let (since, ids) = open.remove(room).expect("parted a joined room");
                    let acked = &carried[room[1..].parse::<usize>().unwrap()];
                    let from = acked
                        .iter()
                        .position(|id| *id > since)
                        .unwrap_or(acked.len());
                    assert!(
                        from + ids.len() <= acked.len(),
                        "{room}: more than was said"
                    );
                    assert_eq!(
                        ids,
                        acked[from..from + ids.len()],
                        "{room}: the membership after {since}: from there, once each, no gap"
                    );
                    shown_any += ids.len();
                }
                ["MSG", room, ..] => {
                    let m = parse_message(line);
                    open.get_mut(room)
                        .unwrap_or_else(|| panic!("a message of a room not joined: {line}"))
                        .1
                        .push(m.id);
                }
                _ => assert!(
                    line.starts_with("JOINED ") || line.starts_with("LEFT "),
                    "{line}"
                ),
            }
        }
        assert!(open.is_empty());
    }
    assert!(shown_any > 100, "the rooms were busy: {shown_any}");
    server.stop().await.unwrap();
}

/// The server stops while a busy room's members are mid-line (slow readers with small
/// buffers, so that express writes leave line ends behind): each reads whole lines, its
/// messages once each and in order, a prefix of the room's traffic, and `BYE` last.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_shutdown_mid_line_still_ends_with_bye_after_whole_lines() {
    let config = Config {
        close_grace: Duration::from_secs(15),
        ..memory_config()
    };
    let server = TestServer::start_with(config).await;
    let mut talker = server.login("talker").await;
    talker.join("s NONE").await;
    let text_of = |i: usize| format!("{i} {}", "z".repeat(300 + (i * 611) % 3700));
    let mut readers = Vec::new();
    for n in 0..6 {
        let mut c = Client::connect_small(server.addr).await;
        c.send(&format!("NICK s{n}\nJOIN s NONE")).await;
        c.until("OK JOIN s ").await;
        talker.until(&format!("JOINED s s{n}")).await;
        readers.push(tokio::spawn(async move {
            let (mut next, mut last_id, mut lines) = (None::<usize>, 0, 0);
            loop {
                let line = c.try_line().await.expect("BYE before the end");
                if line == "BYE server shutting down" {
                    break;
                }
                if line.starts_with("LAGGED s ")
                    || line.starts_with("JOINED s ")
                    || line.starts_with("LEFT s ")
                {
                    continue;
                }
                let m = parse_message(&line);
                assert!(m.id > last_id, "s{n}: in order, once: {line:.40}");
                let i: usize = m.text.split(' ').next().unwrap().parse().unwrap();
                assert_eq!(m.text, text_of(i), "s{n}: a whole line");
                assert!(next.is_none_or(|want| want == i), "s{n}: no gap at {i}");
                next = Some(i + 1);
                last_id = m.id;
                lines += 1;
                if lines % (20 + n * 10) == 0 {
                    tokio::time::sleep(Duration::from_millis(5 * n as u64)).await;
                }
            }
            assert!(c.try_line().await.is_none(), "s{n}: nothing after BYE");
            lines
        }));
    }
    let talking = tokio::spawn(async move {
        let mut i = 0;
        loop {
            let out: String = (i..i + 4)
                .map(|j| format!("SAY {}\n", text_of(j)))
                .collect();
            talker.send_raw(out.as_bytes()).await;
            let mut acks = 0;
            while acks < 4 {
                match talker.try_line().await {
                    None => return i,
                    Some(line) => acks += usize::from(line.starts_with("OK SAY ")),
                }
            }
            i += 4;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    server.stop().await.unwrap();
    let said = talking.await.unwrap();
    for r in readers {
        let got = r.await.unwrap();
        assert!(got > 0 && got <= said + 4, "{got} of {said}");
    }
}

/// The race at the heart of express delivery: a member whose input wakes its session all the
/// time (pings, some pipelined) while four talkers' messages are being written to its socket
/// by the fan-out on other threads. Its stream must stay whole lines: every `PONG` in order,
/// every message once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn input_waking_the_session_while_deliveries_are_written_tears_nothing() {
    const SAYS: usize = 250;
    const PINGS: usize = 3000;
    let server = TestServer::start().await;
    let mut pinger = Peer::join(server.addr, "pinger", &["k"]).await;
    let mut talking = Vec::new();
    for t in 0..4 {
        let mut talker = server.login(&format!("k{t}")).await;
        talker.join("k NONE").await;
        talking.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..SAYS {
                acked.push(
                    talker
                        .say(&format!("{t}-{i} {}", "w".repeat(i * 13 % 900)))
                        .await,
                );
                tokio::time::sleep(jitter(t, i)).await;
            }
            (talker, acked)
        }));
    }
    for p in 0..PINGS {
        let out = if p % 10 == 0 {
            format!("PING {p}\nPING {p}b\n")
        } else {
            format!("PING {p}\n")
        };
        pinger.send(&out).await;
        if p % 3 == 0 {
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
    }
    let mut acked = Vec::new();
    let mut keep = Vec::new();
    for t in talking {
        let (talker, ids) = t.await.unwrap();
        keep.push(talker);
        acked.extend(ids);
    }
    acked.sort_unstable();
    pinger
        .wait_for("everything", |lines| {
            msg_ids(lines, "k").len() >= acked.len()
                && lines.iter().filter(|l| l.starts_with("PONG ")).count() == PINGS + PINGS / 10
        })
        .await;
    server.stop().await.unwrap();
    let mut lines = pinger.finish().await;
    assert_eq!(lines.pop().as_deref(), Some("BYE server shutting down"));
    let mut pongs = Vec::new();
    for line in &lines {
        if let Some(token) = line.strip_prefix("PONG ") {
            pongs.push(token.to_string());
        } else if line.starts_with("MSG ") {
            let m = parse_message(line);
            let (who, rest) = m.text.split_once('-').unwrap();
            let (i, w) = rest.split_once(' ').unwrap();
            assert!(who.parse::<usize>().unwrap() < 4, "{line:.60}");
            assert_eq!(
                w.len(),
                i.parse::<usize>().unwrap() * 13 % 900,
                "a whole line"
            );
        } else {
            // Talkers joining, and leaving as the server stops.
            assert!(
                line.starts_with("JOINED k k") || line.starts_with("LEFT k k"),
                "torn or unexpected: {line:.80}"
            );
        }
    }
    let want: Vec<String> = (0..PINGS)
        .flat_map(|p| {
            let mut v = vec![p.to_string()];
            if p % 10 == 0 {
                v.push(format!("{p}b"));
            }
            v
        })
        .collect();
    assert_eq!(pongs, want, "every PONG, in order");
    assert_eq!(msg_ids(&lines, "k"), acked, "every message once, in order");
}

/// Readers that read steadily but slower than a room talks: their sockets stay nearly full,
/// so each time a session has written everything and waits armed, the next delivery finds a
/// socket that takes part of it or none (the fallbacks of express delivery), again and
/// again, with lags and catch-ups between. Each still gets every message once, whole, in
/// order, `LAGGED` naming the last one delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn steady_slow_readers_get_every_message_through_partial_and_refused_writes() {
    const TOTAL: usize = 3500;
    let config = Config {
        outbound_limit: 256 * 1024,
        ..memory_config()
    };
    let server = TestServer::start_with(config).await;
    let mut talker = server.login("talker").await;
    talker.join("v NONE").await;
    let text_of = |i: usize| format!("{i} {}", "v".repeat(1500 + (i * 733) % 2500));
    let mut readers = Vec::new();
    for n in 0..3usize {
        let mut c = Client::connect_small(server.addr).await;
        c.send(&format!("NICK v{n}\nJOIN v NONE")).await;
        let (_, ok) = c.until("OK JOIN v ").await;
        talker.until(&format!("JOINED v v{n}")).await;
        let mut last: u64 = ok.rsplit(' ').next().unwrap().parse().unwrap();
        readers.push(tokio::spawn(async move {
            let (mut got, mut lagged) = (0, 0);
            while got < TOTAL {
                let line = c.line().await;
                if let Some(rest) = line.strip_prefix("LAGGED v ") {
                    assert_eq!(rest.split(' ').next(), Some(last.to_string().as_str()));
                    lagged += 1;
                    continue;
                }
                if line.starts_with("JOINED v ") {
                    continue;
                }
                let m = parse_message(&line);
                assert!(m.id > last, "v{n}: in order, once: {line:.40}");
                assert_eq!(m.text, text_of(got), "v{n}: whole, no gap");
                last = m.id;
                got += 1;
                if got % (2 + 2 * n) == 0 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            (c, lagged)
        }));
    }
    say_by_tens(&mut talker, TOTAL, text_of, Duration::ZERO, |_| {}).await;
    let mut done = Vec::new();
    for r in readers {
        done.push(r.await.unwrap());
    }
    for (c, _lagged) in &mut done {
        c.send("PING sync").await;
        let (rest, _) = c.until("PONG sync").await;
        assert!(rest.iter().all(|l| l.starts_with("LAGGED v ")), "{rest:?}");
    }
    server.stop().await.unwrap();
}
