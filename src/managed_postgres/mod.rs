//! A PostgreSQL server process that linechat runs itself (zero-config mode). Not a store: the
//! store talks to it like to any PostgreSQL, through a connection string.
//!
//! Without `--database-url`, the server keeps its own cluster under `--data-dir`: it finds the
//! PostgreSQL server programs, runs `initdb` on first start, starts the cluster listening only
//! on a Unix socket inside the data dir (no TCP port, so nothing else can reach it and no port
//! can clash), and stops it on shutdown. As root it runs them as the `postgres` user, because
//! PostgreSQL refuses to run as root.
//!
//! Starting and [`stop`](ManagedPostgres::stop)ping run short commands and wait for them:
//! call them from `spawn_blocking` or before the runtime starts. Dropping never waits: it only
//! asks the postmaster to shut down. While the server runs, a [`Supervisor`] restarts the
//! postmaster if it dies.
//!
//! As root, nothing under the data directory is trusted to be what it seems (`files.rs`).

use std::fs;
use std::os::fd::AsRawFd;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

mod files;
mod programs;
mod supervisor;

use files::Owners;
pub use programs::Search;
pub use supervisor::Supervisor;

/// The fixed port number; with no TCP listener it only names the socket file.
const PORT: u16 = 5432;
/// The OS user that runs PostgreSQL when we are root.
pub const POSTGRES_USER: &str = "postgres";
/// Unix socket paths are limited to about 107 bytes.
const MAX_SOCKET_DIR: usize = 80;
/// The database the server uses inside its own cluster.
pub const DATABASE: &str = "linechat";
/// The superuser `initdb` creates.
pub const SUPERUSER: &str = "linechat";

