//! Helpers for the client's tests: an in-process server, a raw protocol peer, the client run
//! as a child process, and a TCP relay that can cut connections.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::process::{Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

pub const CLIENT: &str = env!("CARGO_BIN_EXE_linechat-client");
/// Guards against hangs only; nothing asserts on time.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// The server configuration these tests start from: the memory store and no flood limit,
/// spelled out rather than taken from `Config::default()` (which is meant to follow the server
/// binary's defaults, PostgreSQL and `--rate 20`). A test about the flood limit sets it.
pub fn memory_config() -> linechat::Config {
    linechat::Config {
        store: linechat::StoreKind::Memory,
        rate: 0,
        ..linechat::Config::default()
    }
}

/// A server on `memory_config()`, on a free port.
pub async fn server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = linechat::server::Server::start(memory_config())
        .await
        .unwrap();
    tokio::spawn(server.serve(listener, std::future::pending()));
    addr
}

/// A raw protocol client for the other side of the conversation.
pub struct Peer {
    pub lines: tokio::io::Lines<BufReader<tokio::net::tcp::OwnedReadHalf>>,
    pub write: tokio::net::tcp::OwnedWriteHalf,
}

impl Peer {
    /// Connected, `HELLO` not read yet.
    pub async fn connect(addr: SocketAddr) -> Peer {
        let (r, w) = TcpStream::connect(addr).await.unwrap().into_split();
        Peer {
            lines: BufReader::new(r).lines(),
            write: w,
        }
    }

    pub async fn join(addr: SocketAddr, nick: &str, room: &str) -> Peer {
        let mut p = Peer::connect(addr).await;
        p.send(&format!("NICK {nick}\nJOIN {room}")).await;
        p.until("OK JOIN").await;
        p
    }

    pub async fn send(&mut self, text: &str) {
        self.write
            .write_all(format!("{text}\n").as_bytes())
            .await
            .unwrap();
    }

    pub async fn until(&mut self, prefix: &str) -> (Vec<String>, String) {
        let mut before = Vec::new();
        loop {
            let line = tokio::time::timeout(PATIENCE, self.lines.next_line())
                .await
                .expect("a line in time")
                .unwrap()
                .expect("open connection");
            if line.starts_with(prefix) {
                return (before, line);
            }
            before.push(line);
        }
    }

    /// The text of the next `MSG`.
    pub async fn next_text(&mut self) -> String {
        let (_, line) = self.until("MSG ").await;
        line.splitn(6, ' ').nth(5).unwrap().to_string()
    }
}

/// Runs the client with `args` and `input` on stdin (not a terminal: scripted mode).
pub async fn client(addr: SocketAddr, args: &[&str], input: &str) -> Output {
    let server = addr.to_string();
    let all: Vec<&str> = ["--server", server.as_str()]
        .into_iter()
        .chain(args.iter().copied())
        .collect();
    run(&all, &[], input).await
}

/// Runs the client with `args` (the server among them), `env` and `input` on stdin (not a
/// terminal: scripted mode), with a state file of its own unless `env` names one.
pub async fn run(args: &[&str], env: &[(&str, &str)], input: &str) -> Output {
    let mut child = tokio::process::Command::new(CLIENT)
        .args(args)
        .env("NO_COLOR", "1")
        .env("LINECHAT_CLIENT_STATE", state_file("scripted"))
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    match stdin.write_all(input.as_bytes()).await {
        Ok(()) => {}
        // A client that refuses to start (a CA for a plain server) may exit before it reads
        // its input: what it printed and its exit status say why, and the test checks them.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        Err(e) => panic!("writing the client's input: {e}"),
    }
    drop(stdin);
    tokio::time::timeout(PATIENCE, child.wait_with_output())
        .await
        .expect("the client exits")
        .unwrap()
}

