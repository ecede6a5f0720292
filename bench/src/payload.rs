//! What a payload carries: the time it was sent (or due), so that every receiver can time
//! its delivery, and optionally a tag; and the histogram latencies go into.

use std::time::Instant;

use hdrhistogram::Histogram;

/// Digits of the send time (nanoseconds since the run's epoch) that open every payload.
pub const STAMP: usize = 16;

pub fn payload(epoch: Instant, size: usize) -> Vec<u8> {
    payload_at(epoch, Instant::now(), size)
}

/// A payload stamped with `at` (nanoseconds since `epoch`), padded to `size` bytes.
pub fn payload_at(epoch: Instant, at: Instant, size: usize) -> Vec<u8> {
    tagged_payload_at(epoch, at, "", size)
}

/// A payload stamped with `at`, then `tag` (after a space, if not empty), padded to `size`
/// bytes.
pub fn tagged_payload_at(epoch: Instant, at: Instant, tag: &str, size: usize) -> Vec<u8> {
    let ns = at.saturating_duration_since(epoch).as_nanos() as u64;
    let mut p = format!("{ns:0STAMP$}").into_bytes();
    if !tag.is_empty() {
        p.push(b' ');
        p.extend_from_slice(tag.as_bytes());
    }
    if size > p.len() + 1 {
        p.push(b' ');
        p.resize(size, b'x');
    }
    p
}

/// The send time (nanoseconds since the run's epoch) a payload starts with.
pub fn stamp(payload: &[u8]) -> Option<u64> {
    let digits = payload.get(..STAMP)?;
    let mut v: u64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        v = v * 10 + u64::from(d - b'0');
    }
    Some(v)
}

pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds")
}
