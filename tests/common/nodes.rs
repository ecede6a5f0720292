//! Several `linechat` processes on one PostgreSQL, and room members that keep a record of
//! everything they were shown and every answer to their `SAY`s, surviving the death of their
//! node by resuming on another one (tests/nodes.rs).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Instant;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

use super::binary::{linechat, Binary};
use super::{parse_message, PATIENCE};

/// Server processes sharing one database.
pub struct Nodes {
    nodes: Vec<Binary>,
    /// Which nodes were killed.
    killed: Vec<bool>,
}

impl Nodes {
    /// `n` server processes on database `url`, each with `extra` flags too, started side by
    /// side (each waits for its database connection before it listens). Started as root
    /// (the tests run as root), each becomes `postgres`, who can reach the test cluster's
    /// socket (the default, `nobody`, cannot).
    pub fn start(n: usize, url: &str, extra: &[&str]) -> Nodes {
        let starting: Vec<_> = (0..n)
            .map(|_| {
                let (url, extra) = (url.to_owned(), extra.iter().map(|a| a.to_string()));
                let extra: Vec<String> = extra.collect();
                std::thread::spawn(move || {
                    Binary::start(
                        linechat()
                            .args(["--store", "postgres", "--database-url", &url])
                            .args(["--listen", "127.0.0.1:0", "--http-listen", "off"])
                            .args(["--rate", "0", "--user", "postgres"])
                            .args(extra)
                            .env_remove("DATABASE_URL")
                            .env_remove("LINECHAT_USER"),
                    )
                })
            })
            .collect();
        Nodes {
            nodes: starting.into_iter().map(|s| s.join().unwrap()).collect(),
            killed: vec![false; n],
        }
    }

    pub fn addr(&self, i: usize) -> SocketAddr {
        self.nodes[i].addr
    }

    pub fn node(&mut self, i: usize) -> &mut Binary {
        &mut self.nodes[i]
    }

    /// Waits (within [`PATIENCE`]) until node `i` has logged a line containing `needle`
    /// `times` times.
    pub async fn wait_for_log_times(&self, i: usize, needle: &str, times: usize) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let log = self.nodes[i].log();
            if log.iter().filter(|l| l.contains(needle)).count() >= times {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "node {i} did not log {needle:?} {times} times: {log:#?}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL to node `i`, and waits for it to be gone.
    pub async fn kill(&mut self, i: usize) {
        self.nodes[i].signal("-KILL");
        self.killed[i] = true;
        let status = tokio::time::timeout(PATIENCE, self.nodes[i].wait())
            .await
            .expect("a killed node exits");
        assert!(!status.success());
    }

    /// SIGTERM to every node still running; each must exit 0.
    pub async fn stop(mut self) {
        for (node, killed) in self.nodes.iter_mut().zip(self.killed) {
            if !killed {
                node.signal("-TERM");
                let status = tokio::time::timeout(PATIENCE, node.wait())
                    .await
                    .expect("a node stops on SIGTERM");
                assert!(status.success(), "{status:?}");
            }
        }
    }
}

/// A client connection whose end (a close, or a reset when its node is killed) is an
/// answer, not a failure.
pub struct Peer {
    lines: Lines<BufReader<OwnedReadHalf>>,
    writer: OwnedWriteHalf,
}

impl Peer {
    /// Connects and reads the greeting.
    pub async fn connect(addr: SocketAddr) -> Peer {
        let (r, w) = TcpStream::connect(addr).await.unwrap().into_split();
        let mut peer = Peer {
            lines: BufReader::new(r).lines(),
            writer: w,
        };
        let hello = peer.line().await.expect("a greeting");
        assert!(hello.starts_with("HELLO "), "{hello}");
        peer
    }

    /// Sends `text` (whole lines); false if the connection is gone.
    pub async fn send(&mut self, text: &str) -> bool {
        self.writer.write_all(text.as_bytes()).await.is_ok()
    }

