//! History on a connection: `JOIN`'s replay, `HISTORY`'s page, and the catch-up after a lag.
//!
//! `JOIN` subscribes first and replays second, so that replay and live traffic meet without
//! a gap: live messages up to the id in `OK JOIN` are then dropped by [`JoinedRooms`]. A
//! replay that may be long (`JOIN ... SINCE`, a catch-up) is a [`ForwardReplay`]: the
//! session's loop pulls its pages one at a time, only while the connection's output has room,
//! so however much history a client asks for, no more than about a page of it waits in
//! memory. While one is in progress the session reads no input and takes no room traffic:
//! its lines must come in order. (Long `ROOMS` and `WHO` replies are pulled the same way:
//! see [`listing`](super::listing).)
//!
//! What a page costs is bounded twice: a page holds at most [`Config::page_messages`]
//! messages, which fit in `--outbound-limit` however long their lines; and at most
//! `--max-page-reads` pages are read and formatted at once, server-wide.
//!
//! Every store call here gives way to shutdown: the server does not wait for a slow or frozen
//! database to close a connection (the command gets `ERR SHUTTING_DOWN`, not done).
//!
//! [`JoinedRooms`]: super::joined::JoinedRooms
//! [`Config::page_messages`]: crate::config::Config::page_messages

use std::sync::Arc;

use bytes::BytesMut;
use tokio::sync::SemaphorePermit;

use crate::cluster::ledger::Slot;
use crate::protocol::{self, HistoryArgs, MessageId, MessageKind, ProtocolError, Replay};
use crate::store::{HistoryStore, Page, StoreError, StoredMessage};

use super::listing::Listing;
use super::store_call::StoreCallError;
use super::Session;

/// Reads a room's history forward from a cursor, a page at a time: the part that
/// `JOIN ... SINCE` and a lag's catch-up share.
pub(super) struct ForwardPager {
    room: Arc<str>,
    /// The last id read (or skipped).
    cursor: MessageId,
    limit: usize,
}

impl ForwardPager {
    pub fn new(room: Arc<str>, after: MessageId, limit: usize) -> ForwardPager {
        ForwardPager {
            room,
            cursor: after,
            limit: limit.max(1),
        }
    }

    /// The next page.
    pub async fn read(&self, store: &dyn HistoryStore) -> Result<Vec<StoredMessage>, StoreError> {
        let page = Page::Oldest {
            after: self.cursor,
            before: None,
            limit: self.limit,
        };
        store.page(&self.room, page).await
    }

    /// Moves past a page just read; true if it was the last (a short page).
    pub fn advance(&mut self, page: &[StoredMessage]) -> bool {
        if let Some(last) = page.last() {
            self.cursor = last.id;
        }
        page.len() < self.limit
    }

    /// Moves past ids that will never be read (the store let them go).
    pub fn skip_to(&mut self, id: MessageId) {
        self.cursor = self.cursor.max(id);
    }
}

/// A long reply in progress, pulled a page at a time: a forward replay of history and what
/// it is for, or a listing of rooms or members.
pub(super) enum ForwardReplay {
    History {
        pager: ForwardPager,
        purpose: Purpose,
    },
    Listing(Listing),
}

pub(super) enum Purpose {
    Join(JoinReplay),
    CatchUp(CatchUp),
}

/// `JOIN <room> SINCE <since>`: `HIST` lines, then `OK JOIN`.
pub(super) struct JoinReplay {
    since: MessageId,
    /// The room's newest id before the first page: a safe place to start live from if
    /// `since` is beyond the room's end (every later message reaches us live).
    newest_before: MessageId,
    replayed: usize,
    /// False for a re-join: a refusal must not take the member out of the room.
    newly_joined: bool,
}

