//! History over real TCP: replay on JOIN, HISTORY paging, and the replay/live seam.

mod common;

use common::{memory_config, parse_message, Client, TestServer};
use linechat::Config;

fn ids(lines: &[String]) -> Vec<u64> {
    lines.iter().map(|l| parse_message(l).id).collect()
}

async fn page_ids(c: &mut Client, args: &str) -> Vec<u64> {
    c.send(&format!("HISTORY r {args}")).await;
    let (hist, ok) = c.until("OK HISTORY").await;
    assert_eq!(ok, format!("OK HISTORY r {}", hist.len()));
    ids(&hist)
}

fn range(from: u64, to: u64) -> Vec<u64> {
    (from..=to).collect()
}

/// A server and a client `talker` in `room` that has said m1..=mN (ids 1..=N).
async fn room_with(config: Config, room: &str, n: usize) -> (TestServer, Client) {
    let server = TestServer::start_with(config).await;
    let mut talker = server.login("talker").await;
    talker.join(room).await;
    let mut batch = String::new();
    for i in 1..=n {
        batch.push_str(&format!("SAY m{i}\n"));
    }
    talker.send_raw(batch.as_bytes()).await;
    for i in 1..=n {
        let ok = talker.expect_prefix("OK SAY ").await;
        assert!(ok.starts_with(&format!("OK SAY {i} ")), "{ok}");
    }
    (server, talker)
}

#[tokio::test]
async fn join_replays_recent_history_oldest_first() {
    let config = Config {
        history_on_join: 5,
        max_page: 6,
        ..memory_config()
    };
    let (server, _talker) = room_with(config, "4", 8).await;
    let mut c = server.login("late").await;
    c.send("JOIN 4").await;
    let (hist, ok) = c.until("OK JOIN").await;
    assert_eq!(ok, "OK JOIN 4 5 8");
    assert_eq!(ids(&hist), range(4, 8));
    let first = parse_message(&hist[0]);
    assert_eq!(
        (
            first.kind.as_str(),
            first.nick.as_str(),
            first.text.as_str()
        ),
        ("HIST", "talker", "m4")
    );

    let mut d = server.login("last2").await;
    assert_eq!(ids(&d.join("4 LAST 2").await), range(7, 8));
    // LAST is capped at --max-page.
    assert_eq!(ids(&d.join("4 last 100").await), range(3, 8));
    d.send("JOIN 4 LAST 0").await;
    d.expect("OK JOIN 4 0 8").await;
    d.send("JOIN 4 NONE").await;
    d.expect("OK JOIN 4 0 8").await;
    // An empty room.
    d.send("JOIN empty").await;
    d.expect("OK JOIN empty 0 0").await;
    server.stop().await.unwrap();
}

#[tokio::test]
async fn join_since_catches_up_across_pages() {
    let config = Config {
        max_page: 3,
        ..memory_config()
    };
    let (server, mut talker) = room_with(config, "r", 10).await;
    let mut c = server.login("back").await;
    c.send("JOIN r SINCE 2").await;
    let (hist, ok) = c.until("OK JOIN").await;
    assert_eq!(ids(&hist), range(3, 10));
    assert_eq!(ok, "OK JOIN r 8 10");
    talker.expect("JOINED r back").await;
    // Already caught up; then live.
    let mut d = server.login("current").await;
    d.send("JOIN r SINCE 10").await;
    d.expect("OK JOIN r 0 10").await;
    // SINCE beyond the end (say, the store was reset) starts live from the real end.
    let mut e = server.login("future").await;
    e.send("JOIN r SINCE 500").await;
    e.expect("OK JOIN r 0 10").await;
    let id = talker.say("live").await;
    assert_eq!(id, 11);
    for client in [&mut c, &mut d, &mut e] {
        let (_, line) = client.until("MSG ").await;
        let m = parse_message(&line);
        assert_eq!((m.id, m.text.as_str()), (11, "live"));
    }
    server.stop().await.unwrap();
}

