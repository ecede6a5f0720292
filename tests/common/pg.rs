//! PostgreSQL for tests: one private cluster per test binary, started by the same code as the
//! server's zero-config mode, and a fresh database per test.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use linechat::managed_postgres::{ManagedPostgres, Search};
use linechat::{Config, StoreKind};

struct Shared {
    cluster: ManagedPostgres,
}

static SHARED: OnceLock<Shared> = OnceLock::new();
static NEXT_DB: AtomicUsize = AtomicUsize::new(0);

/// A temp directory the `postgres` user can reach, unique to this process.
pub fn temp_dir(tag: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "linechat-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Stops a data dir's cluster and removes the dir once this test process is gone, however it
/// ends. The watchdog is meant to outlive us, so it is never waited for.
#[allow(clippy::zombie_processes)]
fn watchdog(cluster: &ManagedPostgres, dir: &Path) {
    let mut stop = cluster.command("pg_ctl");
    stop.arg("stop")
        .arg("-m")
        .arg("immediate")
        .arg("-D")
        .arg(cluster.pgdata());
    let mut argv = vec![stop.get_program().to_owned()];
    argv.extend(stop.get_args().map(|a| a.to_owned()));
    Command::new("sh")
        .arg("-c")
        .arg(r#"while kill -0 "$WATCH_PID" 2>/dev/null; do sleep 0.5; done; "$@" >/dev/null 2>&1; rm -rf "$WATCH_DIR""#)
        .arg("watchdog")
        .args(argv)
        .env("WATCH_PID", std::process::id().to_string())
        .env("WATCH_DIR", dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the cluster watchdog");
}

/// Starts a cluster in `dir` that is stopped when this test process exits.
pub fn start_cluster(dir: &Path) -> ManagedPostgres {
    let cluster = ManagedPostgres::start(dir, &Search::from_env(None))
        .expect("PostgreSQL for the tests (install the postgresql package)");
    watchdog(&cluster, dir);
    cluster
}

fn shared() -> &'static ManagedPostgres {
    &SHARED
        .get_or_init(|| Shared {
            cluster: start_cluster(&temp_dir("tests")),
        })
        .cluster
}

/// A new, empty database in the shared cluster; returns its connection string.
pub async fn fresh_database() -> String {
    let cluster = tokio::task::spawn_blocking(shared).await.unwrap();
    let name = format!(
        "t{}_{}",
        std::process::id(),
        NEXT_DB.fetch_add(1, Ordering::Relaxed)
    );
    linechat::store::postgres::ensure_database(&cluster.pg_config("postgres"), &name)
        .await
        .expect("create a test database");
    cluster.url(&name)
}

/// A server config on a fresh database ([`super::memory_config`]'s other settings).
pub async fn config() -> Config {
    Config {
        store: StoreKind::Postgres,
        database_url: Some(fresh_database().await),
        ..super::memory_config()
    }
}

/// A private cluster under `dir`, which a test may stop and restart (the shared one must stay
/// up), with an empty database `linechat`; and a config on that database: `db_timeout`, and
/// `config`'s other settings.
pub async fn own_cluster(
    dir: &Path,
    db_timeout: Duration,
    config: Config,
) -> (ManagedPostgres, Config) {
    let cluster = tokio::task::spawn_blocking({
        let dir = dir.to_path_buf();
        move || start_cluster(&dir)
    })
    .await
    .unwrap();
    linechat::store::postgres::ensure_database(&cluster.pg_config("postgres"), "linechat")
        .await
        .unwrap();
    let config = Config {
        store: StoreKind::Postgres,
        database_url: Some(cluster.url("linechat")),
        db_timeout,
        ..config
    };
    (cluster, config)
}

/// Stops a cluster from [`own_cluster`] (fast shutdown), as an outage.
pub async fn stop_cluster(cluster: ManagedPostgres) {
    tokio::task::spawn_blocking(move || {
        let mut c = cluster.command("pg_ctl");
        c.args(["stop", "-m", "fast", "-D"]).arg(cluster.pgdata());
        assert!(c.output().unwrap().status.success());
        cluster.detach();
    })
    .await
    .unwrap();
}

/// Starts the cluster under `dir` again, after [`stop_cluster`].
pub async fn restart_cluster(dir: &Path) -> ManagedPostgres {
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || start_cluster(&dir))
        .await
        .unwrap()
}

/// Stops whatever PostgreSQL runs on `dir`'s data and removes `dir` (when dropped), so that a
/// test that fails half-way leaves nothing running.
pub struct DirGuard(pub PathBuf);

impl Drop for DirGuard {
    fn drop(&mut self) {
        let pgdata = self.0.join("pgdata");
        if pgdata.join("postmaster.pid").exists() {
            if let Ok(bin) = Search::from_env(None).find() {
                let pg_ctl = bin.join("pg_ctl");
                // SAFETY: geteuid has no preconditions.
                let mut stop = if unsafe { libc::geteuid() } == 0 {
                    let mut c = Command::new("runuser");
                    c.args(["-u", "postgres", "--"]).arg(pg_ctl);
                    c
                } else {
                    Command::new(pg_ctl)
                };
                let _ = stop
                    .args(["stop", "-m", "immediate", "-D"])
                    .arg(&pgdata)
                    .output();
            }
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A plain client connection to a database, for checking what is stored.
pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect to the test database");
    tokio::spawn(connection);
    client
}

/// The channels the servers listen on (schema.sql's migration 7): messages, presence.
pub async fn secret_channels(db: &tokio_postgres::Client) -> (String, String) {
    let row = db
        .query_one("SELECT messages, presence FROM notify_channels", &[])
        .await
        .unwrap();
    (row.get(0), row.get(1))
}
