//! Passwords: what a password may be, a type that never shows it, and the workers that hash
//! and verify it (argon2id, PHC strings) off the async threads.
//!
//! Argon2id is slow and memory-hard on purpose (about 19 MiB and tens of milliseconds per
//! check), so checks run on a few dedicated threads at a lower scheduling priority, behind a
//! bounded queue: a storm of logins waits for those threads (or is told `SERVER_BUSY`) and
//! never takes the async workers that carry chat traffic.

use std::fmt;
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use tokio::sync::oneshot;

/// Shortest password, in bytes.
pub const MIN_PASSWORD: usize = 8;
/// Longest password, in bytes.
pub const MAX_PASSWORD: usize = 128;

/// A password as the client sent it. Its `Debug` shows nothing, so that no log line or
/// debug print of a command can carry it; it is wiped from memory when dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    pub fn new(text: impl Into<String>) -> Password {
        Password(text.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Why this password may not be registered, if it may not.
    pub fn weakness(&self) -> Option<&'static str> {
        let text = &self.0;
        if text.len() < MIN_PASSWORD {
            Some("passwords are at least 8 bytes long")
        } else if text.len() > MAX_PASSWORD {
            Some("passwords are at most 128 bytes long")
        } else if text.chars().any(|c| c.is_control() || c.is_whitespace()) {
            Some("passwords are one word: no spaces or control characters")
        } else {
            None
        }
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(<hidden>)")
    }
}

impl Drop for Password {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

/// Why a password check could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckError {
    /// More checks are waiting than the queue holds.
    #[error("password checks are queued up; try again in a few seconds")]
    Busy,
    /// The stored hash is not a PHC string this server can read.
    #[error("the stored password hash cannot be read")]
    BadHash,
}

enum Job {
    Hash(Password, oneshot::Sender<Result<String, CheckError>>),
    Verify(Password, String, oneshot::Sender<Result<bool, CheckError>>),
}

/// Threads that hash and verify passwords, behind a bounded queue.
#[derive(Clone)]
pub struct PasswordWorkers {
    jobs: SyncSender<Job>,
}

impl PasswordWorkers {
    /// `threads` workers (at least one), with room for `queue` checks waiting. The threads
    /// run only on CPU time nothing else wants (SCHED_IDLE), so that on a busy machine chat
    /// goes first and logins wait.
    pub fn start(threads: usize, queue: usize) -> PasswordWorkers {
        let (jobs, receiver) = mpsc::sync_channel::<Job>(queue);
        let receiver = Arc::new(Mutex::new(receiver));
        for n in 0..threads.max(1) {
            let receiver = receiver.clone();
            std::thread::Builder::new()
                .name(format!("password-{n}"))
                .spawn(move || {
                    lower_priority();
                    let hasher = Argon2::default();
                    loop {
                        // The lock is held only while waiting for a job, never while hashing.
                        let job = match receiver.lock().expect("password queue").recv() {
                            Ok(job) => job,
                            Err(_) => return,
                        };
                        run(&hasher, job);
                    }
                })
                .expect("cannot start a password thread");
        }
        PasswordWorkers { jobs }
    }

    /// A new argon2id PHC string for `password`, with a fresh random salt.
    pub async fn hash(&self, password: Password) -> Result<String, CheckError> {
        let (tx, rx) = oneshot::channel();
        self.submit(Job::Hash(password, tx))?;
        rx.await.unwrap_or(Err(CheckError::Busy))
    }

    /// True if `password` matches the PHC string `hash`.
    pub async fn verify(&self, password: Password, hash: String) -> Result<bool, CheckError> {
        let (tx, rx) = oneshot::channel();
        self.submit(Job::Verify(password, hash, tx))?;
        rx.await.unwrap_or(Err(CheckError::Busy))
    }

    fn submit(&self, job: Job) -> Result<(), CheckError> {
        match self.jobs.try_send(job) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => Err(CheckError::Busy),
        }
    }
}

