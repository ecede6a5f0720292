//! Redis pub/sub (issue 15's peer, Redis 7): every client's connection SUBSCRIBEs to its room.
//! A connection in subscribed mode may only (un)subscribe, ping, reset or quit, so a sender
//! PUBLISHes on a second, plain connection of its own, whose integer replies (the number of
//! subscribers reached) serve as acks for the sender's window, like linechat's `OK SAY`.
//! Redis delivers a message to every subscriber, its sender's subscription included; the
//! load run drops those echoes (see `Target::echoes`).

use anyhow::Result;
use tokio::io::{AsyncWriteExt, BufReader};

use super::{expect_line, Event};
use crate::transport::Conn;

/// Subscribes the connection to `rooms` and waits for Redis to confirm each.
pub async fn subscribe(stream: &mut BufReader<Conn>, rooms: &[impl AsRef<str>]) -> Result<()> {
    let mut args: Vec<&[u8]> = vec![b"SUBSCRIBE"];
    args.extend(rooms.iter().map(|r| r.as_ref().as_bytes()));
    let mut out = Vec::new();
    command(&args, &mut out);
    stream.get_mut().write_all(&out).await?;
    stream.get_mut().flush().await?;
    // Each confirmation, `*3 $9 subscribe $<n> <room> :<count>`, ends with its count.
    for _ in rooms {
        expect_line(stream, ":").await?;
    }
    Ok(())
}

/// Appends `PUBLISH room payload` as a RESP array (an inline command would split the
/// payload at its spaces).
pub fn publish(room: &str, payload: &[u8], out: &mut Vec<u8>) {
    command(&[b"PUBLISH", room.as_bytes(), payload], out);
}

fn command(args: &[&[u8]], out: &mut Vec<u8>) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
}

/// Where the parser is in a RESP stream read line by line: a push frame
/// `*3 $7 message $<n> <room> $<n> <payload>` spans seven lines.
#[derive(Default)]
pub struct Resp {
    /// Items still to come in the current array; 0 at the top level.
    left: u64,
    /// Position of the next item in the current array.
    item: u64,
    /// The next line is a bulk string's content (its `$<n>` header came last).
    bulk_next: bool,
    /// The current array is a `message` push.
    message: bool,
}

impl Resp {
    /// Parses one line (without its CR LF).
    pub fn line<'a>(&mut self, line: &'a [u8]) -> Event<'a> {
        if self.bulk_next {
            self.bulk_next = false;
            let item = self.next_item();
            if item == 0 {
                self.message = line == b"message";
            } else if item == 2 && self.message {
                return Event::Payload(line);
            }
            return Event::Other;
        }
        match line.first() {
            Some(b'*') => {
                self.left = std::str::from_utf8(&line[1..])
                    .ok()
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0);
                self.item = 0;
                self.message = false;
            }
            // A null bulk string has no content line.
            Some(b'$') if line == b"$-1" => {
                self.next_item();
            }
            Some(b'$') => self.bulk_next = true,
            // An integer outside any array answers a PUBLISH.
            Some(b':') if self.left == 0 => return Event::Ack,
            Some(b':') => {
                self.next_item();
            }
            _ => {}
        }
        Event::Other
    }

    /// Counts one item of the current array; returns its position.
    fn next_item(&mut self) -> u64 {
        self.left = self.left.saturating_sub(1);
        self.item += 1;
        self.item - 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(resp: &mut Resp, bytes: &'static [u8]) -> Vec<Event<'static>> {
        bytes
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| resp.line(l.strip_suffix(b"\r").unwrap_or(l)))
            .filter(|e| *e != Event::Other)
            .collect()
    }

    #[test]
    fn finds_payloads_and_publish_replies() {
        let mut r = Resp::default();
        // The confirmation of SUBSCRIBE ends with an integer inside its array: not an ack.
        assert!(lines(&mut r, b"*3\r\n$9\r\nsubscribe\r\n$4\r\nroom\r\n:1\r\n").is_empty());
        assert_eq!(
            lines(
                &mut r,
                b"*3\r\n$7\r\nmessage\r\n$4\r\nroom\r\n$7\r\nmessage\r\n\
                  *3\r\n$7\r\nmessage\r\n$4\r\nroom\r\n$11\r\n0000001 s0 x\r\n"
            ),
            vec![Event::Payload(b"message"), Event::Payload(b"0000001 s0 x")]
        );
        // Replies to PUBLISH on the sender's other connection.
        assert_eq!(
            lines(&mut r, b":49\r\n:0\r\n"),
            vec![Event::Ack, Event::Ack]
        );
        // Other pushes carry no payload, and a null bulk has no content line.
        assert!(lines(&mut r, b"*3\r\n$11\r\nunsubscribe\r\n$-1\r\n:0\r\n").is_empty());
        assert_eq!(lines(&mut r, b":1\r\n"), vec![Event::Ack]);
    }

    #[test]
    fn publishes_a_resp_array() {
        let mut out = Vec::new();
        publish("bench0", b"12 s0 x", &mut out);
        assert_eq!(
            out,
            b"*3\r\n$7\r\nPUBLISH\r\n$6\r\nbench0\r\n$7\r\n12 s0 x\r\n"
        );
    }
}
