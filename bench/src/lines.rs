//! Reading a connection line by line: the loop the load and chat scenarios' readers share,
//! each with its own use for the lines.

use std::time::Instant;

use tokio::io::AsyncReadExt;
use tokio::sync::watch;

use crate::transport::ConnRead;

/// What a reader does with the lines of one connection.
pub trait Lines {
    /// The read buffer's first size (it doubles when a line does not fit): large for the
    /// floods, where each read should take much.
    const BUFFER: usize = 256 * 1024;
    /// One complete line (without its LF), read at `now` (nanoseconds since the epoch).
    fn line(&mut self, line: &[u8], now: u64);
    /// Every line of one read has been seen.
    fn end_of_read(&mut self, now: u64);
}

/// Reads one connection line by line until it closes or `stop` changes.
pub async fn read_lines<L: Lines>(
    mut read: ConnRead,
    leftover: Vec<u8>,
    epoch: Instant,
    mut stop: watch::Receiver<bool>,
    lines: &mut L,
) {
    let mut buf = vec![0u8; L::BUFFER.max(leftover.len() + 1)];
    buf[..leftover.len()].copy_from_slice(&leftover);
    let mut filled = leftover.len();
    loop {
        let n = tokio::select! {
            n = read.read(&mut buf[filled..]) => match n {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            },
            _ = stop.changed() => break,
        };
        let now = epoch.elapsed().as_nanos() as u64;
        filled += n;
        let mut start = 0;
        while let Some(len) = buf[start..filled].iter().position(|&b| b == b'\n') {
            lines.line(&buf[start..start + len], now);
            start += len + 1;
        }
        buf.copy_within(start..filled, 0);
        filled -= start;
        if filled == buf.len() {
            buf.resize(buf.len() * 2, 0);
        }
        lines.end_of_read(now);
    }
}
