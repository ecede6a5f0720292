//! A WebSocket as a carrier of protocol lines: every text frame is one line, in each
//! direction, without its line end. The session above it is the same as for TCP; only the
//! framing differs, and it differs here.
//!
//! In: a text frame is a line (a trailing LF or CRLF is taken as its terminator, as on TCP);
//! a frame longer than `--max-line` is [`Frame::TooLong`]; a frame with a line break inside,
//! or a binary frame, is [`Frame::NotALine`], which the session answers with
//! `ERR BAD_FRAME` and the connection lives on. WebSocket pings are answered by tungstenite
//! itself; a close frame is the end of input.
//!
//! Out: each queued line leaves as one text frame, sliced out of the shared buffer it was
//! formatted into (no copy but tungstenite's own into its write buffer, which coalesces
//! frames into few writes). Closing sends a close frame whose reason is the `BYE` line's.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use bytes::{Bytes, BytesMut};
use futures::{Sink, Stream};

use crate::connection::{Frame, NotALine, WriteQueue};

/// Close codes (RFC 6455, 7.4.1) a session ends with.
pub mod close_code {
    /// `QUIT`, end of input, and the like: the conversation is over.
    pub const NORMAL: u16 = 1000;
    /// The server is shutting down.
    pub const GOING_AWAY: u16 = 1001;
    /// Closed for the client's behaviour: too slow, too many errors, no name in time.
    pub const POLICY: u16 = 1008;
}

/// The longest close reason a close frame can carry (125 bytes of payload less the code).
const MAX_CLOSE_REASON: usize = 123;

/// One upgraded WebSocket connection, read and written a line at a time.
pub struct WebSocketLines {
    socket: WebSocket,
    peer: SocketAddr,
    /// The reason of the last `BYE` sent, for the close frame that follows it.
    farewell: Option<Bytes>,
    /// Set once the client's close frame has come: its reply is flushed, then input ends.
    closing: bool,
    /// Set once our close frame is queued.
    close_sent: bool,
}

