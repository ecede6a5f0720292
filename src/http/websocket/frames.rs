//! WebSocket frames (RFC 6455, section 5) as the server reads and writes them: pure code on
//! buffers, without a socket, so it is tested and fuzzed on its own.
//!
//! In: client frames (always masked) are decoded once whole; a text message (one frame, or
//! fragments up to its final one) is one input line. Every frame is input to flood control
//! as lines are on TCP: a fragment, a pong, and each line's worth of a big frame beyond its
//! first is a [`Frame::Skipped`]. Pings become [`Frame::Ping`] for the session to answer; a
//! close frame ends the input. Every violation of the protocol, and any
//! frame or message over the decoder's limit, is an error that ends the connection.
//!
//! Out: server frames are unmasked, so a framed line is the same bytes for every recipient:
//! a room's batch is framed once ([`frame_lines`]) and shared, as its plain lines are.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::connection::{Frame, NotALine};

const FIN: u8 = 0x80;
const RSV: u8 = 0x70;
const MASKED: u8 = 0x80;

const CONTINUATION: u8 = 0x0;
const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

/// The longest payload of a control frame (ping, pong, close).
const MAX_CONTROL: usize = 125;
/// The longest close reason: a control frame's payload less the two bytes of the code.
pub const MAX_CLOSE_REASON: usize = MAX_CONTROL - 2;

/// Why a client's frames end its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    #[error("a client frame must be masked")]
    Unmasked,
    #[error("reserved bits set without an extension that defines them")]
    ReservedBits,
    #[error("unknown opcode {0:#x}")]
    UnknownOpcode(u8),
    #[error("a control frame must be whole and at most 125 bytes")]
    BadControlFrame,
    #[error("a continuation frame without a message to continue")]
    UnexpectedContinuation,
    #[error("a new message began before the last one ended")]
    UnfinishedMessage,
    #[error("a close frame's payload must be empty or a valid code and a UTF-8 reason")]
    BadClosePayload,
    #[error("a text message that is not UTF-8")]
    NotUtf8,
    #[error("a frame or message over {0} bytes")]
    TooBig(usize),
}

impl Violation {
    /// The close code (RFC 6455, 7.4.1) the server closes with.
    pub fn close_code(&self) -> u16 {
        match self {
            Violation::NotUtf8 => 1007,
            Violation::TooBig(_) => 1009,
            _ => 1002,
        }
    }
}

impl From<Violation> for std::io::Error {
    fn from(v: Violation) -> Self {
        std::io::Error::new(std::io::ErrorKind::InvalidData, v)
    }
}

/// Reads client frames out of the bytes read so far.
#[derive(Debug)]
pub struct FrameDecoder {
    /// The longest line: a longer text message is [`Frame::TooLong`].
    max_line: usize,
    /// The longest frame or message read at all; a longer one ends the connection.
    max_message: usize,
    /// A fragmented message whose final frame has not come yet.
    partial: Option<Partial>,
    /// Set once the client's close frame has come: nothing after it is input.
    closed: bool,
    /// [`Frame::Skipped`]s still owed for the last data frame: one per line's worth of its
    /// payload after the first, so that flood control reads big frames no faster than lines,
    /// as it reads a long line on TCP.
    owed: usize,
}

#[derive(Debug)]
struct Partial {
    binary: bool,
    /// The payload so far, kept only while it can still be a line.
    payload: BytesMut,
    len: usize,
}

impl FrameDecoder {
    pub fn new(max_line: usize, max_message: usize) -> FrameDecoder {
        FrameDecoder {
            max_line,
            max_message,
            partial: None,
            closed: false,
            owed: 0,
        }
    }

    /// True once the client has sent its close frame: the input is over.
    pub fn closed(&self) -> bool {
        self.closed
    }

    /// True while a message in fragments waits for its final one.
    pub fn mid_message(&self) -> bool {
        self.partial.is_some()
    }

