//! linechat-client against a real server over real TCP: the scripted modes, the errors, the
//! interactive mode in a real terminal (tmux), and reconnecting with catch-up.

mod common;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use common::*;

#[tokio::test]
async fn piped_lines_are_said_and_the_client_exits_zero() {
    let addr = server().await;
    let mut listener = Peer::join(addr, "listener", "4").await;
    let out = client(addr, &["--nick", "bot", "--room", "4"], "1\n2\n\n3\n4\n5\n").await;
    assert!(out.status.success(), "{out:?}");
    let lines = stdout(&out);
    assert_eq!(lines.len(), 5, "{lines:?}");
    for (i, line) in lines.iter().enumerate() {
        assert!(line.ends_with(&format!("<bot> {}", i + 1)), "{line}");
    }
    for i in 1..=5 {
        assert_eq!(listener.next_text().await, i.to_string());
    }
    // A third sees them as history.
    let mut later = Peer::join(addr, "later", "4").await;
    later.send("HISTORY 4 LIMIT 5").await;
    let (hist, ok) = later.until("OK HISTORY").await;
    assert_eq!(ok, "OK HISTORY 4 5");
    assert!(hist
        .iter()
        .all(|l| l.starts_with("HIST 4 ") && l.contains(" bot ")));
}

/// A script may pipe more lines than the server's flood limit allows at once: the client
/// paces itself (by default within the server's default limit) and every line is said, in
/// order, with none refused.
#[tokio::test]
async fn piping_more_than_the_flood_limit_is_paced_not_refused() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = linechat::Config {
        rate: 20,
        burst: 40,
        ..memory_config()
    };
    let server = linechat::server::Server::start(config).await.unwrap();
    tokio::spawn(server.serve(listener, std::future::pending()));
    let input: String = (1..=70).map(|i| format!("line {i}\n")).collect();
    let out = client(addr, &["--nick", "bulk", "--room", "r"], &input).await;
    assert!(out.status.success(), "{out:?}");
    let lines = stdout(&out);
    assert_eq!(lines.len(), 70, "{lines:?}");
    for (i, line) in lines.iter().enumerate() {
        assert!(line.ends_with(&format!("<bulk> line {}", i + 1)), "{line}");
    }
}

#[tokio::test]
async fn json_output_and_a_refused_line_exit_non_zero() {
    let addr = server().await;
    let mut other = Peer::join(addr, "other", "r").await;
    let out = client(
        addr,
        &["--nick", "js", "--room", "r", "--format", "json"],
        "fine\nbell\u{7}\n",
    )
    .await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("refused: BAD_TEXT"), "{stderr}");
    let lines = stdout(&out);
    assert_eq!(lines.len(), 1, "{lines:?}");
    let v: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(
        (v["room"].as_str(), v["nick"].as_str(), v["text"].as_str()),
        (Some("r"), Some("js"), Some("fine"))
    );
    assert!(v["id"].as_u64().unwrap() > 0);
    assert_eq!(other.next_text().await, "fine");
}

#[tokio::test]
async fn history_prints_exactly_the_last_n_and_follow_prints_live() {
    let addr = server().await;
    let mut talker = Peer::join(addr, "talker", "h").await;
    for i in 0..30 {
        talker.send(&format!("SAY m{i}")).await;
        talker.until("OK SAY").await;
    }
    let out = client(addr, &["--room", "h", "--history", "7"], "").await;
    assert!(out.status.success(), "{out:?}");
    let lines = stdout(&out);
    let texts: Vec<&str> = lines
        .iter()
        .map(|l| l.rsplit(' ').next().unwrap())
        .collect();
    assert_eq!(texts, ["m23", "m24", "m25", "m26", "m27", "m28", "m29"]);

    let mut follow = tokio::process::Command::new(CLIENT)
        .args([
            "--server",
            &addr.to_string(),
            "--room",
            "h",
            "--follow",
            "--history",
            "2",
        ])
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut out = BufReader::new(follow.stdout.take().unwrap()).lines();
    let mut next = async || {
        let line = tokio::time::timeout(PATIENCE, out.next_line())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        line.rsplit(' ').next().unwrap().to_string()
    };
    assert_eq!(next().await, "m28");
    assert_eq!(next().await, "m29");
    talker.until("JOINED h").await;
    talker.send("SAY live one").await;
    assert_eq!(next().await, "one");
    follow.kill().await.unwrap();
}