impl JoinReplay {
    /// The id `OK JOIN` names when the replay has read up to `cursor`: the last id replayed;
    /// or, if nothing was, `since`, unless that is beyond the room's end (a reset store):
    /// then the real end, rather than hide the messages up to `since`.
    fn through(&self, cursor: MessageId) -> MessageId {
        if cursor > self.since {
            cursor
        } else {
            self.since.min(self.newest_before)
        }
    }
}

/// A lag's catch-up, room after room: `LAGGED` once the store answered, `MISSED` for ids
/// the store let go, then the gap as `MSG` lines.
pub(super) struct CatchUp {
    announced: bool,
    /// No `LAGGED` for any room: the lag was the server's.
    quietly: bool,
    rooms_left: std::vec::IntoIter<Arc<str>>,
}

impl Session {
    /// Replays history for a `JOIN` the rooms have taken, and answers it; a long replay
    /// (`SINCE`) is only begun here.
    pub(super) async fn replay_on_join(
        &mut self,
        room: Arc<str>,
        bound: Replay,
        newly_joined: bool,
    ) {
        let store = self.hub.store.clone();
        let max_page = self.hub.config.page_messages();
        let limit = match bound {
            Replay::Default => self.hub.config.history_on_join.min(max_page),
            Replay::Last(n) => n.min(max_page),
            Replay::None => {
                // A room already joined: its live feed goes on untouched, so everything after
                // what this connection was shown of it comes as MSG. That is the answer, and
                // no store call is needed: switching the current room (a client in several
                // rooms does before each SAY) costs nothing, even while the store is down.
                if let Some(shown) = self.joined.last_shown(&room).filter(|_| !newly_joined) {
                    return self.answer_join(room, 0, shown);
                }
                match self.until_shutdown(store.latest_id(&room)).await {
                    Ok(newest) => self.answer_join(room, 0, newest),
                    Err(e) => self.refuse_join(&room, newly_joined, &e),
                }
                return;
            }
            Replay::Since(since) => {
                // Read before the room's end: the store only ever lets go of more.
                let forgotten = store.forgotten_through(&room);
                match self.until_shutdown(store.latest_id(&room)).await {
                    Ok(newest_before) => {
                        // Ids after `since` that the store let go of: named, not skipped in
                        // silence. (Past the room's end, `since` is from a reset history.)
                        if forgotten > since && since < newest_before {
                            self.writer.push(protocol::line(&[
                                "MISSED",
                                &room,
                                &(since + 1).to_string(),
                                &forgotten.min(newest_before).to_string(),
                                "these messages were dropped from history before you could read them",
                            ]));
                        }
                        let pager = ForwardPager::new(room, since, max_page);
                        let purpose = Purpose::Join(JoinReplay {
                            since,
                            newest_before,
                            replayed: 0,
                            newly_joined,
                        });
                        self.forward = Some(Box::new(ForwardReplay::History { pager, purpose }));
                    }
                    Err(e) => self.refuse_join(&room, newly_joined, &e),
                }
                return;
            }
        };
        let page = Page::Newest {
            before: None,
            limit,
        };
        let hub = self.hub.clone();
        let _reading = page_read(&hub).await;
        let replayed = match self.until_shutdown(store.page(&room, page)).await {
            Ok(messages) => messages,
            Err(e) => return self.refuse_join(&room, newly_joined, &e),
        };
        let through = match replayed.last() {
            Some(m) => m.id,
            // LAST 0 asked for nothing: start after whatever the room holds now.
            None if limit == 0 => match self.until_shutdown(store.latest_id(&room)).await {
                Ok(newest) => newest,
                Err(e) => return self.refuse_join(&room, newly_joined, &e),
            },
            // The room was empty when read. Asking for its newest id now could name a
            // message stored since, which would then be neither replayed nor delivered.
            None => 0,
        };
        self.push_stored(&room, &replayed);
        self.answer_join(room, replayed.len(), through);
    }

    /// `OK JOIN <room> <replayed> <through>`: from here on the room's live messages are new.
    fn answer_join(&mut self, room: Arc<str>, replayed: usize, through: MessageId) {
        self.writer.push(protocol::line(&[
            "OK",
            "JOIN",
            &room,
            &replayed.to_string(),
            &through.to_string(),
        ]));
        self.joined.enter(room, through);
    }

