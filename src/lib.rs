//! linechat: a chat-room server that speaks a plain-text line protocol over TCP.
//!
//! Module map:
//! - [`config`]: settings, filled by `main.rs` from flags and environment variables.
//! - [`codec`]: line framing with a length limit; the only place bytes become lines.
//! - [`protocol`]: command parsing and server-line formatting; pure, no I/O.
//! - [`server`]: the accept loop, socket options, graceful shutdown.
//! - [`limits`]: admission (connections in all and per address).
//! - [`session`]: one connection: read, apply, write; bounded outbound queue.
//! - [`rooms`]: room membership, presence and fan-out of shared `Bytes`.
//! - [`hub`]: the state sessions share (rooms, nicks, store, writer).
//! - [`store`]: the `HistoryStore` trait, its implementations, and the batched writer.
//!
//! PROTOCOL.md in the repository is the wire specification.

pub mod codec;
pub mod config;
pub mod hub;
pub mod limits;
pub mod protocol;
pub mod rooms;
pub mod server;
pub mod session;
pub mod store;

pub use config::{Config, StoreKind};
