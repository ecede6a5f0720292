//! NICK's records of user names, gathered: one task takes every name waiting and upserts them
//! all in one statement (one commit), so that a crowd logging in at once (every client of a
//! restarted server) costs a few commits rather than one each, and every name is recorded
//! before its first message, whose batch then need not record it (`batch.rs`).

use std::sync::Weak;
use std::time::Duration;

use bb8::Pool;
use tokio::sync::mpsc;

use super::pool::{Busy, PgManager, UPSERT_USERS};
use crate::store::health::Health;

/// Names waiting to be recorded. A NICK that finds the queue full is not recorded (its first
/// message records it): a flood of NICKs costs the server nothing beyond this.
const WAITING: usize = 4096;
/// Most names one statement records.
const PER_STATEMENT: usize = 1024;

/// The sending side; the task ends when it is dropped.
pub(super) struct UserRecorder {
    tx: mpsc::Sender<String>,
}

impl UserRecorder {
    pub(super) fn spawn(pool: Pool<PgManager>, health: Weak<Health>, timeout: Duration) -> Self {
        let (tx, rx) = mpsc::channel(WAITING);
        tokio::spawn(run(pool, health, timeout, rx));
        UserRecorder { tx }
    }

    /// Queues `nick` to be recorded, unless the queue is full.
    pub(super) fn record(&self, nick: &str) {
        let _ = self.tx.try_send(nick.to_string());
    }
}

async fn run(
    pool: Pool<PgManager>,
    health: Weak<Health>,
    timeout: Duration,
    mut rx: mpsc::Receiver<String>,
) {
    let mut names = Vec::with_capacity(PER_STATEMENT);
    while rx.recv_many(&mut names, PER_STATEMENT).await > 0 {
        let up = health.upgrade().is_some_and(|h| h.is_up());
        if !up {
            // Recorded by their first messages instead.
            names.clear();
            continue;
        }
        // Each once (an upsert may not touch a row twice), in one order for every server.
        names.sort_unstable();
        names.dedup();
        let record = async {
            let mut conn = pool.get().await.map_err(|e| e.to_string())?;
            let busy = Busy::new(&mut conn);
            let recorded = busy.0.query(UPSERT_USERS, &[&names]).await;
            recorded.map_err(|e| e.to_string())?;
            busy.done();
            Ok::<(), String>(())
        };
        match tokio::time::timeout(timeout, record).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::debug!(users = names.len(), "could not record users: {e}"),
            Err(_) => tracing::debug!(users = names.len(), "recording users timed out"),
        }
        names.clear();
    }
}
