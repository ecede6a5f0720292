//! `ROOMS` and `WHO` replies, listed a slice at a time as the client reads them.
//!
//! A server with 60,000 rooms (or a room with 10,000 members) would otherwise format the
//! whole reply at once for every client that asks, whether or not it reads. A [`Listing`]
//! keeps only where it got to (the last name listed): the session's loop asks it for the
//! next slice while the connection's output has room, as it pulls history pages, and each
//! slice is read afresh from the registry after that name.

use std::collections::HashSet;
use std::sync::Arc;

use bytes::BytesMut;

use crate::protocol::{self, ProtocolError};
use crate::rooms::Rooms;

use super::replay::ForwardReplay;
use super::Session;

/// Names per slice: a slice of room lines is at most about 20 KiB.
pub(super) const SLICE: usize = 256;

/// A `ROOMS` or `WHO` reply in progress.
pub(super) struct Listing {
    of: Of,
    /// The last name listed.
    after: Option<Arc<str>>,
    /// Lines still allowed (`ROOMS ... LIMIT n`).
    left: usize,
    /// Lines listed so far.
    count: usize,
}

enum Of {
    Rooms,
    Members(Arc<str>),
}

/// What the next slice is made of, as read from the registry: the session leaves out of
/// `Rooms` those private to it (asked of the store) before they are listed.
pub(super) enum Candidates {
    Rooms(Vec<(Arc<str>, usize)>),
    Members(Vec<Arc<str>>),
}

impl Candidates {
    /// The rooms whose privacy matters (none for a member list: `WHO` checked its room).
    pub fn rooms(&self) -> Vec<Arc<str>> {
        match self {
            Candidates::Rooms(rooms) => rooms.iter().map(|(room, _)| room.clone()).collect(),
            Candidates::Members(_) => Vec::new(),
        }
    }
}

/// One slice of a listing: its lines, and whether the reply is now complete (its `OK` line
/// included).
pub(super) struct Slice {
    pub lines: BytesMut,
    pub done: bool,
}

impl Listing {
    /// `ROOMS [AFTER <room>] [LIMIT <n>]`.
    pub fn rooms(after: Option<String>, limit: Option<usize>) -> Listing {
        Listing {
            of: Of::Rooms,
            after: after.map(Arc::from),
            left: limit.unwrap_or(usize::MAX),
            count: 0,
        }
    }

    /// `WHO <room>`.
    pub fn members(room: Arc<str>) -> Listing {
        Listing {
            of: Of::Members(room),
            after: None,
            left: usize::MAX,
            count: 0,
        }
    }

    /// The next slice, read from the registry now, hiding nothing (tests).
    #[cfg(test)]
    pub fn next_slice(&mut self, rooms: &Rooms) -> Slice {
        let candidates = self.candidates(rooms);
        self.take(candidates, &HashSet::new())
    }

    /// What the next slice is made of, read from the registry now: a slice's worth of rooms
    /// (some may be hidden), or of members.
    pub fn candidates(&self, rooms: &Rooms) -> Candidates {
        let after = self.after.as_deref();
        match &self.of {
            Of::Rooms => Candidates::Rooms(rooms.list_after(after, SLICE)),
            Of::Members(room) => {
                Candidates::Members(rooms.members_after(room, after, self.left.min(SLICE)))
            }
        }
    }

    /// The next slice from `candidates`, leaving out the rooms in `hidden`.
    pub fn take(&mut self, candidates: Candidates, hidden: &HashSet<String>) -> Slice {
        let mut lines = BytesMut::new();
        let (read, want, shown, last) = match (&self.of, candidates) {
            (Of::Rooms, Candidates::Rooms(slice)) => {
                let read = slice.len();
                let mut shown = 0;
                let mut last = None;
                for (room, members) in slice {
                    if shown == self.left {
                        break;
                    }
                    if !hidden.contains(&*room) {
                        lines.extend_from_slice(&protocol::line(&[
                            "ROOM",
                            &room,
                            &members.to_string(),
                        ]));
                        shown += 1;
                    }
                    last = Some(room);
                }
                (read, SLICE, shown, last)
            }
            (Of::Members(room), Candidates::Members(slice)) => {
                for nick in &slice {
                    lines.extend_from_slice(&protocol::line(&["MEMBER", room, nick]));
                }
                let want = self.left.min(SLICE);
                (slice.len(), want, slice.len(), slice.last().cloned())
            }
            _ => unreachable!("candidates of the listing's own kind"),
        };
        self.count += shown;
        self.left -= shown;
        if last.is_some() {
            self.after = last;
        }
        let done = read < want || self.left == 0;
        if done {
            lines.extend_from_slice(&self.end());
        }
        Slice { lines, done }
    }

