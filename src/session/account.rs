//! Names that need a password: `NICK <name> [password]`, `REGISTER <password>` and
//! `PASSWORD <old> <new>`, and the `--require-account` check the other commands make.
//!
//! A password is checked on the password threads (see [`crate::accounts::password`]), within
//! the guessing budgets of the name and the address; it is never logged nor quoted back.

use std::sync::Arc;

use crate::accounts::password::CheckError;
use crate::accounts::{Account, Password, Registration};
use crate::budget::Millis;
use crate::cluster::ledger::Slot;
use crate::cluster::Claim;
use crate::hub::Holding;
use crate::protocol::{self, ErrorCode, ProtocolError};

use super::Session;

fn refusal(code: ErrorCode, text: impl Into<String>) -> ProtocolError {
    ProtocolError::new(code, text)
}

impl Session {
    /// `NICK <name> [password]`: a name that is not registered is taken as a guest name; a
    /// registered one only with its password (and then as it was registered, its case
    /// included).
    pub(super) async fn nick(
        &mut self,
        name: String,
        password: Option<Password>,
    ) -> Result<(), ProtocolError> {
        let unchanged = self.nick.as_deref() == Some(name.as_str());
        if unchanged && (password.is_none() || self.registered) {
            self.writer.push(protocol::line(&["OK", "NICK", &name]));
            return Ok(());
        }
        // Held by another connection: refused before the store is asked or a password checked.
        if self.hub.nicks.is_held_by_other(&name, self.conn.id) {
            return Err(nick_in_use(&name));
        }
        let hub = self.hub.clone();
        let accounts = &hub.accounts;
        let account = self.until_shutdown(accounts.store.find(&name)).await?;
        let (name, holding): (Arc<str>, Holding) = match (account, password) {
            (None, None) => {
                if accounts.required && accounts.registration == Registration::Closed {
                    return Err(refusal(
                        ErrorCode::AccountRequired,
                        format!("{name} is not registered, and only registered names may use this server; its operator makes accounts"),
                    ));
                }
                (name.into(), Holding::Guest)
            }
            (None, Some(_)) => {
                return Err(refusal(
                    ErrorCode::NotRegistered,
                    format!("{name} is not registered: NICK {name} takes it as a guest name, then REGISTER <password> keeps it"),
                ))
            }
            (Some(account), None) => {
                return Err(refusal(
                    ErrorCode::NickRegistered,
                    format!(
                        "{} is registered; NICK {} <password> takes it",
                        account.name, account.name
                    ),
                ))
            }
            (Some(account), Some(password)) => {
                self.check_password(&account, password).await?;
                (account.name, Holding::Account(account.hash.into()))
            }
        };
        self.take_name(name, holding).await
    }

    /// Takes `name` for this connection (on every server sharing the database) and announces
    /// it in every room it is in.
    async fn take_name(&mut self, name: Arc<str>, holding: Holding) -> Result<(), ProtocolError> {
        let old = self.nick.clone();
        let registered = holding != Holding::Guest;
        let new_key = !old
            .as_deref()
            .is_some_and(|old| old.eq_ignore_ascii_case(&name));
        // The old name is kept until the new one is claimed everywhere.
        if !self.hub.nicks.claim_as(&name, None, self.conn.id, holding) {
            return Err(nick_in_use(&name));
        }
        if let (Some(cluster), true) = (self.hub.cluster.clone(), new_key) {
            let claim =
                self.until_shutdown(async { Ok(cluster.claim(self.conn.id, name.clone()).await) });
            let refused = match claim.await {
                Ok(Claim::Won | Claim::Unconfirmed) => None,
                Ok(Claim::Taken) => Some(nick_in_use(&name)),
                Err(e) => Some(ProtocolError::from(e)),
            };
            if let Some(refused) = refused {
                self.hub.nicks.release(&name, self.conn.id);
                return Err(refused);
            }
        }
        if let (Some(old), true) = (&old, new_key) {
            self.hub.nicks.release(old, self.conn.id);
        }
        // In the background: a name is for live connections and must not wait on the
        // database (the first message records its sender anyway).
        self.hub.store.record_user(&name);
        if let Some(old) = &old {
            if **old != *name {
                let rooms = self.joined.names();
                self.hub.rooms.rename(&rooms, self.conn.id, old, &name);
                if let Some(cluster) = &self.hub.cluster {
                    for room in rooms {
                        cluster.set(self.conn.id, Slot::Room(room), Some(name.clone()));
                    }
                }
            }
        }
        self.writer.push(protocol::line(&["OK", "NICK", &name]));
        self.nick = Some(name);
        self.registered = registered;
        self.conn.mailbox.mark_named();
        Ok(())
    }

    /// `REGISTER <password>`: registers the current name.
    pub(super) async fn register(&mut self, password: Password) -> Result<(), ProtocolError> {
        let name = self.require_nick()?;
        let hub = self.hub.clone();
        let accounts = &hub.accounts;
        if self.registered {
            return Err(already_registered(&name));
        }
        if accounts.registration == Registration::Closed {
            return Err(refusal(
                ErrorCode::RegistrationClosed,
                "this server's operator registers names (linechat account add); ask them",
            ));
        }
        if let Some(why) = password.weakness() {
            return Err(refusal(ErrorCode::WeakPassword, why));
        }
        let (ip, now) = (self.reader.peer_ip(), Millis::now());
        accounts.work.register(ip, now).map_err(|wait| {
            refusal(
                ErrorCode::TooManyRegistrations,
                format!(
                    "your address registered names too often; try again in {} s",
                    seconds(wait)
                ),
            )
        })?;
        self.spend_password_work()?;
        // Left alone by the name watch while it is being registered.
        let nicks = &hub.nicks;
        nicks.set_holding(&name, self.conn.id, Holding::Changing);
        let registered = self.store_registration(&name, password).await;
        let holding = match &registered {
            Ok(hash) => Holding::Account(hash.as_str().into()),
            Err(_) => Holding::Guest,
        };
        nicks.set_holding(&name, self.conn.id, holding);
        registered?;
        tracing::info!(%name, "name registered");
        self.registered = true;
        self.writer.push(protocol::line(&["OK", "REGISTER", &name]));
        Ok(())
    }

