//! Refusals: the stable error codes (the second word of an `ERR` line) and [`ProtocolError`].

/// Declares [`ErrorCode`], its wire names and [`ErrorCode::ALL`] from one list, so that no
/// code can be left out of any of them.
macro_rules! error_codes {
    ($($variant:ident => $name:literal,)*) => {
        /// Stable error codes: the second word of an `ERR` line. PROTOCOL.md lists each one.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum ErrorCode {
            $($variant,)*
        }

        impl ErrorCode {
            /// Every code, in PROTOCOL.md's order.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant,)*];

            /// The code as it appears on the wire.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(ErrorCode::$variant => $name,)*
                }
            }
        }
    };
}

error_codes! {
    UnknownCommand => "UNKNOWN_COMMAND",
    MissingArgument => "MISSING_ARGUMENT",
    TooManyArguments => "TOO_MANY_ARGUMENTS",
    BadArgument => "BAD_ARGUMENT",
    BadNick => "BAD_NICK",
    BadRoom => "BAD_ROOM",
    BadText => "BAD_TEXT",
    NickInUse => "NICK_IN_USE",
    NoNick => "NO_NICK",
    NickRegistered => "NICK_REGISTERED",
    WrongPassword => "WRONG_PASSWORD",
    NotRegistered => "NOT_REGISTERED",
    AlreadyRegistered => "ALREADY_REGISTERED",
    WeakPassword => "WEAK_PASSWORD",
    RegistrationClosed => "REGISTRATION_CLOSED",
    AccountRequired => "ACCOUNT_REQUIRED",
    TooManyGuesses => "TOO_MANY_GUESSES",
    ServerBusy => "SERVER_BUSY",
    TooManyRegistrations => "TOO_MANY_REGISTRATIONS",
    PrivateRoom => "PRIVATE_ROOM",
    NotRoomOwner => "NOT_ROOM_OWNER",
    NotInRoom => "NOT_IN_ROOM",
    LineTooLong => "LINE_TOO_LONG",
    BadUtf8 => "BAD_UTF8",
    BadFrame => "BAD_FRAME",
    StoreUnavailable => "STORE_UNAVAILABLE",
    OutcomeUnknown => "OUTCOME_UNKNOWN",
    ServerFull => "SERVER_FULL",
    TooManyRooms => "TOO_MANY_ROOMS",
    RoomRateLimited => "ROOM_RATE_LIMITED",
    RoomsFull => "ROOMS_FULL",
    ShuttingDown => "SHUTTING_DOWN",
    TlsRequired => "TLS_REQUIRED",
}

/// A refusal: its code and the human text that follows it on the `ERR` line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{} {text}", code.as_str())]
pub struct ProtocolError {
    pub code: ErrorCode,
    pub text: String,
}

impl ProtocolError {
    pub fn new(code: ErrorCode, text: impl Into<String>) -> Self {
        ProtocolError {
            code,
            text: text.into(),
        }
    }
}

pub(super) fn err<T>(code: ErrorCode, text: impl Into<String>) -> Result<T, ProtocolError> {
    Err(ProtocolError::new(code, text))
}
