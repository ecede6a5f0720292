//! Accounts: names that only their owner may take, with a password.
//!
//! A registered name is a row of the store with an argon2id hash ([`password`]); taking it
//! needs the password (`NICK <name> <password>`), checked off the async threads and within a
//! guessing budget ([`guesses`]). A name that is not registered works as it always did. Names
//! match without regard to ASCII case, as live names do. Private rooms ([`private`]) build on
//! accounts: their members are registered names.
//!
//! Two stores: PostgreSQL (the `users` table, shared by every server on the database) and
//! memory ([`MemoryAccounts`], for `--store memory`: accounts last as long as the process).

pub mod admin;
pub mod guesses;
pub mod memory;
pub mod password;
pub mod watch;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use async_trait::async_trait;

use crate::budget::Limit;
use crate::store::StoreError;

pub use guesses::{Guesses, Work};
pub use memory::MemoryAccounts;
pub use password::{Password, PasswordWorkers};

/// A registered name and its password hash (a PHC string).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// The name as registered (its case included).
    pub name: Arc<str>,
    pub hash: String,
}

/// What a name may do with a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// The room is not private: anyone may.
    Public,
    /// Private, and the name made it so: it may also make it public and uninvite.
    Owner,
    /// Private, and the name was invited.
    Member,
    /// Private, and the name is not a member (or is a guest).
    Outsider,
}

impl Access {
    pub fn may_enter(self) -> bool {
        self != Access::Outsider
    }
}

/// Where accounts and private rooms live. Accounts are named by any spelling (matched
/// without regard to ASCII case); members and owners of private rooms by their lower-case
/// names.
#[async_trait]
pub trait AccountStore: Send + Sync + 'static {
    /// The account whose name matches `name` without regard to ASCII case.
    async fn find(&self, name: &str) -> Result<Option<Account>, StoreError>;

    /// Registers `name` with `hash`. False if a name matching it is registered already.
    async fn register(&self, name: &str, hash: &str) -> Result<bool, StoreError>;

    /// Sets the password hash of the account matching `name`, if it is registered and, when
    /// `expected` is given, its hash is still `expected` (no change made meanwhile is
    /// overwritten). False otherwise.
    async fn set_password(
        &self,
        name: &str,
        expected: Option<&str>,
        hash: &str,
    ) -> Result<bool, StoreError>;

    /// Makes the name matching `name` a guest name again, out of every private room's members;
    /// the rooms it owned pass to their oldest other member (or to nobody, staying private).
    /// False if it was not registered.
    async fn unregister(&self, name: &str) -> Result<bool, StoreError>;

    /// Every registered name, sorted.
    async fn list(&self) -> Result<Vec<Arc<str>>, StoreError>;

    /// Which of `keys` (lower-case names) are registered, with their password hashes.
    async fn registered_among(
        &self,
        keys: &[String],
    ) -> Result<HashMap<String, String>, StoreError>;

    /// Which of `rooms` are private to `member` (a lower-case registered name; `None` for a
    /// guest): private, and it is not a member.
    async fn hidden_among(
        &self,
        rooms: &[Arc<str>],
        member: Option<&str>,
    ) -> Result<HashSet<String>, StoreError>;

    /// What `member` (a lower-case registered name; `None` for a guest) may do with `room`.
    async fn room_access(&self, room: &str, member: Option<&str>) -> Result<Access, StoreError>;

    /// Makes `room` private, owned by (and with the one member) `owner`. False if it is
    /// private already.
    async fn make_private(&self, room: &str, owner: &str) -> Result<bool, StoreError>;

    /// Makes `room` public again if `owner` owns it. False otherwise.
    async fn make_public(&self, room: &str, owner: &str) -> Result<bool, StoreError>;

    /// Adds `member` to private `room`. False if it was a member already.
    async fn invite(&self, room: &str, member: &str) -> Result<bool, StoreError>;

    /// Removes `member` (not the owner) from private `room`. False if it was not a member.
    async fn uninvite(&self, room: &str, member: &str) -> Result<bool, StoreError>;
}

/// Who may register a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Registration {
    /// Anyone, with `REGISTER <password>`.
    #[default]
    Open,
    /// Only an operator, with `linechat account add`.
    Closed,
}

/// What sessions share to handle accounts.
pub struct Accounts {
    pub store: Arc<dyn AccountStore>,
    pub workers: PasswordWorkers,
    pub guesses: Guesses,
    /// Password work and registrations per address.
    pub work: Work,
    pub registration: Registration,
    /// Only registered names may join, talk and list (`--require-account`).
    pub required: bool,
}

/// Password checks waiting for a thread before `SERVER_BUSY`: about a second's worth on an
/// idle two-core machine, so that a refusal comes early rather than a login late.
const CHECK_QUEUE: usize = 32;

impl Accounts {
    /// `count_loopback`: loopback addresses are held to the per-address budgets too
    /// (`--limit-loopback`).
    pub fn new(store: Arc<dyn AccountStore>, config: &crate::Config) -> Self {
        // A thread a core: they run only on CPU time that chat leaves idle (SCHED_IDLE), so
        // they may have all of it. An argon2id check takes about 40 ms of a core here.
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Accounts {
            store,
            workers: PasswordWorkers::start(cores, CHECK_QUEUE),
            guesses: Guesses::new(
                Limit::every(config.name_guess_every, guesses::NAME_BURST),
                Limit::every(config.address_guess_every, guesses::ADDRESS_BURST),
            ),
            work: Work::new(config.limit_loopback),
            registration: config.registration,
            required: config.require_account,
        }
    }
}
