//! The state every session shares: settings, rooms, nicks, the store and its writer.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use tokio::task::JoinHandle;

use crate::config::Config;
use crate::rooms::{ConnId, Inbox, Rooms};
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
    /// Connections that have not chosen a name yet, with their deadlines.
    pub logins: Arc<LoginWatch>,
    next_conn: AtomicU64,
}

impl Hub {
    /// Starts the writer for `store`.
    pub fn start(config: Config, store: Arc<dyn HistoryStore>) -> (Arc<Hub>, JoinHandle<()>) {
        let config_login_timeout = config.login_timeout;
        let rooms = Arc::new(Rooms::new());
        let (writer, writer_task) =
            Writer::spawn(store.clone(), rooms.clone(), WRITER_QUEUE, WRITER_BATCH);
        let hub = Hub {
            config,
            rooms,
            nicks: Nicks::default(),
            store,
            logins: Arc::new(LoginWatch::new(config_login_timeout)),
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

/// The login timeout for every connection at once: one queue of deadlines (the timeout is
/// the same for all, so arrival order is deadline order) checked by one task, instead of a
/// timer per connection.
pub struct LoginWatch {
    timeout: Duration,
    queue: Mutex<VecDeque<(Instant, Arc<Inbox>)>>,
}

impl LoginWatch {
    fn new(timeout: Duration) -> Self {
        LoginWatch {
            timeout,
            queue: Mutex::new(VecDeque::new()),
        }
    }

    /// Starts the clock for a new connection.
    pub fn watch(&self, inbox: &Arc<Inbox>) {
        if !self.timeout.is_zero() {
            let deadline = Instant::now() + self.timeout;
            let mut queue = self.queue.lock().expect("login watch lock");
            queue.push_back((deadline, inbox.clone()));
        }
    }

    /// Checks deadlines until the watch is dropped; run as one task per server.
    pub async fn run(self: Arc<Self>) {
        if self.timeout.is_zero() {
            return;
        }
        let tick = (self.timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
        loop {
            tokio::time::sleep(tick).await;
            let now = Instant::now();
            let mut queue = self.queue.lock().expect("login watch lock");
            while queue.front().is_some_and(|(deadline, _)| *deadline <= now) {
                if let Some((_, inbox)) = queue.pop_front() {
                    inbox.expire_login();
                }
            }
            // Connections that chose a name need no watching: let them go now rather than
            // at their deadline, so thousands of new connections cost no memory here.
            queue.retain(|(_, inbox)| !inbox.is_named());
            if queue.capacity() > 64 && queue.capacity() > 4 * queue.len() {
                queue.shrink_to_fit();
            }
        }
    }
}
