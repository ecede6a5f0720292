//! What every server sharing the database stored, as PostgreSQL notifies it (schema.sql's
//! migrations 5 and 7): at commit, in commit order, one notification per transaction (or a
//! few, for a large one) naming its origin (the storing connection's `application_name`,
//! which for linechat's own connections is its server's [`PgStore::origin`]) and, per room,
//! the first and last id it stored there and, when they fit, the messages themselves. On the
//! same connection, so in the same commit order: changes to the members of rooms (migration
//! 6, [`crate::cluster`]).

use futures::FutureExt;
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::AsyncMessage;

use super::*;
use crate::cluster::remote::{Change, Presence, RemoteMember};
use crate::store::{Event, Stored, Subscription};

/// The channels the triggers notify on: names no other login can know (schema.sql's
/// migration 7), or anyone could make the servers deliver what nobody stored.
const CHANNELS: &str = "SELECT messages, presence FROM notify_channels";
/// Notifications waiting for the subscriber; past that, the connection is not read (the
/// database keeps them meanwhile).
const BACKLOG: usize = 1024;

impl PgStore {
    /// Opens a connection of its own that listens for stored batches.
    pub(super) async fn open_subscription(&self) -> Result<Subscription, StoreError> {
        let (config, tls) = &self.listen;
        let connect = tokio::time::timeout(self.timeout, config.connect(tls.clone()));
        let (client, mut connection) = match connect.await {
            Ok(Ok(connected)) => connected,
            Ok(Err(e)) => return Err(unavailable(with_causes(&e))),
            Err(_) => return Err(unavailable("connecting to listen took too long")),
        };
        let (tx, rx) = mpsc::channel(BACKLOG);
        let (listening_tx, listening_rx) = oneshot::channel();
        tokio::spawn(async move {
            // The connection is driven here, by the task that owns its client, until it
            // breaks or the subscriber goes.
            let listen = async {
                let row = client.query_one(CHANNELS, &[]).await?;
                let (messages, presence): (String, String) = (row.try_get(0)?, row.try_get(1)?);
                // Names the migration made of letters, digits and `_`: anything else is not
                // put into a statement.
                let plain = |name: &str| {
                    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                };
                if !plain(&messages) || !plain(&presence) {
                    return Err(ListenError::Channels);
                }
                client
                    .batch_execute(&format!("LISTEN {messages}; LISTEN {presence}"))
                    .await?;
                Ok(presence)
            };
            let mut listen = std::pin::pin!(listen.fuse());
            let mut listening = Some(listening_tx);
            // Until it listens, no notification comes.
            let mut presence_channel = String::new();
            loop {
                tokio::select! {
                    done = &mut listen, if listening.is_some() => {
                        let done = done.map(|presence| presence_channel = presence);
                        let _ = listening.take().expect("once").send(done);
                    }
                    // The subscriber is gone (the server stops): so is the connection.
                    () = tx.closed() => return,
                    message = std::future::poll_fn(|cx| connection.poll_message(cx)) => {
                        match message {
                            Some(Ok(AsyncMessage::Notification(n))) => {
                                let event = if n.channel() == presence_channel {
                                    parse_presence(n.payload()).map(Event::Presence)
                                } else {
                                    parse(n.payload()).map(Event::Stored)
                                };
                                let Some(event) = event else {
                                    let payload = n.payload();
                                    tracing::warn!(payload = cut(payload, 200), "an unreadable notification");
                                    // A server's messages would be missed: listen again, and
                                    // catch up from the table. Anyone else's is ignored.
                                    if payload.starts_with(crate::store::SERVER_ORIGIN) {
                                        return;
                                    }
                                    continue;
                                };
                                if tx.send(event).await.is_err() {
                                    return;
                                }
                            }
                            Some(Ok(_)) => {}
                            Some(Err(e)) => {
                                tracing::warn!(error = %with_causes(&e), "the notification connection broke");
                                return;
                            }
                            None => return,
                        }
                    }
                }
            }
        });
        match tokio::time::timeout(self.timeout, listening_rx).await {
            Ok(Ok(Ok(()))) => Ok(Subscription {
                origin: self.origin.clone(),
                events: rx,
            }),
            Ok(Ok(Err(ListenError::Db(e)))) => Err(unavailable(with_causes(&e))),
            Ok(Ok(Err(ListenError::Channels))) => Err(unavailable(
                "the notification channels in notify_channels are not plain names",
            )),
            Ok(Err(_)) => Err(unavailable("the notification connection broke")),
            Err(_) => Err(unavailable("LISTEN took too long")),
        }
    }
}

