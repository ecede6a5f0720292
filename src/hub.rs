//! The state every session shares: settings, rooms, names, the store and its writer.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::accounts::{AccountStore, Accounts};
use crate::admission::{LoginWatch, NewRoomLimit};
use crate::budget::Limit;
use crate::bus::{self, Bus};
use crate::cluster::{self, Cluster};
use crate::config::Config;
use crate::fanout::Fanout;
use crate::mailbox::{ConnId, Mailboxes};
use crate::rooms::Rooms;
use crate::store::{HistoryStore, Writer};

/// Messages waiting for the writer before `SAY` waits too.
const WRITER_QUEUE: usize = 8192;
/// Most messages stored (and then fanned out) together. A batch of 1024 typical lines is
/// about 100 KiB, well within a member's default outbound limit of 1 MiB.
const WRITER_BATCH: usize = 1024;

/// Shared server state.
pub struct Hub {
    pub config: Config,
    /// Flood control per connection (`--rate`, `--burst`); `None`: unlimited.
    pub flood_limit: Option<Limit>,
    /// Refused lines per connection (`--max-errors`); `None`: unlimited.
    pub error_limit: Option<Limit>,
    pub rooms: Arc<Rooms>,
    pub nicks: Nicks,
    pub store: Arc<dyn HistoryStore>,
    /// Registered names, password checks and guessing budgets.
    pub accounts: Accounts,
    /// Every `SAY` goes through it: stored, then fanned out to the room, then acknowledged.
    pub writer: Writer<ConnId>,
    /// Connections that have not chosen a name yet, with their deadlines.
    pub logins: Arc<LoginWatch>,
    /// Every live connection's mailbox: how shutdown wakes them.
    pub mailboxes: Arc<Mailboxes>,
    /// Names and presence shared with the other servers on the database; `None` for a
    /// store of this server's own (memory).
    pub cluster: Option<Arc<Cluster>>,
    /// New rooms per address (`--new-rooms-per-minute`).
    pub new_rooms: NewRoomLimit,
    /// Store page reads in progress, server-wide (`--max-page-reads`): a page read is held
    /// in memory until it is written out, so 600 clients asking at once wait their turn.
    pub page_reads: tokio::sync::Semaphore,
    /// Cancelled by a second stopping signal: closing sessions stop waiting out
    /// `--close-grace`.
    pub hurry: CancellationToken,
    /// Ends the delivery of what servers sharing the store stored (`bus.rs`) with the hub.
    delivering: CancellationToken,
    next_conn: AtomicU64,
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.delivering.cancel();
        if let Some(cluster) = &self.cluster {
            cluster.stop();
        }
    }
}

impl Hub {
    /// Starts the writer for `store`, publishing to the rooms.
    pub fn start(
        config: Config,
        store: Arc<dyn HistoryStore>,
        accounts: Arc<dyn AccountStore>,
    ) -> (Arc<Hub>, JoinHandle<()>) {
        let rooms = Arc::new(Rooms::with_max_rooms(config.max_rooms));
        let delivering = CancellationToken::new();
        let (writer, writer_task) = if store.is_shared() {
            // Stored batches, ours and other servers', are delivered as the store commits
            // them.
            let (bus, shared) = Bus::new(config.db_timeout);
            tokio::spawn(bus::deliver(
                shared,
                store.clone(),
                rooms.clone(),
                delivering.clone(),
            ));
            Writer::spawn(
                store.clone(),
                bus,
                WRITER_QUEUE,
                WRITER_BATCH,
                config.db_timeout,
            )
        } else {
            Writer::spawn(
                store.clone(),
                Fanout::new(rooms.clone()),
                WRITER_QUEUE,
                WRITER_BATCH,
                config.db_timeout,
            )
        };
        let mailboxes = Arc::new(Mailboxes::default());
        let cluster = store.directory().map(|_| {
            let cluster = Cluster::new(config.node_timeout, config.db_timeout);
            tokio::spawn(cluster::run(
                cluster.clone(),
                store.clone(),
                mailboxes.clone(),
            ));
            cluster
        });
        let hub = Hub {
            flood_limit: Limit::per_second(config.rate, config.burst),
            error_limit: Limit::per_minute(config.max_errors),
            logins: Arc::new(LoginWatch::new(config.login_timeout)),
            new_rooms: NewRoomLimit::new(config.new_rooms_per_minute, config.limit_loopback),
            page_reads: tokio::sync::Semaphore::new(config.max_page_reads.max(1)),
            accounts: Accounts::new(accounts, &config),
            config,
            rooms,
            nicks: Nicks::default(),
            store,
            writer,
            mailboxes,
            cluster,
            hurry: CancellationToken::new(),
            delivering,
            next_conn: AtomicU64::new(1),
        };
        (Arc::new(hub), writer_task)
    }

