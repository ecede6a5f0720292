//! `linechat account ...`: an operator's commands for accounts, for servers with
//! `--registration closed` (or to reset a forgotten password). They work on the store the
//! server's flags name: the PostgreSQL at `--database-url`, or the private cluster under
//! `--data-dir`, through its socket while a server runs it (started here otherwise).

use std::io::{BufRead, IsTerminal};

use super::password::{hash_now, Password};
use super::AccountStore;
use crate::config::{Config, StoreKind};
use crate::managed_postgres::{self, ManagedPostgresError};
use crate::protocol;
use crate::server::{StartError, Stores};
use crate::store::postgres::PgTls;

/// What to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Registers a name, with a password read from standard input.
    Add(String),
    /// Sets a registered name's password, read from standard input.
    Passwd(String),
    /// Makes a registered name a guest name again (its history stays).
    Remove(String),
    /// Lists the registered names.
    List,
}

/// Why an account command failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("accounts of --store memory live inside the running server; use a PostgreSQL store, or REGISTER over the protocol")]
    MemoryStore,
    #[error(transparent)]
    Start(#[from] StartError),
    #[error("{0}")]
    Refused(String),
    #[error("cannot read the password: {0}")]
    Input(#[from] std::io::Error),
}

fn refused(text: impl Into<String>) -> AdminError {
    AdminError::Refused(text.into())
}

/// Runs `action`, reading a password from standard input when it needs one; returns what to
/// print.
pub async fn run(config: &Config, action: Action) -> Result<String, AdminError> {
    if let Action::Add(name) | Action::Passwd(name) | Action::Remove(name) = &action {
        protocol::validate_nick(name).map_err(|e| refused(e.text))?;
    }
    // The password first: a typo in it should not cost a database start.
    let password = match &action {
        Action::Add(name) | Action::Passwd(name) => Some(read_password(name)?),
        _ => None,
    };
    let Stores {
        accounts, cluster, ..
    } = open(config).await?;
    let done = apply(&*accounts, action, password).await;
    drop(accounts);
    // A cluster started here (no server runs on the data directory) is stopped again.
    if let Some(mut cluster) = cluster {
        let stopped = tokio::task::spawn_blocking(move || cluster.stop()).await;
        if let Ok(Err(e)) = stopped {
            tracing::warn!("could not stop PostgreSQL: {e}");
        }
    }
    done
}

async fn apply(
    accounts: &dyn AccountStore,
    action: Action,
    password: Option<Password>,
) -> Result<String, AdminError> {
    let store = |e: crate::store::StoreError| refused(e.to_string());
    let hash = match password {
        Some(password) => Some(
            tokio::task::spawn_blocking(move || hash_now(&password))
                .await
                .map_err(|e| refused(e.to_string()))?
                .map_err(|e| refused(e.to_string()))?,
        ),
        None => None,
    };
    match action {
        Action::Add(name) => {
            let hash = hash.expect("read above");
            if !accounts.register(&name, &hash).await.map_err(store)? {
                return Err(refused(format!(
                    "{name} is registered already; `linechat account passwd {name}` sets a new password"
                )));
            }
            Ok(format!("registered {name}"))
        }
        Action::Passwd(name) => {
            let hash = hash.expect("read above");
            if !accounts
                .set_password(&name, None, &hash)
                .await
                .map_err(store)?
            {
                return Err(refused(format!(
                    "{name} is not registered; `linechat account add {name}` registers it"
                )));
            }
            Ok(format!("changed the password of {name}"))
        }
        Action::Remove(name) => {
            if !accounts.unregister(&name).await.map_err(store)? {
                return Err(refused(format!("{name} is not registered")));
            }
            Ok(format!("{name} is a guest name again; its history stays"))
        }
        Action::List => {
            let names = accounts.list().await.map_err(store)?;
            let names: Vec<&str> = names.iter().map(|n| &**n).collect();
            Ok(names.join("\n"))
        }
    }
}

/// The store the server's flags name. The private cluster of a running server is reached
/// through its socket (the server holds its data directory).
async fn open(config: &Config) -> Result<Stores, AdminError> {
    if config.store == StoreKind::Memory {
        return Err(AdminError::MemoryStore);
    }
    // An account made in a store no server uses would be lost: the server's own cluster must
    // exist already (a typo in --data-dir would otherwise make a new one).
    if config.database_url.is_none() && !config.data_dir.join("pgdata/PG_VERSION").is_file() {
        return Err(refused(format!(
            "there is no linechat store in {}: give the --data-dir (or --database-url) the server uses",
            config.data_dir.display()
        )));
    }
    match Stores::open(config).await {
        Err(StartError::ManagedPostgres(ManagedPostgresError::InUse(dir))) => {
            let running = managed_postgres::running_cluster_config(
                &config.data_dir,
                managed_postgres::DATABASE,
            )
            .ok_or_else(|| {
                refused(format!(
                    "a server holds {dir}, but its PostgreSQL socket is not there"
                ))
            })?;
            // A Unix socket: no TLS.
            Ok(Stores::postgres(config, running, PgTls::disabled()).await?)
        }
        opened => Ok(opened?),
    }
}

/// A password from standard input: its first line. On a terminal it is asked for without
/// echo, twice.
fn read_password(name: &str) -> Result<Password, AdminError> {
    let stdin = std::io::stdin();
    let password = if stdin.is_terminal() {
        let first = prompt(&format!("password for {name}: "))?;
        let again = prompt("again: ")?;
        if first.expose() != again.expose() {
            return Err(refused("the two passwords differ"));
        }
        first
    } else {
        let mut line = String::new();
        stdin.lock().read_line(&mut line)?;
        Password::new(line.trim_end_matches(['\n', '\r']))
    };
    if let Some(why) = password.weakness() {
        return Err(refused(why));
    }
    Ok(password)
}

/// Asks on the terminal with echo off.
fn prompt(question: &str) -> Result<Password, AdminError> {
    Ok(Password::new(rpassword::prompt_password(question)?))
}
