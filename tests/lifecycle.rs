//! Whole sessions as netcat would drive them, slow readers, and graceful shutdown.

mod common;

use std::time::Duration;

use common::binary::{linechat, Binary};
use common::{is_rfc3339_millis, memory_config, parse_message, pg, Client, TestServer, PATIENCE};
use linechat::Config;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Writes `input` in one go, half-closes like `nc -N`, and reads until the server closes.
async fn pipe_through(addr: std::net::SocketAddr, input: &[u8]) -> Vec<String> {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(input).await.unwrap();
    stream.shutdown().await.unwrap();
    let mut out = String::new();
    tokio::time::timeout(PATIENCE, stream.read_to_string(&mut out))
        .await
        .expect("server closes")
        .unwrap();
    out.lines().map(str::to_string).collect()
}

/// Replaces the time in OK SAY / MSG / HIST lines with `<time>`, after checking its format.
fn without_times(lines: Vec<String>) -> Vec<String> {
    lines
        .into_iter()
        .map(|l| {
            let mut words: Vec<&str> = l.splitn(6, ' ').collect();
            let at = match words[0] {
                "MSG" | "HIST" => 3,
                "OK" if words.get(1) == Some(&"SAY") => 3,
                _ => return l.clone(),
            };
            assert!(is_rfc3339_millis(words[at]), "{l}");
            words[at] = "<time>";
            words.join(" ")
        })
        .collect()
}

#[tokio::test]
async fn a_whole_session_piped_as_netcat_would() {
    let server = TestServer::start().await;
    let mut bob = server.login("bob").await;
    bob.join("4").await;
    bob.say("anyone here?").await;

    let input = b"NICK alice\r\njoin 4\nSAY hi bob\r\nPING 1\nWHO 4\nHISTORY 4 LIMIT 1\nQUIT done for today\nSAY never read\n";
    let transcript = without_times(pipe_through(server.addr, input).await);
    let greeting = &transcript[0];
    assert!(greeting.starts_with("HELLO linechat "), "{greeting}");
    assert!(
        greeting.contains("NICK <name>"),
        "tells a netcat user what to type: {greeting}"
    );
    // PONG is sent as soon as PING is read, so it may overtake the OK SAY (which waits for
    // the store); every other reply keeps command order.
    let mut transcript = transcript;
    let pong = transcript.iter().position(|l| l == "PONG 1").expect("PONG");
    let joined = transcript
        .iter()
        .position(|l| l == "OK JOIN 4 1 1")
        .unwrap();
    let who = transcript.iter().position(|l| l == "OK WHO 4 2").unwrap();
    assert!(joined < pong && pong < who, "{transcript:?}");
    transcript.remove(pong);
    assert_eq!(
        transcript[1..],
        [
            "OK NICK alice",
            "HIST 4 1 <time> bob anyone here?",
            "OK JOIN 4 1 1",
            "OK SAY 2 <time>",
            "MEMBER 4 alice",
            "MEMBER 4 bob",
            "OK WHO 4 2",
            "HIST 4 2 <time> alice hi bob",
            "OK HISTORY 4 1",
            "BYE done for today",
        ]
    );
    bob.expect("JOINED 4 alice").await;
    let m = parse_message(&bob.line().await);
    assert_eq!(
        (m.id, m.nick.as_str(), m.text.as_str()),
        (2, "alice", "hi bob")
    );
    bob.expect("LEFT 4 alice").await;
    bob.expect_nothing_pending().await;

    // Input that simply ends: everything is answered, then BYE. A last line without LF counts.
    let transcript =
        without_times(pipe_through(server.addr, b"NICK carol\nJOIN 4 NONE\nSAY bye").await);
    assert_eq!(
        transcript[1..],
        [
            "OK NICK carol",
            "OK JOIN 4 0 2",
            "OK SAY 3 <time>",
            "BYE end of input"
        ]
    );
    server.stop().await.unwrap();
}