    /// The next input frame in `buf`, consuming the client frames it took; `None` when a
    /// whole frame has not arrived yet, or the input is over.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, Violation> {
        if self.owed > 0 {
            self.owed -= 1;
            return Ok(Some(Frame::Skipped));
        }
        while !self.closed {
            let Some((header, len)) = self.header(buf)? else {
                return Ok(None);
            };
            if buf.len() < header.size + len {
                // Make room for the rest once, not a read at a time.
                buf.reserve(header.size + len - buf.len());
                return Ok(None);
            }
            buf.advance(header.size - 4);
            let mask = buf.get_u32();
            let mut payload = buf.split_to(len);
            unmask(&mut payload, mask);
            if header.opcode & 0x8 == 0 {
                self.owed = len.saturating_sub(1) / self.max_line.saturating_add(2);
            }
            if let Some(frame) = self.take(header, payload)? {
                return Ok(Some(frame));
            }
        }
        Ok(None)
    }

    /// The header at the front of `buf` and its payload's length, once all of it is there.
    fn header(&self, buf: &[u8]) -> Result<Option<(Header, usize)>, Violation> {
        let [first, second, ..] = *buf else {
            return Ok(None);
        };
        let header = Header {
            fin: first & FIN != 0,
            opcode: first & 0x0F,
            size: 2 + 4,
        };
        if first & RSV != 0 {
            return Err(Violation::ReservedBits);
        }
        if second & MASKED == 0 {
            return Err(Violation::Unmasked);
        }
        let (len, size) = match second & 0x7F {
            126 if buf.len() >= 4 => (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 2),
            127 if buf.len() >= 10 => (u64::from_be_bytes(buf[2..10].try_into().unwrap()), 8),
            126 | 127 => return Ok(None),
            short => (u64::from(short), 0),
        };
        let header = Header {
            size: header.size + size,
            ..header
        };
        let is_control = header.opcode & 0x8 != 0;
        if is_control && (!header.fin || len > MAX_CONTROL as u64) {
            return Err(Violation::BadControlFrame);
        }
        let so_far = self.partial.as_ref().map_or(0, |p| p.len) as u64;
        if !is_control && len.saturating_add(so_far) > self.max_message as u64 {
            return Err(Violation::TooBig(self.max_message));
        }
        Ok(Some((header, len as usize)))
    }

    /// What one unmasked client frame means.
    fn take(&mut self, header: Header, payload: BytesMut) -> Result<Option<Frame>, Violation> {
        let binary = match header.opcode {
            PING => return Ok(Some(Frame::Ping(payload.freeze()))),
            // Answers nothing, but is input all the same (flood control counts it).
            PONG => return Ok(Some(Frame::Skipped)),
            CLOSE => {
                check_close(&payload)?;
                self.closed = true;
                return Ok(None);
            }
            TEXT | BINARY if self.partial.is_some() => return Err(Violation::UnfinishedMessage),
            TEXT => false,
            BINARY => true,
            CONTINUATION => {
                let Some(partial) = &mut self.partial else {
                    return Err(Violation::UnexpectedContinuation);
                };
                partial.len += payload.len();
                if partial.len <= self.max_line + 2 {
                    partial.payload.extend_from_slice(&payload);
                }
                if !header.fin {
                    return Ok(Some(Frame::Skipped));
                }
                let partial = self.partial.take().expect("just seen");
                return self
                    .message(partial.binary, partial.payload, partial.len)
                    .map(Some);
            }
            other => return Err(Violation::UnknownOpcode(other)),
        };
        if !header.fin {
            let len = payload.len();
            let mut payload = payload;
            payload.truncate(self.max_line + 2);
            self.partial = Some(Partial {
                binary,
                payload,
                len,
            });
            // Every frame is input, so that flood control counts fragments as it counts
            // lines: empty ones cost nothing else, and could come without end.
            return Ok(Some(Frame::Skipped));
        }
        let len = payload.len();
        self.message(binary, payload, len).map(Some)
    }

    /// A whole message as input: a text message is a line (a trailing LF or CRLF taken as
    /// its terminator, as on TCP); a binary one, or one with a line break inside, is not.
    /// Text that is not UTF-8 is not a WebSocket message at all.
    fn message(&self, binary: bool, payload: BytesMut, len: usize) -> Result<Frame, Violation> {
        if binary {
            return Ok(Frame::NotALine(NotALine::Binary));
        }
        // Checked whole when kept whole; a longer one is refused anyway.
        if payload.len() == len && std::str::from_utf8(&payload).is_err() {
            return Err(Violation::NotUtf8);
        }
        let mut line = payload;
        let mut len = len;
        // Whole in `line` unless too long anyway (then its end is unknown and does not matter).
        if line.len() == len && line.last() == Some(&b'\n') {
            len -= 1;
            if line.get(len.wrapping_sub(1)) == Some(&b'\r') {
                len -= 1;
            }
            line.truncate(len);
        }
        Ok(if len > self.max_line {
            Frame::TooLong
        } else if memchr::memchr(b'\n', &line).is_some() {
            Frame::NotALine(NotALine::LineBreak)
        } else {
            Frame::Line(line)
        })
    }
}