    /// The next line; `None` once the connection is gone. Panics after [`PATIENCE`].
    pub async fn line(&mut self) -> Option<String> {
        tokio::time::timeout(PATIENCE, self.lines.next_line())
            .await
            .expect("a line within the patience window")
            .ok()
            .flatten()
    }
}

/// How a `SAY` was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Stored(u64),
    /// `ERR STORE_UNAVAILABLE`: not stored, ever.
    Refused,
    /// `ERR OUTCOME_UNKNOWN`: stored or not.
    Unknown,
    /// No answer: the connection died first.
    Lost,
}

/// A member of one room, with a record of what it was shown and what its `SAY`s got.
pub struct Member {
    pub nick: String,
    pub room: String,
    peer: Peer,
    /// Ids of the room's messages shown to it (`MSG`, `HIST`), in the order they came, over
    /// every connection it had.
    pub shown: Vec<u64>,
    /// Ids in the order they came, its own acknowledged ones (`OK SAY`) among the others.
    pub stream: Vec<u64>,
    /// Every `SAY` it sent, with its text, and its answer.
    pub said: Vec<(String, Answer)>,
    /// `SAY` texts sent and not answered yet, oldest first.
    pending: VecDeque<String>,
    /// `LAGGED` lines received.
    pub lagged: usize,
    /// Connections it needed: 1 unless it resumed elsewhere.
    pub connections: usize,
    /// For each resume: the `SINCE` id, and the last ids it had seen before it (its own
    /// acknowledged ones included), to tell a failure's story.
    pub resumes: Vec<(u64, Vec<u64>)>,
    /// `LEFT` lines of its room: who left, and when it was told.
    pub left: Vec<(String, Instant)>,
}

impl Member {
    /// A member of `room` on the node at `addr`, named `nick`, joined with `bound` (`NONE`,
    /// `SINCE 0`, ...).
    pub async fn join(addr: SocketAddr, nick: &str, room: &str, bound: &str) -> Member {
        let mut m = Member {
            nick: nick.to_owned(),
            room: room.to_owned(),
            peer: Peer::connect(addr).await,
            shown: Vec::new(),
            stream: Vec::new(),
            said: Vec::new(),
            pending: VecDeque::new(),
            lagged: 0,
            connections: 1,
            resumes: Vec::new(),
            left: Vec::new(),
        };
        m.login_and_join(bound).await;
        m
    }

    /// The largest id it was shown (0 if none).
    pub fn last_shown(&self) -> u64 {
        self.shown.last().copied().unwrap_or(0)
    }

    /// The ids its `SAY`s were acknowledged with.
    pub fn acked(&self) -> Vec<u64> {
        self.said
            .iter()
            .filter_map(|(_, a)| match a {
                Answer::Stored(id) => Some(*id),
                _ => None,
            })
            .collect()
    }

    /// Chooses its name (another one if that is taken: a dead node's names stay held until
    /// its node timeout) and joins its room with `bound`; panics on any other refusal.
    async fn login_and_join(&mut self, bound: &str) {
        for attempt in 0.. {
            let nick = if attempt == 0 {
                self.nick.clone()
            } else {
                format!("{}_{attempt}", self.nick)
            };
            assert!(self.peer.send(&format!("NICK {nick}\n")).await);
            let reply = self.peer.line().await.expect("a reply to NICK");
            if reply == format!("OK NICK {nick}") {
                self.nick = nick;
                break;
            }
            assert!(reply.starts_with("ERR NICK_IN_USE "), "{reply}");
        }
        let join = format!("{}\n", format!("JOIN {} {bound}", self.room).trim_end());
        assert!(self.peer.send(&join).await);
        loop {
            let line = self.peer.line().await.expect("the JOIN's answer");
            if line.starts_with(&format!("OK JOIN {} ", self.room)) {
                return;
            }
            assert!(!line.starts_with("ERR "), "{join}: {line}");
            self.take(&line);
        }
    }