/// A member that stops reading lags and catches up from the store; it loses nothing and the
/// others are never held up.
#[tokio::test]
async fn a_slow_reader_lags_then_catches_up() {
    let config = Config {
        outbound_limit: 256 * 1024,
        ..memory_config()
    };
    let server = TestServer::start_with(config).await;
    common::check_lag_and_replay(&server).await;
    server.stop().await.unwrap();
}

/// When the store has let part of the gap go (the memory store keeps `--memory-history`
/// messages per room), the lagging member is told exactly which ids it missed.
#[tokio::test]
async fn a_gap_the_store_no_longer_holds_is_named() {
    const TOTAL: usize = 3000;
    let config = Config {
        outbound_limit: 64 * 1024,
        memory_history: 100,
        ..memory_config()
    };
    let server = TestServer::start_with(config).await;
    let mut talker = server.login("talker").await;
    talker.join("r").await;
    let mut slow = server.login("slow").await;
    slow.join("r").await;
    talker.expect("JOINED r slow").await;
    let acked = common::talk_in_chunks(&mut talker, 0..TOTAL, &"p".repeat(3000)).await;
    assert_eq!(acked, (1..=TOTAL as u64).collect::<Vec<_>>());

    // Every id arrives as MSG or is named by MISSED, once each, in order.
    let (mut next, mut missed) = (1u64, 0u64);
    while next <= TOTAL as u64 {
        let line = slow.line().await;
        let words: Vec<&str> = line.splitn(5, ' ').collect();
        match words[0] {
            "LAGGED" => assert_eq!(words[2], (next - 1).to_string(), "{line}"),
            "MISSED" => {
                let (from, to): (u64, u64) = (words[2].parse().unwrap(), words[3].parse().unwrap());
                assert_eq!(from, next, "{line}");
                assert!(to >= from, "{line}");
                missed += to - from + 1;
                next = to + 1;
            }
            _ => {
                let m = parse_message(&line);
                assert_eq!(m.id, next, "{line:.40}");
                assert_eq!(m.text, format!("{} {}", next - 1, "p".repeat(3000)));
                next += 1;
            }
        }
    }
    assert!(missed > 0, "the store had let part of the gap go");
    slow.expect_nothing_pending().await;
    server.stop().await.unwrap();
}

/// A member that takes no bytes at all for `--stall-timeout` is closed as too slow; the
/// others never notice anything but its `LEFT`.
#[tokio::test]
async fn a_stalled_reader_is_closed() {
    let config = Config {
        stall_timeout: Duration::from_secs(1),
        close_grace: Duration::from_secs(1),
        ..memory_config()
    };
    let server = TestServer::start_with(config).await;
    let mut talker = server.login("talker").await;
    talker.join("r").await;
    let mut reader = server.login("reader").await;
    reader.join("r").await;
    talker.expect("JOINED r reader").await;
    let mut stuck = server.login("stuck").await;
    stuck.join("r").await;
    talker.expect("JOINED r stuck").await;
    reader.expect("JOINED r stuck").await;

    // Fill every buffer between the server and `stuck`, which never reads.
    let payload = "p".repeat(3000);
    let expected = payload.clone();
    // `stuck` may be closed while the talk goes on (on a slow machine the talk takes longer
    // than the stall timeout): its LEFT may come anywhere in the reader's stream.
    let reading = tokio::spawn(async move {
        let (mut next, mut left) = (0, false);
        while next < 3000 {
            let line = reader.line().await;
            if line == "LEFT r stuck" && !left {
                left = true;
                continue;
            }
            let m = parse_message(&line);
            assert_eq!(
                (m.kind.as_str(), m.nick.as_str()),
                ("MSG", "talker"),
                "{line:.60}"
            );
            assert_eq!(m.text, format!("{next} {expected}"));
            next += 1;
        }
        if !left {
            reader.expect("LEFT r stuck").await;
        }
        reader
    });
    common::talk_in_chunks(&mut talker, 0..3000, &payload).await;
    // It makes no progress at all, so it goes; the room carries on.
    let mut reader = reading.await.unwrap();
    talker.say("after").await;
    assert_eq!(parse_message(&reader.line().await).text, "after");
    // What it finally reads is a prefix of the room's traffic, then the end of the stream.
    let mut next = 0;
    while let Some(line) = stuck.try_line().await {
        if line.starts_with("MSG ") {
            assert_eq!(parse_message(&line).text, format!("{next} {payload}"));
            next += 1;
        } else {
            assert!(
                line.starts_with("LAGGED r ") || line == "BYE too slow",
                "{line:.60}"
            );
        }
    }
    assert!(next < 3000, "it could not have taken everything");
    server.stop().await.unwrap();
}

