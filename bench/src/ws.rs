//! The WebSocket transport: a connection to `ws://ADDR/ws`, whose text frames are protocol
//! lines, seen by the rest of the bench as the byte stream of lines it reads over TCP. A
//! received frame becomes its text and a LF; written bytes are cut at each LF into frames.
//! That costs a copy per delivery (the frame into the reader's buffer), which is all the
//! load generator adds to tungstenite's own frame parsing: scenarios need no second path.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use anyhow::{Context as _, Result};
use futures::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

/// tungstenite reads up to this much a call. Smaller than its default (128 KiB, allocated and
/// zeroed per connection): 10,000 idle clients would hold 1.3 GB, and each read zero-fills
/// the buffer first, which the client pays for every delivery batch.
const READ_BUFFER: usize = 32 * 1024;

/// Completes the WebSocket handshake for `/ws` over a connected socket.
pub async fn connect(tcp: TcpStream, addr: &str) -> Result<WsLines> {
    let config = WebSocketConfig::default().read_buffer_size(READ_BUFFER);
    let (socket, _) =
        tokio_tungstenite::client_async_with_config(format!("ws://{addr}/ws"), tcp, Some(config))
            .await
            .with_context(|| format!("WebSocket upgrade at ws://{addr}/ws"))?;
    Ok(WsLines {
        socket,
        rest: Vec::new(),
        rest_at: 0,
        partial: Vec::new(),
    })
}

/// A WebSocket read and written as lines.
pub struct WsLines {
    socket: WebSocketStream<TcpStream>,
    /// The end of a frame (its LF included) that did not fit the last read.
    rest: Vec<u8>,
    rest_at: usize,
    /// Written bytes after the last LF: the start of the next frame.
    partial: Vec<u8>,
}

impl WsLines {
    pub fn tcp(&self) -> &TcpStream {
        self.socket.get_ref()
    }

    /// Copies as much of `line` and its LF as fits; keeps the rest for the next read.
    fn put(&mut self, buf: &mut ReadBuf<'_>, line: &[u8]) {
        if buf.remaining() > line.len() {
            buf.put_slice(line);
            buf.put_slice(b"\n");
        } else {
            let fits = buf.remaining();
            buf.put_slice(&line[..fits]);
            self.rest.clear();
            self.rest.extend_from_slice(&line[fits..]);
            self.rest.push(b'\n');
            self.rest_at = 0;
        }
    }
}

impl AsyncRead for WsLines {
    /// As many frames as tungstenite has at hand, a line each; end of input at a close frame.
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let start = buf.filled().len();
        if this.rest_at < this.rest.len() {
            let n = buf.remaining().min(this.rest.len() - this.rest_at);
            buf.put_slice(&this.rest[this.rest_at..this.rest_at + n]);
            this.rest_at += n;
        }
        while buf.remaining() > 0 && this.rest_at == this.rest.len() {
            let message = match Pin::new(&mut this.socket).poll_next(cx) {
                Poll::Pending if buf.filled().len() > start => break,
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None | Some(Ok(Message::Close(_)))) => break,
                Poll::Ready(Some(Err(WsError::ConnectionClosed | WsError::AlreadyClosed))) => break,
                Poll::Ready(Some(Err(e))) if buf.filled().len() == start => {
                    return Poll::Ready(Err(io::Error::other(e)))
                }
                // What came before the error first; the error again on the next read.
                Poll::Ready(Some(Err(_))) => break,
                Poll::Ready(Some(Ok(m))) => m,
            };
            match message {
                Message::Text(text) => this.put(buf, text.as_bytes()),
                Message::Binary(data) => this.put(buf, &data),
                // Pongs to pings go out with tungstenite's next read or write.
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) | Message::Close(_) => {}
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for WsLines {
    /// Sends each complete line in `data` as a text frame (buffered by tungstenite until a
    /// flush); a line without its LF yet waits for the rest.
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let mut taken = 0;
        while let Some(len) = data[taken..].iter().position(|&b| b == b'\n') {
            match Pin::new(&mut this.socket).poll_ready(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(io::Error::other(e))),
                Poll::Pending if taken > 0 => return Poll::Ready(Ok(taken)),
                Poll::Pending => return Poll::Pending,
            }
            let mut line = std::mem::take(&mut this.partial);
            line.extend_from_slice(&data[taken..taken + len]);
            let text = String::from_utf8(line)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            Pin::new(&mut this.socket)
                .start_send(Message::text(text))
                .map_err(io::Error::other)?;
            taken += len + 1;
        }
        this.partial.extend_from_slice(&data[taken..]);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().socket)
            .poll_flush(cx)
            .map_err(io::Error::other)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().socket)
            .poll_close(cx)
            .map_err(io::Error::other)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    use tokio::net::TcpListener;

    /// Against tungstenite's own server side on a real socket: lines become frames and
    /// frames lines, a line split across writes included; a close frame ends the input.
    #[tokio::test]
    async fn frames_are_lines() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
            use futures::{SinkExt, StreamExt};
            let mut got = Vec::new();
            for _ in 0..2 {
                got.push(ws.next().await.unwrap().unwrap().into_text().unwrap());
            }
            ws.send(Message::text("HELLO x")).await.unwrap();
            ws.send(Message::text("a".repeat(100_000))).await.unwrap();
            ws.close(None).await.unwrap();
            got
        });
        let tcp = TcpStream::connect(&addr).await.unwrap();
        let mut ws = BufReader::new(connect(tcp, &addr).await.unwrap());
        ws.get_mut().write_all(b"NICK a\nSA").await.unwrap();
        ws.get_mut().write_all(b"Y hi\n").await.unwrap();
        ws.get_mut().flush().await.unwrap();
        let mut line = String::new();
        ws.read_line(&mut line).await.unwrap();
        assert_eq!(line, "HELLO x\n");
        line.clear();
        ws.read_line(&mut line).await.unwrap();
        assert_eq!(line.len(), 100_001);
        line.clear();
        assert_eq!(ws.read_line(&mut line).await.unwrap(), 0);
        assert_eq!(server.await.unwrap(), ["NICK a", "SAY hi"]);
    }
}