impl PgStore {
    /// The messages of several notified ranges, in one round trip (`READ_RANGES`).
    pub(super) async fn read_notified(
        &self,
        ranges: &[(Arc<str>, MessageId, MessageId)],
        limit: usize,
    ) -> Result<Vec<Vec<StoredMessage>>, StoreError> {
        let rooms: Vec<&str> = ranges.iter().map(|(room, _, _)| &**room).collect();
        let firsts: Vec<i64> = ranges
            .iter()
            .map(|(_, first, _)| to_db_id(*first))
            .collect();
        let lasts: Vec<i64> = ranges.iter().map(|(_, _, last)| to_db_id(*last)).collect();
        let limit = limit as i64;
        self.with_timeout("reading history", async {
            let mut conn = self.connection().await?;
            let busy = Busy::new(&mut conn);
            let rows = busy
                .0
                .query(READ_RANGES, &[&rooms, &firsts, &lasts, &limit])
                .await
                .map_err(|e| self.failed(e))?;
            busy.done();
            let mut read = vec![Vec::new(); ranges.len()];
            let mut place = |row: &Row| {
                let i: i64 = row.try_get(0)?;
                read[(i - 1) as usize].push(history::stored_message(row, 1)?);
                Ok(())
            };
            for row in &rows {
                place(row).map_err(|e| self.unreadable(e))?;
            }
            Ok(read)
        })
        .await
    }
}

/// At most `bytes` of `s`, cut at a character's start (`str::floor_char_boundary` is newer
/// than the Rust this crate supports).
fn cut(s: &str, bytes: usize) -> &str {
    let mut end = bytes.min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Why listening did not begin.
#[derive(Debug, thiserror::Error)]
enum ListenError {
    #[error(transparent)]
    Db(#[from] tokio_postgres::Error),
    #[error("the channels' names are not plain")]
    Channels,
}

/// `<origin> (<room> <first> <last>)*` (migration 5), or with the messages carried (migration
/// 7): `<origin> + (<room> <first> <last> <count> (<id> <millis> <nick> <length> <text>)*)*`,
/// as the trigger writes them.
fn parse(payload: &str) -> Option<Stored> {
    let (origin, rest) = payload.split_once(' ').unwrap_or((payload, ""));
    let origin = origin.to_owned();
    if let Some(carried) = rest.strip_prefix("+ ") {
        let (rooms, carried) = parse_carried(carried)?;
        return Some(Stored {
            origin,
            rooms,
            carried: Some(carried),
        });
    }
    let mut words = rest.split(' ').filter(|w| !w.is_empty());
    let mut rooms = Vec::new();
    while let Some(room) = words.next() {
        let first = words.next()?.parse().ok()?;
        let last = words.next()?.parse().ok()?;
        rooms.push((Arc::from(room), first, last));
    }
    Some(Stored {
        origin,
        rooms,
        carried: None,
    })
}

/// The rooms and messages of a notification that carries them. Each room's messages must
/// be its `count`, in increasing id order from `first` to `last`; the text is exactly
/// `length` characters, whatever they are.
#[allow(clippy::type_complexity)]
fn parse_carried(
    mut rest: &str,
) -> Option<(
    Vec<(Arc<str>, MessageId, MessageId)>,
    Vec<Vec<StoredMessage>>,
)> {
    fn word<'a>(rest: &mut &'a str) -> Option<&'a str> {
        let (word, after) = rest.split_once(' ')?;
        *rest = after;
        Some(word)
    }
    fn number<T: std::str::FromStr>(rest: &mut &str) -> Option<T> {
        word(rest)?.parse().ok()
    }
    let (mut rooms, mut carried) = (Vec::new(), Vec::new());
    while !rest.is_empty() {
        let room: Arc<str> = word(&mut rest)?.into();
        let first: MessageId = number(&mut rest)?;
        let last: MessageId = number(&mut rest)?;
        // The count is the last word of a room without messages: none is ever sent.
        let count: usize = number(&mut rest)?;
        // Each message takes at least 10 bytes: a count past that is not to be believed.
        let mut messages = Vec::with_capacity(count.min(rest.len() / 10));
        let mut previous = None;
        for _ in 0..count {
            let id: MessageId = number(&mut rest)?;
            let millis = number(&mut rest)?;
            let nick = word(&mut rest)?.into();
            let length: usize = number(&mut rest)?;
            // Where its `length`th character ends: the payload's end counts as one.
            let end = rest
                .char_indices()
                .map(|(i, _)| i)
                .chain([rest.len()])
                .nth(length)?;
            let text = rest[..end].to_owned();
            // The text ends the payload or is followed by a space.
            rest = match &rest[end..] {
                "" => "",
                more => more.strip_prefix(' ')?,
            };
            if previous.is_some_and(|p| p >= id) || !(first..=last).contains(&id) {
                return None;
            }
            previous = Some(id);
            messages.push(StoredMessage {
                id,
                millis,
                nick,
                text,
            });
        }
        if messages.first().map(|m| m.id) != Some(first) || previous != Some(last) {
            return None;
        }
        rooms.push((room, first, last));
        carried.push(messages);
    }
    Some((rooms, carried))
}

