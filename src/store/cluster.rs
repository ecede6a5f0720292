//! A private PostgreSQL cluster that the server runs itself (zero-config mode).
//!
//! Without `--database-url`, the server keeps its own cluster under `--data-dir`: it finds the
//! PostgreSQL server binaries, runs `initdb` on first start, starts the cluster listening only
//! on a Unix socket inside the data dir (no TCP port, so nothing else can reach it and no port
//! can clash), and stops it on shutdown. As root it runs them as the `postgres` user, because
//! PostgreSQL refuses to run as root.
//!
//! Everything here is blocking (it runs a few short commands); call it from
//! `spawn_blocking` or before the server starts.

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The fixed port number; with no TCP listener it only names the socket file.
const PORT: u16 = 5432;
/// The OS user that runs PostgreSQL when we are root.
const POSTGRES_USER: &str = "postgres";
/// Unix socket paths are limited to about 107 bytes.
const MAX_SOCKET_DIR: usize = 80;
/// The database the server uses inside its own cluster.
pub const DATABASE: &str = "linechat";
/// The superuser `initdb` creates.
pub const SUPERUSER: &str = "linechat";

/// What can go wrong running the local cluster.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(
        "the PostgreSQL server programs (initdb, pg_ctl, postgres) were not found {searched}. \
         Install them (Debian/Ubuntu: `apt-get install postgresql`; Fedora: `dnf install \
         postgresql-server`; macOS: `brew install postgresql`), or point --database-url at a \
         running PostgreSQL, or run without durable history: --store memory"
    )]
    NoBinaries { searched: String },
    #[error("{what} failed: {detail}")]
    Command { what: String, detail: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Where to look for the PostgreSQL server programs.
#[derive(Debug, Clone)]
pub struct Search {
    /// Only this directory, if set (`--pg-bin-dir`).
    pub explicit: Option<PathBuf>,
    /// The directories of `PATH`.
    pub path: Vec<PathBuf>,
    /// Roots holding one directory per version with a `bin/` inside.
    pub versioned_roots: Vec<PathBuf>,
}

impl Search {
    /// The usual places: `PATH`, `pg_config --bindir`, `/usr/lib/postgresql/*/bin`.
    pub fn from_env(explicit: Option<PathBuf>) -> Search {
        let path = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).collect())
            .unwrap_or_default();
        Search {
            explicit,
            path,
            versioned_roots: vec![PathBuf::from("/usr/lib/postgresql")],
        }
    }

    /// The first directory that holds initdb, pg_ctl and postgres.
    pub fn find(&self) -> Result<PathBuf, ClusterError> {
        let has_all = |dir: &Path| {
            ["initdb", "pg_ctl", "postgres"]
                .iter()
                .all(|p| dir.join(p).is_file())
        };
        if let Some(dir) = &self.explicit {
            return if has_all(dir) {
                Ok(dir.clone())
            } else {
                Err(ClusterError::NoBinaries {
                    searched: format!("in {}", dir.display()),
                })
            };
        }
        let mut candidates: Vec<PathBuf> = self.path.clone();
        // pg_config, if it is on PATH, knows where its server programs are.
        if let Some(pg_config) = self
            .path
            .iter()
            .map(|d| d.join("pg_config"))
            .find(|p| p.is_file())
        {
            if let Ok(out) = Command::new(pg_config).arg("--bindir").output() {
                if out.status.success() {
                    let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
                    candidates.push(PathBuf::from(dir));
                }
            }
        }
        for root in &self.versioned_roots {
            let mut versions: Vec<(u32, PathBuf)> = fs::read_dir(root)
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|e| {
                    let version = e.file_name().to_str()?.parse().ok()?;
                    Some((version, e.path().join("bin")))
                })
                .collect();
            // Newest version first.
            versions.sort_by_key(|v| std::cmp::Reverse(v.0));
            candidates.extend(versions.into_iter().map(|(_, dir)| dir));
        }
        candidates
            .into_iter()
            .find(|d| has_all(d))
            .ok_or_else(|| ClusterError::NoBinaries {
                searched: format!(
                    "on PATH, through pg_config --bindir, or in {}",
                    self.versioned_roots
                        .iter()
                        .map(|r| format!("{}/*/bin", r.display()))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            })
    }
}

