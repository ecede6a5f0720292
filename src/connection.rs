//! Line framing, the one place where bytes become lines and lines become bytes.
//!
//! In: a line ends at LF; a CR right before the LF is dropped, so LF and CRLF clients both
//! work. Lines are handed on as raw bytes: UTF-8 is checked by the session, so that a bad line
//! gets `ERR BAD_UTF8` and the connection lives on. A line longer than the maximum is never
//! buffered whole: the decoder reports [`Frame::TooLong`] once and then discards input up to
//! the next LF.
//!
//! Out: server lines wait in a [`WriteQueue`] as shared `Bytes` (formatted once, whoever
//! else receives them) and leave in vectored writes, so many queued lines cost one syscall and
//! no copy.

use std::collections::VecDeque;
use std::future::Future;
use std::io::{self, IoSlice};
use std::ops::Range;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use tokio_util::codec::Decoder;

use crate::fanout::LiveBatch;
use crate::http::websocket::frames;
use crate::transport::Transport;

/// Most buffers handed to one vectored write (the session's, and express delivery's).
pub(crate) const MAX_IOVECS: usize = 64;

/// Splits a connection into its line reader and line writer, which share its transport. A
/// plain socket is polled for readiness directly (not through `readable()`/`AsyncWrite`,
/// whose futures carry a waiter of their own): a session waiting for input then holds no
/// more than two references, which matters with thousands of idle connections.
pub fn split(transport: Transport, max_line: usize) -> (LineReader, LineWriter) {
    let socket = Arc::new(transport);
    (
        LineReader::new(socket.clone(), max_line),
        LineWriter {
            socket,
            queue: WriteQueue::default(),
        },
    )
}

/// Frames from a socket. Unlike a `FramedRead`, it holds no buffer between lines: an idle
/// connection costs no read memory, which is most of what thousands of idle connections
/// would otherwise cost.
pub struct LineReader {
    read: Arc<Transport>,
    codec: LineCodec,
    buf: BytesMut,
    eof: bool,
}

impl LineReader {
    pub fn new(read: Arc<Transport>, max_len: usize) -> Self {
        LineReader {
            read,
            codec: LineCodec::new(max_len),
            buf: BytesMut::new(),
            eof: false,
        }
    }

    /// The next frame; `None` at end of input. Cancel-safe: nothing is lost if the future is
    /// dropped before it completes.
    // Async, unlike `Iterator::next`: a stream's `next`, as in `StreamExt`.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> impl Future<Output = Option<io::Result<Frame>>> + '_ {
        std::future::poll_fn(move |cx| self.poll_next(cx))
    }

    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<io::Result<Frame>>> {
        loop {
            if let Some(frame) = self.decode().transpose() {
                return Poll::Ready(Some(frame));
            }
            if self.eof || self.websocket_closed() {
                return Poll::Ready(None);
            }
            if self.buf.is_empty() && self.buf.capacity() > 0 {
                self.buf = BytesMut::new();
            }
            // Only once the socket has bytes is a buffer made for them.
            match ready!(self.read.poll_read_buf(cx, &mut self.buf)) {
                Ok(0) => self.eof = true,
                Ok(_) => {}
                // A TLS client whose TCP connection closed without `close_notify`: its lines
                // so far count, but not a last one without LF, which may have been cut short.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    self.drop_partial_line();
                    self.eof = true;
                }
                Err(e) => return Poll::Ready(Some(Err(e))),
            }
        }
    }

    /// The next frame in what has been read: lines, or a WebSocket's frames (whose input
    /// ends at its close frame, or with the bytes, a frame cut short dropped).
    fn decode(&mut self) -> io::Result<Option<Frame>> {
        if let Transport::WebSocket(socket) = &*self.read {
            let decoded = Transport::with_websocket(socket, |ws| ws.decoder.decode(&mut self.buf));
            return Ok(decoded?);
        }
        if self.eof {
            self.codec.decode_eof(&mut self.buf)
        } else {
            self.codec.decode(&mut self.buf)
        }
    }

    fn websocket_closed(&self) -> bool {
        match &*self.read {
            Transport::WebSocket(socket) => {
                Transport::with_websocket(socket, |ws| ws.decoder.closed())
            }
            _ => false,
        }
    }

    fn drop_partial_line(&mut self) {
        match self.buf.iter().rposition(|&b| b == b'\n') {
            Some(end) => self.buf.truncate(end + 1),
            None => self.buf.clear(),
        }
    }
}

