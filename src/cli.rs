//! The binary's flags: every one with its environment variable and its default from
//! [`Config::default()`], turned into a [`Config`]; and the `account` subcommand.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::LazyLock;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use linechat::accounts::admin::Action;
use linechat::accounts::Registration;
use linechat::{Config, StoreKind};

/// The defaults every flag shows and falls back to.
static DEFAULTS: LazyLock<Config> = LazyLock::new(Config::default);

/// A chat-room server that speaks a plain-text line protocol over TCP.
///
/// Try it with `nc 127.0.0.1 7777`. Every flag can also be set by the environment variable
/// shown with it.
#[derive(Parser, Debug)]
#[command(version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Address to listen on for plain TCP, or `off` for no plain listener (then give
    /// --tls-listen). Plain TCP carries everything, passwords too, in clear text: keep it on
    /// loopback, or off, on a network.
    #[arg(long, env = "LINECHAT_LISTEN", default_value_t = Listen(DEFAULTS.listen))]
    listen: Listen,

    /// Address to listen on for TLS (e.g. 0.0.0.0:7443); needs --tls-cert and --tls-key.
    /// Off unless given.
    #[arg(long, env = "LINECHAT_TLS_LISTEN", requires_all = ["tls_cert", "tls_key"])]
    tls_listen: Option<SocketAddr>,

    /// Address for HTTP, or `off`: the chat page (open it in a browser), `/ws` (the protocol
    /// over WebSocket), `/healthz` and `/metrics`. Served as https (and wss) when
    /// --tls-cert and --tls-key are given.
    #[arg(long, env = "LINECHAT_HTTP_LISTEN", default_value_t = Listen(DEFAULTS.http_listen))]
    http_listen: Listen,

    /// The certificate chain the TLS listener and the https listener present (PEM, the
    /// server's certificate first). Read again on SIGHUP.
    #[arg(long, env = "LINECHAT_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,

    /// The certificate's private key (PEM: PKCS#8, PKCS#1 or SEC1). Read again on SIGHUP.
    #[arg(long, env = "LINECHAT_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,

    /// Connections the kernel queues for the server before it accepts them (0: the system's
    /// maximum, net.core.somaxconn).
    #[arg(long, env = "LINECHAT_BACKLOG", default_value_t = DEFAULTS.backlog)]
    backlog: u32,

    /// The user to run as once the port is bound and the store is open, when started as
    /// root: by default `postgres` with the server's own PostgreSQL (it must stay able to
    /// restart and stop it), `nobody` otherwise. `root` stays root.
    #[arg(long, env = "LINECHAT_USER")]
    user: Option<String>,

    /// Where history is kept.
    #[arg(long, env = "LINECHAT_STORE", value_enum, default_value_t = Store::from(DEFAULTS.store))]
    store: Store,

    /// PostgreSQL connection string (`postgresql://user@host/db` or `host=... dbname=...`).
    /// TLS as libpq: `sslmode=disable|prefer|require|verify-ca|verify-full` (default prefer),
    /// `sslrootcert=<CA PEM file>|system`. Without it, the server runs its own PostgreSQL
    /// under --data-dir.
    #[arg(long, env = "DATABASE_URL")]
    database_url: Option<String>,

    /// Where the server's own PostgreSQL cluster lives when no --database-url is given.
    #[arg(long, env = "LINECHAT_DATA_DIR", default_value_os_t = DEFAULTS.data_dir.clone())]
    data_dir: PathBuf,

    /// Directory of the PostgreSQL programs (initdb, pg_ctl, postgres), if searching PATH,
    /// `pg_config --bindir` and /usr/lib/postgresql/*/bin should not decide.
    #[arg(long, env = "LINECHAT_PG_BIN_DIR")]
    pg_bin_dir: Option<PathBuf>,

    /// Most connections in the database pool.
    #[arg(long, env = "LINECHAT_POOL_SIZE", default_value_t = DEFAULTS.pool_size)]
    pool_size: u32,

    /// Seconds one database operation may take before SAY, JOIN or HISTORY get
    /// ERR STORE_UNAVAILABLE (ERR OUTCOME_UNKNOWN for a SAY whose INSERT was sent). While the
    /// database is known to be down they fail at once, and a background probe reconnects.
    #[arg(long, env = "LINECHAT_DB_TIMEOUT", default_value_t = DEFAULTS.db_timeout.as_secs())]
    db_timeout: u64,

    /// Seconds a server sharing the database may go unheard (it writes a heartbeat every
    /// quarter of this) before the others take it for dead: its members leave their rooms
    /// and its names are free again.
    #[arg(long, env = "LINECHAT_NODE_TIMEOUT", default_value_t = DEFAULTS.node_timeout.as_secs())]
    node_timeout: u64,

    /// Seconds start-up keeps retrying an unreachable database before giving up (0: forever).
    #[arg(long, env = "LINECHAT_DB_STARTUP_TIMEOUT", default_value_t = DEFAULTS.db_startup_timeout.as_secs())]
    db_startup_timeout: u64,

    /// Messages a plain JOIN replays.
    #[arg(long, env = "LINECHAT_HISTORY_ON_JOIN", default_value_t = DEFAULTS.history_on_join)]
    history_on_join: usize,

    /// Most messages in one HISTORY page or JOIN ... LAST n.
    #[arg(long, env = "LINECHAT_MAX_PAGE", default_value_t = DEFAULTS.max_page)]
    max_page: usize,

    /// Messages the memory store keeps per room.
    #[arg(long, env = "LINECHAT_MEMORY_HISTORY", default_value_t = DEFAULTS.memory_history)]
    memory_history: usize,

    /// Bytes of messages the memory store keeps in all rooms together: past it, the oldest
    /// history (of any room) is evicted first. The memory store keeps at most this much.
    #[arg(long, env = "LINECHAT_MEMORY_STORE_BYTES", default_value_t = DEFAULTS.memory_store_bytes)]
    memory_store_bytes: usize,

    /// Most history pages read from the store at once, server-wide (JOIN replays, HISTORY,
    /// catch-ups); more wait their turn (at least 1).
    #[arg(long, env = "LINECHAT_MAX_PAGE_READS", default_value_t = DEFAULTS.max_page_reads)]
    max_page_reads: usize,

    /// Most rooms one connection may be in; more get ERR TOO_MANY_ROOMS (0: unlimited).
    #[arg(long, env = "LINECHAT_MAX_ROOMS_PER_CONNECTION", default_value_t = DEFAULTS.max_rooms_per_connection)]
    max_rooms_per_connection: usize,

    /// New rooms one address may make a minute (all at once if it likes); more get
    /// ERR ROOM_RATE_LIMITED (0: unlimited). Loopback is not counted unless --limit-loopback.
    #[arg(long, env = "LINECHAT_NEW_ROOMS_PER_MINUTE", default_value_t = DEFAULTS.new_rooms_per_minute)]
    new_rooms_per_minute: u32,

    /// Most rooms at once; a JOIN that would make one more gets ERR ROOMS_FULL (0: unlimited).
    #[arg(long, env = "LINECHAT_MAX_ROOMS", default_value_t = DEFAULTS.max_rooms)]
    max_rooms: usize,

    /// Longest accepted line in bytes, without its CR/LF.
    #[arg(long, env = "LINECHAT_MAX_LINE", default_value_t = DEFAULTS.max_line)]
    max_line: usize,

    /// Bytes of live traffic queued for one client before it lags: no more is queued for it,
    /// and once it reads again it gets LAGGED and the missed messages from the store.
    #[arg(long, env = "LINECHAT_OUTBOUND_LIMIT", default_value_t = DEFAULTS.outbound_limit)]
    outbound_limit: usize,

    /// Seconds a client may take no bytes at all while the server has some for it, before it
    /// is closed with BYE too slow (at least 1).
    #[arg(long, env = "LINECHAT_STALL_TIMEOUT", default_value_t = DEFAULTS.stall_timeout.as_secs())]
    stall_timeout: u64,

    /// Seconds a closing connection (shutdown, QUIT, too slow, end of input) gets to take its
    /// last lines and BYE before the socket is closed anyway.
    #[arg(long, env = "LINECHAT_CLOSE_GRACE", default_value_t = DEFAULTS.close_grace.as_secs())]
    close_grace: u64,

    /// Seconds a connection may be silent before TCP keepalive probes check the peer.
    #[arg(long, env = "LINECHAT_KEEPALIVE", default_value_t = DEFAULTS.keepalive.as_secs())]
    keepalive: u64,

    /// Most connections at once; more get ERR SERVER_FULL (0: unlimited).
    #[arg(long, env = "LINECHAT_MAX_CONNECTIONS", default_value_t = DEFAULTS.max_connections)]
    max_connections: usize,

    /// Most connections from one address (0: unlimited). Loopback addresses are not counted
    /// unless --limit-loopback is given.
    #[arg(long, env = "LINECHAT_MAX_PER_IP", default_value_t = DEFAULTS.max_per_ip)]
    max_per_ip: usize,

    /// Count loopback connections against --max-per-ip and --new-rooms-per-minute too.
    #[arg(long, env = "LINECHAT_LIMIT_LOOPBACK")]
    limit_loopback: bool,

    /// Seconds a connection may take to choose a name with NICK (0: no limit).
    #[arg(long, env = "LINECHAT_LOGIN_TIMEOUT", default_value_t = DEFAULTS.login_timeout.as_secs())]
    login_timeout: u64,

    /// Refused lines a connection may cause before it is closed with BYE: a budget of this
    /// many, refilled at this many a minute (0: no limit).
    #[arg(long, env = "LINECHAT_MAX_ERRORS", default_value_t = DEFAULTS.max_errors)]
    max_errors: u32,

    /// Lines a second one connection may send on average; a faster sender is read more
    /// slowly (nothing is refused: its lines wait in its socket) (0: no limit, as for
    /// benchmarks).
    #[arg(long, env = "LINECHAT_RATE", default_value_t = DEFAULTS.rate)]
    rate: u32,

    /// Lines one connection may send at once before --rate applies.
    #[arg(long, env = "LINECHAT_BURST", default_value_t = DEFAULTS.burst)]
    burst: u32,

    /// Who may register a name: anyone with REGISTER <password> (open), or only the operator
    /// with `linechat account add` (closed).
    #[arg(long, env = "LINECHAT_REGISTRATION", value_enum, default_value_t = Registering::from(DEFAULTS.registration))]
    registration: Registering,

    /// Only registered names may join rooms, talk, read history and list rooms or members;
    /// guests get ERR ACCOUNT_REQUIRED.
    #[arg(long, env = "LINECHAT_REQUIRE_ACCOUNT")]
    require_account: bool,

    /// How log lines are written to stderr: readable text, or one JSON object a line for a
    /// log shipper. LINECHAT_LOG filters both (e.g. `LINECHAT_LOG=debug`).
    #[arg(long, env = "LINECHAT_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// The log's format on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One readable line per event.
    Text,
    /// One JSON object per event (`timestamp`, `level`, `fields.message`, `target`, ...).
    Json,
}

