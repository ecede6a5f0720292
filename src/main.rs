//! The `linechat` binary: flags and environment -> [`Config`] -> [`linechat::server::serve`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use linechat::server::Server;
use linechat::{Config, StoreKind};

/// A chat-room server that speaks a plain-text line protocol over TCP.
///
/// Try it with `nc 127.0.0.1 7777`. Every flag can also be set by the environment variable
/// shown with it.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// Address to listen on.
    #[arg(long, env = "LINECHAT_LISTEN", default_value = "127.0.0.1:7777")]
    listen: SocketAddr,

    /// Where history is kept.
    #[arg(long, env = "LINECHAT_STORE", value_enum, default_value_t = Store::Postgres)]
    store: Store,

    /// PostgreSQL connection string (`postgresql://user@host/db` or `host=... dbname=...`).
    /// Without it, the server runs its own PostgreSQL under --data-dir.
    #[arg(long, env = "DATABASE_URL")]
    database_url: Option<String>,

    /// Where the server's own PostgreSQL cluster lives when no --database-url is given.
    #[arg(long, env = "LINECHAT_DATA_DIR", default_value = "linechat-data")]
    data_dir: PathBuf,

    /// Directory of the PostgreSQL programs (initdb, pg_ctl, postgres), if searching PATH,
    /// `pg_config --bindir` and /usr/lib/postgresql/*/bin should not decide.
    #[arg(long, env = "LINECHAT_PG_BIN_DIR")]
    pg_bin_dir: Option<PathBuf>,

    /// Most connections in the database pool.
    #[arg(long, env = "LINECHAT_POOL_SIZE", default_value_t = 8)]
    pool_size: u32,

    /// Seconds one database operation may take before SAY, JOIN or HISTORY get
    /// ERR STORE_UNAVAILABLE.
    #[arg(long, env = "LINECHAT_DB_TIMEOUT", default_value_t = 5)]
    db_timeout: u64,

    /// Seconds start-up keeps retrying an unreachable database before giving up (0: forever).
    #[arg(long, env = "LINECHAT_DB_STARTUP_TIMEOUT", default_value_t = 60)]
    db_startup_timeout: u64,

    /// Messages a plain JOIN replays.
    #[arg(long, env = "LINECHAT_HISTORY_ON_JOIN", default_value_t = 50)]
    history_on_join: usize,

    /// Most messages in one HISTORY page or JOIN ... LAST n.
    #[arg(long, env = "LINECHAT_MAX_PAGE", default_value_t = 500)]
    max_page: usize,

    /// Messages the memory store keeps per room.
    #[arg(long, env = "LINECHAT_MEMORY_HISTORY", default_value_t = 10_000)]
    memory_history: usize,

    /// Longest accepted line in bytes, without its CR/LF.
    #[arg(long, env = "LINECHAT_MAX_LINE", default_value_t = 4096)]
    max_line: usize,

    /// Bytes of live traffic queued for one client before it lags: no more is queued for it,
    /// and once it reads again it gets LAGGED and the missed messages from the store.
    #[arg(long, env = "LINECHAT_OUTBOUND_LIMIT", default_value_t = 1024 * 1024)]
    outbound_limit: usize,

    /// Seconds a client may take no bytes at all while the server has some for it, before it
    /// is closed with BYE too slow (at least 1).
    #[arg(long, env = "LINECHAT_STALL_TIMEOUT", default_value_t = 60)]
    stall_timeout: u64,

    /// Seconds a closing connection (shutdown, QUIT, too slow, end of input) gets to take its
    /// last lines and BYE before the socket is closed anyway.
    #[arg(long, env = "LINECHAT_CLOSE_GRACE", default_value_t = 5)]
    close_grace: u64,

    /// Seconds a connection may be silent before TCP keepalive probes check the peer.
    #[arg(long, env = "LINECHAT_KEEPALIVE", default_value_t = 60)]
    keepalive: u64,

    /// Most connections at once; more get ERR SERVER_FULL (0: unlimited).
    #[arg(long, env = "LINECHAT_MAX_CONNECTIONS", default_value_t = 16_384)]
    max_connections: usize,

    /// Most connections from one address (0: unlimited). Loopback addresses are not counted
    /// unless --limit-loopback is given.
    #[arg(long, env = "LINECHAT_MAX_PER_IP", default_value_t = 64)]
    max_per_ip: usize,

    /// Count loopback connections against --max-per-ip too.
    #[arg(long, env = "LINECHAT_LIMIT_LOOPBACK")]
    limit_loopback: bool,

    /// Seconds a connection may take to choose a name with NICK (0: no limit).
    #[arg(long, env = "LINECHAT_LOGIN_TIMEOUT", default_value_t = 60)]
    login_timeout: u64,

    /// Refused lines per minute before a connection is closed with BYE (0: no limit).
    #[arg(long, env = "LINECHAT_MAX_ERRORS", default_value_t = 30)]
    max_errors: u32,

    /// Lines a second one connection may send on average; more get ERR RATE_LIMITED and
    /// are not done (0: no limit, as for benchmarks).
    #[arg(long, env = "LINECHAT_RATE", default_value_t = 20)]
    rate: u32,

    /// Lines one connection may send at once above --rate.
    #[arg(long, env = "LINECHAT_BURST", default_value_t = 40)]
    burst: u32,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Store {
    /// PostgreSQL: durable history (the default).
    Postgres,
    /// In memory: bounded per room, gone on restart.
    Memory,
}

