//! Opening a connection to the server, plain or TLS, and saying why one failed.

use std::time::Duration;

use anyhow::{anyhow, Result};
use tokio::io::{AsyncRead, AsyncWrite, BufReader, ReadHalf, WriteHalf};
use tokio::net::TcpStream;

use super::{Refused, Server};
use crate::tls;

/// A connection to the server, plain TCP or TLS.
pub(super) trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}
pub(super) type Stream = Box<dyn Io>;

/// Lines from the server (read through `Lines`, whose `next_line` is cancel-safe: a line
/// half-read when another branch of a `select!` wins is kept, not lost) and the write half.
pub(super) type Conn = (
    tokio::io::Lines<BufReader<ReadHalf<Stream>>>,
    WriteHalf<Stream>,
);

/// How long a plain connection waits for HELLO before it nudges the server (see `connect`).
pub(super) const HELLO_NUDGE: Duration = Duration::from_secs(2);

/// How long connecting (TCP, and the TLS handshake) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects to the server, with TLS if it is asked for. A certificate the client refuses (or
/// a peer that does not speak TLS) is a [`Refused::Tls`].
pub(super) async fn open(server: &Server) -> Result<Stream> {
    let addr = &server.shown;
    let target = (server.target.host.as_str(), server.target.port);
    let attempt = async {
        let tcp = TcpStream::connect(target)
            .await
            .map_err(|e| anyhow!("cannot connect to {addr}: {}", what_happened(&e)))?;
        tcp.set_nodelay(true)?;
        let Some(tls) = &server.tls else {
            return Ok(Box::new(tcp) as Stream);
        };
        match tls.handshake(tcp).await {
            Ok(stream) => Ok(Box::new(stream) as Stream),
            Err(e) => match tls::refusal(&e, &server.target.host) {
                Some(reason) => Err(Refused::Tls {
                    server: addr.clone(),
                    reason,
                }
                .into()),
                None => Err(anyhow!("{addr}: TLS handshake: {}", what_happened(&e))),
            },
        }
    };
    tokio::time::timeout(CONNECT_TIMEOUT, attempt)
        .await
        .map_err(|_| anyhow!("cannot connect to {addr}: no answer in 10 s"))?
}

/// True for an error that connecting again cannot cure (see [`Refused::is_permanent`]).
pub(super) fn is_permanent(e: &anyhow::Error) -> bool {
    e.downcast_ref::<Refused>()
        .is_some_and(Refused::is_permanent)
}

/// What a socket error means to a person: refused, reset, timed out...
pub(super) fn what_happened(e: &std::io::Error) -> String {
    use std::io::ErrorKind;
    match e.kind() {
        ErrorKind::ConnectionRefused => "connection refused (is the server running?)".into(),
        ErrorKind::ConnectionReset => "the connection was reset".into(),
        ErrorKind::ConnectionAborted => "the connection was aborted".into(),
        ErrorKind::TimedOut => "timed out (the server or the network stopped answering)".into(),
        ErrorKind::BrokenPipe => "the server closed the connection".into(),
        ErrorKind::HostUnreachable | ErrorKind::NetworkUnreachable => {
            format!("unreachable ({e})")
        }
        _ => e.to_string(),
    }
}
