//! Scale and dead peers: 10,000 connections held by the real binary (with the memory they
//! cost), and a peer that vanishes without a FIN, found by TCP keepalive.
//!
//! The dead-peer test needs root and the `iptables` program (`apt-get install -y iptables`):
//! it silently drops the packets of one connection on the loopback interface.

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::binary::{linechat, Binary};
use common::{memory_config, Client, TestServer, PATIENCE};
use linechat::Config;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

// ---------------------------------------------------------------------------------------
// 10,000 connections
// ---------------------------------------------------------------------------------------

const CONNECTIONS: usize = 10_000;
const ROOMS: usize = 100;
/// Logins in flight at once: keeps the listen backlog (1024) from overflowing, which would
/// cost a one-second SYN retransmit.
const IN_FLIGHT: usize = 200;
/// Idle server memory per connection. The debug build measures 2.54-2.57 KiB here (2,600
/// bytes; the release build about 2.4 KiB, see BENCHMARKS.md): an idle connection's cost is
/// its data, not its code. The bound, about 3x that, leaves room for allocator moods and
/// still catches a buffer kept per connection (the 8 KiB read buffer once cost 11.5 KiB).
const MAX_BYTES_PER_CONNECTION: f64 = 8.0 * 1024.0;

/// Raises this process's soft open-file limit to the hard one; returns the soft limit.
fn raise_open_file_limit() -> u64 {
    rlimit::increase_nofile_limit(u64::MAX).expect("the open-file limit can be read and set")
}

/// The real binary, memory store, no flood control and no connection cap, on a free port.
fn start_binary() -> Binary {
    Binary::start(
        linechat()
            .args(["--listen", "127.0.0.1:0", "--store", "memory"])
            .args(["--rate", "0", "--max-connections", "0"]),
    )
}

/// Connects, chooses the name `u<i>` and joins `room`; returns the client and how many
/// `JOINED` lines (others joining the room) it has seen so far.
async fn log_in(addr: SocketAddr, i: usize, room: &str) -> (Client, usize) {
    let mut c = Client::connect(addr).await;
    c.send_raw(format!("NICK u{i}\nJOIN {room}\n").as_bytes())
        .await;
    c.expect(&format!("OK NICK u{i}")).await;
    let mut joined = 0;
    loop {
        let line = c.line().await;
        if line.starts_with("OK JOIN ") {
            assert!(
                line.starts_with(&format!("OK JOIN {room} ")),
                "u{i}: {line}"
            );
            return (c, joined);
        }
        assert!(
            line.starts_with(&format!("JOINED {room} u")),
            "u{i}: {line}"
        );
        joined += 1;
    }
}

/// Sends a PING and reads up to its PONG; returns how many `JOINED` lines came before it
/// (the only other lines an idle member may have waiting).
async fn ping(c: &mut Client, i: usize) -> usize {
    c.send(&format!("PING p{i}")).await;
    let room = format!("r{}", i % ROOMS);
    let mut joined = 0;
    loop {
        let line = c.line().await;
        if line == format!("PONG p{i}") {
            return joined;
        }
        assert!(
            line.starts_with(&format!("JOINED {room} u")),
            "u{i}: {line}"
        );
        joined += 1;
    }
}

/// Waits until `done` holds, looking every 10 ms; panics after [`PATIENCE`] (a guard against
/// hangs, not a timed assertion).
async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !done() {
        assert!(Instant::now() < deadline, "waited in vain until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Runs `f` on every client in its own task; returns the clients (in order) and the results.
async fn on_all<F, Fut, T>(clients: Vec<Client>, f: F) -> (Vec<Client>, Vec<T>)
where
    F: Fn(Client, usize) -> Fut,
    Fut: std::future::Future<Output = (Client, T)> + Send + 'static,
    T: Send + 'static,
{
    let tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, c)| tokio::spawn(f(c, i)))
        .collect();
    let mut clients = Vec::with_capacity(tasks.len());
    let mut results = Vec::with_capacity(tasks.len());
    for task in tasks {
        let (c, r) = task.await.unwrap();
        clients.push(c);
        results.push(r);
    }
    (clients, results)
}