impl WebSocketLines {
    pub fn new(socket: WebSocket, peer: SocketAddr) -> WebSocketLines {
        WebSocketLines {
            socket,
            peer,
            farewell: None,
            closing: false,
            close_sent: false,
        }
    }

    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }

    /// The next input frame as the session takes it; `None` at the end of input.
    pub fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
        max_len: usize,
    ) -> Poll<Option<io::Result<Frame>>> {
        loop {
            if self.closing {
                // tungstenite queued the reply to the client's close: send it before ending.
                let _ = ready!(Pin::new(&mut self.socket).poll_flush(cx));
                return Poll::Ready(None);
            }
            let message = match ready!(Pin::new(&mut self.socket).poll_next(cx)) {
                None => return Poll::Ready(None),
                Some(Err(e)) => return Poll::Ready(Some(Err(io::Error::other(e)))),
                Some(Ok(message)) => message,
            };
            return Poll::Ready(Some(Ok(match message {
                Message::Text(text) => line_of(text.as_bytes(), max_len),
                Message::Binary(_) => Frame::NotALine(NotALine::Binary),
                // Answered by tungstenite (a ping's pong goes out with the next write).
                Message::Ping(_) | Message::Pong(_) => continue,
                Message::Close(_) => {
                    self.closing = true;
                    continue;
                }
            })));
        }
    }

    /// Hands queued lines to the WebSocket, one text frame each, as many as it takes now;
    /// once the queue is empty, flushes them out. Ready after any progress; the queue only
    /// advances past a line once it is taken.
    pub fn poll_send(
        &mut self,
        cx: &mut Context<'_>,
        queue: &mut WriteQueue,
    ) -> Poll<io::Result<()>> {
        let mut sent = false;
        while !queue.is_empty() {
            match Pin::new(&mut self.socket).poll_ready(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(io::Error::other(e))),
                Poll::Pending if sent => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
            let line = queue.take_line();
            if line.starts_with(b"BYE ") {
                self.farewell = Some(line.slice(4..));
            }
            Pin::new(&mut self.socket)
                .start_send(Message::Text(text_of(line)))
                .map_err(io::Error::other)?;
            sent = true;
            queue.unflushed = true;
        }
        match Pin::new(&mut self.socket).poll_flush(cx) {
            Poll::Ready(done) => {
                done.map_err(io::Error::other)?;
                queue.unflushed = false;
                Poll::Ready(Ok(()))
            }
            Poll::Pending if sent => Poll::Ready(Ok(())),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Sends our close frame (`code`, with the last `BYE`'s reason) and flushes it. The
    /// client's reply ends the input ([`WebSocketLines::poll_frame`]).
    pub fn poll_close(&mut self, cx: &mut Context<'_>, code: u16) -> Poll<io::Result<()>> {
        if !self.close_sent && !self.closing {
            ready!(Pin::new(&mut self.socket).poll_ready(cx)).map_err(io::Error::other)?;
            let reason = self.farewell.take().unwrap_or_default();
            let frame = CloseFrame {
                code,
                reason: text_of(truncate_at_char(reason, MAX_CLOSE_REASON)),
            };
            Pin::new(&mut self.socket)
                .start_send(Message::Close(Some(frame)))
                .map_err(io::Error::other)?;
            self.close_sent = true;
        }
        Pin::new(&mut self.socket)
            .poll_flush(cx)
            .map_err(io::Error::other)
    }
}

/// A text frame's payload as the session's input frame.
fn line_of(text: &[u8], max_len: usize) -> Frame {
    let line = text
        .strip_suffix(b"\n")
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .unwrap_or(text);
    if line.len() > max_len {
        Frame::TooLong
    } else if line.contains(&b'\n') {
        Frame::NotALine(NotALine::LineBreak)
    } else {
        Frame::Line(BytesMut::from(line))
    }
}

/// Server lines are UTF-8 by construction (input is checked before it is repeated); should
/// one ever not be, it is sent with replacement characters rather than not at all.
fn text_of(line: Bytes) -> Utf8Bytes {
    Utf8Bytes::try_from(line.clone())
        .unwrap_or_else(|_| Utf8Bytes::from(String::from_utf8_lossy(&line).into_owned()))
}

/// At most `max` bytes of `text`, cut at a character boundary.
fn truncate_at_char(text: Bytes, max: usize) -> Bytes {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while end > 0 && (text[end] & 0b1100_0000) == 0b1000_0000 {
        end -= 1;
    }
    text.slice(..end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_text_frame_is_one_line() {
        assert_eq!(
            line_of(b"SAY hi", 10),
            Frame::Line(BytesMut::from("SAY hi"))
        );
        assert_eq!(
            line_of(b"SAY hi\n", 10),
            Frame::Line(BytesMut::from("SAY hi"))
        );
        assert_eq!(
            line_of(b"SAY hi\r\n", 10),
            Frame::Line(BytesMut::from("SAY hi"))
        );
        assert_eq!(line_of(b"", 10), Frame::Line(BytesMut::new()));
    }

    #[test]
    fn a_frame_with_a_line_break_inside_is_not_a_line() {
        assert_eq!(
            line_of(b"SAY a\nQUIT", 100),
            Frame::NotALine(NotALine::LineBreak)
        );
        assert_eq!(
            line_of(b"SAY a\n\n", 100),
            Frame::NotALine(NotALine::LineBreak)
        );
    }

    #[test]
    fn the_limit_counts_the_line_without_its_terminator() {
        assert_eq!(line_of(b"abcd\r\n", 4), Frame::Line(BytesMut::from("abcd")));
        assert_eq!(line_of(b"abcde", 4), Frame::TooLong);
    }

    #[test]
    fn a_close_reason_is_cut_at_a_character() {
        let text = Bytes::from("é".repeat(100));
        let cut = truncate_at_char(text, MAX_CLOSE_REASON);
        assert_eq!(cut.len(), 122);
        assert!(std::str::from_utf8(&cut).is_ok());
        assert_eq!(truncate_at_char(Bytes::from("short"), 123), "short");
    }
}
