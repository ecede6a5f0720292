//! What the bench talks to: linechat's line protocol, or for comparison NATS's, Redis's
//! pub/sub or IRC (issue 15's peers). Each target knows its handshake, how to publish a
//! payload, and how to find payloads and acks in the bytes a connection receives.

mod irc;
mod redis;

use anyhow::{bail, Result};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::transport::{Conn, Transport};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// A linechat server.
    Linechat,
    /// A NATS server (core pub/sub), through a small SUB/PUB adapter.
    Nats,
    /// A Redis server (pub/sub): SUBSCRIBE, and PUBLISH on a second connection per sender.
    Redis,
    /// An IRC server (InspIRCd with bench/inspircd.conf): JOIN #room, PRIVMSG.
    Irc,
}

/// One thing found in the received stream.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// A delivered message's payload.
    Payload(&'a [u8]),
    /// The server acknowledged one published message (linechat's `OK SAY`).
    Ack,
    /// Something the bench must answer (NATS or IRC `PING`).
    Ping,
    /// Anything else (presence lines, `+OK`, ...).
    Other,
}

impl Target {
    /// Connects, names the connection `name` and subscribes it to each of `rooms` (linechat:
    /// `JOIN room NONE`, live traffic only; the last one is its current room). Returns the
    /// stream and any bytes already read past the handshake (presence lines of others
    /// joining).
    pub async fn connect(
        self,
        transport: &Transport,
        addr: &str,
        name: &str,
        rooms: &[String],
    ) -> Result<(Conn, Vec<u8>)> {
        let mut stream = BufReader::new(transport.connect(addr).await?);
        let mut line = String::new();
        // Redis and IRC servers wait for the client to speak first.
        if matches!(self, Target::Linechat | Target::Nats) {
            stream.read_line(&mut line).await?;
        }
        match self {
            Target::Linechat => {
                if !line.starts_with("HELLO") {
                    bail!("not a linechat server: {line:?}");
                }
                let mut hello = format!("NICK {name}\n");
                for room in rooms {
                    hello.push_str(&format!("JOIN {room} NONE\n"));
                }
                stream.get_mut().write_all(hello.as_bytes()).await?;
                // Over WebSocket the frames wait in tungstenite's buffer until a flush.
                stream.get_mut().flush().await?;
                expect_line(&mut stream, "OK NICK").await?;
                for _ in rooms {
                    expect_line(&mut stream, "OK JOIN").await?;
                }
            }
            Target::Nats => {
                if !line.starts_with("INFO") {
                    bail!("not a NATS server: {line:?}");
                }
                let mut hello = format!(
                    "CONNECT {{\"verbose\":false,\"pedantic\":false,\"echo\":false,\"name\":\"{name}\"}}\r\n"
                );
                for (sid, room) in rooms.iter().enumerate() {
                    hello.push_str(&format!("SUB {room} {}\r\n", sid + 1));
                }
                hello.push_str("PING\r\n");
                stream.get_mut().write_all(hello.as_bytes()).await?;
                expect_line(&mut stream, "PONG").await?;
            }
            Target::Redis => redis::subscribe(&mut stream, rooms).await?,
            Target::Irc => irc::register(&mut stream, name, rooms).await?,
        }
        let leftover = stream.buffer().to_vec();
        Ok((stream.into_inner(), leftover))
    }

    /// Appends one published message to `out`.
    pub fn publish(self, room: &str, payload: &[u8], out: &mut Vec<u8>) {
        match self {
            Target::Linechat => {
                out.extend_from_slice(b"SAY ");
                out.extend_from_slice(payload);
                out.push(b'\n');
            }
            Target::Nats => {
                out.extend_from_slice(format!("PUB {room} {}\r\n", payload.len()).as_bytes());
                out.extend_from_slice(payload);
                out.extend_from_slice(b"\r\n");
            }
            Target::Redis => redis::publish(room, payload, out),
            Target::Irc => irc::publish(room, payload, out),
        }
    }

