//! Durable history in PostgreSQL, through a bb8 pool of tokio-postgres connections.
//!
//! Every statement is prepared once per connection (when the pool opens it) and run with
//! parameters: no SQL is ever built from data. A batch of messages is stored by one
//! multi-row `INSERT ... SELECT FROM unnest(...)` in one transaction, so the batched writer
//! pays one commit per batch.
//!
//! Every operation has a deadline (`--db-timeout`), the INSERT included. While the database
//! is known to be unreachable ([`Health`]), operations fail at once, and one background task
//! probes it until it answers again.
//!
//! Connections to an external database use TLS as its `--database-url` says, with libpq's
//! `sslmode` and `sslrootcert` (`url.rs` reads them, `tls.rs` checks the certificate).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use bb8::{ManageConnection, Pool};
use bb8_postgres::PostgresConnectionManager;
use chrono::{DateTime, Utc};
use tokio::time::Instant;
use tokio_postgres::Row;

use super::health::{Backoff, Health, HealthWatch, PROBE_CAP, PROBE_FIRST};
use super::{HistoryStore, NewMessage, Page, StoreError, StoredMessage};
use crate::protocol::MessageId;

mod accounts;
mod batch;
mod directory;
pub use directory::DIRECTORY_STATEMENTS;
mod errors;
mod history;
mod notify;
mod pool;
mod recorder;
mod schema;
mod tls;
mod url;

use batch::Names;
use errors::{
    name_vanished, proves_rolled_back, refusal, shows_unreachable, unavailable, unreadable_column,
    with_causes, Attempt, BatchError, Refusals,
};
use pool::{Busy, LogErrors, PgConnection, PgManager, RECORD_NAMES, UPSERT_ROOM};
pub use pool::{
    HISTORY_EPOCH, INSERT_MESSAGES, LATEST_ID, PAGE_NEWEST, PAGE_OLDEST, READ_RANGES,
    SESSION_SETTINGS,
};
use recorder::UserRecorder;
pub use schema::{ensure_database, migrate, migrations, SCHEMA};
pub use tls::{PgTls, TlsSetupError};
pub use url::{DatabaseUrl, DatabaseUrlError, RootCert, SslMode, TlsSettings, Verify};

/// Settings for [`PgStore::connect`].
#[derive(Debug, Clone)]
pub struct PgSettings {
    pub config: tokio_postgres::Config,
    /// How connections use TLS (`config`'s ssl mode says whether they do).
    pub tls: PgTls,
    /// Most connections the pool opens.
    pub pool_size: u32,
    /// Longest a single store operation (including waiting for a connection) may take; an
    /// INSERT not confirmed by then is given up on (its outcome unknown).
    pub timeout: Duration,
    /// How long start-up keeps retrying an unreachable database (zero: forever).
    pub startup_timeout: Duration,
}

/// How many user names, and how many room names, [`PgStore`] keeps as known to exist.
const KNOWN_NAMES: usize = 100_000;

/// History in PostgreSQL.
pub struct PgStore {
    pool: Pool<PgManager>,
    timeout: Duration,
    /// Up, or down until the background probe reaches the database again.
    health: Arc<Health>,
    /// Names of users and rooms that stored messages reference: known to exist, so NICK and
    /// JOIN need not record them. Only names are kept, never ids, and batches never rely on
    /// it: their INSERT looks each name up itself (`batch.rs`). At most [`KNOWN_NAMES`] of
    /// each: a full cache starts again empty.
    known_users: Mutex<HashSet<Arc<str>>>,
    known_rooms: Mutex<HashSet<Arc<str>>>,
    /// Records the names of `record_user`, many at a time.
    user_recorder: UserRecorder,
    /// The database's history epoch, read at connect (schema.sql's migration 3).
    epoch: u64,
    /// This server among those sharing the database: its connections' `application_name`,
    /// which marks the batches it stores (see notify.rs).
    origin: String,
    /// The statements the database refused, for logging their causes.
    refusals: Mutex<Refusals>,
    /// The rows whose columns the server could not read, likewise (a limit of their own, so
    /// that a client making statements fail at will cannot hide them).
    unreadable: Mutex<Refusals>,
    /// How to open the connection that listens for stored batches.
    listen: (
        tokio_postgres::Config,
        tokio_postgres_rustls::MakeRustlsConnect,
    ),
}

/// A name for this server that no other is likely to have.
fn new_origin() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    format!("{}{:016x}", crate::store::SERVER_ORIGIN, hasher.finish())
}

fn to_db_id(id: MessageId) -> i64 {
    i64::try_from(id).unwrap_or(i64::MAX)
}