    /// The store could not replay: the `JOIN` is refused, and undone if it was a first one.
    fn refuse_join(&mut self, room: &str, newly_joined: bool, e: &StoreCallError) {
        if newly_joined {
            self.hub.rooms.leave(room, self.conn.id);
            if let Some(cluster) = &self.hub.cluster {
                cluster.set(self.conn.id, Slot::Room(room.into()), None);
            }
        }
        self.writer.push(e.line());
    }

    /// The room a forward replay is joining, if it is a `JOIN`'s.
    pub(super) fn room_being_joined(&self) -> Option<&Arc<str>> {
        match self.forward.as_deref()? {
            ForwardReplay::History {
                pager,
                purpose: Purpose::Join(_),
            } => Some(&pager.room),
            _ => None,
        }
    }

    /// Writes the next page of the long reply in progress, and ends it after the last.
    pub(super) async fn forward_next_page(&mut self) {
        let Some(mut forward) = self.forward.take() else {
            return;
        };
        let done = match &mut *forward {
            ForwardReplay::History {
                pager,
                purpose: Purpose::Join(join),
            } => self.join_page(pager, join).await,
            ForwardReplay::History {
                pager,
                purpose: Purpose::CatchUp(catch_up),
            } => self.catch_up_page(pager, catch_up).await,
            ForwardReplay::Listing(listing) => self.next_listed(listing).await,
        };
        if !done {
            self.forward = Some(forward);
        }
    }

    /// Ends a long reply early (the connection is closing): a `JOIN` is answered with what
    /// was replayed so far, a listing with what was listed, as every command read is answered.
    pub(super) fn end_forward_replay(&mut self) {
        let Some(forward) = self.forward.take() else {
            return;
        };
        match &*forward {
            ForwardReplay::History {
                pager,
                purpose: Purpose::Join(join),
            } => {
                let through = join.through(pager.cursor);
                self.answer_join(pager.room.clone(), join.replayed, through);
            }
            ForwardReplay::History { .. } => {}
            ForwardReplay::Listing(listing) => self.writer.push(listing.end()),
        }
    }

    /// One page of `JOIN ... SINCE`. True when the join is answered.
    async fn join_page(&mut self, pager: &mut ForwardPager, join: &mut JoinReplay) -> bool {
        let hub = self.hub.clone();
        let _reading = page_read(&hub).await;
        let messages = match self.until_shutdown(pager.read(&*hub.store)).await {
            Ok(messages) => messages,
            // Kept: closing answers the JOIN with what was replayed so far.
            Err(StoreCallError::ShuttingDown) => return false,
            Err(e) => {
                self.refuse_join(&pager.room, join.newly_joined, &e);
                return true;
            }
        };
        self.push_stored(&pager.room, &messages);
        join.replayed += messages.len();
        let last_page = pager.advance(&messages);
        if last_page {
            let through = join.through(pager.cursor);
            self.answer_join(pager.room.clone(), join.replayed, through);
        }
        last_page
    }

    /// Begins catching up what a lag made the client miss, room by room. Live traffic is
    /// queued again meanwhile; what the catch-up shows is dropped from it by `last_shown`.
    /// Quietly (no `LAGGED`) when the lag was the server's, not the client's.
    pub(super) async fn start_catch_up(&mut self, rooms: Vec<Arc<str>>, quietly: bool) {
        tracing::debug!(
            conn = self.conn.id,
            rooms = rooms.len(),
            "catching up after a lag"
        );
        crate::telemetry::metrics().catch_ups.increment(1);
        // Our own messages in the gap are known by their acks: take them all first.
        self.settle_acks().await;
        let mut rooms_left = rooms.into_iter();
        if let Some(pager) = self.next_room_to_catch_up(&mut rooms_left) {
            let purpose = Purpose::CatchUp(CatchUp {
                announced: quietly,
                quietly,
                rooms_left,
            });
            self.forward = Some(Box::new(ForwardReplay::History { pager, purpose }));
        }
    }

