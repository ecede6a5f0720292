//! What the operator sees: the metrics move with real traffic over real TCP, and
//! `--log-format json` writes one JSON object a line.
//!
//! One test of traffic in this file: counters are process-wide, and another test's traffic
//! in the same process would move them too (each value is still read as a difference).

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use common::binary::{linechat, Binary};
use common::web::WsClient;
use common::{memory_config, Client};
use linechat::accounts::MemoryAccounts;
use linechat::admission::Admission;
use linechat::http::Shared;
use linechat::hub::Hub;
use linechat::store::{HistoryStore, MemoryStore};
use linechat::telemetry;
use linechat::transport::Transport;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Every sample of a Prometheus text, by its series (`name{labels}`).
fn samples(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').expect("a sample line");
            (series.to_string(), value.parse().expect("a number"))
        })
        .collect()
}

/// How much each of `series` moved from `before` to `after` (absent counts as 0).
fn delta(before: &HashMap<String, f64>, after: &HashMap<String, f64>, series: &str) -> f64 {
    let get = |m: &HashMap<String, f64>| m.get(series).copied().unwrap_or(0.0);
    get(after) - get(before)
}

/// A hub served by the session code over real TCP, and over WebSocket by the HTTP routes, as
/// the server's accept loops do, so the test can render the very hub its clients talk to.
/// Returns the line and the HTTP listeners' addresses.
async fn serve() -> (Arc<Hub>, SocketAddr, SocketAddr, CancellationToken) {
    let store: Arc<dyn HistoryStore> = Arc::new(MemoryStore::new(100));
    // A small outbound limit, so that a member that stops reading lags soon.
    let config = linechat::Config {
        outbound_limit: 64 * 1024,
        ..memory_config()
    };
    let (hub, _writer) = Hub::start(config, store, Arc::new(MemoryAccounts::default()));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let admission = Admission::new(0, 0, false);
    let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http_addr = http.local_addr().unwrap();
    let shared = Shared {
        hub: hub.clone(),
        stopping: shutdown.clone(),
        sessions: TaskTracker::new(),
        readiness: Arc::default(),
    };
    tokio::spawn({
        let admission = admission.clone();
        async move {
            let router = linechat::http::router(shared.clone());
            loop {
                let (stream, peer) = http.accept().await.unwrap();
                let ticket = admission.admit(peer.ip()).ok().unwrap();
                let (router, shared) = (router.clone(), shared.clone());
                tokio::spawn(async move {
                    let at = tokio::time::Instant::now();
                    linechat::http::serve_connection(router, stream, peer, at, ticket, &shared)
                        .await
                });
            }
        }
    });
    tokio::spawn({
        let (hub, shutdown) = (hub.clone(), shutdown.clone());
        async move {
            loop {
                let (stream, peer) = listener.accept().await.unwrap();
                let ticket = admission.admit(peer.ip()).ok().unwrap();
                tokio::spawn(linechat::session::run(
                    hub.clone(),
                    Transport::Tcp(stream),
                    peer,
                    tokio::time::Instant::now(),
                    shutdown.clone(),
                    ticket,
                ));
            }
        }
    });
    (hub, addr, http_addr, shutdown)
}

