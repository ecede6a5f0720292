//! Several servers on one PostgreSQL are one chat: a message said on any of them reaches the
//! room's members on every one, in one order for everybody, which is history's order, and a
//! cut notification connection loses nothing and doubles nothing.
//!
//! The servers run in this process, each with its own store, pool, writer and listener,
//! sharing only the database, as separate processes would.

mod common;

use std::time::{Duration, Instant};

use common::{parse_message, pg, talk_in_chunks, Client, TestServer};

/// `n` servers on one fresh database.
async fn servers(n: usize) -> (Vec<TestServer>, String) {
    servers_with(n, pg::config().await).await
}

/// `n` servers on `config`'s database.
async fn servers_with(n: usize, config: linechat::Config) -> (Vec<TestServer>, String) {
    let url = config.database_url.clone().unwrap();
    let mut servers = Vec::new();
    for _ in 0..n {
        servers.push(TestServer::start_with(config.clone()).await);
    }
    (servers, url)
}

/// The ids and texts of the next `count` `MSG` lines of `room`, in the order they came;
/// presence lines are skipped, anything else fails the test.
async fn messages(client: &mut Client, room: &str, count: usize) -> Vec<(u64, String)> {
    let mut seen = Vec::with_capacity(count);
    while seen.len() < count {
        let line = client.line().await;
        if line.starts_with("JOINED ") || line.starts_with("LEFT ") {
            continue;
        }
        let m = parse_message(&line);
        assert_eq!((m.kind.as_str(), m.room.as_str()), ("MSG", room), "{line}");
        seen.push((m.id, format!("{} {}", m.nick, m.text)));
    }
    seen
}

#[tokio::test]
async fn a_message_said_on_one_server_reaches_members_on_the_others() {
    let (servers, _url) = servers(3).await;
    let mut alice = servers[0].login("alice").await;
    let mut bob = servers[1].login("bob").await;
    let mut carol = servers[2].login("carol").await;
    for c in [&mut alice, &mut bob, &mut carol] {
        c.join("4").await;
    }
    let id = alice.say("hello from one").await;
    for c in [&mut bob, &mut carol] {
        assert_eq!(
            messages(c, "4", 1).await,
            [(id, "alice hello from one".to_owned())]
        );
    }
    let id2 = carol.say("and back from three").await;
    assert!(id2 > id);
    for c in [&mut alice, &mut bob] {
        assert_eq!(
            messages(c, "4", 1).await,
            [(id2, "carol and back from three".to_owned())]
        );
    }
    // Nobody is shown their own message; history on any server has both.
    alice.expect_nothing_pending().await;
    carol.expect_nothing_pending().await;
    let mut dave = servers[1].login("dave").await;
    let hist = dave.join("4").await;
    let ids: Vec<u64> = hist.iter().map(|l| parse_message(l).id).collect();
    assert_eq!(ids, [id, id2]);
    for server in servers {
        server.stop().await.unwrap();
    }
}