/// A close frame's payload: none, or a code a peer may send (RFC 6455, 7.4) and a UTF-8
/// reason.
fn check_close(payload: &[u8]) -> Result<(), Violation> {
    let Some((code, reason)) = payload.split_first_chunk::<2>() else {
        return match payload.len() {
            0 => Ok(()),
            _ => Err(Violation::BadClosePayload),
        };
    };
    match u16::from_be_bytes(*code) {
        // 1004-1006 and 1015 are reserved or only for reporting; 1012-1014 are IANA's.
        1000..=1003 | 1007..=1014 | 3000..=4999 => {}
        _ => return Err(Violation::BadClosePayload),
    }
    std::str::from_utf8(reason).map_err(|_| Violation::NotUtf8)?;
    Ok(())
}

#[derive(Debug, Clone, Copy)]
struct Header {
    fin: bool,
    opcode: u8,
    /// Bytes of header, mask key included.
    size: usize,
}

/// XORs `payload` with the 4-byte `mask` (big-endian, as it came), a word at a time.
fn unmask(payload: &mut [u8], mask: u32) {
    let key = mask.to_be_bytes();
    let wide = u64::from_ne_bytes([
        key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3],
    ]);
    let mut chunks = payload.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let word = u64::from_ne_bytes(chunk.try_into().unwrap()) ^ wide;
        chunk.copy_from_slice(&word.to_ne_bytes());
    }
    for (i, byte) in chunks.into_remainder().iter_mut().enumerate() {
        *byte ^= key[i % 4];
    }
}

/// Appends a final, unmasked frame's header for a payload of `len` bytes.
fn put_header(out: &mut BytesMut, opcode: u8, len: usize) {
    out.put_u8(FIN | opcode);
    match len {
        0..=125 => out.put_u8(len as u8),
        126..=0xFFFF => {
            out.put_u8(126);
            out.put_u16(len as u16);
        }
        _ => {
            out.put_u8(127);
            out.put_u64(len as u64);
        }
    }
}

/// Each line of `lines` (LF-terminated; a last one may lack its LF) as one text frame
/// without its LF, in one buffer. Server lines are UTF-8 by construction; should one ever
/// not be, it goes out with replacement characters (a browser would drop the connection
/// over a text frame that is not UTF-8).
pub fn frame_lines(lines: &[u8]) -> Bytes {
    let text = String::from_utf8_lossy(lines);
    let lines = text.as_bytes();
    let count = memchr::memchr_iter(b'\n', lines).count() + 1;
    let mut out = BytesMut::with_capacity(lines.len() + 4 * count);
    let mut rest = lines;
    while !rest.is_empty() {
        let (line, next) = match memchr::memchr(b'\n', rest) {
            Some(end) => (&rest[..end], &rest[end + 1..]),
            None => (rest, &rest[rest.len()..]),
        };
        put_header(&mut out, TEXT, line.len());
        out.put_slice(line);
        rest = next;
    }
    out.freeze()
}

/// The length of a server frame's header for a payload of `len` bytes.
pub fn header_len(len: usize) -> usize {
    match len {
        0..=125 => 2,
        126..=0xFFFF => 4,
        _ => 10,
    }
}

/// The pong that answers a ping with `payload`.
pub fn pong(payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(2 + payload.len());
    put_header(&mut out, PONG, payload.len());
    out.put_slice(payload);
    out.freeze()
}

/// A close frame with `code` and `reason` (cut at a character to fit).
pub fn close(code: u16, reason: &[u8]) -> Bytes {
    let reason = truncate_at_char(reason, MAX_CLOSE_REASON);
    let mut out = BytesMut::with_capacity(4 + reason.len());
    put_header(&mut out, CLOSE, 2 + reason.len());
    out.put_u16(code);
    out.put_slice(reason);
    out.freeze()
}