#[tokio::test]
async fn traffic_moves_the_metrics() {
    let (hub, addr, http_addr, shutdown) = serve().await;
    let before = samples(&telemetry::render(&hub));
    let mut alice = Client::login(addr, "alice").await;
    let mut bob = Client::login(addr, "bob").await;
    let mut carol = Client::login(addr, "carol").await;
    let mut wendy = WsClient::login(http_addr, "wendy").await;
    alice.join("4").await;
    bob.join("4").await;
    carol.join("4").await;
    for text in ["one", "two", "three"] {
        alice.say(text).await;
    }
    for client in [&mut bob, &mut carol] {
        for _ in 0..3 {
            client.until("MSG 4 ").await;
        }
    }
    bob.send("FROB").await;
    bob.expect_err("UNKNOWN_COMMAND").await;
    bob.send("JOIN bad/room").await;
    bob.expect_err("BAD_ROOM").await;

    let text = telemetry::render(&hub);
    let after = samples(&text);
    let moved = |series: &str| delta(&before, &after, series);
    assert_eq!(moved("linechat_messages_said_total"), 3.0, "{text}");
    assert_eq!(
        moved("linechat_messages_delivered_total"),
        6.0,
        "3 messages to bob and carol, none back to alice: {text}"
    );
    assert_eq!(
        moved("linechat_connections_accepted_total{transport=\"tcp\"}"),
        3.0
    );
    assert_eq!(
        moved("linechat_connections_open{transport=\"tcp\"}"),
        3.0,
        "{text}"
    );
    assert_eq!(
        moved("linechat_connections_accepted_total{transport=\"websocket\"}"),
        1.0
    );
    assert_eq!(
        moved("linechat_connections_open{transport=\"websocket\"}"),
        1.0
    );
    assert_eq!(
        moved("linechat_errors_sent_total{code=\"UNKNOWN_COMMAND\"}"),
        1.0
    );
    assert_eq!(moved("linechat_errors_sent_total{code=\"BAD_ROOM\"}"), 1.0);
    assert_eq!(
        moved("linechat_errors_sent_total{code=\"NICK_IN_USE\"}"),
        0.0
    );
    assert_eq!(moved("linechat_store_batch_messages_sum"), 3.0, "{text}");
    assert!(moved("linechat_store_batch_messages_count") >= 1.0);
    assert!(moved("linechat_store_commit_seconds_count") >= 1.0);
    // The hub's own gauges: this hub's state, whatever else the process runs.
    assert_eq!(after["linechat_rooms"], 1.0);
    assert_eq!(after["linechat_members"], 3.0);
    assert_eq!(after["linechat_names_held"], 4.0);
    assert_eq!(after["linechat_lagging_members"], 0.0);
    for help in [
        "# HELP linechat_messages_said_total ",
        "# TYPE linechat_store_commit_seconds histogram",
        "# TYPE linechat_connections_open gauge",
    ] {
        assert!(text.contains(help), "{help} in {text}");
    }

    // A member that stops reading lags, counted while it does, and is caught up once it
    // reads again.
    let mut tom = Client::login(addr, "tom").await;
    tom.join("lag").await;
    let mut slow = Client::connect_small(addr).await;
    slow.send("NICK slow").await;
    slow.expect("OK NICK slow").await;
    slow.join("lag").await;
    tom.expect("JOINED lag slow").await;
    common::talk_in_chunks(&mut tom, 0..3000, &"p".repeat(3000)).await;
    let lagging = samples(&telemetry::render(&hub));
    assert_eq!(lagging["linechat_lagging_members"], 1.0);
    while !slow.line().await.contains(" tom 2999 ") {}
    let caught_up = samples(&telemetry::render(&hub));
    assert_eq!(caught_up["linechat_lagging_members"], 0.0);
    assert!(delta(&lagging, &caught_up, "linechat_catch_ups_total") >= 1.0);
    for client in [&mut tom, &mut slow] {
        client.send("QUIT").await;
        client.until_closed_after("BYE goodbye").await;
    }

    // carol and wendy leave on their own: not forced closes; the others are closed by a
    // shutdown.
    carol.send("QUIT").await;
    carol.until_closed_after("BYE goodbye").await;
    wendy.send("QUIT").await;
    assert_eq!(wendy.line().await, "BYE goodbye");
    shutdown.cancel();
    hub.mailboxes.notify_all();
    for client in [&mut alice, &mut bob] {
        client.until_closed_after("BYE server shutting down").await;
    }
    // The sessions count their close just after the BYE: wait for it.
    let deadline = tokio::time::Instant::now() + common::PATIENCE;
    let after = loop {
        let after = samples(&telemetry::render(&hub));
        let open = ["tcp", "websocket"].map(|t| {
            let series = format!("linechat_connections_open{{transport=\"{t}\"}}");
            delta(&before, &after, &series)
        });
        if open == [0.0, 0.0] {
            break after;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "connections still open"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(
        delta(
            &before,
            &after,
            "linechat_forced_closes_total{reason=\"shutdown\"}"
        ),
        2.0
    );
    assert_eq!(
        delta(
            &before,
            &after,
            "linechat_forced_closes_total{reason=\"too_slow\"}"
        ),
        0.0
    );
    assert_eq!(after["linechat_rooms"], 0.0);
    assert_eq!(after["linechat_names_held"], 0.0);
}

/// `--log-format json`: every line on stderr is one JSON object with the level, the target
/// and the event's fields, its message among them; LINECHAT_LOG still filters it.
#[tokio::test]
async fn json_logs_are_one_object_a_line() {
    let mut server = Binary::start(
        linechat()
            .args(["--log-format", "json", "--store", "memory", "--listen"])
            .arg("127.0.0.1:0")
            .env("LINECHAT_LOG", "debug"),
    );
    let mut client = Client::login(server.addr, "alice").await;
    client.send("QUIT").await;
    client.until_closed_after("BYE goodbye").await;
    server.wait_for_log("\"closed\"").await;
    server.signal("-TERM");
    assert!(server.wait().await.success());
    let log = server.log();
    assert!(log.len() >= 3, "{log:#?}");
    for line in &log {
        let event: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        let level = event["level"].as_str().unwrap_or("");
        assert!(
            ["ERROR", "WARN", "INFO", "DEBUG"].contains(&level),
            "{line}"
        );
        assert!(event["fields"]["message"].is_string(), "{line}");
        assert!(event["timestamp"].is_string(), "{line}");
        assert!(event["target"].is_string(), "{line}");
    }
    assert!(log.iter().any(|l| l.contains("listening on ")), "{log:#?}");
    assert!(
        log.iter().any(|l| l.contains("\"level\":\"DEBUG\"")),
        "LINECHAT_LOG=debug applies: {log:#?}"
    );
}
