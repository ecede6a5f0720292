//! Limits that protect the server: connections per address, the login timeout, the error
//! limit, and the rooms a connection, an address and the server may make. Each is checked by
//! what the client sees (and, for the first three, by the connection closing).

mod common;

use common::{memory_config, TestServer, PATIENCE};
use linechat::Config;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// Reads everything until the server closes the connection.
async fn rest_of(mut stream: TcpStream) -> String {
    let mut text = String::new();
    tokio::time::timeout(PATIENCE, stream.read_to_string(&mut text))
        .await
        .expect("the server closes the connection")
        .unwrap();
    text
}

#[tokio::test]
async fn too_many_connections_from_one_address_are_turned_away() {
    let server = TestServer::start_with(Config {
        max_per_ip: 2,
        limit_loopback: true,
        ..memory_config()
    })
    .await;
    let mut a = server.login("a").await;
    let _b = server.login("b").await;
    let third = TcpStream::connect(server.addr).await.unwrap();
    let said = rest_of(third).await;
    assert!(said.starts_with("ERR SERVER_FULL "), "{said:?}");
    // The ones it holds are unaffected, and a place frees up when one leaves.
    a.expect_nothing_pending().await;
    a.send("QUIT").await;
    a.expect("BYE goodbye").await;
    assert_eq!(a.try_line().await, None);
    let mut c = server.client().await;
    c.send("NICK c").await;
    c.expect("OK NICK c").await;
    server.stop().await.unwrap();
}

