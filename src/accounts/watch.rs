//! The name watch: a guest name that gets registered (on any server sharing the database,
//! or by `linechat account add`) is not kept by the guest who held it, and a connection
//! logged in to an account that was removed, or whose password was changed elsewhere, does
//! not stay logged in. Every [`CHECK_EVERY`], the names held here are looked up in the store
//! in one query, and such connections are closed with `BYE` saying why.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::hub::{Holding, Hub};
use crate::mailbox::{ConnId, Eviction};

/// How often held names are checked against the store.
pub const CHECK_EVERY: Duration = Duration::from_secs(2);

/// Runs the watch until aborted.
pub async fn run(hub: Arc<Hub>) {
    let mut ticks = tokio::time::interval(CHECK_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let held = hub.nicks.held();
        if held.is_empty() {
            continue;
        }
        let keys: Vec<String> = held.iter().map(|(key, _, _)| key.clone()).collect();
        // An outage skips a round: nothing is known, nobody is closed.
        let Ok(registered) = hub.accounts.store.registered_among(&keys).await else {
            continue;
        };
        for (conn, why) in evictions(&held, &registered) {
            if let Some(mailbox) = hub.mailboxes.get(conn) {
                mailbox.evict(why);
            }
        }
    }
}

/// Which connections go, given the names held here and which of them are registered (with
/// their hashes).
pub fn evictions(
    held: &[(String, ConnId, Holding)],
    registered: &HashMap<String, String>,
) -> Vec<(ConnId, Eviction)> {
    held.iter()
        .filter_map(|(key, conn, holding)| {
            let now = registered.get(key);
            let why = match holding {
                Holding::Guest => now.map(|_| Eviction::NameRegistered),
                Holding::Changing => None,
                Holding::Account(hash) => match now {
                    Some(now) if **hash == **now => None,
                    _ => Some(Eviction::AccountChanged),
                },
            };
            why.map(|why| (*conn, why))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn who_goes() {
        let held = vec![
            ("squatter".to_string(), 1, Holding::Guest),
            ("guest".to_string(), 2, Holding::Guest),
            ("owner".to_string(), 3, Holding::Account("h1".into())),
            ("changed".to_string(), 4, Holding::Account("h1".into())),
            ("removed".to_string(), 5, Holding::Account("h1".into())),
            ("registering".to_string(), 6, Holding::Changing),
        ];
        let registered: HashMap<String, String> = [
            ("squatter", "h9"),
            ("owner", "h1"),
            ("changed", "h2"),
            ("registering", "h3"),
        ]
        .into_iter()
        .map(|(k, h)| (k.to_string(), h.to_string()))
        .collect();
        let mut gone = evictions(&held, &registered);
        gone.sort_by_key(|(conn, _)| *conn);
        assert_eq!(
            gone,
            [
                (1, Eviction::NameRegistered),
                (4, Eviction::AccountChanged),
                (5, Eviction::AccountChanged)
            ]
        );
    }
}
