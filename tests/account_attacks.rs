//! Attacks on accounts and private rooms, from a hostile review: each test here failed on the
//! first version (a97cd74) and passes since the fixes. Real TCP, real PostgreSQL where the
//! attack needs it.

mod common;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use common::accounts::{account, registered, server_logging_as};
use common::{memory_config, pg, Client, TestServer};
use linechat::accounts::Guesses;
use linechat::budget::Millis;
use linechat::Config;

const PW: &str = "correct-horse-battery";

fn lenient_pg(config: Config) -> Config {
    Config {
        max_errors: 0,
        ..config
    }
}

/// Attack 1: `linechat account remove` forgets memberships but not ownership (private_rooms.owner is
/// kept, and room_access compares it by name). Whoever registers the freed name next is the
/// owner of the removed user's private rooms: reads their history, can PUBLIC them.
#[tokio::test]
async fn a_removed_owners_name_reregistered_by_someone_else_does_not_own_the_room() {
    let config = lenient_pg(pg::config().await);
    let url = config.database_url.clone().unwrap();
    let server = TestServer::start_with(config).await;
    let mut alice = registered(server.addr, "alice", PW).await;
    alice.join("secret").await;
    alice.send("PRIVATE secret").await;
    alice.expect("OK PRIVATE secret").await;
    alice.say("the launch code is 0000").await;
    alice.send("QUIT").await;
    alice.until_closed_after("BYE goodbye").await;

    account(&["--database-url", &url], &["remove", "alice"], "").unwrap();

    // Someone else entirely takes the freed name and registers it.
    let mut mallory = registered(server.addr, "alice", "mallory-password").await;
    mallory.send("HISTORY secret").await;
    let first = mallory.line().await;
    assert!(
        first.starts_with("ERR PRIVATE_ROOM"),
        "a new registrant of a removed owner's name reads the private room: {first}"
    );
    server.stop().await.unwrap();
}

