//! Servers sharing one database are one chat for names and presence too (messages are
//! [`crate::bus`]'s): a name is held by one connection across all of them, and `WHO`,
//! `ROOMS`, `JOINED` and `LEFT` cover every server's members.
//!
//! The database keeps a directory (schema.sql's migration 6): a row per live server, and
//! under it its connections' names and rooms. Sessions change what this server wants there
//! ([`Cluster::set`]: cheap, never waits); one task, [`run`], writes the difference in one
//! transaction at a time, which also refreshes the server's row (its heartbeat), and removes
//! the rows of servers silent for `--node-timeout`, freeing their names and telling their
//! members' rooms that they left. The directory notifies every change; the bus hands other
//! servers' changes to the rooms (`remote`).
//!
//! A name is claimed in the directory before `OK NICK` ([`Cluster::claim`]). While the
//! database is away, a name is taken here unconfirmed, and claimed when it is back; should
//! another server hold it by then, the connection is closed (`BYE`) rather than two people
//! sharing a name.

pub mod ledger;
pub mod remote;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::bus::Retry;
use crate::mailbox::{ConnId, Eviction, Mailboxes};
use crate::store::{HistoryStore, StoreError};
use ledger::{Key, Ledger, Lost, Slot, Write};
use remote::RemoteMember;

/// Most changes written in one transaction.
const MAX_WRITES: usize = 4096;
/// Longest a stopping server tries to leave the directory: a hung database must not hold up
/// shutdown (the others then see it go within `--node-timeout`).
const LEAVE_WITHIN: Duration = Duration::from_secs(3);

/// The shared directory of live servers, names and rooms (PostgreSQL: schema.sql's
/// migration 6).
#[async_trait]
pub trait Directory: Send + Sync {
    /// Writes `writes` in one transaction that also records this server as alive now.
    async fn write(&self, writes: &[Write]) -> Result<Written, StoreError>;

    /// Removes the servers not heard from for `timeout`, and everything they held; returns
    /// their origins.
    async fn remove_silent(&self, timeout: Duration) -> Result<Vec<String>, StoreError>;

    /// Every room member on other servers.
    async fn others(&self) -> Result<Vec<RemoteMember>, StoreError>;

    /// Removes this server, and everything it holds.
    async fn leave(&self) -> Result<(), StoreError>;
}

/// What a [`Directory::write`] did.
#[derive(Debug, Default)]
pub struct Written {
    /// This server had no row: it is new, or it was taken for dead (or the database lost
    /// the directory), and what it wrote before is gone.
    pub made: bool,
    /// The directory held rooms of this server's when the write began (PostgreSQL empties
    /// the unlogged `presence` after a crash; names and servers are kept).
    pub has_rooms: bool,
    /// Name claims refused: another server's connection holds the name.
    pub lost: Vec<Lost>,
}

/// What came of [`Cluster::claim`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    Won,
    /// Another server's connection holds the name.
    Taken,
    /// The database did not answer in time: taken here, claimed when it is back.
    Unconfirmed,
}

/// This server's side of the directory.
pub struct Cluster {
    inner: Mutex<Inner>,
    /// Told when there is something to write.
    wake: Notify,
    /// Told by whoever waits for a write: the writer tries at once, even while failing.
    urgent: Notify,
    /// Told after every write.
    written: Notify,
    /// Set while the directory cannot be written: nobody waits for more than one attempt.
    failing: AtomicBool,
    /// Write attempts begun, and the number of the last that failed: a waiter gives up only
    /// on a failure of an attempt begun after it asked, not on an earlier failure (the
    /// database may be back since).
    begun: AtomicU64,
    last_failed: AtomicU64,
    /// How long a session waits for its change to be written.
    wait: Duration,
    node_timeout: Duration,
    stopping: CancellationToken,
    /// Set once [`run`] has left the directory (or given up on it).
    left: watch::Sender<bool>,
}

#[derive(Default)]
struct Inner {
    ledger: Ledger,
    /// Connections waiting for a name claim: told by [`Cluster::claim`], not closed.
    claiming: HashSet<ConnId>,
}

