//! How the store reads PostgreSQL's errors: unreachable or refused, committed or not, worth
//! another try or not. Pure, and unit-tested where it decides something.

use std::time::{Duration, Instant};

use tokio_postgres::error::{Severity, SqlState};

use super::StoreError;

/// Why an attempt to connect at start-up failed.
pub(super) enum Attempt {
    /// Worth another try: the database may be starting, or the network down.
    Failed(StoreError),
    /// Trying again cannot help (the database's certificate was refused).
    Refused(StoreError),
}

impl From<StoreError> for Attempt {
    fn from(e: StoreError) -> Self {
        Attempt::Failed(e)
    }
}

/// Why a batch was not stored.
pub(super) enum BatchError {
    /// A room or user the batch names no longer exists (the tables were emptied or restored
    /// under the running server). The INSERT was refused whole (an `ERROR`), so nothing was
    /// stored and the batch may be tried again once its names are recorded.
    NameVanished(StoreError),
    Store(StoreError),
}

impl From<StoreError> for BatchError {
    fn from(e: StoreError) -> Self {
        BatchError::Store(e)
    }
}

impl From<BatchError> for StoreError {
    fn from(e: BatchError) -> Self {
        match e {
            BatchError::NameVanished(e) | BatchError::Store(e) => e,
        }
    }
}

/// Whether the INSERT was refused for a name it did not find (its id came out NULL) or a
/// reference the triggers refused: worth recording the names and one more try.
pub(super) fn name_vanished(e: &tokio_postgres::Error) -> bool {
    matches!(
        e.code(),
        Some(&SqlState::NOT_NULL_VIOLATION) | Some(&SqlState::FOREIGN_KEY_VIOLATION)
    )
}

/// Whether `e` says a statement prepared earlier on the connection no longer fits the
/// database: a column it returns changed type (a newer server's migration, an operator), or
/// the statement is gone. PostgreSQL refuses such a statement before running any of it, so
/// preparing it again and running it once more is safe, a write included. The changed
/// result is known by the routine that refuses it, which no `lc_messages` translates, or
/// else by its English text.
pub(super) fn stale_statement(e: &tokio_postgres::Error) -> bool {
    e.as_db_error().is_some_and(|db| {
        *db.code() == SqlState::INVALID_SQL_STATEMENT_NAME
            || (*db.code() == SqlState::FEATURE_NOT_SUPPORTED
                && (db.routine() == Some("RevalidateCachedQuery")
                    || db
                        .message()
                        .starts_with("cached plan must not change result type")))
    })
}

/// An error with what caused it: tokio-postgres says only "db error" or "error performing
/// TLS handshake", and the reason (a `pg_hba.conf` refusal, a certificate) is in its source.
pub(super) fn with_causes(e: &tokio_postgres::Error) -> String {
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// What the database said when it refused a statement, for the log: its severity, message
/// and SQLSTATE, never its DETAIL, which may quote the failing row (a message's text, a
/// password hash).
pub(super) fn refusal(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!(
            "{}: {} (SQLSTATE {})",
            db.severity(),
            db.message(),
            db.code().code()
        ),
        None => with_causes(e),
    }
}

/// How often a statement the database refused is logged at most: a client that can make one
/// fail at will must not fill the log.
pub(super) const REFUSALS_LOGGED_EVERY: Duration = Duration::from_secs(10);

/// The statements the database refused (it answered, with an error) that are logged: the
/// first, then at most one every [`REFUSALS_LOGGED_EVERY`], each saying how many were not.
/// A client is told only that the store is unavailable; the cause is for the operator.
#[derive(Debug, Default)]
pub(super) struct Refusals {
    last_logged: Option<Instant>,
    unlogged: u64,
}

impl Refusals {
    /// A refusal at `now`: `Some(n)` if it is to be logged, with the `n` refused since the
    /// last one logged that were not.
    pub(super) fn log_now(&mut self, now: Instant) -> Option<u64> {
        match self.last_logged {
            Some(last) if now.saturating_duration_since(last) < REFUSALS_LOGGED_EVERY => {
                self.unlogged += 1;
                None
            }
            _ => {
                self.last_logged = Some(now);
                Some(std::mem::take(&mut self.unlogged))
            }
        }
    }
}

pub(super) fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// Whether an error shows the database unreachable (rather than refusing one statement):
/// no answer at all (a broken or closed connection), or an answer that it cannot serve.
pub(super) fn shows_unreachable(e: &tokio_postgres::Error) -> bool {
    e.as_db_error()
        .is_none_or(|db| unreachable_code(db.code().code()))
}

/// Whether `e` is a column the server could not read as the type it expects (a type changed
/// under it): not the database's refusal, nor (though the database did not send it, as
/// [`shows_unreachable`] reads such errors) a sign that it is unreachable. tokio-postgres
/// does not expose its error's kind; its text for this one is fixed.
pub(super) fn unreadable_column(e: &tokio_postgres::Error) -> bool {
    e.as_db_error().is_none() && e.to_string().starts_with("error deserializing column")
}

/// SQLSTATEs that mean the database cannot serve us now: connection exceptions (class 08),
/// operator intervention such as a shutdown (57), too many connections (53300).
pub(super) fn unreachable_code(code: &str) -> bool {
    code.starts_with("08") || code.starts_with("57") || code == "53300"
}

/// Whether an error answering a statement proves that its transaction did not commit. An
/// `ERROR` does (PostgreSQL turns an error after a commit into a `PANIC`); a `FATAL` may come
/// after the commit (a shutdown noticed before the reply was sent), and a broken connection
/// tells nothing.
pub(super) fn proves_rolled_back(severity: Option<Severity>) -> bool {
    severity == Some(Severity::Error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreachable_means_no_connection_or_no_service() {
        for code in ["08006", "08001", "57P01", "57P03", "53300"] {
            assert!(unreachable_code(code), "{code}");
        }
        // A statement the database refused: it is up.
        for code in ["23503", "42P01", "53100", "40001"] {
            assert!(!unreachable_code(code), "{code}");
        }
    }

    #[test]
    fn refusals_are_logged_at_most_once_a_period_with_the_count_left_out() {
        let start = Instant::now();
        let mut refusals = Refusals::default();
        assert_eq!(refusals.log_now(start), Some(0));
        for ms in [1, 500, 9_999] {
            assert_eq!(refusals.log_now(start + Duration::from_millis(ms)), None);
        }
        let later = start + REFUSALS_LOGGED_EVERY;
        assert_eq!(refusals.log_now(later), Some(3));
        assert_eq!(refusals.log_now(later + Duration::from_secs(1)), None);
        assert_eq!(refusals.log_now(later + REFUSALS_LOGGED_EVERY), Some(1));
    }

    #[test]
    fn only_an_error_proves_an_insert_was_not_stored() {
        assert!(proves_rolled_back(Some(Severity::Error)));
        for later in [Some(Severity::Fatal), Some(Severity::Panic), None] {
            assert!(!proves_rolled_back(later), "{later:?}");
        }
    }
}