/// A running cluster that this process started (or adopted) and will stop.
#[derive(Debug)]
pub struct LocalCluster {
    bin_dir: PathBuf,
    pgdata: PathBuf,
    socket_dir: PathBuf,
    log_file: PathBuf,
    as_postgres: bool,
    stopped: bool,
}

impl LocalCluster {
    /// Starts the cluster under `data_dir`, creating it on first use. A cluster left running
    /// by a server that was killed is adopted as it is.
    pub fn start(data_dir: &Path, search: &Search) -> Result<LocalCluster, ClusterError> {
        let bin_dir = search.find()?;
        fs::create_dir_all(data_dir)?;
        let data_dir = data_dir.canonicalize()?;
        let as_postgres = is_root();
        let socket_dir = socket_dir_for(&data_dir)?;
        let cluster = LocalCluster {
            bin_dir,
            pgdata: data_dir.join("pgdata"),
            log_file: data_dir.join("postgresql.log"),
            socket_dir,
            as_postgres,
            stopped: false,
        };
        if as_postgres {
            cluster.give_to_postgres(&data_dir)?;
            cluster.give_to_postgres(&cluster.socket_dir)?;
        }
        if !cluster.pgdata.join("PG_VERSION").is_file() {
            tracing::info!(pgdata = %cluster.pgdata.display(), "creating a PostgreSQL cluster");
            cluster.run(
                "initdb",
                [
                    OsStr::new("-D"),
                    cluster.pgdata.as_os_str(),
                    OsStr::new("-U"),
                    OsStr::new(SUPERUSER),
                    OsStr::new("-A"),
                    OsStr::new("trust"),
                    OsStr::new("-E"),
                    OsStr::new("UTF8"),
                    OsStr::new("--locale=C"),
                ],
            )?;
        }
        if cluster.is_running() {
            tracing::info!(pgdata = %cluster.pgdata.display(), "adopting the running PostgreSQL cluster");
        } else {
            tracing::info!(pgdata = %cluster.pgdata.display(), "starting PostgreSQL");
            let options = format!(
                "-c listen_addresses='' -k {} -p {PORT}",
                cluster.socket_dir.display()
            );
            cluster.run(
                "pg_ctl",
                [
                    OsStr::new("start"),
                    OsStr::new("-w"),
                    OsStr::new("-t"),
                    OsStr::new("120"),
                    OsStr::new("-D"),
                    cluster.pgdata.as_os_str(),
                    OsStr::new("-l"),
                    cluster.log_file.as_os_str(),
                    OsStr::new("-o"),
                    OsStr::new(&options),
                ],
            )?;
        }
        Ok(cluster)
    }

    /// Connection settings for database `dbname` in this cluster.
    pub fn pg_config(&self, dbname: &str) -> tokio_postgres::Config {
        let mut config = tokio_postgres::Config::new();
        config
            .host_path(&self.socket_dir)
            .port(PORT)
            .user(SUPERUSER)
            .dbname(dbname)
            .application_name("linechat");
        config
    }

    /// A connection string for database `dbname` (`host=... port=... user=... dbname=...`).
    pub fn url(&self, dbname: &str) -> String {
        format!(
            "host={} port={PORT} user={SUPERUSER} dbname={dbname}",
            self.socket_dir.display()
        )
    }

    /// The socket directory and port, for `psql -h DIR -p PORT`.
    pub fn socket(&self) -> (&Path, u16) {
        (&self.socket_dir, PORT)
    }

    /// The data directory PostgreSQL runs on.
    pub fn pgdata(&self) -> &Path {
        &self.pgdata
    }