impl Cluster {
    pub fn new(node_timeout: Duration, wait: Duration) -> Arc<Cluster> {
        Arc::new(Cluster {
            inner: Mutex::default(),
            wake: Notify::new(),
            urgent: Notify::new(),
            written: Notify::new(),
            failing: AtomicBool::new(false),
            begun: AtomicU64::new(0),
            last_failed: AtomicU64::new(0),
            wait,
            node_timeout,
            stopping: CancellationToken::new(),
            left: watch::channel(false).0,
        })
    }

    /// From now on, `conn`'s `slot` should read `name` in the directory (`None`: be gone).
    pub fn set(&self, conn: ConnId, slot: Slot, name: Option<Arc<str>>) {
        self.inner
            .lock()
            .expect("cluster lock")
            .ledger
            .set((conn, slot), name);
        self.wake.notify_one();
    }

    /// [`set`](Self::set), then waits until it is written (at most `--db-timeout`; not at
    /// all while the database is away).
    pub async fn set_and_wait(&self, conn: ConnId, slot: Slot, name: Option<Arc<str>>) {
        self.set(conn, slot.clone(), name);
        self.settled(&(conn, slot)).await;
    }

    /// Claims `name` for `conn` across every server.
    pub async fn claim(&self, conn: ConnId, name: Arc<str>) -> Claim {
        let key = (conn, Slot::Name);
        {
            let mut inner = self.inner.lock().expect("cluster lock");
            inner.ledger.set(key.clone(), Some(name.clone()));
            inner.claiming.insert(conn);
        }
        self.wake.notify_one();
        let settled = self.settled(&key).await;
        let mut inner = self.inner.lock().expect("cluster lock");
        inner.claiming.remove(&conn);
        if !settled {
            Claim::Unconfirmed
        } else if inner.ledger.written(&key) == Some(&name) {
            Claim::Won
        } else {
            Claim::Taken
        }
    }

    /// Waits until `key` is written as wanted; false if that did not happen in time, or an
    /// attempt begun after this call failed.
    async fn settled(&self, key: &Key) -> bool {
        let deadline = Instant::now() + self.wait;
        let asked = self.begun.load(Ordering::SeqCst);
        self.urgent.notify_one();
        loop {
            let written = self.written.notified();
            tokio::pin!(written);
            written.as_mut().enable();
            if self
                .inner
                .lock()
                .expect("cluster lock")
                .ledger
                .is_settled(key)
            {
                return true;
            }
            if self.last_failed.load(Ordering::SeqCst) > asked {
                return false;
            }
            if tokio::time::timeout_at(deadline, written).await.is_err() {
                return false;
            }
        }
    }

    /// Stops writing and removes this server from the directory, so that the others see
    /// its members leave now rather than after `--node-timeout`.
    pub async fn leave(&self) {
        self.stopping.cancel();
        let mut left = self.left.subscribe();
        let _ = left.wait_for(|left| *left).await;
    }

    /// Stops writing (the hub is gone), without waiting.
    pub fn stop(&self) {
        self.stopping.cancel();
    }
}

/// Writes this server's changes to the directory until [`Cluster::leave`], keeps its row
/// alive, and removes silent servers.
pub async fn run(cluster: Arc<Cluster>, store: Arc<dyn HistoryStore>, mailboxes: Arc<Mailboxes>) {
    let Some(directory) = store.directory() else {
        cluster.left.send_replace(true);
        return;
    };
    let mut beat = tokio::time::interval(cluster.node_timeout / 4);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut writer = DirectoryWriter {
        cluster: &cluster,
        directory,
        mailboxes: &mailboxes,
        registered: false,
        in_touch_since: None,
        retry: Retry::default(),
        attempt: 0,
    };
    loop {
        let failing = cluster.failing.load(Ordering::Relaxed);
        let heartbeat = tokio::select! {
            () = cluster.stopping.cancelled() => break,
            () = cluster.wake.notified(), if !failing => false,
            () = cluster.urgent.notified() => false,
            _ = beat.tick() => true,
            _ = writer.retry.wait(&cluster.stopping), if failing => false,
        };
        writer.write_all(heartbeat).await;
        if heartbeat {
            writer.remove_silent().await;
        }
    }
    match tokio::time::timeout(cluster.wait.min(LEAVE_WITHIN), directory.leave()).await {
        Ok(Ok(())) => tracing::info!("left the servers sharing the database"),
        Ok(Err(e)) => tracing::warn!(error = %e, "could not leave the servers sharing the database; they will see this one go within --node-timeout"),
        Err(_) => tracing::warn!("leaving the servers sharing the database took too long; they will see this one go within --node-timeout"),
    }
    cluster.left.send_replace(true);
}

