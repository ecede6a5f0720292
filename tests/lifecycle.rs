//! Whole sessions as netcat would drive them, slow readers, and graceful shutdown.

mod common;

use std::io::{BufRead, BufReader as StdBufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{is_rfc3339_millis, parse_message, Client, TestServer, PATIENCE};
use linechat::Config;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Writes `input` in one go, half-closes like `nc -N`, and reads until the server closes.
async fn pipe_through(addr: std::net::SocketAddr, input: &[u8]) -> Vec<String> {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(input).await.unwrap();
    stream.shutdown().await.unwrap();
    let mut out = String::new();
    tokio::time::timeout(PATIENCE, stream.read_to_string(&mut out))
        .await
        .expect("server closes")
        .unwrap();
    out.lines().map(str::to_string).collect()
}

/// Replaces the time in OK SAY / MSG / HIST lines with `<time>`, after checking its format.
fn without_times(lines: Vec<String>) -> Vec<String> {
    lines
        .into_iter()
        .map(|l| {
            let mut words: Vec<&str> = l.splitn(6, ' ').collect();
            let at = match words[0] {
                "MSG" | "HIST" => 3,
                "OK" if words.get(1) == Some(&"SAY") => 3,
                _ => return l.clone(),
            };
            assert!(is_rfc3339_millis(words[at]), "{l}");
            words[at] = "<time>";
            words.join(" ")
        })
        .collect()
}

#[tokio::test]
async fn a_whole_session_piped_as_netcat_would() {
    let server = TestServer::start().await;
    let mut bob = server.login("bob").await;
    bob.join("4").await;
    bob.say("anyone here?").await;

    let input = b"NICK alice\r\njoin 4\nSAY hi bob\r\nPING 1\nWHO 4\nHISTORY 4 LIMIT 1\nQUIT done for today\nSAY never read\n";
    let transcript = without_times(pipe_through(server.addr, input).await);
    let greeting = &transcript[0];
    assert!(greeting.starts_with("HELLO linechat "), "{greeting}");
    assert!(
        greeting.contains("NICK <name>"),
        "tells a netcat user what to type: {greeting}"
    );
    assert_eq!(
        transcript[1..],
        [
            "OK NICK alice",
            "HIST 4 1 <time> bob anyone here?",
            "OK JOIN 4 1 1",
            "OK SAY 2 <time>",
            "PONG 1",
            "MEMBER 4 alice",
            "MEMBER 4 bob",
            "OK WHO 4 2",
            "HIST 4 2 <time> alice hi bob",
            "OK HISTORY 4 1",
            "BYE done for today",
        ]
    );
    bob.expect("JOINED 4 alice").await;
    let m = parse_message(&bob.line().await);
    assert_eq!(
        (m.id, m.nick.as_str(), m.text.as_str()),
        (2, "alice", "hi bob")
    );
    bob.expect("LEFT 4 alice").await;
    bob.expect_nothing_pending().await;

    // Input that simply ends: everything is answered, then BYE. A last line without LF counts.
    let transcript =
        without_times(pipe_through(server.addr, b"NICK carol\nJOIN 4 NONE\nSAY bye").await);
    assert_eq!(
        transcript[1..],
        [
            "OK NICK carol",
            "OK JOIN 4 0 2",
            "OK SAY 3 <time>",
            "BYE end of input"
        ]
    );
    server.stop().await.unwrap();
}

/// A member that stops reading is dropped with `BYE too slow`; everyone else in the room
/// keeps receiving every message.
#[tokio::test]
async fn a_slow_reader_never_stalls_the_room() {
    const CHUNKS: usize = 80;
    const PER_CHUNK: usize = 50;
    let config = Config {
        close_grace: Duration::from_secs(60),
        ..Config::default()
    };
    let server = TestServer::start_with(config).await;
    let mut talker = server.login("talker").await;
    talker.join("r").await;
    let mut reader = server.login("reader").await;
    reader.join("r").await;
    talker.expect("JOINED r reader").await;
    let mut slow = server.login("slow").await;
    slow.join("r").await;
    talker.expect("JOINED r slow").await;
    reader.expect("JOINED r slow").await;

    let payload = "p".repeat(3000);
    let mut received = 0;
    let mut saw_left = false;
    for chunk in 0..CHUNKS {
        let batch: String = (0..PER_CHUNK)
            .map(|i| format!("SAY {} {payload}\n", chunk * PER_CHUNK + i))
            .collect();
        talker.send_raw(batch.as_bytes()).await;
        for _ in 0..PER_CHUNK {
            let (skipped, _) = talker.until("OK SAY ").await;
            assert!(skipped.iter().all(|l| l == "LEFT r slow"), "{skipped:?}");
        }
        // The attentive reader gets every message, in order, while `slow` reads nothing.
        while received < (chunk + 1) * PER_CHUNK {
            let line = reader.line().await;
            if line == "LEFT r slow" {
                saw_left = true;
                continue;
            }
            let m = parse_message(&line);
            assert_eq!(m.text, format!("{received} {payload}"));
            received += 1;
        }
    }
    if !saw_left {
        reader.expect("LEFT r slow").await;
    }
    // The slow member finally reads: what it was sent, then the reason, then the close.
    let mut last = String::new();
    while let Some(line) = slow.try_line().await {
        last = line;
    }
    assert_eq!(last, "BYE too slow");
    reader.send("WHO r").await;
    reader.expect("MEMBER r reader").await;
    reader.expect("MEMBER r talker").await;
    reader.expect("OK WHO r 2").await;
    server.stop().await.unwrap();
}

#[tokio::test]
async fn shutdown_says_bye_to_everyone_after_answering_them() {
    let server = TestServer::start().await;
    let mut idle = server.client().await;
    let mut member = server.login("member").await;
    member.join("4").await;
    let mut talker = server.login("talker").await;
    talker.join("4").await;
    let batch: String = (0..200).map(|i| format!("SAY {i}\n")).collect();
    talker.send_raw(batch.as_bytes()).await;
    talker.expect_prefix("OK SAY 1 ").await;

    server.stop().await.unwrap();

    for c in [&mut idle, &mut member] {
        let mut rest = Vec::new();
        while let Some(line) = c.try_line().await {
            rest.push(line);
        }
        assert_eq!(
            rest.last().map(String::as_str),
            Some("BYE server shutting down"),
            "{rest:?}"
        );
    }
    // Every SAY the server answered before BYE is an OK, in order.
    let mut next = 2;
    let mut rest = Vec::new();
    while let Some(line) = talker.try_line().await {
        rest.push(line);
    }
    assert_eq!(rest.pop().as_deref(), Some("BYE server shutting down"));
    for line in rest
        .iter()
        .filter(|l| !l.starts_with("JOINED") && !l.starts_with("LEFT"))
    {
        assert!(line.starts_with(&format!("OK SAY {next} ")), "{line}");
        next += 1;
    }
}

/// Starts the real binary on a free port; returns it and its address.
fn start_binary() -> (std::process::Child, std::net::SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_linechat"))
        .args(["--listen", "127.0.0.1:0", "--store", "memory"])
        .env("LINECHAT_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = StdBufReader::new(stderr).lines();
    let addr = loop {
        let line = lines.next().expect("server logs").unwrap();
        if let Some(rest) = line.split("listening on ").nth(1) {
            break rest.split(';').next().unwrap().parse().unwrap();
        }
    };
    // Keep draining the log so the server never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    (child, addr)
}

async fn signal_exits_cleanly(signal: &str) {
    let (mut child, addr) = start_binary();
    let mut c = Client::connect(addr).await;
    c.send("NICK alice").await;
    c.expect("OK NICK alice").await;
    let status = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    c.expect("BYE server shutting down").await;
    assert_eq!(c.try_line().await, None);
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "exit status {status:?} after {signal}");
}

#[tokio::test]
async fn sigterm_exits_zero_after_bye() {
    signal_exits_cleanly("-TERM").await;
}

#[tokio::test]
async fn sigint_exits_zero_after_bye() {
    signal_exits_cleanly("-INT").await;
}
