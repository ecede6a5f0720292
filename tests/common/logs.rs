//! The log of an in-process server, for the rare claim that a client cannot observe (a store
//! read that failed and is retried later, say, is deliberately invisible to the client).
//! Tests prefer what a client sees; they read the log only where nothing else shows it.

use std::io;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::subscriber::DefaultGuard;

use super::PATIENCE;

/// What the server logs at `info` and above, from [`Logs::capture`] until this is dropped.
///
/// The subscriber is this thread's default, not a global one. A `#[tokio::test]` runs on a
/// current-thread runtime, so every task of the in-process server it starts (sessions, the
/// writer, the database pool) runs on the test's own thread and logs here, while the servers
/// of other tests, on their own threads, do not.
pub struct Logs {
    text: Arc<Mutex<String>>,
    _guard: DefaultGuard,
}

/// Appends formatted events to the shared text.
struct Sink(Arc<Mutex<String>>);

impl io::Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0
            .lock()
            .unwrap()
            .push_str(&String::from_utf8_lossy(buf));
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Logs {
    /// Starts capturing this thread's events.
    pub fn capture() -> Logs {
        let text = Arc::new(Mutex::new(String::new()));
        let sink = text.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::INFO)
            .with_ansi(false)
            .with_writer(move || Sink(sink.clone()))
            .finish();
        Logs {
            text,
            _guard: tracing::subscriber::set_default(subscriber),
        }
    }

    /// How many logged lines contain `needle`.
    pub fn count(&self, needle: &str) -> usize {
        self.text
            .lock()
            .unwrap()
            .lines()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// Waits until at least `n` logged lines contain `needle`; panics, showing the log, if
    /// that takes longer than [`PATIENCE`] (a guard against hangs, not a timed assertion).
    pub async fn wait_for(&self, needle: &str, n: usize) {
        let deadline = Instant::now() + PATIENCE;
        while self.count(needle) < n {
            assert!(
                Instant::now() < deadline,
                "the server logged {needle:?} {} times, not {n}:\n{}",
                self.count(needle),
                self.text.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