#[tokio::test]
async fn wrong_address_and_name_in_use_give_one_clear_line() {
    let addr = server().await;
    // A port with nobody listening.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let out = client(closed, &["--nick", "x", "--room", "4"], "hi\n").await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("cannot connect to"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");

    let _taken = Peer::join(addr, "taken", "4").await;
    let out = client(addr, &["--nick", "taken", "--room", "4"], "hi\n").await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("taken is in use"), "{stderr}");
}

#[tokio::test]
async fn a_dropped_connection_reconnects_and_catches_up_without_duplicates() {
    let addr = server().await;
    let relay = Relay::start(addr).await;
    let mut talker = Peer::join(addr, "talker", "c").await;
    let (mut follow, mut out) = follow(relay.addr, "away", "c");
    talker.until("JOINED c away").await;
    let say = async |talker: &mut Peer, text: &str| {
        talker.send(&format!("SAY {text}")).await;
        talker.until("OK SAY").await;
    };
    say(&mut talker, "one").await;
    say(&mut talker, "two").await;
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let line = tokio::time::timeout(PATIENCE, out.next_line())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        seen.push(line.rsplit(' ').next().unwrap().to_string());
    }
    relay.cut();
    talker.until("LEFT c away").await;
    // Said while the client is away.
    say(&mut talker, "three").await;
    say(&mut talker, "four").await;
    relay.mend();
    talker.until("JOINED c away").await;
    say(&mut talker, "five").await;
    let deadline = Instant::now() + PATIENCE;
    while seen.len() < 5 && Instant::now() < deadline {
        let line = tokio::time::timeout(PATIENCE, out.next_line())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        seen.push(line.rsplit(' ').next().unwrap().to_string());
    }
    assert_eq!(seen, ["one", "two", "three", "four", "five"]);
    follow.kill().await.unwrap();
    let mut stderr = String::new();
    follow
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .await
        .unwrap();
    // What happened, and when it is back and caught up.
    assert!(
        stderr.contains("disconnected: the server closed the connection without a BYE"),
        "{stderr}"
    );
    assert!(stderr.contains("reconnected to "), "{stderr}");
    assert!(stderr.contains("caught up (2 missed messages)"), "{stderr}");
}

