//! linechat: a chat-room server that speaks a plain-text line protocol over TCP.
//!
//! The modules, in the order one `SAY` travels through them from a client's socket to the
//! store and on to every member of its room:
//! - [`server`]: start-up (the store, and [`managed_postgres`] in zero-config mode), the accept
//!   loop, socket options, graceful shutdown.
//! - [`admission`]: who gets in: connections in all and per address, and the login timeout.
//! - [`session`]: one task per connection: reads its lines, runs its commands, writes its
//!   replies and room traffic; replays history and catches slow readers up.
//! - [`connection`]: line framing in (with a length limit) and out (a queue of shared
//!   buffers written with vectored writes): the only place bytes become lines and back.
//! - [`transport`]: what carries a connection's lines: a plain TCP socket, a TLS stream, or a
//!   WebSocket (one text frame per line).
//! - [`http`]: the HTTP listener: the web page, `/ws` (WebSocket sessions, served by
//!   [`session`] as any other), `/healthz` and `/metrics`.
//! - [`tls`]: the TLS listener's side: certificates (reloaded on SIGHUP) and handshakes.
//! - [`protocol`]: command parsing and server-line formatting; pure, fuzzed.
//! - [`budget`]: flood control and the error budget, as token buckets on a monotonic clock.
//! - [`accounts`]: registered names and their passwords (argon2id, checked off the async
//!   threads, within a guessing budget), and private rooms.
//! - [`hub`]: what sessions share: settings, rooms, names, the store and its writer.
//! - [`store`]: the `HistoryStore` trait (memory, PostgreSQL), and the batched writer that
//!   stores every `SAY` before anyone sees it or is told it was stored.
//! - [`bus`]: servers sharing one database deliver what any of them stored, their own
//!   batches included, in the database's commit order (LISTEN/NOTIFY).
//! - [`cluster`]: servers sharing one database share names and presence too: a directory of
//!   live servers, their names and rooms, kept in the database with a heartbeat.
//! - [`fanout`]: a stored batch, formatted once into shared `Bytes`, handed to each room.
//! - [`rooms`]: membership and presence; delivers to every member's mailbox.
//! - [`mailbox`]: each connection's bounded queue of room traffic; a reader too slow for its
//!   rooms *lags* there instead of being dropped, and its session catches it up.
//! - [`express`]: while a plain TCP session waits with nothing to write, its room traffic is
//!   written to its socket by a flusher task, one write per round, without waking it.
//! - [`managed_postgres`]: the PostgreSQL process the server runs itself when no database is
//!   given.
//! - [`telemetry`]: the metrics (`/metrics`, Prometheus text): counted per batch on the hot
//!   paths, read from the hub at scrape time for the rest.
//! - [`config`]: the settings and their defaults (one table, shared with the binary's flags).
//! - [`signals`] and [`privileges`]: the binary's process-level concerns: what each signal
//!   means, and the unprivileged user it becomes after start-up when started as root.
//!
//! PROTOCOL.md in the repository is the wire specification.

pub mod accounts;
pub mod admission;
pub mod budget;
pub mod bus;
pub mod cluster;
pub mod config;
pub mod connection;
pub mod express;
pub mod fanout;
pub mod http;
pub mod hub;
pub mod mailbox;
pub mod managed_postgres;
pub mod privileges;
pub mod protocol;
pub mod rooms;
pub mod server;
pub mod session;
pub mod signals;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod transport;

pub use config::{Config, StoreKind};
