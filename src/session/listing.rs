//! `ROOMS` and `WHO` replies, listed a slice at a time as the client reads them.
//!
//! A server with 60,000 rooms (or a room with 10,000 members) would otherwise format the
//! whole reply at once for every client that asks, whether or not it reads. A [`Listing`]
//! keeps only where it got to (the last name listed): the session's loop asks it for the
//! next slice while the connection's output has room, as it pulls history pages, and each
//! slice is read afresh from the registry after that name.

use std::sync::Arc;

use bytes::BytesMut;

use crate::mailbox::ConnId;
use crate::protocol;
use crate::rooms::Rooms;

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
    /// As this connection may see them (private rooms only if it is in them).
    Rooms(ConnId),
    Members(Arc<str>),
}

/// One slice of a listing: its lines, and whether the reply is now complete (its `OK` line
/// included).
pub(super) struct Slice {
    pub lines: BytesMut,
    pub done: bool,
}

impl Listing {
    /// `ROOMS [AFTER <room>] [LIMIT <n>]`.
    pub fn rooms(viewer: ConnId, after: Option<String>, limit: Option<usize>) -> Listing {
        Listing {
            of: Of::Rooms(viewer),
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

    /// The next slice, read from the registry now.
    pub fn next_slice(&mut self, rooms: &Rooms) -> Slice {
        let want = self.left.min(SLICE);
        let after = self.after.as_deref();
        let mut lines = BytesMut::new();
        let got = match &self.of {
            Of::Rooms(viewer) => {
                let slice = rooms.list_for(Some(*viewer), after, want);
                for (room, members) in &slice {
                    lines.extend_from_slice(&protocol::line(&["ROOM", room, &members.to_string()]));
                }
                let last = slice.last().map(|(room, _)| room.clone());
                (slice.len(), last)
            }
            Of::Members(room) => {
                let slice = rooms.members_after(room, after, want);
                for nick in &slice {
                    lines.extend_from_slice(&protocol::line(&["MEMBER", room, nick]));
                }
                (slice.len(), slice.last().cloned())
            }
        };
        let (n, last) = got;
        self.count += n;
        self.left -= n;
        if last.is_some() {
            self.after = last;
        }
        let done = n < want || self.left == 0;
        if done {
            lines.extend_from_slice(&self.end());
        }
        Slice { lines, done }
    }

    /// The reply's final line, counting what was listed.
    pub fn end(&self) -> bytes::Bytes {
        let count = self.count.to_string();
        match &self.of {
            Of::Rooms(_) => protocol::line(&["OK", "ROOMS", &count]),
            Of::Members(room) => protocol::line(&["OK", "WHO", room, &count]),
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
        let mut listing = Listing::rooms(1, None, None);
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

        let mut limited = Listing::rooms(1, Some("r0009".into()), Some(3));
        let slice = limited.next_slice(&rooms);
        assert!(slice.done);
        assert_eq!(
            text(&slice),
            ["ROOM r0010 1", "ROOM r0011 1", "ROOM r0012 1", "OK ROOMS 3"]
        );
        let mut none = Listing::rooms(1, None, Some(0));
        assert_eq!(text(&none.next_slice(&rooms)), ["OK ROOMS 0"]);
        let mut who = Listing::members("r0001".into());
        assert_eq!(
            text(&who.next_slice(&rooms)),
            ["MEMBER r0001 me", "OK WHO r0001 1"]
        );
    }
}
