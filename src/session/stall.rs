//! A connection that is behind: output waits for its socket, or its mailbox lags. While it
//! is, a [`StallWatch`] notices a client that takes no bytes at all for `--stall-timeout`
//! (it is then closed, `BYE too slow`) and schedules the retry of a catch-up the store
//! refused. Present only while behind: most connections never carry one.

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use tokio::time::{Instant, Sleep};

use super::{Session, OUTPUT_HIGH};

/// How long catching up waits after the store refused it.
pub(super) const CATCH_UP_RETRY: Duration = Duration::from_secs(1);

pub(super) struct StallWatch {
    /// Wakes the session to check for a stall, or to retry a catch-up.
    timer: Pin<Box<Sleep>>,
    /// When the socket last took bytes, or when output began to wait.
    progress_at: Instant,
    /// Output was waiting when last looked at.
    waiting: bool,
    /// No byte was taken for `--stall-timeout`: close with `BYE too slow`.
    stalled: bool,
    /// The store refused a catch-up: try again from this time.
    retry_at: Option<Instant>,
}

impl StallWatch {
    pub fn new(stall_timeout: Duration, now: Instant) -> Box<StallWatch> {
        Box::new(StallWatch {
            timer: Box::pin(tokio::time::sleep_until(now + stall_timeout)),
            progress_at: now,
            waiting: false,
            stalled: false,
            retry_at: None,
        })
    }

    pub fn is_stalled(&self) -> bool {
        self.stalled
    }

    /// Notes whether output waits: a stall can only begin while it does, so the clock starts
    /// when it begins to.
    pub fn note_waiting(&mut self, waiting: bool, now: Instant) {
        if waiting && !self.waiting {
            self.progress_at = now;
        }
        self.waiting = waiting;
    }

    /// The socket took bytes; `waiting` says if more wait.
    pub fn progress(&mut self, waiting: bool, now: Instant) {
        self.progress_at = now;
        self.waiting = waiting;
    }

    /// The timer fired: the connection has stalled, or the timer is set for the next thing
    /// to look at (the stall deadline, a catch-up retry, or a look round after
    /// `stall_timeout`).
    pub fn on_timer(&mut self, stall_timeout: Duration, now: Instant) {
        let mut next = now + stall_timeout;
        if self.waiting {
            let deadline = self.progress_at + stall_timeout;
            if now >= deadline {
                self.stalled = true;
                return;
            }
            next = deadline;
        }
        if let Some(at) = self.retry_at.filter(|at| *at > now) {
            next = next.min(at);
        }
        self.timer.as_mut().reset(next);
    }

    /// The store refused a catch-up: wake up to try again after [`CATCH_UP_RETRY`].
    pub fn retry_catch_up(&mut self, now: Instant) {
        let at = now + CATCH_UP_RETRY;
        self.retry_at = Some(at);
        let next = at.min(self.timer.deadline());
        self.timer.as_mut().reset(next);
    }

    /// True unless a refused catch-up's retry is still to come.
    pub fn catch_up_due(&self, now: Instant) -> bool {
        self.retry_at.is_none_or(|at| at <= now)
    }
}

/// Waits for the timer of a connection that is behind; forever for one that is not. (A plain
/// poll function: an `async fn` would add its state to every session's future.)
pub(super) fn timer(watch: &mut Option<Box<StallWatch>>) -> impl Future<Output = ()> + '_ {
    std::future::poll_fn(move |cx| match watch {
        Some(w) => w.timer.as_mut().poll(cx),
        None => Poll::Pending,
    })
}

impl Session {
    /// The connection's stall watch, started if it has none.
    pub(super) fn watch_stall(&mut self) -> &mut StallWatch {
        let timeout = self.hub.config.stall_timeout;
        self.stall
            .get_or_insert_with(|| StallWatch::new(timeout, Instant::now()))
    }

    /// Watches for a stall while the connection is behind (much output waits, or it lags),
    /// and forgets the watch once it has caught up completely.
    pub(super) fn watch_or_forget_stall(&mut self) {
        let lagging = self.conn.mailbox.is_lagging();
        if self.writer.pending() >= OUTPUT_HIGH || lagging {
            self.watch_stall();
        }
        let waiting = self.writer.has_pending();
        if let Some(watch) = &mut self.stall {
            watch.note_waiting(waiting, Instant::now());
        }
        if !lagging && !waiting && self.forward.is_none() {
            self.stall = None;
        }
    }

    /// After a write: a connection whose output still waits is behind, and the write was
    /// progress.
    pub(super) fn wrote(&mut self) {
        let waiting = self.writer.has_pending();
        if waiting || self.stall.is_some() {
            self.watch_stall().progress(waiting, Instant::now());
        }
    }

    pub(super) fn on_stall_timer(&mut self) {
        let waiting = self.writer.has_pending();
        let timeout = self.hub.config.stall_timeout;
        if let Some(watch) = &mut self.stall {
            let now = Instant::now();
            watch.note_waiting(waiting, now);
            watch.on_timer(timeout, now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STALL: Duration = Duration::from_secs(60);

    #[tokio::test(start_paused = true)]
    async fn a_stall_is_only_a_long_wait_without_progress() {
        let start = Instant::now();
        let mut watch = StallWatch::new(STALL, start);
        // Nothing waited for a minute: no stall, only a later look.
        watch.on_timer(STALL, start + STALL);
        assert!(!watch.is_stalled());
        // Output begins to wait 70 s in: the clock starts then, not at the start.
        watch.note_waiting(true, start + Duration::from_secs(70));
        watch.on_timer(STALL, start + Duration::from_secs(120));
        assert!(!watch.is_stalled());
        assert_eq!(watch.timer.deadline(), start + Duration::from_secs(130));
        // Progress moves the deadline.
        watch.progress(true, start + Duration::from_secs(125));
        watch.on_timer(STALL, start + Duration::from_secs(130));
        assert!(!watch.is_stalled());
        watch.on_timer(STALL, start + Duration::from_secs(185));
        assert!(watch.is_stalled());
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_catch_up_is_retried_after_a_second() {
        let start = Instant::now();
        let mut watch = StallWatch::new(STALL, start);
        assert!(watch.catch_up_due(start));
        watch.retry_catch_up(start);
        assert!(!watch.catch_up_due(start + Duration::from_millis(999)));
        assert_eq!(watch.timer.deadline(), start + CATCH_UP_RETRY);
        let mut watch = Some(watch);
        timer(&mut watch).await;
        assert_eq!(
            Instant::now(),
            start + CATCH_UP_RETRY,
            "woken for the retry"
        );
        assert!(watch.unwrap().catch_up_due(Instant::now()));
    }
}