/// What can go wrong running the local cluster.
#[derive(Debug, thiserror::Error)]
pub enum ManagedPostgresError {
    #[error(
        "the PostgreSQL server programs (initdb, pg_ctl, postgres) were not found {searched}. \
         Install them (Debian/Ubuntu: `apt-get install postgresql`; Fedora: `dnf install \
         postgresql-server`; macOS: `brew install postgresql`), or point --database-url at a \
         running PostgreSQL, or run without durable history: --store memory"
    )]
    NoBinaries { searched: String },
    /// Another server holds the data directory (and runs its cluster).
    #[error("another linechat server is using {0}; stop it or choose another --data-dir")]
    InUse(String),
    #[error("{what} failed: {detail}")]
    Command { what: String, detail: String },
    #[error("unsafe data directory: {0}")]
    UnsafeDataDir(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// A running cluster that this process started (or adopted) and will stop.
#[derive(Debug)]
pub struct ManagedPostgres {
    bin_dir: PathBuf,
    pgdata: PathBuf,
    socket_dir: PathBuf,
    log_file: PathBuf,
    /// Who owns what we create; as root, the postgres user gets it.
    owners: Owners,
    stopped: bool,
    /// Held for the life of the process: one server per data dir.
    _lock: fs::File,
}

impl ManagedPostgres {
    /// Starts the cluster under `data_dir`, creating it on first use. A cluster left running
    /// by a server that was killed is adopted. Only one server at a time may use a data dir.
    pub fn start(
        data_dir: &Path,
        search: &Search,
    ) -> Result<ManagedPostgres, ManagedPostgresError> {
        // SAFETY: geteuid has no preconditions and cannot fail.
        let us = unsafe { libc::geteuid() };
        // Checked as given, before anything is created or followed; the real path from here.
        let data_dir = files::resolve_data_dir(data_dir, us)?;
        let lock = lock_data_dir(&data_dir)?;
        let pgdata = data_dir.join("pgdata");
        let bin_dir = match files::read_small(&pgdata.join("PG_VERSION")) {
            Ok(version) => search.find_version(version.trim())?,
            Err(_) => search.find()?,
        };
        let owners = Owners {
            us,
            postgres: is_root().then(postgres_account).transpose()?,
        };
        let cluster = ManagedPostgres {
            bin_dir,
            log_file: data_dir.join("postgresql.log"),
            socket_dir: socket_dir_for(&data_dir, &owners)?,
            pgdata,
            owners,
            stopped: false,
            _lock: lock,
        };
        // Only what we create is handed to postgres, never the caller's directory tree.
        files::prepare_log(&cluster.log_file, &cluster.owners)?;
        if !cluster.pgdata.join("PG_VERSION").is_file() {
            cluster.init()?;
        }
        cluster.write_settings()?;
        let socket = cluster.socket_dir.join(format!(".s.PGSQL.{PORT}"));
        if cluster.is_stopping() {
            // Asked to stop by a server that went away (see `Drop`): let it finish, then
            // start it afresh, rather than adopt a cluster that is about to be gone.
            tracing::info!(pgdata = %cluster.pgdata.display(), "waiting for PostgreSQL to finish stopping");
            let mut pg_ctl = cluster.command("pg_ctl");
            pg_ctl
                .args(["stop", "-w", "-m", "fast", "-D"])
                .arg(&cluster.pgdata);
            // It may be gone by now, and then pg_ctl says so and fails: nothing to wait for.
            let _ = pg_ctl.output();
        }
        if cluster.is_running() && socket.exists() {
            tracing::info!(pgdata = %cluster.pgdata.display(), "adopting the running PostgreSQL cluster");
        } else {
            let verb = if cluster.is_running() {
                // Running, but not where we look for it (the socket moved): restart it there.
                "restart"
            } else {
                "start"
            };
            tracing::info!(pgdata = %cluster.pgdata.display(), "{verb}ing PostgreSQL");
            cluster.pg_ctl_start(verb)?;
        }
        tracing::info!(
            "PostgreSQL socket: {} (psql -h {} -p {PORT} -U {SUPERUSER} {DATABASE})",
            socket.display(),
            cluster.socket_dir.display()
        );
        Ok(cluster)
    }

    /// `pg_ctl start` (or `restart`), waiting until it accepts connections.
    fn pg_ctl_start(&self, verb: &str) -> Result<(), ManagedPostgresError> {
        let mut pg_ctl = self.command("pg_ctl");
        pg_ctl.args([verb, "-w", "-t", "120", "-m", "fast"]);
        pg_ctl.arg("-D").arg(&self.pgdata);
        pg_ctl.arg("-l").arg(&self.log_file);
        self.run("pg_ctl", pg_ctl).map(drop)
    }

    /// Starts the postmaster again after it died (see [`Supervisor`]).
    fn restart_postmaster(&self) -> Result<(), ManagedPostgresError> {
        self.pg_ctl_start("start")
    }

    /// Runs initdb into a scratch directory and renames it into place, so that an
    /// interrupted first start leaves nothing half-made behind.
    fn init(&self) -> Result<(), ManagedPostgresError> {
        tracing::info!(pgdata = %self.pgdata.display(), "creating a PostgreSQL cluster");
        let scratch = self.pgdata.with_extension("initdb");
        // (Removes a link itself, not what it points at.)
        if fs::symlink_metadata(&scratch).is_ok() {
            fs::remove_dir_all(&scratch)?;
        }
        fs::create_dir(&scratch)?;
        files::prepare_dir(&scratch, 0o700, &self.owners)?;
        let mut initdb = self.command("initdb");
        initdb.arg("-D").arg(&scratch).args(["-U", SUPERUSER]);
        // Only the socket reaches the cluster, and its directory is ours alone (0700).
        initdb.args(["-A", "trust", "-E", "UTF8", "--locale=C"]);
        self.run("initdb", initdb)?;
        fs::rename(&scratch, &self.pgdata)?;
        Ok(())
    }

    /// Where the cluster listens, written into its configuration (not passed on pg_ctl's
    /// command line, which goes through a shell and breaks on paths with spaces). The file
    /// is replaced, not written through: whoever runs as postgres could have made it a link.
    fn write_settings(&self) -> Result<(), ManagedPostgresError> {
        let dir = self.socket_dir.to_string_lossy().replace('\'', "''");
        let settings = format!(
            "# Written by linechat at every start; edits are lost.\n\
             listen_addresses = ''\n\
             port = {PORT}\n\
             unix_socket_directories = '{dir}'\n\
             unix_socket_permissions = 0700\n"
        );
        files::replace_file(
            &self.pgdata.join("postgresql.auto.conf"),
            &settings,
            &self.owners,
        )
    }

    /// Connection settings for database `dbname` in this cluster.
    pub fn pg_config(&self, dbname: &str) -> tokio_postgres::Config {
        let mut config = tokio_postgres::Config::new();
        config
            .host_path(&self.socket_dir)
            .port(PORT)
            .user(SUPERUSER)
            .dbname(dbname)
            .application_name("linechat")
            // A Unix socket, ours alone: PostgreSQL would refuse TLS on it anyway.
            .ssl_mode(tokio_postgres::config::SslMode::Disable);
        config
    }

    /// A connection string for database `dbname` (`host=... port=... user=... dbname=...`).
    pub fn url(&self, dbname: &str) -> String {
        format!(
            "host={} port={PORT} user={SUPERUSER} dbname={dbname}",
            self.socket_dir.display()
        )
    }

    /// The data directory PostgreSQL runs on.
    pub fn pgdata(&self) -> &Path {
        &self.pgdata
    }

    /// Runs a program of the cluster's bin dir, as a command line (for scripts and tests):
    /// as the postgres user, through `runuser` while we are root, directly once we are not
    /// (after the server gave root up, it runs as that user itself).
    pub fn command(&self, program: &str) -> Command {
        let program = self.bin_dir.join(program);
        if is_root() && self.owners.postgres.is_some() {
            let mut c = Command::new("runuser");
            c.args(["-u", POSTGRES_USER, "--"]).arg(program);
            c
        } else {
            Command::new(program)
        }
    }

    /// True if a postmaster is serving this data directory.
    pub fn is_running(&self) -> bool {
        self.command("pg_ctl")
            .arg("status")
            .arg("-D")
            .arg(&self.pgdata)
            .output()
            .is_ok_and(|o| o.status.success())
    }

    /// Stops the cluster (fast mode: active sessions are ended, a clean shutdown checkpoint).
    pub fn stop(&mut self) -> Result<(), ManagedPostgresError> {
        if self.stopped {
            return Ok(());
        }
        self.stopped = true;
        tracing::info!(pgdata = %self.pgdata.display(), "stopping PostgreSQL");
        let mut pg_ctl = self.command("pg_ctl");
        pg_ctl
            .args(["stop", "-w", "-m", "fast", "-D"])
            .arg(&self.pgdata);
        self.run("pg_ctl", pg_ctl).map(drop)
    }

    /// The process id of the postmaster serving this data directory, if one runs: the first
    /// line of `postmaster.pid`, checked against the process's command line (a file left by
    /// a killed postmaster may name a process id that is now another program's).
    pub fn postmaster_pid(&self) -> Option<libc::pid_t> {
        let text = files::read_small(&self.pgdata.join("postmaster.pid")).ok()?;
        let pid: libc::pid_t = text.lines().next()?.trim().parse().ok()?;
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let pgdata = self.pgdata.as_os_str().as_encoded_bytes();
        let ours = cmdline.split(|b| *b == 0).any(|arg| arg == pgdata);
        ours.then_some(pid)
    }

    /// True if the postmaster of this data directory is shutting down: the status line of
    /// `postmaster.pid` (its eighth) says `stopping`.
    fn is_stopping(&self) -> bool {
        files::read_small(&self.pgdata.join("postmaster.pid"))
            .is_ok_and(|text| text.lines().nth(7).is_some_and(|s| s.trim() == "stopping"))
    }

    /// Leaves the cluster running when this value is dropped.
    pub fn detach(mut self) {
        self.stopped = true;
    }

    /// Runs one of [`command`](Self::command)'s commands, saying what to do if it fails.
    fn run(&self, program: &str, command: Command) -> Result<Output, ManagedPostgresError> {
        run_checked(program, command).map_err(|e| match e {
            ManagedPostgresError::Command { what, detail } if self.owners.postgres.is_some() => {
                ManagedPostgresError::Command {
                    what,
                    detail: format!(
                        "{detail} (running as the `{POSTGRES_USER}` user: it must be able to \
                         reach {}; choose a --data-dir it can reach, such as /var/lib/linechat)",
                        self.pgdata.display()
                    ),
                }
            }
            other => other,
        })
    }
}

impl Drop for ManagedPostgres {
    /// Asks the postmaster for a fast shutdown and returns at once: a drop may happen on an
    /// async runtime's thread, which must never wait for a process. [`stop`](Self::stop)
    /// is the way that waits. A server started on the data directory meanwhile waits for
    /// the shutdown to finish (see `start`).
    fn drop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        if let Some(pid) = self.postmaster_pid() {
            // SAFETY: kill only sends a signal; SIGINT asks PostgreSQL for a fast shutdown.
            unsafe {
                libc::kill(pid, libc::SIGINT);
            }
        } else if !Path::new("/proc/self").exists() {
            // No /proc to check the process id against (not Linux): pg_ctl, which checks it
            // its own way, sends the signal from a thread of its own.
            let mut pg_ctl = self.command("pg_ctl");
            pg_ctl
                .args(["stop", "-W", "-m", "fast", "-D"])
                .arg(&self.pgdata);
            pg_ctl.stdout(Stdio::null()).stderr(Stdio::null());
            std::thread::spawn(move || pg_ctl.status());
        }
    }
}

