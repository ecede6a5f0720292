//! Test helpers: an in-process server on port 0 and a line-oriented client over real TCP.
#![allow(dead_code)]

pub mod accounts;
pub mod binary;
pub mod logs;
pub mod nodes;
pub mod pg;
pub mod tls;
pub mod web;
pub mod web_server;

use std::net::SocketAddr;
use std::time::Duration;

use linechat::Config;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Guards against hangs only; no test asserts on time.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// The configuration every test starts from: the memory store and no flood limit (tests
/// pipeline thousands of lines). Spelled out rather than taken from `Config::default()`, which
/// is meant to follow the server binary's defaults (PostgreSQL, `--rate 20`): a test sets the
/// store and the limits it is about itself, on top of this.
pub fn memory_config() -> Config {
    Config {
        store: linechat::StoreKind::Memory,
        rate: 0,
        ..Config::default()
    }
}

pub struct TestServer {
    pub addr: SocketAddr,
    /// The HTTP listener (page, /ws, /healthz, /metrics), for servers started with one.
    pub http_addr: Option<SocketAddr>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl TestServer {
    pub async fn start() -> TestServer {
        TestServer::start_with(memory_config()).await
    }

    pub async fn start_with(config: Config) -> TestServer {
        TestServer::start_listening(config, false).await
    }

    /// A server with an HTTP listener too (`http_addr`): the page, `/ws`, `/healthz`.
    pub async fn start_web_with(config: Config) -> TestServer {
        TestServer::start_listening(config, true).await
    }

    async fn start_listening(config: Config, web: bool) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let http = if web {
            Some(linechat::http::HttpListener {
                listener: TcpListener::bind("127.0.0.1:0").await.unwrap(),
                certificates: None,
            })
        } else {
            None
        };
        let http_addr = http.as_ref().map(|h| h.listener.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let server = linechat::server::Server::start(config)
            .await
            .expect("server starts");
        let listeners = linechat::server::Listeners {
            plain: Some(listener),
            tls: None,
            http,
        };
        let task = tokio::spawn(server.serve(listeners, async {
            let _ = stopped.await;
        }));
        TestServer {
            addr,
            http_addr,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Runs a graceful shutdown and waits for the server to return.
    pub async fn stop(mut self) -> Result<(), tokio::task::JoinError> {
        let _ = self.stop.take().unwrap().send(());
        let task = self.task.take().unwrap();
        tokio::time::timeout(PATIENCE, task)
            .await
            .expect("server stops")
    }

    pub async fn client(&self) -> Client {
        Client::connect(self.addr).await
    }

    /// A client that has chosen `nick`.
    pub async fn login(&self, nick: &str) -> Client {
        Client::login(self.addr, nick).await
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

pub struct Client {
    lines: Lines<BufReader<OwnedReadHalf>>,
    writer: OwnedWriteHalf,
}

impl Client {
    /// Connects and reads the greeting.
    pub async fn connect(addr: SocketAddr) -> Client {
        Client::from_stream(TcpStream::connect(addr).await.unwrap()).await
    }

    /// Connects with a small receive buffer (64 KiB), so that the kernel cannot hold much
    /// of what the server sends while the test reads nothing; reads the greeting.
    pub async fn connect_small(addr: SocketAddr) -> Client {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(64 * 1024).unwrap();
        let stream = socket.connect(addr).await.unwrap();
        Client::from_stream(stream).await
    }

    /// A client on a connected stream; reads the greeting.
    pub async fn from_stream(stream: TcpStream) -> Client {
        let (r, w) = stream.into_split();
        let mut c = Client {
            lines: BufReader::new(r).lines(),
            writer: w,
        };
        let hello = c.line().await;
        assert!(hello.starts_with("HELLO "), "greeting: {hello}");
        c
    }

    /// Connects and chooses `nick`.
    pub async fn login(addr: SocketAddr, nick: &str) -> Client {
        let mut c = Client::connect(addr).await;
        c.send(&format!("NICK {nick}")).await;
        c.expect(&format!("OK NICK {nick}")).await;
        c
    }

    pub async fn send(&mut self, line: &str) {
        self.send_raw(format!("{line}\n").as_bytes()).await;
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).await.unwrap();
    }

    /// The next line; panics at end of stream.
    pub async fn line(&mut self) -> String {
        match self.try_line().await {
            Some(line) => line,
            None => panic!("connection closed while a line was expected"),
        }
    }

    /// The next line, or `None` at end of stream.
    pub async fn try_line(&mut self) -> Option<String> {
        tokio::time::timeout(PATIENCE, self.lines.next_line())
            .await
            .expect("a line within the patience window")
            .expect("read")
    }

    /// Reads to the end of the stream; checks that the last line is `last` (a `BYE`) and
    /// returns the lines before it.
    pub async fn until_closed_after(&mut self, last: &str) -> Vec<String> {
        let mut lines = Vec::new();
        while let Some(line) = self.try_line().await {
            lines.push(line);
        }
        assert_eq!(lines.pop().as_deref(), Some(last), "{lines:?}");
        lines
    }

    /// The next line, which must be a reply (`OK ...` or `ERR ...`): for a command whose
    /// answer is awaited while nothing else (room traffic, presence) can arrive.
    pub async fn reply(&mut self) -> String {
        let line = self.line().await;
        assert!(
            line.starts_with("OK ") || line.starts_with("ERR "),
            "wanted a reply, got {line:?}"
        );
        line
    }

    /// Reads one line and checks it equals `want`.
    pub async fn expect(&mut self, want: &str) {
        let got = self.line().await;
        assert_eq!(got, want);
    }

    /// Reads one line and checks it starts with `prefix`; returns it.
    pub async fn expect_prefix(&mut self, prefix: &str) -> String {
        let got = self.line().await;
        assert!(got.starts_with(prefix), "wanted {prefix:?}..., got {got:?}");
        got
    }

    /// Reads one line and checks it is `ERR <code> ...`.
    pub async fn expect_err(&mut self, code: &str) -> String {
        self.expect_prefix(&format!("ERR {code} ")).await
    }

    /// Asks `WHO <room>` until it lists exactly `names` (in `WHO`'s order): another server's
    /// presence may trail it by a few milliseconds (PROTOCOL.md), so a test waits for this
    /// server to know of them before a member here joins. Panics after [`PATIENCE`].
    pub async fn until_members(&mut self, room: &str, names: &[&str]) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        let prefix = format!("MEMBER {room} ");
        loop {
            self.send(&format!("WHO {room}")).await;
            let (lines, _) = self.until("OK WHO ").await;
            let listed: Vec<&str> = lines
                .iter()
                .map(|l| l.strip_prefix(&prefix).unwrap_or(l))
                .collect();
            if listed == names {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "WHO {room} never listed {names:?}: {listed:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Asks `ROOMS` until its lines are exactly `listed`, for the same reason as
    /// [`Client::until_members`]: a room joined on another server may reach this one's list a
    /// few milliseconds later. Panics after [`PATIENCE`].
    pub async fn until_rooms(&mut self, listed: &[&str]) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            self.send("ROOMS").await;
            let (lines, _) = self.until("OK ROOMS ").await;
            if lines == listed {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "ROOMS never listed {listed:?}: {lines:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends PING and checks that PONG is the very next line: proves nothing else was queued.
    pub async fn expect_nothing_pending(&mut self) {
        self.send("PING sync").await;
        self.expect("PONG sync").await;
    }

    /// Reads lines up to and including one starting with `prefix`; returns those before it
    /// and the matching line.
    pub async fn until(&mut self, prefix: &str) -> (Vec<String>, String) {
        let mut before = Vec::new();
        loop {
            let line = self.line().await;
            if line.starts_with(prefix) {
                return (before, line);
            }
            before.push(line);
        }
    }

    /// Joins a room with optional replay bounds; returns the replayed `HIST` lines.
    pub async fn join(&mut self, room_and_bounds: &str) -> Vec<String> {
        self.send(&format!("JOIN {room_and_bounds}")).await;
        let (hist, ok) = self.until("OK JOIN ").await;
        assert!(hist.iter().all(|l| l.starts_with("HIST ")), "{hist:?}");
        let _ = ok;
        hist
    }

    /// Says `text` and returns the acknowledged id (skipping presence and live lines).
    pub async fn say(&mut self, text: &str) -> u64 {
        self.send(&format!("SAY {text}")).await;
        let (skipped, ok) = self.until("OK SAY ").await;
        assert!(
            skipped.iter().all(|l| !l.starts_with("ERR ")),
            "{skipped:?}"
        );
        ok.split(' ').nth(2).unwrap().parse().unwrap()
    }
}

/// A parsed `MSG` or `HIST` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub kind: String,
    pub room: String,
    pub id: u64,
    pub time: String,
    pub nick: String,
    pub text: String,
}

pub fn parse_message(line: &str) -> Message {
    let mut parts = line.splitn(6, ' ');
    let mut next = || {
        parts
            .next()
            .unwrap_or_else(|| panic!("short line {line:?}"))
    };
    let kind = next().to_string();
    assert!(kind == "MSG" || kind == "HIST", "not a message: {line:?}");
    Message {
        kind,
        room: next().to_string(),
        id: next().parse().unwrap(),
        time: next().to_string(),
        nick: next().to_string(),
        text: next().to_string(),
    }
}

/// Checks RFC 3339 UTC with milliseconds: `2026-11-24T08:00:00.123Z`.
pub fn is_rfc3339_millis(t: &str) -> bool {
    let b = t.as_bytes();
    b.len() == 24
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            10 => *c == b'T',
            13 | 16 => *c == b':',
            19 => *c == b'.',
            23 => *c == b'Z',
            _ => c.is_ascii_digit(),
        })
}

/// Several members join a room while a talker keeps it busy, each with a different replay
/// bound. Each must see the room's messages exactly once: `HIST` up to the id in `OK JOIN`,
/// then `MSG` for every later message, with no gap and no duplicate.
pub async fn check_replay_seam(server: &TestServer) {
    const TOTAL: usize = 3000;
    let mut talker = server.login("talker").await;
    talker.join("busy").await;
    let (progress_tx, mut progress) = tokio::sync::watch::channel(0usize);
    let talking = tokio::spawn(async move {
        let mut acked: Vec<u64> = Vec::with_capacity(TOTAL);
        // Pipelined chunks: the room stays busy while the joiners come in.
        for chunk in (0..TOTAL).collect::<Vec<_>>().chunks(50) {
            let batch: String = chunk.iter().map(|i| format!("SAY m{i}\n")).collect();
            talker.send_raw(batch.as_bytes()).await;
            for _ in chunk {
                let (_, ok) = talker.until("OK SAY ").await;
                let id: u64 = ok.split(' ').nth(2).unwrap().parse().unwrap();
                assert!(acked.last().is_none_or(|&last| id > last), "{ok}");
                acked.push(id);
            }
            let _ = progress_tx.send(acked.len());
        }
        (talker, acked)
    });

    let mut joiners = Vec::new();
    for (n, bound) in ["", "SINCE 0", "LAST 7", "", "SINCE 0", "NONE"]
        .iter()
        .enumerate()
    {
        let threshold = TOTAL * n / 8;
        progress.wait_for(|&p| p >= threshold).await.unwrap();
        let mut c = server.login(&format!("j{n}")).await;
        c.send(&format!("JOIN busy {bound}")).await;
        joiners.push((c, *bound));
    }
    let (mut talker, acked) = talking.await.unwrap();
    let text_of = |id: u64| format!("m{}", acked.iter().position(|&a| a == id).unwrap());
    let mut mid_flow = 0;
    for (c, bound) in &mut joiners {
        let (hist, ok) = c.until("OK JOIN busy").await;
        let floor: u64 = ok.rsplit(' ').next().unwrap().parse().unwrap();
        // Where the floor sits among the acked ids: everything up to it came before the join.
        let caught_up = acked.iter().take_while(|&&id| id <= floor).count();
        if 0 < caught_up && caught_up < TOTAL {
            mid_flow += 1;
        }
        let replayed: Vec<u64> = hist.iter().map(|l| parse_message(l).id).collect();
        for line in &hist {
            let m = parse_message(line);
            assert_eq!(m.text, text_of(m.id));
        }
        let expected_from = match *bound {
            "SINCE 0" => 0,
            "" => caught_up.saturating_sub(50),
            "LAST 7" => caught_up.saturating_sub(7),
            _ => caught_up,
        };
        assert_eq!(
            replayed,
            acked[expected_from..caught_up],
            "JOIN {bound}: replay"
        );
        let mut live = Vec::new();
        while live.len() < TOTAL - caught_up {
            let line = c.line().await;
            if line.starts_with("MSG ") {
                let m = parse_message(&line);
                assert_eq!(m.text, text_of(m.id));
                live.push(m.id);
            }
        }
        assert_eq!(
            live,
            acked[caught_up..],
            "JOIN {bound}: live continues the replay"
        );
        c.expect_nothing_pending().await;
    }
    assert!(
        mid_flow > 0,
        "at least one member joined while the room was busy"
    );
    talker.expect_nothing_pending().await;
}

/// Sends the numbered messages `<i> <payload>` for every `i` in `numbers` from `talker`, in
/// pipelined chunks, waiting for the acks of each chunk. Returns the acked ids in order.
pub async fn talk_in_chunks(
    talker: &mut Client,
    numbers: std::ops::Range<usize>,
    payload: &str,
) -> Vec<u64> {
    const PER_CHUNK: usize = 50;
    let mut acked = Vec::with_capacity(numbers.len());
    let mut sent = numbers.start;
    while sent < numbers.end {
        let n = PER_CHUNK.min(numbers.end - sent);
        let batch: String = (sent..sent + n)
            .map(|i| format!("SAY {i} {payload}\n"))
            .collect();
        talker.send_raw(batch.as_bytes()).await;
        for _ in 0..n {
            let (_, ok) = talker.until("OK SAY ").await;
            acked.push(ok.split(' ').nth(2).unwrap().parse().unwrap());
        }
        sent += n;
    }
    acked
}

/// Reads the texts of the next `count` messages from `nick` in `room`, checking they come in
/// id order with no duplicate. Messages from others are skipped; `LAGGED` lines are allowed
/// (a member that reads slower than a burst arrives lags, and loses nothing).
pub async fn read_room(client: &mut Client, room: &str, nick: &str, count: usize) -> Vec<String> {
    let mut texts = Vec::with_capacity(count);
    let mut last = 0;
    while texts.len() < count {
        let line = client.line().await;
        if line.starts_with(&format!("LAGGED {room} ")) {
            continue;
        }
        let m = parse_message(&line);
        assert_eq!(
            (m.kind.as_str(), m.room.as_str()),
            ("MSG", room),
            "{line:.60}"
        );
        assert!(m.id > last, "in id order, no duplicate: {line:.60}");
        last = m.id;
        if m.nick == nick {
            texts.push(m.text);
        }
    }
    texts
}

/// A member stops reading while its room is busy. The others receive every message, in
/// order, while it lags; then it reads again and receives every message too, exactly once and
/// in order, with a `LAGGED` line where the live feed broke off and the gap replayed from the
/// store; it is never dropped and never shown its own message. Needs an outbound limit well
/// below the ~12 MB the talker sends.
pub async fn check_lag_and_replay(server: &TestServer) {
    const TOTAL: usize = 4000;
    let payload = "p".repeat(3000);
    let mut talker = server.login("talker").await;
    talker.join("r").await;
    let mut reader = server.login("reader").await;
    reader.join("r").await;
    talker.expect("JOINED r reader").await;
    let mut slow = server.login("slow").await;
    slow.send("JOIN r").await;
    talker.expect("JOINED r slow").await;
    reader.expect("JOINED r slow").await;
    // Its join is answered before the talk (the others hear of it as it enters the room,
    // before it has read the room's history: a fast store could store the first messages
    // in between, and they would come as history). From here on it reads nothing until the
    // talk is over.
    let (hist, ok) = slow.until("OK JOIN r ").await;
    assert!(hist.is_empty(), "{hist:?}");
    let mut last_shown: u64 = ok.rsplit(' ').next().unwrap().parse().unwrap();

    // The attentive reader runs on its own, checking every message as it comes.
    let text_of = move |i: usize| format!("{i} {}", "p".repeat(3000));
    let reading = tokio::spawn(async move {
        let texts: Vec<String> = read_room(&mut reader, "r", "talker", TOTAL).await;
        for (i, text) in texts.iter().enumerate() {
            assert_eq!(*text, text_of(i));
        }
        reader
    });
    let mut acked = talk_in_chunks(&mut talker, 0..TOTAL / 2, &payload).await;
    // `slow` speaks up while behind (its line is read whenever the server gets to it).
    slow.send("SAY from the back row").await;
    acked.extend(talk_in_chunks(&mut talker, TOTAL / 2..TOTAL, &payload).await);
    let mut reader = reading.await.unwrap();

    // Now `slow` reads: every message exactly once, in order.
    let (mut got, mut lagged, mut own_acks) = (Vec::new(), 0, 0);
    while got.len() < TOTAL || own_acks == 0 {
        let line = slow.line().await;
        if let Some(rest) = line.strip_prefix("LAGGED r ") {
            let after: u64 = rest.split(' ').next().unwrap().parse().unwrap();
            assert_eq!(after, last_shown, "LAGGED names the last id delivered");
            lagged += 1;
        } else if line.starts_with("OK SAY ") {
            own_acks += 1;
        } else {
            let m = parse_message(&line);
            assert_eq!(m.kind, "MSG", "{line:.60}");
            assert_eq!(m.nick, "talker", "never shown its own message");
            assert!(m.id > last_shown, "in order, no duplicate: {line:.60}");
            assert_eq!(m.text, text_of(got.len()), "no gap");
            last_shown = m.id;
            got.push(m.id);
        }
    }
    assert_eq!(got, acked);
    assert!(lagged > 0, "the slow member lagged (and was told)");
    assert_eq!(own_acks, 1);
    slow.expect_nothing_pending().await;
    // Still a member, and the room still works for it.
    talker.say("still here?").await;
    let m = parse_message(&slow.line().await);
    assert_eq!(m.text, "still here?");
    reader.send("WHO r").await;
    let (members, ok) = reader.until("OK WHO r").await;
    assert_eq!(ok, "OK WHO r 3", "{members:?}");
}