/// The interactive client in a real terminal (tmux): a typed line is said, and a message
/// that arrives while a line is half-typed is shown without garbling it.
#[tokio::test]
async fn interactive_in_a_terminal() {
    let addr = server().await;
    let mut other = Peer::join(addr, "other", "4").await;
    let session = format!("linechat-test-{}", std::process::id());
    // A tmux server of its own (others may use the default one), kept up by a session of
    // its own: a server whose last session ends exits, and a `new-session` in that moment
    // fails ("server exited unexpectedly").
    let socket = format!("linechat-interactive-{}", std::process::id());
    let tmux = |args: &[&str]| {
        Command::new("tmux")
            .args(["-L", &socket])
            .args(args)
            .output()
            .expect("tmux is installed")
    };
    tmux(&["new-session", "-d", "-s", "keep", "sleep 3600"]);
    let state = state_file("interactive");
    let start = tmux(&[
        "new-session",
        "-d",
        "-s",
        &session,
        "-x",
        "120",
        "-y",
        "30",
        &format!(
            "NO_COLOR=1 LINECHAT_CLIENT_STATE={} {CLIENT} --server {addr}",
            state.display()
        ),
    ]);
    assert!(start.status.success(), "{start:?}");
    let screen = |session: &str| {
        String::from_utf8_lossy(&tmux(&["capture-pane", "-p", "-t", session]).stdout).to_string()
    };
    let wait_for = async |what: &str| {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let s = screen(&session);
            if s.contains(what) {
                return s;
            }
            assert!(Instant::now() < deadline, "never saw {what:?} on:\n{s}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    // It asks for a name and a room, like the old client.
    wait_for("Your name:").await;
    tmux(&["send-keys", "-t", &session, "alice", "Enter"]);
    wait_for("Room to join").await;
    tmux(&["send-keys", "-t", &session, "4", "Enter"]);
    wait_for("[4]").await;
    other.until("JOINED 4 alice").await;

    tmux(&[
        "send-keys",
        "-t",
        &session,
        "hello from a terminal",
        "Enter",
    ]);
    assert_eq!(other.next_text().await, "hello from a terminal");

    // Half a line typed, then a message arrives.
    tmux(&["send-keys", "-t", &session, "half"]);
    wait_for("[4] half").await;
    other.send("SAY incoming while typing").await;
    let s = wait_for("<other> incoming while typing").await;
    let last = s.lines().rev().find(|l| !l.trim().is_empty()).unwrap();
    assert_eq!(
        last.trim_end(),
        "[4] half",
        "the half-typed line is intact:\n{s}"
    );
    tmux(&["send-keys", "-t", &session, " done", "Enter"]);
    assert_eq!(other.next_text().await, "half done");

    tmux(&["send-keys", "-t", &session, "/who", "Enter"]);
    wait_for("* in 4: alice, other").await;
    tmux(&["send-keys", "-t", &session, "/quit", "Enter"]);
    other.until("LEFT 4 alice").await;
    tmux(&["kill-session", "-t", &session]);

    // Said while alice is away; the next start shows them first, marked as such.
    other.send("SAY while you were out").await;
    other.until("OK SAY").await;
    other.send("SAY and this too").await;
    other.until("OK SAY").await;
    let start = tmux(&[
        "new-session",
        "-d",
        "-s",
        &session,
        "-x",
        "120",
        "-y",
        "30",
        &format!(
            "NO_COLOR=1 LINECHAT_CLIENT_STATE={} {CLIENT} --server {addr} --nick alice --room 4",
            state.display()
        ),
    ]);
    assert!(start.status.success(), "{start:?}");
    let s = wait_for("2 new messages; now live").await;
    let away = s.find("while you were away").expect("marked");
    let first = s.find("<other> while you were out").expect("shown");
    let second = s.find("<other> and this too").expect("shown");
    let live = s.find("2 new messages; now live").unwrap();
    assert!(away < first && first < second && second < live, "{s}");
    assert!(
        !s.contains("half done"),
        "nothing seen before is shown again:\n{s}"
    );
    tmux(&["send-keys", "-t", &session, "/quit", "Enter"]);
    other.until("LEFT 4 alice").await;
    tmux(&["kill-server"]);
    let _ = std::fs::remove_file(state);
}

/// A room that was empty when the client joined: what is said while it is away still comes.
#[tokio::test]
async fn catch_up_in_a_room_that_was_empty() {
    let addr = server().await;
    let relay = Relay::start(addr).await;
    let mut talker = Peer::join(addr, "talker", "empty").await;
    let (mut follow, mut out) = follow(relay.addr, "quiet", "empty");
    talker.until("JOINED empty quiet").await;
    // The client has its OK JOIN before the line is cut.
    relay.relayed("OK JOIN empty").await;
    relay.cut();
    talker.until("LEFT empty quiet").await;
    talker.send("SAY said while away").await;
    talker.until("OK SAY").await;
    relay.mend();
    let line = tokio::time::timeout(PATIENCE, out.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(line.ends_with("<talker> said while away"), "{line}");
    follow.kill().await.unwrap();
}

/// A `--follow` whose output nobody reads for a while holds little memory: the client stops
/// reading the socket, the server lets it lag, and once its output is read it prints every
/// message, in order, from the server's catch-up.
#[tokio::test]
async fn follow_with_unread_output_stays_small_and_misses_nothing() {
    const TOTAL: usize = 8000;
    let addr = server().await;
    let mut talker = Peer::join(addr, "talker", "r").await;
    // Its output is not read until the end.
    let (follower, mut out) = follow(addr, "f", "r");
    talker.until("JOINED r f").await;
    // 24 MB said while the follower's output is not read.
    let payload = "p".repeat(3000);
    for chunk in (0..TOTAL).collect::<Vec<_>>().chunks(100) {
        let lines: String = chunk
            .iter()
            .map(|i| format!("SAY {i} {payload}\n"))
            .collect();
        talker.write.write_all(lines.as_bytes()).await.unwrap();
        for _ in chunk {
            talker.until("OK SAY ").await;
        }
    }
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", follower.id().unwrap())).unwrap();
    let rss_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    assert!(rss_kib < 24 * 1024, "the follower holds {rss_kib} KiB");

    for i in 0..TOTAL {
        let line = tokio::time::timeout(PATIENCE, out.next_line())
            .await
            .expect("a line")
            .unwrap()
            .expect("not the end");
        assert!(
            line.ends_with(&format!("<talker> {i} {payload}")),
            "{line:.60}"
        );
    }
}

/// The epoch a server's `HELLO` names (`epoch=<hex>` after the version).
async fn server_epoch(addr: SocketAddr) -> String {
    let stream = TcpStream::connect(addr).await.unwrap();
    let hello = BufReader::new(stream)
        .lines()
        .next_line()
        .await
        .unwrap()
        .unwrap();
    let word = hello.split(' ').nth(3).unwrap_or_default();
    word.strip_prefix("epoch=")
        .unwrap_or_else(|| panic!("no epoch in {hello:?}"))
        .to_string()
}

/// A saved resume point is used (`JOIN ... SINCE`) only under the history epoch it was saved
/// with: from another history (a memory-store server that restarted), its id means nothing,
/// so the client says so in one line and joins with the default replay.
#[tokio::test]
async fn a_resume_point_from_another_history_is_not_used() {
    let addr = server().await;
    let mut other = Peer::join(addr, "other", "4").await;
    for text in ["one", "two", "three"] {
        other.send(&format!("SAY {text}")).await;
        other.until("OK SAY").await;
    }
    let epoch = server_epoch(addr).await;
    // A tmux server of its own: two tests starting the shared one at once can race. Kept up
    // by a session of its own (see `interactive_in_a_terminal`).
    let socket = format!("linechat-epoch-{}", std::process::id());
    let tmux = |args: &[&str]| {
        Command::new("tmux")
            .args(["-L", &socket])
            .args(args)
            .output()
            .expect("tmux is installed")
    };
    tmux(&["new-session", "-d", "-s", "keep", "sleep 3600"]);
    let state = state_file("epoch");
    for (saved_epoch, same) in [(epoch.clone(), true), (format!("not-{epoch}"), false)] {
        // Saved after message 2 ("two") of the history named `saved_epoch`.
        let saved = format!(r#"{{"{addr} alice 4": {{"id": 2, "epoch": "{saved_epoch}"}}}}"#);
        std::fs::write(&state, saved).unwrap();
        let session = format!("linechat-epoch-{}-{same}", std::process::id());
        let start = tmux(&[
            "new-session",
            "-d",
            "-s",
            &session,
            "-x",
            "200",
            "-y",
            "30",
            &format!(
                "NO_COLOR=1 LINECHAT_CLIENT_STATE={} {CLIENT} --server {addr} --nick alice --room 4",
                state.display()
            ),
        ]);
        assert!(start.status.success(), "{start:?}");
        let screen = || {
            String::from_utf8_lossy(&tmux(&["capture-pane", "-p", "-t", &session]).stdout)
                .to_string()
        };
        let deadline = Instant::now() + PATIENCE;
        let s = loop {
            let s = screen();
            if s.contains("<other> three") {
                break s;
            }
            assert!(Instant::now() < deadline, "never saw the replay on:\n{s}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        if same {
            // SINCE 2: only what came after, marked as such.
            assert!(s.contains("while you were away (after #2)"), "{s}");
            assert!(!s.contains("<other> one"), "{s}");
        } else {
            assert!(
                s.contains("* 4: the server's history is not the one you last saw"),
                "{s}"
            );
            assert!(!s.contains("while you were away"), "{s}");
            assert!(
                s.contains("<other> one") && s.contains("<other> two"),
                "{s}"
            );
        }
        tmux(&["send-keys", "-t", &session, "/quit", "Enter"]);
        other.until("LEFT 4 alice").await;
        tmux(&["kill-session", "-t", &session]);
    }
    tmux(&["kill-server"]);
    // The file now holds the server's epoch with what was shown.
    let saved = std::fs::read_to_string(&state).unwrap();
    assert!(saved.contains(&format!(r#""epoch": "{epoch}""#)), "{saved}");
    let _ = std::fs::remove_file(state);
}
