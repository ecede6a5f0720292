//! Line framing: the one place where bytes from the socket become lines.
//!
//! A line ends at LF; a CR right before the LF is dropped, so LF and CRLF clients both work.
//! Lines are handed on as raw bytes: UTF-8 is checked by the session, so that a bad line gets
//! `ERR BAD_UTF8` and the connection lives on. A line longer than the maximum is never buffered
//! whole: the decoder reports [`Frame::TooLong`] once and then discards input up to the next LF.

use std::io;

use bytes::{Buf, BytesMut};
use tokio::net::tcp::OwnedReadHalf;
use tokio_util::codec::Decoder;

/// Bytes requested from the socket per read.
const READ_CHUNK: usize = 4096;

/// Frames from a socket. Unlike a `FramedRead`, it holds no buffer between lines: an idle
/// connection costs no read memory, which is most of what thousands of idle connections
/// would otherwise cost.
pub struct LineReader {
    read: OwnedReadHalf,
    codec: LineCodec,
    buf: BytesMut,
    eof: bool,
}

impl LineReader {
    pub fn new(read: OwnedReadHalf, max_len: usize) -> Self {
        LineReader {
            read,
            codec: LineCodec::new(max_len),
            buf: BytesMut::new(),
            eof: false,
        }
    }

    /// The next frame; `None` at end of input. Cancel-safe: nothing is lost if the future is
    /// dropped before it completes.
    pub async fn next(&mut self) -> Option<io::Result<Frame>> {
        loop {
            if self.eof {
                return self.codec.decode_eof(&mut self.buf).transpose();
            }
            match self.codec.decode(&mut self.buf) {
                Ok(Some(frame)) => return Some(Ok(frame)),
                Ok(None) => {}
                Err(e) => return Some(Err(e)),
            }
            if self.buf.is_empty() && self.buf.capacity() > 0 {
                self.buf = BytesMut::new();
            }
            if let Err(e) = self.read.readable().await {
                return Some(Err(e));
            }
            self.buf.reserve(READ_CHUNK);
            match self.read.try_read_buf(&mut self.buf) {
                Ok(0) => self.eof = true,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

impl LineReader {
    /// True if part of a line has been read and the rest has not (an over-long one included).
    pub fn has_partial_line(&self) -> bool {
        !self.buf.is_empty() || self.codec.discarding
    }

    /// The next frame already read from the socket, without reading more.
    pub fn next_buffered(&mut self) -> Option<io::Result<Frame>> {
        let decoded = if self.eof {
            self.codec.decode_eof(&mut self.buf)
        } else {
            self.codec.decode(&mut self.buf)
        };
        decoded.transpose()
    }
}

/// One unit of client input.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// A complete line without its terminator.
    Line(BytesMut),
    /// A line longer than the limit; its bytes were (or are being) discarded.
    TooLong,
}

/// Decoder for LF- or CRLF-terminated lines with a maximum length in bytes.
#[derive(Debug)]
pub struct LineCodec {
    max_len: usize,
    /// Where to resume looking for LF, so a slowly arriving line is scanned once.
    scanned: usize,
    /// True while throwing away the rest of a too-long line.
    discarding: bool,
}

impl LineCodec {
    /// `max_len` counts the bytes of the line itself, not its CR/LF terminator.
    pub fn new(max_len: usize) -> Self {
        LineCodec {
            max_len,
            scanned: 0,
            discarding: false,
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
                        self.scanned = 0;
                        continue;
                    }
                    None => {
                        buf.clear();
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
        buf.extend_from_slice(b"more junk");
        assert_eq!(c.decode(&mut buf).unwrap(), None);
        assert!(buf.is_empty(), "discarded bytes are not kept");
        buf.extend_from_slice(b"end\nPING\n");
        assert_eq!(c.decode(&mut buf).unwrap(), Some(line("PING")));
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
}