fn run(hasher: &Argon2<'_>, job: Job) {
    match job {
        Job::Hash(password, reply) => {
            let _ = reply.send(hash_with(hasher, &password));
        }
        Job::Verify(password, hash, reply) => {
            let verdict = match PasswordHash::new(&hash) {
                Ok(parsed) => Ok(hasher
                    .verify_password(password.expose().as_bytes(), &parsed)
                    .is_ok()),
                Err(_) => Err(CheckError::BadHash),
            };
            let _ = reply.send(verdict);
        }
    }
}

/// A new argon2id PHC string for `password`, with a fresh random salt, on the calling thread
/// (a password thread, or `linechat account add`, which has nothing else to do).
pub fn hash_now(password: &Password) -> Result<String, CheckError> {
    hash_with(&Argon2::default(), password)
}

fn hash_with(hasher: &Argon2<'_>, password: &Password) -> Result<String, CheckError> {
    let salt = SaltString::generate(&mut OsRng);
    hasher
        .hash_password(password.expose().as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|_| CheckError::BadHash)
}

/// Puts the calling thread in the idle scheduling class (SCHED_IDLE): it runs only on CPU
/// time no other thread wants, so a chat worker waking up takes the core from a hash at
/// once. Where that is refused, nice 19 is the next best thing.
fn lower_priority() {
    // SAFETY: sched_setscheduler and setpriority on this thread (0 or its tid) with a
    // sched_param we own; a failure only leaves the thread at its priority.
    unsafe {
        let param = libc::sched_param { sched_priority: 0 };
        if libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) != 0 {
            let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
            libc::setpriority(libc::PRIO_PROCESS, tid, 19);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rules() {
        assert!(Password::new("correct-horse").weakness().is_none());
        assert!(Password::new("short").weakness().is_some());
        assert!(Password::new("x".repeat(129)).weakness().is_some());
        assert!(Password::new("x".repeat(128)).weakness().is_none());
        assert!(Password::new("two words").weakness().is_some());
        assert!(Password::new("tab\there!").weakness().is_some());
        assert!(Password::new("ünïcödé-ok").weakness().is_none());
    }

    #[test]
    fn debug_never_shows_it() {
        let shown = format!("{:?}", Password::new("hunter2hunter2"));
        assert!(!shown.contains("hunter2"), "{shown}");
    }

    #[tokio::test]
    async fn hashes_are_argon2id_phc_strings_that_verify() {
        let workers = PasswordWorkers::start(1, 4);
        let hash = workers.hash(Password::new("correct-horse")).await.unwrap();
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        assert!(!hash.contains("correct-horse"));
        let again = workers.hash(Password::new("correct-horse")).await.unwrap();
        assert_ne!(hash, again, "a fresh salt each time");
        assert!(workers
            .verify(Password::new("correct-horse"), hash.clone())
            .await
            .unwrap());
        assert!(!workers
            .verify(Password::new("correct-horsf"), hash)
            .await
            .unwrap());
        assert_eq!(
            workers
                .verify(Password::new("x"), "not a hash".into())
                .await,
            Err(CheckError::BadHash)
        );
    }

    #[tokio::test]
    async fn a_full_queue_says_busy_instead_of_waiting() {
        let workers = PasswordWorkers::start(1, 1);
        let hash = hash_now(&Password::new("correct-horse")).unwrap();
        let checks: Vec<_> = (0..8)
            .map(|_| {
                let workers = workers.clone();
                let hash = hash.clone();
                tokio::spawn(async move { workers.verify(Password::new("wrong-one"), hash).await })
            })
            .collect();
        let mut busy = 0;
        for check in checks {
            match check.await.unwrap() {
                Err(CheckError::Busy) => busy += 1,
                Ok(false) => {}
                other => panic!("{other:?}"),
            }
        }
        assert!(busy >= 1, "8 checks at once with one thread and one place");
    }
}
