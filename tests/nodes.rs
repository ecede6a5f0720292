//! Three `linechat` processes on one real PostgreSQL are one chat, and stay one through what
//! goes wrong in production: talkers on every node at once, a node killed (its clients resume
//! on another), PostgreSQL restarted, the notification connections cut. Every member on every
//! node is checked against the table: every stored message shown once, in id order, nothing
//! acknowledged missing, nothing twice.
//!
//! tests/cluster.rs covers the same ground with servers in the test process; these run the
//! real binary, so that a node can be killed.

mod common;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::nodes::{stored, Answer, Member, Nodes, Peer};
use common::{memory_config, pg, Client, PATIENCE};
use tokio::sync::watch;
use tokio::task::JoinHandle;

const ROOM: &str = "4";

/// What a member does in a test: say its texts in pipelined chunks (pausing `pause` between
/// them), then read until it was shown the id the test sends on `through`. If its node dies
/// it resumes on `fallback`, and goes on with the texts not yet sent.
struct Plan {
    texts: Vec<String>,
    chunk: usize,
    pause: Duration,
    fallback: SocketAddr,
    /// Bumped after each chunk answered: how far the talk has got.
    progress: Arc<AtomicUsize>,
    through: watch::Receiver<u64>,
}

fn run(mut m: Member, mut plan: Plan) -> JoinHandle<Member> {
    tokio::spawn(async move {
        for chunk in plan.texts.chunks(plan.chunk) {
            if !m.say_all(chunk).await {
                m.resume(plan.fallback).await;
            }
            plan.progress.fetch_add(chunk.len(), Ordering::Relaxed);
            tokio::time::sleep(plan.pause).await;
        }
        loop {
            let through = *plan.through.borrow_and_update();
            if m.last_shown() >= through {
                return m;
            }
            tokio::select! {
                alive = m.read() => {
                    if !alive {
                        m.resume(plan.fallback).await;
                    }
                }
                changed = plan.through.changed() => changed.unwrap(),
            }
        }
    })
}

/// The members of a test, one talker and one listener per node, running their plans.
struct Room {
    running: Vec<JoinHandle<Member>>,
    progress: Arc<AtomicUsize>,
    through: watch::Sender<u64>,
}

impl Room {
    /// A talker saying `each` texts and a listener on each node, joined before anyone talks.
    async fn start(nodes: &Nodes, n: usize, each: usize, chunk: usize, pause: Duration) -> Room {
        let progress = Arc::new(AtomicUsize::new(0));
        let (through, watching) = watch::channel(u64::MAX);
        let mut members = Vec::new();
        for i in 0..n {
            let texts: Vec<String> = (0..each).map(|k| format!("n{i}-{k}")).collect();
            members.push((
                Member::join(nodes.addr(i), &format!("talker{i}"), ROOM, "").await,
                texts,
            ));
            members.push((
                Member::join(nodes.addr(i), &format!("listener{i}"), ROOM, "").await,
                vec![],
            ));
        }
        let running = members
            .into_iter()
            .enumerate()
            .map(|(k, (m, texts))| {
                let plan = Plan {
                    texts,
                    chunk,
                    pause,
                    fallback: nodes.addr((k / 2 + 1) % n),
                    progress: progress.clone(),
                    through: watching.clone(),
                };
                run(m, plan)
            })
            .collect();
        Room {
            running,
            progress,
            through,
        }
    }