impl LineReader {
    /// The peer's address (asked of the socket: a session does not keep it, to stay small).
    pub fn peer_ip(&self) -> Option<std::net::IpAddr> {
        self.read.peer_ip()
    }

    /// True if part of a line has been read and the rest has not (an over-long one included;
    /// on a WebSocket, a message whose final fragment has not come).
    pub fn has_partial_line(&self) -> bool {
        let mid_message = match &*self.read {
            Transport::WebSocket(socket) => {
                Transport::with_websocket(socket, |ws| ws.decoder.mid_message())
            }
            _ => false,
        };
        !self.buf.is_empty() || self.codec.discarding || mid_message
    }

    /// The next frame already read from the socket, without reading more.
    pub fn next_buffered(&mut self) -> Option<io::Result<Frame>> {
        self.decode().transpose()
    }
}

/// The writing half of a connection: the transport, and the lines waiting for it.
pub struct LineWriter {
    socket: Arc<Transport>,
    queue: WriteQueue,
}

impl LineWriter {
    /// Queues a line (or several: any whole lines) to be written.
    pub fn push(&mut self, line: Bytes) {
        let Transport::WebSocket(socket) = &*self.socket else {
            self.queue.push(line);
            return;
        };
        let open = Transport::with_websocket(socket, |ws| {
            if let Some(reason) = line.strip_prefix(b"BYE ") {
                let reason = line.slice_ref(reason.strip_suffix(b"\n").unwrap_or(reason));
                ws.farewell = Some(reason);
            }
            !ws.decoder.closed()
        });
        if open {
            self.queue.push(frames::frame_lines(&line));
        }
    }

    /// Queues the messages of a room's batch within `range` (of its plain lines), in the
    /// form this connection takes: a WebSocket's framed once for all its members.
    pub fn push_live(&mut self, batch: &LiveBatch, range: Range<usize>) {
        match &*self.socket {
            Transport::WebSocket(socket) => {
                if !Transport::with_websocket(socket, |ws| ws.decoder.closed()) {
                    self.queue.push(batch.websocket_frames(range));
                }
            }
            _ => self.queue.push(batch.bytes.slice(range)),
        }
    }

    /// Queues the rest of what another writer began ([`crate::express`]): first in line, and
    /// if `begun`, the end of a line whose start is on the wire (kept by `drop_unstarted`).
    pub fn push_rest(&mut self, rest: Bytes, begun: bool) {
        debug_assert!(!begun || self.queue.is_empty(), "a begun line comes first");
        self.queue.push(rest);
        self.queue.started |= begun;
    }

    /// Answers a WebSocket ping.
    pub fn push_pong(&mut self, payload: &[u8]) {
        self.queue.push(frames::pong(payload));
    }

    /// The socket, if a plain TCP one (which others may write to while the session waits:
    /// [`crate::express`]).
    pub fn plain_socket(&self) -> Option<&Arc<Transport>> {
        matches!(*self.socket, Transport::Tcp(_)).then_some(&self.socket)
    }

    /// Bytes queued and not yet written.
    pub fn pending(&self) -> usize {
        self.queue.bytes()
    }

    /// True while bytes wait: in the queue, or in the transport's own buffer (TLS records
    /// not yet on the socket), so that nothing written sits unsent.
    pub fn has_pending(&self) -> bool {
        !self.queue.is_empty() || self.queue.unflushed
    }

    /// Drops what has not begun to be written (see [`WriteQueue::drop_unstarted`]).
    pub fn drop_unstarted(&mut self) {
        self.queue.drop_unstarted();
    }

