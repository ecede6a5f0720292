//! Flood control: a connection over `--rate` (after a burst of `--burst`) is simply not read
//! until its next token comes, so what it floods waits in its own socket.

use std::pin::Pin;

use tokio::time::Sleep;

use crate::budget::Millis;

use super::Session;

impl Session {
    /// True if the next line may be read now (`--rate` a second after a burst of `--burst`).
    /// If not, arms the timer after which it may: until then the connection is not read, so
    /// a flood waits in the client's socket (TCP backpressure), costing the server nothing.
    pub(super) fn within_flood_budget(&mut self) -> bool {
        let Some(limit) = &self.hub.flood_limit else {
            return true;
        };
        if self.flood_wait.is_some() {
            return false;
        }
        let wait = self.flood.until_next(limit, Millis::now());
        if wait.is_zero() {
            return true;
        }
        self.flood_wait = Some(Box::pin(tokio::time::sleep(wait)));
        false
    }

    /// Every line read takes a token: it was only read because one was there.
    pub(super) fn spend_flood_token(&mut self) {
        if let Some(limit) = &self.hub.flood_limit {
            self.flood.try_take(limit, Millis::now());
        }
    }
}

/// Fires when the flood wait is over; pending while there is none.
pub(super) fn flood_timer(
    wait: &mut Option<Pin<Box<Sleep>>>,
) -> impl std::future::Future<Output = ()> + '_ {
    std::future::poll_fn(move |cx| match wait {
        Some(sleep) => std::future::Future::poll(sleep.as_mut(), cx),
        None => std::task::Poll::Pending,
    })
}
