//! The `linechat` binary: flags and environment ([`cli`]) -> [`Config`] -> [`Server`]. Every
//! flag's default comes from [`Config::default()`], the one table of defaults.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use linechat::accounts::admin;
use linechat::http::HttpListener;
use linechat::privileges::{self, Plan};
use linechat::server::{self, Listeners, Server, TlsListener};
use linechat::signals::Signals;
use linechat::tls::{CertificateFiles, Certificates};
use linechat::{Config, StoreKind};
use tokio::net::{TcpListener, TcpSocket};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

use cli::{Cli, Command, LogFormat};

mod cli;

#[tokio::main]
async fn main() -> ExitCode {
    // Flags first: they say how to log (a bad flag is clap's to report, before any log).
    let mut cli = Cli::parse();
    init_logging(cli.log_format);
    let command = cli.command.take();
    let config = cli.into_config();
    if let Some(Command::Account { action }) = command {
        return match admin::run(&config, action.into()).await {
            Ok(said) => {
                if !said.is_empty() {
                    println!("{said}");
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                tracing::error!("{e}");
                ExitCode::FAILURE
            }
        };
    }
    allocator::return_freed_memory();
    // Each connection takes a file descriptor: allow as many as the system lets us.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(files) => tracing::info!("open-file limit: {files} (each connection takes one)"),
        Err(e) => tracing::warn!("cannot raise the open-file limit: {e}"),
    }
    // Before anything else: a signal that came before the handlers would end the process
    // the default way, with no BYE and the managed PostgreSQL left running.
    let mut signals = match Signals::install() {
        Ok(signals) => signals,
        Err(e) => {
            tracing::error!("cannot handle signals: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Whom to run as is checked now, so that a bad --user fails before anything starts.
    let managed = config.store == StoreKind::Postgres && config.database_url.is_none();
    let plan = privileges::plan(
        config.user.as_deref(),
        privileges::is_root(),
        managed.then_some(linechat::managed_postgres::POSTGRES_USER),
    );
    let plan = match plan {
        Ok(plan) => plan,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    // Take the ports (and read the certificate) first, so that a second server or a bad
    // file fails before touching any database. They listen only once the store is open:
    // until then a client is refused, never kept waiting for its HELLO.
    let backlog = config.backlog;
    let Some(bound) = bind_listeners(&config) else {
        return ExitCode::FAILURE;
    };
    if let Some(certificates) = bound.certificates.clone() {
        signals.on_reload(move || reload(&certificates));
    }
    // Open the store (it may start PostgreSQL), unless we are told to stop meanwhile.
    let server = tokio::select! {
        started = Server::start(config) => match started {
            Ok(server) => server,
            Err(e) => {
                tracing::error!("{e}");
                return ExitCode::FAILURE;
            }
        },
        () = signals.shutdown() => return ExitCode::SUCCESS,
    };
    let Some((listeners, backlog)) = bound.listen(backlog) else {
        server.serve(Listeners::default(), async {}).await;
        return ExitCode::FAILURE;
    };
    // Root is needed no more: the port is bound and the cluster runs.
    if let Err(e) = plan.apply() {
        tracing::error!("{e}");
        // Stop what was started: a shutdown before the first client.
        server.serve(listeners, async {}).await;
        return ExitCode::FAILURE;
    }
    if let Plan::Become(account) = &plan {
        tracing::info!(
            "running as user {} (uid {}, gid {}) from now on",
            account.name,
            account.uid,
            account.gid
        );
    }
    log_listeners(&listeners, backlog);
    // From here on a second signal hurries the shutdown the first began.
    let stop = CancellationToken::new();
    tokio::spawn(signals.watch(stop.clone(), server.hurry()));
    server.serve(listeners, stop.cancelled_owned()).await;
    ExitCode::SUCCESS
}

/// Logs to stderr in `format`, filtered by LINECHAT_LOG (default `info`).
fn init_logging(format: LogFormat) {
    // tokio-postgres logs statements' parameters (messages, password hashes) at debug: never
    // that, whatever LINECHAT_LOG asks (a filter after the user's, which no directive of
    // theirs can widen).
    let filter = tracing_subscriber::EnvFilter::try_from_env("LINECHAT_LOG")
        .unwrap_or_else(|_| "info".into());
    let no_statements = tracing_subscriber::filter::filter_fn(|meta| {
        !(meta.target().starts_with("tokio_postgres") && *meta.level() > tracing::Level::INFO)
    });
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let layer = match format {
        LogFormat::Text => fmt
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .boxed(),
        // No colour codes in JSON, whatever stderr is.
        LogFormat::Json => fmt.json().with_ansi(false).boxed(),
    };
    tracing_subscriber::registry()
        .with(layer.with_filter(filter).with_filter(no_statements))
        .init();
    // Records of crates that use `log` are bridged into tracing; without a max level of
    // their own, each one is built and dispatched before the filter drops it (tungstenite's
    // per-frame trace records once cost 40% of the server's CPU in a WebSocket fanout). Only
    // the levels the filter can pass are made.
    log::set_max_level(match tracing_subscriber::filter::LevelFilter::current() {
        tracing_subscriber::filter::LevelFilter::OFF => log::LevelFilter::Off,
        tracing_subscriber::filter::LevelFilter::ERROR => log::LevelFilter::Error,
        tracing_subscriber::filter::LevelFilter::WARN => log::LevelFilter::Warn,
        tracing_subscriber::filter::LevelFilter::INFO => log::LevelFilter::Info,
        tracing_subscriber::filter::LevelFilter::DEBUG => log::LevelFilter::Debug,
        _ => log::LevelFilter::Trace,
    });
}

/// The sockets the configuration asks for, bound but not yet listening, and the TLS
/// certificate (shared by the TLS and https listeners).
struct Bound {
    plain: Option<(SocketAddr, TcpSocket)>,
    tls: Option<(SocketAddr, TcpSocket)>,
    http: Option<(SocketAddr, TcpSocket)>,
    certificates: Option<Arc<Certificates>>,
}

/// Binds the addresses the configuration asks for, and loads the TLS certificate; or logs
/// why not and returns `None`.
fn bind_listeners(config: &Config) -> Option<Bound> {
    if config.listen.is_none() && config.tls_listen.is_none() && config.http_listen.is_none() {
        tracing::error!(
            "nothing to listen on: --listen and --http-listen are off and --tls-listen is not \
             given; turn at least one listener on"
        );
        return None;
    }
    let bind = |addr: Option<SocketAddr>| match addr {
        None => Some(None),
        Some(addr) => match server::bind(addr) {
            Ok(socket) => Some(Some((addr, socket))),
            Err(e) => {
                tracing::error!("cannot listen on {addr}: {e}");
                None
            }
        },
    };
    let certificates = match (config.tls_cert.clone(), config.tls_key.clone()) {
        (Some(cert), Some(key)) => match Certificates::load(CertificateFiles { cert, key }) {
            Ok(certificates) => Some(certificates),
            Err(e) => {
                tracing::error!("cannot use the TLS certificate: {e}");
                return None;
            }
        },
        _ if config.tls_listen.is_some() => {
            tracing::error!("--tls-listen needs --tls-cert and --tls-key");
            return None;
        }
        _ => None,
    };
    Some(Bound {
        tls: bind(config.tls_listen)?,
        plain: bind(config.listen)?,
        http: bind(config.http_listen)?,
        certificates,
    })
}

impl Bound {
    /// Starts listening: from now on connections are taken (and served at once). Returns the
    /// listeners with the backlog the kernel applies.
    fn listen(self, backlog: u32) -> Option<(Listeners, u32)> {
        let applied = std::cell::Cell::new(backlog);
        let listen = |bound: Option<(SocketAddr, TcpSocket)>| match bound {
            None => Some(None),
            Some((addr, socket)) => match server::listen_bound(socket, backlog) {
                Ok((listener, kernel)) => {
                    applied.set(kernel);
                    Some(Some(listener))
                }
                Err(e) => {
                    tracing::error!("cannot listen on {addr}: {e}");
                    None
                }
            },
        };
        let tls = match (listen(self.tls)?, &self.certificates) {
            (Some(listener), Some(certificates)) => Some(TlsListener {
                listener,
                certificates: certificates.clone(),
            }),
            _ => None,
        };
        let listeners = Listeners {
            tls,
            plain: listen(self.plain)?,
            http: listen(self.http)?.map(|listener| HttpListener {
                listener,
                certificates: self.certificates.clone(),
            }),
        };
        Some((listeners, applied.get()))
    }
}

/// Says where the server listens, TLS first: the line a script (and the tests) wait for,
/// `linechat listening on ADDR; ...`, is the plain listener's, or says it is off. The page's
/// URL comes last: the line to click.
fn log_listeners(listeners: &Listeners, backlog: u32) {
    if let Some(tls) = &listeners.tls {
        let files = tls.certificates.files();
        if let Ok(addr) = tls.listener.local_addr() {
            tracing::info!(
                "linechat listening for TLS on {addr}; certificate {}, key {}; try: openssl \
                 s_client -quiet -connect {addr}",
                files.cert.display(),
                files.key.display()
            );
        }
    }
    match listeners.plain.as_ref().map(TcpListener::local_addr) {
        Some(Ok(addr)) => {
            if !addr.ip().is_loopback() {
                tracing::warn!(
                    "the plain listener on {addr} is not on loopback: chat traffic and \
                     passwords cross the network in clear text; on a network, use \
                     --tls-listen, with --listen off or on 127.0.0.1"
                );
            }
            tracing::info!(
                "linechat listening on {addr}; backlog {backlog}; try: nc {} {}",
                addr.ip(),
                addr.port()
            );
        }
        Some(Err(e)) => tracing::warn!("cannot tell where the plain listener is: {e}"),
        None => tracing::info!("linechat plain listener off (--listen off)"),
    }
    if let Some(http) = &listeners.http {
        if let Ok(addr) = http.listener.local_addr() {
            let scheme = if http.certificates.is_some() {
                "https"
            } else {
                "http"
            };
            if http.certificates.is_none() && !addr.ip().is_loopback() {
                tracing::warn!(
                    "the HTTP listener on {addr} is not on loopback and has no certificate: \
                     chat traffic and passwords cross the network in clear text; give \
                     --tls-cert and --tls-key to serve https"
                );
            }
            tracing::info!(
                "linechat web page at {scheme}://{addr}/ (WebSocket at /ws, /healthz, /metrics)"
            );
        }
    }
}

/// SIGHUP: reads the TLS certificate and key again; on a bad file, keeps the ones in use.
fn reload(certificates: &Certificates) {
    let files = certificates.files();
    match certificates.reload() {
        Ok(()) => tracing::info!(
            "SIGHUP received: reloaded the TLS certificate from {} and its key from {}; new \
             connections get it",
            files.cert.display(),
            files.key.display()
        ),
        Err(e) => tracing::warn!("SIGHUP received: kept the TLS certificate in use: {e}"),
    }
}

/// Giving memory back to the system once clients that asked for much of it have gone.
///
/// glibc's malloc keeps what other threads freed in per-thread arenas, and gives back only
/// the top of each heap: after 100 clients' replies (a few hundred KiB each, allocated on
/// whichever worker thread ran the session) were written and freed, the server kept 7 to 23
/// MiB more than before they came, for good. `malloc_trim` hands the free pages of every
/// arena back. It walks the arenas, so it runs on a thread of its own, once a second at
/// most, and only while more than [`TRIM_ABOVE`] bytes lie free: a busy server that reuses
/// what it frees is left alone.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod allocator {
    use std::time::Duration;

    /// Free bytes held by malloc above which they are given back.
    const TRIM_ABOVE: usize = 8 * 1024 * 1024;

    pub fn return_freed_memory() {
        let spawned = std::thread::Builder::new()
            .name("malloc-trim".into())
            .spawn(|| loop {
                std::thread::sleep(Duration::from_secs(1));
                // SAFETY: both only read and adjust malloc's own state, under its locks.
                let free = unsafe { libc::mallinfo2() }.fordblks;
                if free > TRIM_ABOVE {
                    unsafe { libc::malloc_trim(0) };
                }
            });
        if let Err(e) = spawned {
            tracing::warn!("cannot start the thread that returns freed memory: {e}");
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
mod allocator {
    pub fn return_freed_memory() {}
}
