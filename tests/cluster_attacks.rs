//! Attacks on names and presence shared by several servers on one PostgreSQL (PROTOCOL.md
//! section 8, "Several servers per database"): clients on two servers racing for names,
//! joining and parting, and an operator or a database getting in the way. Each test is a
//! defect that was found, or a promise that held under attack.
//!
//! The servers run in this process, each with its own store, pool, writer and listener,
//! sharing only the database, as separate processes would.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::{pg, Client, TestServer, PATIENCE};

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

/// The `MEMBER` names of `WHO <room>`, and its final line.
async fn who(client: &mut Client, room: &str) -> (Vec<String>, String) {
    client.send(&format!("WHO {room}")).await;
    let (lines, ok) = client.until("OK WHO ").await;
    let prefix = format!("MEMBER {room} ");
    let names = lines
        .iter()
        .map(|l| l.strip_prefix(&prefix).unwrap_or(l).to_owned())
        .collect();
    (names, ok)
}

/// `ROOMS`' lines, and its final line.
async fn rooms(client: &mut Client) -> (Vec<String>, String) {
    client.send("ROOMS").await;
    client.until("OK ROOMS ").await
}

/// A room made private on one server is neither listed by `ROOMS` nor shown by `WHO` to an
/// outsider on another server, although its members there are known to that server.
#[tokio::test]
async fn a_private_room_is_not_shown_to_outsiders_on_another_server() {
    let servers = servers_with(2, pg::config().await).await;
    let mut alice =
        common::accounts::registered(servers[0].addr, "alice", "correct-horse-battery-9").await;
    alice.join("secret").await;
    alice.send("PRIVATE secret").await;
    alice.expect("OK PRIVATE secret").await;
    let mut dave = servers[0].login("dave").await;
    dave.join("open").await;
    let mut carol = servers[1].login("carol").await;
    // Until the other server knows both rooms' members, ROOMS may miss "open": wait for it.
    let deadline = Instant::now() + PATIENCE;
    let listed = loop {
        let listed = rooms(&mut carol).await;
        if listed.0.iter().any(|l| l == "ROOM open 1") {
            break listed;
        }
        assert!(Instant::now() < deadline, "open never listed: {listed:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        listed,
        (vec!["ROOM open 1".to_owned()], "OK ROOMS 1".to_owned())
    );
    carol.send("WHO secret").await;
    carol.expect_err("PRIVATE_ROOM").await;
    carol.send("ROOMS AFTER r LIMIT 5").await;
    carol.expect("OK ROOMS 0").await;
    // A member on the other server sees it, with its member there.
    let mut eve =
        common::accounts::registered(servers[1].addr, "eve", "correct-horse-battery-9").await;
    alice.send("INVITE secret eve").await;
    alice.expect("OK INVITE secret eve").await;
    assert_eq!(rooms(&mut eve).await.0, ["ROOM open 1", "ROOM secret 1"]);
    assert_eq!(who(&mut eve, "secret").await.0, ["alice"]);
    stop_all(servers).await;
}

/// A room's members split across two servers, and rooms split across them, more than one
/// slice of a listing each: `WHO` lists every member once and counts them, `ROOMS` every
/// room once with its members on both servers added.
#[tokio::test]
async fn who_and_rooms_page_through_members_and_rooms_split_across_servers() {
    const EACH: usize = 150;
    let servers = servers_with(2, pg::config().await).await;
    let mut everybody = Vec::new();
    for i in 0..EACH {
        for (s, server) in servers.iter().enumerate() {
            let mut c = server.login(&format!("m{s}x{i:03}")).await;
            c.join("big").await;
            everybody.push(c);
        }
    }
    // Rooms p000..p599: even ones on the first server, odd ones on the second (three
    // connections of a hundred rooms each), and every tenth on both.
    let mut joiners = Vec::new();
    for (s, server) in servers.iter().enumerate() {
        for k in 0..3 {
            let mut c = server.login(&format!("j{s}x{k}")).await;
            for n in 0..100 {
                c.join(&format!("p{:03} NONE", (k * 100 + n) * 2 + s)).await;
            }
            joiners.push(c);
        }
    }
    let mut both = servers[1].login("both").await;
    for n in (0..600).step_by(10) {
        both.join(&format!("p{n:03} NONE")).await;
    }
    let mut want_rooms: Vec<String> = (0..600)
        .map(|n| format!("ROOM p{n:03} {}", if n % 10 == 0 { 2 } else { 1 }))
        .collect();
    want_rooms.insert(0, format!("ROOM big {}", 2 * EACH));
    let mut want_members: Vec<String> = (0..EACH)
        .flat_map(|i| [format!("m0x{i:03}"), format!("m1x{i:03}")])
        .collect();
    want_members.sort();
    for server in &servers {
        let mut asker = server.login("asker").await;
        // What the other server wrote may trail by a moment: wait until it is all known.
        let deadline = Instant::now() + PATIENCE;
        loop {
            let (members, ok) = who(&mut asker, "big").await;
            let (listed, rooms_ok) = rooms(&mut asker).await;
            if members == want_members && listed == want_rooms {
                assert_eq!(ok, format!("OK WHO big {}", 2 * EACH));
                assert_eq!(rooms_ok, "OK ROOMS 601");
                break;
            }
            let mut sorted = members.clone();
            sorted.dedup();
            assert_eq!(sorted.len(), members.len(), "a member listed twice");
            assert!(
                Instant::now() < deadline,
                "WHO or ROOMS never right: {ok} {rooms_ok}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        asker.send("QUIT").await;
        // Its name is free on the other server a moment later.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    drop((everybody, joiners, both));
    stop_all(servers).await;
}

/// An operator deletes a live server's row from `nodes` by hand: its names and presence go
/// with it (the others see its members leave), and it writes them all again at its next
/// heartbeat (the others see them come back, and its names are held again).
#[tokio::test]
async fn a_node_row_deleted_by_hand_is_written_again() {
    let config = linechat::Config {
        node_timeout: Duration::from_secs(2),
        ..pg::config().await
    };
    let url = config.database_url.clone().unwrap();
    let servers = servers_with(2, config).await;
    let mut alice = servers[0].login("alice").await;
    alice.join("r").await;
    alice.join("s").await;
    let mut bob = servers[1].login("bob").await;
    bob.join("r").await;
    alice.expect("JOINED r bob").await;
    let db = pg::connect(&url).await;
    let deleted = db
        .execute(
            "DELETE FROM nodes WHERE origin = (SELECT node FROM live_names WHERE key = 'alice')",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(deleted, 1);
    bob.expect("LEFT r alice").await;
    bob.expect("JOINED r alice").await;
    let mut carol = servers[1].client().await;
    carol.send("NICK alice").await;
    carol.expect_err("NICK_IN_USE").await;
    let rows: i64 = db
        .query_one(
            "SELECT count(*) FROM presence p JOIN live_names l ON l.node = p.node AND l.conn = p.conn \
             WHERE l.key = 'alice'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 2, "both of alice's rooms written again");
    assert_eq!(who(&mut bob, "r").await.0, ["alice", "bob"]);
    alice.expect_nothing_pending().await;
    bob.expect_nothing_pending().await;
    stop_all(servers).await;
}

/// The connections that listen for notifications are cut while members on the other server
/// come and go: once listening again, each server's members are told exactly what changed
/// meanwhile (no spurious `JOINED` or `LEFT`), and `WHO` is right. A cut during which nothing
/// changed tells nothing. The `LEFT` of a member that left during the cut was never told: the
/// lines that the new snapshot of the other servers' members gave were queued, then dropped
/// at once by the quiet catch-up from the store that followed (it empties the rooms' queues).
#[tokio::test]
async fn a_cut_notification_connection_tells_what_changed_and_nothing_else() {
    let config = pg::config().await;
    let url = config.database_url.clone().unwrap();
    let servers = servers_with(2, config).await;
    let mut alice = servers[0].login("alice").await;
    alice.join("r").await;
    let mut bob = servers[1].login("bob").await;
    bob.join("r").await;
    alice.expect("JOINED r bob").await;
    let admin = pg::connect(&url).await;
    let cut = || async {
        admin
            .query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE query LIKE 'LISTEN linechat_messages%' AND datname = current_database()",
                &[],
            )
            .await
            .unwrap()
            .len()
    };
    assert_eq!(cut().await, 2);
    bob.send("PART r").await;
    bob.expect("OK PART r").await;
    let mut carol = servers[1].login("carol").await;
    carol.join("r").await;
    let mut told = vec![alice.line().await, alice.line().await];
    told.sort();
    assert_eq!(told, ["JOINED r carol", "LEFT r bob"]);
    assert_eq!(who(&mut alice, "r").await.0, ["alice", "carol"]);
    alice.expect_nothing_pending().await;
    // Nothing changes across a second cut: nothing is told.
    assert_eq!(cut().await, 2);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    alice.expect_nothing_pending().await;
    carol.expect_nothing_pending().await;
    assert_eq!(who(&mut carol, "r").await.0, ["alice", "carol"]);
    stop_all(servers).await;
}

/// On each of two servers at once, one connection leaves (its name is released) while
/// another asks for the name the other server's leaver held, and a third asks for a name a
/// connection on the other server keeps. Each server's batch locks the other's rows as it
/// claims, then its own as it releases: the two batches can deadlock (PostgreSQL aborts
/// one), and a write that fails for any reason made every claim waiting on it answered
/// `OK NICK` unconfirmed, as if the database were away: the third connection got a name
/// that a live connection on the other server holds (and `BYE` a moment later).
#[tokio::test]
async fn a_name_held_on_another_server_is_refused_when_batches_collide() {
    const ROUNDS: usize = 8;
    let config = pg::config().await;
    let url = config.database_url.clone().unwrap();
    let servers = servers_with(2, config).await;
    let mut admin = pg::connect(&url).await;
    for round in 0..ROUNDS {
        let mut keepers = Vec::new();
        let mut leavers = Vec::new();
        for (s, server) in servers.iter().enumerate() {
            keepers.push(server.login(&format!("keep{s}x{round}")).await);
            leavers.push(server.login(&format!("leave{s}x{round}")).await);
        }
        let mut primers = Vec::new();
        let mut takers = Vec::new();
        let mut greedy = Vec::new();
        for server in &servers {
            primers.push(server.client().await);
            takers.push(server.client().await);
            greedy.push(server.client().await);
        }
        let hold = admin.transaction().await.unwrap();
        hold.batch_execute("LOCK TABLE live_names IN SHARE ROW EXCLUSIVE MODE")
            .await
            .unwrap();
        // Each server's first write (a claim) waits for the lock; what follows makes one
        // batch on each server, both let go at the same moment.
        for (s, p) in primers.iter_mut().enumerate() {
            p.send(&format!("NICK prime{s}x{round}")).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        for (s, mut leaver) in leavers.into_iter().enumerate() {
            leaver.send("QUIT").await;
            let other = 1 - s;
            takers[s].send(&format!("NICK leave{other}x{round}")).await;
            greedy[s].send(&format!("NICK keep{other}x{round}")).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        hold.commit().await.unwrap();
        for (s, g) in greedy.iter_mut().enumerate() {
            let reply = g.reply().await;
            assert!(
                reply.starts_with("ERR NICK_IN_USE "),
                "round {round}: keep{}x{round}, held on the other server, was given: {reply}",
                1 - s
            );
        }
        for p in &mut primers {
            p.expect_prefix("OK NICK prime").await;
        }
        drop((keepers, primers, takers, greedy));
    }
    stop_all(servers).await;
}

/// A directory write fails (here: the `nodes` table is held up past --db-timeout, as a
/// moment's trouble in the database would), and by the time a client asks for a name the
/// database answers again. The name is held by a live connection on the other server: the
/// reply must be `NICK_IN_USE`. It was `OK NICK`: after a failed write, the server took
/// every claim as unconfirmed at once, without trying the database, until its writer next
/// succeeded (up to a quarter of --node-timeout later, with nothing else to write), and
/// closed the connection with `BYE` once it did.
#[tokio::test]
async fn a_name_held_elsewhere_is_refused_once_the_database_answers_again() {
    let config = linechat::Config {
        node_timeout: Duration::from_secs(120),
        db_timeout: Duration::from_secs(1),
        ..pg::config().await
    };
    let url = config.database_url.clone().unwrap();
    let servers = servers_with(2, config).await;
    let _bob = servers[1].login("bob").await;
    let mut admin = pg::connect(&url).await;
    let hold = admin.transaction().await.unwrap();
    hold.batch_execute("LOCK TABLE nodes IN SHARE ROW EXCLUSIVE MODE")
        .await
        .unwrap();
    // A write that cannot finish in time (a name, taken unconfirmed), then nothing left to
    // write (its connection is gone).
    let mut y = servers[0].login("y").await;
    y.send("QUIT").await;
    let _ = y.try_line().await;
    hold.commit().await.unwrap();
    let mut taker = servers[0].client().await;
    let deadline = Instant::now() + PATIENCE;
    loop {
        taker.send("NICK bob").await;
        let reply = taker.reply().await;
        if reply.starts_with("ERR STORE_UNAVAILABLE ") {
            assert!(Instant::now() < deadline, "the database never answered");
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        assert!(reply.starts_with("ERR NICK_IN_USE "), "{reply}");
        break;
    }
    taker.expect_nothing_pending().await;
    stop_all(servers).await;
}

/// The database crashes (stopped in immediate mode) and comes back with its unlogged
/// `presence` emptied, while a client on the other server keeps asking for a name held on
/// the first. Names survive the crash (`live_names` is logged): the asker is refused, the
/// holder keeps it, and each server writes its rooms again, so `WHO` on both servers shows
/// the room's members again.
#[tokio::test]
async fn a_crashed_database_gets_every_name_and_room_back_and_a_name_stays_one_persons() {
    let dir = pg::temp_dir("cluster-crash");
    let _cleanup = pg::DirGuard(dir.clone());
    let base = linechat::Config {
        node_timeout: Duration::from_secs(4),
        ..common::memory_config()
    };
    let (cluster, config) = pg::own_cluster(&dir, Duration::from_secs(2), base).await;
    let servers = servers_with(2, config).await;
    let mut alice = servers[0].login("alice").await;
    alice.join("r").await;
    let mut bob = servers[1].login("bob").await;
    bob.join("r").await;
    alice.expect("JOINED r bob").await;
    tokio::task::spawn_blocking(move || {
        let mut stop = cluster.command("pg_ctl");
        stop.args(["stop", "-m", "immediate", "-D"])
            .arg(cluster.pgdata());
        assert!(stop.output().unwrap().status.success());
        cluster.detach();
    })
    .await
    .unwrap();
    let _cluster = tokio::task::spawn_blocking({
        let dir = dir.clone();
        move || pg::start_cluster(&dir)
    })
    .await
    .unwrap();
    // Asks for alice's name from the other server until it is refused as held, or given.
    let mut carol = servers[1].client().await;
    let deadline = Instant::now() + PATIENCE;
    let carol_got_it = loop {
        carol.send("NICK alice").await;
        let reply = carol.reply().await;
        if reply == "OK NICK alice" {
            break true;
        }
        if reply.starts_with("ERR NICK_IN_USE ") {
            break false;
        }
        assert!(reply.starts_with("ERR STORE_UNAVAILABLE "), "{reply}");
        assert!(Instant::now() < deadline, "the database never came back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        !carol_got_it,
        "a name its holder kept through the crash was given away"
    );
    // Alice keeps it, and the room has everyone again everywhere.
    let deadline = Instant::now() + PATIENCE;
    for (server, asker) in [(0, &mut alice), (1, &mut bob)] {
        loop {
            let (members, _) = who(asker, "r").await;
            if members == ["alice", "bob"] {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "server {server}: WHO r never right: {members:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    stop_all(servers).await;
}

/// Asks for `name` on `client` until it is given; panics after [`PATIENCE`].
async fn take_when_free(client: &mut Client, name: &str) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        client.send(&format!("NICK {name}")).await;
        let reply = client.reply().await;
        if reply == format!("OK NICK {name}") {
            return;
        }
        assert!(reply.starts_with("ERR NICK_IN_USE "), "{reply}");
        assert!(Instant::now() < deadline, "{name} never became free");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Clients that vanish in the middle of `NICK` (the claim held up in the database) or of
/// `JOIN`: their names are free on every server a moment later, and they leave no member
/// behind in any room.
#[tokio::test]
async fn a_client_gone_in_the_middle_of_nick_or_join_leaves_nothing_behind() {
    let config = pg::config().await;
    let url = config.database_url.clone().unwrap();
    let servers = servers_with(2, config).await;
    let mut watcher = servers[1].login("watcher").await;
    watcher.join("r").await;
    let mut admin = pg::connect(&url).await;
    let hold = admin.transaction().await.unwrap();
    hold.batch_execute("LOCK TABLE live_names, presence IN SHARE ROW EXCLUSIVE MODE")
        .await
        .unwrap();
    let mut gone_in_nick = servers[0].client().await;
    gone_in_nick.send("NICK ghost").await;
    let mut gone_in_join = servers[0].login("phantom").await;
    gone_in_join.send("JOIN r").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop((gone_in_nick, gone_in_join));
    tokio::time::sleep(Duration::from_millis(300)).await;
    hold.commit().await.unwrap();
    let mut taker = servers[1].client().await;
    take_when_free(&mut taker, "ghost").await;
    take_when_free(&mut taker, "phantom").await;
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (members, _) = who(&mut watcher, "r").await;
        if members == ["watcher"] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a member left behind: {members:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let held: i64 = admin
        .query_one("SELECT count(*) FROM presence WHERE room = 'r'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(held, 1);
    stop_all(servers).await;
}

/// A member in many rooms changes its name, then only its case: every room's members on the
/// other server are told each change, `WHO` there shows the name as it is now, and the name
/// stays held there whatever its case.
#[tokio::test]
async fn a_rename_in_many_rooms_reaches_every_room_on_the_other_server() {
    const ROOMS: usize = 40;
    let servers = servers_with(2, pg::config().await).await;
    let mut mover = servers[0].login("mover").await;
    let mut watcher = servers[1].login("watcher").await;
    for n in 0..ROOMS {
        watcher.join(&format!("m{n:02} NONE")).await;
    }
    // Another server's presence may trail it: once the mover's server lists the watcher
    // everywhere, the mover's JOINs meet no `JOINED` of the watcher's.
    for n in 0..ROOMS {
        mover.until_members(&format!("m{n:02}"), &["watcher"]).await;
    }
    for n in 0..ROOMS {
        mover.join(&format!("m{n:02} NONE")).await;
        watcher.expect(&format!("JOINED m{n:02} mover")).await;
    }
    mover.send("NICK shaker").await;
    mover.expect("OK NICK shaker").await;
    mover.send("NICK Shaker").await;
    mover.expect("OK NICK Shaker").await;
    let mut told: Vec<String> = Vec::new();
    for _ in 0..2 * ROOMS {
        told.push(watcher.line().await);
    }
    told.sort();
    let mut want: Vec<String> = (0..ROOMS)
        .flat_map(|n| {
            [
                format!("NICK m{n:02} mover shaker"),
                format!("NICK m{n:02} shaker Shaker"),
            ]
        })
        .collect();
    want.sort();
    assert_eq!(told, want);
    assert_eq!(who(&mut watcher, "m07").await.0, ["Shaker", "watcher"]);
    let mut other = servers[1].client().await;
    for name in ["shaker", "SHAKER"] {
        other.send(&format!("NICK {name}")).await;
        other.expect_err("NICK_IN_USE").await;
    }
    take_when_free(&mut other, "mover").await;
    watcher.expect_nothing_pending().await;
    stop_all(servers).await;
}

/// The `MSG` lines of `rooms` a client gets until it has `count` of them (presence lines
/// skipped; anything else fails the test), room by room in the order they came.
async fn live_messages(client: &mut Client, count: usize) -> HashMap<String, Vec<common::Message>> {
    let mut seen: HashMap<String, Vec<common::Message>> = HashMap::new();
    for _ in 0..count {
        let line = loop {
            let line = client.line().await;
            if !line.starts_with("JOINED ") && !line.starts_with("LEFT ") {
                break line;
            }
        };
        let m = common::parse_message(&line);
        assert_eq!(m.kind, "MSG", "{line:.100}");
        seen.entry(m.room.clone()).or_default().push(m);
    }
    seen
}

/// Messages as `(id, time, nick, text)`, the text cut short for a readable failure, with
/// its length in characters.
fn brief(messages: &[common::Message]) -> Vec<(u64, String, String, String, usize)> {
    messages
        .iter()
        .map(|m| {
            let text = m.text.chars().take(24).collect();
            (
                m.id,
                m.time.clone(),
                m.nick.clone(),
                text,
                m.text.chars().count(),
            )
        })
        .collect()
}

/// `room`'s whole history, as `HIST` lines say it.
async fn history(client: &mut Client, room: &str) -> Vec<common::Message> {
    client.send(&format!("HISTORY {room} LIMIT 500")).await;
    let (lines, ok) = client.until("OK HISTORY ").await;
    let hist: Vec<_> = lines
        .iter()
        .filter(|l| l.starts_with("HIST "))
        .map(|l| common::parse_message(l))
        .collect();
    assert!(ok.ends_with(&format!(" {}", hist.len())), "{ok}");
    hist
}

/// Texts that look like the payload's own syntax, multi-byte characters, combining marks,
/// emoji and tabs, at names' longest, from 80 senders on each of two servers at once (more
/// than 64 rooms a batch), some long enough that a room's messages are split over several
/// parts of a notification and one past what a payload holds (read back from the table):
/// every member on both servers gets every other's message once, in id order, equal to the
/// history (the time too), and every sender all its answers.
#[tokio::test]
async fn batches_over_many_rooms_with_awkward_and_long_texts_reach_both_servers_once() {
    const ROOMS: usize = 80;
    let mut config = pg::config().await;
    config.max_line = 12_000;
    config.max_rooms_per_connection = 0;
    config.new_rooms_per_minute = 100_000;
    let servers = servers_with(2, config).await;
    let room = |i: usize| format!("{i:03}.{}", "R".repeat(60));
    let nick = |s: usize, i: usize| format!("s{s}n{i:03}_{}", "N".repeat(25));
    let texts = |s: usize, i: usize| -> Vec<String> {
        let mut texts = vec![
            format!("{} 1 1 1 1 0 x 3 abc", room(i)),
            "  é\u{301}\u{301} 🎉👩‍💻🇳🇱\t你好  ".to_string(),
            format!("{s} {i} + - 0 0 linechat-x + r 1 1 1"),
        ];
        if i % 5 == 0 {
            // A room's messages split over parts: 3,000 two-byte characters each.
            texts.insert(1, format!("{s}{i:03}{}", "é".repeat(2996)));
            texts.push(format!("{s}{i:03}{}", "ß".repeat(2996)));
        }
        if i == 7 {
            // Past one payload: that part goes as ranges.
            texts.insert(2, "𝄞".repeat(2_100));
        }
        texts
    };
    assert!(room(0).len() == 64 && nick(0, 0).len() == 32);

    let mut watchers = Vec::new();
    for (s, server) in servers.iter().enumerate() {
        let mut watcher = server.login(&format!("watcher{s}")).await;
        for i in 0..ROOMS {
            watcher.join(&room(i)).await;
        }
        watchers.push(watcher);
    }
    let mut senders = Vec::new();
    for (s, server) in servers.iter().enumerate() {
        for i in 0..ROOMS {
            let mut sender = server.login(&nick(s, i)).await;
            sender.join(&room(i)).await;
            senders.push((s, i, sender));
        }
    }
    // Every SAY first, alternating between servers, then the answers.
    for k in 0..5 {
        for (s, i, sender) in &mut senders {
            if let Some(text) = texts(*s, *i).get(k) {
                sender.send(&format!("SAY {text}")).await;
            }
        }
    }
    let mut total = 0;
    for (s, i, sender) in &mut senders {
        let ours = texts(*s, *i);
        let theirs = texts(1 - *s, *i);
        total += ours.len();
        let (mut acks, mut others) = (Vec::new(), Vec::new());
        while acks.len() < ours.len() || others.len() < theirs.len() {
            let line = sender.line().await;
            if let Some(ok) = line.strip_prefix("OK SAY ") {
                acks.push(ok.split(' ').next().unwrap().parse::<u64>().unwrap());
            } else if line.starts_with("MSG ") {
                others.push(common::parse_message(&line));
            } else {
                assert!(
                    line.starts_with("JOINED ") || line.starts_with("LEFT "),
                    "{line:.100}"
                );
            }
        }
        assert!(acks.windows(2).all(|w| w[0] < w[1]), "{acks:?}");
        let texts: Vec<&str> = others.iter().map(|m| m.text.as_str()).collect();
        assert!(
            texts == theirs.iter().map(String::as_str).collect::<Vec<_>>(),
            "sender {s} {i}: {:?}",
            brief(&others)
        );
        assert!(others.iter().all(|m| m.nick == nick(1 - *s, *i)));
    }
    for watcher in &mut watchers {
        let seen = live_messages(watcher, total).await;
        for i in 0..ROOMS {
            let hist = history(watcher, &room(i)).await;
            let live = seen.get(&room(i)).map(Vec::as_slice).unwrap_or_default();
            assert_eq!(brief(live), brief(&hist), "room {i}");
        }
        watcher.expect_nothing_pending().await;
    }
    for (_, _, sender) in &mut senders {
        sender.expect_nothing_pending().await;
    }
    // And the servers are still in use.
    let (s0, s1) = watchers.split_at_mut(1);
    s1[0].send(&format!("JOIN {}", room(1))).await;
    s0[0].send(&format!("JOIN {}", room(1))).await;
    s0[0].until("OK JOIN ").await;
    s1[0].until("OK JOIN ").await;
    let id = s0[0].say("still here").await;
    let got = live_messages(&mut s1[0], 1).await;
    assert_eq!(got[&room(1)][0].id, id);
    drop(watchers);
    drop(senders);
    stop_all(servers).await;
}

/// The texts of the `MSG` lines a client gets up to one of `last`.
async fn texts_until(client: &mut Client, last: &str) -> Vec<String> {
    let mut texts = Vec::new();
    while texts.last().map(String::as_str) != Some(last) {
        let line = client.line().await;
        if line.starts_with("MSG ") {
            texts.push(common::parse_message(&line).text);
        }
    }
    texts
}

/// The ids and texts of the next `count` `MSG` lines, skipping any other line.
async fn ids_and_texts(client: &mut Client, count: usize) -> Vec<(u64, String)> {
    let mut seen = Vec::with_capacity(count);
    while seen.len() < count {
        let line = client.line().await;
        if line.starts_with("MSG ") {
            let m = common::parse_message(&line);
            seen.push((m.id, m.text));
        }
    }
    seen
}

/// A login with no privilege but to connect cannot make the servers deliver anything:
/// PostgreSQL lets anyone NOTIFY any channel, so the servers listen on channels whose names
/// it may not read. Before, its made-up message reached every member, in anyone's name,
/// with an id that hid the room's real messages from them ever after; and made-up presence
/// put strangers in `WHO`. Given INSERT on messages, its rows are history only.
#[tokio::test]
async fn a_login_without_privileges_cannot_forge_messages_or_presence() {
    let config = pg::config().await;
    let url = config.database_url.clone().unwrap();
    let servers = servers_with(2, config).await;
    let mut alice = servers[0].login("alice").await;
    let mut bob = servers[1].login("bob").await;
    alice.join("r").await;
    bob.join("r").await;
    alice.expect("JOINED r bob").await;

    let admin = pg::connect(&url).await;
    let db: String = admin
        .query_one("SELECT current_database()", &[])
        .await
        .unwrap()
        .get(0);
    let mallory = format!("mallory_{db}");
    admin
        .batch_execute(&format!(
            "CREATE ROLE {mallory} LOGIN; \
             GRANT INSERT ON messages TO {mallory}; \
             GRANT SELECT, UPDATE ON rooms, users TO {mallory}"
        ))
        .await
        .unwrap();
    let mallory_url = url.replace("user=linechat", &format!("user={mallory}"));
    assert_ne!(mallory_url, url);
    let other = pg::connect(&mallory_url).await;
    let refused = other
        .query("SELECT messages FROM notify_channels", &[])
        .await
        .unwrap_err();
    assert_eq!(
        refused.code(),
        Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE),
        "{refused:?}"
    );
    for forged in [
        "NOTIFY linechat_messages, 'linechat-x + r 9000000000000000000 9000000000000000000 1 \
         9000000000000000000 0 alice 6 forged'",
        "NOTIFY linechat_messages, 'linechat-x + nonsense'",
        "NOTIFY linechat_presence, 'J linechat-x 1 r eve'",
    ] {
        other.batch_execute(forged).await.unwrap();
    }
    other
        .execute(
            "INSERT INTO messages (room_id, user_id, body) \
             SELECT r.id, u.id, 'inserted' FROM rooms r, users u \
             WHERE r.name = 'r' AND u.name = 'alice'",
            &[],
        )
        .await
        .unwrap();
    let id = alice.say("real").await;
    assert_eq!(texts_until(&mut bob, "real").await, ["real"]);
    bob.send("WHO r").await;
    let (members, _) = bob.until("OK WHO").await;
    assert!(members.iter().all(|l| !l.contains("eve")), "{members:?}");
    bob.send("HISTORY r LIMIT 10").await;
    let (history, _) = bob.until("OK HISTORY").await;
    let texts: Vec<String> = history
        .iter()
        .map(|l| common::parse_message(l).text)
        .collect();
    assert_eq!(texts, ["inserted", "real"]);
    assert_eq!(common::parse_message(history.last().unwrap()).id, id);
    // And the servers did not drop their notifications over it: still live.
    let id2 = bob.say("and back").await;
    assert_eq!(texts_until(&mut alice, "and back").await, ["and back"]);
    assert!(id2 > id);
    drop(other);
    admin
        .batch_execute(&format!(
            "REVOKE ALL ON messages, rooms, users FROM {mallory}; DROP ROLE {mallory}"
        ))
        .await
        .unwrap();
    stop_all(servers).await;
}

/// What another database client does is history only: its INSERTs (one row, many rows over
/// several parts, a row too long for a payload), whatever its `application_name`, and a
/// `NOTIFY` of its own carrying a made-up message, are never delivered live, and the
/// servers carry on.
#[tokio::test]
async fn another_clients_inserts_and_notifications_are_history_only() {
    let mut config = pg::config().await;
    config.max_line = 12_000;
    let url = config.database_url.clone().unwrap();
    let servers = servers_with(2, config).await;
    let mut alice = servers[0].login("alice").await;
    let mut carol = servers[0].login("carol").await;
    let mut bob = servers[1].login("bob").await;
    for c in [&mut alice, &mut carol, &mut bob] {
        c.join("r").await;
    }
    alice.say("one").await;
    assert_eq!(texts_until(&mut bob, "one").await, ["one"]);
    assert_eq!(texts_until(&mut carol, "one").await, ["one"]);

    let other = pg::connect(&url).await;
    // Even one who may read the servers' channels (linechat's own login).
    let (messages, _) = pg::secret_channels(&other).await;
    let insert = "INSERT INTO messages (room_id, user_id, body) \
                  SELECT r.id, u.id, $1 || g FROM rooms r, users u, generate_series(1, $2) g \
                  WHERE r.name = 'r' AND u.name = 'alice'";
    other.execute(insert, &[&"bulk ", &1i32]).await.unwrap();
    other
        .batch_execute("SET application_name = 'psql'")
        .await
        .unwrap();
    let long = "é".repeat(3000);
    other.execute(insert, &[&long, &40i32]).await.unwrap();
    other
        .execute(insert, &[&"h".repeat(9000), &1i32])
        .await
        .unwrap();
    other
        .batch_execute(&format!(
            "NOTIFY {messages}, 'psql + r 1 1 1 1 0 mallory 5 hello'"
        ))
        .await
        .unwrap();
    other
        .batch_execute(&format!("NOTIFY {messages}, 'psql r 1 999999'"))
        .await
        .unwrap();
    alice.say("two").await;
    assert_eq!(texts_until(&mut bob, "two").await, ["two"]);
    assert_eq!(texts_until(&mut carol, "two").await, ["two"]);
    bob.send("HISTORY r LIMIT 100").await;
    let (_, ok) = bob.until("OK HISTORY ").await;
    assert_eq!(ok, "OK HISTORY r 44");
    stop_all(servers).await;
}

/// Messages whose notification is a byte or so either side of a payload's limit (8,000
/// bytes), on both sides of the single-part fast path's threshold too, in one-byte and
/// two-byte characters, each its own transaction: each reaches the other server's member
/// once, as stored.
#[tokio::test]
async fn messages_at_the_payload_limit_reach_the_other_server_as_stored() {
    let mut config = pg::config().await;
    config.max_line = 12_000;
    let servers = servers_with(2, config).await;
    let mut alice = servers[0].login("alice").await;
    let mut bob = servers[1].login("bob").await;
    alice.join("r").await;
    bob.join("r").await;
    let mut said = Vec::new();
    for bytes in 7_860..8_000 {
        // Every other one with a two-byte character in the middle: a character count
        // unlike its byte count.
        let text = match bytes % 2 {
            0 => "a".repeat(bytes),
            _ => format!("{}é{}", "b".repeat(bytes / 2 - 1), "c".repeat(bytes / 2)),
        };
        assert_eq!(text.len(), bytes);
        said.push((alice.say(&text).await, text));
    }
    let seen = ids_and_texts(&mut bob, said.len()).await;
    let sizes = |v: &[(u64, String)]| v.iter().map(|(id, t)| (*id, t.len())).collect::<Vec<_>>();
    assert_eq!(sizes(&seen), sizes(&said));
    assert!(seen == said);
    bob.expect_nothing_pending().await;
    stop_all(servers).await;
}

/// Another database client that sends unreadable notifications under a server's origin
/// again and again makes every server listen again and catch its members up each time:
/// while one talks, the members on both servers get every message once, in order, and the
/// talker every answer.
#[tokio::test]
async fn unreadable_notifications_under_a_servers_origin_lose_and_double_nothing() {
    const SAID: usize = 300;
    let config = pg::config().await;
    let url = config.database_url.clone().unwrap();
    let servers = servers_with(2, config).await;
    let mut alice = servers[0].login("alice").await;
    let mut carol = servers[0].login("carol").await;
    let mut bob = servers[1].login("bob").await;
    for c in [&mut alice, &mut carol, &mut bob] {
        c.join("r").await;
    }
    let other = pg::connect(&url).await;
    // One who may read the servers' channels (linechat's own login).
    let (messages, _) = pg::secret_channels(&other).await;
    let nuisance = tokio::spawn(async move {
        for i in 0..40 {
            let notify = format!("NOTIFY {messages}, 'linechat-x + {i}'");
            other.batch_execute(&notify).await.unwrap();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    for i in 0..SAID {
        alice.send(&format!("SAY m{i}")).await;
        if i % 10 == 0 {
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
    }
    let mut acks = Vec::new();
    while acks.len() < SAID {
        let line = alice.line().await;
        if let Some(ok) = line.strip_prefix("OK SAY ") {
            acks.push(ok.split(' ').next().unwrap().parse::<u64>().unwrap());
        }
    }
    nuisance.await.unwrap();
    let want: Vec<(u64, String)> = acks
        .iter()
        .enumerate()
        .map(|(i, id)| (*id, format!("m{i}")))
        .collect();
    for member in [&mut bob, &mut carol] {
        let seen = ids_and_texts(member, SAID).await;
        assert_eq!(seen, want);
        member.expect_nothing_pending().await;
    }
    stop_all(servers).await;
}

/// A SQL_ASCII database counts a text's bytes, not its characters, and converts nothing for
/// the listener: a notification carrying a multi-byte text was unreadable, and every one made
/// each server listen again and catch everyone up (seconds a message). Such a database's
/// notifications carry ranges only (schema.sql's migration 7).
#[tokio::test]
async fn multi_byte_texts_in_a_sql_ascii_database_are_notified_readably() {
    let logs = common::logs::Logs::capture();
    let mut config = pg::config().await;
    let url = config.database_url.clone().unwrap();
    let (base, name) = url.rsplit_once("dbname=").unwrap();
    let admin = pg::connect(&format!("{base}dbname=postgres")).await;
    admin
        .batch_execute(&format!("DROP DATABASE {name}"))
        .await
        .unwrap();
    admin
        .batch_execute(&format!(
            "CREATE DATABASE {name} ENCODING 'SQL_ASCII' \
             TEMPLATE template0 LC_COLLATE 'C' LC_CTYPE 'C'"
        ))
        .await
        .unwrap();
    config.database_url = Some(url.clone());
    let servers = servers_with(2, config).await;
    let mut alice = servers[0].login("alice").await;
    let mut bob = servers[1].login("bob").await;
    alice.join("r").await;
    bob.join("r").await;
    for text in ["héllo wörld", "plain", "é", "éé r"] {
        alice.say(text).await;
    }
    let texts = ["héllo wörld", "plain", "é", "éé r"];
    assert_eq!(texts_until(&mut bob, "éé r").await, texts);
    assert_eq!(logs.count("an unreadable notification"), 0);
    assert_eq!(logs.count("listening for stored messages again"), 0);
    stop_all(servers).await;
}