#[tokio::test]
async fn loopback_is_not_limited_per_address_by_default() {
    let server = TestServer::start_with(Config {
        max_per_ip: 2,
        ..memory_config()
    })
    .await;
    let mut clients = Vec::new();
    for i in 0..5 {
        clients.push(server.login(&format!("c{i}")).await);
    }
    for c in &mut clients {
        c.expect_nothing_pending().await;
    }
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_connection_that_never_chooses_a_name_is_closed() {
    let server = TestServer::start_with(Config {
        login_timeout: Duration::from_millis(300),
        ..memory_config()
    })
    .await;
    let mut named = server.login("named").await;
    let silent = TcpStream::connect(server.addr).await.unwrap();
    let said = rest_of(silent).await;
    let last = said.lines().last().unwrap_or_default();
    assert!(last.starts_with("BYE login timeout"), "{said:?}");
    // A connection that chose a name in time is not affected. It connected first, so its
    // deadline passed before the silent one's (one queue, in arrival order): had the watch
    // closed it, it would have been told so before the silent one got its BYE.
    named.expect_nothing_pending().await;
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_client_that_errs_again_and_again_is_closed() {
    let server = TestServer::start_with(Config {
        max_errors: 5,
        ..memory_config()
    })
    .await;
    let mut bad = server.login("bad").await;
    let mut other = server.login("other").await;
    for _ in 0..5 {
        bad.send("FLY").await;
        bad.expect_err("UNKNOWN_COMMAND").await;
    }
    bad.send("FLY").await;
    bad.expect("BYE too many errors").await;
    assert_eq!(bad.try_line().await, None);
    // Everyone else carries on.
    other.expect_nothing_pending().await;
    server.stop().await.unwrap();
}

/// A flood is slowed, not refused: a script that pipes lines faster than `--rate` has every
/// line done, in order, at the rate; the others in the room see every message and are
/// answered at once meanwhile.
#[tokio::test]
async fn a_flood_is_slowed_and_every_line_is_done_in_order() {
    const LINES: usize = 100;
    let server = TestServer::start_with(Config {
        rate: 50,
        burst: 10,
        max_errors: 30,
        ..memory_config()
    })
    .await;
    let mut flooder = server.login("flooder").await;
    flooder.join("r").await;
    let mut other = server.login("other").await;
    other.join("r").await;
    flooder.expect("JOINED r other").await;
    let flood: String = (0..LINES).map(|i| format!("SAY flood {i}\n")).collect();
    let started = std::time::Instant::now();
    flooder.send_raw(flood.as_bytes()).await;
    // Someone else is served at once while the flood is being slowed.
    other.send("PING quick").await;
    let (_, pong) = other.until("PONG ").await;
    assert_eq!(pong, "PONG quick");
    let mut ids = Vec::new();
    while ids.len() < LINES {
        let line = flooder.line().await;
        let id = line
            .strip_prefix("OK SAY ")
            .unwrap_or_else(|| panic!("every line is done: {line:?}"));
        ids.push(id.split(' ').next().unwrap().parse::<u64>().unwrap());
    }
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "in order: {ids:?}");
    // NICK and JOIN took 2 of the burst of 10; the other 92 lines came at 50 a second.
    let took = started.elapsed();
    assert!(
        took >= std::time::Duration::from_millis(1_500),
        "the flood was slowed to the rate: {took:?}"
    );
    let mut received = Vec::new();
    while received.len() < LINES {
        let line = other.line().await;
        if let Some(text) = line.split(" flooder ").nth(1) {
            received.push(text.to_string());
        }
    }
    let sent: Vec<String> = (0..LINES).map(|i| format!("flood {i}")).collect();
    assert_eq!(received, sent);
    flooder.expect_nothing_pending().await;
    server.stop().await.unwrap();
}

/// One endless line (no LF) is read no faster than lines: each line's worth of it counts
/// against the flood budget, so it too waits in the client's socket.
#[tokio::test]
async fn an_endless_line_is_not_read_beyond_the_rate() {
    use tokio::io::AsyncWriteExt;
    let server = TestServer::start_with(Config {
        rate: 1,
        burst: 1,
        ..memory_config()
    })
    .await;
    let mut raw = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let flood = vec![b'x'; 64 << 20];
    let wrote =
        tokio::time::timeout(std::time::Duration::from_secs(3), raw.write_all(&flood)).await;
    assert!(
        wrote.is_err(),
        "the server must not read an endless line at full speed (the write finished: {wrote:?})"
    );
    drop(raw);
    server.stop().await.unwrap();
}

/// Over its budget a connection is not read at all: what it floods waits in its own socket
/// (TCP backpressure), not in the server, and the connection stays open.
#[tokio::test]
async fn a_flooder_is_not_read_beyond_its_rate() {
    use tokio::io::AsyncWriteExt;
    let server = TestServer::start_with(Config {
        rate: 1,
        burst: 1,
        ..memory_config()
    })
    .await;
    let mut raw = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    // 64 MiB of lines: far more than the socket buffers on both sides hold.
    let flood = "PING x\n".repeat(8 << 20);
    let wrote = tokio::time::timeout(
        std::time::Duration::from_secs(3),
        raw.write_all(flood.as_bytes()),
    )
    .await;
    assert!(
        wrote.is_err(),
        "the server must stop reading a flooder (the write finished: {wrote:?})"
    );
    // Everyone else is served as usual.
    let mut other = server.login("other").await;
    other.send("PING still").await;
    other.expect("PONG still").await;
    drop(raw);
    server.stop().await.unwrap();
}

/// Every forced close is logged at `info` with the client's address and the reason: an
/// operator can tell who was turned away, timed out or closed for erring.
#[tokio::test]
async fn forced_closes_are_logged_with_address_and_reason() {
    use common::binary::{linechat, Binary};
    let mut server = Binary::start(linechat().args([
        "--listen",
        "127.0.0.1:0",
        "--store",
        "memory",
        "--max-connections",
        "2",
        "--login-timeout",
        "1",
        "--max-errors",
        "1",
    ]));
    let silent = TcpStream::connect(server.addr).await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let mut erring = common::Client::connect(server.addr).await;
    erring.send("NICK e").await;
    erring.expect("OK NICK e").await;
    let turned_away = TcpStream::connect(server.addr).await.unwrap();
    let turned_away_addr = turned_away.local_addr().unwrap();
    assert!(rest_of(turned_away).await.starts_with("ERR SERVER_FULL "));
    erring.send_raw(b"FLY\nFLY\n").await;
    erring.expect_err("UNKNOWN_COMMAND").await;
    erring.expect("BYE too many errors").await;
    assert!(rest_of(silent).await.contains("BYE login timeout"));

    server.signal("-TERM");
    assert!(server.wait().await.success());
    let log = server.log().join("\n");
    for (peer, reason) in [
        (
            turned_away_addr.to_string(),
            "connection refused: server full",
        ),
        (
            silent_addr.to_string(),
            "closed: no NICK within the login timeout",
        ),
    ] {
        assert!(
            log.lines()
                .any(|l| l.contains(" INFO ") && l.contains(&peer) && l.contains(reason)),
            "no INFO line with {peer} and {reason:?} in:\n{log}"
        );
    }
    assert!(
        log.lines()
            .any(|l| l.contains(" INFO ") && l.contains("closed: too many errors")),
        "{log}"
    );
}

/// `--max-rooms-per-connection`: one more room is refused, re-joining one is not, and
/// leaving one makes room.
#[tokio::test]
async fn rooms_per_connection_are_limited() {
    let server = TestServer::start_with(Config {
        max_rooms_per_connection: 3,
        ..memory_config()
    })
    .await;
    let mut c = server.login("collector").await;
    for room in ["a", "b", "c"] {
        c.join(room).await;
    }
    c.send("JOIN d").await;
    c.expect_err("TOO_MANY_ROOMS").await;
    c.send("WHO d").await;
    c.expect("OK WHO d 0").await;
    c.join("a LAST 0").await;
    c.send("PART b").await;
    c.expect("OK PART b").await;
    c.join("d").await;
    let mut other = server.login("other").await;
    other.join("e").await;
    other.join("d").await;
    c.expect("JOINED d other").await;
    server.stop().await.unwrap();
}

/// `--new-rooms-per-minute`: counted per address (here loopback, with `--limit-loopback`),
/// for new rooms only; joining a room that exists is never limited.
#[tokio::test]
async fn new_rooms_are_limited_per_address() {
    let server = TestServer::start_with(Config {
        new_rooms_per_minute: 2,
        limit_loopback: true,
        ..memory_config()
    })
    .await;
    let mut a = server.login("a").await;
    a.join("x1").await;
    a.join("x2").await;
    a.send("JOIN x3").await;
    a.expect_err("ROOM_RATE_LIMITED").await;
    // Another connection from the same address shares the budget...
    let mut b = server.login("b").await;
    b.send("JOIN x4").await;
    b.expect_err("ROOM_RATE_LIMITED").await;
    // ...but may join rooms that exist.
    b.join("x1").await;
    a.expect("JOINED x1 b").await;
    server.stop().await.unwrap();

    // Loopback is not counted without --limit-loopback, as for --max-per-ip.
    let server = TestServer::start_with(Config {
        new_rooms_per_minute: 2,
        ..memory_config()
    })
    .await;
    let mut c = server.login("c").await;
    for i in 0..5 {
        c.join(&format!("y{i}")).await;
    }
    server.stop().await.unwrap();
}

/// `--max-rooms`: a JOIN that would make one room too many is refused; existing rooms can
/// still be joined, and a room that empties frees its place.
#[tokio::test]
async fn the_rooms_of_the_whole_server_are_limited() {
    let server = TestServer::start_with(Config {
        max_rooms: 2,
        ..memory_config()
    })
    .await;
    let mut a = server.login("a").await;
    a.join("r1").await;
    a.join("r2").await;
    let mut b = server.login("b").await;
    b.send("JOIN r3").await;
    b.expect_err("ROOMS_FULL").await;
    b.join("r1").await;
    a.send("PART r2").await;
    a.expect_prefix("JOINED r1 b").await;
    a.expect("OK PART r2").await;
    b.join("r3").await;
    b.send("ROOMS").await;
    b.expect("ROOM r1 2").await;
    b.expect("ROOM r3 1").await;
    b.expect("OK ROOMS 2").await;
    server.stop().await.unwrap();
}

/// `ROOMS AFTER <room> LIMIT <n>` pages through the list, by name.
#[tokio::test]
async fn rooms_are_listed_a_page_at_a_time_on_request() {
    let server = TestServer::start().await;
    let mut c = server.login("lister").await;
    for room in ["d", "a", "c", "b", "e"] {
        c.join(room).await;
    }
    c.send("ROOMS LIMIT 2").await;
    c.expect("ROOM a 1").await;
    c.expect("ROOM b 1").await;
    c.expect("OK ROOMS 2").await;
    c.send("rooms after b limit 2").await;
    c.expect("ROOM c 1").await;
    c.expect("ROOM d 1").await;
    c.expect("OK ROOMS 2").await;
    c.send("ROOMS AFTER d LIMIT 2").await;
    c.expect("ROOM e 1").await;
    c.expect("OK ROOMS 1").await;
    c.send("ROOMS AFTER e").await;
    c.expect("OK ROOMS 0").await;
    c.send("ROOMS SOON").await;
    c.expect_err("BAD_ARGUMENT").await;
    server.stop().await.unwrap();
}
