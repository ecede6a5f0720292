//! `http::websocket::frames::FrameDecoder` on an arbitrary byte stream from a client, split
//! into arbitrary reads.
//!
//! Input layout: byte 0 picks the maximum line length (0 to 63; the message limit is four
//! times that plus 16), byte 1 seeds the read sizes, the rest is the stream. It is decoded the
//! way `LineReader` does it (after each read, `decode` until `None`), once split into reads
//! and once in a single read.
//!
//! Checks:
//! - no panic;
//! - every `Frame::Line` is at most the maximum length, holds no LF and is UTF-8;
//! - after `decode` returns `None`, no more than one frame's header and the message limit
//!   (or a control frame's 125 bytes) stay buffered: memory is bounded by the configuration,
//!   not by declared lengths;
//! - both splits give the same frames and end the same way (an error, the close, or more
//!   input wanted).
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use linechat::connection::Frame;
use linechat::http::websocket::frames::{FrameDecoder, Violation};

fuzz_target!(|data: &[u8]| {
    let [max_line, seed, stream @ ..] = data else {
        return;
    };
    let max_line = usize::from(max_line % 64);
    let max_message = 4 * max_line + 16;

    let mut rng = u32::from(*seed) | 0x100; // xorshift needs a non-zero state
    let mut reads = Vec::new();
    let mut rest = stream;
    while !rest.is_empty() {
        rng ^= rng << 13;
        rng ^= rng >> 17;
        rng ^= rng << 5;
        let n = (rng as usize % 24).min(rest.len());
        let (read, tail) = rest.split_at(n);
        reads.push(read);
        rest = tail;
        if reads.len() > 4 * stream.len() + 16 {
            reads.push(rest);
            break;
        }
    }

    let split = decode(&reads, max_line, max_message);
    let whole = decode(&[stream], max_line, max_message);
    assert_eq!(split, whole, "split into {reads:?}");
});

#[derive(Debug, PartialEq)]
enum Ending {
    Violation(Violation),
    Closed,
    MoreWanted,
}

fn decode(reads: &[&[u8]], max_line: usize, max_message: usize) -> (Vec<Frame>, Ending) {
    let mut decoder = FrameDecoder::new(max_line, max_message);
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    for read in reads {
        buf.extend_from_slice(read);
        loop {
            match decoder.decode(&mut buf) {
                Err(v) => return (frames, Ending::Violation(v)),
                Ok(Some(frame)) => {
                    if let Frame::Line(line) = &frame {
                        assert!(line.len() <= max_line, "{line:?} is over {max_line} bytes");
                        assert!(!line.contains(&b'\n'), "{line:?} holds an LF");
                        assert!(std::str::from_utf8(line).is_ok(), "{line:?} is not UTF-8");
                    }
                    frames.push(frame);
                }
                Ok(None) => break,
            }
        }
        if decoder.closed() {
            return (frames, Ending::Closed);
        }
        // A control frame may be up to 125 bytes whatever the message limit.
        assert!(
            buf.len() <= 14 + max_message.max(125),
            "{} bytes buffered with a limit of {max_message}",
            buf.len()
        );
    }
    (frames, Ending::MoreWanted)
}