    /// Hashes `password` and registers `name` with it; the hash.
    async fn store_registration(
        &self,
        name: &str,
        password: Password,
    ) -> Result<String, ProtocolError> {
        let accounts = &self.hub.accounts;
        let hash = accounts.workers.hash(password).await.map_err(busy)?;
        if !self
            .until_shutdown(accounts.store.register(name, &hash))
            .await?
        {
            return Err(already_registered(name));
        }
        Ok(hash)
    }

    /// `PASSWORD <old> <new>`: changes the password of the registered current name.
    pub(super) async fn change_password(
        &mut self,
        old: Password,
        new: Password,
    ) -> Result<(), ProtocolError> {
        let name = self.require_nick()?;
        let hub = self.hub.clone();
        let accounts = &hub.accounts;
        let account = match self.registered {
            true => self.until_shutdown(accounts.store.find(&name)).await?,
            false => None,
        };
        let Some(account) = account else {
            self.registered = false;
            return Err(refusal(
                ErrorCode::NotRegistered,
                format!("{name} is not registered; REGISTER <password> registers it"),
            ));
        };
        if let Some(why) = new.weakness() {
            return Err(refusal(ErrorCode::WeakPassword, why));
        }
        self.check_password(&account, old).await?;
        self.spend_password_work()?;
        let hash = accounts.workers.hash(new).await.map_err(busy)?;
        // Left alone by the name watch while the hash changes.
        let nicks = &hub.nicks;
        nicks.set_holding(&name, self.conn.id, Holding::Changing);
        let store = accounts
            .store
            .set_password(&name, Some(&account.hash), &hash);
        let changed = self.until_shutdown(store).await;
        let now = match changed {
            Ok(true) => hash,
            _ => account.hash,
        };
        nicks.set_holding(&name, self.conn.id, Holding::Account(now.into()));
        if !changed? {
            return Err(refusal(
                ErrorCode::WrongPassword,
                "the password changed while this was checked; try again with the new one",
            ));
        }
        tracing::info!(%name, "password changed");
        self.writer.push(protocol::line(&["OK", "PASSWORD"]));
        Ok(())
    }

    /// Takes one password hash or check from the address's budget.
    fn spend_password_work(&self) -> Result<(), ProtocolError> {
        let work = &self.hub.accounts.work;
        work.hash(self.reader.peer_ip(), Millis::now())
            .map_err(|wait| {
                refusal(
                    ErrorCode::ServerBusy,
                    format!(
                        "your address asked for too many password checks; try again in {} s",
                        seconds(wait)
                    ),
                )
            })
    }

    /// Checks `password` against `account`'s hash, within the guessing budgets.
    async fn check_password(
        &self,
        account: &Account,
        password: Password,
    ) -> Result<(), ProtocolError> {
        let accounts = &self.hub.accounts;
        self.spend_password_work()?;
        let key = account.name.to_ascii_lowercase();
        let guess = accounts
            .guesses
            .begin(&key, self.reader.peer_ip(), Millis::now())
            .map_err(|wait| {
                refusal(
                    ErrorCode::TooManyGuesses,
                    format!(
                        "too many wrong passwords for {} or from your address; try again in {} s",
                        account.name,
                        seconds(wait)
                    ),
                )
            })?;
        match accounts
            .workers
            .verify(password, account.hash.clone())
            .await
        {
            Ok(true) => {
                accounts.guesses.right(guess, Millis::now());
                Ok(())
            }
            Ok(false) => {
                accounts.guesses.wrong(guess);
                tracing::info!(name = %account.name, peer = ?self.reader.peer_ip(), "wrong password");
                Err(refusal(
                    ErrorCode::WrongPassword,
                    format!("that is not {}'s password", account.name),
                ))
            }
            Err(e) => {
                accounts.guesses.undone(guess);
                if e == CheckError::BadHash {
                    tracing::warn!(name = %account.name, "the stored password hash cannot be read");
                }
                Err(busy(e))
            }
        }
    }

    /// `--require-account`: only a connection logged in to a registered name may go on.
    pub(super) fn require_account(&self) -> Result<(), ProtocolError> {
        if self.hub.accounts.required && !self.registered {
            return Err(refusal(
                ErrorCode::AccountRequired,
                "only registered names may do this here: NICK <name> <password> logs in",
            ));
        }
        Ok(())
    }
}

/// A wait in whole seconds, at least 1.
fn seconds(wait: std::time::Duration) -> u64 {
    wait.as_secs_f64().ceil().max(1.0) as u64
}

fn nick_in_use(name: &str) -> ProtocolError {
    refusal(
        ErrorCode::NickInUse,
        format!("{name} is in use; choose another"),
    )
}

fn already_registered(name: &str) -> ProtocolError {
    refusal(
        ErrorCode::AlreadyRegistered,
        format!("{name} is registered already; PASSWORD <old> <new> changes its password"),
    )
}

/// A check that could not be made: `SERVER_BUSY` (a bad stored hash is reported the same way
/// to the client, and logged).
fn busy(e: CheckError) -> ProtocolError {
    refusal(ErrorCode::ServerBusy, e.to_string())
}