pub fn state_file(tag: &str) -> std::path::PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    std::env::temp_dir().join(format!(
        "linechat-client-{tag}-{}-{}.json",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

pub fn stdout(o: &Output) -> Vec<String> {
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// A TCP relay whose connections the test can cut, to make the client lose its connection.
/// It keeps what the server sent through it, so a test can wait until the client has had a
/// reply.
pub struct Relay {
    pub addr: SocketAddr,
    /// Where it relays to (see `redirect`).
    to: Arc<Mutex<SocketAddr>>,
    /// Connections relayed so far.
    accepted: Arc<AtomicUsize>,
    cut: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
    refuse: Arc<AtomicBool>,
    from_server: Arc<Mutex<String>>,
    /// Every byte the client sent through it, to check what crossed the wire.
    from_client: Arc<Mutex<Vec<u8>>>,
}

impl Relay {
    pub async fn start(to: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = Arc::new(Mutex::new(Vec::new()));
        let refuse = Arc::new(AtomicBool::new(false));
        let from_server = Arc::new(Mutex::new(String::new()));
        let from_client = Arc::new(Mutex::new(Vec::new()));
        let sent = from_client.clone();
        let accepted = Arc::new(AtomicUsize::new(0));
        let (tasks, no, log) = (cut.clone(), refuse.clone(), from_server.clone());
        let count = accepted.clone();
        let to = Arc::new(Mutex::new(to));
        let target = to.clone();
        tokio::spawn(async move {
            loop {
                let (a, _) = listener.accept().await.unwrap();
                if no.load(Ordering::SeqCst) {
                    continue;
                }
                count.fetch_add(1, Ordering::SeqCst);
                let (log, sent) = (log.clone(), sent.clone());
                let to = *target.lock().unwrap();
                let task = tokio::spawn(async move {
                    let b = TcpStream::connect(to).await.unwrap();
                    let (mut ar, mut aw) = a.into_split();
                    let (mut br, mut bw) = b.into_split();
                    let up = async {
                        let mut buf = [0u8; 4096];
                        while let Ok(n) = ar.read(&mut buf).await {
                            if n == 0 || bw.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                            sent.lock().unwrap().extend_from_slice(&buf[..n]);
                        }
                    };
                    let down = async {
                        let mut buf = [0u8; 4096];
                        while let Ok(n) = br.read(&mut buf).await {
                            if n == 0 || aw.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                            log.lock()
                                .unwrap()
                                .push_str(&String::from_utf8_lossy(&buf[..n]));
                        }
                    };
                    tokio::select! { _ = up => {}, _ = down => {} }
                });
                tasks.lock().unwrap().push(task.abort_handle());
            }
        });
        Relay {
            addr,
            to,
            accepted,
            cut,
            refuse,
            from_server,
            from_client,
        }
    }

    /// Drops every relayed connection (both sides see it close) and refuses new ones.
    pub fn cut(&self) {
        self.refuse.store(true, Ordering::SeqCst);
        for t in self.cut.lock().unwrap().drain(..) {
            t.abort();
        }
    }

    pub fn mend(&self) {
        self.refuse.store(false, Ordering::SeqCst);
    }

    /// New connections go to `to` (a server restarted elsewhere, say).
    pub fn redirect(&self, to: SocketAddr) {
        *self.to.lock().unwrap() = to;
    }

    /// How many connections it has relayed.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// True if the client sent `bytes` through the relay (in the clear, that is).
    pub fn client_sent(&self, bytes: &[u8]) -> bool {
        self.from_client
            .lock()
            .unwrap()
            .windows(bytes.len())
            .any(|w| w == bytes)
    }

    /// Waits until the server has sent `text` through the relay.
    pub async fn relayed(&self, text: &str) {
        let deadline = Instant::now() + PATIENCE;
        while !self.from_server.lock().unwrap().contains(text) {
            assert!(Instant::now() < deadline, "the server never sent {text:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// `linechat-client --follow` as `nick` in `room` through `server`; its stdout as lines.
pub fn follow(
    server: SocketAddr,
    nick: &str,
    room: &str,
) -> (
    tokio::process::Child,
    tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
) {
    let server = server.to_string();
    follow_with(&["--server", &server, "--nick", nick, "--room", room], &[])
}

/// `linechat-client --follow` with `args` and `env`; its stdout as lines.
pub fn follow_with(
    args: &[&str],
    env: &[(&str, &str)],
) -> (
    tokio::process::Child,
    tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
) {
    let mut child = tokio::process::Command::new(CLIENT)
        .args(args)
        .arg("--follow")
        .env("NO_COLOR", "1")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let out = BufReader::new(child.stdout.take().unwrap()).lines();
    (child, out)
}

/// The next line of a child's output (panics if none comes in time).
pub async fn next_line(
    out: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
) -> String {
    tokio::time::timeout(PATIENCE, out.next_line())
        .await
        .expect("a line in time")
        .unwrap()
        .expect("the client is still running")
}
