//! Keeping the managed PostgreSQL running: a thread that looks for the postmaster once a
//! second and, if it is gone (killed, crashed, or stopped by someone else), starts it again,
//! waiting longer after each quick failure. The store needs no help: its pool opens new
//! connections once the database answers again.
//!
//! The postmaster is not our child (`pg_ctl` starts it detached, and an adopted one never
//! was), so it is watched through its `postmaster.pid`, checked against `/proc`.

use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::ManagedPostgres;

/// How often the supervisor looks.
const POLL: Duration = Duration::from_secs(1);
/// Looks in a row that must miss the postmaster before it counts as gone (one miss may be a
/// file read while PostgreSQL rewrites it).
const MISSES: u32 = 2;
/// The first wait before a restart, doubled after each restart that did not last...
const FIRST_DELAY: Duration = Duration::from_secs(1);
/// ... up to this.
const MAX_DELAY: Duration = Duration::from_secs(30);
/// A postmaster that ran this long was healthy: the next failure waits `FIRST_DELAY` again.
const HEALTHY_AFTER: Duration = Duration::from_secs(60);

/// A managed cluster under supervision. [`finish`](Supervisor::finish) ends the supervision
/// and hands the cluster back (to be stopped); dropping ends it too, and the cluster, once
/// the thread lets go of it, is asked to shut down (as a dropped [`ManagedPostgres`] is).
pub struct Supervisor {
    stop: mpsc::Sender<()>,
    thread: JoinHandle<ManagedPostgres>,
}

impl Supervisor {
    /// Starts watching `cluster`, which runs now. Panics if no thread can be made.
    pub fn spawn(cluster: ManagedPostgres) -> Supervisor {
        let (stop, stopped) = mpsc::channel();
        // The thread logs where this one does (a test's own subscriber, say).
        let dispatch = tracing::dispatcher::get_default(|d| d.clone());
        let thread = std::thread::Builder::new()
            .name("pg-supervisor".into())
            .spawn(move || {
                tracing::dispatcher::with_default(&dispatch, || watch(&cluster, &stopped));
                cluster
            })
            .expect("a thread to supervise PostgreSQL");
        Supervisor { stop, thread }
    }

    /// Ends the supervision, waiting for a restart under way to finish, and returns the
    /// cluster. Blocks: call it from `spawn_blocking`.
    pub fn finish(self) -> ManagedPostgres {
        drop(self.stop);
        match self.thread.join() {
            Ok(cluster) => cluster,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

/// Waits `delay`; true if told to stop meanwhile (or the [`Supervisor`] is gone).
fn stopped(stop: &mpsc::Receiver<()>, delay: Duration) -> bool {
    !matches!(stop.recv_timeout(delay), Err(RecvTimeoutError::Timeout))
}

/// The supervision loop, until told to stop.
fn watch(cluster: &ManagedPostgres, stop: &mpsc::Receiver<()>) {
    let mut backoff = Backoff::new(Instant::now());
    let mut last_pid = cluster.postmaster_pid();
    let mut misses = 0;
    while !stopped(stop, POLL) {
        if let Some(pid) = cluster.postmaster_pid() {
            last_pid = Some(pid);
            misses = 0;
            continue;
        }
        misses += 1;
        // pg_ctl has the last word (a postmaster started by hand may show another spelling
        // of the data directory on its command line): never restart one that runs.
        if misses < MISSES || cluster.is_running() {
            continue;
        }
        misses = 0;
        let who = last_pid.map_or("the postmaster".to_string(), |p| format!("postmaster {p}"));
        let mut why = if cluster.pgdata().join("postmaster.pid").exists() {
            // A clean shutdown removes the file; a SIGKILL or a crash leaves it.
            format!("{who} is gone without a shutdown (killed or crashed)")
        } else {
            format!("{who} shut down, stopped by something other than linechat")
        };
        loop {
            let delay = backoff.next_delay(Instant::now());
            tracing::warn!(
                pgdata = %cluster.pgdata().display(),
                "PostgreSQL is not running: {why}; starting it again in {}s",
                delay.as_secs_f32()
            );
            if stopped(stop, delay) {
                return;
            }
            match cluster.restart_postmaster() {
                Ok(()) => {
                    backoff.started(Instant::now());
                    last_pid = cluster.postmaster_pid();
                    tracing::warn!(
                        pgdata = %cluster.pgdata().display(),
                        "PostgreSQL started again (postmaster {}); the server reconnects by itself",
                        last_pid.map_or("?".to_string(), |p| p.to_string()),
                    );
                    break;
                }
                Err(e) => why = format!("starting it failed: {e}"),
            }
        }
    }
}

/// When to restart: at once-ish after a postmaster that ran a good while, later and later
/// after one that keeps dying (or failing to start).
#[derive(Debug)]
struct Backoff {
    next: Duration,
    /// When the postmaster started, while it is thought to run.
    running_since: Option<Instant>,
}

impl Backoff {
    fn new(now: Instant) -> Backoff {
        Backoff {
            next: FIRST_DELAY,
            running_since: Some(now),
        }
    }

    /// The wait before the next start attempt, the postmaster having just been found gone
    /// (or failed to start) at `now`.
    fn next_delay(&mut self, now: Instant) -> Duration {
        let ran = self.running_since.take();
        if ran.is_some_and(|since| now.duration_since(since) >= HEALTHY_AFTER) {
            self.next = FIRST_DELAY;
        }
        let delay = self.next;
        self.next = (self.next * 2).min(MAX_DELAY);
        delay
    }

    /// The postmaster started at `now`.
    fn started(&mut self, now: Instant) {
        self.running_since = Some(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn delays_double_up_to_the_cap_while_it_keeps_failing() {
        let t0 = Instant::now();
        let mut b = Backoff::new(t0);
        let delays: Vec<u64> = (0..8)
            .map(|i| b.next_delay(t0 + secs(i)).as_secs())
            .collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 30, 30, 30]);
    }

    #[test]
    fn a_postmaster_that_ran_a_while_is_restarted_quickly_again() {
        let t0 = Instant::now();
        let mut b = Backoff::new(t0);
        // It dies soon after the server started it: 1 s.
        assert_eq!(b.next_delay(t0 + secs(5)), secs(1));
        b.started(t0 + secs(6));
        // Dies again 10 s later: still failing, 2 s.
        assert_eq!(b.next_delay(t0 + secs(16)), secs(2));
        b.started(t0 + secs(18));
        // Then it runs for two minutes: back to 1 s.
        assert_eq!(b.next_delay(t0 + secs(138)), secs(1));
        // Attempts that fail one after the other never count as running, however long
        // they take.
        assert_eq!(b.next_delay(t0 + secs(139)), secs(2));
        assert_eq!(b.next_delay(t0 + secs(300)), secs(4));
    }
}
