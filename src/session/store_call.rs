//! Store calls from a session: they give way to shutdown, and their failures become the
//! command's `ERR` (`STORE_UNAVAILABLE`, `OUTCOME_UNKNOWN`, `SHUTTING_DOWN`).

use std::future::Future;

use bytes::Bytes;

use crate::protocol::{self, ErrorCode, ProtocolError};
use crate::store::StoreError;

use super::{store_refusal, Session};

/// Why the store did not answer a session.
pub(super) enum StoreCallError {
    Store(StoreError),
    /// The server began shutting down first.
    ShuttingDown,
}

impl StoreCallError {
    /// The `ERR` line that answers the command.
    pub(super) fn line(&self) -> Bytes {
        protocol::error_line(&ProtocolError::from(self))
    }
}

impl From<&StoreCallError> for ProtocolError {
    fn from(e: &StoreCallError) -> Self {
        match e {
            StoreCallError::Store(e) => store_refusal(e),
            StoreCallError::ShuttingDown => ProtocolError::new(
                ErrorCode::ShuttingDown,
                "the server is shutting down; this was not done",
            ),
        }
    }
}

impl From<StoreCallError> for ProtocolError {
    fn from(e: StoreCallError) -> Self {
        ProtocolError::from(&e)
    }
}

impl Session {
    /// A store call that gives way to shutdown (it is abandoned, which is harmless for a
    /// read or an upsert of a name).
    pub(super) async fn until_shutdown<T>(
        &self,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreCallError> {
        tokio::select! {
            biased;
            () = self.shutdown.cancelled() => Err(StoreCallError::ShuttingDown),
            result = call => result.map_err(StoreCallError::Store),
        }
    }
}
