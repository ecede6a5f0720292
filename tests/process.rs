//! The server as a process, on the real binary: its own PostgreSQL supervised (restarted
//! after a SIGKILL), every signal that would end it stopping what it started, the listen
//! backlog, no planted link followed when started as root, and root given up after start-up.
//!
//! These tests run as root (as the rest of the suite does, here and in CI): being root is
//! what the security cases are about.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::binary::{linechat, Binary};
use common::{parse_message, pg, Client, PATIENCE};

fn require_root() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "this test must run as root: it is about what a root server does"
    );
}

/// The real binary in zero-config mode on `data_dir`, with `args` added.
fn zero_config(data_dir: &Path, args: &[&str]) -> Binary {
    Binary::start(
        linechat()
            .args(["--listen", "127.0.0.1:0", "--rate", "0", "--data-dir"])
            .arg(data_dir)
            .args(args)
            .env_remove("DATABASE_URL")
            .env_remove("LINECHAT_USER"),
    )
}

/// The postmaster serving `data_dir`'s cluster, from its pid file.
fn postmaster_pid(data_dir: &Path) -> i32 {
    let text = std::fs::read_to_string(data_dir.join("pgdata/postmaster.pid")).unwrap();
    text.lines().next().unwrap().trim().parse().unwrap()
}

/// True if process `pid` runs (a zombie, dead but not yet reaped by init, does not).
fn running(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
    })
}

