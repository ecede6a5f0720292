// linechat's browser page. One WebSocket to /ws on this page's own origin; every text frame
// is exactly one protocol line (PROTOCOL.md), with no newline, in each direction.
//
// Safety rule for this file: whatever came from the network or from a user is put in the
// page with textContent (or as a DOM attribute value), never with innerHTML.
"use strict";

const NICK_RE = /^[A-Za-z0-9_-]{1,32}$/;
const ROOM_RE = /^[A-Za-z0-9_.-]{1,64}$/;
// Characters that could act on the text around a message (bidi controls) or pose as a line
// end (U+2028/U+2029): shown as visible <U+XXXX> marks (PROTOCOL.md section 3).
const INVISIBLE_RE = /[\u061C\u200E\u200F\u202A-\u202E\u2066-\u2069\u2028\u2029]/;
// Control characters the server refuses in SAY text (BAD_TEXT); tab is allowed.
const CONTROL_RE = /[\u0000-\u0008\u000A-\u001F\u007F-\u009F]/g;
const BACKOFF_MIN_MS = 500;
const BACKOFF_MAX_MS = 10000;
const HEARTBEAT_MS = 25000;
// The server ends a connection whose frame is over 4 x --max-line and 64 KiB (PROTOCOL.md,
// WebSocket frames); longer text is refused here instead. Shorter text over --max-line gets
// ERR LINE_TOO_LONG, which is shown.
const MAX_FRAME_BYTES = 60000;

const $ = (id) => document.getElementById(id);

// ---------------------------------------------------------------------------------------
// State

const state = {
  ws: null,
  online: false,        // logged in on the current socket
  wanted: null,         // {nick, password}: kept to log in again after a reconnect
  nick: "",
  epoch: null,          // the history epoch of the HELLO our ids belong to
  everOnline: false,
  quitting: false,
  backoff: BACKOFF_MIN_MS,
  retryTimer: null,
  heartbeat: null,
  pingsOut: 0,
  pending: [],          // commands awaiting their final line, first in first out
  joinsInFlight: 0,
  serverRoom: null,     // the server's "current room", as far as answered replies tell
  rooms: new Map(),     // name -> room (see newRoom)
  active: null,         // the room shown
  sendChain: Promise.resolve(),
};

function newRoom(name) {
  const log = document.createElement("ol");
  log.className = "log";
  log.dataset.room = name;
  log.setAttribute("aria-live", "polite");
  log.hidden = true;
  const earlier = document.createElement("button");
  earlier.type = "button";
  earlier.className = "earlier quiet";
  earlier.textContent = "Show earlier messages";
  earlier.hidden = true;
  earlier.addEventListener("click", () => loadEarlier(name));
  const wrap = document.createElement("div");
  wrap.className = "log-wrap";
  wrap.hidden = true;
  wrap.append(earlier, log);
  $("logs").append(wrap);
  const room = {
    name,
    wrap,
    log,
    earlier,
    ids: new Set(),       // ids shown, for deduplication
    lastId: 0,            // largest id received from the room's feed (HIST, MSG, OK JOIN)
    unread: 0,
    members: new Set(),
    joined: false,
    tab: null,
    stick: true,          // the reader is at the newest message: keep it in view
    followPending: false,
  };
  wrap.addEventListener("scroll", () => {
    room.stick = wrap.scrollHeight - wrap.scrollTop - wrap.clientHeight < 40;
  }, { passive: true });
  return room;
}

// ---------------------------------------------------------------------------------------
// Connection