    /// The reply's final line, counting what was listed.
    pub fn end(&self) -> bytes::Bytes {
        let count = self.count.to_string();
        match &self.of {
            Of::Rooms => protocol::line(&["OK", "ROOMS", &count]),
            Of::Members(room) => protocol::line(&["OK", "WHO", room, &count]),
        }
    }
}

impl Session {
    /// Starts a listing: its first slice now (most listings are one slice), the rest as the
    /// client reads.
    pub(super) async fn start_listing(
        &mut self,
        mut listing: Listing,
    ) -> Result<(), ProtocolError> {
        let candidates = listing.candidates(&self.hub.rooms);
        let hidden = self.hidden_rooms(&candidates.rooms()).await?;
        let slice = listing.take(candidates, &hidden);
        if !slice.lines.is_empty() {
            self.writer.push(slice.lines.freeze());
        }
        if !slice.done {
            self.forward = Some(Box::new(ForwardReplay::Listing(listing)));
        }
        Ok(())
    }

    /// Lists the next slice; true when the reply is complete (an `ERR` ends it if the store
    /// cannot say which rooms are private).
    pub(super) async fn next_listed(&mut self, listing: &mut Listing) -> bool {
        let candidates = listing.candidates(&self.hub.rooms);
        match self.hidden_rooms(&candidates.rooms()).await {
            Ok(hidden) => {
                let slice = listing.take(candidates, &hidden);
                if !slice.lines.is_empty() {
                    self.writer.push(slice.lines.freeze());
                }
                slice.done
            }
            Err(e) => {
                self.writer.push(protocol::error_line(&e));
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mailbox::{ConnHandle, Mailbox};

    fn text(slice: &Slice) -> Vec<String> {
        String::from_utf8(slice.lines.to_vec())
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn a_long_listing_comes_in_slices_and_ends_with_its_count() {
        let rooms = Rooms::new();
        let me = ConnHandle {
            id: 1,
            mailbox: Arc::new(Mailbox::new(1 << 20)),
        };
        let total = SLICE * 2 + 10;
        for i in 0..total {
            rooms.join(&format!("r{i:04}").into(), &"me".into(), &me);
        }
        let mut listing = Listing::rooms(None, None);
        let mut lines = Vec::new();
        let mut slices = 0;
        loop {
            let slice = listing.next_slice(&rooms);
            slices += 1;
            lines.extend(text(&slice));
            if slice.done {
                break;
            }
        }
        assert_eq!(slices, 3);
        assert_eq!(lines.len(), total + 1);
        assert_eq!(lines[0], "ROOM r0000 1");
        assert_eq!(lines[total - 1], format!("ROOM r{:04} 1", total - 1));
        assert_eq!(lines[total], format!("OK ROOMS {total}"));

        let mut limited = Listing::rooms(Some("r0009".into()), Some(3));
        let slice = limited.next_slice(&rooms);
        assert!(slice.done);
        assert_eq!(
            text(&slice),
            ["ROOM r0010 1", "ROOM r0011 1", "ROOM r0012 1", "OK ROOMS 3"]
        );
        let mut none = Listing::rooms(None, Some(0));
        assert_eq!(text(&none.next_slice(&rooms)), ["OK ROOMS 0"]);
        let mut who = Listing::members("r0001".into());
        assert_eq!(
            text(&who.next_slice(&rooms)),
            ["MEMBER r0001 me", "OK WHO r0001 1"]
        );
    }
}