impl PgStore {
    /// Connects and migrates, retrying with backoff while the database is unreachable.
    pub async fn connect(settings: PgSettings) -> Result<PgStore, StoreError> {
        let started = tokio::time::Instant::now();
        let mut delay = Duration::from_millis(250);
        loop {
            match Self::try_connect(&settings).await {
                Ok(store) => return Ok(store),
                Err(Attempt::Refused(e)) => return Err(e),
                Err(Attempt::Failed(e)) => {
                    let waited = started.elapsed();
                    if !settings.startup_timeout.is_zero() && waited >= settings.startup_timeout {
                        return Err(unavailable(format!(
                            "gave up after {}s: {e}",
                            waited.as_secs()
                        )));
                    }
                    tracing::warn!(
                        "cannot use PostgreSQL at {}: {e}; retrying in {:.1}s",
                        describe(&settings.config),
                        delay.as_secs_f32()
                    );
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
            }
        }
    }

    async fn try_connect(settings: &PgSettings) -> Result<PgStore, Attempt> {
        // A database that stops answering (no RST) must turn into errors, not hangs.
        let mut config = settings.config.clone();
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(settings.timeout);
        }
        if config.get_tcp_user_timeout().is_none() {
            config.tcp_user_timeout(settings.timeout.max(Duration::from_secs(10)));
        }
        config
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(10));
        let origin = new_origin();
        config.application_name(&origin);
        let listen = (config.clone(), settings.tls.connector.clone());
        let manager = PgManager {
            inner: PostgresConnectionManager::new(config, settings.tls.connector.clone()),
        };
        let health = Arc::new(Health::default());
        // Migrate on a plain connection first: the pool's connections prepare statements
        // against the tables.
        let epoch = {
            let client = manager.inner.connect().await.map_err(|e| {
                let why = with_causes(&e);
                if tls::certificate_refused(&e) {
                    Attempt::Refused(unavailable(format!(
                        "{why} (the database's certificate does not pass {}; retrying \
                         cannot help)",
                        settings.tls.describe()
                    )))
                } else {
                    Attempt::Failed(unavailable(why))
                }
            })?;
            migrate(&client).await?;
            let row = client
                .query_one(pool::HISTORY_EPOCH, &[])
                .await
                .map_err(unavailable)?;
            row.try_get::<_, i64>(0).map_err(unavailable)? as u64
        };
        let pool = Pool::builder()
            .max_size(settings.pool_size.max(1))
            .connection_timeout(settings.timeout)
            // A refused connection fails the operation at once instead of being retried
            // until the timeout; the error is logged.
            .retry_connection(false)
            // No round trip per checkout: closed connections are skipped in `connection`,
            // and one that fails in use is discarded (`has_broken`).
            .test_on_check_out(false)
            .error_sink(Box::new(LogErrors {
                health: Arc::downgrade(&health),
            }))
            .build(manager)
            .await
            .map_err(unavailable)?;
        tokio::spawn(probe(
            pool.clone(),
            Arc::downgrade(&health),
            health.watch(),
            settings.timeout,
        ));
        let user_recorder =
            UserRecorder::spawn(pool.clone(), Arc::downgrade(&health), settings.timeout);
        Ok(PgStore {
            pool,
            timeout: settings.timeout,
            health,
            known_users: Mutex::new(HashSet::new()),
            known_rooms: Mutex::new(HashSet::new()),
            user_recorder,
            epoch,
            origin,
            refusals: Mutex::default(),
            unreadable: Mutex::default(),
            listen,
        })
    }

    /// Runs `op` unless the database is known to be down, giving up at `deadline`: an
    /// operation that gets no answer in time shows the database unresponsive.
    async fn before<T>(
        &self,
        deadline: Instant,
        what: &str,
        op: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        self.health.check()?;
        match tokio::time::timeout_at(deadline, op).await {
            Ok(result) => result,
            Err(_) => Err(unavailable(self.no_answer(what))),
        }
    }

    fn remember_names(&self, users: &[&str], rooms: &[&str]) {
        for (known, names) in [(&self.known_users, users), (&self.known_rooms, rooms)] {
            let mut known = known.lock().expect("name cache");
            for &name in names {
                if !known.contains(name) {
                    if known.len() >= KNOWN_NAMES {
                        known.clear();
                    }
                    known.insert(Arc::from(name));
                }
            }
        }
    }

    fn forget_names(&self) {
        self.known_users.lock().expect("name cache").clear();
        self.known_rooms.lock().expect("name cache").clear();
    }

    async fn with_timeout<T>(
        &self,
        what: &str,
        op: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        self.before(Instant::now() + self.timeout, what, op).await
    }

    /// Marks the database down for not answering `what` in time, and says so.
    fn no_answer(&self, what: &str) -> String {
        let why = format!("{what} took longer than {}s", self.timeout.as_secs_f32());
        self.health.mark_down(&why);
        why
    }

    /// A statement's error as a refusal, marking the database down if the error shows it
    /// unreachable. One the database refused is logged with its cause (the client is told
    /// only that the store is unavailable), at most one every [`errors::REFUSALS_LOGGED_EVERY`].
    fn failed(&self, e: tokio_postgres::Error) -> StoreError {
        if unreadable_column(&e) {
            return self.unreadable(e);
        }
        if shows_unreachable(&e) {
            self.health.mark_down(&e.to_string());
        } else if let Some(unlogged) = self
            .refusals
            .lock()
            .expect("refusals")
            .log_now(Instant::now().into_std())
        {
            tracing::warn!(error = %refusal(&e), unlogged, "PostgreSQL refused a statement");
        }
        unavailable(e)
    }

    /// A row with a column the server cannot read as the type it expects: its type was
    /// changed under the running server (an operator's `ALTER`). The operation fails, and the
    /// cause is logged as a refusal is; reading it with `Row::get` would panic the task.
    fn unreadable(&self, e: tokio_postgres::Error) -> StoreError {
        self.log_unreadable(&e);
        unavailable(e)
    }

    /// Logs an unreadable column's cause, at most one line every
    /// [`errors::REFUSALS_LOGGED_EVERY`].
    fn log_unreadable(&self, e: &tokio_postgres::Error) {
        if let Some(unlogged) = self
            .unreadable
            .lock()
            .expect("unreadable")
            .log_now(Instant::now().into_std())
        {
            tracing::warn!(error = %with_causes(e), unlogged, "PostgreSQL returned a column the server cannot read");
        }
    }

    /// A pooled connection, or a refusal as soon as the database is known to be down (a
    /// refused connection attempt is only reported to the pool's error sink, which marks it
    /// so; the wait for the connection would otherwise last the whole timeout).
    async fn connection(&self) -> Result<bb8::PooledConnection<'_, PgManager>, StoreError> {
        tokio::select! {
            biased;
            conn = self.open_connection() => conn,
            () = self.health.down() => Err(unavailable("the database is unreachable: no connection could be made")),
        }
    }

    /// A pooled connection that is not known to be closed (the database restarting closes
    /// them all; those are discarded here rather than failing an operation each).
    async fn open_connection(&self) -> Result<bb8::PooledConnection<'_, PgManager>, StoreError> {
        loop {
            let mut conn = self.pool.get().await.map_err(|e| match e {
                bb8::RunError::User(e) => self.failed(e),
                bb8::RunError::TimedOut => {
                    unavailable(self.no_answer("waiting for a database connection"))
                }
            })?;
            if !conn.client.is_closed() {
                return Ok(conn);
            }
            // Marked busy, the pool drops it instead of taking it back.
            conn.busy = true;
        }
    }
}

