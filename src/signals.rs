//! The signals the server handles, and what each one means: the one place to change that.
//!
//! Everything that would end the process short of SIGKILL (SIGINT from Ctrl-C, SIGTERM from
//! a service manager, SIGHUP from a closed terminal, SIGQUIT from Ctrl-\) is caught and
//! becomes a graceful shutdown, so that clients get their `BYE` and the server's own
//! PostgreSQL is stopped, not left behind. A second one during that shutdown hurries it:
//! clients are closed without their close grace, and PostgreSQL is still stopped cleanly.

use futures::future::select_all;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio_util::sync::CancellationToken;

/// What the server does when a signal comes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Meaning {
    /// Stop accepting, close every client with `BYE`, stop what the server started, exit 0.
    Shutdown,
}

/// The signals handled, by name.
const HANDLED: [(&str, SignalKind); 4] = [
    ("SIGINT", SignalKind::interrupt()),
    ("SIGTERM", SignalKind::terminate()),
    ("SIGHUP", SignalKind::hangup()),
    ("SIGQUIT", SignalKind::quit()),
];

/// What `name` (one of [`HANDLED`]) means.
fn meaning(name: &str) -> Meaning {
    match name {
        // A closed terminal ends the server like the others, cleanly. (Once SIGHUP means
        // "reload", this is where it says so.)
        "SIGHUP" => Meaning::Shutdown,
        _ => Meaning::Shutdown,
    }
}

/// The installed handlers. Install them early: a signal that comes before would kill the
/// process the default way, with no `BYE` and the managed PostgreSQL left running.
pub struct Signals {
    streams: Vec<(&'static str, Signal)>,
}

impl Signals {
    /// Installs a handler for every signal in [`HANDLED`].
    pub fn install() -> std::io::Result<Signals> {
        let streams = HANDLED
            .iter()
            .map(|&(name, kind)| Ok((name, signal(kind)?)))
            .collect::<std::io::Result<_>>()?;
        Ok(Signals { streams })
    }

    /// The next signal, by name, and what it means.
    pub async fn next(&mut self) -> (&'static str, Meaning) {
        let waits = self.streams.iter_mut().map(|(name, stream)| {
            Box::pin(async move {
                stream.recv().await;
                *name
            })
        });
        let (name, _, _) = select_all(waits).await;
        (name, meaning(name))
    }

    /// Completes on the first signal that means [`Meaning::Shutdown`], having logged it.
    /// (A meaning that does not end the server, such as a reload, is to be acted on here,
    /// in a loop around `next`.)
    pub async fn shutdown(&mut self) {
        let (name, meaning) = self.next().await;
        match meaning {
            Meaning::Shutdown => tracing::info!("{name} received: shutting down"),
        }
    }

    /// Cancels `stop` on the first stopping signal, then `hurry` on every later one (each
    /// logged): a second signal asks the shutdown under way to be quick.
    pub async fn watch(mut self, stop: CancellationToken, hurry: CancellationToken) {
        self.shutdown().await;
        stop.cancel();
        loop {
            let (name, _) = self.next().await;
            tracing::warn!(
                "{name} received during shutdown: closing clients now, without their close \
                 grace; then stopping what the server started"
            );
            hurry.cancel();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_signal_that_would_end_the_process_shuts_down() {
        for (name, _) in HANDLED {
            assert_eq!(meaning(name), Meaning::Shutdown, "{name}");
        }
    }

    #[tokio::test]
    async fn a_raised_signal_is_named() {
        let mut signals = Signals::install().unwrap();
        // SAFETY: raise sends a signal to this process, whose handler is now installed.
        unsafe { libc::raise(libc::SIGQUIT) };
        let (name, meaning) = signals.next().await;
        assert_eq!((name, meaning), ("SIGQUIT", Meaning::Shutdown));
    }
}