    /// The pager for the next of `rooms` that the connection is still in.
    fn next_room_to_catch_up(
        &self,
        rooms: &mut std::vec::IntoIter<Arc<str>>,
    ) -> Option<ForwardPager> {
        let limit = self.hub.config.page_messages();
        rooms.find_map(|room| {
            let shown = self.joined.last_shown(&room)?;
            Some(ForwardPager::new(room, shown, limit))
        })
    }

    /// One page of a catch-up. True when every room is caught up, or the store refused (the
    /// rest is then retried later).
    async fn catch_up_page(&mut self, pager: &mut ForwardPager, catch_up: &mut CatchUp) -> bool {
        let hub = self.hub.clone();
        let store = &hub.store;
        let CatchUp {
            announced,
            quietly,
            rooms_left,
        } = catch_up;
        let room = pager.room.clone();
        let _reading = page_read(&hub).await;
        // Read before the page: the store only ever lets go of more.
        let forgotten = store.forgotten_through(&room);
        let messages = match self.until_shutdown(pager.read(&**store)).await {
            Ok(messages) => messages,
            // The connection closes; its catch-up ends with it.
            Err(StoreCallError::ShuttingDown) => return true,
            Err(StoreCallError::Store(e)) => {
                tracing::warn!(conn = self.conn.id, error = %e, "catch-up after a lag deferred");
                let mut left = vec![room];
                left.extend(rooms_left);
                if *quietly {
                    // Still the server's lag, not the client's: retried without LAGGED.
                    self.conn.mailbox.catch_up_quietly(left);
                } else {
                    self.conn.mailbox.defer_catch_up(left);
                }
                self.watch_stall()
                    .retry_catch_up(tokio::time::Instant::now());
                return true;
            }
        };
        if !std::mem::replace(announced, true) {
            // Only once the store answered: a failed attempt is retried, not announced.
            self.writer.push(protocol::line(&[
                "LAGGED",
                &room,
                &pager.cursor.to_string(),
                "you fell behind: the messages after this id follow, then live ones; JOINED, LEFT and NICK lines were skipped",
            ]));
        }
        // Ids between the cursor and the first message kept are gone. (With an empty page,
        // only as far as the store said before the read: ids stored since arrive live.)
        let missed_to = match messages.first() {
            Some(first) => store.forgotten_through(&room).min(first.id - 1),
            None => forgotten,
        };
        if missed_to > pager.cursor {
            self.writer.push(protocol::line(&[
                "MISSED",
                &room,
                &(pager.cursor + 1).to_string(),
                &missed_to.to_string(),
                "these messages were dropped from history before you could read them",
            ]));
            pager.skip_to(missed_to);
        }
        let others = messages.iter().filter(|m| !self.joined.is_own(&room, m.id));
        let lines = format_messages(MessageKind::Live, &room, others);
        if !lines.is_empty() {
            self.writer.push(lines.freeze());
        }
        let last_page = pager.advance(&messages);
        self.joined.shown_through(&room, pager.cursor);
        if !last_page {
            return false;
        }
        match self.next_room_to_catch_up(rooms_left) {
            Some(next) => {
                *pager = next;
                *announced = *quietly;
                false
            }
            None => true,
        }
    }

