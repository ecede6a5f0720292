//! The WebSocket transport: a connection to `ws://ADDR/ws`, whose text frames are protocol
//! lines, seen by the rest of the bench as the byte stream of lines it reads over TCP. A
//! received frame becomes its text and a LF; written bytes are cut at each LF into frames.
//!
//! Frames are read and written here, by hand, not through a WebSocket library: the load
//! generator must be cheaper per delivery than the server it measures, or it measures itself.
//! Server frames are unmasked and final, so a frame becomes a line by dropping its 2-4 byte
//! header and adding a LF: one copy, as over TCP. Client frames are masked, with a zero key
//! (the XOR is then a no-op; the server must accept any key).

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use anyhow::{bail, Context as _, Result};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

/// Bytes read from the socket a call.
const READ_CHUNK: usize = 32 * 1024;
/// Framed bytes gathered before a write must wait for the socket.
const WRITE_HIGH: usize = 64 * 1024;

/// Completes the WebSocket handshake for `/ws` over a connected socket.
pub async fn connect(mut tcp: TcpStream, addr: &str) -> Result<WsLines> {
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    tcp.write_all(request.as_bytes()).await?;
    // Byte by byte up to the blank line, so that no frame after it is read here.
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(
            tcp.read_u8()
                .await
                .with_context(|| format!("WebSocket upgrade at ws://{addr}/ws"))?,
        );
        if head.len() > 16 * 1024 {
            bail!("an endless response head from ws://{addr}/ws");
        }
    }
    let head = String::from_utf8_lossy(&head);
    if !head.starts_with("HTTP/1.1 101") {
        bail!(
            "WebSocket upgrade at ws://{addr}/ws refused: {}",
            head.lines().next().unwrap_or("")
        );
    }
    Ok(WsLines {
        tcp,
        input: Vec::new(),
        input_at: 0,
        payload_left: 0,
        skip_payload: false,
        lf_owed: false,
        closed: false,
        output: Vec::new(),
        output_at: 0,
        partial: Vec::new(),
    })
}

/// A WebSocket read and written as lines.
pub struct WsLines {
    tcp: TcpStream,
    /// Bytes read and not yet turned into lines, from `input_at`.
    input: Vec<u8>,
    input_at: usize,
    /// Payload bytes of the current frame still to come.
    payload_left: usize,
    /// True when the current frame is a control frame, whose payload is not a line.
    skip_payload: bool,
    /// The current line's LF, once its payload is out but the reader's buffer was full.
    lf_owed: bool,
    /// A close frame came: the input is over.
    closed: bool,
    /// Framed bytes not yet written, from `output_at`.
    output: Vec<u8>,
    output_at: usize,
    /// Written bytes after the last LF: the start of the next frame.
    partial: Vec<u8>,
}

impl WsLines {
    pub fn tcp(&self) -> &TcpStream {
        &self.tcp
    }

    /// Moves lines out of `input` into `buf`, as far as both allow.
    fn lines_into(&mut self, buf: &mut ReadBuf<'_>) {
        loop {
            if self.lf_owed {
                if buf.remaining() == 0 {
                    return;
                }
                buf.put_slice(b"\n");
                self.lf_owed = false;
            }
            let available = &self.input[self.input_at..];
            if self.payload_left > 0 {
                let n = self.payload_left.min(available.len());
                let n = if self.skip_payload {
                    n
                } else {
                    n.min(buf.remaining())
                };
                if n == 0 {
                    return;
                }
                if !self.skip_payload {
                    buf.put_slice(&available[..n]);
                }
                self.input_at += n;
                self.payload_left -= n;
                if self.payload_left == 0 && !self.skip_payload {
                    self.lf_owed = true;
                }
                continue;
            }
            // A header: 2 bytes, and 2 or 8 of length.
            let [first, second, ..] = *available else {
                return;
            };
            let (len, size) = match second & 0x7F {
                126 if available.len() >= 4 => (
                    usize::from(u16::from_be_bytes([available[2], available[3]])),
                    4,
                ),
                127 if available.len() >= 10 => (
                    u64::from_be_bytes(available[2..10].try_into().unwrap()) as usize,
                    10,
                ),
                126 | 127 => return,
                short => (usize::from(short), 2),
            };
            self.input_at += size;
            self.payload_left = len;
            let opcode = first & 0x0F;
            self.skip_payload = opcode >= 0x8;
            if opcode == 0x8 {
                self.closed = true;
                return;
            }
            if len == 0 && !self.skip_payload {
                self.lf_owed = true;
            }
        }
    }
}

impl AsyncRead for WsLines {
    /// The lines of as many frames as have come; end of input at a close frame.
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let start = buf.filled().len();
        loop {
            this.lines_into(buf);
            if this.closed || buf.filled().len() > start || buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            // All taken: read more, into the same buffer from its start.
            this.input.drain(..this.input_at);
            this.input_at = 0;
            let have = this.input.len();
            this.input.resize(have + READ_CHUNK, 0);
            let mut read = ReadBuf::new(&mut this.input[have..]);
            let polled = Pin::new(&mut this.tcp).poll_read(cx, &mut read);
            let got = read.filled().len();
            this.input.truncate(have + got);
            ready!(polled)?;
            if got == 0 {
                return Poll::Ready(Ok(()));
            }
        }
    }
}

impl WsLines {
    /// Writes what is framed, as far as the socket takes it now.
    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.output_at < self.output.len() {
            let n = ready!(Pin::new(&mut self.tcp).poll_write(cx, &self.output[self.output_at..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.output_at += n;
        }
        self.output.clear();
        self.output_at = 0;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for WsLines {
    /// Frames each complete line in `data` as a text frame, written at the next flush (or
    /// once many are gathered); a line without its LF yet waits for the rest.
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.output.len() - this.output_at >= WRITE_HIGH {
            ready!(this.poll_write_out(cx))?;
        }
        let mut rest = data;
        while let Some(len) = rest.iter().position(|&b| b == b'\n') {
            let line_len = this.partial.len() + len;
            this.output.push(0x81);
            match line_len {
                0..=125 => this.output.push(0x80 | line_len as u8),
                126..=0xFFFF => {
                    this.output.push(0x80 | 126);
                    this.output
                        .extend_from_slice(&(line_len as u16).to_be_bytes());
                }
                _ => {
                    this.output.push(0x80 | 127);
                    this.output
                        .extend_from_slice(&(line_len as u64).to_be_bytes());
                }
            }
            this.output.extend_from_slice(&[0; 4]);
            this.output.append(&mut this.partial);
            this.output.extend_from_slice(&rest[..len]);
            rest = &rest[len + 1..];
        }
        this.partial.extend_from_slice(rest);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_write_out(cx))?;
        Pin::new(&mut this.tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_write_out(cx))?;
        Pin::new(&mut this.tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncBufReadExt, BufReader};
    use tokio::net::TcpListener;
    use tokio_tungstenite::tungstenite::Message;

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
            ws.send(Message::Ping(b"p".to_vec().into())).await.unwrap();
            ws.send(Message::text("")).await.unwrap();
            ws.send(Message::text("b".repeat(300))).await.unwrap();
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
        ws.read_line(&mut line).await.unwrap();
        assert_eq!(line, "\n");
        line.clear();
        ws.read_line(&mut line).await.unwrap();
        assert_eq!(line.len(), 301);
        line.clear();
        assert_eq!(ws.read_line(&mut line).await.unwrap(), 0);
        assert_eq!(server.await.unwrap(), ["NICK a", "SAY hi"]);
    }
}