/// `J|L <node> <conn> <room> <name>` or `N <node> <conn> <room> <old> <new>`, as the
/// presence trigger writes it.
fn parse_presence(payload: &str) -> Option<Presence> {
    let mut words = payload.split(' ');
    let change = match words.next()? {
        "J" => Change::Joined,
        "L" => Change::Left,
        "N" => Change::Renamed,
        _ => return None,
    };
    let node = words.next()?.into();
    let conn = words.next()?.parse().ok()?;
    let room = words.next()?.into();
    let mut name = words.next()?;
    if change == Change::Renamed {
        name = words.next()?;
    }
    if words.next().is_some() {
        return None;
    }
    let member = RemoteMember {
        node,
        conn,
        room,
        name: name.into(),
    };
    Some(Presence { member, change })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_notification_names_its_origin_and_each_rooms_ids() {
        assert_eq!(
            parse("linechat-00ff 4 10 12 lobby 11 11"),
            Some(Stored {
                origin: "linechat-00ff".into(),
                rooms: vec![("4".into(), 10, 12), ("lobby".into(), 11, 11)],
                carried: None,
            })
        );
        assert!(parse("linechat-00ff 4 1 1").unwrap().by_a_server());
        assert!(
            !parse("psql 4 1 1").unwrap().by_a_server(),
            "a bulk load: history only"
        );
        assert_eq!(parse("psql 4 10"), None);
        assert_eq!(parse("psql 4 x 12"), None);
    }

    #[test]
    fn a_logged_payload_is_cut_at_a_characters_start() {
        assert_eq!(cut("abc", 200), "abc");
        assert_eq!(cut("aé", 2), "a");
        assert_eq!(cut("aé", 3), "aé");
        assert_eq!(cut("", 0), "");
    }

    fn message(id: MessageId, millis: i64, nick: &str, text: &str) -> StoredMessage {
        StoredMessage {
            id,
            millis,
            nick: nick.into(),
            text: text.into(),
        }
    }

    #[test]
    fn a_notification_may_carry_its_messages_whatever_their_text() {
        // As the trigger writes it: every message's parts after a space, the text last.
        let payload = "linechat-00ff + 4 10 12 2 10 1700000000123 ann 5 a b   \
                       12 1700000000124 bob 3 één lobby 11 11 1 11 5 cy 0 ";
        assert_eq!(
            parse(payload),
            Some(Stored {
                origin: "linechat-00ff".into(),
                rooms: vec![("4".into(), 10, 12), ("lobby".into(), 11, 11)],
                carried: Some(vec![
                    vec![
                        message(10, 1700000000123, "ann", "a b  "),
                        message(12, 1700000000124, "bob", "één"),
                    ],
                    vec![message(11, 5, "cy", "")],
                ]),
            })
        );
        // A text that ends the payload; a text that looks like more messages.
        let fake = "x 4 99 1 y 1 z";
        let last = format!("s + r 7 7 1 7 0 n {} {fake}", fake.chars().count());
        let stored = parse(&last).unwrap();
        assert_eq!(
            stored.carried.unwrap(),
            vec![vec![message(7, 0, "n", fake)]]
        );
    }

    #[test]
    fn a_carried_notification_that_does_not_add_up_is_unreadable() {
        for bad in [
            "s + r 7 7 2 7 0 n 1 a",           // fewer messages than counted
            "s + r 7 8 1 7 0 n 1 a",           // the range ends past the last message
            "s + r 7 9 2 9 0 n 1 a 7 0 n 1 b", // ids out of order
            "s + r 7 7 1 7 0 n 3 ab",          // a text shorter than its length
            "s + r 7 7 1 7 0 n 1 abc",         // a text longer than its length
            "s + r 7 7 1 8 0 n 1 a",           // an id outside the range
            "s + r 7 7 99999999999 7 0 n 1 a", // a count past belief
            "s + r 7 7 0",                     // a room without messages
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_presence_notification_names_the_member_and_its_name_now() {
        let p = parse_presence("N linechat-01 7 lobby bob robert").unwrap();
        assert_eq!(p.change, Change::Renamed);
        assert_eq!(
            (
                &*p.member.node,
                p.member.conn,
                &*p.member.room,
                &*p.member.name
            ),
            ("linechat-01", 7, "lobby", "robert")
        );
        assert_eq!(
            parse_presence("J n 1 r ann").unwrap().change,
            Change::Joined
        );
        assert_eq!(parse_presence("L n 1 r ann").unwrap().change, Change::Left);
        assert_eq!(parse_presence("J n x r ann"), None);
        assert_eq!(parse_presence("J n 1 r"), None);
        assert_eq!(parse_presence("J n 1 r ann extra"), None);
        assert_eq!(parse_presence("X n 1 r ann"), None);
    }
}