    /// Waits until `count` texts have been answered.
    async fn wait_for_progress(&self, count: usize) {
        let deadline = Instant::now() + PATIENCE;
        while self.progress.load(Ordering::Relaxed) < count {
            assert!(Instant::now() < deadline, "the talk stalled");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Lets every member finish: talkers talk to the end (`count` texts in all), then
    /// everybody reads through a last message said on `addr` by another member. Returns them
    /// and the table, which the last message is in.
    async fn finish(
        self,
        addr: SocketAddr,
        db: &tokio_postgres::Client,
        count: usize,
    ) -> (Vec<Member>, Vec<(u64, String)>) {
        self.wait_for_progress(count).await;
        self.through.send(the_end(addr).await).unwrap();
        let mut members = Vec::new();
        for r in self.running {
            members.push(
                tokio::time::timeout(PATIENCE, r)
                    .await
                    .expect("members finish")
                    .unwrap(),
            );
        }
        (members, stored(db, ROOM).await)
    }
}

/// Says a last message, from a member of its own on the node at `addr`, once every talker
/// has stopped: a member shown it was shown everything stored before (ids follow commit
/// order). Returns its id.
async fn the_end(addr: SocketAddr) -> u64 {
    let mut closer = Member::join(addr, "closer", ROOM, "NONE").await;
    assert!(closer.say_all(&["the end".to_owned()]).await);
    closer.acked()[0]
}

/// Every member was shown every stored message once, in id order, and nothing else: a
/// listener all of them; a talker all but its own acknowledged ones (never shown to it) and
/// its own unanswered ones lost with its node. Every acknowledged message is stored, with
/// its text, once.
fn check(members: &[Member], table: &[(u64, String)]) {
    let ids: Vec<u64> = table.iter().map(|(id, _)| *id).collect();
    let text_of: HashMap<u64, &str> = table.iter().map(|(id, t)| (*id, t.as_str())).collect();
    let texts: HashSet<&str> = text_of.values().copied().collect();
    assert_eq!(texts.len(), table.len(), "no message stored twice");
    for m in members {
        for (text, answer) in &m.said {
            match answer {
                Answer::Stored(id) => assert_eq!(
                    text_of.get(id),
                    Some(&text.as_str()),
                    "{}: acked {id}",
                    m.nick
                ),
                Answer::Refused => assert!(
                    !texts.contains(text.as_str()),
                    "{}: refused {text:?} is stored",
                    m.nick
                ),
                Answer::Unknown | Answer::Lost => {}
            }
        }
        assert!(
            m.shown.windows(2).all(|w| w[0] < w[1]),
            "{}: shown in increasing ids, none twice: {:?}",
            m.nick,
            m.shown
        );
        let acked: HashSet<u64> = m.acked().into_iter().collect();
        let lost: HashSet<&str> = m
            .said
            .iter()
            .filter(|(_, a)| *a == Answer::Lost)
            .map(|(t, _)| t.as_str())
            .collect();
        let shown: HashSet<u64> = m.shown.iter().copied().collect();
        assert!(
            shown.is_disjoint(&acked),
            "{}: shown its own acknowledged message",
            m.nick
        );
        let expected: Vec<u64> = ids
            .iter()
            .copied()
            .filter(|id| !acked.contains(id))
            // One of its own that it lost with its node may have been stored, and before
            // the largest id it saw: never shown then.
            .filter(|id| shown.contains(id) || !lost.contains(text_of[id]))
            .collect();
        let missing: Vec<u64> = expected
            .iter()
            .copied()
            .filter(|id| !shown.contains(id))
            .collect();
        assert_eq!(
            m.shown, expected,
            "{}: shown every stored message but its own; missing {missing:?}; resumed (SINCE, \
             the ids it had seen before): {:?}",
            m.nick, m.resumes
        );
    }
}

/// Pages a room's whole history with `HISTORY ... AFTER`, from the node at `addr`.
async fn history(addr: SocketAddr) -> Vec<u64> {
    let mut peer = Peer::connect(addr).await;
    let mut ids = Vec::new();
    loop {
        let after = ids.last().copied().unwrap_or(0);
        assert!(
            peer.send(&format!("HISTORY {ROOM} AFTER {after} LIMIT 100\n"))
                .await
        );
        let mut page = 0;
        loop {
            let line = peer.line().await.unwrap();
            if line.starts_with("OK HISTORY ") {
                break;
            }
            ids.push(common::parse_message(&line).id);
            page += 1;
        }
        if page == 0 {
            return ids;
        }
    }
}

/// Talkers on all three nodes say into one room at once, as fast as they can: every member
/// on every node is shown one sequence of increasing ids, which is the acknowledged ids, the
/// table's order and what a late joiner gets (replay and `HISTORY`) on any node.
#[tokio::test]
async fn concurrent_talkers_on_three_nodes_give_every_member_one_order() {
    const EACH: usize = 300;
    let url = pg::fresh_database().await;
    let db = pg::connect(&url).await;
    let nodes = Nodes::start(3, &url, &[]);
    let room = Room::start(&nodes, 3, EACH, 50, Duration::ZERO).await;
    let (members, table) = room.finish(nodes.addr(0), &db, 3 * EACH).await;
    check(&members, &table);
    let ids: Vec<u64> = table.iter().map(|(id, _)| *id).collect();
    assert_eq!(ids.len(), 3 * EACH + 1, "the talk and the end");
    let mut acked: Vec<u64> = members.iter().flat_map(|m| m.acked()).collect();
    acked.sort_unstable();
    assert_eq!(
        acked,
        ids[..3 * EACH],
        "every message acknowledged, and stored, once"
    );
    for i in 0..3 {
        let late = Member::join(nodes.addr(i), &format!("late{i}"), ROOM, "SINCE 0").await;
        assert_eq!(late.shown, ids, "a late joiner's replay on node {i}");
        assert_eq!(history(nodes.addr(i)).await, ids, "HISTORY on node {i}");
    }
    for m in &members {
        assert_eq!(m.connections, 1);
        // Nothing is shown after a larger id, its own acks included: a client that saw id N
        // (its own, in `OK SAY`) is never shown an older message later, so that resuming
        // with `SINCE` the largest id seen (PROTOCOL.md) misses nothing. (An `OK SAY` may
        // come after messages stored later than its own: that loses nothing.)
        let own: HashSet<u64> = m.acked().into_iter().collect();
        let mut largest = 0;
        let mut behind = Vec::new();
        for (k, &id) in m.stream.iter().enumerate() {
            if id < largest && !own.contains(&id) {
                behind.push(k);
            }
            largest = largest.max(id);
        }
        assert!(
            behind.is_empty(),
            "{}: {} times a message came after a larger id (own acks included), first at {}: \
             {:?}; its acks: {:?}",
            m.nick,
            behind.len(),
            behind[0],
            &m.stream[behind[0].saturating_sub(8)..(behind[0] + 8).min(m.stream.len())],
            m.acked()
        );
    }
    nodes.stop().await;
}

/// A node is SIGKILLed while its talker and the others talk: its members resume on another
/// node with `JOIN ... SINCE <the largest id seen>`, and every member (survivors without a break)
/// ends up shown every stored message once, in order; nothing acknowledged is missing. The
/// members on the other nodes see the killed node's members leave within `--node-timeout`.
#[tokio::test]
async fn a_killed_nodes_members_resume_elsewhere_losing_nothing_acknowledged() {
    const EACH: usize = 400;
    const NODE_TIMEOUT: Duration = Duration::from_secs(3);
    let url = pg::fresh_database().await;
    let db = pg::connect(&url).await;
    let mut nodes = Nodes::start(3, &url, &["--node-timeout", "3"]);
    let room = Room::start(&nodes, 3, EACH, 20, Duration::from_millis(10)).await;
    room.wait_for_progress(EACH).await;
    let killed = Instant::now();
    nodes.kill(2).await;
    let (mut members, table) = room.finish(nodes.addr(0), &db, 3 * EACH).await;
    check(&members, &table);
    for m in &members {
        let on_killed = m.nick.ends_with('2') || m.nick.contains("2_");
        assert_eq!(m.connections, if on_killed { 2 } else { 1 }, "{}", m.nick);
    }
    // The killed node's talker was talking when it died, and talked on after resuming.
    let talker = &members[4];
    let lost = talker.said.iter().position(|(_, a)| *a == Answer::Lost);
    let resumed_acks = lost.map_or(0, |at| {
        talker.said[at..]
            .iter()
            .filter(|(_, a)| matches!(a, Answer::Stored(_)))
            .count()
    });
    assert!(
        talker.acked().len() < EACH && resumed_acks > 0,
        "killed mid-talk: {} acked, {resumed_acks} after resuming",
        talker.acked().len()
    );
    // The members on the other nodes are told that the killed node's left, within the node
    // timeout (and some slack for a busy machine).
    for m in &mut members[..4] {
        for gone in ["talker2", "listener2"] {
            let told = tokio::time::timeout(PATIENCE, m.read_until_left(gone)).await;
            let after = told.expect("told within the patience window") - killed;
            assert!(
                after < 2 * NODE_TIMEOUT,
                "{}: told that {gone} left {after:?} after the kill",
                m.nick
            );
        }
    }
    nodes.stop().await;
}

/// PostgreSQL is stopped and started again while talkers on all three nodes keep talking
/// (refusals meanwhile are expected): every acknowledged message is stored once, no refused
/// one is, every node serves again by itself, and every member on every node is shown
/// every stored message once, in order (each node catches its members up from the table).
#[tokio::test]
async fn postgres_restarted_under_three_nodes_loses_nothing_and_all_recover() {
    let dir = pg::temp_dir("nodes-restart");
    let _cleanup = pg::DirGuard(dir.clone());
    let (cluster, config) = pg::own_cluster(&dir, Duration::from_secs(2), memory_config()).await;
    let url = config.database_url.unwrap();
    let nodes = Nodes::start(3, &url, &["--db-timeout", "2"]);
    let stop = Arc::new(AtomicBool::new(false));
    let (through, watching) = watch::channel(u64::MAX);
    // Everybody joins before anybody talks.
    let mut joined = Vec::new();
    for i in 0..3 {
        let talker = Member::join(nodes.addr(i), &format!("talker{i}"), ROOM, "").await;
        let listener = Member::join(nodes.addr(i), &format!("listener{i}"), ROOM, "").await;
        joined.push((talker, listener));
    }
    let (mut talkers, mut listeners, mut acks) = (Vec::new(), Vec::new(), Vec::new());
    for (talker, listener) in joined {
        listeners.push(listen(listener, watching.clone()));
        let acked = Arc::new(AtomicUsize::new(0));
        acks.push(acked.clone());
        talkers.push(keep_talking(talker, stop.clone(), acked));
    }
    let counts = || -> Vec<usize> { acks.iter().map(|a| a.load(Ordering::Relaxed)).collect() };
    wait_until(|| counts().iter().all(|&n| n >= 100)).await;

    pg::stop_cluster(cluster).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let _cluster = pg::restart_cluster(&dir).await;
    // Every node serves again by itself.
    let restarted = counts();
    wait_until(|| counts().iter().zip(&restarted).all(|(n, r)| *n >= r + 100)).await;
    stop.store(true, Ordering::Relaxed);

    // Once every talker has stopped, what is stored is final.
    let mut members = Vec::new();
    for t in talkers {
        members.push(t.await.unwrap());
    }
    let last = the_end(nodes.addr(0)).await;
    through.send(last).unwrap();
    for l in listeners {
        let listener = tokio::time::timeout(PATIENCE, l).await;
        members.push(listener.expect("listeners catch up").unwrap());
    }
    for t in &mut members[..3] {
        assert!(tokio::time::timeout(PATIENCE, t.read_through(last))
            .await
            .unwrap());
    }
    let table = stored(&pg::connect(&url).await, ROOM).await;
    let refused = members
        .iter()
        .flat_map(|m| &m.said)
        .filter(|(_, a)| *a == Answer::Refused)
        .count();
    assert!(refused > 0, "some SAYs met the outage");
    check(&members, &table);

    // And every node delivers to the others: a new message said on each reaches the
    // listeners on every node.
    let (talkers, listeners) = members.split_at_mut(3);
    for t in talkers {
        assert!(t.say_all(&[format!("{} after the restart", t.nick)]).await);
        let Some((_, Answer::Stored(id))) = t.said.last().cloned() else {
            panic!(
                "{}: not stored after the restart: {:?}",
                t.nick,
                t.said.last()
            );
        };
        for l in listeners.iter_mut() {
            assert!(tokio::time::timeout(PATIENCE, l.read_through(id))
                .await
                .unwrap());
            assert_eq!(l.last_shown(), id, "{}", l.nick);
        }
    }
    nodes.stop().await;
}

/// Waits (within [`PATIENCE`]) until `done`.
async fn wait_until(done: impl Fn() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !done() {
        assert!(Instant::now() < deadline, "the talk stalled");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A listener reading until it was shown the id sent on `through`.
fn listen(mut m: Member, mut through: watch::Receiver<u64>) -> JoinHandle<Member> {
    tokio::spawn(async move {
        loop {
            if m.last_shown() >= *through.borrow_and_update() {
                return m;
            }
            tokio::select! {
                alive = m.read() => assert!(alive, "{}: its node closed the connection", m.nick),
                changed = through.changed() => changed.unwrap(),
            }
        }
    })
}

/// A talker saying chunks of 10 until `stop`, counting its acknowledged `SAY`s in `acked`;
/// a chunk with refusals (the database is down) is followed by a short pause.
fn keep_talking(
    mut m: Member,
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicUsize>,
) -> JoinHandle<Member> {
    tokio::spawn(async move {
        let mut n = 0;
        while !stop.load(Ordering::Relaxed) {
            let texts: Vec<String> = (n..n + 10).map(|k| format!("{}-{k}", m.nick)).collect();
            n += 10;
            assert!(
                m.say_all(&texts).await,
                "{}: its node closed the connection",
                m.nick
            );
            acked.store(m.acked().len(), Ordering::Relaxed);
            let answers = &m.said[m.said.len() - 10..];
            if !answers.iter().all(|(_, a)| matches!(a, Answer::Stored(_))) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        m
    })
}

/// The connections that listen for notifications are cut on all three nodes (their backends
/// terminated) while talkers on every node talk: every member on every node is still shown
/// every stored message once, in order, without being told it lagged.
#[tokio::test]
async fn cut_notification_connections_on_every_node_lose_nothing_and_double_nothing() {
    const EACH: usize = 400;
    let url = pg::fresh_database().await;
    let db = pg::connect(&url).await;
    let nodes = Nodes::start(3, &url, &[]);
    let room = Room::start(&nodes, 3, EACH, 20, Duration::from_millis(10)).await;
    for third in 1..=2 {
        room.wait_for_progress(3 * EACH * third / 3).await;
        let cut = db
            .query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE query LIKE 'LISTEN linechat_messages%' AND datname = current_database()",
                &[],
            )
            .await
            .unwrap();
        assert_eq!(cut.len(), 3, "every node's listener was cut");
        assert!(
            room.progress.load(Ordering::Relaxed) < 3 * EACH,
            "cut in the middle of the talk"
        );
        // Each node noticed, and listens again (before the next cut).
        for i in 0..3 {
            nodes
                .wait_for_log_times(i, "listening for stored messages again", third)
                .await;
        }
    }
    let (members, table) = room.finish(nodes.addr(0), &db, 3 * EACH).await;
    check(&members, &table);
    assert_eq!(table.len(), 3 * EACH + 1, "the talk and the end");
    for m in &members {
        assert_eq!((m.connections, m.lagged), (1, 0), "{}", m.nick);
    }
    nodes.stop().await;
}

/// Three server processes on one database are one chat for presence and names: `JOINED`,
/// `LEFT` and `NICK` of members on other nodes, `WHO` and `ROOMS` counting everybody, and a
/// name raced for by clients of two nodes given to exactly one.
#[tokio::test]
async fn presence_and_names_span_three_processes() {
    let url = pg::fresh_database().await;
    let nodes = Nodes::start(3, &url, &[]);
    let mut alice = Client::login(nodes.addr(0), "alice").await;
    alice.join("4").await;
    let mut bob = Client::login(nodes.addr(1), "bob").await;
    bob.until_members("4", &["alice"]).await;
    bob.join("4").await;
    alice.expect("JOINED 4 bob").await;
    let mut carol = Client::login(nodes.addr(2), "carol").await;
    carol.until_members("4", &["alice", "bob"]).await;
    carol.join("4").await;
    alice.expect("JOINED 4 carol").await;
    bob.expect("JOINED 4 carol").await;
    for c in [&mut alice, &mut bob, &mut carol] {
        c.send("WHO 4").await;
        let (members, ok) = c.until("OK WHO ").await;
        assert_eq!(
            members,
            ["MEMBER 4 alice", "MEMBER 4 bob", "MEMBER 4 carol"]
        );
        assert_eq!(ok, "OK WHO 4 3");
        c.send("ROOMS").await;
        assert_eq!(c.until("OK ROOMS ").await.0, ["ROOM 4 3"]);
    }
    bob.send("NICK Bobby").await;
    bob.expect("OK NICK Bobby").await;
    alice.expect("NICK 4 bob Bobby").await;
    carol.expect("NICK 4 bob Bobby").await;
    let mut late = Client::connect(nodes.addr(0)).await;
    late.send("NICK BOBBY").await;
    late.expect_err("NICK_IN_USE").await;

    // Clients of two nodes race for the same names: one each.
    let mut racers = Vec::new();
    for i in 0..20 {
        for node in [1, 2] {
            let addr = nodes.addr(node);
            racers.push(tokio::spawn(async move {
                let mut c = Client::connect(addr).await;
                c.send(&format!("NICK prize{i}")).await;
                let won = c.reply().await.starts_with("OK NICK ");
                (i, won, c)
            }));
        }
    }
    let mut won = [0; 20];
    let mut keep = Vec::new();
    for r in racers {
        let (i, w, c) = r.await.unwrap();
        won[i] += usize::from(w);
        keep.push(c);
    }
    assert_eq!(won, [1; 20], "each name to exactly one");
    bob.send("QUIT").await;
    alice.expect("LEFT 4 Bobby").await;
    carol.expect("LEFT 4 Bobby").await;
    drop(keep);
    nodes.stop().await;
}

/// A node killed with SIGKILL: within `--node-timeout` the others see its members leave and
/// its names are free, so its users reconnect elsewhere under their own names. A node
/// stopped with SIGTERM leaves at once.
#[tokio::test]
async fn a_killed_nodes_members_leave_within_the_node_timeout() {
    const TIMEOUT: Duration = Duration::from_secs(2);
    let url = pg::fresh_database().await;
    let mut nodes = Nodes::start(3, &url, &["--node-timeout", "2"]);
    let mut alice = Client::login(nodes.addr(0), "alice").await;
    alice.join("4").await;
    let mut bob = Client::login(nodes.addr(1), "bob").await;
    bob.until_members("4", &["alice"]).await;
    bob.join("4").await;
    let mut carol = Client::login(nodes.addr(2), "carol").await;
    carol.until_members("4", &["alice", "bob"]).await;
    carol.join("4").await;
    alice.expect("JOINED 4 bob").await;
    alice.expect("JOINED 4 carol").await;
    bob.expect("JOINED 4 carol").await;

    let killed = Instant::now();
    nodes.kill(1).await;
    alice.expect("LEFT 4 bob").await;
    carol.expect("LEFT 4 bob").await;
    let waited = killed.elapsed();
    // The timeout, a heartbeat's period of lateness, and a margin for this busy machine.
    assert!(waited < TIMEOUT * 3, "bob left {waited:?} after the kill");
    let mut bob = Client::connect(nodes.addr(2)).await;
    bob.send("NICK bob").await;
    bob.expect("OK NICK bob").await;
    bob.join("4").await;
    alice.expect("JOINED 4 bob").await;

    let stopped = Instant::now();
    nodes.node(2).signal("-TERM");
    let mut left = vec![alice.line().await, alice.line().await];
    left.sort();
    assert_eq!(left, ["LEFT 4 bob", "LEFT 4 carol"]);
    assert!(
        stopped.elapsed() < TIMEOUT,
        "a node stopped with SIGTERM leaves at once, not after the node timeout"
    );
    nodes.stop().await;
}
