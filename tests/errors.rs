//! Every error code over real TCP, with the connection staying usable after each.

mod common;

use common::{memory_config, Client, TestServer};
use linechat::protocol::ErrorCode;
use linechat::Config;
use tokio::io::AsyncReadExt;

/// Sends `line`, expects `ERR <code> <text>`, then proves the connection still works.
async fn refused(c: &mut Client, seen: &mut Vec<&'static str>, line: &[u8], code: &'static str) {
    let mut raw = line.to_vec();
    raw.push(b'\n');
    c.send_raw(&raw).await;
    let err = c.expect_err(code).await;
    assert!(err.len() > code.len() + 5, "ERR has human text: {err:?}");
    c.expect_nothing_pending().await;
    seen.push(code);
}

#[tokio::test]
async fn every_error_code_is_reachable_and_the_connection_lives_on() {
    let config = Config {
        max_line: 64,
        // This test errs on purpose, far more than a real client would.
        max_errors: 0,
        ..memory_config()
    };
    let server = TestServer::start_with(config).await;
    let mut c = server.client().await;
    let seen = &mut Vec::new();

    refused(&mut c, seen, b"DANCE", "UNKNOWN_COMMAND").await;
    refused(&mut c, seen, b"NICK", "MISSING_ARGUMENT").await;
    refused(&mut c, seen, b"JOIN", "MISSING_ARGUMENT").await;
    refused(&mut c, seen, b"HISTORY", "MISSING_ARGUMENT").await;
    refused(&mut c, seen, b"HISTORY r LIMIT", "MISSING_ARGUMENT").await;
    refused(&mut c, seen, b"WHO", "MISSING_ARGUMENT").await;
    refused(&mut c, seen, b"NICK a b c", "TOO_MANY_ARGUMENTS").await;
    refused(&mut c, seen, b"PART a b", "TOO_MANY_ARGUMENTS").await;
    refused(&mut c, seen, b"PART a b", "TOO_MANY_ARGUMENTS").await;
    refused(&mut c, seen, b"JOIN r NONE extra", "TOO_MANY_ARGUMENTS").await;
    refused(&mut c, seen, b"JOIN r LAST ten", "BAD_ARGUMENT").await;
    refused(&mut c, seen, b"JOIN r LATER", "BAD_ARGUMENT").await;
    refused(&mut c, seen, b"HISTORY r BEFORE -3", "BAD_ARGUMENT").await;
    refused(&mut c, seen, b"HISTORY r SOON 3", "BAD_ARGUMENT").await;
    refused(&mut c, seen, b"HISTORY r LIMIT 1 LIMIT 2", "BAD_ARGUMENT").await;
    refused(&mut c, seen, b"NICK bad!name", "BAD_NICK").await;
    refused(&mut c, seen, b"NICK nul\x00byte", "BAD_NICK").await;
    refused(
        &mut c,
        seen,
        b"NICK aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        "BAD_NICK",
    )
    .await;
    refused(&mut c, seen, b"NICK tab\tname", "BAD_NICK").await;
    refused(&mut c, seen, b"NICK del\x7f", "BAD_NICK").await;
    refused(&mut c, seen, b"JOIN room/with/slash", "BAD_ROOM").await;
    refused(&mut c, seen, b"WHO r\x01", "BAD_ROOM").await;
    refused(&mut c, seen, b"JOIN nul\x00room", "BAD_ROOM").await;
    refused(&mut c, seen, b"HISTORY tab\troom", "BAD_ROOM").await;
    refused(&mut c, seen, b"PART r\x1b", "BAD_ROOM").await;
    refused(&mut c, seen, b"SAY before nick", "NO_NICK").await;
    refused(&mut c, seen, b"JOIN r", "NO_NICK").await;
    refused(&mut c, seen, &[b'x'; 65], "LINE_TOO_LONG").await;
    refused(&mut c, seen, b"SAY caf\xc3", "BAD_UTF8").await;
    refused(&mut c, seen, b"\xff\xfe", "BAD_UTF8").await;

    let _holder = server.login("taken").await;
    refused(&mut c, seen, b"NICK TAKEN", "NICK_IN_USE").await;
    c.send("NICK me").await;
    c.expect("OK NICK me").await;
    refused(&mut c, seen, b"SAY nowhere to say it", "NOT_IN_ROOM").await;
    refused(&mut c, seen, b"PART", "NOT_IN_ROOM").await;
    c.join("r").await;
    refused(&mut c, seen, b"PART elsewhere", "NOT_IN_ROOM").await;
    refused(&mut c, seen, b"SAY bell\x07", "BAD_TEXT").await;
    refused(&mut c, seen, b"SAY esc\x1b[31m", "BAD_TEXT").await;
    refused(&mut c, seen, b"SAY nul\x00byte", "BAD_TEXT").await;
    refused(&mut c, seen, b"SAY del\x7f", "BAD_TEXT").await;
    // C1 controls are control characters too (U+0085, next line).
    refused(&mut c, seen, "SAY next\u{85}line".as_bytes(), "BAD_TEXT").await;
    refused(&mut c, seen, b"SAY cr\rin the middle", "BAD_TEXT").await;
    refused(&mut c, seen, b"PING \x00", "BAD_TEXT").await;
    refused(&mut c, seen, b"QUIT \x1b", "BAD_TEXT").await;
    refused(&mut c, seen, b"SAY    ", "MISSING_ARGUMENT").await;
    // After all that, the connection still chats. Tab is the one control character text
    // may hold, and it comes back as sent.
    assert_eq!(c.say("still here").await, 1);
    let mut other = server.login("other").await;
    other.join("r").await;
    c.expect("JOINED r other").await;
    assert_eq!(c.say("tab\tseparated").await, 2);
    assert!(other.line().await.ends_with(" me tab\tseparated"));

    // A server that is full turns a new connection away with SERVER_FULL and closes it.
    let full = TestServer::start_with(Config {
        max_connections: 1,
        ..memory_config()
    })
    .await;
    let _only = full.client().await;
    let mut turned_away = tokio::net::TcpStream::connect(full.addr).await.unwrap();
    let mut said = String::new();
    tokio::time::timeout(common::PATIENCE, turned_away.read_to_string(&mut said))
        .await
        .expect("closed")
        .unwrap();
    assert!(said.starts_with("ERR SERVER_FULL "), "{said:?}");
    seen.push("SERVER_FULL");

    // STORE_UNAVAILABLE needs a store that can fail (PostgreSQL): tests/postgres.rs has it.
    // OUTCOME_UNKNOWN needs a database that hangs: tests/outage.rs has it.
    // SHUTTING_DOWN needs a server shutting down: tests/lifecycle.rs has it.
    // TOO_MANY_ROOMS, ROOM_RATE_LIMITED and ROOMS_FULL need their limits: tests/limits.rs.
    // The account codes need accounts and the operator's switches: tests/accounts.rs
    // (SERVER_BUSY, a full password-check queue: the unit tests of accounts::password).
    // TLS_REQUIRED needs a TLS listener: tests/tls.rs.
    let elsewhere = [
        "NICK_REGISTERED",
        "WRONG_PASSWORD",
        "NOT_REGISTERED",
        "ALREADY_REGISTERED",
        "WEAK_PASSWORD",
        "REGISTRATION_CLOSED",
        "ACCOUNT_REQUIRED",
        "TOO_MANY_GUESSES",
        "SERVER_BUSY",
        "TOO_MANY_REGISTRATIONS",
        "PRIVATE_ROOM",
        "NOT_ROOM_OWNER",
        "STORE_UNAVAILABLE",
        "OUTCOME_UNKNOWN",
        "SHUTTING_DOWN",
        "TOO_MANY_ROOMS",
        "ROOM_RATE_LIMITED",
        "ROOMS_FULL",
        "TLS_REQUIRED",
        // tests/websocket.rs: frames_that_are_not_lines_are_refused_and_the_connection_lives_on
        "BAD_FRAME",
    ];
    for code in ErrorCode::ALL {
        let code = code.as_str();
        assert!(
            seen.contains(&code) || elsewhere.contains(&code),
            "{code} was never provoked"
        );
    }
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_long_line_is_not_buffered_whole_and_the_next_line_works() {
    let config = Config {
        max_line: 100,
        ..memory_config()
    };
    let server = TestServer::start_with(config).await;
    let mut c = server.login("big").await;
    // A megabyte without a newline, in pieces: refused once, discarded as it streams.
    let chunk = vec![b'y'; 64 * 1024];
    for _ in 0..16 {
        c.send_raw(&chunk).await;
    }
    c.send_raw(b"\nPING after\n").await;
    c.expect_err("LINE_TOO_LONG").await;
    c.expect("PONG after").await;
    // Exactly at the limit is fine (CRLF not counted).
    let ok = format!("PING {}\r\n", "z".repeat(95));
    c.send_raw(ok.as_bytes()).await;
    c.expect(&format!("PONG {}", "z".repeat(95))).await;
    server.stop().await.unwrap();
}

/// Errors keep command order too: a pipelined SAY's `OK` is never overtaken.
#[tokio::test]
async fn errors_wait_their_turn_behind_pipelined_says() {
    let config = Config {
        max_line: 16,
        ..memory_config()
    };
    let server = TestServer::start_with(config).await;
    let mut c = server.login("piper").await;
    c.join("r").await;
    let mut input: Vec<u8> = Vec::new();
    for i in 0..200 {
        input.extend_from_slice(format!("SAY {i}\n").as_bytes());
    }
    // An unknown command, a bad byte, and an over-long line followed, in the same write, by
    // lines that must survive it.
    input.extend_from_slice(b"FLY\n\xff\nSAY 12345678901234567890\nPING a\nPING b\n");
    c.send_raw(&input).await;
    for i in 1..=200 {
        c.expect_prefix(&format!("OK SAY {i} ")).await;
    }
    c.expect_err("UNKNOWN_COMMAND").await;
    c.expect_err("BAD_UTF8").await;
    c.expect_err("LINE_TOO_LONG").await;
    c.expect("PONG a").await;
    c.expect("PONG b").await;
    c.send("QUIT \t ").await;
    c.expect("BYE goodbye").await;
    server.stop().await.unwrap();
}

#[test]
fn protocol_md_lists_exactly_the_error_codes() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/PROTOCOL.md"))
        .expect("PROTOCOL.md at the top level");
    let section = doc
        .split("\n## ")
        .find(|s| s.lines().next().is_some_and(|h| h.contains("Error codes")))
        .expect("an error codes section");
    let listed: Vec<&str> = section
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .collect();
    let codes: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
    for code in &codes {
        assert!(listed.contains(code), "PROTOCOL.md does not list {code}");
    }
    for code in &listed {
        assert!(
            codes.contains(code),
            "PROTOCOL.md lists {code}, which the server never sends"
        );
    }
}
