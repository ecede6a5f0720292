//! Memory is bounded by configuration, never by what clients ask for: many clients that ask
//! for the biggest replies and then read nothing cost the server about `--outbound-limit`
//! each (plus the 64 KiB of output a connection may have waiting), and when they leave the
//! server's memory comes back near where it was.
//!
//! Each test runs the real binary, so that the resident set measured (`VmRSS`) is the
//! server's alone, fills it with something big, then sends `CLIENTS` silent connections at it.
//! The bound is `baseline + CLIENTS x (outbound limit + 64 KiB) + SLACK`.

mod common;

use std::time::Duration;

use common::binary::{linechat, Binary};
use common::{pg, Client};

/// Connections that ask for a big reply and never read it.
const CLIENTS: usize = 100;
/// The `--outbound-limit` the tests run with: a client's share of the server's memory.
const OUTBOUND_LIMIT: usize = 256 * 1024;
/// Output a session may have waiting before it stops producing more (session/mod.rs).
const OUTPUT_HIGH: usize = 64 * 1024;
/// What the server may take beyond the clients' shares: sessions, socket buffers in user
/// space, allocator slack.
const SLACK_KIB: u64 = 40 * 1024;
/// How near the baseline the server must come back once the clients have gone.
const RETURN_KIB: u64 = 16 * 1024;
/// The `--max-line` the tests run with: long lines make a page of `--max-page` (500)
/// messages 8 MB, far more than the outbound limit.
const MAX_LINE: usize = 16 * 1024;
/// A message of the big room: 16,000 bytes.
const TEXT_LEN: usize = 16_000;
/// Messages in the big room: 1,250 of 16 KB, 20 MB.
const BIG_ROOM: usize = 1250;

fn bound_kib(baseline: u64) -> u64 {
    baseline + (CLIENTS * (OUTBOUND_LIMIT + OUTPUT_HIGH)) as u64 / 1024 + SLACK_KIB
}

/// The server on the memory store, with a small outbound limit and no flood control.
fn memory_server() -> Binary {
    Binary::start(linechat().args([
        "--listen",
        "127.0.0.1:0",
        "--store",
        "memory",
        "--rate",
        "0",
        "--outbound-limit",
        &OUTBOUND_LIMIT.to_string(),
        "--max-line",
        &MAX_LINE.to_string(),
    ]))
}

/// Fills room `big` with `BIG_ROOM` messages of `TEXT_LEN` bytes.
async fn fill_big_room(server: &Binary) {
    let mut talker = Client::login(server.addr, "talker").await;
    talker.join("big NONE").await;
    let payload = "p".repeat(TEXT_LEN - 6);
    let acked = common::talk_in_chunks(&mut talker, 0..BIG_ROOM, &payload).await;
    assert_eq!(acked.len(), BIG_ROOM);
    talker.send("QUIT").await;
    talker.expect("BYE goodbye").await;
}

/// The highest RSS seen over `for_how_long`, sampled every 50 ms.
async fn peak_rss(server: &Binary, for_how_long: Duration) -> u64 {
    let end = tokio::time::Instant::now() + for_how_long;
    let mut peak = server.rss_kib();
    while tokio::time::Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(50)).await;
        peak = peak.max(server.rss_kib());
    }
    peak
}

/// Connects `CLIENTS` clients that each send `lines` and then read nothing.
async fn silent_clients(server: &Binary, lines: impl Fn(usize) -> String) -> Vec<Client> {
    let mut clients = Vec::with_capacity(CLIENTS);
    for i in 0..CLIENTS {
        // A small receive buffer: the kernel must not take the replies off the server's hands.
        let mut c = Client::connect_small(server.addr).await;
        c.send_raw(lines(i).as_bytes()).await;
        clients.push(c);
    }
    clients
}

/// While the silent clients wait: the peak stays under the bound. Then one of them reads
/// its reply to the end (checked by `read_one`), they all leave, and the server's memory
/// comes back near the baseline.
async fn check_bounded_and_returned<F, Fut>(
    server: &Binary,
    baseline: u64,
    mut clients: Vec<Client>,
    what: &str,
    read_one: F,
) where
    F: FnOnce(Client) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let peak = peak_rss(server, Duration::from_secs(5)).await;
    let bound = bound_kib(baseline);
    eprintln!("{what}: baseline {baseline} KiB, peak {peak} KiB with {CLIENTS} silent clients (bound {bound} KiB)");
    assert!(
        peak < bound,
        "{what}: {CLIENTS} silent clients took the server from {baseline} KiB to {peak} KiB (bound {bound} KiB)"
    );
    // The replies are whole for a client that does read.
    read_one(clients.pop().unwrap()).await;
    drop(clients);
    // Back near the baseline once they are gone (sessions end as their sockets close).
    let mut now = server.rss_kib();
    for _ in 0..100 {
        if now < baseline + RETURN_KIB {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        now = server.rss_kib();
    }
    eprintln!("{what}: {now} KiB after they left");
    assert!(
        now < baseline + RETURN_KIB,
        "{what}: the server kept {now} KiB after the clients left (baseline {baseline} KiB)"
    );
}

