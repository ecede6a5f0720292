//! Start-up (the store, and the private PostgreSQL cluster in zero-config mode), the accept
//! loop (one for both listeners, plain and TLS: the same admission, limits and shutdown),
//! and graceful shutdown.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::accounts::{AccountStore, MemoryAccounts};
use crate::admission::{Admission, Refusal, Ticket};
use crate::config::{Config, StoreKind};
use crate::http::{self, HttpListener};
use crate::hub::Hub;
use crate::managed_postgres::{self, ManagedPostgres, ManagedPostgresError, Search, Supervisor};
use crate::session;
use crate::store::postgres::{
    self, DatabaseUrl, DatabaseUrlError, PgSettings, PgTls, TlsSetupError,
};
use crate::store::{HistoryStore, MemoryStore, PgStore, StoreError};
use crate::tls::{self, Certificates, HandshakeLimits};
use crate::transport::Transport;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot run the local PostgreSQL: {0}")]
    ManagedPostgres(#[from] ManagedPostgresError),
    #[error("cannot open the message store: {0}")]
    Store(#[from] StoreError),
    #[error("--database-url: {0}")]
    DatabaseUrl(#[from] DatabaseUrlError),
    #[error("--database-url: {0}")]
    DatabaseTls(#[from] TlsSetupError),
}

/// A server whose store is open, ready to serve a listener.
pub struct Server {
    hub: Arc<Hub>,
    writer_task: JoinHandle<()>,
    /// The private cluster, in zero-config mode; stopped after the last session.
    cluster: Option<ManagedPostgres>,
}

impl Server {
    /// Opens the configured store: memory, the PostgreSQL at `database_url`, or a private
    /// cluster under `data_dir` that this server runs and stops.
    pub async fn start(config: Config) -> Result<Server, StartError> {
        let Stores {
            history,
            accounts,
            cluster,
        } = Stores::open(&config).await?;
        let (hub, writer_task) = Hub::start(config, history, accounts);
        Ok(Server {
            hub,
            writer_task,
            cluster,
        })
    }

    /// Cancelled, it cuts a shutdown short: closing clients get no more close grace.
    pub fn hurry(&self) -> CancellationToken {
        self.hub.hurry.clone()
    }

    /// Serves clients on `listeners` until `shutdown` completes; then stops accepting, says
    /// `BYE` to every client (after answering what each one already sent), lets the writer
    /// finish, stops the private cluster if there is one, and returns. Meanwhile the private
    /// cluster is supervised: restarted if it dies.
    pub async fn serve(self, listeners: impl Into<Listeners>, shutdown: impl Future<Output = ()>) {
        let Server {
            hub,
            writer_task,
            cluster,
        } = self;
        let Listeners { plain, tls, http } = listeners.into();
        let tls = tls.map(|t| (t.listener, t.certificates.acceptor()));
        let supervisor = cluster.map(Supervisor::spawn);
        let stopping = CancellationToken::new();
        let sessions = TaskTracker::new();
        let login_watch = tokio::spawn(hub.logins.clone().run());
        let name_watch = tokio::spawn(crate::accounts::watch::run(hub.clone()));
        let web = http.map(|h| {
            let shared = http::Shared {
                hub: hub.clone(),
                stopping: stopping.clone(),
                sessions: sessions.clone(),
                readiness: Default::default(),
            };
            let acceptor = h.certificates.map(|c| c.acceptor());
            (h.listener, http::router(shared.clone()), shared, acceptor)
        });
        let admission = Admission::new(
            hub.config.max_connections,
            hub.config.max_per_ip,
            hub.config.limit_loopback,
        );
        tokio::pin!(shutdown);
        loop {
            let (accepted, kind) = tokio::select! {
                _ = &mut shutdown => break,
                accepted = accept(plain.as_ref()) => (accepted, Kind::Plain),
                accepted = accept(tls.as_ref().map(|(l, _)| l)) => (accepted, Kind::Tls),
                accepted = accept(web.as_ref().map(|w| &w.0)) => (accepted, Kind::Http),
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let accepted_at = tokio::time::Instant::now();
            let ticket = match admission.admit(peer.ip()) {
                Ok(ticket) => ticket,
                Err(why) => {
                    turn_away(stream, peer, why, kind);
                    continue;
                }
            };
            if let Err(e) = tune(&stream, &hub.config) {
                tracing::debug!(%peer, error = %e, "could not set socket options");
            }
            // The ticket is held for the session's life. (Not by wrapping the session's
            // future in another: that stores the future twice, doubling the memory of every
            // idle connection.)
            match (kind, &tls, &web) {
                (Kind::Tls, Some((_, acceptor)), _) => sessions.spawn(serve_tls(
                    hub.clone(),
                    stream,
                    acceptor.clone(),
                    peer,
                    accepted_at,
                    stopping.clone(),
                    ticket,
                )),
                (Kind::Http, _, Some((_, router, shared, acceptor))) => sessions.spawn(serve_http(
                    router.clone(),
                    shared.clone(),
                    acceptor.clone(),
                    stream,
                    peer,
                    accepted_at,
                    ticket,
                )),
                _ => sessions.spawn(session::run(
                    hub.clone(),
                    Transport::Tcp(stream),
                    peer,
                    accepted_at,
                    stopping.clone(),
                    ticket,
                )),
            };
        }
        drop((plain, tls, web));
        login_watch.abort();
        name_watch.abort();
        // It holds the hub, which must go before the writer can finish.
        let _ = name_watch.await;
        tracing::info!(clients = sessions.len(), "shutting down");
        stopping.cancel();
        // Sessions wait on their mailbox, not on the token: wake each to see it.
        hub.mailboxes.notify_all();
        // The other servers see this one's members leave now, not after --node-timeout,
        // while the sessions close.
        let leaving = hub
            .cluster
            .clone()
            .map(|cluster| tokio::spawn(async move { cluster.leave().await }));
        sessions.close();
        sessions.wait().await;
        if let Some(leaving) = leaving {
            let _ = leaving.await;
        }
        // Sessions are gone; dropping the last writer handle lets the writer finish its queue.
        drop(hub);
        let _ = writer_task.await;
        if let Some(supervisor) = supervisor {
            stop_cluster(supervisor).await;
        }
        tracing::info!("stopped");
    }
}

/// The stores a server (or `linechat account`) works on.
pub struct Stores {
    pub history: Arc<dyn HistoryStore>,
    pub accounts: Arc<dyn AccountStore>,
    /// The private cluster, in zero-config mode: stopped when dropped.
    pub cluster: Option<ManagedPostgres>,
}

impl Stores {
    /// Opens the configured store: memory, the PostgreSQL at `database_url`, or a private
    /// cluster under `data_dir`, started (or created) here.
    pub async fn open(config: &Config) -> Result<Stores, StartError> {
        let (pg_config, tls) = match (config.store, &config.database_url) {
            (StoreKind::Memory, _) => {
                tracing::info!(
                    "memory store: history is this server's alone (other servers cannot share \
                     its rooms; give them all one --database-url for that)"
                );
                return Ok(Stores {
                    history: Arc::new(MemoryStore::bounded(
                        config.memory_history,
                        config.memory_store_bytes,
                    )),
                    accounts: Arc::new(MemoryAccounts::default()),
                    cluster: None,
                });
            }
            (StoreKind::Postgres, Some(url)) => {
                let url = DatabaseUrl::from_str(url)?;
                (url.config, PgTls::new(&url.tls)?)
            }
            (StoreKind::Postgres, None) => {
                // On an error from here on, dropping `local` asks it to stop.
                let local = start_cluster(config).await?;
                let database = managed_postgres::DATABASE;
                postgres::ensure_database(&local.pg_config("postgres"), database).await?;
                let pg_config = local.pg_config(database);
                // Its Unix socket is the server's alone: no TLS.
                let store = Self::postgres(config, pg_config, PgTls::disabled()).await?;
                return Ok(Stores {
                    cluster: Some(local),
                    ..store
                });
            }
        };
        Self::postgres(config, pg_config, tls).await
    }

    /// Opens the PostgreSQL store at `pg_config`, its connections made through `tls`.
    pub async fn postgres(
        config: &Config,
        pg_config: tokio_postgres::Config,
        tls: PgTls,
    ) -> Result<Stores, StartError> {
        tracing::info!(
            "using PostgreSQL at {} ({}); servers using the same database share its rooms",
            postgres::describe(&pg_config),
            tls.describe()
        );
        let store = PgStore::connect(PgSettings {
            config: pg_config,
            tls,
            pool_size: config.pool_size,
            timeout: config.db_timeout,
            startup_timeout: config.db_startup_timeout,
        })
        .await?;
        let store = Arc::new(store);
        Ok(Stores {
            history: store.clone(),
            accounts: store,
            cluster: None,
        })
    }
}

/// Where the server takes connections: a plain TCP listener, a TLS one, an HTTP one (the
/// page and WebSocket sessions), in any combination.
#[derive(Default)]
pub struct Listeners {
    pub plain: Option<TcpListener>,
    pub tls: Option<TlsListener>,
    pub http: Option<HttpListener>,
}

/// Which listener a connection came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Plain,
    Tls,
    Http,
}

/// A listener whose connections speak TLS, and the certificates they are offered.
pub struct TlsListener {
    pub listener: TcpListener,
    pub certificates: Arc<Certificates>,
}

impl From<TcpListener> for Listeners {
    fn from(plain: TcpListener) -> Listeners {
        Listeners {
            plain: Some(plain),
            ..Listeners::default()
        }
    }
}

/// The next connection on `listener`; never, if there is none.
async fn accept(listener: Option<&TcpListener>) -> io::Result<(TcpStream, SocketAddr)> {
    match listener {
        Some(listener) => listener.accept().await,
        None => std::future::pending().await,
    }
}

/// A TLS connection's task: its handshake (holding the connection's admission ticket, within
/// the login timeout), then its session, as a plain connection's.
fn serve_tls(
    hub: Arc<Hub>,
    stream: TcpStream,
    acceptor: TlsAcceptor,
    peer: SocketAddr,
    accepted: tokio::time::Instant,
    stopping: CancellationToken,
    ticket: Ticket,
) -> impl Future<Output = ()> + Send {
    let limits = HandshakeLimits {
        timeout: hub.config.login_timeout,
        close_grace: hub.config.close_grace,
    };
    // Boxed: the handshake's future (over 4 KiB, rustls's state and the deadline around it)
    // is freed once it is done, instead of sizing the task for the connection's whole life.
    let handshake = Box::pin(tls::handshake(
        stream,
        acceptor,
        tls::tls_required(),
        limits,
        stopping.clone(),
        hub.hurry.clone(),
    ));
    async move {
        // Boxed into the transport at once: the task keeps no room for the stream itself.
        let transport = match handshake.await {
            Ok(stream) => Transport::stream(stream),
            Err(end) => return end.log(peer),
        };
        session::run(hub, transport, peer, accepted, stopping, ticket).await;
    }
}

/// An HTTP connection's task: its TLS handshake if the listener has a certificate (as a TLS
/// line connection's), then HTTP until it closes or upgrades to a WebSocket session.
async fn serve_http(
    router: axum::Router,
    shared: http::Shared,
    acceptor: Option<TlsAcceptor>,
    stream: TcpStream,
    peer: SocketAddr,
    accepted: tokio::time::Instant,
    ticket: Ticket,
) {
    let Some(acceptor) = acceptor else {
        return http::serve_connection(router, stream, peer, accepted, ticket, &shared).await;
    };
    let limits = HandshakeLimits {
        timeout: shared.hub.config.login_timeout,
        close_grace: shared.hub.config.close_grace,
    };
    let handshake = tls::handshake(
        stream,
        acceptor,
        tls::https_required(),
        limits,
        shared.stopping.clone(),
        shared.hub.hurry.clone(),
    );
    match Box::pin(handshake).await {
        Ok(stream) => http::serve_connection(router, stream, peer, accepted, ticket, &shared).await,
        Err(end) => end.log(peer),
    }
}

/// Ends the supervision of the private cluster and stops it, waiting off the async threads.
async fn stop_cluster(supervisor: Supervisor) {
    let stopped = tokio::task::spawn_blocking(move || supervisor.finish().stop()).await;
    if let Ok(Err(e)) = stopped {
        tracing::warn!("could not stop PostgreSQL: {e}");
    }
}

/// Starts (or creates, or adopts) the private cluster under `config.data_dir`.
async fn start_cluster(config: &Config) -> Result<ManagedPostgres, ManagedPostgresError> {
    let data_dir = config.data_dir.clone();
    let search = Search::from_env(config.pg_bin_dir.clone());
    tokio::task::spawn_blocking(move || ManagedPostgres::start(&data_dir, &search))
        .await
        .map_err(|e| ManagedPostgresError::Io(io::Error::other(e)))?
}

/// A listener on `addr` whose queue of connections not yet accepted holds `backlog` (0: the
/// system's maximum); returns it with the backlog the kernel applies (it caps a larger one
/// at `net.core.somaxconn`). [`bind`] then [`listen_bound`].
pub fn listen(addr: SocketAddr, backlog: u32) -> io::Result<(TcpListener, u32)> {
    listen_bound(bind(addr)?, backlog)
}

/// A socket bound to `addr`, not yet listening: connections to it are refused until
/// [`listen_bound`]. Binding first takes the port (a second server fails here), so that the
/// server can open its store before it takes any connection: once a client gets in, it is
/// served at once. Reuses the address as std's and tokio's `bind` do, so that a restart need
/// not wait out the old server's connections in TIME_WAIT (Linux still refuses a port that
/// another socket listens on).
pub fn bind(addr: SocketAddr) -> io::Result<TcpSocket> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    Ok(socket)
}

/// Starts listening on a bound socket, with the backlog asked for (0: the system's maximum);
/// returns the listener and the backlog the kernel applies.
pub fn listen_bound(socket: TcpSocket, backlog: u32) -> io::Result<(TcpListener, u32)> {
    let max = system_backlog();
    let backlog = match backlog {
        0 => max.unwrap_or(FALLBACK_BACKLOG),
        n => max.map_or(n, |max| n.min(max)),
    };
    Ok((socket.listen(backlog)?, backlog))
}

/// The backlog asked for when the system's maximum cannot be read.
const FALLBACK_BACKLOG: u32 = 4096;

/// The most a listen backlog can be here (Linux: `net.core.somaxconn`), if known.
fn system_backlog() -> Option<u32> {
    std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()?
        .trim()
        .parse()
        .ok()
        .filter(|&n| n > 0)
}

/// Tells a connection the server cannot take it (`ERR SERVER_FULL`) and closes it. The line
/// is written without waiting: a peer that does not read it just sees the close. A TLS
/// connection is closed without a word: the line could only be said after a handshake, which
/// a full server does not spend on a client it will not take.
fn turn_away(stream: TcpStream, peer: std::net::SocketAddr, why: Refusal, kind: Kind) {
    if kind == Kind::Http {
        // Plain HTTP even on an https listener: a browser shows nothing either way, a
        // script or a load balancer reads the status.
        let _ = stream.try_write(
            b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
        );
        tracing::info!(%peer, reason = ?why, "HTTP connection refused: server full");
        return;
    }
    let tls = kind == Kind::Tls;
    crate::telemetry::error_sent(crate::protocol::ErrorCode::ServerFull);
    let text = match why {
        Refusal::Total => {
            "ERR SERVER_FULL the server has as many connections as it takes; try again later\n"
        }
        Refusal::PerIp => {
            "ERR SERVER_FULL too many connections from your address; close one first\n"
        }
    };
    if !tls {
        let _ = stream.try_write(text.as_bytes());
    }
    tracing::info!(%peer, reason = ?why, tls, "connection refused: server full");
}

/// Low latency for small lines, and TCP keepalive to find peers that vanished without a FIN
/// (a netcat user is never expected to answer pings). A dead peer is found after about
/// `keepalive` of silence plus six unanswered probes at most 10 s apart.
fn tune(stream: &TcpStream, config: &Config) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let keepalive = TcpKeepalive::new()
        .with_time(config.keepalive)
        .with_interval(config.keepalive.min(Duration::from_secs(10)))
        .with_retries(6);
    SockRef::from(stream).set_tcp_keepalive(&keepalive)
}
