//! The database hangs or goes away under a live server: every store operation has a deadline
//! (`--db-timeout`), a refusal (`STORE_UNAVAILABLE`) means never stored, an unconfirmed
//! INSERT is said to be so (`OUTCOME_UNKNOWN`), a known outage fails at once and ends by
//! itself, and neither a stuck INSERT nor a stuck read stalls shutdown.
//!
//! Each test runs its own PostgreSQL cluster, which it stops, or freezes (SIGSTOP on the
//! postmaster and all its children, as a hung machine or a stopped VM would), and one test at
//! a time: their bounds on time are generous, and a frozen cluster must not share the
//! machine's two cores with another test's.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{memory_config, pg, Client, TestServer, PATIENCE};
use linechat::managed_postgres::ManagedPostgres;
use linechat::Config;

/// One test at a time (see the module's comment). A tokio mutex: a failed test must not
/// poison it for the others.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A private cluster under `dir` with a database `linechat`, and a server on it with `config`'s
/// other settings and `db_timeout`.
async fn server_on_own_cluster(
    dir: &Path,
    db_timeout: Duration,
    config: Config,
) -> (TestServer, ManagedPostgres) {
    let (cluster, config) = pg::own_cluster(dir, db_timeout, config).await;
    (TestServer::start_with(config).await, cluster)
}

/// The children of process `parent` (the postmaster's backends and auxiliary processes).
fn children_of(parent: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let pid: i32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // The parent's id is the second field after the parenthesised command name.
            let ppid: i32 = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            (ppid == parent).then_some(pid)
        })
        .collect()
}

/// A frozen cluster: its postmaster and every child stopped with SIGSTOP. Thawed (SIGCONT)
/// when dropped, so that a failing test leaves nothing frozen behind it.
struct Frozen(Vec<i32>);

impl Frozen {
    fn freeze(cluster: &ManagedPostgres) -> Frozen {
        let postmaster = cluster.postmaster_pid().expect("the postmaster runs");
        // The postmaster first: once stopped it cannot start another child.
        signal(postmaster, libc::SIGSTOP);
        let mut pids = vec![postmaster];
        for child in children_of(postmaster) {
            signal(child, libc::SIGSTOP);
            pids.push(child);
        }
        assert!(
            pids.len() > 2,
            "the cluster has backends to freeze: {pids:?}"
        );
        Frozen(pids)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        for pid in self.0.iter().rev() {
            signal(*pid, libc::SIGCONT);
        }
    }
}

fn signal(pid: i32, signal: i32) {
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(pid, signal) };
}

/// Waits until no session but ours is connected to database `linechat`: every statement the
/// server ever sent, an abandoned INSERT included, has then run to its end.
async fn wait_for_quiet_database(db: &tokio_postgres::Client) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let row = db
            .query_one(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE datname = 'linechat' AND pid <> pg_backend_pid()",
                &[],
            )
            .await
            .unwrap();
        if row.get::<_, i64>(0) == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "the server's sessions end");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One `SAY` of a talker and its answer.
struct Said {
    text: String,
    reply: String,
    /// From sending the window of `SAY`s it was part of to this answer.
    waited: Duration,
}

