//! Server settings. `main.rs` fills them from flags and environment variables.

use std::net::SocketAddr;
use std::time::Duration;

/// Which [`HistoryStore`](crate::store::HistoryStore) keeps messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StoreKind {
    /// In memory: bounded per room, gone on restart.
    #[default]
    Memory,
}

impl StoreKind {
    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            StoreKind::Memory => "memory",
        }
    }
}

/// Everything the server needs to know to run.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub store: StoreKind,
    /// Messages a plain `JOIN` replays.
    pub history_on_join: usize,
    /// Most messages one `HISTORY` page or `JOIN ... LAST n` returns.
    pub max_page: usize,
    /// Messages the memory store keeps per room.
    pub memory_history: usize,
    /// Longest accepted line in bytes, without its CR/LF.
    pub max_line: usize,
    /// Live messages and presence lines queued for one connection before it is too slow.
    pub outbound_queue: usize,
    /// How long a closing connection gets to take its last lines and `BYE`.
    pub close_grace: Duration,
    /// Idle time before TCP keepalive probes start (dead-peer detection).
    pub keepalive: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 7777)),
            store: StoreKind::Memory,
            history_on_join: 50,
            max_page: 500,
            memory_history: 10_000,
            max_line: 4096,
            outbound_queue: 1024,
            close_grace: Duration::from_secs(5),
            keepalive: Duration::from_secs(60),
        }
    }
}