/// Attack 2: A guest who held a name on one server before its owner registered it keeps it:
/// it goes on talking as the (now registered) name, and the owner cannot log in. PROTOCOL.md:
/// "from then on, on this server and on every server that shares its database,
/// NICK <name> <password> is the only way to take it". (A name is held once across servers,
/// so the owner cannot take it on another server while the guest holds it; the operator
/// registers it for them.)
#[tokio::test]
async fn a_guest_squatting_a_name_stops_speaking_as_it_once_it_is_registered_elsewhere() {
    let config = lenient_pg(pg::config().await);
    let url = config.database_url.clone().unwrap();
    let one = TestServer::start_with(config.clone()).await;
    let two = TestServer::start_with(config).await;
    let mut squatter = one.login("bob").await;
    squatter.join("r").await;
    let mut owner = two.client().await;
    owner.send("NICK bob").await;
    owner.expect_err("NICK_IN_USE").await;
    let password = format!("{PW}\n");
    tokio::task::spawn_blocking(move || {
        account(&["--database-url", &url], &["add", "bob"], &password).unwrap()
    })
    .await
    .unwrap();

    // The name watch (every 2 s) closes the guest's connection, saying why; the owner may
    // then log in, on either server.
    let lines = squatter
        .until_closed_after(
            "BYE your name has been registered by its owner: NICK <name> <password> takes it now",
        )
        .await;
    assert!(lines.is_empty(), "{lines:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        owner.send(&format!("NICK bob {PW}")).await;
        let reply = owner.reply().await;
        if reply == "OK NICK bob" {
            break;
        }
        // Freed on server one at once, in the database a moment later.
        assert!(reply.starts_with("ERR NICK_IN_USE"), "{reply}");
        assert!(Instant::now() < deadline, "bob never became free");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    one.stop().await.unwrap();
    two.stop().await.unwrap();
}

/// Attack 3: WHO and ROOMS trust a per-server in-memory `private` flag, set only by a JOIN or
/// PRIVATE on *this* server. A room made private on server one is still listed, and its
/// members still named, to any outsider on server two.
#[tokio::test]
async fn who_and_rooms_on_another_server_keep_a_private_room_private() {
    let config = lenient_pg(pg::config().await);
    let one = TestServer::start_with(config.clone()).await;
    let two = TestServer::start_with(config).await;
    let mut early = registered(two.addr, "early", PW).await;
    early.join("secret").await;
    let mut alice = registered(one.addr, "alice", PW).await;
    alice.join("secret").await;
    alice.send("PRIVATE secret").await;
    alice.expect("OK PRIVATE secret").await;

    let mut outsider = registered(two.addr, "outsider", PW).await;
    outsider.send("HISTORY secret").await;
    outsider.expect_err("PRIVATE_ROOM").await; // the store is asked: refused
    outsider.send("ROOMS").await;
    let (rooms, _) = outsider.until("OK ROOMS ").await;
    outsider.send("WHO secret").await;
    let who = outsider.line().await;
    assert!(
        rooms.is_empty() && who.starts_with("ERR PRIVATE_ROOM"),
        "an outsider on server two sees the private room: ROOMS {rooms:?}, WHO {who}"
    );
    one.stop().await.unwrap();
    two.stop().await.unwrap();
}

/// Attack 4: JOIN asks the store (room public), then awaits record_room, then `enter(...,
/// Some(false))` overwrites the room's flag. A PRIVATE landing in that window is undone in
/// memory: the room is private in the store, but ROOMS lists it and WHO names its members to
/// everyone on that server.
#[tokio::test]
async fn a_join_racing_private_does_not_unmark_the_room() {
    let config = lenient_pg(pg::config().await);
    let server = TestServer::start_with(config).await;
    let mut alice = registered(server.addr, "alice", PW).await;
    let mut outsider = registered(server.addr, "outsider", PW).await;
    let mut leaked = Vec::new();
    for n in 0..30 {
        let room = format!("race{n}");
        alice.join(&room).await;
        let mut guest = server.login(&format!("guest{n}")).await;
        // Both at once.
        guest.send(&format!("JOIN {room}")).await;
        alice.send(&format!("PRIVATE {room}")).await;
        let (_, ok) = alice.until(&format!("OK PRIVATE {room}")).await;
        let _ = ok;
        // The guest's JOIN ends with OK JOIN or an ERR.
        loop {
            let line = guest.line().await;
            if line.starts_with("OK JOIN") || line.starts_with("ERR ") {
                break;
            }
        }
        outsider.send(&format!("WHO {room}")).await;
        let who = outsider.line().await;
        if !who.starts_with("ERR PRIVATE_ROOM") {
            if !who.starts_with("OK WHO") {
                outsider.until("OK WHO ").await;
            }
            leaked.push(room.clone());
        }
        alice.send(&format!("PART {room}")).await;
        alice.until(&format!("OK PART {room}")).await;
    }
    assert!(
        leaked.is_empty(),
        "private rooms listed by WHO to an outsider after a racing JOIN: {leaked:?}"
    );
    server.stop().await.unwrap();
}

/// Attack 5: The "never that, whatever LINECHAT_LOG asks" guard (tokio_postgres=info) loses to a
/// more specific directive: LINECHAT_LOG=tokio_postgres::query=debug logs every statement's
/// parameters, password hashes (and every chat message) included. In either log format.
#[tokio::test]
async fn no_linechat_log_setting_logs_statement_parameters() {
    let url = pg::fresh_database().await;
    for (format, name) in [("text", "alice"), ("json", "bobby")] {
        let mut server = server_logging_as(&url, "info,tokio_postgres::query=debug", format);
        let mut c = Client::login(server.addr, name).await;
        c.send(&format!("REGISTER {PW}")).await;
        c.expect(&format!("OK REGISTER {name}")).await;
        c.send("QUIT").await;
        c.until_closed_after("BYE goodbye").await;
        server.signal("-TERM");
        server.wait().await;
        let log = server.log().join("\n");
        assert!(
            !log.contains("$argon2id$"),
            "a password hash in the {format} log:\n{}",
            log.lines()
                .filter(|l| l.contains("argon2id"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

/// Attack 6: Hashing has no per-address (or per-connection) cost: REGISTER is unbudgeted, and right
/// passwords are free. One address with no account storms REGISTER over many connections
/// and every other user's login is refused SERVER_BUSY for as long as it likes.
#[tokio::test]
async fn one_address_registering_in_a_loop_does_not_lock_everyone_out_of_logins() {
    let server = TestServer::start_with(Config {
        max_errors: 0,
        // The storm and the owner come from two loopback addresses: count them as others.
        limit_loopback: true,
        ..memory_config()
    })
    .await;
    let owner = registered(server.addr, "owner", PW).await;
    drop(owner);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut storm = Vec::new();
    for c in 0..100 {
        let addr = server.addr;
        let stop = stop.clone();
        storm.push(tokio::spawn(async move {
            let mut client = Client::connect(addr).await;
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                client.send(&format!("NICK s{c}x{n}")).await;
                client.line().await;
                client.send("REGISTER storm-password").await;
                client.line().await;
                n += 1;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut busy = 0;
    let mut logged_in = false;
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        let mut c = Client::from_stream(socket.connect(server.addr).await.unwrap()).await;
        c.send(&format!("NICK owner {PW}")).await;
        let reply = c.line().await;
        if reply == "OK NICK owner" {
            logged_in = true;
            break;
        }
        assert!(reply.starts_with("ERR SERVER_BUSY"), "{reply}");
        busy += 1;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for s in storm {
        s.abort();
    }
    assert!(
        logged_in,
        "the owner was refused SERVER_BUSY {busy} times in 3 s by one guest's REGISTER storm"
    );
    server.stop().await.unwrap();
}

/// Attack 7: The lockout protection ("an address that has logged in to a name before is not held by
/// that name's budget") is wiped for everyone once 65,536 (name, address) pairs have logged
/// in: `known.clear()`. An attacker fills it with its own logins (many names or IPv6
/// addresses), then spends the victim's name budget: the owner, from its usual address, is
/// locked out. (Guesses is the server's own type; reaching 65,536 real logins over TCP takes
/// an attacker about an hour of argon2 time, too long for a test.)
#[test]
fn an_attacker_filling_the_known_addresses_does_not_lock_the_owner_out() {
    let g = Guesses::default();
    let t = Millis(1_000);
    let owner_ip: IpAddr = "10.0.0.1".parse().unwrap();
    g.right(g.begin("alice", Some(owner_ip), t).unwrap(), t);
    // The attacker's own successful logins, from its many addresses.
    // (Each in a /64 of its own: addresses count by their /64.)
    for n in 0..65_536u32 {
        let ip: IpAddr =
            std::net::Ipv6Addr::from(0x2001_0db8_u128 << 96 | (n as u128) << 64).into();
        g.right(g.begin("mallory", Some(ip), t).unwrap(), Millis(2_000));
    }
    // Then it spends alice's budget from elsewhere.
    for n in 0..10u32 {
        let ip: IpAddr =
            std::net::Ipv6Addr::from(0x2001_0db9_u128 << 96 | (n as u128) << 64).into();
        g.wrong(g.begin("alice", Some(ip), t).unwrap());
    }
    assert!(
        g.begin("alice", Some(owner_ip), t).is_ok(),
        "alice, from the address she always logs in from, is locked out"
    );
}

/// Attack 8: The operator CLI on the wrong store: `linechat account add` on a data directory that
/// holds no store initdb's a new cluster there and reports success; the running server
/// (elsewhere) never sees the account.
#[tokio::test]
async fn linechat_account_add_refuses_a_data_dir_with_no_store() {
    let dir = pg::temp_dir("review-wrong-store");
    let _cleanup = pg::DirGuard(dir.clone());
    let dir_arg = dir.to_str().unwrap();
    let said = account(
        &["--data-dir", dir_arg],
        &["add", "bob"],
        "bob-password-1\n",
    );
    assert!(
        said.is_err(),
        "an account made in a brand-new, empty store: {said:?}"
    );
}
