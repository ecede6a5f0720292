//! What the client remembers between runs: per server, nick and room, the last message id it
//! showed, so that the next start begins with what was said in between.

use std::collections::BTreeMap;
use std::path::PathBuf;

/// The state file: `$LINECHAT_CLIENT_STATE`, else `$XDG_DATA_HOME/linechat/client-state.json`,
/// else `~/.local/share/linechat/client-state.json`.
pub fn path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("LINECHAT_CLIENT_STATE") {
        return Some(PathBuf::from(p));
    }
    let data = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))?;
    Some(data.join("linechat").join("client-state.json"))
}

/// A resume point: the last id shown, and the server's history epoch it belongs to (`None`
/// when saved by a client, or from a server, that knew no epoch).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
enum Saved {
    /// As older clients wrote it: a bare id.
    Id(u64),
    WithEpoch {
        id: u64,
        epoch: String,
    },
}

impl Saved {
    fn new(id: u64, epoch: Option<&str>) -> Saved {
        match epoch {
            Some(epoch) => Saved::WithEpoch {
                id,
                epoch: epoch.to_string(),
            },
            None => Saved::Id(id),
        }
    }

    fn id(&self) -> u64 {
        match self {
            Saved::Id(id) | Saved::WithEpoch { id, .. } => *id,
        }
    }

    fn epoch(&self) -> Option<&str> {
        match self {
            Saved::Id(_) => None,
            Saved::WithEpoch { epoch, .. } => Some(epoch),
        }
    }
}

/// Resume points, keyed by "server nick room".
#[derive(Debug, Default)]
pub struct State {
    path: Option<PathBuf>,
    last_ids: BTreeMap<String, Saved>,
    dirty: bool,
}

fn key(server: &str, nick: &str, room: &str) -> String {
    format!("{server} {nick} {room}")
}

impl State {
    /// Loads the state file (an unreadable one counts as empty).
    pub fn load() -> State {
        let path = path();
        let last_ids = path
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .and_then(|text| serde_json::from_str(&text).ok())
            .unwrap_or_default();
        State {
            path,
            last_ids,
            dirty: false,
        }
    }

    /// The last id shown, and the history epoch it belongs to (if known).
    pub fn last_id(&self, server: &str, nick: &str, room: &str) -> Option<(u64, Option<String>)> {
        self.last_ids
            .get(&key(server, nick, room))
            .map(|s| (s.id(), s.epoch().map(str::to_string)))
    }

    /// Records that message `id` of `room` was shown, from the history of `epoch`. A resume
    /// point of another history is replaced, not compared with.
    pub fn shown(&mut self, server: &str, nick: &str, room: &str, id: u64, epoch: Option<&str>) {
        let key = key(server, nick, room);
        let same_history = self
            .last_ids
            .get(&key)
            .is_some_and(|s| epoch.is_none() || s.epoch() == epoch);
        if same_history && self.last_ids[&key].id() >= id {
            return;
        }
        let epoch = epoch.or_else(|| self.last_ids.get(&key).and_then(Saved::epoch));
        let saved = Saved::new(id, epoch.map(str::to_string).as_deref());
        self.last_ids.insert(key, saved);
        self.dirty = true;
    }

    /// Sets the last id shown (also lower: the server's history was reset), in the history of
    /// `epoch`.
    pub fn reset(&mut self, server: &str, nick: &str, room: &str, id: u64, epoch: Option<&str>) {
        self.last_ids
            .insert(key(server, nick, room), Saved::new(id, epoch));
        self.dirty = true;
    }

    /// Writes the file if anything changed (atomically: a temp file renamed into place).
    pub fn save(&mut self) {
        let Some(path) = &self.path else { return };
        if !self.dirty {
            return;
        }
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(&self.last_ids).unwrap_or_default();
        if std::fs::write(&tmp, text).is_ok() && std::fs::rename(&tmp, path).is_ok() {
            self.dirty = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resume_points_keep_their_epoch_and_read_the_old_format() {
        let mut state = State {
            last_ids: serde_json::from_str(r#"{"s a 4": 7}"#).unwrap(),
            ..State::default()
        };
        assert_eq!(state.last_id("s", "a", "4"), Some((7, None)));
        state.shown("s", "a", "4", 9, Some("e1"));
        assert_eq!(state.last_id("s", "a", "4"), Some((9, Some("e1".into()))));
        // Same history: only forward.
        state.shown("s", "a", "4", 3, Some("e1"));
        assert_eq!(state.last_id("s", "a", "4"), Some((9, Some("e1".into()))));
        // Another history: replaced, even by a lower id.
        state.shown("s", "a", "4", 2, Some("e2"));
        assert_eq!(state.last_id("s", "a", "4"), Some((2, Some("e2".into()))));
        let text = serde_json::to_string(&state.last_ids).unwrap();
        assert_eq!(text, r#"{"s a 4":{"id":2,"epoch":"e2"}}"#);
        let back: BTreeMap<String, Saved> = serde_json::from_str(&text).unwrap();
        assert_eq!(back, state.last_ids);
    }
}