    /// One vectored write of as many queued buffers as fit, or, once the queue is empty, a
    /// flush of what the transport holds. Cancel-safe: the queue only advances after a write
    /// returns.
    pub fn write_some(&mut self) -> impl Future<Output = io::Result<()>> + '_ {
        // One closure over `self`, not an async fn with a state per await: a session waiting
        // to write stays small.
        std::future::poll_fn(move |cx| self.poll_write_some(cx))
    }

    fn poll_write_some(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let LineWriter { socket, queue } = self;
        if queue.is_empty() {
            ready!(socket.poll_flush(cx))?;
            queue.unflushed = false;
            return Poll::Ready(Ok(()));
        }
        // The iovec array lives on the stack of each poll, not in the future.
        let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
        let count = queue.fill(&mut slices);
        let written = ready!(socket.poll_write_vectored(cx, &slices[..count]))?;
        if written == 0 {
            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
        }
        queue.advance(written);
        if queue.is_empty() {
            // Everything was handed over: send on what the transport kept (nothing for a
            // plain socket), or remember that it still must be.
            queue.unflushed = match socket.poll_flush(cx) {
                Poll::Ready(done) => {
                    done?;
                    false
                }
                Poll::Pending => true,
            };
        }
        Poll::Ready(Ok(()))
    }

    /// Writes everything queued, and flushes it out of the transport.
    pub async fn flush(&mut self) -> io::Result<()> {
        while self.has_pending() {
            self.write_some().await?;
        }
        Ok(())
    }

    /// Ends the sending direction (FIN; for TLS `close_notify` first; for a WebSocket a
    /// close frame with `close_code` and the `BYE`'s reason): the client reads to the end of
    /// what was written. A WebSocket client that closed first gets nothing after its close
    /// frame but the answering one.
    pub async fn shutdown(&mut self, close_code: u16) -> io::Result<()> {
        if let Transport::WebSocket(socket) = &*self.socket {
            let reason = Transport::with_websocket(socket, |ws| ws.farewell.take());
            self.queue
                .push(frames::close(close_code, &reason.unwrap_or_default()));
            self.flush().await?;
        }
        self.socket.shutdown().await
    }
}

/// Lines waiting to be written, as shared buffers. Holds no memory while empty.
#[derive(Debug, Default)]
pub struct WriteQueue {
    queue: VecDeque<Bytes>,
    /// Bytes not yet written.
    bytes: usize,
    /// True once the front buffer is partly written.
    started: bool,
    /// True while bytes handed to a buffering transport (TLS, WebSocket) may not have
    /// reached the socket yet. Kept here rather than in the writer, where it would cost a
    /// connection 8 bytes of padding.
    pub(crate) unflushed: bool,
}

impl WriteQueue {
    pub fn push(&mut self, line: Bytes) {
        self.bytes += line.len();
        self.queue.push_back(line);
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Bytes not yet written.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Drops everything not yet begun, keeping a partly written line so the stream stays
    /// line-aligned (used before `BYE too slow`).
    pub fn drop_unstarted(&mut self) {
        let keep = usize::from(self.started);
        self.queue.truncate(keep);
        self.bytes = self.queue.iter().map(Bytes::len).sum();
    }

    /// Points `slices` at the front buffers; returns how many it filled.
    pub fn fill<'a>(&'a self, slices: &mut [IoSlice<'a>]) -> usize {
        let mut count = 0;
        for (slot, buf) in slices.iter_mut().zip(&self.queue) {
            *slot = IoSlice::new(buf);
            count += 1;
        }
        count
    }

    /// Forgets the first `written` bytes: they are on their way.
    pub fn advance(&mut self, mut written: usize) {
        assert!(written <= self.bytes, "wrote more than queued");
        self.bytes -= written;
        if written > 0 && self.bytes == 0 {
            // All sent: give the queue's memory back (idle connections keep none).
            self.queue = VecDeque::new();
            self.started = false;
            return;
        }
        while written > 0 {
            let front = self.queue.front_mut().expect("bytes were counted");
            if written >= front.len() {
                written -= front.len();
                self.queue.pop_front();
                self.started = false;
            } else {
                front.advance(written);
                self.started = true;
                written = 0;
            }
        }
    }
}

/// One unit of client input.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// A complete line without its terminator.
    Line(BytesMut),
    /// A line longer than the limit; its bytes were (or are being) discarded.
    TooLong,
    /// Another line's worth of a too-long line discarded (or of a big WebSocket frame; or a
    /// WebSocket fragment or pong). No reply, but it counts as a line read (flood control),
    /// so that one endless line, or endless fragments, are read no faster than lines are.
    Skipped,
    /// A WebSocket frame that cannot be a line: answered with `ERR BAD_FRAME`.
    NotALine(NotALine),
    /// A WebSocket ping, with its payload: answered with a pong, and counted as input.
    Ping(Bytes),
}