impl Cli {
    fn into_config(self) -> Config {
        Config {
            listen: self.listen,
            store: match self.store {
                Store::Memory => StoreKind::Memory,
                Store::Postgres => StoreKind::Postgres,
            },
            history_on_join: self.history_on_join,
            max_page: self.max_page.max(1),
            memory_history: self.memory_history,
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
            database_url: self.database_url,
            data_dir: self.data_dir,
            pg_bin_dir: self.pg_bin_dir,
            pool_size: self.pool_size.max(1),
            db_timeout: Duration::from_secs(self.db_timeout.max(1)),
            db_startup_timeout: Duration::from_secs(self.db_startup_timeout),
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("LINECHAT_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let config = Cli::parse().into_config();
    let files = raise_open_file_limit();
    tracing::info!("open-file limit: {files} (each connection takes one)");
    let listen = config.listen;
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    // Take the port first, so that a second server fails before touching any database.
    let listener = match tokio::net::TcpListener::bind(listen).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("cannot listen on {listen}: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Open the store (it may start PostgreSQL), unless we are told to stop meanwhile.
    let server = tokio::select! {
        started = Server::start(config) => match started {
            Ok(server) => server,
            Err(e) => {
                tracing::error!("{e}");
                return ExitCode::FAILURE;
            }
        },
        _ = &mut shutdown => return ExitCode::SUCCESS,
    };
    let addr = listener.local_addr().unwrap_or(listen);
    tracing::info!(
        "linechat listening on {addr}; try: nc {} {}",
        addr.ip(),
        addr.port()
    );
    server.serve(listener, shutdown).await;
    ExitCode::SUCCESS
}
/// Raises the soft open-file limit to the hard one, and returns the limit now in force.
fn raise_open_file_limit() -> u64 {
    // SAFETY: getrlimit and setrlimit only read and write the struct passed to them.
    unsafe {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 0;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
        limit.rlim_cur
    }
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM. The handlers are installed here, before the
/// server says it is listening: a signal that came before they were would kill the process
/// without a `BYE` to anyone.
#[cfg(unix)]
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let interrupt = signal(SignalKind::interrupt());
    let terminate = signal(SignalKind::terminate());
    async move {
        match (interrupt, terminate) {
            (Ok(mut interrupt), Ok(mut terminate)) => {
                tokio::select! {
                    _ = interrupt.recv() => {}
                    _ = terminate.recv() => {}
                }
            }
            _ => {
                tracing::warn!("cannot handle SIGINT/SIGTERM; stop the server with SIGKILL");
                std::future::pending::<()>().await;
            }
        }
    }
}

/// Completes on Ctrl-C.
#[cfg(not(unix))]
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}
