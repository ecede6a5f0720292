//! IRC (issue 15's peer, InspIRCd 3): a client registers (`NICK`, `USER`, welcome 001) and
//! JOINs `#room`; a sender says `PRIVMSG #room :<payload>`. IRC servers never echo a
//! PRIVMSG to its sender, as linechat does not, and acknowledge nothing (as NATS).
//! bench/inspircd.conf lifts InspIRCd's flood and connection limits for the bench.

use anyhow::{bail, Result};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use super::Event;
use crate::transport::Conn;

/// Registers as `name`, joins `rooms` (as channels `#room`) and waits for the end of each
/// one's names list (366), answering the server's PINGs meanwhile.
pub async fn register(
    stream: &mut BufReader<Conn>,
    name: &str,
    rooms: &[impl AsRef<str>],
) -> Result<()> {
    let hello = format!("NICK {name}\r\nUSER {name} 0 * :{name}\r\n");
    stream.get_mut().write_all(hello.as_bytes()).await?;
    stream.get_mut().flush().await?;
    expect_numeric(stream, "001").await?;
    let mut join = String::new();
    for room in rooms {
        join.push_str(&format!("JOIN #{}\r\n", room.as_ref()));
    }
    stream.get_mut().write_all(join.as_bytes()).await?;
    stream.get_mut().flush().await?;
    for _ in rooms {
        expect_numeric(stream, "366").await?;
    }
    Ok(())
}

/// Reads until a line whose command is `numeric`; fails on an error numeric (but 422, no
/// message of the day) or an `ERROR` (the server closing the link).
async fn expect_numeric(stream: &mut BufReader<Conn>, numeric: &str) -> Result<()> {
    loop {
        let mut line = String::new();
        if stream.read_line(&mut line).await? == 0 {
            bail!("closed while waiting for {numeric}");
        }
        let line = line.trim_end();
        if let Some(token) = line.strip_prefix("PING ") {
            stream
                .get_mut()
                .write_all(format!("PONG {token}\r\n").as_bytes())
                .await?;
            stream.get_mut().flush().await?;
            continue;
        }
        if line.starts_with("ERROR") {
            bail!("server said {line}");
        }
        let command = line.split(' ').nth(1).unwrap_or("");
        if command == numeric {
            return Ok(());
        }
        if command.len() == 3 && command.starts_with(['4', '5']) && command != "422" {
            bail!("server said {line}");
        }
    }
}

/// Appends `PRIVMSG #room :payload`. IRC limits a line to 512 bytes, so a payload over about
/// 450 may arrive cut short (still counted and timed by the stamp that opens it).
pub fn publish(room: &str, payload: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(format!("PRIVMSG #{room} :").as_bytes());
    out.extend_from_slice(payload);
    out.extend_from_slice(b"\r\n");
}

/// Parses one line (without its CR LF): `:nick!user@host PRIVMSG #room :<payload>` is a
/// delivery, `PING :<token>` wants an answer.
pub fn line(line: &[u8]) -> Event<'_> {
    if line.starts_with(b"PING ") {
        return Event::Ping;
    }
    let mut parts = line.splitn(3, |&b| b == b' ');
    let (Some(prefix), Some(b"PRIVMSG"), Some(params)) = (parts.next(), parts.next(), parts.next())
    else {
        return Event::Other;
    };
    if !prefix.starts_with(b":") {
        return Event::Other;
    }
    match params.windows(2).position(|w| w == b" :") {
        Some(i) => Event::Payload(&params[i + 2..]),
        None => Event::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_payloads_and_pings() {
        assert_eq!(
            line(b":b1_0!b1_0@127.0.0.1 PRIVMSG #bench0 :0000000000001234 s0 xx"),
            Event::Payload(b"0000000000001234 s0 xx")
        );
        assert_eq!(line(b"PING :bench.local"), Event::Ping);
        assert_eq!(line(b":b1_1!b1_1@127.0.0.1 JOIN :#bench0"), Event::Other);
        assert_eq!(
            line(b":bench.local 366 b1_0 #bench0 :End of /NAMES list."),
            Event::Other
        );
        assert_eq!(line(b":b1_0!b@h PRIVMSG #bench0 nocolon"), Event::Other);
    }

    #[test]
    fn publishes_a_privmsg() {
        let mut out = Vec::new();
        publish("bench0", b"12 x", &mut out);
        assert_eq!(out, b"PRIVMSG #bench0 :12 x\r\n");
    }
}