/// Waits (within [`PATIENCE`]) for process `pid` to be gone.
async fn gone(pid: i32) {
    let deadline = Instant::now() + PATIENCE;
    while running(pid) {
        assert!(Instant::now() < deadline, "process {pid} is still running");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends `signal` (`-KILL`, ...) to process `pid`.
fn kill(pid: i32, signal: &str) {
    let status = Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Says `<text>-<attempt>` until the store takes it (within `bound`): every other reply must
/// be `ERR STORE_UNAVAILABLE`, or `ERR OUTCOME_UNKNOWN` (its INSERT was sent on a connection
/// whose backend died with the postmaster). Returns the acknowledged id and text, and the
/// texts whose outcome was unknown (each may or may not be stored).
async fn say_until_stored(
    c: &mut Client,
    text: &str,
    bound: Duration,
) -> (u64, String, Vec<String>) {
    let deadline = Instant::now() + bound;
    let mut unknown = Vec::new();
    for attempt in 0.. {
        let said = format!("{text}-{attempt}");
        c.send(&format!("SAY {said}")).await;
        let reply = c.reply().await;
        if let Some(rest) = reply.strip_prefix("OK SAY ") {
            return (
                rest.split(' ').next().unwrap().parse().unwrap(),
                said,
                unknown,
            );
        }
        if reply.starts_with("ERR OUTCOME_UNKNOWN") {
            unknown.push(said);
        } else {
            assert!(reply.starts_with("ERR STORE_UNAVAILABLE"), "{reply}");
        }
        assert!(
            Instant::now() < deadline,
            "the server did not serve again within {bound:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    unreachable!()
}

/// A SIGKILL of the managed postmaster: the server notices, logs it at warn with the
/// reason, starts PostgreSQL again, and serves again by itself, with the history intact.
/// The binary runs as root, so it has given root up for `postgres` by then: the restart
/// works as that user.
#[tokio::test]
async fn a_killed_postmaster_is_restarted_and_the_server_serves_again() {
    require_root();
    let dir = pg::temp_dir("supervise");
    let _cleanup = pg::DirGuard(dir.clone());
    let mut server = zero_config(&dir, &[]);
    let mut c = Client::login(server.addr, "alice").await;
    c.join("r").await;
    let before = c.say("before").await;
    let old = postmaster_pid(&dir);

    kill(old, "-KILL");
    gone(old).await;

    // Generous: noticing takes about 2 s, the first restart waits 1 s, and one that comes
    // before the dead postmaster's backends have all exited fails and is tried again.
    let (after, after_text, unknown) =
        say_until_stored(&mut c, "after", Duration::from_secs(120)).await;
    let warning = server
        .wait_for_log(&format!(
            "PostgreSQL is not running: postmaster {old} is gone without a shutdown (killed or crashed)"
        ))
        .await;
    assert!(warning.contains("WARN"), "{warning}");
    let restarted = server.wait_for_log("PostgreSQL started again").await;
    assert!(restarted.contains("WARN"), "{restarted}");
    let new = postmaster_pid(&dir);
    assert_ne!(new, old);
    assert!(running(new));

    let mut d = Client::login(server.addr, "bob").await;
    let history: Vec<(u64, String)> = d
        .join("r SINCE 0")
        .await
        .iter()
        .map(|l| {
            let m = parse_message(l);
            (m.id, m.text)
        })
        .collect();
    // Both acknowledged messages, in order; between them at most the ones whose outcome
    // was unknown, each once.
    assert_eq!(history.first(), Some(&(before, "before".to_owned())));
    assert_eq!(history.last(), Some(&(after, after_text)));
    let between: Vec<&String> = history[1..history.len() - 1]
        .iter()
        .map(|(_, t)| t)
        .collect();
    assert!(
        between.iter().all(|t| unknown.contains(t)),
        "{history:?}, unknown {unknown:?}"
    );

    server.signal("-TERM");
    assert!(server.wait().await.success());
    gone(new).await;
    assert!(
        !server.log().iter().any(|l| l.contains("starting it again")
            && l.contains("shut down, stopped by something other")),
        "our own shutdown is not taken for a failure: {:#?}",
        server.log()
    );
}

/// Every signal that would end the process short of SIGKILL ends it cleanly: clients get
/// `BYE`, the managed PostgreSQL is stopped, the exit status is 0, and the log names the
/// signal (SIGHUP reloads instead: tests/tls.rs). One server after another on one data
/// directory (each run stops its cluster, so the next one starts it afresh).
#[tokio::test]
async fn every_stopping_signal_closes_clients_and_stops_the_managed_postgres() {
    let dir = pg::temp_dir("signals");
    let _cleanup = pg::DirGuard(dir.clone());
    for signal in ["QUIT", "INT", "TERM"] {
        let mut server = zero_config(&dir, &[]);
        let mut c = Client::login(server.addr, "alice").await;
        c.join("r").await;
        c.say(&format!("before SIG{signal}")).await;
        let postmaster = postmaster_pid(&dir);

        server.signal(&format!("-{signal}"));
        c.expect("BYE server shutting down").await;
        let status = server.wait().await;
        assert!(status.success(), "SIG{signal}: exit status {status:?}");
        server
            .wait_for_log(&format!("SIG{signal} received: shutting down"))
            .await;
        gone(postmaster).await;
        assert!(
            !dir.join("pgdata/postmaster.pid").exists(),
            "SIG{signal}: the managed PostgreSQL was stopped cleanly"
        );
    }
}

/// A second stopping signal hurries the shutdown the first began: a client that keeps
/// sending part of a line (so that it would be given all of `--close-grace`, 30 s here) is
/// closed at once, the log names both signals, and the managed PostgreSQL is still stopped
/// cleanly.
#[tokio::test]
async fn a_second_signal_cuts_the_close_grace_short_and_still_stops_the_managed_postgres() {
    use tokio::io::AsyncWriteExt;

    let dir = pg::temp_dir("second-signal");
    let _cleanup = pg::DirGuard(dir.clone());
    let mut server = zero_config(&dir, &["--close-grace", "30"]);
    let postmaster = postmaster_pid(&dir);
    let mut sender = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    sender.write_all(b"NICK bob\n").await.unwrap();
    let sending = tokio::spawn(async move {
        // Part of a line, never ended, until the server closes the connection.
        while sender.write_all(b"x").await.is_ok() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;

    server.signal("-TERM");
    server.wait_for_log("SIGTERM received: shutting down").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        running(server.pid() as i32),
        "the server lingers for the client still sending"
    );
    server.signal("-INT");
    let exited = tokio::time::timeout(Duration::from_secs(10), server.wait()).await;
    let status = exited.expect("the second signal ends the close grace (30 s) at once");
    assert!(status.success(), "exit status {status:?}");
    server.wait_for_log("SIGINT received during shutdown").await;
    gone(postmaster).await;
    assert!(
        !dir.join("pgdata/postmaster.pid").exists(),
        "the managed PostgreSQL was stopped cleanly"
    );
    sending.abort();
}

/// The `Send-Q` that `ss` shows for a listening socket: its backlog.
fn listen_backlog(port: u16) -> u32 {
    let out = Command::new("ss")
        .args(["-ltnH", &format!("sport = :{port}")])
        .output()
        .expect("the ss program (iproute2)");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .next()
        .unwrap_or_else(|| panic!("no listener: {text}"));
    line.split_whitespace().nth(2).unwrap().parse().unwrap()
}

/// The listener's backlog is the system's maximum (tokio's default of 1,024 overflowed
/// under a burst of connects), or `--backlog`; the start-up line says which.
#[tokio::test]
async fn the_listen_backlog_is_the_system_maximum_or_the_flag() {
    let max: u32 = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let memory = ["--listen", "127.0.0.1:0", "--store", "memory"];
    let mut server = Binary::start(linechat().args(memory));
    assert_eq!(listen_backlog(server.addr.port()), max);
    server
        .wait_for_log(&format!("listening on {}; backlog {max};", server.addr))
        .await;
    server.signal("-TERM");
    assert!(server.wait().await.success());

    let mut server = Binary::start(linechat().args(memory).args(["--backlog", "7"]));
    assert_eq!(listen_backlog(server.addr.port()), 7);
    server
        .wait_for_log(&format!("listening on {}; backlog 7;", server.addr))
        .await;
    server.signal("-TERM");
    assert!(server.wait().await.success());
}

/// A root-owned file that a planted link points at, in a directory of its own.
struct Target {
    dir: PathBuf,
    file: PathBuf,
}

const SECRET: &str = "root's own file\n";

impl Target {
    fn new(tag: &str) -> Target {
        let dir = pg::temp_dir(tag);
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("root-owned");
        std::fs::write(&file, SECRET).unwrap();
        Target { dir, file }
    }

    /// The target is as it was: root's, with its content.
    fn assert_untouched(&self) {
        let meta = std::fs::metadata(&self.file).unwrap();
        assert_eq!(
            (meta.uid(), meta.gid()),
            (0, 0),
            "the target's owner changed"
        );
        assert_eq!(std::fs::read_to_string(&self.file).unwrap(), SECRET);
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs the binary on `data_dir`, which must refuse to start; returns what it said.
async fn refused(data_dir: &Path) -> String {
    let child = linechat()
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .env_remove("DATABASE_URL")
        .env_remove("LINECHAT_USER")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    let waiting = tokio::task::spawn_blocking(move || child.wait_with_output());
    let output = match tokio::time::timeout(PATIENCE, waiting).await {
        Ok(output) => output.unwrap().unwrap(),
        Err(_) => {
            kill(pid, "-KILL");
            panic!("the server started instead of refusing the data directory");
        }
    };
    assert!(!output.status.success());
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A `postgresql.log` link planted in the data directory, pointing at a root-owned file.
/// In a data directory other users can write (how it could be planted), the server refuses
/// the directory; in one only root can write (planted earlier, say), it refuses the link.
/// Either way the target keeps its owner and content (the server used to hand it to
/// `postgres`, and PostgreSQL appended its log to it).
#[tokio::test]
async fn a_planted_log_link_is_never_followed() {
    require_root();
    let target = Target::new("log-target");

    let open = pg::temp_dir("open dir");
    let _cleanup = pg::DirGuard(open.clone());
    std::fs::create_dir_all(&open).unwrap();
    std::fs::set_permissions(&open, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    std::os::unix::fs::symlink(&target.file, open.join("postgresql.log")).unwrap();
    let said = refused(&open).await;
    assert!(said.contains("unsafe data directory"), "{said}");
    assert!(
        said.contains("is writable by other users (mode 777)"),
        "{said}"
    );
    assert!(said.contains("/var/lib/linechat"), "{said}");
    target.assert_untouched();

    let closed = pg::temp_dir("closed dir");
    let _cleanup = pg::DirGuard(closed.clone());
    std::fs::create_dir_all(&closed).unwrap();
    std::os::unix::fs::symlink(&target.file, closed.join("postgresql.log")).unwrap();
    let said = refused(&closed).await;
    assert!(
        said.contains("postgresql.log is a symbolic link; linechat never follows links"),
        "{said}"
    );
    target.assert_untouched();
    assert!(
        !closed.join("pgdata").exists(),
        "refused before anything was made"
    );
}

/// `--data-dir /tmp/evil/data`, where `/tmp/evil` belongs to `nobody`, who made `data` a
/// link to a directory of root's. The server, started as root, used to resolve the link
/// first and check only where it led: it made its lock, cluster and log there and handed
/// root's `postgresql.log` and `run/` to `postgres`. Now the path is checked as given: it
/// refuses to start, and root's files keep their owner, mode and content.
#[tokio::test]
async fn a_data_dir_reached_through_another_users_link_is_refused() {
    require_root();
    let victim = pg::temp_dir("victim");
    let _cleanup = pg::DirGuard(victim.clone());
    std::fs::create_dir_all(victim.join("run")).unwrap();
    let log = victim.join("postgresql.log");
    std::fs::write(&log, SECRET).unwrap();
    std::fs::set_permissions(&log, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let before = |path: &Path| {
        let meta = std::fs::symlink_metadata(path).unwrap();
        (meta.uid(), meta.gid(), meta.mode())
    };
    let (log_was, run_was) = (before(&log), before(&victim.join("run")));

    let nobody = account("nobody");
    let evil = pg::temp_dir("evil");
    let _cleanup_evil = pg::DirGuard(evil.clone());
    std::fs::create_dir(&evil).unwrap();
    std::os::unix::fs::chown(&evil, Some(nobody.0), Some(nobody.1)).unwrap();
    let planted = Command::new("runuser")
        .args(["-u", "nobody", "--", "ln", "-s"])
        .arg(&victim)
        .arg(evil.join("data"))
        .status()
        .unwrap();
    assert!(planted.success(), "nobody could not plant the link");

    let said = refused(&evil.join("data")).await;
    assert!(said.contains("unsafe data directory"), "{said}");
    assert!(
        said.contains(&format!(
            "{}, on the path to the data directory {}, is owned by another user (uid {})",
            evil.display(),
            evil.join("data").display(),
            nobody.0
        )),
        "{said}"
    );
    assert_eq!(before(&log), log_was, "the log's owner or mode changed");
    assert_eq!(
        before(&victim.join("run")),
        run_was,
        "run/'s owner or mode changed"
    );
    assert_eq!(std::fs::read_to_string(&log).unwrap(), SECRET);
    for made in ["linechat.lock", "pgdata", "pgdata.initdb"] {
        assert!(!victim.join(made).exists(), "{made} was made in the target");
    }

    // A link of another user's in a sticky directory (as /tmp is) is refused too: they may
    // point it elsewhere at any time.
    let link = pg::temp_dir("link");
    std::os::unix::fs::symlink(&victim, &link).unwrap();
    std::os::unix::fs::lchown(&link, Some(nobody.0), Some(nobody.1)).unwrap();
    let said = refused(&link.join("data")).await;
    let _ = std::fs::remove_file(&link);
    assert!(
        said.contains("is a symbolic link owned by another user"),
        "{said}"
    );
    assert!(!victim.join("data").exists(), "made through the link");
    assert_eq!(before(&log), log_was);
}

/// A `postgresql.auto.conf` link planted in the cluster's directory (which belongs to
/// `postgres`, so whoever runs as that user can plant one), pointing at a root-owned file:
/// the server, started as root, replaces the link with its settings instead of writing
/// through it (it used to overwrite the target), and works.
#[tokio::test]
async fn a_planted_settings_link_is_replaced_not_written_through() {
    require_root();
    let target = Target::new("conf-target");
    let dir = pg::temp_dir("conf link");
    let _cleanup = pg::DirGuard(dir.clone());
    let mut server = zero_config(&dir, &[]);
    server.signal("-TERM");
    assert!(server.wait().await.success());

    let conf = dir.join("pgdata/postgresql.auto.conf");
    std::fs::remove_file(&conf).unwrap();
    std::os::unix::fs::symlink(&target.file, &conf).unwrap();
    let postgres = account("postgres");
    std::os::unix::fs::lchown(&conf, Some(postgres.0), Some(postgres.1)).unwrap();

    let mut server = zero_config(&dir, &[]);
    let mut c = Client::login(server.addr, "alice").await;
    c.join("r").await;
    c.say("stored").await;
    target.assert_untouched();
    let meta = std::fs::symlink_metadata(&conf).unwrap();
    assert!(meta.is_file(), "the link was replaced by a file");
    assert_eq!(meta.uid(), postgres.0);
    let settings = std::fs::read_to_string(&conf).unwrap();
    assert!(settings.contains("unix_socket_directories"), "{settings}");
    server.signal("-TERM");
    assert!(server.wait().await.success());
}

/// The user and group ids of user `name`, as `id` says.
fn account(name: &str) -> (u32, u32) {
    let id = |flag: &str| -> u32 {
        let out = Command::new("id").args([flag, name]).output().unwrap();
        assert!(out.status.success(), "no user {name}");
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    };
    (id("-u"), id("-g"))
}

/// The `Uid:` and `Gid:` lines of `/proc/<pid>/status` (real, effective, saved, fs) and
/// its supplementary groups; checked to be the same in every thread of the process (the
/// switch happens while the runtime's threads run, and each thread has its own ids).
fn ids_of(pid: u32) -> (Vec<u32>, Vec<u32>, Vec<u32>) {
    let ids = ids_in(&format!("/proc/{pid}/status"));
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
    for task in tasks {
        let path = task.unwrap().path().join("status");
        assert_eq!(ids_in(path.to_str().unwrap()), ids, "{}", path.display());
    }
    ids
}

fn ids_in(status: &str) -> (Vec<u32>, Vec<u32>, Vec<u32>) {
    let status = std::fs::read_to_string(status).unwrap();
    let field = |name: &str| -> Vec<u32> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_else(|| panic!("no {name} line"))
            .split_whitespace()
            .map(|n| n.parse().unwrap())
            .collect()
    };
    (field("Uid:"), field("Gid:"), field("Groups:"))
}

/// Started as root, the server gives root up once it listens and its PostgreSQL runs: to
/// `postgres`, who owns that cluster, and it still works and still stops the cluster on
/// shutdown. With no cluster of its own it becomes `nobody`; `--user root` keeps root.
#[tokio::test]
async fn started_as_root_it_runs_as_an_unprivileged_user() {
    require_root();
    let dir = pg::temp_dir("privileges");
    let _cleanup = pg::DirGuard(dir.clone());
    let (pg_uid, pg_gid) = account("postgres");
    let mut server = zero_config(&dir, &[]);
    let (uid, gid, groups) = ids_of(server.pid());
    assert_eq!(uid, [pg_uid; 4]);
    assert_eq!(gid, [pg_gid; 4]);
    assert_eq!(groups, Vec::<u32>::new());
    let mut c = Client::login(server.addr, "alice").await;
    c.join("r").await;
    let id = c.say("as postgres").await;
    let mut d = Client::login(server.addr, "bob").await;
    let hist = d.join("r SINCE 0").await;
    assert_eq!(parse_message(&hist[0]).id, id);
    let postmaster = postmaster_pid(&dir);
    server.signal("-TERM");
    c.until("BYE server shutting down").await;
    assert!(server.wait().await.success());
    gone(postmaster).await;
    assert!(!dir.join("pgdata/postmaster.pid").exists());

    let nobody = account("nobody");
    let memory = ["--listen", "127.0.0.1:0", "--store", "memory"];
    let mut server = Binary::start(linechat().args(memory).env_remove("LINECHAT_USER"));
    let (uid, gid, _) = ids_of(server.pid());
    assert_eq!((uid, gid), (vec![nobody.0; 4], vec![nobody.1; 4]));
    let mut c = Client::login(server.addr, "alice").await;
    c.join("r").await;
    c.say("as nobody").await;
    server.signal("-TERM");
    assert!(server.wait().await.success());

    let mut server = Binary::start(linechat().args(memory).args(["--user", "root"]));
    let (uid, _, _) = ids_of(server.pid());
    assert_eq!(uid, [0; 4]);
    server.signal("-TERM");
    assert!(server.wait().await.success());
}