/// Talkers on all three servers say into one room at once, as fast as they can: every
/// member on every server receives the same sequence, in increasing ids, equal to history.
#[tokio::test]
async fn concurrent_talkers_on_every_server_give_every_member_one_order() {
    const EACH: usize = 300;
    let (servers, url) = servers(3).await;
    let mut listeners = Vec::new();
    let mut talkers = Vec::new();
    for (i, server) in servers.iter().enumerate() {
        let mut listener = server.login(&format!("listener{i}")).await;
        listener.join("race").await;
        listeners.push(listener);
        let mut talker = server.login(&format!("talker{i}")).await;
        talker.join("race").await;
        talkers.push(talker);
    }
    let talking: Vec<_> = talkers
        .into_iter()
        .map(|mut t| tokio::spawn(async move { talk_in_chunks(&mut t, 0..EACH, "x").await }))
        .collect();
    let reading: Vec<_> = listeners
        .into_iter()
        .map(|mut l| tokio::spawn(async move { messages(&mut l, "race", 3 * EACH).await }))
        .collect();
    let mut acked = Vec::new();
    for t in talking {
        acked.extend(t.await.unwrap());
    }
    let mut sequences = Vec::new();
    for r in reading {
        sequences.push(r.await.unwrap());
    }
    let first: Vec<u64> = sequences[0].iter().map(|(id, _)| *id).collect();
    assert!(first.windows(2).all(|w| w[0] < w[1]), "increasing ids");
    for s in &sequences[1..] {
        assert_eq!(s, &sequences[0], "one order on every server");
    }
    acked.sort_unstable();
    assert_eq!(first, acked, "every acknowledged message, once");
    let history: Vec<u64> = pg::connect(&url)
        .await
        .query(
            "SELECT m.id FROM messages m JOIN rooms r ON r.id = m.room_id \
             WHERE r.name = 'race' ORDER BY m.id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get::<_, i64>(0) as u64)
        .collect();
    assert_eq!(history, first, "history's order");
    for server in servers {
        server.stop().await.unwrap();
    }
}

/// The connections that listen for stored messages are cut (their backends terminated)
/// while a talker on another server keeps talking: the member misses nothing, sees nothing
/// twice, and is not told it lagged (it did not).
#[tokio::test]
async fn a_cut_notification_connection_loses_nothing_and_doubles_nothing() {
    // The cut comes once the first part is stored, while the rest (much longer than the cut
    // takes) is on its way.
    const FIRST: usize = 200;
    const TOTAL: usize = 1000;
    let (servers, url) = servers(2).await;
    let mut member = servers[0].login("member").await;
    member.join("cut").await;
    let mut talker = servers[1].login("talker").await;
    talker.join("cut").await;
    let admin = pg::connect(&url).await;
    let (first_part_said, first_part) = tokio::sync::oneshot::channel();
    let talking = tokio::spawn(async move {
        let mut acked = talk_in_chunks(&mut talker, 0..FIRST, "before").await;
        let _ = first_part_said.send(());
        acked.extend(talk_in_chunks(&mut talker, FIRST..TOTAL, "after").await);
        acked
    });
    first_part.await.unwrap();
    let cut = admin
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE query LIKE 'LISTEN linechat_messages%' AND datname = current_database()",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(cut.len(), 2, "both servers' listeners were cut");
    assert!(!talking.is_finished(), "cut in the middle of the talk");
    let seen = messages(&mut member, "cut", TOTAL).await;
    let acked = talking.await.unwrap();
    let ids: Vec<u64> = seen.iter().map(|(id, _)| *id).collect();
    assert_eq!(ids, acked, "every message once, in order");
    member.expect_nothing_pending().await;
    for server in servers {
        server.stop().await.unwrap();
    }
}

/// Another server's messages come in the notifications themselves, whatever their text, in
/// parts of at most one payload for a large batch; one too long for a payload is read back
/// from the table (schema.sql's migration 7). Checked on the wire too: a listener of the
/// test's own sees what the servers see.
#[tokio::test]
async fn notifications_carry_the_messages_and_one_too_long_is_read_back() {
    use futures::StreamExt;
    let mut config = pg::config().await;
    config.max_line = 12_000;
    let (servers, url) = servers_with(2, config).await;
    let (listener, mut connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    let (payloads_tx, mut payloads) = tokio::sync::mpsc::unbounded_channel();
    let mut stream = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
    tokio::spawn(async move {
        while let Some(Ok(message)) = stream.next().await {
            if let tokio_postgres::AsyncMessage::Notification(n) = message {
                let _ = payloads_tx.send(n.payload().to_owned());
            }
        }
    });
    let (channel, _) = pg::secret_channels(&listener).await;
    listener
        .batch_execute(&format!("LISTEN {channel}"))
        .await
        .unwrap();

    let mut alice = servers[0].login("alice").await;
    let mut bob = servers[1].login("bob").await;
    alice.join("r").await;
    bob.join("r").await;
    let awkward = [
        "  leading and trailing spaces  ",
        "tab\tseparated\tvalues",
        "r 1 1 1 1 0 x 3 abc looks like a notification",
        "emoji 🎉👩‍💻🇳🇱, CJK 你好, combining e\u{301}",
        "+",
    ];
    let mut said = Vec::new();
    for text in awkward {
        said.push((alice.say(text).await, format!("alice {text}")));
    }
    // Pipelined, so that batches hold several: 24 of 3,000 characters take several parts.
    let long: Vec<String> = (0..24)
        .map(|i| format!("{i:02}{}", "é".repeat(2998)))
        .collect();
    for text in &long {
        alice.send(&format!("SAY {text}")).await;
    }
    for text in &long {
        let (_, ok) = alice.until("OK SAY ").await;
        let id: u64 = ok.split(' ').nth(2).unwrap().parse().unwrap();
        said.push((id, format!("alice {text}")));
    }
    // Past what one payload holds.
    let huge = "h".repeat(9_000);
    let huge_id = alice.say(&huge).await;
    said.push((huge_id, format!("alice {huge}")));
    assert_eq!(messages(&mut bob, "r", said.len()).await, said);
    bob.expect_nothing_pending().await;

    // What the servers were told: every payload within PostgreSQL's limit; every message
    // but the huge one carried exactly once; the huge one as a range.
    let mut notified = Vec::new();
    while let Ok(Some(p)) = tokio::time::timeout(Duration::from_millis(500), payloads.recv()).await
    {
        notified.push(p);
    }
    assert!(notified.iter().all(|p| p.len() < 8000));
    let carried: Vec<&String> = notified.iter().filter(|p| p.contains(" + r ")).collect();
    for text in awkward
        .iter()
        .copied()
        .chain(long.iter().map(String::as_str))
    {
        let sized = format!(" {} {text}", text.chars().count());
        let with = carried.iter().filter(|p| p.contains(&sized)).count();
        assert_eq!(with, 1, "{text:.20}... carried once");
    }
    let long_parts = carried.iter().filter(|p| p.contains("éééé")).count();
    assert!(
        long_parts >= 12,
        "3,000-character messages, 2 or fewer a part: {long_parts}"
    );
    assert!(notified.iter().all(|p| !p.contains(&huge)));
    assert!(
        notified
            .iter()
            .any(|p| p.ends_with(&format!(" r {huge_id} {huge_id}"))),
        "{:?}",
        notified
            .iter()
            .map(|p| &p[..p.len().min(80)])
            .collect::<Vec<_>>()
    );
    for server in servers {
        server.stop().await.unwrap();
    }
}

/// The `MEMBER` names of `WHO <room>`, and its count.
async fn who(client: &mut Client, room: &str) -> (Vec<String>, String) {
    client.send(&format!("WHO {room}")).await;
    let (lines, ok) = client.until("OK WHO ").await;
    let names = lines
        .iter()
        .map(|l| {
            l.strip_prefix(&format!("MEMBER {room} "))
                .unwrap_or(l)
                .to_owned()
        })
        .collect();
    (names, ok)
}

/// Members on every server are in one room: `JOINED`, `NICK` and `LEFT` of members on other
/// servers reach the members here, and `WHO` and `ROOMS` count everybody.
#[tokio::test]
async fn presence_covers_members_on_every_server() {
    let (servers, _url) = servers(3).await;
    let mut alice = servers[0].login("alice").await;
    alice.join("4").await;
    let mut bob = servers[1].login("bob").await;
    bob.until_members("4", &["alice"]).await;
    bob.join("4").await;
    alice.expect("JOINED 4 bob").await;
    let mut carol = servers[2].login("carol").await;
    carol.until_members("4", &["alice", "bob"]).await;
    carol.join("4").await;
    alice.expect("JOINED 4 carol").await;
    bob.expect("JOINED 4 carol").await;
    carol.expect_nothing_pending().await;
    for c in [&mut alice, &mut bob, &mut carol] {
        assert_eq!(
            who(c, "4").await,
            (
                vec!["alice".to_owned(), "bob".into(), "carol".into()],
                "OK WHO 4 3".to_owned()
            )
        );
    }
    let mut dave = servers[2].login("dave").await;
    dave.join("quiet").await;
    // Dave's server tells the others of him a few milliseconds later (PROTOCOL.md).
    alice.until_rooms(&["ROOM 4 3", "ROOM quiet 1"]).await;
    bob.send("NICK robert").await;
    bob.expect("OK NICK robert").await;
    alice.expect("NICK 4 bob robert").await;
    carol.expect("NICK 4 bob robert").await;
    bob.send("PART 4").await;
    bob.expect("OK PART 4").await;
    alice.expect("LEFT 4 robert").await;
    carol.expect("LEFT 4 robert").await;
    carol.send("QUIT").await;
    alice.expect("LEFT 4 carol").await;
    assert_eq!(who(&mut alice, "4").await.1, "OK WHO 4 1");
    alice.expect_nothing_pending().await;
    for server in servers {
        server.stop().await.unwrap();
    }
}

/// A name is held by one connection across every server, whatever its case; it is free
/// everywhere once its holder leaves.
#[tokio::test]
async fn a_name_is_held_once_across_servers() {
    let (servers, _url) = servers(2).await;
    let _alice = servers[0].login("alice").await;
    let mut other = servers[1].client().await;
    for name in ["alice", "ALICE"] {
        other.send(&format!("NICK {name}")).await;
        other.expect_err("NICK_IN_USE").await;
    }
    other.send("NICK bob").await;
    other.expect("OK NICK bob").await;
    let mut third = servers[0].client().await;
    third.send("NICK Bob").await;
    third.expect_err("NICK_IN_USE").await;
    // Renamed: the old name is free, the new one taken, on both servers.
    other.send("NICK bobby").await;
    other.expect("OK NICK bobby").await;
    third.send("NICK Bob").await;
    third.expect("OK NICK Bob").await;
    let mut fourth = servers[0].client().await;
    fourth.send("NICK BOBBY").await;
    fourth.expect_err("NICK_IN_USE").await;
    // Gone: free everywhere (soon: the server writes its changes in the background).
    other.send("QUIT").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        fourth.send("NICK bobby").await;
        if fourth.reply().await == "OK NICK bobby" {
            break;
        }
        assert!(Instant::now() < deadline, "bobby never became free");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for server in servers {
        server.stop().await.unwrap();
    }
}

/// Many connections on two servers ask for the same names at the same moment: each name is
/// given to exactly one of them.
#[tokio::test]
async fn two_servers_racing_for_a_name_give_it_to_one() {
    const NAMES: usize = 40;
    let (servers, url) = servers(2).await;
    let mut racers = Vec::new();
    for i in 0..NAMES {
        for server in &servers {
            let mut c = server.client().await;
            let name = format!("prize{i}");
            racers.push(tokio::spawn(async move {
                c.send(&format!("NICK {name}")).await;
                let won = c.reply().await.starts_with("OK NICK");
                (name, won, c)
            }));
        }
    }
    let mut winners = std::collections::HashMap::new();
    let mut keep = Vec::new();
    for r in racers {
        let (name, won, c) = r.await.unwrap();
        if won {
            *winners.entry(name).or_insert(0) += 1;
        }
        keep.push(c);
    }
    assert_eq!(winners.len(), NAMES, "every name was given");
    assert!(winners.values().all(|&n| n == 1), "to one: {winners:?}");
    let held: i64 = pg::connect(&url)
        .await
        .query_one(
            "SELECT count(*) FROM live_names WHERE key LIKE 'prize%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(held, NAMES as i64);
    drop(keep);
    for server in servers {
        server.stop().await.unwrap();
    }
}

/// A server that stops leaves at once: its members' `LEFT` reach the others long before
/// the node timeout (a minute here).
#[tokio::test]
async fn a_server_that_stops_leaves_at_once() {
    let config = linechat::Config {
        node_timeout: Duration::from_secs(60),
        ..pg::config().await
    };
    let (mut servers, _url) = servers_with(2, config).await;
    let mut alice = servers[0].login("alice").await;
    alice.join("4").await;
    let mut bob = servers[1].login("bob").await;
    bob.join("4").await;
    alice.expect("JOINED 4 bob").await;
    let stopped = Instant::now();
    servers.pop().unwrap().stop().await.unwrap();
    alice.expect("LEFT 4 bob").await;
    assert!(stopped.elapsed() < Duration::from_secs(30));
    let mut again = servers[0].client().await;
    again.send("NICK bob").await;
    again.expect("OK NICK bob").await;
    for server in servers {
        server.stop().await.unwrap();
    }
}

/// A server that stops writing its heartbeat (here: one that never was a linechat server,
/// its rows written by hand with an old heartbeat) is removed by the others within the
/// node timeout: its members leave, its names are free.
#[tokio::test]
async fn a_silent_server_is_removed_within_the_node_timeout() {
    let config = linechat::Config {
        node_timeout: Duration::from_secs(2),
        ..pg::config().await
    };
    let (servers, url) = servers_with(1, config).await;
    let mut alice = servers[0].login("alice").await;
    alice.join("4").await;
    let db = pg::connect(&url).await;
    db.batch_execute(
        "INSERT INTO nodes (origin, seen) VALUES ('linechat-dead', now());          INSERT INTO live_names (key, name, node, conn) VALUES ('zed', 'Zed', 'linechat-dead', 1);          INSERT INTO presence (node, conn, room, name) VALUES ('linechat-dead', 1, '4', 'Zed');",
    )
    .await
    .unwrap();
    alice.expect("JOINED 4 Zed").await;
    let mut taker = servers[0].client().await;
    taker.send("NICK zed").await;
    taker.expect_err("NICK_IN_USE").await;
    let silent = Instant::now();
    alice.expect("LEFT 4 Zed").await;
    let waited = silent.elapsed();
    assert!(
        waited < Duration::from_secs(6),
        "removed within the timeout and a heartbeat: {waited:?}"
    );
    taker.send("NICK zed").await;
    taker.expect("OK NICK zed").await;
    let left: i64 = db
        .query_one(
            "SELECT count(*) FROM nodes WHERE origin = 'linechat-dead'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
    for server in servers {
        server.stop().await.unwrap();
    }
}