/// Commands other than serving.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Registered names, in the store the server's flags (given before `account`) name; works
    /// while the server runs.
    Account {
        #[command(subcommand)]
        action: AccountCommand,
    },
}

#[derive(Subcommand, Debug)]
pub enum AccountCommand {
    /// Registers NAME. The password is read from standard input (its first line), or asked
    /// for twice without echo on a terminal.
    Add { name: String },
    /// Sets NAME's password, read as for `add`.
    Passwd { name: String },
    /// Makes NAME a guest name again; its history stays.
    Remove { name: String },
    /// Lists the registered names.
    List,
}

impl From<AccountCommand> for Action {
    fn from(command: AccountCommand) -> Action {
        match command {
            AccountCommand::Add { name } => Action::Add(name),
            AccountCommand::Passwd { name } => Action::Passwd(name),
            AccountCommand::Remove { name } => Action::Remove(name),
            AccountCommand::List => Action::List,
        }
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Registering {
    Open,
    Closed,
}

impl From<Registration> for Registering {
    fn from(r: Registration) -> Registering {
        match r {
            Registration::Open => Registering::Open,
            Registration::Closed => Registering::Closed,
        }
    }
}

/// A listener's address, or `off`.
#[derive(Debug, Clone, Copy)]
struct Listen(Option<SocketAddr>);

impl std::str::FromStr for Listen {
    type Err = std::net::AddrParseError;

    fn from_str(s: &str) -> Result<Listen, Self::Err> {
        match s {
            "off" => Ok(Listen(None)),
            addr => addr.parse().map(|addr| Listen(Some(addr))),
        }
    }
}

impl std::fmt::Display for Listen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(addr) => addr.fmt(f),
            None => f.write_str("off"),
        }
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Store {
    /// PostgreSQL: durable history.
    Postgres,
    /// In memory: bounded per room, gone on restart.
    Memory,
}

impl From<StoreKind> for Store {
    fn from(kind: StoreKind) -> Store {
        match kind {
            StoreKind::Postgres => Store::Postgres,
            StoreKind::Memory => Store::Memory,
        }
    }
}

impl Cli {
    pub fn into_config(self) -> Config {
        Config {
            listen: self.listen.0,
            tls_listen: self.tls_listen,
            http_listen: self.http_listen.0,
            tls_cert: self.tls_cert,
            tls_key: self.tls_key,
            backlog: self.backlog,
            store: match self.store {
                Store::Memory => StoreKind::Memory,
                Store::Postgres => StoreKind::Postgres,
            },
            history_on_join: self.history_on_join,
            max_page: self.max_page.max(1),
            memory_history: self.memory_history,
            memory_store_bytes: self.memory_store_bytes,
            max_page_reads: self.max_page_reads.max(1),
            max_rooms_per_connection: self.max_rooms_per_connection,
            new_rooms_per_minute: self.new_rooms_per_minute,
            max_rooms: self.max_rooms,
            max_line: self.max_line.max(1),
            outbound_limit: self.outbound_limit.max(1),
            close_grace: Duration::from_secs(self.close_grace),
            stall_timeout: Duration::from_secs(self.stall_timeout.max(1)),
            keepalive: Duration::from_secs(self.keepalive.max(1)),
            max_connections: self.max_connections,
            max_per_ip: self.max_per_ip,
            limit_loopback: self.limit_loopback,
            login_timeout: Duration::from_secs(self.login_timeout),
            max_errors: self.max_errors,
            rate: self.rate,
            burst: self.burst.max(1),
            registration: match self.registration {
                Registering::Open => Registration::Open,
                Registering::Closed => Registration::Closed,
            },
            require_account: self.require_account,
            database_url: self.database_url,
            data_dir: self.data_dir,
            pg_bin_dir: self.pg_bin_dir,
            pool_size: self.pool_size.max(1),
            db_timeout: Duration::from_secs(self.db_timeout.max(1)),
            node_timeout: Duration::from_secs(self.node_timeout.max(1)),
            db_startup_timeout: Duration::from_secs(self.db_startup_timeout),
            user: self.user,
            ..Config::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The binary and the library agree on every default: no flag means `Config::default()`.
    #[test]
    fn no_flags_means_the_library_defaults() {
        let from_flags = Cli::try_parse_from(["linechat"]).unwrap().into_config();
        assert_eq!(
            format!("{from_flags:?}"),
            format!("{:?}", Config::default())
        );
    }
}
