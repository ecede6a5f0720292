//! Whether the database is believed reachable. Once an operation has shown that it is not
//! (no connection could be made, no answer within `--db-timeout`, the connection broke),
//! every operation fails at once instead of each waiting out the timeout, until a single
//! background probe reaches the database again. Transitions are logged once each.

use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::StoreError;

/// The first wait between probes of a database that is down; doubled after each failed probe.
pub const PROBE_FIRST: Duration = Duration::from_millis(100);
/// The longest wait between probes: how long, at most, the server takes to notice that the
/// database is back (plus one connection attempt).
pub const PROBE_CAP: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Up,
    Down { since: Instant, reason: String },
}

/// The store's health: up, or down since a failure, with its reason.
#[derive(Debug)]
pub struct Health {
    state: watch::Sender<State>,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            state: watch::Sender::new(State::Up),
        }
    }
}

impl Health {
    pub fn is_up(&self) -> bool {
        *self.state.borrow() == State::Up
    }

    /// `Ok` while up; the refusal to give at once while down.
    pub fn check(&self) -> Result<(), StoreError> {
        match &*self.state.borrow() {
            State::Up => Ok(()),
            State::Down { since, reason } => Err(StoreError::Unavailable(format!(
                "the database has been unreachable for {}s ({reason}); the server retries by itself",
                since.elapsed().as_secs()
            ))),
        }
    }

    /// Records a failure that shows the database unreachable. True if it was up until now.
    pub fn mark_down(&self, reason: &str) -> bool {
        self.state.send_if_modified(|state| {
            if *state != State::Up {
                return false;
            }
            tracing::warn!(
                "PostgreSQL is unreachable ({reason}): store operations fail at once until a \
                 background probe reaches it"
            );
            *state = State::Down {
                since: Instant::now(),
                reason: reason.to_string(),
            };
            true
        })
    }

    /// Records that the database was reached again. True if it was down until now.
    pub fn mark_up(&self) -> bool {
        self.state.send_if_modified(|state| {
            let State::Down { since, .. } = state else {
                return false;
            };
            tracing::info!(
                "PostgreSQL is reachable again, after {:.1}s; serving normally",
                since.elapsed().as_secs_f32()
            );
            *state = State::Up;
            true
        })
    }

    /// Completes when the store is down (at once if it is): an operation waiting for a
    /// connection races this, so that a failure seen elsewhere ends its wait.
    pub async fn down(&self) {
        let mut watch = self.state.subscribe();
        let _ = watch.wait_for(|s| *s != State::Up).await;
    }

    /// Completes at each transition to down; `false` once the health is gone. For the probe.
    pub fn watch(&self) -> HealthWatch {
        HealthWatch(self.state.subscribe())
    }
}

/// What the background probe waits on.
pub struct HealthWatch(watch::Receiver<State>);

impl HealthWatch {
    /// Waits until the store is down; `false` if the store was dropped first.
    pub async fn down(&mut self) -> bool {
        self.0.wait_for(|s| *s != State::Up).await.is_ok()
    }
}

/// Waits between probes: doubling from a first wait up to a cap.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    cap: Duration,
}

impl Backoff {
    pub fn new(first: Duration, cap: Duration) -> Self {
        Backoff {
            next: first.min(cap),
            cap,
        }
    }

    /// The wait before the next attempt.
    pub fn next_wait(&mut self) -> Duration {
        let wait = self.next;
        self.next = (wait * 2).min(self.cap);
        wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_fail_at_once_only_while_down() {
        let health = Health::default();
        assert!(health.is_up());
        assert!(health.check().is_ok());
        assert!(
            health.mark_down("connection refused"),
            "the first failure turns it down"
        );
        assert!(
            !health.mark_down("connection refused"),
            "later ones change nothing"
        );
        let refusal = health.check().unwrap_err().to_string();
        assert!(refusal.contains("connection refused"), "{refusal}");
        assert!(health.mark_up(), "a successful probe turns it up");
        assert!(!health.mark_up());
        assert!(health.check().is_ok());
    }

    #[tokio::test]
    async fn a_wait_for_a_connection_ends_when_the_store_goes_down() {
        let health = std::sync::Arc::new(Health::default());
        let waiting = tokio::spawn({
            let health = health.clone();
            async move { health.down().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        health.mark_down("no answer");
        waiting.await.unwrap();
        // Already down: at once.
        health.down().await;
    }

    #[tokio::test]
    async fn the_probe_wakes_at_each_outage_and_ends_with_the_store() {
        let health = Health::default();
        let mut watch = health.watch();
        health.mark_down("refused");
        assert!(watch.down().await);
        health.mark_up();
        health.mark_down("refused again");
        assert!(watch.down().await);
        health.mark_up();
        drop(health);
        assert!(!watch.down().await, "no store, no probe");
    }

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let mut backoff = Backoff::new(PROBE_FIRST, PROBE_CAP);
        let waits: Vec<u128> = (0..7).map(|_| backoff.next_wait().as_millis()).collect();
        assert_eq!(waits, [100, 200, 400, 800, 1600, 2000, 2000]);
    }
}