/// Says windows of `SAY`s in its own room, pipelined, until `stop`; returns every `SAY` with
/// its answer, and the texts of its own messages it received as `MSG` (one answered
/// `OUTCOME_UNKNOWN` that the database stored after all is delivered, its sender included).
/// `acked` counts the `OK SAY`s of all talkers.
async fn talk(
    mut client: Client,
    k: usize,
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicUsize>,
) -> (Vec<Said>, Vec<String>) {
    const WINDOW: usize = 10;
    let mut said = Vec::new();
    let mut delivered = Vec::new();
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        let texts: Vec<String> = (n..n + WINDOW).map(|i| format!("t{k} {i}")).collect();
        n += WINDOW;
        let window: String = texts.iter().map(|t| format!("SAY {t}\n")).collect();
        let sent = Instant::now();
        client.send_raw(window.as_bytes()).await;
        for text in texts {
            let reply = loop {
                let line = client.line().await;
                match line.strip_prefix(&format!("MSG r{k} ")) {
                    Some(rest) => delivered.push(rest.splitn(4, ' ').nth(3).unwrap().to_owned()),
                    None => break line,
                }
            };
            assert!(
                reply.starts_with("OK ") || reply.starts_with("ERR "),
                "wanted a reply, got {reply:?}"
            );
            if reply.starts_with("OK SAY ") {
                acked.fetch_add(1, Ordering::Relaxed);
            }
            said.push(Said {
                text,
                reply,
                waited: sent.elapsed(),
            });
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (said, delivered)
}

/// The database freezes while SAYs are in flight, for well past `--db-timeout`, then wakes:
/// - every `SAY` is answered within about the deadline, not after the freeze;
/// - an `OK SAY` message is stored, with its id;
/// - an `ERR STORE_UNAVAILABLE` message is never stored, even though statements queued on the
///   frozen backends run when it wakes;
/// - an `ERR OUTCOME_UNKNOWN` message may be stored or not (both are counted);
/// - the server serves again by itself.
#[tokio::test]
async fn a_frozen_database_answers_says_in_time_and_a_refusal_is_never_stored() {
    const DB_TIMEOUT: Duration = Duration::from_secs(1);
    const FREEZE: Duration = Duration::from_secs(8);
    // Generous: four times the deadline, and half the freeze.
    const ANSWERED_WITHIN: Duration = Duration::from_secs(4);
    let _one = ONE_AT_A_TIME.lock().await;
    let dir = pg::temp_dir("frozen-say");
    let _cleanup = pg::DirGuard(dir.clone());
    let (server, cluster) = server_on_own_cluster(&dir, DB_TIMEOUT, memory_config()).await;

    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicUsize::new(0));
    let mut talkers = Vec::new();
    for k in 0..3 {
        let mut client = server.login(&format!("t{k}")).await;
        client.join(&format!("r{k}")).await;
        talkers.push(tokio::spawn(talk(client, k, stop.clone(), acked.clone())));
    }
    let wait_for_acks = |n: usize| {
        let acked = acked.clone();
        async move {
            let deadline = Instant::now() + PATIENCE;
            while acked.load(Ordering::Relaxed) < n {
                assert!(Instant::now() < deadline, "the talkers get {n} acks");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    wait_for_acks(60).await;

    let frozen = Frozen::freeze(&cluster);
    tokio::time::sleep(FREEZE).await;
    let acked_in_freeze = acked.load(Ordering::Relaxed);
    drop(frozen);
    // Recovery needs no help: the talkers get acks again.
    wait_for_acks(acked_in_freeze + 60).await;
    stop.store(true, Ordering::Relaxed);
    let mut said = Vec::new();
    let mut delivered = Vec::new();
    for talker in talkers {
        let (s, d) = talker.await.unwrap();
        said.extend(s);
        delivered.extend(d);
    }
    server.stop().await.unwrap();

    let db = pg::connect(&cluster.url("linechat")).await;
    wait_for_quiet_database(&db).await;
    let stored: HashMap<String, u64> = db
        .query("SELECT id, body FROM messages", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get::<_, String>(1), row.get::<_, i64>(0) as u64))
        .collect();
    let (mut refused, mut unknown, mut unknown_stored) = (0, 0, 0);
    for s in &said {
        let stored_as = stored.get(&s.text).copied();
        if let Some(rest) = s.reply.strip_prefix("OK SAY ") {
            let id: u64 = rest.split(' ').next().unwrap().parse().unwrap();
            assert_eq!(stored_as, Some(id), "{:?} was acked as {id}", s.text);
        } else if s.reply.starts_with("ERR STORE_UNAVAILABLE ") {
            refused += 1;
            assert_eq!(stored_as, None, "{:?} was refused, yet stored", s.text);
        } else if s.reply.starts_with("ERR OUTCOME_UNKNOWN ") {
            unknown += 1;
            unknown_stored += usize::from(stored_as.is_some());
        } else {
            panic!("unexpected answer to SAY {}: {}", s.text, s.reply);
        }
        assert!(
            s.waited < ANSWERED_WITHIN,
            "SAY {} was answered after {:?}: {}",
            s.text,
            s.waited,
            s.reply
        );
    }
    for text in &delivered {
        let s = said
            .iter()
            .find(|s| s.text == *text)
            .expect("a message it said");
        assert!(
            s.reply.starts_with("ERR OUTCOME_UNKNOWN ") && stored.contains_key(text),
            "{text:?} came back to its sender, answered {}",
            s.reply
        );
    }
    eprintln!(
        "{} SAYs: {refused} refused, {unknown} outcome unknown ({unknown_stored} of them stored, {} delivered)",
        said.len(),
        delivered.len()
    );
    assert!(unknown > 0, "the freeze caught an INSERT in flight");
    assert!(refused > 0, "SAYs during the freeze were refused");
    cluster.detach();
}

/// With the database stopped, SAY, JOIN and HISTORY fail at once, not after `--db-timeout`,
/// for as long as it is down; a JOIN refused so is not seen by the room's members; once the
/// database is back the server serves again by itself.
#[tokio::test]
async fn a_stopped_database_fails_fast_and_the_server_recovers_by_itself() {
    const DB_TIMEOUT: Duration = Duration::from_secs(5);
    const FAST: Duration = Duration::from_secs(2);
    let _one = ONE_AT_A_TIME.lock().await;
    let dir = pg::temp_dir("stopped");
    let _cleanup = pg::DirGuard(dir.clone());
    let (server, cluster) = server_on_own_cluster(&dir, DB_TIMEOUT, memory_config()).await;
    let mut a = server.login("a").await;
    let mut b = server.login("b").await;
    let mut c = server.login("c").await;
    a.join("r").await;
    b.join("r").await;
    a.expect("JOINED r b").await;
    a.say("before").await;
    b.expect_prefix("MSG r ").await;

    pg::stop_cluster(cluster).await;

    /// Sends `line` and checks that the answer is `ERR STORE_UNAVAILABLE`, fast.
    async fn refused_fast(client: &mut Client, line: &str) {
        let sent = Instant::now();
        client.send(line).await;
        client.expect_err("STORE_UNAVAILABLE").await;
        let waited = sent.elapsed();
        assert!(waited < FAST, "{line} was refused after {waited:?}");
    }
    for round in 0..3 {
        refused_fast(&mut a, &format!("SAY during {round}")).await;
        refused_fast(&mut a, "HISTORY r").await;
        refused_fast(&mut c, "JOIN r").await;
        refused_fast(&mut c, "JOIN elsewhere").await;
        refused_fast(&mut c, "JOIN r SINCE 0").await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Making a room already joined the current one again needs no store: `a` is in `r`, and
    // `JOIN r NONE` answers with the id through which it was shown `r`: its own first
    // message, the room's only one.
    a.send("JOIN r NONE").await;
    a.expect("OK JOIN r 0 1").await;
    // The store's failures are not the client's: more of them than its error budget allows
    // (--max-errors, 30) and it is still served, not closed for too many errors.
    assert_eq!(memory_config().max_errors, 30);
    for _ in 0..40 {
        refused_fast(&mut c, "HISTORY r").await;
    }
    // The refused JOINs left no trace in the room, and the rest of the protocol works.
    a.expect_nothing_pending().await;
    b.expect_nothing_pending().await;
    b.send("WHO r").await;
    b.expect("MEMBER r a").await;
    b.expect("MEMBER r b").await;
    b.expect("OK WHO r 2").await;
    // From outside the room, whether it is private is the store's to say: refused fast.
    refused_fast(&mut c, "WHO r").await;

    let _cluster = pg::restart_cluster(&dir).await;
    let back = Instant::now();
    loop {
        c.send("HISTORY r").await;
        let mut reply = c.line().await;
        while reply.starts_with("HIST ") {
            reply = c.line().await;
        }
        if reply.starts_with("OK HISTORY ") {
            break;
        }
        assert!(reply.starts_with("ERR STORE_UNAVAILABLE "), "{reply}");
        assert!(
            back.elapsed() < PATIENCE,
            "the server serves again by itself"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("serving again {:?} after the database", back.elapsed());
    let hist = c.join("r").await;
    assert_eq!(hist.len(), 1, "{hist:?}");
    a.expect("JOINED r c").await;
    b.expect("JOINED r c").await;
    a.say("after").await;
    b.expect_prefix("MSG r ").await;
    c.expect_prefix("MSG r ").await;
    server.stop().await.unwrap();
}

/// A SAY whose INSERT hangs in a frozen database does not hold shutdown up: it is answered
/// `ERR OUTCOME_UNKNOWN` at `--db-timeout`, and the server has stopped within about
/// `--db-timeout` plus `--close-grace`.
#[tokio::test]
async fn a_stuck_insert_does_not_stall_shutdown() {
    const DB_TIMEOUT: Duration = Duration::from_secs(1);
    let _one = ONE_AT_A_TIME.lock().await;
    let dir = pg::temp_dir("stuck-insert");
    let _cleanup = pg::DirGuard(dir.clone());
    let config = Config {
        close_grace: Duration::from_secs(2),
        ..memory_config()
    };
    let (server, cluster) = server_on_own_cluster(&dir, DB_TIMEOUT, config).await;
    let mut a = server.login("a").await;
    a.join("r").await;
    a.say("before").await;

    let frozen = Frozen::freeze(&cluster);
    a.send("SAY stuck").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stopping = Instant::now();
    // Generous: the bound is 3 s (deadline plus close grace).
    let stopped = tokio::time::timeout(Duration::from_secs(10), server.stop()).await;
    let took = stopping.elapsed();
    drop(frozen);
    assert!(stopped.is_ok(), "shutdown took longer than {took:?}");
    eprintln!("shutdown took {took:?}");
    a.expect_err("OUTCOME_UNKNOWN").await;
    assert!(a
        .until_closed_after("BYE server shutting down")
        .await
        .is_empty());
    cluster.detach();
}

/// History reads (a HISTORY page, a JOIN's replay, a JOIN's room record) waiting on a frozen
/// database give way to shutdown at once: they are answered `ERR SHUTTING_DOWN` (not done),
/// without waiting out a long `--db-timeout`.
#[tokio::test]
async fn store_reads_in_a_frozen_database_give_way_to_shutdown() {
    const DB_TIMEOUT: Duration = Duration::from_secs(60);
    let _one = ONE_AT_A_TIME.lock().await;
    let dir = pg::temp_dir("stuck-read");
    let _cleanup = pg::DirGuard(dir.clone());
    let config = Config {
        close_grace: Duration::from_secs(2),
        ..memory_config()
    };
    let (server, cluster) = server_on_own_cluster(&dir, DB_TIMEOUT, config).await;
    let mut a = server.login("a").await;
    a.join("r").await;
    a.say("before").await;
    let mut reader = server.login("reader").await;
    let mut joiner = server.login("joiner").await;
    let mut newcomer = server.login("newcomer").await;
    // In the room: its HISTORY goes straight to the page read.
    reader.join("r").await;
    a.expect("JOINED r reader").await;

    let frozen = Frozen::freeze(&cluster);
    // A page read waits on the store.
    reader.send("HISTORY r").await;
    // A known room: who may enter (private rooms) is asked of the store first, and waits.
    joiner.send("JOIN r").await;
    // A new room: the same.
    newcomer.send("JOIN elsewhere").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stopping = Instant::now();
    let stopped = tokio::time::timeout(Duration::from_secs(10), server.stop()).await;
    let took = stopping.elapsed();
    drop(frozen);
    assert!(stopped.is_ok(), "shutdown took longer than {took:?}");
    eprintln!("shutdown took {took:?}");
    for client in [&mut reader, &mut joiner, &mut newcomer] {
        client.expect_err("SHUTTING_DOWN").await;
        assert!(client
            .until_closed_after("BYE server shutting down")
            .await
            .is_empty());
    }
    cluster.detach();
}

/// `PING` measures the server, never its store: with the database frozen and a `SAY` waiting
/// for it, `PONG` comes at once; the `SAY` is answered later, at `--db-timeout`.
#[tokio::test]
async fn ping_is_never_queued_behind_a_frozen_store() {
    const DB_TIMEOUT: Duration = Duration::from_secs(5);
    let _one = ONE_AT_A_TIME.lock().await;
    let dir = pg::temp_dir("ping-frozen");
    let _cleanup = pg::DirGuard(dir.clone());
    let (server, cluster) = server_on_own_cluster(&dir, DB_TIMEOUT, memory_config()).await;
    let mut a = server.login("a").await;
    a.join("r").await;
    a.say("before").await;

    let frozen = Frozen::freeze(&cluster);
    let sent = Instant::now();
    a.send("SAY stuck").await;
    a.send("PING alive").await;
    a.expect("PONG alive").await;
    let pong = sent.elapsed();
    // The SAY's answer comes after the PONG, once its deadline has passed.
    a.expect_err("OUTCOME_UNKNOWN").await;
    let answered = sent.elapsed();
    drop(frozen);
    assert!(
        pong < DB_TIMEOUT / 2 && answered >= DB_TIMEOUT - Duration::from_millis(500),
        "PONG after {pong:?}, the SAY answered after {answered:?}"
    );
    server.stop().await.unwrap();
    cluster.detach();
}