fn run_checked(what: &str, mut command: Command) -> Result<Output, ManagedPostgresError> {
    let output = command
        .output()
        .map_err(|e| ManagedPostgresError::Command {
            what: what.to_string(),
            detail: e.to_string(),
        })?;
    if output.status.success() {
        return Ok(output);
    }
    let mut detail = String::from_utf8_lossy(&output.stderr).trim().to_string();
    if detail.is_empty() {
        detail = String::from_utf8_lossy(&output.stdout).trim().to_string();
    }
    Err(ManagedPostgresError::Command {
        what: what.to_string(),
        detail: format!("{} ({detail})", output.status),
    })
}

/// The socket lives in the data dir, unless that path is too long for a Unix socket; then
/// in a directory under the temp dir named by a stable hash of the data dir. Either way only
/// its owner may enter it (0700), which is what keeps the trust-authenticated cluster
/// private; one that is not ours (or postgres's) is refused.
fn socket_dir_for(data_dir: &Path, owners: &Owners) -> Result<PathBuf, ManagedPostgresError> {
    let dir = socket_dir_path(data_dir);
    // (mkdir never follows a link: one planted there makes it fail, and prepare_dir refuse.)
    match fs::DirBuilder::new().mode(0o700).create(&dir) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(e.into()),
        _ => {}
    }
    files::prepare_dir(&dir, 0o700, owners)?;
    Ok(dir)
}