/// The background probe, one task per store: it sleeps until the store goes down, then tries
/// to open a connection, with backoff, until one opens (and goes to the pool); then the store
/// is up again. It ends with the store.
async fn probe(
    pool: Pool<PgManager>,
    health: Weak<Health>,
    mut watch: HealthWatch,
    timeout: Duration,
) {
    while watch.down().await {
        let mut backoff = Backoff::new(PROBE_FIRST, PROBE_CAP);
        loop {
            tokio::time::sleep(backoff.next_wait()).await;
            if health.strong_count() == 0 {
                return;
            }
            match tokio::time::timeout(timeout, pool.dedicated_connection()).await {
                Ok(Ok(conn)) => {
                    let _ = pool.add(conn);
                    break;
                }
                Ok(Err(e)) => tracing::debug!("the database probe failed: {e}"),
                Err(_) => tracing::debug!("the database probe got no answer in time"),
            }
        }
        match health.upgrade() {
            Some(health) => {
                health.mark_up();
            }
            None => return,
        }
    }
}

/// A short description of where a config points, without any password.
pub fn describe(config: &tokio_postgres::Config) -> String {
    let host = config
        .get_hosts()
        .first()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(h) => h.clone(),
            tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
        })
        .unwrap_or_else(|| "localhost".into());
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let db = config.get_dbname().unwrap_or("(default)");
    format!("{host}:{port}/{db}")
}