/// At shutdown every line the server has read gets its answer: the reply if it was done,
/// `ERR SHUTTING_DOWN` if not, then `BYE`. Nothing it took in goes unanswered.
#[tokio::test]
async fn lines_read_before_a_shutdown_are_answered() {
    const ASKS: usize = 20;
    let config = Config {
        close_grace: Duration::from_secs(60),
        ..memory_config()
    };
    // A page is as many of the longest lines as fit in --outbound-limit (PROTOCOL.md
    // section 4): 246 lines of 3 KB, 0.75 MB each reply.
    let page = config.page_messages();
    let server = TestServer::start_with(config).await;
    let mut talker = server.login("talker").await;
    talker.join("r").await;
    common::talk_in_chunks(&mut talker, 0..500, &"p".repeat(3000)).await;
    // Twenty requests for a page each, in one packet, and nothing read: the server's output
    // fills up after a few, and the rest wait in its input buffer.
    let mut asker = server.login("asker").await;
    asker
        .send_raw("HISTORY r LIMIT 500\n".repeat(ASKS).as_bytes())
        .await;
    // The first reply has begun, so the packet was read.
    asker
        .expect_prefix(&format!("HIST r {} ", 500 - page + 1))
        .await;
    let stopping = tokio::spawn(server.stop());
    let (mut done, mut refused) = (0, 0);
    let mut last = String::new();
    while let Some(line) = asker.try_line().await {
        if line == format!("OK HISTORY r {page}") {
            assert_eq!(refused, 0, "refusals come after the replies");
            done += 1;
        } else if line.starts_with("ERR SHUTTING_DOWN ") {
            refused += 1;
        } else if !line.starts_with("HIST r ") {
            last = line;
            break;
        }
    }
    assert_eq!(last, "BYE server shutting down");
    assert_eq!(done + refused, ASKS, "{done} done, {refused} refused");
    assert!(refused > 0 && done > 0, "{done} done, {refused} refused");
    assert_eq!(asker.try_line().await, None);
    stopping.await.unwrap().unwrap();
}