    pub fn next_conn_id(&self) -> ConnId {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }
}

/// What a held name is to the name watch ([`crate::accounts::watch`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holding {
    /// A guest name: the connection goes if the name gets registered.
    Guest,
    /// Being registered, or its password changed, by its holder right now: left alone.
    Changing,
    /// Logged in to an account, whose password hash was this: the connection goes if the
    /// account is removed or its password changed elsewhere.
    Account(Arc<str>),
}

/// Nicks held by live connections. Compared without regard to ASCII case, so `Alice` and
/// `alice` cannot both be online.
#[derive(Default)]
pub struct Nicks {
    owners: Mutex<HashMap<String, (ConnId, Holding)>>,
}

impl Nicks {
    /// Takes `new` for `conn`, held as `holding`, giving up `old` if it had one. False if
    /// another holds `new`.
    pub fn claim_as(&self, new: &str, old: Option<&str>, conn: ConnId, holding: Holding) -> bool {
        let key = new.to_ascii_lowercase();
        let mut owners = self.owners.lock().expect("nicks lock");
        if owners.get(&key).is_some_and(|(owner, _)| *owner != conn) {
            return false;
        }
        if let Some(old) = old {
            owners.remove(&old.to_ascii_lowercase());
        }
        owners.insert(key, (conn, holding));
        true
    }

    /// Changes how `conn` holds `nick` (if it does).
    pub fn set_holding(&self, nick: &str, conn: ConnId, holding: Holding) {
        let mut owners = self.owners.lock().expect("nicks lock");
        if let Some(entry) = owners.get_mut(&nick.to_ascii_lowercase()) {
            if entry.0 == conn {
                entry.1 = holding;
            }
        }
    }

    /// Every held name (lower-case), its connection and how it is held.
    pub fn held(&self) -> Vec<(String, ConnId, Holding)> {
        let owners = self.owners.lock().expect("nicks lock");
        owners
            .iter()
            .map(|(key, (conn, holding))| (key.clone(), *conn, holding.clone()))
            .collect()
    }

    /// How many names are held.
    pub fn len(&self) -> usize {
        self.owners.lock().expect("nicks lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// True if a connection other than `conn` holds `nick`.
    pub fn is_held_by_other(&self, nick: &str, conn: ConnId) -> bool {
        let owners = self.owners.lock().expect("nicks lock");
        owners
            .get(&nick.to_ascii_lowercase())
            .is_some_and(|(owner, _)| *owner != conn)
    }

    /// Gives up a nick when its connection ends.
    pub fn release(&self, nick: &str, conn: ConnId) {
        let key = nick.to_ascii_lowercase();
        let mut owners = self.owners.lock().expect("nicks lock");
        if owners.get(&key).is_some_and(|(owner, _)| *owner == conn) {
            owners.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Nicks {
        fn claim_guest(&self, new: &str, old: Option<&str>, conn: ConnId) -> bool {
            self.claim_as(new, old, conn, Holding::Guest)
        }
    }

    #[test]
    fn a_nick_is_held_by_one_connection_whatever_its_case() {
        let nicks = Nicks::default();
        assert!(nicks.claim_guest("Alice", None, 1));
        assert!(!nicks.claim_guest("alice", None, 2));
        assert!(
            nicks.claim_guest("ALICE", Some("Alice"), 1),
            "its holder may change the case"
        );
        nicks.release("alice", 2);
        assert!(
            !nicks.claim_guest("alice", None, 2),
            "only the holder releases it"
        );
        nicks.release("ALICE", 1);
        assert!(nicks.claim_guest("alice", None, 2));
    }
}