    /// Appends what makes `room` the one the next `publish` goes to, if the connection's
    /// current room is another: linechat says in its current room, and a re-JOIN (with
    /// NONE: no replay; the live feed is untouched) makes a room current; NATS names the
    /// subject in every PUB.
    pub fn switch_room(self, room: &str, current: &mut String, out: &mut Vec<u8>) {
        if self == Target::Linechat && current != room {
            out.extend_from_slice(format!("JOIN {room} NONE\n").as_bytes());
            current.clear();
            current.push_str(room);
        }
    }

    /// True if this target acknowledges each published message (Redis: PUBLISH's reply).
    pub fn acks(self) -> bool {
        matches!(self, Target::Linechat | Target::Redis)
    }

    /// True if a sender's own messages come back to it (Redis delivers to every subscriber;
    /// linechat, NATS without echo and IRC do not).
    pub fn echoes(self) -> bool {
        self == Target::Redis
    }

    /// A second connection for a sender to publish on, for a target whose subscribed
    /// connections cannot (Redis), else None.
    pub async fn publisher(self, transport: &Transport, addr: &str) -> Result<Option<Conn>> {
        match self {
            Target::Redis => Ok(Some(transport.connect(addr).await?)),
            _ => Ok(None),
        }
    }
}

async fn expect_line(stream: &mut BufReader<Conn>, prefix: &str) -> Result<()> {
    loop {
        let mut line = String::new();
        if stream.read_line(&mut line).await? == 0 {
            bail!("closed while waiting for {prefix}");
        }
        if line.starts_with(prefix) {
            return Ok(());
        }
        // NATS and Redis errors start with "-".
        if line.starts_with("ERR") || line.starts_with('-') || line.starts_with("BYE") {
            bail!("server said {}", line.trim_end());
        }
    }
}

/// Splits received bytes into events. Keeps state across reads for NATS, whose payload comes
/// on the line after its `MSG` header, and for Redis, whose push frames span lines.
#[derive(Default)]
pub struct Parser {
    /// NATS: the next line is a payload.
    payload_next: bool,
    redis: redis::Resp,
}

impl Parser {
    /// Parses one complete line (without its LF).
    pub fn line<'a>(&mut self, target: Target, line: &'a [u8]) -> Event<'a> {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        match target {
            Target::Linechat => {
                if line.starts_with(b"MSG ") {
                    // MSG <room> <id> <time> <nick> <text>
                    let mut spaces = 0;
                    for (i, &b) in line.iter().enumerate() {
                        if b == b' ' {
                            spaces += 1;
                            if spaces == 5 {
                                return Event::Payload(&line[i + 1..]);
                            }
                        }
                    }
                    Event::Other
                } else if line.starts_with(b"OK SAY ") {
                    Event::Ack
                } else {
                    Event::Other
                }
            }
            Target::Nats => {
                if self.payload_next {
                    self.payload_next = false;
                    Event::Payload(line)
                } else if line.starts_with(b"MSG ") {
                    self.payload_next = true;
                    Event::Other
                } else if line == b"PING" {
                    Event::Ping
                } else {
                    Event::Other
                }
            }
            Target::Redis => self.redis.line(line),
            Target::Irc => irc::line(line),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_payloads_and_acks() {
        let mut p = Parser::default();
        let t = Target::Linechat;
        assert_eq!(
            p.line(
                t,
                b"MSG r 1 2026-11-24T08:00:00.000Z bob 0000000000001234 xx"
            ),
            Event::Payload(b"0000000000001234 xx")
        );
        assert_eq!(p.line(t, b"OK SAY 5 2026-11-24T08:00:00.000Z"), Event::Ack);
        assert_eq!(p.line(t, b"JOINED r x"), Event::Other);
        let t = Target::Nats;
        assert_eq!(p.line(t, b"MSG r 1 4\r"), Event::Other);
        assert_eq!(p.line(t, b"abcd\r"), Event::Payload(b"abcd"));
        assert_eq!(p.line(t, b"PING\r"), Event::Ping);
    }
}
