//! `/healthz`'s answer: whether the store answers, asked at most once a second however
//! often the probe comes (a load balancer's, or anyone's: the answer is shared).

use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::store::HistoryStore;

/// How long an answer is reused.
const FRESH_FOR: Duration = Duration::from_secs(1);

/// The last probe's answer, and when it came.
#[derive(Default)]
pub struct Readiness {
    last: Mutex<Option<(Instant, Result<(), String>)>>,
}

impl Readiness {
    /// `Ok` if the store answered a probe within the last second (or answers one now); the
    /// reason otherwise. One probe at a time: callers meanwhile wait for its answer.
    pub async fn check(&self, store: &dyn HistoryStore) -> Result<(), String> {
        let mut last = self.last.lock().await;
        if let Some((at, answer)) = &*last {
            if at.elapsed() < FRESH_FOR {
                return answer.clone();
            }
        }
        let answer = store.ping().await.map_err(|e| format!("not ready: {e}"));
        *last = Some((Instant::now(), answer.clone()));
        answer
    }
}