/// The server holds 10,000 named connections, each a member of a room, at a bounded memory
/// cost each; every one of them still works, and the server then stops cleanly on SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_connections_are_held_and_all_work() {
    let started = Instant::now();
    let ours = raise_open_file_limit();
    assert!(
        ours >= CONNECTIONS as u64 + 500,
        "this test needs an open-file limit of at least {} (it has {ours}): raise the hard \
         limit (ulimit -Hn)",
        CONNECTIONS + 500
    );
    let mut server = start_binary();
    let files = server.open_file_limit();
    assert!(
        files >= CONNECTIONS as u64 + 100,
        "the server raised its open-file limit only to {}; 10,000 connections need more",
        files
    );
    let addr = server.addr;

    // Warm up (runtime threads, allocator arenas, the room table), then take the baseline
    // once the server has closed every warm-up connection: its open files are back to what
    // they were before (a connection's socket is closed as its session ends and frees it).
    let files_before = server.open_files();
    let mut warm = Vec::new();
    for i in 0..200 {
        warm.push(log_in(addr, CONNECTIONS + i, &format!("warm{i}")).await.0);
    }
    for c in &mut warm {
        c.expect_nothing_pending().await;
    }
    assert!(server.open_files() >= files_before + 200, "a socket each");
    drop(warm);
    wait_until("the warm-up connections are closed", || {
        server.open_files() == files_before
    })
    .await;
    let before = server.rss_kib();

    let gate = Arc::new(Semaphore::new(IN_FLIGHT));
    let logins: Vec<_> = (0..CONNECTIONS)
        .map(|i| {
            let gate = gate.clone();
            tokio::spawn(async move {
                let _permit = gate.acquire_owned().await.unwrap();
                log_in(addr, i, &format!("r{}", i % ROOMS)).await
            })
        })
        .collect();
    let mut clients = Vec::with_capacity(CONNECTIONS);
    let mut joined = vec![0usize; CONNECTIONS];
    for (i, login) in logins.into_iter().enumerate() {
        let (c, seen) = login.await.unwrap();
        clients.push(c);
        joined[i] = seen;
    }
    let logged_in = started.elapsed();

    // All logged in. Every connection answers a PING, so every session has written out the
    // presence lines of every join and is idle again, and the server holds a socket for
    // each; then the reading is of 10,000 idle connections.
    let (mut clients, seen) = on_all(clients, |mut c, i| async move {
        let joined = ping(&mut c, i).await;
        (c, joined)
    })
    .await;
    for (i, n) in seen.into_iter().enumerate() {
        joined[i] += n;
    }
    assert!(server.open_files() >= files_before + CONNECTIONS);
    let after = server.rss_kib();
    let per_connection = after.saturating_sub(before) as f64 * 1024.0 / CONNECTIONS as f64;
    eprintln!(
        "server RSS {before} KiB -> {after} KiB with {CONNECTIONS} idle connections: \
         {per_connection:.0} bytes ({:.2} KiB) per connection (open-file limit: server {}, \
         test {ours}); all logged in after {:.1} s",
        per_connection / 1024.0,
        files,
        logged_in.as_secs_f64()
    );
    assert!(
        per_connection < MAX_BYTES_PER_CONNECTION,
        "an idle connection costs {per_connection:.0} bytes of server memory (bound: {})",
        MAX_BYTES_PER_CONNECTION
    );

    // Every membership is held: WHO lists all of r0.
    let members: Vec<String> = {
        let u0 = &mut clients[0];
        u0.send("WHO r0").await;
        let (members, ok) = u0.until("OK WHO ").await;
        assert_eq!(ok, format!("OK WHO r0 {}", CONNECTIONS / ROOMS));
        members
    };
    // Sorted by name, and nothing else came before them (the presence lines were all read).
    let mut want: Vec<String> = (0..CONNECTIONS)
        .step_by(ROOMS)
        .map(|i| format!("MEMBER r0 u{i}"))
        .collect();
    want.sort();
    assert_eq!(members, want);

    // One message said in r0 reaches every other member of r0, and nobody else (checked
    // below: the others see only JOINED lines before their PONG).
    let id = clients[0].say("hello everyone in r0").await;
    let (clients, seen) = on_all(clients, |mut c, i| async move {
        let mut joined = 0;
        if i % ROOMS == 0 && i != 0 {
            loop {
                let line = c.line().await;
                if line.starts_with("MSG ") {
                    let m = common::parse_message(&line);
                    assert_eq!(
                        (m.room.as_str(), m.id, m.nick.as_str(), m.text.as_str()),
                        ("r0", id, "u0", "hello everyone in r0"),
                        "u{i}"
                    );
                    break;
                }
                assert!(line.starts_with("JOINED r0 u"), "u{i}: {line}");
                joined += 1;
            }
        }
        (c, joined)
    })
    .await;
    for (i, n) in seen.into_iter().enumerate() {
        joined[i] += n;
    }

    // Every connection answers a PING.
    let (clients, seen) = on_all(clients, |mut c, i| async move {
        let joined = ping(&mut c, i).await;
        (c, joined)
    })
    .await;
    for (i, n) in seen.into_iter().enumerate() {
        joined[i] += n;
    }
    // Presence was exact: of each pair in a room, the earlier one was told of the later one,
    // once.
    let per_room = CONNECTIONS / ROOMS;
    for room in 0..ROOMS {
        let total: usize = joined.iter().skip(room).step_by(ROOMS).sum();
        assert_eq!(
            total,
            per_room * (per_room - 1) / 2,
            "JOINED lines received in r{room}"
        );
    }

    // Close everything, then stop the server: it exits with status 0.
    drop(clients);
    server.signal("-TERM");
    let status = tokio::time::timeout(PATIENCE, server.wait())
        .await
        .unwrap_or_else(|_| {
            panic!(
                "the server did not exit after SIGTERM; log: {:?}",
                server.log()
            )
        });
    assert!(
        status.success(),
        "exit status {status:?} after SIGTERM; log: {:?}",
        server.log()
    );
    eprintln!(
        "10,000 connections: whole test {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

// ---------------------------------------------------------------------------------------
// A peer that vanishes without a FIN
// ---------------------------------------------------------------------------------------

/// Runs `iptables -w <args>`; panics with a clear message if it is missing or fails.
fn iptables(args: &[&str]) -> std::process::Output {
    match Command::new("iptables").arg("-w").args(args).output() {
        Ok(output) => output,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "the `iptables` program is not installed, and this test needs it to make a peer \
             vanish: install it (apt-get install -y iptables) and run the test as root"
        ),
        Err(e) => panic!("cannot run iptables: {e}"),
    }
}