/// Why a WebSocket frame is not a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotALine {
    /// Lines travel in text frames only.
    Binary,
    /// A line break inside a frame: one frame is one line.
    LineBreak,
}

/// Decoder for LF- or CRLF-terminated lines with a maximum length in bytes.
#[derive(Debug)]
pub struct LineCodec {
    max_len: usize,
    /// Where to resume looking for LF, so a slowly arriving line is scanned once.
    scanned: usize,
    /// True while throwing away the rest of a too-long line.
    discarding: bool,
    /// Bytes discarded since the last [`Frame::TooLong`] or [`Frame::Skipped`].
    discarded: usize,
}

impl LineCodec {
    /// `max_len` counts the bytes of the line itself, not its CR/LF terminator.
    pub fn new(max_len: usize) -> Self {
        LineCodec {
            max_len,
            scanned: 0,
            discarding: false,
            discarded: 0,
        }
    }

    /// The longest buffer a line of `max_len` bytes plus CRLF can occupy.
    fn max_frame(&self) -> usize {
        self.max_len.saturating_add(2)
    }
}

fn strip_terminator(mut line: BytesMut) -> BytesMut {
    if line.last() == Some(&b'\n') {
        line.truncate(line.len() - 1);
    }
    if line.last() == Some(&b'\r') {
        line.truncate(line.len() - 1);
    }
    line
}