#[tokio::test]
async fn history_pages_both_ways() {
    let (server, _talker) = room_with(memory_config(), "r", 25).await;
    // HISTORY needs no nick and no membership.
    let mut c = server.client().await;
    // Backward from the newest.
    assert_eq!(page_ids(&mut c, "LIMIT 10").await, range(16, 25));
    assert_eq!(page_ids(&mut c, "BEFORE 16 LIMIT 10").await, range(6, 15));
    assert_eq!(page_ids(&mut c, "before 6 limit 10").await, range(1, 5));
    assert_eq!(
        page_ids(&mut c, "BEFORE 1 LIMIT 10").await,
        Vec::<u64>::new()
    );
    // Forward from an id, as after a reconnect.
    assert_eq!(page_ids(&mut c, "AFTER 0 LIMIT 10").await, range(1, 10));
    assert_eq!(page_ids(&mut c, "AFTER 10 LIMIT 10").await, range(11, 20));
    assert_eq!(page_ids(&mut c, "LIMIT 10 AFTER 20").await, range(21, 25));
    assert_eq!(page_ids(&mut c, "AFTER 25").await, Vec::<u64>::new());
    // Both bounds: strictly between.
    assert_eq!(page_ids(&mut c, "AFTER 5 BEFORE 9").await, range(6, 8));
    assert_eq!(
        page_ids(&mut c, "AFTER 9 BEFORE 5").await,
        Vec::<u64>::new()
    );
    // Default limit is --history-on-join (50 here), so all 25.
    assert_eq!(page_ids(&mut c, "").await, range(1, 25));
    c.send("HISTORY nobody.here").await;
    c.expect("OK HISTORY nobody.here 0").await;
    server.stop().await.unwrap();
}

#[tokio::test]
async fn history_limit_is_capped_and_memory_is_bounded() {
    let config = Config {
        max_page: 4,
        memory_history: 10,
        ..memory_config()
    };
    let (server, _talker) = room_with(config, "r", 15).await;
    let mut c = server.client().await;
    c.send("HISTORY r LIMIT 1000").await;
    let (hist, ok) = c.until("OK HISTORY").await;
    assert_eq!((ids(&hist), ok.as_str()), (range(12, 15), "OK HISTORY r 4"));
    // Only the last 10 are kept; ids keep counting.
    c.send("HISTORY r AFTER 0 LIMIT 4").await;
    let (hist, _) = c.until("OK HISTORY").await;
    assert_eq!(ids(&hist), range(6, 9));
    server.stop().await.unwrap();
}

/// A client resuming with `SINCE` from before what the memory store still keeps is told
/// which ids it will not get, then replayed the rest.
#[tokio::test]
async fn join_since_names_what_the_store_no_longer_holds() {
    let config = Config {
        memory_history: 10,
        ..memory_config()
    };
    let (server, _talker) = room_with(config, "r", 15).await;
    let mut c = server.login("back").await;
    c.send("JOIN r SINCE 2").await;
    let missed = c.line().await;
    assert!(missed.starts_with("MISSED r 3 5 "), "{missed}");
    let (hist, ok) = c.until("OK JOIN").await;
    assert_eq!((ids(&hist), ok.as_str()), (range(6, 15), "OK JOIN r 10 15"));
    // Nothing was dropped after 5: no MISSED.
    c.send("JOIN r SINCE 5").await;
    let (hist, ok) = c.until("OK JOIN").await;
    assert_eq!((ids(&hist), ok.as_str()), (range(6, 15), "OK JOIN r 10 15"));
    // A SINCE past the room's end is from another history: no MISSED either.
    c.send("JOIN r SINCE 99").await;
    c.expect("OK JOIN r 0 15").await;
    server.stop().await.unwrap();
}

/// Members who join while the room is busy get every message exactly once: `HIST` up to the
/// id in `OK JOIN`, then `MSG` after it, with no gap and no duplicate.
#[tokio::test]
async fn replay_and_live_meet_without_a_seam() {
    let server = TestServer::start().await;
    common::check_replay_seam(&server).await;
    server.stop().await.unwrap();
}
