//! The state every session shares: settings, rooms, nicks, the store and its writer.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::task::JoinHandle;

use crate::config::Config;
use crate::rooms::{ConnId, Rooms};
use crate::store::{HistoryStore, Writer};

/// Messages waiting for the writer before `SAY` waits too.
const WRITER_QUEUE: usize = 8192;
/// Most messages stored (and then fanned out) together. A batch of 1024 typical lines is
/// about 100 KiB, well within a member's default outbound budget of 1 MiB.
const WRITER_BATCH: usize = 1024;

/// Shared server state.
pub struct Hub {
    pub config: Config,
    pub rooms: Arc<Rooms>,
    pub nicks: Nicks,
    pub store: Arc<dyn HistoryStore>,
    pub writer: Writer,
    next_conn: AtomicU64,
}

impl Hub {
    /// Starts the writer for `store`.
    pub fn start(config: Config, store: Arc<dyn HistoryStore>) -> (Arc<Hub>, JoinHandle<()>) {
        let rooms = Arc::new(Rooms::new());
        let (writer, writer_task) =
            Writer::spawn(store.clone(), rooms.clone(), WRITER_QUEUE, WRITER_BATCH);
        let hub = Hub {
            config,
            rooms,
            nicks: Nicks::default(),
            store,
            writer,
            next_conn: AtomicU64::new(1),
        };
        (Arc::new(hub), writer_task)
    }

    pub fn next_conn_id(&self) -> ConnId {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }
}

/// Nicks held by live connections. Compared without regard to ASCII case, so `Alice` and
/// `alice` cannot both be online.
#[derive(Default)]
pub struct Nicks {
    owners: Mutex<HashMap<String, ConnId>>,
}

impl Nicks {
    /// Takes `new` for `conn`, giving up `old` if it had one. False if another holds `new`.
    pub fn claim(&self, new: &str, old: Option<&str>, conn: ConnId) -> bool {
        let key = new.to_ascii_lowercase();
        let mut owners = self.owners.lock().expect("nicks lock");
        if owners.get(&key).is_some_and(|&owner| owner != conn) {
            return false;
        }
        if let Some(old) = old {
            owners.remove(&old.to_ascii_lowercase());
        }
        owners.insert(key, conn);
        true
    }

    /// Gives up a nick when its connection ends.
    pub fn release(&self, nick: &str, conn: ConnId) {
        let key = nick.to_ascii_lowercase();
        let mut owners = self.owners.lock().expect("nicks lock");
        if owners.get(&key) == Some(&conn) {
            owners.remove(&key);
        }
    }
}