impl Decoder for LineCodec {
    type Item = Frame;
    type Error = std::io::Error;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, Self::Error> {
        loop {
            if self.discarding {
                match memchr(b'\n', buf) {
                    Some(i) => {
                        buf.advance(i + 1);
                        self.discarding = false;
                        self.discarded = 0;
                        self.scanned = 0;
                        continue;
                    }
                    None => {
                        self.discarded += buf.len();
                        buf.clear();
                        if self.discarded >= self.max_frame() {
                            self.discarded -= self.max_frame();
                            return Ok(Some(Frame::Skipped));
                        }
                        return Ok(None);
                    }
                }
            }
            let window = buf.len().min(self.max_frame());
            if let Some(i) = memchr(b'\n', &buf[self.scanned.min(window)..window]) {
                let end = self.scanned.min(window) + i + 1;
                self.scanned = 0;
                let line = strip_terminator(buf.split_to(end));
                if line.len() > self.max_len {
                    return Ok(Some(Frame::TooLong));
                }
                return Ok(Some(Frame::Line(line)));
            }
            if buf.len() >= self.max_frame() {
                // No LF within reach: the line is too long whatever comes next. Drop it up to
                // its LF if that has arrived (keeping the lines behind it), else drop what we
                // have and the rest as it comes.
                self.scanned = 0;
                match memchr(b'\n', &buf[window..]) {
                    Some(i) => buf.advance(window + i + 1),
                    None => {
                        self.discarding = true;
                        self.discarded = buf.len() - window;
                        buf.clear();
                    }
                }
                return Ok(Some(Frame::TooLong));
            }
            self.scanned = buf.len();
            return Ok(None);
        }
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, Self::Error> {
        if let Some(frame) = self.decode(buf)? {
            return Ok(Some(frame));
        }
        self.scanned = 0;
        if self.discarding {
            self.discarding = false;
            self.discarded = 0;
            buf.clear();
            return Ok(None);
        }
        if buf.is_empty() {
            return Ok(None);
        }
        // A last line without LF (`printf 'QUIT' | nc`) still counts.
        let line = strip_terminator(buf.split());
        if line.len() > self.max_len {
            return Ok(Some(Frame::TooLong));
        }
        Ok(Some(Frame::Line(line)))
    }
}

fn memchr(needle: u8, haystack: &[u8]) -> Option<usize> {
    haystack.iter().position(|&b| b == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn decode_all(codec: &mut LineCodec, input: &[u8]) -> Vec<Frame> {
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        while let Some(f) = codec.decode(&mut buf).unwrap() {
            out.push(f);
        }
        out
    }

    fn line(s: &str) -> Frame {
        Frame::Line(BytesMut::from(s.as_bytes()))
    }

    #[test]
    fn lf_and_crlf() {
        let mut c = LineCodec::new(100);
        assert_eq!(
            decode_all(&mut c, b"a\r\nb\n\nc"),
            vec![line("a"), line("b"), line("")]
        );
    }

    #[test]
    fn exactly_max_is_fine_one_more_is_too_long() {
        let mut c = LineCodec::new(3);
        assert_eq!(
            decode_all(&mut c, b"abc\r\nabcd\nok\n"),
            vec![line("abc"), Frame::TooLong, line("ok")]
        );
    }

    #[test]
    fn too_long_is_discarded_across_reads() {
        let mut c = LineCodec::new(4);
        let mut buf = BytesMut::from(&b"0123456789"[..]);
        assert_eq!(c.decode(&mut buf).unwrap(), Some(Frame::TooLong));
        assert!(buf.is_empty());
        buf.extend_from_slice(b"m");
        assert_eq!(c.decode(&mut buf).unwrap(), None);
        buf.extend_from_slice(b"ore junk");
        // 4 + 1 + 8 bytes discarded after the first 6: another line's worth (6 with CRLF).
        assert_eq!(c.decode(&mut buf).unwrap(), Some(Frame::Skipped));
        assert!(buf.is_empty(), "discarded bytes are not kept");
        buf.extend_from_slice(b"end\nPING\n");
        assert_eq!(c.decode(&mut buf).unwrap(), Some(line("PING")));
    }

    /// An endless line costs a frame per line's worth of bytes, so flood control reads it no
    /// faster than ordinary lines.
    #[test]
    fn an_endless_line_is_counted_a_line_at_a_time() {
        let mut c = LineCodec::new(8);
        let mut frames = Vec::new();
        for _ in 0..100 {
            let mut buf = BytesMut::from(&[b'x'; 10][..]);
            while let Some(f) = c.decode(&mut buf).unwrap() {
                frames.push(f);
            }
        }
        // 1,000 bytes: one TooLong, then one Skipped per 10 bytes (8 + CRLF) after the first.
        assert_eq!(frames[0], Frame::TooLong);
        assert!(frames[1..].iter().all(|f| *f == Frame::Skipped));
        assert_eq!(frames.len(), 1 + (1000 - 10) / 10);
    }

    #[test]
    fn too_long_keeps_the_lines_behind_it() {
        let mut c = LineCodec::new(8);
        assert_eq!(
            decode_all(&mut c, b"0123456789abcdef\nPING a\nPING b\n"),
            vec![Frame::TooLong, line("PING a"), line("PING b")]
        );
    }

    #[test]
    fn eof_line_is_length_checked() {
        let mut c = LineCodec::new(4);
        let mut buf = BytesMut::from(&b"12345"[..]);
        assert_eq!(c.decode(&mut buf).unwrap(), None);
        assert_eq!(c.decode_eof(&mut buf).unwrap(), Some(Frame::TooLong));
    }

    #[test]
    fn eof_without_newline() {
        let mut c = LineCodec::new(10);
        let mut buf = BytesMut::from(&b"QUIT"[..]);
        assert_eq!(c.decode(&mut buf).unwrap(), None);
        assert_eq!(c.decode_eof(&mut buf).unwrap(), Some(line("QUIT")));
        assert_eq!(c.decode_eof(&mut buf).unwrap(), None);
    }

    fn queued(lines: &[&str]) -> WriteQueue {
        let mut q = WriteQueue::default();
        for l in lines {
            q.push(Bytes::copy_from_slice(l.as_bytes()));
        }
        q
    }

    fn contents(q: &WriteQueue) -> Vec<u8> {
        let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
        let n = q.fill(&mut slices);
        slices[..n].iter().flat_map(|s| s.to_vec()).collect()
    }

    #[test]
    fn a_write_queue_advances_across_buffers() {
        let mut q = queued(&["one\n", "two\n", "three\n"]);
        assert_eq!(q.bytes(), 14);
        q.advance(6);
        assert_eq!(contents(&q), b"o\nthree\n");
        assert_eq!(q.bytes(), 8);
        q.advance(8);
        assert!(q.is_empty());
        assert_eq!(q.bytes(), 0);
        assert_eq!(q.queue.capacity(), 0, "an empty queue holds no memory");
    }

    #[test]
    fn dropping_unstarted_lines_keeps_the_stream_line_aligned() {
        let mut q = queued(&["one\n", "two\n", "three\n"]);
        q.advance(2);
        q.drop_unstarted();
        assert_eq!(contents(&q), b"e\n", "the partly written line is finished");
        assert_eq!(q.bytes(), 2);
        let mut q = queued(&["one\n", "two\n"]);
        q.advance(4);
        q.drop_unstarted();
        assert!(q.is_empty(), "nothing was begun: nothing is kept");
    }

    #[test]
    fn a_vectored_write_takes_at_most_its_share_of_buffers() {
        let lines: Vec<String> = (0..MAX_IOVECS + 10).map(|i| format!("{i}\n")).collect();
        let q = queued(&lines.iter().map(String::as_str).collect::<Vec<_>>());
        let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
        assert_eq!(q.fill(&mut slices), MAX_IOVECS);
    }

    #[tokio::test]
    async fn a_line_writer_writes_everything_to_the_socket() {
        use tokio::io::AsyncReadExt;
        use tokio::net::TcpStream;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap());
        let (client, accepted) = tokio::join!(client, listener.accept());
        let (_reader, mut writer) = split(Transport::Tcp(accepted.unwrap().0), 100);
        let mut expected = Vec::new();
        for i in 0..1000 {
            let line = format!("line {i}\n");
            expected.extend_from_slice(line.as_bytes());
            writer.push(Bytes::from(line));
        }
        writer.flush().await.unwrap();
        assert!(!writer.has_pending());
        writer.shutdown(1000).await.unwrap();
        let mut got = Vec::new();
        client.unwrap().read_to_end(&mut got).await.unwrap();
        assert_eq!(got, expected);
    }

    /// A TLS server stream over an in-memory pipe, as the [`Transport`] takes it.
    struct PipeTls(tokio_rustls::server::TlsStream<tokio::io::DuplexStream>);

    impl crate::transport::Stream for PipeTls {
        fn peer_addr(&self) -> io::Result<std::net::SocketAddr> {
            Err(io::ErrorKind::NotConnected.into())
        }
    }

    impl tokio::io::AsyncRead for PipeTls {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
        }
    }

