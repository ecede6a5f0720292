//! The members other servers have, room by room, as the directory's notifications tell them:
//! what `WHO` and `ROOMS` add to this server's own members, and where the `JOINED`, `LEFT`
//! and `NICK` lines for this server's members come from. Pure.
//!
//! Applying a change is idempotent (a join of a member already there, a leave of one not
//! there, say nothing), so the notifications that overlap the snapshot taken after
//! subscribing do no harm: each member's last change, applied in commit order, wins.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Bound;
use std::sync::Arc;

use bytes::Bytes;

use crate::protocol;

/// A member of a room on another server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteMember {
    /// Its server's origin.
    pub node: Arc<str>,
    /// Its connection on that server.
    pub conn: u64,
    pub room: Arc<str>,
    pub name: Arc<str>,
}

/// A change to a room's members on another server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Presence {
    pub member: RemoteMember,
    pub change: Change,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Joined,
    Left,
    /// It now goes by `member.name`.
    Renamed,
}

/// Who, on another server, is in a room: (node, conn) -> name.
type Members = HashMap<(Arc<str>, u64), Arc<str>>;

/// A line for a room's members here.
pub type Told = (Arc<str>, Bytes);

#[derive(Debug, Default)]
pub struct RemoteMembers {
    rooms: BTreeMap<Arc<str>, Members>,
}

impl RemoteMembers {
    /// Applies one change; returns the line this server's members of the room are told.
    pub fn apply(&mut self, p: &Presence) -> Option<Told> {
        let RemoteMember {
            node,
            conn,
            room,
            name,
        } = &p.member;
        let id = (node.clone(), *conn);
        let line = match p.change {
            Change::Joined | Change::Renamed => {
                let members = self.rooms.entry(room.clone()).or_default();
                match members.insert(id, name.clone()) {
                    None => protocol::line(&["JOINED", room, name]),
                    Some(old) if old == *name => return None,
                    Some(old) => protocol::line(&["NICK", room, &old, name]),
                }
            }
            Change::Left => {
                let members = self.rooms.get_mut(room)?;
                let old = members.remove(&id)?;
                if members.is_empty() {
                    self.rooms.remove(room);
                }
                protocol::line(&["LEFT", room, &old])
            }
        };
        Some((room.clone(), line))
    }

    /// Replaces everything with `all` (read after subscribing again): the lines that tell
    /// this server's members what changed meanwhile.
    pub fn replace(&mut self, all: Vec<RemoteMember>) -> Vec<Told> {
        let mut told = Vec::new();
        let now: HashSet<(Arc<str>, Arc<str>, u64)> = all
            .iter()
            .map(|m| (m.room.clone(), m.node.clone(), m.conn))
            .collect();
        let gone: Vec<RemoteMember> = self
            .rooms
            .iter()
            .flat_map(|(room, members)| {
                members.iter().map(|((node, conn), name)| RemoteMember {
                    node: node.clone(),
                    conn: *conn,
                    room: room.clone(),
                    name: name.clone(),
                })
            })
            .filter(|m| !now.contains(&(m.room.clone(), m.node.clone(), m.conn)))
            .collect();
        for member in gone {
            told.extend(self.apply(&Presence {
                member,
                change: Change::Left,
            }));
        }
        for member in all {
            told.extend(self.apply(&Presence {
                member,
                change: Change::Joined,
            }));
        }
        told
    }

    /// At most `max` of a room's names that sort after `after`, sorted.
    pub fn members_after(&self, room: &str, after: Option<&str>, max: usize) -> Vec<Arc<str>> {
        let Some(members) = self.rooms.get(room) else {
            return Vec::new();
        };
        let mut names: Vec<Arc<str>> = members
            .values()
            .filter(|n| after.is_none_or(|after| ***n > *after))
            .cloned()
            .collect();
        if names.len() > max {
            names.select_nth_unstable(max);
            names.truncate(max);
        }
        names.sort();
        names
    }

    /// At most `max` rooms that sort after `after`, with their member counts here.
    pub fn rooms_after(&self, after: Option<&str>, max: usize) -> Vec<(Arc<str>, usize)> {
        let from = match after {
            Some(after) => Bound::Excluded(after),
            None => Bound::Unbounded,
        };
        self.rooms
            .range::<str, _>((from, Bound::Unbounded))
            .take(max)
            .map(|(room, members)| (room.clone(), members.len()))
            .collect()
    }

    /// True if anyone on another server is in `room`.
    pub fn has(&self, room: &str) -> bool {
        self.rooms.contains_key(room)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(node: &str, conn: u64, room: &str, name: &str) -> RemoteMember {
        RemoteMember {
            node: node.into(),
            conn,
            room: room.into(),
            name: name.into(),
        }
    }

    fn said(told: Option<Told>) -> Option<String> {
        told.map(|(_, line)| String::from_utf8_lossy(&line).trim_end().to_owned())
    }

    fn change(m: RemoteMember, change: Change) -> Presence {
        Presence { member: m, change }
    }

    #[test]
    fn joins_renames_and_leaves_are_told_once() {
        let mut remote = RemoteMembers::default();
        let bob = member("n1", 7, "r", "bob");
        assert_eq!(
            said(remote.apply(&change(bob.clone(), Change::Joined))),
            Some("JOINED r bob".into())
        );
        assert_eq!(
            said(remote.apply(&change(bob.clone(), Change::Joined))),
            None
        );
        let robert = member("n1", 7, "r", "robert");
        assert_eq!(
            said(remote.apply(&change(robert.clone(), Change::Renamed))),
            Some("NICK r bob robert".into())
        );
        assert_eq!(
            remote.members_after("r", None, 10),
            ["robert".into()] as [Arc<str>; 1]
        );
        assert_eq!(
            said(remote.apply(&change(bob.clone(), Change::Left))),
            Some("LEFT r robert".into()),
            "the name it has now"
        );
        assert_eq!(said(remote.apply(&change(bob, Change::Left))), None);
        assert!(!remote.has("r"), "an empty room goes");
    }

    #[test]
    fn a_snapshot_tells_only_what_changed() {
        let mut remote = RemoteMembers::default();
        remote.apply(&change(member("n1", 1, "r", "ann"), Change::Joined));
        remote.apply(&change(member("n1", 2, "r", "ben"), Change::Joined));
        let told: Vec<String> = remote
            .replace(vec![
                member("n1", 2, "r", "ben"),
                member("n2", 1, "s", "cy"),
            ])
            .into_iter()
            .map(|t| said(Some(t)).unwrap())
            .collect();
        assert_eq!(told, ["LEFT r ann", "JOINED s cy"]);
        assert_eq!(
            remote.rooms_after(None, 10),
            vec![("r".into(), 1), ("s".into(), 1)]
        );
        assert_eq!(remote.rooms_after(Some("r"), 10), vec![("s".into(), 1)]);
    }

    #[test]
    fn members_are_listed_a_slice_at_a_time() {
        let mut remote = RemoteMembers::default();
        for (i, n) in ["d", "a", "c", "b"].iter().enumerate() {
            remote.apply(&change(member("n", i as u64, "r", n), Change::Joined));
        }
        let names = |v: Vec<Arc<str>>| v.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        assert_eq!(names(remote.members_after("r", None, 2)), ["a", "b"]);
        assert_eq!(names(remote.members_after("r", Some("b"), 5)), ["c", "d"]);
        assert!(remote.members_after("nowhere", None, 5).is_empty());
    }
}