    /// Connects to the node at `addr` instead (after its own died) and resumes as
    /// PROTOCOL.md says, with `JOIN <room> SINCE <the largest id seen>` (its own acknowledged
    /// ones included: they are never shown again); `SAY`s still unanswered are lost.
    pub async fn resume(&mut self, addr: SocketAddr) {
        while let Some(text) = self.pending.pop_front() {
            self.said.push((text, Answer::Lost));
        }
        self.peer = Peer::connect(addr).await;
        self.connections += 1;
        let seen = self.stream.iter().max().copied().unwrap_or(0);
        let tail = self.stream[self.stream.len().saturating_sub(50)..].to_vec();
        self.resumes.push((seen, tail));
        let since = format!("SINCE {seen}");
        self.login_and_join(&since).await;
    }

    /// Records one line; panics on anything a member of these tests should never get.
    fn take(&mut self, line: &str) {
        let mut words = line.split(' ');
        match (words.next(), words.next()) {
            (Some("MSG" | "HIST"), Some(room)) if room == self.room => {
                let id = parse_message(line).id;
                self.shown.push(id);
                self.stream.push(id);
            }
            (Some("OK"), Some("SAY")) => {
                let id = words.next().unwrap().parse().unwrap();
                self.stream.push(id);
                self.answer(Answer::Stored(id), line);
            }
            (Some("ERR"), Some("STORE_UNAVAILABLE")) => self.answer(Answer::Refused, line),
            (Some("ERR"), Some("OUTCOME_UNKNOWN")) => self.answer(Answer::Unknown, line),
            (Some("LEFT"), Some(room)) if room == self.room => {
                let nick = words.next().unwrap().to_owned();
                self.left.push((nick, Instant::now()));
            }
            (Some("LAGGED"), _) => self.lagged += 1,
            (Some("JOINED" | "LEFT" | "PONG" | "NICK"), _) => {}
            _ => panic!("{}: unexpected {line:?}", self.nick),
        }
    }

    fn answer(&mut self, answer: Answer, line: &str) {
        let text = self
            .pending
            .pop_front()
            .unwrap_or_else(|| panic!("{}: an answer to no SAY: {line}", self.nick));
        self.said.push((text, answer));
    }

    /// Reads and records one line; false if the connection is gone.
    pub async fn read(&mut self) -> bool {
        match self.peer.line().await {
            Some(line) => {
                self.take(&line);
                true
            }
            None => false,
        }
    }

    /// Says every text, pipelined, and reads until each is answered; false if the connection
    /// died first (the unanswered ones stay pending until [`resume`](Self::resume)).
    pub async fn say_all(&mut self, texts: &[String]) -> bool {
        let lines: String = texts.iter().map(|t| format!("SAY {t}\n")).collect();
        self.pending.extend(texts.iter().cloned());
        if !self.peer.send(&lines).await {
            return false;
        }
        while !self.pending.is_empty() {
            if !self.read().await {
                return false;
            }
        }
        true
    }

    /// Reads until it is told that `nick` left its room; returns when it was told.
    pub async fn read_until_left(&mut self, nick: &str) -> Instant {
        loop {
            if let Some((_, when)) = self.left.iter().find(|(who, _)| who == nick) {
                return *when;
            }
            assert!(
                self.read().await,
                "{}: its node closed the connection",
                self.nick
            );
        }
    }

    /// Reads until it was shown id `id` or a later one; false if the connection died first.
    pub async fn read_through(&mut self, id: u64) -> bool {
        while self.last_shown() < id {
            if !self.read().await {
                return false;
            }
        }
        true
    }
}

/// The ids and texts of `room`'s stored messages, in id order.
pub async fn stored(db: &tokio_postgres::Client, room: &str) -> Vec<(u64, String)> {
    db.query(
        "SELECT m.id, m.body FROM messages m JOIN rooms r ON r.id = m.room_id \
         WHERE r.name = $1 ORDER BY m.id",
        &[&room],
    )
    .await
    .unwrap()
    .iter()
    .map(|row| (row.get::<_, i64>(0) as u64, row.get(1)))
    .collect()
}
