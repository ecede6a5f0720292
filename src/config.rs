//! Server settings, and their defaults in one place.
//!
//! [`Config::default()`] is the table of defaults: the `linechat` binary takes every flag's
//! default from it, so the library and the binary cannot disagree. Tests and benchmarks that
//! want something else (the memory store, no flood limit) say so in their own `Config`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::accounts::Registration;

/// Which [`HistoryStore`](crate::store::HistoryStore) keeps messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StoreKind {
    /// In memory: bounded per room, gone on restart.
    Memory,
    /// In PostgreSQL: durable; `database_url`, or a private cluster under `data_dir`.
    #[default]
    Postgres,
}

/// Everything the server needs to know to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// The plain TCP listener's address (`None`: no plain listener).
    pub listen: Option<SocketAddr>,
    /// The TLS listener's address (`None`: no TLS listener); it needs `tls_cert` and `tls_key`.
    pub tls_listen: Option<SocketAddr>,
    /// The HTTP listener's address (`None`: none): the web page, `/ws`, `/healthz` and
    /// `/metrics`; https with `tls_cert` and `tls_key` when they are given.
    pub http_listen: Option<SocketAddr>,
    /// The certificate chain (PEM) the TLS listeners present; read again on SIGHUP.
    pub tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM); read again on SIGHUP.
    pub tls_key: Option<PathBuf>,
    /// Connections the kernel queues before they are accepted (0: the system's maximum).
    pub backlog: u32,
    pub store: StoreKind,
    /// Messages a plain `JOIN` replays.
    pub history_on_join: usize,
    /// Most messages one `HISTORY` page or `JOIN ... LAST n` returns.
    pub max_page: usize,
    /// Messages the memory store keeps per room.
    pub memory_history: usize,
    /// Bytes of messages the memory store keeps in all; past it the oldest go first.
    pub memory_store_bytes: usize,
    /// Most store page reads in progress at once, server-wide (`JOIN` replays, `HISTORY`,
    /// catch-ups): what is read is in memory until written out.
    pub max_page_reads: usize,
    /// Most rooms one connection may be in (0: unlimited).
    pub max_rooms_per_connection: usize,
    /// New rooms one address may make a minute, all of which may come at once (0:
    /// unlimited); loopback counts only if `limit_loopback`.
    pub new_rooms_per_minute: u32,
    /// Most rooms at once, server-wide (0: unlimited).
    pub max_rooms: usize,
    /// Longest accepted line in bytes, without its CR/LF.
    pub max_line: usize,
    /// Bytes of live traffic queued for one connection before it lags (and later catches up
    /// from the store).
    pub outbound_limit: usize,
    /// How long a connection may take none of the bytes waiting for it before it is closed
    /// as too slow.
    pub stall_timeout: Duration,
    /// How long a closing connection gets to take its last lines and `BYE`.
    pub close_grace: Duration,
    /// Idle time before TCP keepalive probes start (dead-peer detection).
    pub keepalive: Duration,
    /// Most connections at once (0: unlimited).
    pub max_connections: usize,
    /// Most connections from one address (0: unlimited); loopback counts only if
    /// `limit_loopback`.
    pub max_per_ip: usize,
    pub limit_loopback: bool,
    /// How long a connection may go without choosing a name (zero: forever).
    pub login_timeout: Duration,
    /// Refused lines a connection may cause before it is closed: a budget of this many,
    /// refilled continuously at this many a minute (0: unlimited).
    pub max_errors: u32,
    /// Lines a second one connection may send, on average (0: unlimited).
    pub rate: u32,
    /// Lines one connection may send at once, above the rate.
    pub burst: u32,
    /// Who may register a name: anyone (`REGISTER`), or only an operator.
    pub registration: Registration,
    /// Only registered names may join rooms, talk, read history and list.
    pub require_account: bool,
    /// How often a name's, and an address's, budget of wrong passwords gains one back (at
    /// most a minute). Not flags: tests that must not see a refill slow them down.
    pub name_guess_every: Duration,
    pub address_guess_every: Duration,
    /// PostgreSQL to use; `None` runs a private cluster under `data_dir`.
    pub database_url: Option<String>,
    /// Where the private cluster lives (zero-config mode).
    pub data_dir: PathBuf,
    /// Where the PostgreSQL programs are, if not found by searching.
    pub pg_bin_dir: Option<PathBuf>,
    /// Most connections in the database pool.
    pub pool_size: u32,
    /// Longest one database operation may take before it counts as unavailable.
    pub db_timeout: Duration,
    /// How long start-up retries an unreachable database (zero: forever).
    pub db_startup_timeout: Duration,
    /// How long a server sharing the database may go unheard before the others take it
    /// for dead: its members leave and its names are freed.
    pub node_timeout: Duration,
    /// The user the binary becomes after start-up when started as root (`None`: the
    /// managed cluster's `postgres`, or `nobody`; `root`: stay). The library ignores it.
    pub user: Option<String>,
}

