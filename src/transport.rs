//! What a connection's lines travel over: a plain TCP socket, any other byte stream (TLS), or
//! a WebSocket, whose frames are the lines. The line reader and writer share one
//! [`Transport`] and ask it to read, write, flush and shut down, so that the session above
//! them is one implementation whatever carries its lines. A WebSocket is bytes here too;
//! the reader and writer frame its lines ([`crate::http::websocket::frames`]).
//!
//! A plain socket is polled for readiness directly, as before there was a choice: an idle
//! TCP connection holds nothing more than it did. Another stream sits behind a mutex (both
//! halves of the connection poll it, always from the connection's own task, so it is never
//! contended) and is read through a buffer on the stack, so that an idle one holds no read
//! buffer of ours either.

use std::io::{self, IoSlice};
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{ready, Context, Poll};

use bytes::{BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::http::websocket::WebSocketConn;

/// Bytes asked for per read.
pub const READ_CHUNK: usize = 4096;

/// A byte stream that is not a plain TCP socket, such as a TLS session over one.
pub trait Stream: AsyncRead + AsyncWrite + Send + Unpin {
    /// The address of the client at the other end.
    fn peer_addr(&self) -> io::Result<SocketAddr>;
}

impl Stream for tokio_rustls::server::TlsStream<TcpStream> {
    fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.get_ref().0.peer_addr()
    }
}

/// One connection's carrier of bytes, shared by its line reader and writer.
pub enum Transport {
    /// Polled for readiness directly (no waiter of its own): the cheapest while idle.
    Tcp(TcpStream),
    /// Boxed so that a plain connection does not pay for a larger kind.
    Stream(Mutex<Box<dyn Stream>>),
    /// An upgraded HTTP connection, with the state of its WebSocket framing.
    WebSocket(Mutex<Box<WebSocketConn>>),
}

impl Transport {
    pub fn stream(stream: impl Stream + 'static) -> Transport {
        Transport::Stream(Mutex::new(Box::new(stream)))
    }

    pub fn websocket(socket: WebSocketConn) -> Transport {
        Transport::WebSocket(Mutex::new(Box::new(socket)))
    }

    /// What carries the lines, as metrics and logs name it.
    pub fn kind(&self) -> &'static str {
        match self {
            Transport::Tcp(_) => "tcp",
            Transport::Stream(_) => "tls",
            Transport::WebSocket(_) => "websocket",
        }
    }

    /// Runs `f` on the WebSocket (locked as a stream is: never contended).
    pub fn with_websocket<T>(
        socket: &Mutex<Box<WebSocketConn>>,
        f: impl FnOnce(&mut WebSocketConn) -> T,
    ) -> T {
        let mut guard = socket.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut guard)
    }

    fn with_stream<T>(
        stream: &Mutex<Box<dyn Stream>>,
        f: impl FnOnce(Pin<&mut dyn Stream>) -> T,
    ) -> T {
        // Poisoned only if a poll panicked, and then the task is gone anyway.
        let mut guard = stream.lock().unwrap_or_else(|e| e.into_inner());
        f(Pin::new(&mut **guard))
    }

    /// Reads what has arrived into `buf`; `Ok(0)` at end of input. Memory for the bytes is
    /// reserved in `buf` only once there are some.
    pub fn poll_read_buf(
        &self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
    ) -> Poll<io::Result<usize>> {
        match self {
            Transport::Tcp(socket) => loop {
                ready!(socket.poll_read_ready(cx))?;
                buf.reserve(READ_CHUNK);
                match socket.try_read_buf(buf) {
                    // Readiness was stale: it is cleared now, and the next poll waits afresh,
                    // without the memory just reserved (an idle connection holds none).
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        if buf.is_empty() {
                            *buf = BytesMut::new();
                        }
                    }
                    done => return Poll::Ready(done),
                }
            },
            Transport::Stream(stream) => {
                Transport::with_stream(stream, |stream| read_chunk(stream, cx, buf))
            }
            Transport::WebSocket(socket) => {
                Transport::with_websocket(socket, |ws| read_chunk(ws.io(), cx, buf))
            }
        }
    }

    /// Writes from `slices`, in order; how many bytes were taken. A stream may hold them in
    /// a buffer of its own until [`Transport::poll_flush`] completes.
    pub fn poll_write_vectored(
        &self,
        cx: &mut Context<'_>,
        slices: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self {
            Transport::Tcp(socket) => loop {
                ready!(socket.poll_write_ready(cx))?;
                match socket.try_write_vectored(slices) {
                    // Readiness was stale: it is cleared now; poll again to wait.
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    done => return Poll::Ready(done),
                }
            },
            Transport::Stream(stream) => {
                Transport::with_stream(stream, |stream| stream.poll_write_vectored(cx, slices))
            }
            Transport::WebSocket(socket) => {
                Transport::with_websocket(socket, |ws| ws.io().poll_write_vectored(cx, slices))
            }
        }
    }

    /// Sends on what a stream still holds (TLS records written but not yet on the socket).
    /// Ready at once for a plain socket, which holds nothing.
    pub fn poll_flush(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Transport::Tcp(_) => Poll::Ready(Ok(())),
            Transport::Stream(stream) => Transport::with_stream(stream, |s| s.poll_flush(cx)),
            Transport::WebSocket(socket) => {
                Transport::with_websocket(socket, |ws| ws.io().poll_flush(cx))
            }
        }
    }

    /// Ends the sending direction: FIN on a plain socket; for TLS first its `close_notify`,
    /// so the client knows it has everything. (A WebSocket's close frame is the line
    /// writer's: it is written before this.)
    pub async fn shutdown(&self) -> io::Result<()> {
        match self {
            Transport::Tcp(socket) => {
                socket2::SockRef::from(socket).shutdown(std::net::Shutdown::Write)
            }
            Transport::Stream(stream) => {
                std::future::poll_fn(|cx| Transport::with_stream(stream, |s| s.poll_shutdown(cx)))
                    .await
            }
            Transport::WebSocket(socket) => {
                std::future::poll_fn(|cx| {
                    Transport::with_websocket(socket, |ws| ws.io().poll_shutdown(cx))
                })
                .await
            }
        }
    }

    /// The client's address.
    pub fn peer_ip(&self) -> Option<IpAddr> {
        let addr = match self {
            Transport::Tcp(socket) => socket.peer_addr(),
            Transport::Stream(stream) => Transport::with_stream(stream, |s| s.peer_addr()),
            Transport::WebSocket(socket) => {
                Ok(Transport::with_websocket(socket, |ws| ws.peer_addr()))
            }
        };
        addr.ok().map(|a| a.ip())
    }
}

/// One read of a stream into `buf`, through a chunk on the stack rather than the reader:
/// only the bytes that came are kept.
fn read_chunk(
    stream: Pin<&mut (impl AsyncRead + ?Sized)>,
    cx: &mut Context<'_>,
    buf: &mut BytesMut,
) -> Poll<io::Result<usize>> {
    let mut chunk = [0u8; READ_CHUNK];
    let mut read = ReadBuf::new(&mut chunk);
    ready!(stream.poll_read(cx, &mut read))?;
    buf.put_slice(read.filled());
    Poll::Ready(Ok(read.filled().len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A plain connection's transport is no larger than its socket was: the shared
    /// allocation of every idle TCP connection did not grow with the choice of transport.
    #[test]
    fn a_plain_transport_costs_what_its_socket_did() {
        assert_eq!(
            std::mem::size_of::<Transport>(),
            std::mem::size_of::<TcpStream>()
        );
    }
}
