//! linechat-client with registered names against a real server: the password from
//! `LINECHAT_PASSWORD` or `--password-file` in scripts (and again after a reconnect), asked
//! for without echo on a terminal (tmux), `/register` and `/password`; never on the screen,
//! never in the state file.

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;

use common::*;

/// Registers `name` with `password` from a raw connection, then leaves, so the name is free.
async fn register(addr: SocketAddr, name: &str, password: &str) {
    let mut p = Peer::connect(addr).await;
    p.send(&format!("NICK {name}")).await;
    p.until("OK NICK").await;
    p.send(&format!("REGISTER {password}")).await;
    let (_, ok) = p.until("OK REGISTER").await;
    assert_eq!(ok, format!("OK REGISTER {name}"));
    p.send("QUIT").await;
    p.until("BYE").await;
    // The server has let go of the name once the connection is closed.
    while let Ok(Some(_)) = p.lines.next_line().await {}
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// `--follow` as a registered name with the password in `LINECHAT_PASSWORD`: it logs in, and
/// after the connection drops it logs in again by itself (without the password kept, the
/// server would answer NICK_REGISTERED and the client would stop).
#[tokio::test]
async fn a_password_from_the_environment_logs_in_and_again_after_a_reconnect() {
    let addr = server().await;
    register(addr, "alice", "alice-secret-1").await;
    let relay = Relay::start(addr).await;
    let mut talker = Peer::join(addr, "talker", "r").await;
    let server = relay.addr.to_string();
    let (mut child, mut out) = follow_with(
        &["--server", &server, "--nick", "alice", "--room", "r"],
        &[("LINECHAT_PASSWORD", "alice-secret-1")],
    );
    talker.until("JOINED r alice").await;
    talker.send("SAY one").await;
    assert!(next_line(&mut out).await.ends_with("<talker> one"));
    relay.cut();
    talker.until("LEFT r alice").await;
    talker.send("SAY two").await;
    relay.mend();
    talker.until("JOINED r alice").await;
    talker.send("SAY three").await;
    assert!(next_line(&mut out).await.ends_with("<talker> two"));
    assert!(next_line(&mut out).await.ends_with("<talker> three"));
    child.kill().await.unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .await
        .unwrap();
    assert!(err.contains("reconnected"), "{err}");
    assert!(!err.contains("alice-secret-1"), "{err}");
}

/// A script: no password for a registered name is one clear line, a wrong one another (never
/// showing it); the right one from `--password-file` logs in and says the lines.
#[tokio::test]
async fn a_script_needs_the_right_password_for_a_registered_name() {
    let addr = server().await;
    register(addr, "bob", "bob-secret-12").await;
    let mut watcher = Peer::join(addr, "watcher", "4").await;
    let server = addr.to_string();
    let args = ["--server", server.as_str(), "--nick", "bob", "--room", "4"];

    let out = run(&args, &[], "no password\n").await;
    assert!(!out.status.success(), "{out:?}");
    let why = stderr(&out);
    assert_eq!(why.lines().count(), 1, "{why}");
    assert!(
        why.contains("bob is a registered name") && why.contains("LINECHAT_PASSWORD"),
        "{why}"
    );

    let out = run(
        &args,
        &[("LINECHAT_PASSWORD", "not-the-password")],
        "wrong password\n",
    )
    .await;
    assert!(!out.status.success(), "{out:?}");
    let why = stderr(&out);
    assert!(why.contains("wrong password for bob"), "{why}");
    assert!(!why.contains("not-the-password"), "{why}");

    let file = state_file("password-file");
    std::fs::write(&file, "bob-secret-12\n").unwrap();
    let with_file = [&args[..], &["--password-file", file.to_str().unwrap()]].concat();
    let out = run(&with_file, &[], "logged in\n").await;
    assert!(out.status.success(), "{out:?}");
    assert_eq!(watcher.next_text().await, "logged in");
    // Nothing was said by the refused attempts.
    watcher.send("HISTORY 4 LIMIT 10").await;
    let (lines, _) = watcher.until("OK HISTORY").await;
    let hist: Vec<&String> = lines.iter().filter(|l| l.starts_with("HIST ")).collect();
    assert_eq!(hist.len(), 1, "{hist:?}");
    let _ = std::fs::remove_file(file);
}

/// A password given for a name nobody registered is not used: the client says so and goes
/// on as a guest with a plain NICK.
#[tokio::test]
async fn a_password_for_a_name_not_registered_is_not_used() {
    let addr = server().await;
    let mut watcher = Peer::join(addr, "watcher", "4").await;
    let server = addr.to_string();
    let out = run(
        &["--server", &server, "--nick", "carol", "--room", "4"],
        &[("LINECHAT_PASSWORD", "carol-secret-1")],
        "as a guest\n",
    )
    .await;
    assert!(out.status.success(), "{out:?}");
    let why = stderr(&out);
    assert!(
        why.contains("carol is not a registered name") && why.contains("going on as a guest"),
        "{why}"
    );
    assert!(!why.contains("carol-secret-1"), "{why}");
    assert_eq!(watcher.next_text().await, "as a guest");
}

/// tmux on a server of its own; killed on drop.
struct Tmux {
    socket: String,
}

impl Tmux {
    /// The server is kept up by a session of its own: a server whose last session ends
    /// exits, and a `new-session` in that moment fails ("server exited unexpectedly").
    fn new(tag: &str) -> Tmux {
        let tmux = Tmux {
            socket: format!("linechat-{tag}-{}", std::process::id()),
        };
        let out = tmux.run(&["new-session", "-d", "-s", "keep", "sleep 3600"]);
        assert!(out.status.success(), "{out:?}");
        tmux
    }

    fn run(&self, args: &[&str]) -> std::process::Output {
        Command::new("tmux")
            .args(["-L", &self.socket])
            .args(args)
            .output()
            .expect("tmux is installed")
    }

    fn start(&self, command: &str) {
        let out = self.run(&[
            "new-session",
            "-d",
            "-s",
            "main",
            "-x",
            "200",
            "-y",
            "50",
            command,
        ]);
        assert!(out.status.success(), "{out:?}");
    }

    fn keys(&self, keys: &str) {
        self.run(&["send-keys", "-t", "main", keys, "Enter"]);
    }

    fn screen(&self) -> String {
        String::from_utf8_lossy(
            &self
                .run(&["capture-pane", "-p", "-S", "-", "-t", "main"])
                .stdout,
        )
        .to_string()
    }

    /// Waits until the screen shows `what` `n` times.
    async fn wait_for_n(&self, what: &str, n: usize) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let s = self.screen();
            if s.matches(what).count() >= n {
                return s;
            }
            assert!(Instant::now() < deadline, "never saw {what:?} on:\n{s}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn wait_for(&self, what: &str) -> String {
        self.wait_for_n(what, 1).await
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        self.run(&["kill-server"]);
    }
}

/// In a terminal: `/register` and `/password` ask without echo; the next start, the client
/// asks for the password of the registered name (again after a wrong one), and `/nick` to a
/// registered name asks for that one's. No password is
/// ever on the screen or in the state file.
#[tokio::test]
async fn interactive_passwords_are_asked_for_without_echo() {
    let addr = server().await;
    let mut other = Peer::join(addr, "other", "4").await;
    let state = state_file("passwords");
    let command = format!(
        "NO_COLOR=1 LINECHAT_CLIENT_STATE={} {CLIENT} --server {addr} --nick erin --room 4",
        state.display()
    );
    let (first, second) = ("first-secret-1", "second-secret-2");
    let tmux = Tmux::new("passwords");
    tmux.start(&command);
    tmux.wait_for("[4]").await;
    other.until("JOINED 4 erin").await;
    other.send("SAY so that something is shown and saved").await;
    tmux.wait_for("<other> so that something").await;

    tmux.keys("/register");
    tmux.wait_for("Password for your name (not shown):").await;
    tmux.keys(first);
    tmux.wait_for("The same again:").await;
    tmux.keys(first);
    tmux.wait_for("* erin is registered").await;

    tmux.keys("/password");
    tmux.wait_for("Current password (not shown):").await;
    tmux.keys(first);
    tmux.wait_for("New password:").await;
    tmux.keys(second);
    tmux.wait_for("The same again:").await;
    tmux.keys(second);
    tmux.wait_for("* your password is changed").await;
    tmux.keys("/quit");
    other.until("LEFT 4 erin").await;
    let s = tmux.screen();
    assert!(!s.contains(first) && !s.contains(second), "{s}");
    tmux.run(&["kill-session", "-t", "main"]);

    // Started again: the name is registered now, so the client asks for its password.
    tmux.start(&command);
    tmux.wait_for("erin is registered; password").await;
    tmux.keys(first);
    tmux.wait_for("! wrong password for erin").await;
    tmux.wait_for_n("erin is registered; password", 2).await;
    tmux.keys(second);
    tmux.wait_for("[4]").await;
    other.until("JOINED 4 erin").await;
    tmux.keys("logged in");
    assert_eq!(other.next_text().await, "logged in");

    // /nick to another registered name asks for that name's password.
    let third = "frank-secret-3";
    register(addr, "frank", third).await;
    tmux.keys("/nick frank");
    tmux.wait_for("* frank is a registered name").await;
    tmux.wait_for("Password for frank").await;
    tmux.keys(third);
    tmux.wait_for("* you are now frank").await;
    other.until("NICK 4 erin frank").await;

    let s = tmux.screen();
    for secret in [first, second, third] {
        assert!(!s.contains(secret), "{s}");
    }
    tmux.keys("/quit");
    other.until("LEFT 4 frank").await;

    let saved = std::fs::read_to_string(&state).expect("the state file is written");
    assert!(saved.contains("erin"), "{saved}");
    for secret in [first, second, third] {
        assert!(!saved.contains(secret), "{saved}");
    }
    let _ = std::fs::remove_file(state);
}