/// How to reach database `dbname` of the cluster that a running server keeps under
/// `data_dir` (for `linechat account`, while the server runs): its socket, if it is there.
pub fn running_cluster_config(data_dir: &Path, dbname: &str) -> Option<tokio_postgres::Config> {
    let socket_dir = socket_dir_path(&data_dir.canonicalize().ok()?);
    if !socket_dir.join(format!(".s.PGSQL.{PORT}")).exists() {
        return None;
    }
    let mut config = tokio_postgres::Config::new();
    config
        .host_path(&socket_dir)
        .port(PORT)
        .user(SUPERUSER)
        .dbname(dbname)
        .application_name("linechat account")
        .ssl_mode(tokio_postgres::config::SslMode::Disable);
    Some(config)
}

/// `data_dir/run`, or a directory under the system's temporary one named after `data_dir`
/// if that path is too long for a Unix socket.
fn socket_dir_path(data_dir: &Path) -> PathBuf {
    let inside = data_dir.join("run");
    if inside.as_os_str().len() <= MAX_SOCKET_DIR {
        inside
    } else {
        let hash = fnv1a(data_dir.as_os_str().as_encoded_bytes());
        std::env::temp_dir().join(format!("linechat-{hash:016x}"))
    }
}

/// FNV-1a: a hash that stays the same across builds and platforms.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Takes an exclusive lock on `data_dir/linechat.lock`, or says who has it.
fn lock_data_dir(data_dir: &Path) -> Result<fs::File, ManagedPostgresError> {
    let file = files::open_lock(&data_dir.join("linechat.lock"))?;
    // SAFETY: flock on a descriptor we own; the lock goes with the file.
    let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
    if !locked {
        return Err(ManagedPostgresError::InUse(data_dir.display().to_string()));
    }
    Ok(file)
}

fn is_root() -> bool {
    crate::privileges::is_root()
}

/// The postgres user's ids, to hand it what it needs.
fn postgres_account() -> Result<(libc::uid_t, libc::gid_t), ManagedPostgresError> {
    let account =
        crate::privileges::lookup(POSTGRES_USER).map_err(|e| ManagedPostgresError::Command {
            what: format!("finding the `{POSTGRES_USER}` user (PostgreSQL refuses to run as root)"),
            detail: e.to_string(),
        })?;
    Ok((account.uid, account.gid))
}