function wsUrl() {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}/ws`;
}

function connect() {
  clearTimeout(state.retryTimer);
  state.retryTimer = null;
  // Whatever a previous socket left unanswered is answered by nobody now.
  for (const p of state.pending.splice(0)) p.resolve(null);
  state.joinsInFlight = 0;
  state.serverRoom = null;
  setStatus("connecting", state.everOnline ? "Reconnecting…" : "Connecting…");
  const ws = new WebSocket(wsUrl());
  state.ws = ws;
  ws.onmessage = (event) => {
    if (ws === state.ws && typeof event.data === "string") onLine(event.data);
  };
  ws.onclose = () => {
    if (ws === state.ws) onClosed();
  };
}

/// Sends one protocol line as one frame. A line never holds a newline (callers make sure).
function sendLine(line) {
  if (state.ws && state.ws.readyState === WebSocket.OPEN) {
    state.ws.send(line);
    return true;
  }
  return false;
}

/// Sends a command whose final line (OK/ERR) is matched first in, first out; resolves with
/// that line, or with null if the connection ends first.
function command(line, info = {}) {
  return new Promise((resolve) => {
    if (!sendLine(line)) return resolve(null);
    const entry = { line, kind: line.split(" ")[0], hist: [], members: [], resolve, ...info };
    if (entry.kind === "JOIN") state.joinsInFlight += 1;
    state.pending.push(entry);
  });
}

function onClosed() {
  const wasOnline = state.online;
  state.ws = null;
  state.online = false;
  stopHeartbeat();
  failPending();
  for (const room of state.rooms.values()) {
    room.joined = false;
    room.members.clear();
  }
  renderMembers();
  setComposerEnabled(false);
  if (state.quitting) {
    setStatus("offline", "Left the chat");
    state.everOnline = false;
    removeAllRooms();
    showLogin();
    return;
  }
  if (!state.everOnline) {
    setStatus("offline", "Not connected");
    if (!state.loginError) showLoginError("Could not reach the server.");
    return;
  }
  if (wasOnline) noticeAll("Connection lost; reconnecting…");
  scheduleReconnect();
}

/// Commands that were never answered get null: a SAY among them may or may not have been
/// stored; if it was, the catch-up after the reconnect shows it (from the store, once).
function failPending() {
  const lostSays = state.pending.filter((p) => p.kind === "SAY").length;
  for (const p of state.pending.splice(0)) p.resolve(null);
  state.joinsInFlight = 0;
  state.serverRoom = null;
  if (lostSays > 0) {
    showError(`${lostSays} message(s) may not have been sent; anything the server stored ` +
      "will appear once reconnected.");
  }
}

function scheduleReconnect() {
  const delay = state.backoff * (0.8 + Math.random() * 0.4);
  state.backoff = Math.min(state.backoff * 2, BACKOFF_MAX_MS);
  setStatus("waiting", `Disconnected; retrying in ${Math.ceil(delay / 1000)} s`);
  state.retryTimer = setTimeout(connect, delay);
}

/// While online, a PING now and then finds a connection that died silently (a laptop lid,
/// a NAT timeout): no PONG by the next beat, and the socket is dropped and reopened.
function startHeartbeat() {
  stopHeartbeat();
  state.pingsOut = 0;
  state.heartbeat = setInterval(() => {
    if (state.pingsOut > 0) {
      state.ws && state.ws.close();
      return;
    }
    state.pingsOut += 1;
    sendLine("PING heartbeat");
  }, HEARTBEAT_MS);
}

function stopHeartbeat() {
  clearInterval(state.heartbeat);
  state.heartbeat = null;
}

// ---------------------------------------------------------------------------------------
// Lines from the server

/// Splits off the first `n` space-separated fields; the rest (the text) is kept verbatim.
function fields(line, n) {
  const out = [];
  let rest = line;
  for (let i = 0; i < n; i++) {
    const space = rest.indexOf(" ");
    if (space < 0) {
      out.push(rest);
      rest = "";
    } else {
      out.push(rest.slice(0, space));
      rest = rest.slice(space + 1);
    }
  }
  out.push(rest);
  return out;
}

const handlers = {
  HELLO: onHello,
  OK: onFinal,
  ERR: onFinal,
  HIST: onHist,
  MSG: onMsg,
  MEMBER: onMember,
  JOINED: onJoined,
  LEFT: onLeft,
  NICK: onNickChange,
  LAGGED: onLagged,
  MISSED: onMissed,
  PONG: () => { state.pingsOut = 0; },
  BYE: onBye,
};

function onLine(line) {
  const word = line.split(" ", 1)[0];
  const handler = handlers[word];
  if (handler) handler(line);
}

function onHello(line) {
  // HELLO linechat <version> [key=value ...] <free text>: an epoch tells whether the ids
  // we saved still name the same history (PROTOCOL.md section 8, History epochs).
  const words = line.split(" ").slice(3);
  let epoch = null;
  for (const w of words) {
    if (!w.includes("=")) break;
    if (w.startsWith("epoch=")) epoch = w.slice(6);
  }
  const saved = state.epoch;
  state.epoch = epoch;
  const historyChanged = saved !== null && epoch !== null && saved !== epoch;
  login(historyChanged);
}

async function login(historyChanged) {
  const { nick, password } = state.wanted;
  const reply = await command(password ? `NICK ${nick} ${password}` : `NICK ${nick}`);
  if (reply === null) return;
  if (reply.startsWith("ERR ")) return loginRefused(reply);
  state.nick = fields(reply, 2)[2] || nick; // the name as registered (its case)
  // The password stays in memory only, to log in again after a reconnect.
  $("password").value = "";
  state.online = true;
  state.backoff = BACKOFF_MIN_MS;
  setStatus("online", "Connected");
  startHeartbeat();
  showChat();
  if (!state.everOnline) {
    state.everOnline = true;
    const rooms = initialRooms();
    if (rooms.length === 0) showNoRoom();
    rooms.forEach((room, i) => joinRoom(room, i === 0));
  } else {
    rejoinAll(historyChanged);
  }
  setComposerEnabled(state.active !== null);
}

const TRANSIENT_NICK_ERRORS = ["NICK_IN_USE", "STORE_UNAVAILABLE", "SERVER_BUSY", "TOO_MANY_GUESSES"];

function loginRefused(reply) {
  const [, code, text] = fields(reply, 2);
  if (state.everOnline && TRANSIENT_NICK_ERRORS.includes(code)) {
    // Our previous connection may still hold the name for a moment: try again later.
    showError(`Could not log in again: ${text}`);
    state.ws.close();
    return;
  }
  state.loginError = true;
  state.everOnline = false;
  removeAllRooms();
  showLoginError(text || code);
  showLogin();
  state.ws.close();
}

function onFinal(line) {
  const entry = state.pending.shift();
  if (!entry) {
    // An ERR nobody asked for: SERVER_FULL instead of HELLO.
    showError(fields(line, 2)[2] || line);
    return;
  }
  if (entry.kind === "JOIN") {
    state.joinsInFlight -= 1;
    onJoinReply(entry, line);
  } else if (entry.kind === "SAY") {
    onSayReply(entry, line);
  } else if (entry.kind === "WHO") {
    onWhoReply(entry, line);
  } else if (entry.kind === "HISTORY") {
    onHistoryReply(entry, line);
  } else if (entry.kind === "PART") {
    onPartReply(entry, line);
  }
  entry.resolve(line);
}

function onHist(line) {
  // HIST lines only come inside a JOIN or HISTORY reply, never split by other lines.
  const entry = state.pending[0];
  if (entry) entry.hist.push(parseMessage(line));
}

function onMember(line) {
  const entry = state.pending[0];
  if (entry) entry.members.push(fields(line, 2)[2]);
}

function parseMessage(line) {
  const [, room, id, time, nick, text] = fields(line, 5);
  return { room, id: Number(id), time, nick, text };
}

function onMsg(line) {
  const m = parseMessage(line);
  const room = state.rooms.get(m.room);
  if (!room) return;
  if (m.id > room.lastId) room.lastId = m.id;
  if (addMessage(room, m) && room !== state.active) bumpUnread(room, 1);
}

function onJoined(line) {
  const [, roomName, nick] = fields(line, 2);
  const room = state.rooms.get(roomName);
  if (!room) return;
  room.members.add(nick);
  if (room === state.active) renderMembers();
}

function onLeft(line) {
  const [, roomName, nick] = fields(line, 2);
  const room = state.rooms.get(roomName);
  if (!room) return;
  room.members.delete(nick);
  if (room === state.active) renderMembers();
}

function onNickChange(line) {
  const [, roomName, old, renamed] = fields(line, 3);
  const room = state.rooms.get(roomName);
  if (!room) return;
  room.members.delete(old);
  room.members.add(renamed);
  addNotice(room, `${old} is now ${renamed}`);
  if (room === state.active) renderMembers();
}

function onLagged(line) {
  // The live feed broke off after <id>; the server now sends the gap from the store as MSG
  // lines, so nothing is lost: the user is only told.
  const [, roomName, id] = fields(line, 3);
  const room = state.rooms.get(roomName);
  if (room) addNotice(room, `This page fell behind after message ${id}; catching up from history.`);
}

function onMissed(line) {
  const [, roomName, first, last] = fields(line, 4);
  const room = state.rooms.get(roomName);
  if (room) {
    addNotice(room, `Messages ${first} to ${last} are no longer kept by the server and cannot be shown.`,
      "warning");
  }
}

function onBye(line) {
  const reason = line.slice(4);
  if (!state.quitting) showError(`The server closed the connection: ${reason}`);
}

// ---------------------------------------------------------------------------------------
// Rooms

/// Rooms named in the address (?room=4&room=5,6) and in the login form.
function initialRooms() {
  const names = [];
  const params = new URLSearchParams(location.search);
  const typed = $("login-rooms").value;
  for (const value of [...params.getAll("room"), typed]) {
    for (const part of value.split(",")) {
      const name = part.trim();
      if (name && !names.includes(name)) names.push(name);
    }
  }
  return names;
}

async function joinRoom(name, focus = true) {
  if (!ROOM_RE.test(name)) {
    showError(`"${name}" is not a room name: 1 to 64 letters, digits, "_", "-" or ".".`);
    return;
  }
  const known = state.rooms.get(name);
  if (known) return activate(known);
  const room = newRoom(name);
  state.rooms.set(name, room);
  renderTab(room);
  if (!state.active) activate(room);
  const reply = await command(`JOIN ${name}`, { room: name, first: true });
  if (focus && reply && reply.startsWith("OK ") && state.rooms.get(name) === room) {
    activate(room);
  }
}

function removeAllRooms() {
  for (const room of [...state.rooms.values()]) removeRoom(room);
}

/// After a reconnect: each room again, asking for exactly what came after the last id we
/// saw (SINCE), so there is no gap; ids already shown are skipped, so no duplicate.
function rejoinAll(historyChanged) {
  for (const room of state.rooms.values()) {
    if (historyChanged) {
      // Another history (a memory-store server restarted): our ids mean nothing there.
      clearLog(room);
      addNotice(room, "The server's history was reset; showing its recent messages anew.",
        "warning");
    }
    rejoin(room, historyChanged);
  }
}

/// `fresh`: the room's recent messages (a new history); otherwise all after the last seen.
function rejoin(room, fresh = false) {
  if (fresh) {
    command(`JOIN ${room.name}`, { room: room.name, rejoin: true });
  } else {
    command(`JOIN ${room.name} SINCE ${room.lastId}`,
      { room: room.name, rejoin: true, since: room.lastId });
  }
}

/// A failed re-join (the store not back yet, say) is tried again while the page is online.
function retryRejoin(room, fresh) {
  setTimeout(() => {
    if (state.online && !room.joined && state.rooms.get(room.name) === room) rejoin(room, fresh);
  }, 3000);
}

function clearLog(room) {
  room.lastId = 0;
  room.ids.clear();
  room.log.replaceChildren();
}

function firstId(room) {
  let first = Infinity;
  for (const id of room.ids) first = Math.min(first, id);
  return first;
}

function onJoinReply(entry, line) {
  const room = state.rooms.get(entry.room);
  if (!room) return;
  if (line.startsWith("ERR ")) {
    const [, code, text] = fields(line, 2);
    if (entry.bound === "NONE") return showError(text);
    addNotice(room, `Could not join ${room.name}: ${text}`, "warning");
    if (entry.first) removeRoom(room);
    else if (entry.rejoin && code === "STORE_UNAVAILABLE") retryRejoin(room, entry.since === undefined);
    showError(text);
    return;
  }
  // OK JOIN <room> <replayed> <last-id>
  const lastId = Number(fields(line, 4)[4]);
  state.serverRoom = room.name;
  if (entry.bound === "NONE") return; // only made the room current for a SAY; see sendSays
  room.joined = true;
  if (entry.since !== undefined && lastId < entry.since) {
    // A smaller <last-id> than we sent: the history was reset, and the ids we hold are stale.
    clearLog(room);
    addNotice(room, "The server's history was reset since this page last saw it.", "warning");
  }
  let added = 0;
  for (const m of entry.hist) if (addMessage(room, m)) added += 1;
  // Every message with a greater id now arrives live, exactly once (the replay/live seam).
  room.lastId = Math.max(room.lastId, lastId, maxId(entry.hist));
  if (!entry.rejoin) {
    probeEarlier(room);
  } else if (room !== state.active) {
    bumpUnread(room, added);
  }
  if (entry.rejoin) addNotice(room, catchUpText(added));
  command(`WHO ${room.name}`, { room: room.name });
}

function catchUpText(added) {
  if (added === 0) return "Reconnected; nothing was said meanwhile.";
  return `Reconnected; ${added} message${added === 1 ? "" : "s"} said meanwhile.`;
}

function maxId(messages) {
  return messages.reduce((max, m) => Math.max(max, m.id), 0);
}

function onWhoReply(entry, line) {
  const room = state.rooms.get(entry.room);
  if (!room || line.startsWith("ERR ")) return;
  room.members = new Set(entry.members);
  if (room === state.active) renderMembers();
}

/// Offers "Show earlier messages" only if there are some: one message before the first shown.
async function probeEarlier(room) {
  const first = firstId(room);
  if (!Number.isFinite(first)) return;
  const reply = await command(`HISTORY ${room.name} BEFORE ${first} LIMIT 1`,
    { room: room.name, probe: true });
  if (reply && reply.startsWith("OK ")) room.earlier.hidden = fields(reply, 3)[3] === "0";
}

async function loadEarlier(name) {
  const room = state.rooms.get(name);
  if (!room) return;
  const first = firstId(room);
  if (!Number.isFinite(first)) return;
  await command(`HISTORY ${name} BEFORE ${first} LIMIT 50`, { room: name });
}

function onHistoryReply(entry, line) {
  const room = state.rooms.get(entry.room);
  if (!room) return;
  if (entry.probe) return;
  if (line.startsWith("ERR ")) return showError(fields(line, 2)[2]);
  const height = room.log.scrollHeight;
  for (const m of entry.hist) addMessage(room, m, false);
  // Keep the message the reader was looking at in place.
  room.log.parentElement.scrollTop += room.log.scrollHeight - height;
  if (entry.hist.length < 50) room.earlier.hidden = true;
}

function partRoom(room) {
  if (room.joined) command(`PART ${room.name}`, { room: room.name });
  else removeRoom(room);
}

function onPartReply(entry, line) {
  const room = state.rooms.get(entry.room);
  if (line.startsWith("ERR ")) return showError(fields(line, 2)[2]);
  // The server's current room is now some other joined room: the next SAY re-selects.
  state.serverRoom = null;
  if (room) removeRoom(room);
}

function removeRoom(room) {
  state.rooms.delete(room.name);
  updateTitle();
  room.wrap.remove();
  if (room.tab) room.tab.remove();
  if (state.active === room) {
    state.active = null;
    const next = state.rooms.values().next().value;
    if (next) activate(next);
    else showNoRoom();
  }
}

// ---------------------------------------------------------------------------------------
// Sending

/// Text with newlines is sent as one SAY per non-blank line (a frame never carries a
/// newline, and each line the user wrote stays a line); other control characters, which the
/// server would refuse, become spaces.
function splitMessage(text) {
  return text
    .split(/\r\n|\r|\n/)
    .map((line) => line.replace(CONTROL_RE, " "))
    .filter((line) => line.trim() !== "");
}

function sendMessage() {
  const input = $("input");
  const room = state.active;
  if (!room) return;
  const lines = splitMessage(input.value);
  if (lines.length === 0) return;
  const encoder = new TextEncoder();
  if (lines.some((line) => encoder.encode(line).length > MAX_FRAME_BYTES)) {
    showError("That message is too long to send.");
    return;
  }
  if (!state.online || !room.joined) {
    showError("Not connected: the message is kept; send it once reconnected.");
    return;
  }
  input.value = "";
  autoGrow();
  state.sendChain = state.sendChain.then(() => sendSays(room, lines));
}

/// SAY goes to the server's *current* room (the room joined most recently). If that is not
/// the room shown, re-join it first with NONE (no replay, no JOINED broadcast, live feed
/// untouched), and only send once that is answered: a refused JOIN leaves the current room
/// as it was, and a pipelined SAY would then land in the wrong room.
async function sendSays(room, lines) {
  while (state.serverRoom !== room.name || state.joinsInFlight > 0) {
    const reply = await command(`JOIN ${room.name} NONE`, { room: room.name, bound: "NONE" });
    if (!reply || !reply.startsWith("OK ")) {
      restoreInput(lines);
      return;
    }
  }
  for (const text of lines) {
    command(`SAY ${text}`, { room: room.name, text });
  }
}

function restoreInput(lines) {
  const input = $("input");
  if (input.value === "") input.value = lines.join("\n");
}

function onSayReply(entry, line) {
  const room = state.rooms.get(entry.room);
  if (line.startsWith("ERR ")) {
    const text = fields(line, 2)[2];
    showError(`Not sent: ${text}`);
    if (room) addNotice(room, `Not sent (${text}): ${entry.text}`, "warning");
    return;
  }
  // OK SAY <id> <time>: the sender gets no MSG of its own. room.lastId is not moved here: a
  // MSG with a smaller id may still be on its way, and SINCE must not skip it.
  const [, , id, time] = fields(line, 3);
  if (room) addMessage(room, { room: room.name, id: Number(id), time, nick: state.nick, text: entry.text });
}

// ---------------------------------------------------------------------------------------
// Rendering

/// Adds a message in id order unless its id is shown already; returns whether it was added.
function addMessage(room, m, follow = true) {
  if (!Number.isFinite(m.id) || room.ids.has(m.id)) return false;
  room.ids.add(m.id);
  const item = messageElement(m);
  // Usually the newest: look from the end for the first message with a smaller id.
  let after = null;
  for (let el = room.log.lastElementChild; el; el = el.previousElementSibling) {
    if (el.classList.contains("message")) {
      if (Number(el.dataset.id) < m.id) break;
      after = el;
    }
  }
  room.log.insertBefore(item, after);
  if (follow && after === null && (room.stick || m.nick === state.nick)) followLater(room);
  return true;
}

/// Scrolls to the newest message once per frame at most: measuring the log after each of a
/// burst of messages (a catch-up) would lay the page out again for every one.
function followLater(room) {
  if (room.followPending) return;
  room.followPending = true;
  requestAnimationFrame(() => {
    room.followPending = false;
    room.wrap.scrollTop = room.wrap.scrollHeight;
  });
}

function messageElement(m) {
  const li = document.createElement("li");
  li.className = "message";
  if (m.nick === state.nick) li.classList.add("own");
  li.dataset.id = String(m.id);
  const time = document.createElement("time");
  time.className = "time";
  const date = new Date(m.time);
  time.dateTime = m.time;
  time.textContent = shortTime(date);
  time.title = date.toLocaleString();
  const nick = document.createElement("span");
  nick.className = "nick";
  nick.textContent = m.nick;
  nick.style.setProperty("--hue", String(hue(m.nick)));
  const text = document.createElement("span");
  text.className = "text";
  text.dir = "auto";
  appendVisibleText(text, m.text);
  li.append(time, nick, text);
  return li;
}

/// The local time of day; with the date too for a message from another day.
function shortTime(date) {
  const clock = date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  if (date.toDateString() === new Date().toDateString()) return clock;
  return `${date.toLocaleDateString([], { month: "short", day: "numeric" })} ${clock}`;
}

/// Puts `text` in `el` as text nodes; invisible controls become visible marks.
function appendVisibleText(el, text) {
  let rest = text;
  let match;
  while ((match = INVISIBLE_RE.exec(rest)) !== null) {
    if (match.index > 0) el.append(document.createTextNode(rest.slice(0, match.index)));
    const mark = document.createElement("span");
    mark.className = "ctl";
    const code = match[0].codePointAt(0).toString(16).toUpperCase().padStart(4, "0");
    mark.textContent = `<U+${code}>`;
    el.append(mark);
    rest = rest.slice(match.index + 1);
  }
  if (rest) el.append(document.createTextNode(rest));
}

/// A stable colour per nick, so a conversation is easy to follow.
function hue(nick) {
  let h = 0;
  for (const c of nick.toLowerCase()) h = (h * 31 + c.codePointAt(0)) % 360;
  return h;
}

function addNotice(room, text, kind = "info") {
  const li = document.createElement("li");
  li.className = `notice ${kind}`;
  li.textContent = text;
  room.log.append(li);
  followLater(room);
}

function noticeAll(text, kind) {
  for (const room of state.rooms.values()) addNotice(room, text, kind);
}

function renderTab(room) {
  const li = document.createElement("li");
  li.className = "tab";
  li.dataset.room = room.name;
  li.setAttribute("role", "presentation");
  const open = document.createElement("button");
  open.type = "button";
  open.className = "tab-open";
  open.setAttribute("role", "tab");
  open.setAttribute("aria-selected", "false");
  const label = document.createElement("span");
  label.className = "tab-name";
  label.textContent = room.name;
  const badge = document.createElement("span");
  badge.className = "unread";
  badge.hidden = true;
  open.append(label, badge);
  open.addEventListener("click", () => activate(room));
  li.append(open);
  $("tabs").append(li);
  room.tab = li;
  room.tabButton = open;
  room.badge = badge;
}

function bumpUnread(room, n) {
  if (n <= 0) return;
  room.unread += n;
  room.badge.textContent = String(room.unread);
  room.badge.hidden = false;
  room.tab.classList.add("has-unread");
  updateTitle();
}

/// The window title counts what is unread in rooms not shown.
function updateTitle() {
  let unread = 0;
  for (const room of state.rooms.values()) unread += room.unread;
  document.title = unread > 0 ? `(${unread}) linechat` : "linechat";
}

function activate(room) {
  if (state.active && state.active !== room) {
    state.active.wrap.hidden = true;
    state.active.tab.classList.remove("active");
    state.active.tabButton.setAttribute("aria-selected", "false");
  }
  state.active = room;
  room.wrap.hidden = false;
  room.log.hidden = false;
  room.tab.classList.add("active", "seen");
  room.tabButton.setAttribute("aria-selected", "true");
  room.unread = 0;
  room.badge.hidden = true;
  room.tab.classList.remove("has-unread");
  updateTitle();
  $("room-title").textContent = room.name;
  $("part").hidden = false;
  $("invite").hidden = false;
  room.wrap.scrollTop = room.wrap.scrollHeight;
  renderMembers();
  setComposerEnabled(state.online);
  $("input").focus();
}

function showNoRoom() {
  $("room-title").textContent = "No room: join one on the left";
  $("part").hidden = true;
  $("invite").hidden = true;
  renderMembers();
  setComposerEnabled(false);
}

function renderMembers() {
  const list = $("members");
  const room = state.active;
  const names = room ? [...room.members].sort((a, b) => a.localeCompare(b)) : [];
  list.replaceChildren(...names.map((name) => {
    const li = document.createElement("li");
    li.className = "member";
    if (name === state.nick) li.classList.add("self");
    li.style.setProperty("--hue", String(hue(name)));
    li.textContent = name;
    return li;
  }));
  $("member-count").textContent = names.length ? String(names.length) : "";
}

function setStatus(kind, text) {
  const el = $("status");
  el.dataset.state = kind;
  el.textContent = text;
}

function setComposerEnabled(on) {
  const enabled = on && state.active !== null;
  $("input").disabled = !enabled;
  $("send").disabled = !enabled;
}

let errorTimer = null;
function showError(text) {
  const el = $("error");
  el.textContent = text;
  el.hidden = false;
  clearTimeout(errorTimer);
  errorTimer = setTimeout(() => { el.hidden = true; }, 8000);
}

function showLoginError(text) {
  const el = $("login-error");
  el.textContent = text;
  el.hidden = false;
}

function showChat() {
  $("login").hidden = true;
  $("chat").hidden = false;
  $("quit").hidden = false;
  const me = $("me");
  me.textContent = state.nick;
  me.hidden = false;
}

function showLogin() {
  $("login").hidden = false;
  $("chat").hidden = true;
  $("quit").hidden = true;
  $("me").hidden = true;
  $("nick").focus();
}

// ---------------------------------------------------------------------------------------
// User actions

function onLoginSubmit(event) {
  event.preventDefault();
  const nick = $("nick").value.trim();
  const password = $("password").value;
  if (!NICK_RE.test(nick)) {
    return showLoginError("A name is 1 to 32 letters, digits, \"_\" or \"-\".");
  }
  if (/[\s\u0000-\u001F\u007F-\u009F]/.test(password)) {
    return showLoginError("A password is one word: no spaces.");
  }
  $("login-error").hidden = true;
  state.loginError = false;
  state.quitting = false;
  state.wanted = { nick, password };
  if (state.ws) state.ws.close();
  connect();
}

function onJoinSubmit(event) {
  event.preventDefault();
  const input = $("room");
  const name = input.value.trim();
  if (!name) return;
  input.value = "";
  joinRoom(name);
}

function onInputKey(event) {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    sendMessage();
  }
}

function autoGrow() {
  const input = $("input");
  input.style.height = "auto";
  input.style.height = `${Math.min(input.scrollHeight, 160)}px`;
  input.style.overflowY = input.scrollHeight > 160 ? "auto" : "hidden";
}

/// Alt+ArrowUp / Alt+ArrowDown move between rooms; Escape returns to the message field.
function onGlobalKey(event) {
  if (event.altKey && (event.key === "ArrowUp" || event.key === "ArrowDown")) {
    const rooms = [...state.rooms.values()];
    if (rooms.length === 0) return;
    const at = rooms.indexOf(state.active);
    const step = event.key === "ArrowUp" ? -1 : 1;
    activate(rooms[(at + step + rooms.length) % rooms.length]);
    event.preventDefault();
  } else if (event.key === "Escape" && !$("input").disabled) {
    $("input").focus();
  }
}

function quit() {
  state.quitting = true;
  clearTimeout(state.retryTimer);
  sendLine("QUIT");
  if (!state.ws) setStatus("offline", "Left the chat");
}

async function copyInvite() {
  if (!state.active) return;
  const url = new URL(location.pathname, location.origin);
  url.searchParams.set("room", state.active.name);
  try {
    await navigator.clipboard.writeText(url.href);
    $("invite").textContent = "Link copied";
  } catch {
    $("invite").textContent = url.href;
  }
  setTimeout(() => { $("invite").textContent = "Copy invite link"; }, 3000);
}

function init() {
  $("login-form").addEventListener("submit", onLoginSubmit);
  $("join-form").addEventListener("submit", onJoinSubmit);
  $("composer").addEventListener("submit", (e) => { e.preventDefault(); sendMessage(); });
  $("input").addEventListener("keydown", onInputKey);
  $("input").addEventListener("input", autoGrow);
  $("part").addEventListener("click", () => state.active && partRoom(state.active));
  $("invite").addEventListener("click", copyInvite);
  $("quit").addEventListener("click", quit);
  document.addEventListener("keydown", onGlobalKey);
  // ?nick=alice&room=4 fills in the name and joins straight away: a link invites someone.
  const params = new URLSearchParams(location.search);
  const nick = params.get("nick");
  if (params.getAll("room").length) $("login-rooms").value = params.getAll("room").join(", ");
  if (nick) {
    $("nick").value = nick;
    $("login-rooms").value = ""; // initialRooms() reads the address itself
    $("login-form").requestSubmit();
  } else {
    $("nick").focus();
  }
}

init();
