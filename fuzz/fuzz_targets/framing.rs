//! `codec::LineCodec` on an arbitrary byte stream, split into arbitrary reads.
//!
//! Input layout: byte 0 picks the maximum line length (0 to 31), byte 1 seeds the read sizes,
//! the rest is the stream. The stream is decoded the way `LineReader` does it (after each read,
//! `decode` until `None`; at the end, `decode_eof` until `None`), once split into reads and
//! once in a single read.
//!
//! Checks:
//! - no panic and no error;
//! - every `Frame::Line` is at most the maximum length and holds no LF;
//! - after `decode` returns `None`, less than one maximal line (plus CRLF) stays buffered;
//! - both splits give the same frames as a simple model: split at LF, drop one CR before it
//!   (or at the very end), too long -> `TooLong`, empty last piece -> nothing.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use linechat::connection::{Frame, LineCodec};
use tokio_util::codec::Decoder;

fuzz_target!(|data: &[u8]| {
    let [max_len, seed, stream @ ..] = data else {
        return;
    };
    let max_len = usize::from(max_len % 32);

    let mut rng = u32::from(*seed) | 0x100; // xorshift needs a non-zero state
    let mut reads = Vec::new();
    let mut rest = stream;
    while !rest.is_empty() {
        rng ^= rng << 13;
        rng ^= rng >> 17;
        rng ^= rng << 5;
        // Sizes around the limit, including empty reads.
        let n = (rng as usize % (max_len + 4)).min(rest.len());
        let (read, tail) = rest.split_at(n);
        reads.push(read);
        rest = tail;
        if reads.len() > 4 * stream.len() + 16 {
            reads.push(rest);
            break;
        }
    }

    let expected = model(stream, max_len);
    assert_eq!(decode(&reads, max_len), expected, "split into {reads:?}");
    assert_eq!(decode(&[stream], max_len), expected, "in one read");
});

fn decode(reads: &[&[u8]], max_len: usize) -> Vec<Frame> {
    let mut codec = LineCodec::new(max_len);
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let check = |frame: Frame, frames: &mut Vec<Frame>| {
        if let Frame::Line(line) = &frame {
            assert!(line.len() <= max_len, "{line:?} is over {max_len} bytes");
            assert!(!line.contains(&b'\n'), "{line:?} holds an LF");
        }
        frames.push(frame);
    };
    for read in reads {
        buf.extend_from_slice(read);
        while let Some(frame) = codec.decode(&mut buf).expect("decode") {
            check(frame, &mut frames);
        }
        assert!(
            buf.len() < max_len + 2,
            "{} bytes buffered with max {max_len}",
            buf.len()
        );
    }
    while let Some(frame) = codec.decode_eof(&mut buf).expect("decode_eof") {
        check(frame, &mut frames);
    }
    frames
}

fn model(stream: &[u8], max_len: usize) -> Vec<Frame> {
    let mut pieces: Vec<&[u8]> = stream.split(|&b| b == b'\n').collect();
    if pieces.last().is_some_and(|p| p.is_empty()) {
        pieces.pop();
    }
    pieces
        .into_iter()
        .map(|piece| {
            let line = piece.strip_suffix(b"\r").unwrap_or(piece);
            if line.len() > max_len {
                Frame::TooLong
            } else {
                Frame::Line(BytesMut::from(line))
            }
        })
        .collect()
}