/// Reads a `JOIN big SINCE 0` reply to its `OK JOIN`: every message of the big room.
async fn read_whole_join(mut c: Client) {
    let (hist, ok) = c.until("OK JOIN big ").await;
    assert_eq!(hist.len(), BIG_ROOM, "{ok}");
    assert!(ok.starts_with(&format!("OK JOIN big {BIG_ROOM} ")), "{ok}");
}

async fn join_since_0_costs_bounded_memory(server: &Binary, what: &str) {
    fill_big_room(server).await;
    let baseline = server.rss_kib();
    let clients = silent_clients(server, |i| format!("NICK s{i}\nJOIN big SINCE 0\n")).await;
    let read = |mut c: Client| async move {
        c.expect_prefix("OK NICK ").await;
        read_whole_join(c).await;
    };
    check_bounded_and_returned(server, baseline, clients, what, read).await;
}

#[tokio::test]
async fn silent_clients_replaying_a_big_room_cost_bounded_memory() {
    let mut server = memory_server();
    join_since_0_costs_bounded_memory(&server, "JOIN big SINCE 0, memory store").await;
    server.signal("-TERM");
    assert!(server.wait().await.success());
}

#[tokio::test]
async fn silent_clients_replaying_a_big_room_cost_bounded_memory_with_postgres() {
    let dir = pg::temp_dir("memory bound");
    let _cleanup = pg::DirGuard(dir.clone());
    let mut server = Binary::start(
        linechat()
            .args(["--listen", "127.0.0.1:0", "--rate", "0", "--outbound-limit"])
            .arg(OUTBOUND_LIMIT.to_string())
            .arg("--max-line")
            .arg(MAX_LINE.to_string())
            .arg("--data-dir")
            .arg(&dir)
            .env_remove("DATABASE_URL"),
    );
    join_since_0_costs_bounded_memory(&server, "JOIN big SINCE 0, PostgreSQL").await;
    server.signal("-TERM");
    assert!(server.wait().await.success());
}

#[tokio::test]
async fn silent_clients_asking_for_history_cost_bounded_memory() {
    let mut server = memory_server();
    fill_big_room(&server).await;
    let baseline = server.rss_kib();
    // The most history one HISTORY page gives, and more behind it, never read.
    let clients = silent_clients(&server, |_| "HISTORY big LIMIT 500\n".repeat(4)).await;
    let read = |mut c: Client| async move {
        let (hist, ok) = c.until("OK HISTORY big ").await;
        assert!(!hist.is_empty() && hist.len() <= 500, "{ok}");
        assert_eq!(ok, format!("OK HISTORY big {}", hist.len()));
        let last = common::parse_message(hist.last().unwrap());
        assert_eq!(last.id, BIG_ROOM as u64, "the newest page");
    };
    check_bounded_and_returned(&server, baseline, clients, "HISTORY big LIMIT 500", read).await;
    server.signal("-TERM");
    assert!(server.wait().await.success());
}

#[tokio::test]
async fn silent_clients_listing_many_rooms_cost_bounded_memory() {
    // 30,000 rooms with long names, made by 300 members of 100 rooms each.
    const MEMBERS: usize = 300;
    const EACH: usize = 100;
    let mut server = memory_server();
    let name = |m: usize, r: usize| format!("a-room-with-a-rather-long-name-{m:04}-{r:03}");
    let mut members = Vec::with_capacity(MEMBERS);
    for m in 0..MEMBERS {
        let mut c = Client::login(server.addr, &format!("m{m}")).await;
        let joins: String = (0..EACH)
            .map(|r| format!("JOIN {} NONE\n", name(m, r)))
            .collect();
        c.send_raw(joins.as_bytes()).await;
        for _ in 0..EACH {
            c.expect_prefix("OK JOIN ").await;
        }
        members.push(c);
    }
    let total = MEMBERS * EACH;
    let baseline = server.rss_kib();
    let clients = silent_clients(&server, |_| "ROOMS\n".repeat(4)).await;
    let read = |mut c: Client| async move {
        let (rooms, ok) = c.until("OK ROOMS ").await;
        assert_eq!(ok, format!("OK ROOMS {total}"));
        assert_eq!(rooms.len(), total);
        assert_eq!(rooms[0], format!("ROOM {} 1", name(0, 0)));
        assert!(rooms.windows(2).all(|w| w[0] < w[1]), "sorted, no repeats");
    };
    check_bounded_and_returned(&server, baseline, clients, "ROOMS with 30,000 rooms", read).await;
    drop(members);
    server.signal("-TERM");
    assert!(server.wait().await.success());
}