/// Bytes sent but not yet acknowledged on the IPv4 TCP socket `local` -> `remote` of this
/// machine (the `tx_queue` column of /proc/net/tcp), if there is such a socket.
fn unacknowledged(local: SocketAddr, remote: SocketAddr) -> Option<u64> {
    let hex = |a: SocketAddr| match a {
        SocketAddr::V4(a) => format!(
            "{:08X}:{:04X}",
            u32::from_le_bytes(a.ip().octets()),
            a.port()
        ),
        SocketAddr::V6(_) => panic!("IPv4 only: {a}"),
    };
    let (local, remote) = (hex(local), hex(remote));
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    table.lines().skip(1).find_map(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        (cols[1] == local && cols[2] == remote)
            .then(|| u64::from_str_radix(cols[4].split(':').next().unwrap(), 16).unwrap())
    })
}

/// The rules that drop every packet of one TCP connection on the loopback interface, in
/// both directions. The whole four-tuple is matched, so no other connection (in this test
/// or any other running at the same time) is touched. Deleted on drop, even on a panic.
struct Blackhole {
    rules: Vec<Vec<String>>,
}

impl Blackhole {
    fn new(a: SocketAddr, b: SocketAddr) -> Blackhole {
        let rule = |from: SocketAddr, to: SocketAddr| -> Vec<String> {
            [
                "INPUT",
                "-i",
                "lo",
                "-p",
                "tcp",
                "-s",
                &from.ip().to_string(),
                "--sport",
                &from.port().to_string(),
                "-d",
                &to.ip().to_string(),
                "--dport",
                &to.port().to_string(),
                "-m",
                "comment",
                "--comment",
                "linechat-test-dead-peer",
                "-j",
                "DROP",
            ]
            .map(String::from)
            .to_vec()
        };
        let mut hole = Blackhole { rules: Vec::new() };
        for rule in [rule(a, b), rule(b, a)] {
            let mut insert = vec!["-I"];
            insert.extend(rule.iter().map(String::as_str));
            let output = iptables(&insert);
            assert!(
                output.status.success(),
                "iptables {insert:?} failed (this test must run as root, with a kernel that \
                 has netfilter; try `update-alternatives --set iptables \
                 /usr/sbin/iptables-legacy` if iptables-nft does not work): {}",
                String::from_utf8_lossy(&output.stderr)
            );
            hole.rules.push(rule);
        }
        hole
    }

    /// The INPUT chain with packet counters, for failure messages.
    fn listing() -> String {
        String::from_utf8_lossy(&iptables(&["-L", "INPUT", "-v", "-n", "-x"]).stdout).into()
    }
}

