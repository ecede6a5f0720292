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

/// Last ids shown, keyed by "server nick room".
#[derive(Debug, Default)]
pub struct State {
    path: Option<PathBuf>,
    last_ids: BTreeMap<String, u64>,
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

    pub fn last_id(&self, server: &str, nick: &str, room: &str) -> Option<u64> {
        self.last_ids.get(&key(server, nick, room)).copied()
    }

    /// Records that message `id` of `room` was shown.
    pub fn shown(&mut self, server: &str, nick: &str, room: &str, id: u64) {
        let entry = self.last_ids.entry(key(server, nick, room)).or_insert(0);
        if id > *entry {
            *entry = id;
            self.dirty = true;
        }
    }

    /// Sets the last id shown (also lower: the server's history was reset).
    pub fn reset(&mut self, server: &str, nick: &str, room: &str, id: u64) {
        self.last_ids.insert(key(server, nick, room), id);
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