impl Default for Config {
    /// The defaults of the `linechat` binary: durable history in a private PostgreSQL under
    /// `./linechat-data`, and limits meant for an open network.
    fn default() -> Self {
        Config {
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 7777))),
            tls_listen: None,
            http_listen: Some(SocketAddr::from(([127, 0, 0, 1], 7778))),
            tls_cert: None,
            tls_key: None,
            backlog: 0,
            store: StoreKind::Postgres,
            history_on_join: 50,
            max_page: 500,
            memory_history: 10_000,
            memory_store_bytes: 256 * 1024 * 1024,
            max_page_reads: 16,
            max_rooms_per_connection: 100,
            new_rooms_per_minute: 60,
            max_rooms: 100_000,
            max_line: 4096,
            outbound_limit: 1024 * 1024,
            stall_timeout: Duration::from_secs(60),
            close_grace: Duration::from_secs(5),
            keepalive: Duration::from_secs(60),
            max_connections: 16_384,
            max_per_ip: 64,
            limit_loopback: false,
            login_timeout: Duration::from_secs(60),
            max_errors: 30,
            rate: 20,
            burst: 40,
            registration: Registration::Open,
            require_account: false,
            name_guess_every: crate::accounts::guesses::NAME_EVERY,
            address_guess_every: crate::accounts::guesses::ADDRESS_EVERY,
            database_url: None,
            data_dir: PathBuf::from("linechat-data"),
            pg_bin_dir: None,
            pool_size: 8,
            db_timeout: Duration::from_secs(5),
            node_timeout: Duration::from_secs(10),
            db_startup_timeout: Duration::from_secs(60),
            user: None,
        }
    }
}

impl Config {
    /// Messages in one page of history (`HISTORY`, a `JOIN` replay, each page of a `SINCE`
    /// replay or a catch-up): `max_page`, lowered so that a page of the longest lines fits in
    /// `outbound_limit`. What a client asks for then never costs more than that at once.
    pub fn page_messages(&self) -> usize {
        let longest = self.max_line + crate::protocol::MESSAGE_LINE_OVERHEAD;
        self.max_page.min(self.outbound_limit / longest).max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_of_the_longest_lines_fits_the_outbound_limit() {
        let config = Config::default();
        let page = config.page_messages();
        assert_eq!(page, 246, "1 MiB of 4096-byte lines");
        assert!(page * (4096 + crate::protocol::MESSAGE_LINE_OVERHEAD) <= config.outbound_limit);
        let short_lines = Config {
            max_line: 200,
            ..Config::default()
        };
        assert_eq!(short_lines.page_messages(), 500, "--max-page decides");
        let tiny = Config {
            outbound_limit: 10,
            ..Config::default()
        };
        assert_eq!(tiny.page_messages(), 1, "never less than one message");
    }
}
