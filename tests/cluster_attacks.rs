//! Attacks on names and presence shared by several servers on one PostgreSQL (PROTOCOL.md
//! section 8, "Several servers per database"): clients on two servers racing for names,
//! joining and parting, and an operator or a database getting in the way. Each test is a
//! defect that was found, or a promise that held under attack.
//!
//! The servers run in this process, each with its own store, pool, writer and listener,
//! sharing only the database, as separate processes would.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{pg, Client, TestServer};

/// `n` servers on `config`'s database.
async fn servers_with(n: usize, config: linechat::Config) -> Vec<TestServer> {
    let mut servers = Vec::new();
    for _ in 0..n {
        servers.push(TestServer::start_with(config.clone()).await);
    }
    servers
}

async fn stop_all(servers: Vec<TestServer>) {
    for server in servers {
        server.stop().await.unwrap();
    }
}

/// Many connections on two servers ask for the same names at once, but each server's
/// connections ask in the opposite order of the other's (the first connection on one server
/// wants the last name of the other's). Each server writes its claims a batch at a time, and
/// two batches that lock the same names in opposite orders deadlock in the database unless
/// names are always locked in one order: PostgreSQL then aborts one server's batch, and that
/// server's claimants were told `OK NICK` unconfirmed, for names the other server gave out.
/// (The database is held up for a moment while the names are asked for, as a busy one would
/// be, so that each server's claims make one batch.)
#[tokio::test]
async fn names_asked_for_in_opposite_orders_on_two_servers_are_each_given_once() {
    const NAMES: usize = 400;
    const ROUNDS: usize = 3;
    let config = pg::config().await;
    let url = config.database_url.clone().unwrap();
    let servers = servers_with(2, config).await;
    let mut admin = pg::connect(&url).await;
    for round in 0..ROUNDS {
        // Connections first, so that their ids (the order of a server's batch) are fixed.
        let mut clients: Vec<(usize, String, Client)> = Vec::new();
        for i in 0..NAMES {
            clients.push((0, format!("r{round}n{i}"), servers[0].client().await));
        }
        for i in (0..NAMES).rev() {
            clients.push((1, format!("r{round}n{i}"), servers[1].client().await));
        }
        // Every NICK is sent before any reply is read, alternating between the servers,
        // while the names' table is held up for a moment (less than --db-timeout).
        let hold = admin.transaction().await.unwrap();
        hold.batch_execute("LOCK TABLE live_names IN SHARE ROW EXCLUSIVE MODE")
            .await
            .unwrap();
        let (first, second) = clients.split_at_mut(NAMES);
        for (a, b) in first.iter_mut().zip(second.iter_mut()) {
            a.2.send(&format!("NICK {}", a.1)).await;
            b.2.send(&format!("NICK {}", b.1)).await;
        }
        tokio::time::sleep(Duration::from_millis(1000)).await;
        hold.commit().await.unwrap();
        let mut given: HashMap<String, Vec<usize>> = HashMap::new();
        for (server, name, client) in &mut clients {
            let reply = client.reply().await;
            if reply.starts_with("OK NICK") {
                given.entry(name.clone()).or_default().push(*server);
            } else {
                assert!(reply.starts_with("ERR NICK_IN_USE "), "{reply}");
            }
        }
        let twice: Vec<_> = given.iter().filter(|(_, s)| s.len() > 1).collect();
        let deadlocks: i64 = admin
            .query_one(
                "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert!(
            twice.is_empty(),
            "round {round}: {} names given on both servers ({deadlocks} deadlocks in the database so far), such as {:?}",
            twice.len(),
            &twice[..twice.len().min(3)]
        );
        assert_eq!(given.len(), NAMES, "round {round}: every name was given");
        drop(clients);
    }
    stop_all(servers).await;
}

/// The lines `client` receives until it has had every one of `wanted` (presence and `MSG`
/// lines alike, `MSG` as `MSG <room> <nick> <text>`), in the order they came.
async fn lines_until(client: &mut Client, wanted: &[&str]) -> Vec<String> {
    let mut seen: Vec<String> = Vec::new();
    while !wanted.iter().all(|w| seen.iter().any(|s| s == w)) {
        let line = client.line().await;
        let shown = match line.strip_prefix("MSG ") {
            // MSG <room> <id> <time> <nick> <text>
            Some(rest) => {
                let words: Vec<&str> = rest.splitn(4, ' ').collect();
                format!("MSG {} {}", words[0], words[3])
            }
            None => line,
        };
        seen.push(shown);
    }
    seen
}

/// A member parts and at once joins again while the database is slow to take the part (here:
/// the presence table is held up for a second, less than --db-timeout). The JOIN must wait for
/// its presence to be written, as any JOIN does, so that the other servers' members see
/// `JOINED` before what the joiner says; it did not: the join undid the part before the part
/// was written, the ledger took the room for settled, and `OK JOIN` came at once: another
/// server's member saw the message, then `LEFT`, then `JOINED`.
#[tokio::test]
async fn a_join_just_after_a_part_waits_for_its_presence_like_any_join() {
    let config = pg::config().await;
    let url = config.database_url.clone().unwrap();
    let servers = servers_with(2, config).await;
    let mut alice = servers[0].login("alice").await;
    alice.join("r").await;
    let mut bob = servers[1].login("bob").await;
    bob.join("r").await;
    alice.expect("JOINED r bob").await;
    let mut admin = pg::connect(&url).await;
    let hold = admin.transaction().await.unwrap();
    hold.batch_execute("LOCK TABLE presence IN SHARE ROW EXCLUSIVE MODE")
        .await
        .unwrap();
    alice.send("PART r").await;
    alice.expect("OK PART r").await;
    // The part's write is under way, held up by the lock.
    tokio::time::sleep(Duration::from_millis(300)).await;
    alice.send("JOIN r NONE").await;
    alice.send("SAY hi").await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    hold.commit().await.unwrap();
    alice.until("OK JOIN r ").await;
    alice.until("OK SAY ").await;
    let seen = lines_until(
        &mut bob,
        &["LEFT r alice", "JOINED r alice", "MSG r alice hi"],
    )
    .await;
    assert_eq!(
        seen,
        ["LEFT r alice", "JOINED r alice", "MSG r alice hi"],
        "bob sees alice back in the room before what she says there"
    );
    bob.expect_nothing_pending().await;
    stop_all(servers).await;
}