    impl tokio::io::AsyncWrite for PipeTls {
        fn poll_write(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
        }

        fn poll_flush(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<io::Result<()>> {
            std::pin::Pin::new(&mut self.0).poll_flush(cx)
        }

        fn poll_shutdown(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<io::Result<()>> {
            std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
        }
    }

    /// rustls takes bytes into its own buffer before the socket has room for them. Written
    /// to a pipe of 1 KiB that nobody reads yet, 25 KB of lines leave the queue and mostly
    /// stay in rustls: the writer must still count them as pending (or the session would
    /// stop writing and they would sit unsent), and a flush must deliver every byte.
    #[tokio::test]
    async fn bytes_inside_tls_count_as_pending_until_flushed() {
        use tokio::io::AsyncReadExt;
        let made = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let key =
            rustls::pki_types::PrivateKeyDer::try_from(made.signing_key.serialize_der()).unwrap();
        let server = rustls::ServerConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![made.cert.der().clone()], key)
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(made.cert.der().clone()).unwrap();
        let client = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let (client_pipe, server_pipe) = tokio::io::duplex(1024);
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let (client, server) = tokio::join!(
            tokio_rustls::TlsConnector::from(Arc::new(client)).connect(name, client_pipe),
            tokio_rustls::TlsAcceptor::from(Arc::new(server)).accept(server_pipe),
        );
        let (mut client, server) = (client.unwrap(), server.unwrap());

        let (_reader, mut writer) = split(Transport::stream(PipeTls(server)), 100);
        let mut expected = Vec::new();
        for i in 0..1000 {
            let line = format!("line {i:05} of a thousand\n");
            expected.extend_from_slice(line.as_bytes());
            writer.push(Bytes::from(line));
        }
        while writer.pending() > 0 {
            let write = tokio::time::timeout(Duration::from_secs(10), writer.write_some());
            write
                .await
                .expect("rustls takes 25 KB without waiting")
                .unwrap();
        }
        assert!(
            writer.has_pending(),
            "most of the bytes are still inside rustls"
        );

        let read = tokio::spawn(async move {
            let mut got = Vec::new();
            client.read_to_end(&mut got).await.unwrap();
            got
        });
        writer.flush().await.unwrap();
        assert!(!writer.has_pending());
        writer.shutdown(1000).await.unwrap();
        assert_eq!(
            read.await.unwrap(),
            expected,
            "every byte, then close_notify"
        );
    }
}
