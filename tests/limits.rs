//! Limits that protect the server: connections per address, the login timeout, and the
//! error limit. Each is checked by what the client sees and by the connection closing.

mod common;

use common::{TestServer, PATIENCE};
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
        ..Config::default()
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
        ..Config::default()
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
        ..Config::default()
    })
    .await;
    let mut named = server.login("named").await;
    let silent = TcpStream::connect(server.addr).await.unwrap();
    let said = rest_of(silent).await;
    let last = said.lines().last().unwrap_or_default();
    assert!(last.starts_with("BYE login timeout"), "{said:?}");
    // A connection that chose a name in time is not affected.
    tokio::time::sleep(Duration::from_millis(400)).await;
    named.expect_nothing_pending().await;
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_client_that_errs_again_and_again_is_closed() {
    let server = TestServer::start_with(Config {
        max_errors: 5,
        ..Config::default()
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