impl Drop for Blackhole {
    fn drop(&mut self) {
        for rule in &self.rules {
            let mut delete = vec!["-D"];
            delete.extend(rule.iter().map(String::as_str));
            match Command::new("iptables").arg("-w").args(&delete).output() {
                Ok(out) if out.status.success() => {}
                done => eprintln!(
                    "could not delete the iptables rule {delete:?} ({done:?}): remove it by hand"
                ),
            }
        }
    }
}

/// A member whose peer vanishes without a FIN or RST (its packets silently dropped) is found
/// by TCP keepalive and cleaned up: the room is told it left, and its name is free again.
#[tokio::test]
async fn a_peer_that_vanishes_without_a_fin_is_found_by_keepalive() {
    // Fail early, and clearly, without iptables.
    let version = iptables(&["--version"]);
    assert!(version.status.success(), "iptables --version failed");

    let server = TestServer::start_with(Config {
        keepalive: Duration::from_secs(1),
        ..memory_config()
    })
    .await;
    let mut watcher = server.login("watcher").await;
    watcher.join("r").await;

    // The ghost, with a socket of our own to learn its port; it is never closed while the
    // packets are dropped, so no FIN or RST is ever sent.
    let ghost = TcpStream::connect(server.addr).await.unwrap();
    let ghost_addr = ghost.local_addr().unwrap();
    let (ghost_read, mut ghost_write) = ghost.into_split();
    let mut ghost_lines = BufReader::new(ghost_read).lines();
    let mut ghost_line = async || {
        tokio::time::timeout(PATIENCE, ghost_lines.next_line())
            .await
            .expect("a line within the patience window")
            .unwrap()
            .expect("a line, not the end of the stream")
    };
    assert!(ghost_line().await.starts_with("HELLO "));
    ghost_write
        .write_all(b"NICK ghost\nJOIN r\nPING last\n")
        .await
        .unwrap();
    assert_eq!(ghost_line().await, "OK NICK ghost");
    assert!(ghost_line().await.starts_with("OK JOIN r "));
    assert_eq!(ghost_line().await, "PONG last");
    watcher.expect("JOINED r ghost").await;
    // Wait until the server's side holds no unacknowledged data for the ghost: with data in
    // flight the kernel would retransmit (for many minutes) instead of sending keepalive
    // probes.
    let deadline = Instant::now() + PATIENCE;
    while unacknowledged(server.addr, ghost_addr) != Some(0) {
        assert!(
            Instant::now() < deadline,
            "the server's socket for the ghost: {:?} bytes unacknowledged",
            unacknowledged(server.addr, ghost_addr)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let hole = Blackhole::new(ghost_addr, server.addr);
    let vanished = Instant::now();
    // Nothing is said in r meanwhile: the server must find out by itself. The watcher pings
    // once a second (its own connection: the ghost's stays silent) and looks at what came
    // before each PONG.
    let patience = Duration::from_secs(40);
    let mut pings = 0;
    let took = loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        pings += 1;
        watcher.send(&format!("PING w{pings}")).await;
        let (before, _) = watcher.until(&format!("PONG w{pings}")).await;
        if !before.is_empty() {
            assert_eq!(before, ["LEFT r ghost"]);
            break vanished.elapsed();
        }
        assert!(
            vanished.elapsed() < patience,
            "no LEFT for the vanished peer within {patience:?}; iptables:\n{}",
            Blackhole::listing()
        );
    };
    eprintln!(
        "vanished peer found after {:.1} s (keepalive 1 s)",
        took.as_secs_f64()
    );

    // Membership and presence are cleaned up, and the name is free.
    watcher.send("WHO r").await;
    watcher.expect("MEMBER r watcher").await;
    watcher.expect("OK WHO r 1").await;
    let mut again = server.client().await;
    again.send("NICK ghost").await;
    again.expect("OK NICK ghost").await;
    again.join("r").await;
    watcher.expect("JOINED r ghost").await;

    // Once the packets flow again, the old connection is gone on the server's side too: it
    // answers with a reset, not a PONG.
    drop(hole);
    ghost_write.write_all(b"PING ghost\n").await.unwrap();
    let mut rest = Vec::new();
    let mut ghost_read = ghost_lines.into_inner();
    let ended = tokio::time::timeout(PATIENCE, ghost_read.read_to_end(&mut rest)).await;
    match ended.expect("the old connection ends once its packets flow again") {
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
        Ok(_) => assert!(
            !String::from_utf8_lossy(&rest).contains("PONG"),
            "the old connection still answers: {rest:?}"
        ),
    }
    watcher.expect_nothing_pending().await;
    server.stop().await.unwrap();
}