    /// Runs a program of the cluster's bin dir, as a command line (for scripts and tests).
    pub fn command(&self, program: &str) -> Command {
        let program = self.bin_dir.join(program);
        if self.as_postgres {
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
    pub fn stop(&mut self) -> Result<(), ClusterError> {
        if self.stopped {
            return Ok(());
        }
        self.stopped = true;
        tracing::info!(pgdata = %self.pgdata.display(), "stopping PostgreSQL");
        self.run(
            "pg_ctl",
            [
                OsStr::new("stop"),
                OsStr::new("-w"),
                OsStr::new("-m"),
                OsStr::new("fast"),
                OsStr::new("-D"),
                self.pgdata.as_os_str(),
            ],
        )
        .map(drop)
    }

    /// Leaves the cluster running when this value is dropped.
    pub fn detach(mut self) {
        self.stopped = true;
    }

    fn give_to_postgres(&self, dir: &Path) -> Result<(), ClusterError> {
        let mut chown = Command::new("chown");
        chown.arg("-R").arg(format!("{POSTGRES_USER}:")).arg(dir);
        run_checked("chown", chown).map(drop)
    }

    fn run<I, S>(&self, program: &str, args: I) -> Result<Output, ClusterError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut command = self.command(program);
        command.args(args);
        run_checked(program, command).map_err(|e| match e {
            ClusterError::Command { what, detail } if self.as_postgres => ClusterError::Command {
                what,
                detail: format!(
                    "{detail} (running as the `{POSTGRES_USER}` user: it must be able to reach {}; \
                     choose a --data-dir it can reach, such as one under /var/lib or /tmp)",
                    self.pgdata.display()
                ),
            },
            other => other,
        })
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            tracing::warn!("could not stop PostgreSQL: {e}");
        }
    }
}

fn run_checked(what: &str, mut command: Command) -> Result<Output, ClusterError> {
    let output = command.output().map_err(|e| ClusterError::Command {
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
    Err(ClusterError::Command {
        what: what.to_string(),
        detail: format!("{} ({detail})", output.status),
    })
}

/// The socket lives in the data dir, unless that path is too long for a Unix socket; then
/// in a private directory under the temp dir named after the data dir.
fn socket_dir_for(data_dir: &Path) -> Result<PathBuf, ClusterError> {
    let inside = data_dir.join("run");
    let dir = if inside.as_os_str().len() <= MAX_SOCKET_DIR {
        inside
    } else {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        data_dir.hash(&mut h);
        std::env::temp_dir().join(format!("linechat-{:016x}", h.finish()))
    };
    fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_bin(dir: &Path) {
        fs::create_dir_all(dir).unwrap();
        for p in ["initdb", "pg_ctl", "postgres"] {
            fs::write(dir.join(p), "").unwrap();
        }
    }

    #[test]
    fn finds_binaries_on_path_then_newest_versioned_dir() {
        let tmp = std::env::temp_dir().join(format!("linechat-search-{}", std::process::id()));
        let _ = fs::remove_dir_all(&tmp);
        let root = tmp.join("lib");
        fake_bin(&root.join("13/bin"));
        fake_bin(&root.join("16/bin"));
        fs::create_dir_all(root.join("notes")).unwrap();
        let mut search = Search {
            explicit: None,
            path: vec![tmp.join("empty")],
            versioned_roots: vec![root.clone()],
        };
        assert_eq!(search.find().unwrap(), root.join("16/bin"));
        fake_bin(&tmp.join("onpath"));
        search.path.push(tmp.join("onpath"));
        assert_eq!(search.find().unwrap(), tmp.join("onpath"));
        let _ = fs::remove_dir_all(&tmp);
    }

    #[test]
    fn missing_binaries_name_the_package_and_the_alternative() {
        let search = Search {
            explicit: None,
            path: vec![],
            versioned_roots: vec![PathBuf::from("/nonexistent/postgresql")],
        };
        let message = search.find().unwrap_err().to_string();
        assert!(message.contains("apt-get install postgresql"), "{message}");
        assert!(message.contains("--store memory"), "{message}");
        assert!(
            message.contains("/nonexistent/postgresql/*/bin"),
            "{message}"
        );
    }
}
