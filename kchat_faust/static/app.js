// kchat browser client: history, live messages and joins/leaves over EventSource with resume, send,
// who is online, the rooms with their activity and the user's unread counts, counts; the room on
// screen is marked read.
// Message data only ever reaches the DOM through textContent: never through innerHTML.
"use strict";

(function () {
  const HISTORY = 50;
  const STATS_EVERY_MS = 3000;
  const BACKOFF_MIN_MS = 500;
  const BACKOFF_MAX_MS = 5000;
  const ROOM_RE = /^[A-Za-z0-9_-]{1,64}$/;

  const $ = (id) => document.getElementById(id);
  const ui = {
    join: $("join"), user: $("user"), room: $("room"), token: $("token"), joinError: $("join-error"),
    chat: $("chat"), where: $("where"), state: $("state"), leave: $("leave"),
    messages: $("messages"), send: $("send"), text: $("text"), sendButton: $("send-button"),
    error: $("error"), users: $("users"), usersNote: $("users-note"),
    online: $("online"), onlineNote: $("online-note"), rooms: $("rooms"), roomsNote: $("rooms-note"),
    unreadNote: $("unread-note"),
  };

  // One joined room at a time; callbacks of an older session check `session !== s` and stop.
  let session = null;

  function setState(state) {
    ui.state.textContent = state;
    ui.state.dataset.state = state;
  }

  // Only workers run with KCHAT_JWT_SECRET need a token; EventSource cannot send headers,
  // so the stream gets it as ?access_token=.
  function authHeaders(s, headers) {
    return s.token ? Object.assign({ Authorization: "Bearer " + s.token }, headers) : headers;
  }

  function roomUrl(room, tail) {
    return "/api/rooms/" + encodeURIComponent(room) + tail;
  }

  function eventOffset(msg) {
    // Presence events carry only their event id, "partition:offset".
    if (msg.offset === undefined && typeof msg.event_id === "string") return Number(msg.event_id.split(":")[1]);
    return Number(msg.offset);
  }

  // -- messages --------------------------------------------------------------------------
  function renderMessage(s, msg) {
    const li = document.createElement("li");
    li.className = "message";
    if (msg.user === s.user) li.classList.add("own");
    li.dataset.eventId = msg.event_id;
    li.dataset.offset = String(msg.offset);

    const meta = document.createElement("div");
    meta.className = "meta";
    const who = document.createElement("span");
    who.className = "user";
    who.textContent = msg.user;
    const when = document.createElement("time");
    when.className = "sent";
    when.dateTime = msg.sent_at;
    const sent = new Date(msg.sent_at);
    when.textContent = isNaN(sent) ? "" : sent.toLocaleTimeString();
    meta.append(who, when);
    if (msg.user === s.user) {
      const you = document.createElement("span");
      you.className = "you";
      you.textContent = "you";
      meta.append(you);
    }

    const text = document.createElement("div");
    text.className = "text";
    text.textContent = msg.text;
    li.append(meta, text);
    return li;
  }

  function renderPresence(msg, kind) {
    const li = document.createElement("li");
    li.className = "presence " + kind;
    li.dataset.eventId = msg.event_id;
    li.dataset.offset = String(eventOffset(msg));
    li.textContent = msg.user + (kind === "join" ? " joined" : " left");
    return li;
  }

  // Adds a message (or a join or leave) once, in log order. Returns false for one already shown.
  function addMessage(s, msg, kind) {
    if (!msg || typeof msg.event_id !== "string") return false;
    const offset = eventOffset(msg);
    if (!Number.isFinite(offset)) return false;
    if (s.seenIds.has(msg.event_id) || s.seenOffsets.has(offset)) return false;
    s.seenIds.add(msg.event_id);
    s.seenOffsets.add(offset);

    const li = kind ? renderPresence(msg, kind) : renderMessage(s, msg);
    const list = ui.messages;
    const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
    // A room lives in one partition, so its offsets order it. New messages go last;
    // only a history merged after the stream opened can land in between.
    let before = null;
    for (let node = list.lastElementChild; node; node = node.previousElementSibling) {
      if (Number(node.dataset.offset) < offset) break;
      before = node;
    }
    list.insertBefore(li, before);
    if (atBottom || msg.user === s.user) list.scrollTop = list.scrollHeight;
    return true;
  }

  // The resume point only moves forward, and only for what came from the log itself
  // (history or stream): everything up to it has been shown.
  function advance(s, msg) {
    const offset = eventOffset(msg);
    if (s.lastOffset === null || offset > s.lastOffset) {
      s.lastOffset = offset;
      s.lastEventId = msg.event_id;
      markRead(s);
    }
  }

  // -- read position -----------------------------------------------------------------------
  // What is on screen while the tab is visible has been read: the server keeps the furthest
  // position per user and room. One request at a time; the newest position goes next.
  async function markRead(s) {
    if (session !== s || s.marking || !s.lastEventId || s.lastEventId === s.readUpTo) return;
    if (document.visibilityState !== "visible") return;
    const eventId = s.lastEventId;
    s.marking = true;
    try {
      const r = await fetch(roomUrl(s.room, "/read"), {
        method: "PUT",
        headers: authHeaders(s, { "Content-Type": "application/json" }),
        body: JSON.stringify({ user: s.user, event_id: eventId }),
      });
      if (r.ok) s.readUpTo = eventId;
    } catch (_) {
      // offline: the next message or the next look at the tab tries again
    } finally {
      s.marking = false;
    }
    if (s.readUpTo === eventId) markRead(s);
  }

  async function loadHistory(s) {
    const r = await fetch(roomUrl(s.room, "/messages?limit=" + HISTORY),
      { cache: "no-store", headers: authHeaders(s, {}) });
    const body = await r.json().catch(() => ({}));
    if (!r.ok) throw new Error(body.error || "history: HTTP " + r.status);
    // Where the history read ended: resuming there leaves no gap, even in an empty room.
    if (typeof body.last_event_id === "string") s.historyEnd = body.last_event_id;
    olderFrom(s, body);
    return Array.isArray(body.messages) ? body.messages : [];
  }

  // Where the page before starts (null at the room's start), and whether the log lost the oldest.
  function olderFrom(s, body) {
    s.olderBefore = typeof body.before === "string" ? body.before : null;
    if (body.gap && body.gap.missing) {
      ui.error.textContent = body.gap.missing + " older message(s) of this room are gone from the log (retention)";
    }
  }

  // Scrolled to the top: the page of messages before the oldest shown, keeping the view where it was.
  async function loadOlder(s) {
    if (s.loadingOlder || !s.olderBefore) return;
    s.loadingOlder = true;
    try {
      const r = await fetch(roomUrl(s.room, "/messages?limit=" + HISTORY + "&before=" + encodeURIComponent(s.olderBefore)),
        { cache: "no-store", headers: authHeaders(s, {}) });
      const body = await r.json().catch(() => ({}));
      if (!r.ok) throw new Error(body.error || "older messages: HTTP " + r.status);
      if (session !== s) return;
      const list = ui.messages, height = list.scrollHeight, top = list.scrollTop;
      for (const m of Array.isArray(body.messages) ? body.messages : []) addMessage(s, m);
      list.scrollTop = top + (list.scrollHeight - height);
      olderFrom(s, body);
    } catch (err) {
      if (session === s) ui.error.textContent = "could not load older messages: " + err.message;
    } finally {
      s.loadingOlder = false;
    }
  }

  // -- live stream -----------------------------------------------------------------------
  function connect(s) {
    if (session !== s) return;
    const params = new URLSearchParams();
    if (s.lastEventId) params.set("last_event_id", s.lastEventId);
    // Who is watching, for the room's presence: the token says it when there is one.
    if (s.token) params.set("access_token", s.token);
    else params.set("user", s.user);
    let url = roomUrl(s.room, "/events");
    if (params.toString()) url += "?" + params.toString();
    const resumed = Boolean(s.lastEventId);
    const es = new EventSource(url);
    s.source = es;

    es.addEventListener("open", () => {
      if (session !== s || s.source !== es) return;
      s.backoff = BACKOFF_MIN_MS;
      setState("connected");
      if (!resumed) {
        // Opened without a resume point (the room had no history): anything posted between
        // the history request and this subscription is read back now; duplicates are dropped.
        loadHistory(s).then((msgs) => {
          if (session !== s) return;
          for (const m of msgs) { addMessage(s, m); advance(s, m); }
        }).catch(() => { /* the stream itself is up; nothing to report */ });
      }
    });

    es.addEventListener("message", (ev) => {
      if (session !== s || s.source !== es) return;
      let msg;
      try { msg = JSON.parse(ev.data); } catch (_) { return; }
      addMessage(s, msg);
      advance(s, msg);
    });

    for (const kind of ["join", "leave"]) {
      es.addEventListener(kind, (ev) => {
        if (session !== s || s.source !== es) return;
        let msg;
        try { msg = JSON.parse(ev.data); } catch (_) { return; }
        if (addMessage(s, msg, kind)) refreshPresence(s, false);
        advance(s, msg);
      });
    }

    es.addEventListener("error", () => {
      if (session !== s || s.source !== es) return;
      // Do not rely on the browser's own retry: close, wait, and resume from what we saw.
      es.close();
      s.source = null;
      setState("reconnecting");
      const wait = s.backoff * (0.75 + Math.random() * 0.5);
      s.backoff = Math.min(s.backoff * 2, BACKOFF_MAX_MS);
      s.retryTimer = setTimeout(() => connect(s), wait);
    });
  }

  // -- the side panel: counts, who is online, the rooms ------------------------------------
  // Fetches url for session s, shows it with render (which may return a note), and does so again
  // every STATS_EVERY_MS; on failure the note says why.
  async function poll(s, what, url, render, note, timer, again = true) {
    if (session !== s) return;
    try {
      const r = await fetch(url, { cache: "no-store", headers: authHeaders(s, {}) });
      const body = await r.json().catch(() => ({}));
      if (session !== s) return;
      if (!r.ok) throw new Error(body.error || "HTTP " + r.status);
      note.textContent = render(body) || "";
    } catch (err) {
      if (session === s) note.textContent = what + " unavailable: " + err.message;
    } finally {
      if (again && session === s) s[timer] = setTimeout(() => poll(s, what, url, render, note, timer), STATS_EVERY_MS);
    }
  }

  function refreshStats(s) {
    poll(s, "counts", "/stats/users", (body) => renderStats(body.users || {}), ui.usersNote, "statsTimer");
  }

  function renderStats(users) {
    const rows = Object.entries(users).sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : 1));
    ui.users.replaceChildren(...rows.map(([name, count]) => userRow(name, String(count))));
  }

  // A user and a figure, as the side panel's lists show them.
  function userRow(name, figure) {
    const li = document.createElement("li");
    li.dataset.user = name;
    if (session && name === session.user) li.classList.add("own");
    const n = document.createElement("span");
    n.className = "user";
    n.textContent = name;
    const c = document.createElement("span");
    c.className = "count";
    c.textContent = figure;
    li.append(n, c);
    return li;
  }

  function refreshPresence(s, again = true) {
    poll(s, "presence", roomUrl(s.room, "/presence"), (body) => {
      ui.online.replaceChildren(...(body.users || []).map(
        (u) => userRow(u.user, u.sessions > 1 ? u.sessions + " tabs" : "")));
      return body.anonymous ? "and " + body.anonymous + " anonymous" : "";
    }, ui.onlineNote, "presenceTimer", again);
  }

  function refreshRooms(s) {
    poll(s, "rooms", "/api/rooms", (body) => {
      s.directory = body.rooms || [];
      renderRooms(s);
    }, ui.roomsNote, "roomsTimer");
    poll(s, "unread counts", "/api/users/" + encodeURIComponent(s.user) + "/unread", (body) => {
      s.unread = new Map((body.rooms || []).map((r) => [r.room, r.unread]));
      renderRooms(s);
    }, ui.unreadNote, "unreadTimer");
  }

  function renderRooms(s) {
    // The busiest rooms, the current one wherever it ranks, and those with something unread.
    const rooms = s.directory || [];
    const unread = s.unread || new Map();
    const shown = rooms.slice(0, 30);
    for (const room of rooms) {
      if (!shown.includes(room) && (room.room === s.room || unread.get(room.room))) shown.push(room);
    }
    for (const [name, n] of unread) {
      if (n && !rooms.some((r) => r.room === name)) shown.push({ room: name, messages_last_minute: 0, messages_last_hour: 0, online: 0 });
    }
    ui.rooms.replaceChildren(...shown.map((room) => {
      const li = document.createElement("li");
      li.dataset.room = room.room;
      if (room.room === s.room) li.classList.add("current");
      const b = document.createElement("button");
      b.type = "button";
      b.title = room.messages_last_hour + " messages in the last hour";
      const n = document.createElement("span");
      n.className = "name";
      n.textContent = room.room;
      const a = document.createElement("span");
      a.className = "activity";
      a.textContent = room.messages_last_minute + "/min · " + room.online + " online";
      b.append(n, a);
      // The room on screen is being read: no badge for it.
      const count = room.room === s.room ? 0 : unread.get(room.room) || 0;
      if (count) {
        const badge = document.createElement("span");
        badge.className = "unread";
        badge.title = count + " unread";
        badge.textContent = count > 99 ? "99+" : String(count);
        n.append(badge);
      }
      b.addEventListener("click", () => { if (room.room !== s.room) join(s.user, room.room, s.token); });
      li.append(b);
      return li;
    }));
  }

  // -- sending ---------------------------------------------------------------------------
  // Every message goes with an Idempotency-Key; an answer that never came, or a 502/503/504, is
  // an unknown outcome, and the same key is sent again: the message cannot be stored twice.
  const SEND_ATTEMPTS = 5;

  function newKey() {
    // crypto.randomUUID needs a secure context; a NodePort over plain HTTP is not one.
    const bytes = crypto.getRandomValues(new Uint8Array(16));
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  async function send(s) {
    const text = ui.text.value;
    ui.error.textContent = "";
    ui.sendButton.disabled = true;
    // Pressing Send again for the same text is a retry: it keeps the key.
    if (!s.pending || s.pending.text !== text) s.pending = { text, key: newKey() };
    const key = s.pending.key;
    try {
      for (let attempt = 1; ; attempt++) {
        let r = null;
        try {
          r = await fetch(roomUrl(s.room, "/messages"), {
            method: "POST",
            headers: authHeaders(s, { "Content-Type": "application/json", "Idempotency-Key": key }),
            body: JSON.stringify({ user: s.user, text }),
          });
        } catch (_) {
          r = null;  // no answer: stored or not, unknown
        }
        if (session !== s) return;
        if (r && r.status === 201) {
          // The message is shown when the stream delivers it, in log order.
          if (ui.text.value === text) ui.text.value = "";
          s.pending = null;
          return;
        }
        const unknown = !r || r.status === 502 || r.status === 503 || r.status === 504;
        if (unknown && attempt < SEND_ATTEMPTS) {
          await new Promise((done) => setTimeout(done, BACKOFF_MIN_MS * 2 ** (attempt - 1)));
          if (session !== s) return;
          continue;
        }
        if (!r) {
          ui.error.textContent = "could not reach the server; press Send to try again (it cannot be stored twice)";
          return;
        }
        const body = await r.json().catch(() => ({}));
        const reason = body.error || "HTTP " + r.status;
        ui.error.textContent = body.field ? body.field + ": " + reason : reason;
        return;
      }
    } finally {
      ui.sendButton.disabled = false;
      ui.text.focus();
    }
  }

  // -- joining and leaving -----------------------------------------------------------------
  async function join(user, room, token) {
    leave();
    const s = {
      user, room, token, source: null, retryTimer: null, statsTimer: null, presenceTimer: null, roomsTimer: null,
      unreadTimer: null, directory: [], unread: new Map(), marking: false, readUpTo: null,
      backoff: BACKOFF_MIN_MS, lastEventId: null, lastOffset: null, olderBefore: null, loadingOlder: false,
      seenIds: new Set(), seenOffsets: new Set(),
    };
    session = s;
    ui.messages.replaceChildren();
    ui.users.replaceChildren();
    ui.online.replaceChildren();
    ui.error.textContent = "";
    ui.joinError.textContent = "";
    ui.where.textContent = user + " in " + room;
    ui.join.hidden = true;
    ui.chat.hidden = false;
    ui.leave.hidden = false;
    setState("connecting");
    try { localStorage.setItem("kchat.user", user); localStorage.setItem("kchat.room", room); } catch (_) { /* private mode */ }

    refreshStats(s);
    refreshRooms(s);
    let history = [];
    try {
      history = await loadHistory(s);
    } catch (err) {
      if (session === s) ui.error.textContent = "could not load history: " + err.message;
    }
    if (session !== s) return;
    for (const m of history) { addMessage(s, m); advance(s, m); }
    if (!s.lastEventId && s.historyEnd) s.lastEventId = s.historyEnd;
    ui.messages.scrollTop = ui.messages.scrollHeight;
    connect(s);
    refreshPresence(s);
    ui.text.focus();
  }

  function leave() {
    const s = session;
    session = null;
    if (!s) return;
    if (s.source) s.source.close();
    clearTimeout(s.retryTimer);
    clearTimeout(s.statsTimer);
    clearTimeout(s.presenceTimer);
    clearTimeout(s.roomsTimer);
    clearTimeout(s.unreadTimer);
    ui.chat.hidden = true;
    ui.join.hidden = false;
    ui.leave.hidden = true;
    ui.where.textContent = "";
    setState("idle");
  }

  ui.join.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const user = ui.user.value.trim();
    const room = ui.room.value.trim();
    if (!user) { ui.joinError.textContent = "choose a name"; return; }
    if (!ROOM_RE.test(room)) {
      ui.joinError.textContent = "room: 1-64 characters of A-Z, a-z, 0-9, _ or -";
      return;
    }
    join(user, room, ui.token.value.trim());
  });

  ui.leave.addEventListener("click", () => { leave(); ui.user.focus(); });
  document.addEventListener("visibilitychange", () => { if (session) markRead(session); });
  ui.messages.addEventListener("scroll", () => { if (session && ui.messages.scrollTop < 40) loadOlder(session); });

  ui.send.addEventListener("submit", (ev) => {
    ev.preventDefault();
    if (session && !ui.sendButton.disabled) send(session);
  });

  ui.text.addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing) {
      ev.preventDefault();
      ui.send.requestSubmit();
    }
  });

  try {
    ui.user.value = localStorage.getItem("kchat.user") || "";
    ui.room.value = localStorage.getItem("kchat.room") || ui.room.value;
  } catch (_) { /* storage unavailable */ }
  ui.user.focus();
})();
