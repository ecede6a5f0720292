//! The signals the server handles, and what each one means: the one place to change that.
//!
//! SIGHUP reloads (the TLS certificate and key: renewed certificates are the normal case),
//! as for most daemons; it no longer stops the server. The other signals that would end the
//! process short of SIGKILL (SIGINT from Ctrl-C, SIGTERM from a service manager, SIGQUIT from
//! Ctrl-\) are caught and become a graceful shutdown, so that clients get their `BYE` and the
//! server's own PostgreSQL is stopped, not left behind. A second one during that shutdown
//! hurries it: clients are closed without their close grace, and PostgreSQL is still stopped
//! cleanly.

use futures::future::select_all;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio_util::sync::CancellationToken;

/// What the server does when a signal comes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Meaning {
    /// Stop accepting, close every client with `BYE`, stop what the server started, exit 0.
    Shutdown,
    /// Read the TLS certificate and key again; keep every connection.
    Reload,
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
        // The daemon convention. (A server in a terminal that closes keeps running: stop it
        // with Ctrl-C, or run it under a service manager.)
        "SIGHUP" => Meaning::Reload,
        _ => Meaning::Shutdown,
    }
}

/// The installed handlers. Install them early: a signal that comes before would kill the
/// process the default way, with no `BYE` and the managed PostgreSQL left running.
pub struct Signals {
    streams: Vec<(&'static str, Signal)>,
    /// What a reload does (set by [`Signals::on_reload`]).
    reload: Box<dyn Fn() + Send>,
}

impl Signals {
    /// Installs a handler for every signal in [`HANDLED`].
    pub fn install() -> std::io::Result<Signals> {
        let streams = HANDLED
            .iter()
            .map(|&(name, kind)| Ok((name, signal(kind)?)))
            .collect::<std::io::Result<_>>()?;
        Ok(Signals {
            streams,
            reload: Box::new(|| tracing::info!("SIGHUP received: nothing to reload")),
        })
    }

    /// What to do on [`Meaning::Reload`], from now on.
    pub fn on_reload(&mut self, reload: impl Fn() + Send + 'static) {
        self.reload = Box::new(reload);
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

    /// Completes on the first signal that means [`Meaning::Shutdown`], having logged it;
    /// reloads meanwhile.
    pub async fn shutdown(&mut self) {
        loop {
            match self.next().await {
                (name, Meaning::Shutdown) => {
                    tracing::info!("{name} received: shutting down");
                    return;
                }
                (_, Meaning::Reload) => (self.reload)(),
            }
        }
    }

    /// Cancels `stop` on the first stopping signal, then `hurry` on every later one (each
    /// logged): a second signal asks the shutdown under way to be quick. Reloads all along.
    pub async fn watch(mut self, stop: CancellationToken, hurry: CancellationToken) {
        self.shutdown().await;
        stop.cancel();
        loop {
            let name = match self.next().await {
                (_, Meaning::Reload) => {
                    (self.reload)();
                    continue;
                }
                (name, Meaning::Shutdown) => name,
            };
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
    fn sighup_reloads_and_every_other_signal_shuts_down() {
        for (name, _) in HANDLED {
            let expected = match name {
                "SIGHUP" => Meaning::Reload,
                _ => Meaning::Shutdown,
            };
            assert_eq!(meaning(name), expected, "{name}");
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