struct DirectoryWriter<'a> {
    cluster: &'a Cluster,
    directory: &'a dyn Directory,
    mailboxes: &'a Mailboxes,
    /// Set once this server's row was made: a row made again means it had been removed.
    registered: bool,
    /// Since when writes have succeeded without a break.
    in_touch_since: Option<Instant>,
    retry: Retry,
    /// The number of the attempt under way.
    attempt: u64,
}

impl DirectoryWriter<'_> {
    /// Writes until nothing is left to write (or a write fails); at least once for a
    /// heartbeat.
    async fn write_all(&mut self, mut heartbeat: bool) {
        loop {
            let writes = self.lock().ledger.writes(MAX_WRITES);
            if writes.is_empty() && !heartbeat {
                return;
            }
            heartbeat = false;
            self.attempt = self.cluster.begun.fetch_add(1, Ordering::SeqCst) + 1;
            let written = tokio::time::timeout(self.cluster.wait, self.directory.write(&writes));
            // A write waiting on a hung database gives way to shutdown.
            let written = tokio::select! {
                written = written => written,
                () = self.cluster.stopping.cancelled() => return,
            };
            let written = match written {
                Ok(Ok(written)) => written,
                Ok(Err(e)) => return self.failed(&e.to_string()),
                Err(_) => return self.failed("the database did not answer in time"),
            };
            if self.retry.succeeded() {
                tracing::info!("writing names and presence to the database again");
            }
            self.cluster.failing.store(false, Ordering::Relaxed);
            self.in_touch_since.get_or_insert_with(Instant::now);
            let taken = {
                let mut inner = self.lock();
                let had_rooms = inner.ledger.has_written_rooms();
                inner.ledger.done(writes, &written.lost);
                if had_rooms && !written.has_rooms && !written.made {
                    tracing::warn!("the database lost this server's rooms (a crash empties them): writing them again");
                    inner.ledger.forget_written_rooms();
                }
                if written.made && self.registered {
                    tracing::warn!("the other servers took this one for dead (or the database lost its directory): writing its names and presence again");
                    inner.ledger.forget_written();
                }
                let claiming = &inner.claiming;
                let taken: Vec<Lost> = written
                    .lost
                    .into_iter()
                    .filter(|l| !claiming.contains(&l.conn))
                    .collect();
                taken
            };
            self.registered = true;
            for lost in taken {
                tracing::info!(name = %lost.name, "a name taken while the database was away is held on another server: closing its connection");
                if let Some(mailbox) = self.mailboxes.get(lost.conn) {
                    mailbox.evict(Eviction::NameTaken);
                }
            }
            self.cluster.written.notify_waiters();
        }
    }

    fn failed(&mut self, why: &str) {
        if self.retry.failed() {
            tracing::warn!(
                error = why,
                "cannot write names and presence to the database; retrying"
            );
        }
        self.lock().ledger.failed();
        self.cluster.failing.store(true, Ordering::Relaxed);
        self.cluster
            .last_failed
            .fetch_max(self.attempt, Ordering::SeqCst);
        self.in_touch_since = None;
        // Whoever waits for a write stops waiting.
        self.cluster.written.notify_waiters();
    }

    /// Removes servers silent for `--node-timeout`, once this one has itself been in touch
    /// with the database for that long: after an outage every server's heartbeat is late,
    /// and each must have had its chance to write one.
    async fn remove_silent(&mut self) {
        let timeout = self.cluster.node_timeout;
        if self.in_touch_since.is_none_or(|t| t.elapsed() < timeout) {
            return;
        }
        let removed =
            tokio::time::timeout(self.cluster.wait, self.directory.remove_silent(timeout));
        let removed = tokio::select! {
            removed = removed => removed,
            () = self.cluster.stopping.cancelled() => return,
        };
        match removed {
            Ok(Ok(removed)) => {
                for node in removed {
                    tracing::info!(%node, "a server sharing the database went silent: its members left");
                }
            }
            Ok(Err(e)) => tracing::debug!(error = %e, "could not remove silent servers"),
            Err(_) => tracing::debug!("removing silent servers took too long"),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.cluster.inner.lock().expect("cluster lock")
    }
}
