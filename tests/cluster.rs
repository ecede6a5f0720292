//! Several servers on one PostgreSQL are one chat: a message said on any of them reaches the
//! room's members on every one, in one order for everybody, which is history's order, and a
//! cut notification connection loses nothing and doubles nothing.
//!
//! The servers run in this process, each with its own store, pool, writer and listener,
//! sharing only the database, as separate processes would.

mod common;

use common::{parse_message, pg, talk_in_chunks, Client, TestServer};

/// `n` servers on one fresh database.
async fn servers(n: usize) -> (Vec<TestServer>, String) {
    let config = pg::config().await;
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
    const TOTAL: usize = 400;
    let (servers, url) = servers(2).await;
    let mut member = servers[0].login("member").await;
    member.join("cut").await;
    let mut talker = servers[1].login("talker").await;
    talker.join("cut").await;
    let admin = pg::connect(&url).await;
    let talking = tokio::spawn(async move {
        let mut acked = talk_in_chunks(&mut talker, 0..TOTAL / 2, "before").await;
        acked.extend(talk_in_chunks(&mut talker, TOTAL / 2..TOTAL, "after").await);
        acked
    });
    // Somewhere in the talk.
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let cut = admin
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE query = 'LISTEN linechat_messages' AND datname = current_database()",
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