/// At most `max` bytes of `text`, cut at a character boundary.
fn truncate_at_char(text: &[u8], max: usize) -> &[u8] {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while end > 0 && (text[end] & 0b1100_0000) == 0b1000_0000 {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client frame: masked, as a browser sends it.
    fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        let mut out = BytesMut::new();
        out.put_u8(if fin { FIN } else { 0 } | opcode);
        match payload.len() {
            0..=125 => out.put_u8(MASKED | payload.len() as u8),
            126..=0xFFFF => {
                out.put_u8(MASKED | 126);
                out.put_u16(payload.len() as u16);
            }
            n => {
                out.put_u8(MASKED | 127);
                out.put_u64(n as u64);
            }
        }
        out.put_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out.to_vec()
    }

    fn decode_all(decoder: &mut FrameDecoder, input: &[u8]) -> Result<Vec<Frame>, Violation> {
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        while let Some(frame) = decoder.decode(&mut buf)? {
            out.push(frame);
        }
        Ok(out)
    }

    fn line(text: &str) -> Frame {
        Frame::Line(BytesMut::from(text))
    }

    #[test]
    fn a_text_frame_is_one_line_without_its_line_end() {
        let mut d = FrameDecoder::new(10, 100);
        let input = [
            client_frame(true, TEXT, b"SAY hi"),
            client_frame(true, TEXT, b"SAY hi\n"),
            client_frame(true, TEXT, b"SAY hi\r\n"),
            client_frame(true, TEXT, b""),
        ]
        .concat();
        assert_eq!(
            decode_all(&mut d, &input).unwrap(),
            [line("SAY hi"), line("SAY hi"), line("SAY hi"), line("")]
        );
    }

    #[test]
    fn frames_are_decoded_only_once_whole_whatever_the_reads() {
        let long = "x".repeat(300);
        let input = [
            client_frame(true, TEXT, long.as_bytes()),
            client_frame(true, TEXT, b"PING 1"),
        ]
        .concat();
        let mut d = FrameDecoder::new(1000, 10_000);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for byte in &input {
            buf.put_u8(*byte);
            while let Some(frame) = d.decode(&mut buf).unwrap() {
                out.push(frame);
            }
        }
        assert_eq!(out, [line(&long), line("PING 1")]);
        assert!(buf.is_empty());
    }

    #[test]
    fn a_fragmented_message_is_one_line_with_control_frames_between() {
        let mut d = FrameDecoder::new(20, 100);
        let input = [
            client_frame(false, TEXT, b"SAY "),
            client_frame(true, PING, b"p"),
            client_frame(false, CONTINUATION, b"hel"),
            client_frame(true, CONTINUATION, b"lo\n"),
        ]
        .concat();
        assert_eq!(
            decode_all(&mut d, &input).unwrap(),
            [
                Frame::Skipped,
                Frame::Ping(Bytes::from_static(b"p")),
                Frame::Skipped,
                line("SAY hello")
            ]
        );
    }

    #[test]
    fn frames_that_are_not_lines() {
        let mut d = FrameDecoder::new(8, 100);
        let input = [
            client_frame(true, BINARY, b"\x00\x01"),
            client_frame(true, TEXT, b"a\nQUIT"),
            client_frame(true, TEXT, b"SAY a\n\n"),
            client_frame(true, TEXT, b"123456789"),
            client_frame(false, TEXT, b"12345"),
            client_frame(true, CONTINUATION, b"6789"),
            client_frame(true, TEXT, b"12345678\r\n"),
            client_frame(true, PONG, b""),
        ]
        .concat();
        assert_eq!(
            decode_all(&mut d, &input).unwrap(),
            [
                Frame::NotALine(NotALine::Binary),
                Frame::NotALine(NotALine::LineBreak),
                Frame::NotALine(NotALine::LineBreak),
                Frame::TooLong,
                Frame::Skipped,
                Frame::TooLong,
                line("12345678"),
                Frame::Skipped,
            ]
        );
    }

    #[test]
    fn a_close_frame_ends_the_input() {
        let mut d = FrameDecoder::new(10, 100);
        let input = [
            client_frame(true, TEXT, b"QUIT"),
            client_frame(true, CLOSE, b"\x03\xe8bye"),
            client_frame(true, TEXT, b"SAY after"),
        ]
        .concat();
        assert_eq!(decode_all(&mut d, &input).unwrap(), [line("QUIT")]);
        assert!(d.closed());
    }

    #[test]
    fn violations_end_the_connection() {
        let cases: [(Vec<u8>, Violation); 10] = [
            (client_frame(true, TEXT, b"SAY \xff"), Violation::NotUtf8),
            (
                [
                    client_frame(false, TEXT, b"SAY \xc3"),
                    client_frame(true, CONTINUATION, b"\xa9\xff"),
                ]
                .concat(),
                Violation::NotUtf8,
            ),
            (
                {
                    let mut f = client_frame(true, TEXT, b"hi");
                    f[1] &= !MASKED;
                    f
                },
                Violation::Unmasked,
            ),
            (
                {
                    let mut f = client_frame(true, TEXT, b"hi");
                    f[0] |= 0x40;
                    f
                },
                Violation::ReservedBits,
            ),
            (client_frame(true, 0x3, b""), Violation::UnknownOpcode(3)),
            (client_frame(false, PING, b""), Violation::BadControlFrame),
            (
                client_frame(true, PING, &[0; 126]),
                Violation::BadControlFrame,
            ),
            (
                client_frame(true, CONTINUATION, b"x"),
                Violation::UnexpectedContinuation,
            ),
            (
                [
                    client_frame(false, TEXT, b"a"),
                    client_frame(true, TEXT, b"b"),
                ]
                .concat(),
                Violation::UnfinishedMessage,
            ),
            (
                client_frame(true, CLOSE, b"\x03"),
                Violation::BadClosePayload,
            ),
        ];
        for (input, violation) in cases {
            let mut d = FrameDecoder::new(10, 100);
            assert_eq!(decode_all(&mut d, &input), Err(violation));
        }
        // A character split across fragments is whole in the message.
        let mut d = FrameDecoder::new(10, 100);
        let input = [
            client_frame(false, TEXT, b"SAY \xc3"),
            client_frame(true, CONTINUATION, b"\xa9"),
        ]
        .concat();
        assert_eq!(
            decode_all(&mut d, &input),
            Ok(vec![Frame::Skipped, line("SAY é")])
        );
    }

    /// Every fragment is input (flood control counts it), an empty one too.
    #[test]
    fn each_fragment_is_input() {
        let mut d = FrameDecoder::new(10, 100);
        let mut input = client_frame(false, TEXT, b"PING");
        for _ in 0..50 {
            input.extend(client_frame(false, CONTINUATION, b""));
        }
        input.extend(client_frame(true, CONTINUATION, b" 1"));
        let frames = decode_all(&mut d, &input).unwrap();
        assert_eq!(frames.len(), 52);
        assert!(frames[..51].iter().all(|f| *f == Frame::Skipped));
        assert_eq!(frames[51], line("PING 1"));
    }

    /// A frame costs flood control a token per line's worth of payload, as a long line does
    /// on TCP: its frame, then a `Skipped` for each further line's worth.
    #[test]
    fn a_big_frame_is_input_a_line_at_a_time() {
        let mut d = FrameDecoder::new(8, 1000);
        let input = [
            client_frame(true, TEXT, &[b'x'; 10]),
            client_frame(true, TEXT, &[b'x'; 11]),
            client_frame(false, TEXT, &[b'x'; 30]),
            client_frame(true, CONTINUATION, &[b'x'; 21]),
            client_frame(true, TEXT, b"PING"),
        ]
        .concat();
        let frames = decode_all(&mut d, &input).unwrap();
        // 10 bytes; 11 (a line's worth more); 30 in a fragment (two more); 21 (two more).
        assert_eq!(
            frames,
            [
                Frame::TooLong,
                Frame::TooLong,
                Frame::Skipped,
                Frame::Skipped,
                Frame::Skipped,
                Frame::Skipped,
                Frame::TooLong,
                Frame::Skipped,
                Frame::Skipped,
                line("PING"),
            ]
        );
    }

    #[test]
    fn a_close_frame_has_a_valid_code_and_a_utf8_reason() {
        let closes = |payload: &[u8]| {
            let mut d = FrameDecoder::new(10, 100);
            decode_all(&mut d, &client_frame(true, CLOSE, payload)).map(|_| d.closed())
        };
        let code = |code: u16, reason: &[u8]| [&code.to_be_bytes()[..], reason].concat();
        assert_eq!(closes(b""), Ok(true));
        for good in [1000, 1003, 1007, 1011, 1014, 3000, 4999] {
            assert_eq!(closes(&code(good, "bye é".as_bytes())), Ok(true), "{good}");
        }
        assert_eq!(closes(b"\x03"), Err(Violation::BadClosePayload));
        for bad in [0, 999, 1004, 1005, 1006, 1015, 2999, 5000, 65535] {
            assert_eq!(
                closes(&code(bad, b"")),
                Err(Violation::BadClosePayload),
                "{bad}"
            );
        }
        assert_eq!(closes(&code(1000, b"\xff")), Err(Violation::NotUtf8));
    }

    #[test]
    fn a_frame_over_the_limit_is_refused_from_its_header_alone() {
        let mut d = FrameDecoder::new(10, 1000);
        let frame = client_frame(true, TEXT, &[b'x'; 1001]);
        assert_eq!(
            decode_all(&mut d, &frame[..8]),
            Err(Violation::TooBig(1000))
        );
        // A message over the limit in fragments, too.
        let mut d = FrameDecoder::new(10, 1000);
        let input = [
            client_frame(false, TEXT, &[b'x'; 600]),
            client_frame(true, CONTINUATION, &[b'x'; 600]),
        ]
        .concat();
        assert_eq!(decode_all(&mut d, &input), Err(Violation::TooBig(1000)));
        // A huge declared length is not trusted with memory.
        let mut d = FrameDecoder::new(10, 1000);
        let mut huge = vec![FIN | TEXT, MASKED | 127];
        huge.extend_from_slice(&u64::MAX.to_be_bytes());
        assert_eq!(decode_all(&mut d, &huge), Err(Violation::TooBig(1000)));
    }

    #[test]
    fn unmasking_by_words_matches_by_bytes() {
        let mask = 0x1234_5678u32;
        for len in 0..40 {
            let original: Vec<u8> = (0..len as u8).collect();
            let mut fast = original.clone();
            unmask(&mut fast, mask);
            let key = mask.to_be_bytes();
            let slow: Vec<u8> = original
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ key[i % 4])
                .collect();
            assert_eq!(fast, slow);
        }
    }

    #[test]
    fn lines_are_framed_one_text_frame_each() {
        let long = "y".repeat(300);
        let framed = frame_lines(format!("MSG a\n\n{long}\nlast").as_bytes());
        let mut expected = vec![FIN | TEXT, 5];
        expected.extend_from_slice(b"MSG a");
        expected.extend_from_slice(&[FIN | TEXT, 0]);
        expected.extend_from_slice(&[FIN | TEXT, 126, 1, 44]);
        expected.extend_from_slice(long.as_bytes());
        expected.extend_from_slice(&[FIN | TEXT, 4]);
        expected.extend_from_slice(b"last");
        assert_eq!(&framed[..], &expected[..]);
        let longest = frame_lines(&[b'z'; 70_000]);
        assert_eq!(
            &longest[..10],
            &[FIN | TEXT, 127, 0, 0, 0, 0, 0, 1, 0x11, 0x70]
        );
        for len in [0, 125, 126, 0xFFFF, 0x10000] {
            let line = [vec![b'a'; len], b"\n".to_vec()].concat();
            assert_eq!(frame_lines(&line).len(), header_len(len) + len, "{len}");
        }
        assert_eq!(
            &frame_lines(b"\xffx\n")[..],
            &[FIN | TEXT, 4, 0xef, 0xbf, 0xbd, b'x']
        );
    }

    #[test]
    fn control_frames_out() {
        assert_eq!(&pong(b"hi")[..], &[FIN | PONG, 2, b'h', b'i']);
        assert_eq!(&close(1000, b"")[..], &[FIN | CLOSE, 2, 0x03, 0xe8]);
        let reason = "é".repeat(100);
        let frame = close(1001, reason.as_bytes());
        assert_eq!(frame.len(), 2 + 2 + 122);
        assert!(std::str::from_utf8(&frame[4..]).is_ok());
    }
}