/// At shutdown every line a client sent is answered exactly once, in order: the `SAY`s in
/// flight get their `OK SAY` (and are stored), the lines read but not yet done get
/// `ERR SHUTTING_DOWN` (and are not), then comes `BYE`; every other client gets `BYE` too.
///
/// To have `SAY`s in flight when the shutdown comes, whatever the machine's pace, the store
/// is PostgreSQL and the test holds a lock that keeps the writer's INSERT waiting until the
/// shutdown has begun.
#[tokio::test]
async fn shutdown_says_bye_to_everyone_after_answering_them() {
    const SAYS: usize = 300;
    /// `SAY`s a client may have unacknowledged before the server stops reading it
    /// (PROTOCOL.md, section 9).
    const MAX_IN_FLIGHT: usize = 256;
    let config = pg::config().await;
    let url = config.database_url.clone().unwrap();
    let server = TestServer::start_with(config).await;
    let mut idle = server.client().await;
    let mut member = server.login("member").await;
    member.join("4").await;
    let mut talker = server.login("talker").await;
    talker.join("4").await;
    member.expect("JOINED 4 talker").await;
    let first = talker.say("before").await;
    assert_eq!(parse_message(&member.line().await).id, first);

    // The writer's next INSERT waits for this lock (SHARE conflicts with the ROW EXCLUSIVE an
    // INSERT takes; reads are not held up).
    let db = pg::connect(&url).await;
    db.batch_execute("BEGIN; LOCK TABLE messages IN SHARE MODE")
        .await
        .unwrap();
    // More SAYs than may be in flight, in one write of about 2.4 KB: one segment on
    // loopback, taken by the server in one read (of up to 4 KiB), so the server holds every
    // line from then on. The first SAYs go to the writer and wait; the rest wait unread.
    let batch: String = (0..SAYS).map(|i| format!("SAY {i}\n")).collect();
    assert!(batch.len() < 4096);
    talker.send_raw(batch.as_bytes()).await;
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let waiting: i64 = db
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
                 AND wait_event_type = 'Lock' AND query LIKE '%INSERT INTO messages%'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if waiting > 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the writer's INSERT never waited for the lock"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let stopping = tokio::spawn(server.stop());
    // The shutdown has begun (every session is told at once): now let the writer go on.
    idle.expect("BYE server shutting down").await;
    assert_eq!(idle.try_line().await, None);
    db.batch_execute("ROLLBACK").await.unwrap();
    stopping.await.unwrap().unwrap();

    // The talker: OK SAY for the ones in flight, in order, then ERR SHUTTING_DOWN for the
    // rest, then BYE; one answer per line, nothing left out.
    let rest = talker.until_closed_after("BYE server shutting down").await;
    let mut acked: Vec<u64> = Vec::new();
    let mut refused = 0;
    for line in rest.iter().filter(|l| *l != "LEFT 4 member") {
        if line.starts_with("ERR SHUTTING_DOWN ") {
            refused += 1;
            continue;
        }
        assert_eq!(refused, 0, "no OK after a refusal: {line}");
        let ok = line
            .strip_prefix("OK SAY ")
            .unwrap_or_else(|| panic!("an answer to a SAY: {line}"));
        let id: u64 = ok.split(' ').next().unwrap().parse().unwrap();
        assert!(id > acked.last().copied().unwrap_or(first), "{line}");
        acked.push(id);
    }
    eprintln!("shutdown: {} acked, {refused} refused", acked.len());
    assert_eq!(
        acked.len() + refused,
        SAYS,
        "every line answered once: {} acked, {refused} refused",
        acked.len()
    );
    assert!(!acked.is_empty(), "the SAYs in flight were acked");
    assert!(
        refused >= SAYS - MAX_IN_FLIGHT,
        "the lines read but not done were refused: {} acked, {refused} refused",
        acked.len()
    );

    // Stored: exactly the acked ones, the first `acked.len()` lines said.
    let stored: Vec<(u64, String)> = db
        .query(
            "SELECT id, body FROM messages WHERE id > $1 ORDER BY id",
            &[&(first as i64)],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get::<_, i64>(0) as u64, r.get(1)))
        .collect();
    let said: Vec<(u64, String)> = acked
        .iter()
        .enumerate()
        .map(|(i, id)| (*id, i.to_string()))
        .collect();
    assert_eq!(stored, said, "history holds exactly the acked messages");

    // The member got BYE last, and never a message that was not acked.
    let rest = member.until_closed_after("BYE server shutting down").await;
    for line in rest.iter().filter(|l| *l != "LEFT 4 talker") {
        let m = parse_message(line);
        assert!(acked.contains(&m.id), "{line}");
    }
}

async fn signal_exits_cleanly(signal: &str) {
    let mut server =
        Binary::start(linechat().args(["--listen", "127.0.0.1:0", "--store", "memory"]));
    let mut c = Client::connect(server.addr).await;
    c.send("NICK alice").await;
    c.expect("OK NICK alice").await;
    server.signal(signal);
    c.expect("BYE server shutting down").await;
    assert_eq!(c.try_line().await, None);
    let status = server.wait().await;
    assert!(status.success(), "exit status {status:?} after {signal}");
}

#[tokio::test]
async fn sigterm_exits_zero_after_bye() {
    signal_exits_cleanly("-TERM").await;
}

#[tokio::test]
async fn sigint_exits_zero_after_bye() {
    signal_exits_cleanly("-INT").await;
}