    /// `HISTORY <room> ...`: one page, oldest first, then `OK HISTORY <room> <count>`.
    pub(super) async fn history(
        &mut self,
        room: String,
        args: HistoryArgs,
    ) -> Result<(), ProtocolError> {
        self.require_account()?;
        self.check_entry(&room).await?;
        let limit = args
            .limit
            .unwrap_or(self.hub.config.history_on_join)
            .min(self.hub.config.page_messages());
        let page = match args.after {
            Some(after) => Page::Oldest {
                after,
                before: args.before,
                limit,
            },
            None => Page::Newest {
                before: args.before,
                limit,
            },
        };
        let hub = self.hub.clone();
        let _reading = page_read(&hub).await;
        match self.until_shutdown(hub.store.page(&room, page)).await {
            Ok(messages) => {
                self.push_stored(&room, &messages);
                self.writer.push(protocol::line(&[
                    "OK",
                    "HISTORY",
                    &room,
                    &messages.len().to_string(),
                ]));
            }
            Err(e) => self.writer.push(e.line()),
        }
        Ok(())
    }

    /// Replayed messages, as `HIST` lines.
    fn push_stored(&mut self, room: &str, messages: &[StoredMessage]) {
        if !messages.is_empty() {
            let lines = format_messages(MessageKind::Stored, room, messages.iter());
            self.writer.push(lines.freeze());
        }
    }
}

/// A place among the page reads allowed at once (`--max-page-reads`), held while the page is
/// read and formatted.
async fn page_read(hub: &crate::hub::Hub) -> SemaphorePermit<'_> {
    hub.page_reads
        .acquire()
        .await
        .expect("the page-read semaphore is never closed")
}

/// A page's lines in one buffer: one allocation for the page, not one per line.
fn format_messages<'a>(
    kind: MessageKind,
    room: &str,
    messages: impl Iterator<Item = &'a StoredMessage> + Clone,
) -> BytesMut {
    let size: usize = messages
        .clone()
        .map(|m| 54 + room.len() + m.nick.len() + m.text.len())
        .sum();
    let mut out = BytesMut::with_capacity(size);
    for m in messages {
        let time = protocol::format_time(m.millis);
        protocol::write_message_line(&mut out, kind, room, m.id, &time, &m.nick, &m.text);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    /// Pages through everything after `after`; returns the pages' ids.
    async fn pages(store: &MemoryStore, after: MessageId, limit: usize) -> Vec<Vec<MessageId>> {
        let mut pager = ForwardPager::new("r".into(), after, limit);
        let mut out = Vec::new();
        loop {
            let page = pager.read(store).await.unwrap();
            out.push(page.iter().map(|m| m.id).collect());
            if pager.advance(&page) {
                return out;
            }
        }
    }

    #[tokio::test]
    async fn a_forward_pager_reads_everything_once_and_stops_at_a_short_page() {
        let store = MemoryStore::filled("r", 7, 100).await;
        assert_eq!(
            pages(&store, 0, 3).await,
            vec![vec![1, 2, 3], vec![4, 5, 6], vec![7]]
        );
        assert_eq!(
            pages(&store, 3, 2).await,
            vec![vec![4, 5], vec![6, 7], vec![]],
            "a full last page needs one more, empty, read"
        );
        assert_eq!(pages(&store, 7, 5).await, vec![Vec::<MessageId>::new()]);
    }

    #[test]
    fn a_join_since_names_what_it_replayed_or_the_rooms_real_end() {
        let join = |since, newest_before| JoinReplay {
            since,
            newest_before,
            replayed: 0,
            newly_joined: true,
        };
        assert_eq!(join(5, 20).through(12), 12, "replayed up to 12");
        assert_eq!(join(5, 20).through(5), 5, "nothing newer than 5");
        assert_eq!(
            join(5000, 7).through(5000),
            7,
            "a reset room: live from its real end"
        );
    }

    #[tokio::test]
    async fn skipping_moves_the_cursor_only_forward() {
        let store = MemoryStore::filled("r", 10, 4).await; // keeps 7..=10
        let mut pager = ForwardPager::new("r".into(), 2, 10);
        pager.skip_to(6);
        pager.skip_to(1);
        let page = pager.read(&store).await.unwrap();
        assert_eq!(page.first().map(|m| m.id), Some(7));
        assert!(pager.advance(&page));
        assert_eq!(pager.cursor, 10);
    }
}
