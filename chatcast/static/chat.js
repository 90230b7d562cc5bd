// chatcast chat page: the JSON protocol of docs/protocol.md over a WebSocket, one frame per
// message. Everything others send is put in the page with textContent, never as HTML.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const HELP = [
    "Type to talk to your room. Commands:",
    "/join ROOM    go to ROOM",
    "/nick NAME    change your name",
    "/msg NAME TEXT    a private message",
    "/who [ROOM]   who is here",
    "/rooms        the rooms",
    "/history [N]  the room's last N messages (servers that keep history)",
    "/quit         leave",
    "//text        send a message that starts with /",
  ].join("\n");
  const MAX_LOG = 1000;
  const MAX_SEEN = 5000;

  const state = {
    name: "", room: "", token: "",
    ws: null,
    welcomed: false,       // this connection got its welcome
    joinedOnce: false,     // some connection got a welcome: reconnect on loss
    session: null,         // resume token from the welcome (servers that offer it)
    lastId: 0,             // highest message id seen, for resuming
    seen: new Set(),       // ids shown, so a replayed message is not shown twice
    attempts: 0,
    timer: null,
    roomsTimer: null,
    roomsSoon: null,
    maxBytes: 65536,
    lastClose: "",
    refs: 0,
    historyShown: 0,  // messages of history shown since the last /history answer
  };

  // -- the page ------------------------------------------------------------------------------

  function setStatus(text) { $("status").textContent = text; }

  function time(ts) {
    const d = typeof ts === "number" ? new Date(ts * 1000) : new Date();
    return d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  }

  // One line in the log: [time] [from] text, each part set as text.
  function addLine(kind, text, opts = {}) {
    if (opts.history) state.historyShown += 1;
    const log = $("log");
    const atBottom = log.scrollHeight - log.scrollTop - log.clientHeight < 40;
    const li = document.createElement("li");
    li.className = kind + (opts.history ? " history" : "") + (opts.mine ? " mine" : "");
    if (opts.id !== undefined) li.dataset.id = String(opts.id);
    const t = document.createElement("span");
    t.className = "time";
    t.textContent = time(opts.ts);
    li.append(t);
    if (opts.from !== undefined) {
      const f = document.createElement("span");
      f.className = "from";
      f.textContent = opts.from;
      li.append(f, document.createTextNode(": "));
    }
    const body = document.createElement("span");
    body.className = "text";
    body.textContent = text;
    li.append(body);
    // Earlier messages (history) go where their id puts them, not after newer ones.
    let before = null;
    if (opts.history && typeof opts.id === "number") {
      for (const other of log.children) {
        if (other.dataset.id && Number(other.dataset.id) > opts.id) { before = other; break; }
      }
    }
    log.insertBefore(li, before);
    while (log.childElementCount > MAX_LOG) log.firstElementChild.remove();
    if (atBottom || opts.mine) log.scrollTop = log.scrollHeight;
  }

  const notice = (text, opts) => addLine("notice", "* " + text, opts);
  const problem = (text) => addLine("error", "! " + text);

  function showChat(on) {
    $("join").hidden = on;
    $("chat").hidden = !on;
    $("leave").hidden = !on;
  }

  function setRoom(room) {
    state.room = room;
    $("room-title").textContent = room;
    $("text").placeholder = "Message to " + room + " (/help for commands)";
    for (const b of $("rooms").querySelectorAll("button")) {
      b.setAttribute("aria-current", String(b.dataset.room === room));
    }
  }

  function renderRooms(rooms) {
    const ul = $("rooms");
    const focused = document.activeElement && document.activeElement.dataset
      ? document.activeElement.dataset.room : undefined;
    ul.replaceChildren();
    const names = Object.keys(rooms);
    if (state.room && !names.includes(state.room)) names.push(state.room);
    for (const room of names.sort()) {
      const li = document.createElement("li");
      const b = document.createElement("button");
      b.type = "button";
      b.className = "link";
      b.dataset.room = room;
      b.textContent = room + " (" + (rooms[room] || 0) + ")";
      b.setAttribute("aria-current", String(room === state.room));
      b.addEventListener("click", () => join(room));
      li.append(b);
      ul.append(li);
      if (room === focused) b.focus();
    }
  }

  function renderWho(names) {
    const ul = $("who");
    ul.replaceChildren();
    for (const name of [...names].sort((a, b) => a.localeCompare(b))) {
      const li = document.createElement("li");
      if (name === state.name) {
        li.textContent = name + " (you)";
      } else {
        const b = document.createElement("button");
        b.type = "button";
        b.className = "link";
        b.dataset.name = name;
        b.textContent = name;
        b.title = "Write to " + name + " privately";
        b.addEventListener("click", () => {
          const input = $("text");
          input.value = "/msg " + name + " ";
          input.focus();
        });
        li.append(b);
      }
      ul.append(li);
    }
  }

  function whoNames() {
    return [...$("who").querySelectorAll("li")].map(
      (li) => li.firstElementChild ? li.firstElementChild.dataset.name : state.name);
  }

  function whoUpdate(add, remove) {
    const names = new Set(whoNames());
    if (remove) names.delete(remove);
    if (add) names.add(add);
    renderWho(names);
  }

  // -- the connection ------------------------------------------------------------------------

  function wsUrl() {
    return (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws";
  }

  function send(frame) {
    const ws = state.ws;
    if (!ws || ws.readyState !== WebSocket.OPEN) {
      problem("not connected: " + (state.lastClose || "waiting to reconnect"));
      return false;
    }
    ws.send(JSON.stringify(frame));
    return true;
  }

  function connect() {
    clearTimeout(state.timer);
    state.timer = null;
    $("retry").hidden = true;
    setStatus(state.joinedOnce ? "reconnecting…" : "connecting…");
    let ws;
    try {
      ws = new WebSocket(wsUrl());
    } catch (err) {
      closed(1006, String(err));
      return;
    }
    state.ws = ws;
    state.welcomed = false;
    ws.onopen = () => {
      // version 2: ids, history on joining, resume (older servers ignore it).
      const hello = { type: "hello", version: 2 };
      if (state.name) hello.name = state.name;
      if (state.room) hello.room = state.room;
      if (state.token) hello.token = state.token;
      if (state.session) {
        hello.session = state.session;
        hello.last = state.lastId;
      }
      ws.send(JSON.stringify(hello));
    };
    ws.onmessage = (event) => {
      if (state.ws !== ws || typeof event.data !== "string") return;
      let frame;
      try { frame = JSON.parse(event.data); } catch (err) { return; }
      if (frame && typeof frame === "object" && typeof frame.type === "string") handle(frame);
    };
    ws.onclose = (event) => {
      if (state.ws !== ws) return;
      state.ws = null;
      closed(event.code, event.reason);
    };
  }

  function closed(code, reason) {
    clearInterval(state.roomsTimer);
    const wasWelcomed = state.welcomed;
    state.welcomed = false;
    state.lastClose = reason || (code === 1006 ? "connection lost" : "closed (" + code + ")");
    // Refused before any welcome (wrong token, bad or taken name): back to the form.
    if (!state.joinedOnce && code === 1008) {
      showChat(false);
      setStatus("not connected");
      $("join-error").textContent = reason || "refused by the server";
      $("go").disabled = false;
      if (/token|authentication/i.test(reason)) $("token-row").hidden = false;
      $("name").focus();
      return;
    }
    if (!state.joinedOnce && !wasWelcomed && state.attempts === 0 && code === 1006) {
      $("join-error").textContent = "cannot reach the server; trying again…";
    }
    if (/resumed from another connection/.test(reason)) {  // this chat went on elsewhere
      setStatus("disconnected: the chat continued in another window");
      $("retry").hidden = false;
      return;
    }
    if (/authentication/i.test(reason)) {  // the token changed: ask again
      state.joinedOnce = false;
      state.session = null;
      showChat(false);
      $("token-row").hidden = false;
      $("join-error").textContent = reason;
      $("go").disabled = false;
      $("token").focus();
      return;
    }
    if (wasWelcomed) problem("disconnected: " + state.lastClose);
    const delay = Math.min(15000, 500 * 2 ** state.attempts) * (0.75 + Math.random() / 2);
    state.attempts += 1;
    setStatus("disconnected (" + state.lastClose + "); reconnecting in " +
      Math.max(1, Math.round(delay / 1000)) + " s");
    $("retry").hidden = false;
    state.timer = setTimeout(connect, delay);
  }

  // The room list is asked for at most every few seconds: every request counts against the
  // server's flood control, and a busy room's joins and leaves must not spend the user's.
  function refreshRooms() {
    if (state.roomsSoon) return;
    state.roomsSoon = setTimeout(() => {
      state.roomsSoon = null;
      if (state.welcomed) send({ type: "rooms" });
    }, 3000);
  }

  function refreshLists() {
    send({ type: "rooms" });
    send({ type: "who" });
  }

  // -- what the server sends -----------------------------------------------------------------

  // A message with an id already shown (a replay after resuming) is skipped.
  function fresh(frame) {
    if (typeof frame.id !== "number") return true;
    if (state.seen.has(frame.id)) return false;
    state.seen.add(frame.id);
    if (state.seen.size > MAX_SEEN) state.seen.delete(state.seen.values().next().value);
    if (frame.id > state.lastId) state.lastId = frame.id;
    return true;
  }

  function handle(f) {
    const text = typeof f.text === "string" ? f.text : "";
    const opts = { ts: f.ts, history: f.history === true, id: f.id };
    switch (f.type) {
      case "welcome": {
        const resumed = f.resumed === true;
        state.welcomed = state.joinedOnce = true;
        state.attempts = 0;
        state.lastClose = "";
        state.name = f.name;
        state.session = typeof f.session === "string" ? f.session : null;
        remember();
        // A new session starts from the server's latest id: older messages were not missed.
        if (!resumed && typeof f.last === "number" && f.last > state.lastId) state.lastId = f.last;
        if (typeof f.max_bytes === "number") state.maxBytes = f.max_bytes;
        $("join-error").textContent = "";
        showChat(true);
        setRoom(f.room);
        setStatus("connected as " + f.name);
        if ($("log").childElementCount === 0 && text) notice(text);
        else if (resumed) notice("reconnected; what you missed follows");
        else if ($("log").childElementCount > 0) notice("reconnected as " + f.name);
        // The join confirmation that follows asks for the lists; a seamless resume has none.
        if (resumed) refreshLists();
        clearInterval(state.roomsTimer);
        state.roomsTimer = setInterval(refreshRooms, 15000);
        const at = document.activeElement;
        if (!at || at === document.body || $("join").contains(at)) {
          $("text").focus();
        }
        break;
      }
      case "message":
        if (fresh(f)) addLine("message", text, { ...opts, from: f.from, mine: f.from === state.name });
        break;
      case "private":
        if (fresh(f)) {
          const who = f.from === state.name ? f.from + " → " + f.to : f.from;
          addLine("private", text, { ...opts, from: "[private] " + who });
        }
        break;
      case "announcement":
        if (fresh(f)) addLine("announcement", text, { ...opts, from: "[server]" });
        break;
      case "join":
        if (f.from === state.name) {
          if (f.room !== state.room || !opts.history) {
            setRoom(f.room);
            notice("you are in " + f.room, opts);
            refreshLists();
          }
        } else if (f.room === state.room) {
          notice(f.from + " joined " + f.room, opts);
          whoUpdate(f.from);
          refreshRooms();
        }
        break;
      case "leave":
        if (f.from !== state.name && f.room === state.room) {
          notice(f.from + " left " + f.room + (text ? " (" + text + ")" : ""), opts);
          whoUpdate(null, f.from);
          refreshRooms();
        }
        break;
      case "nick":
        if (f.from === state.name) {
          state.name = text;
          setStatus("connected as " + text);
          notice("you are now " + text, opts);
        } else {
          notice(f.from + " is now " + text, opts);
        }
        whoUpdate(text, f.from);
        break;
      case "info":
        notice(text);
        break;
      case "gap": {
        const n = typeof f.missed === "number" ? f.missed : "some";
        notice(n + " message" + (n === 1 ? "" : "s") + " missed in " + f.room + " (no longer available)");
        break;
      }
      case "history": {  // the end of an answer to /history
        const n = state.historyShown;
        state.historyShown = 0;
        notice(n ? n + " earlier message" + (n === 1 ? "" : "s") + " above"
          : "no earlier messages than those shown" + (f.count ? "" : " (none kept)"));
        break;
      }
      case "who":
        if (f.room === state.room && Array.isArray(f.names)) renderWho(f.names);
        else if (Array.isArray(f.names)) notice("in " + f.room + ": " + (f.names.join(", ") || "(nobody)"));
        break;
      case "rooms":
        if (f.rooms && typeof f.rooms === "object") renderRooms(f.rooms);
        break;
      case "error":
        problem(typeof f.reason === "string" ? f.reason : text);
        break;
      case "closing":
        problem("server: " + (typeof f.reason === "string" ? f.reason : text));
        break;
      case "ping":
        send({ type: "pong" });
        break;
      case "ack":
        fresh(f);  // our own message's id: resuming starts after it
        break;
      default:
        break;  // pong, and what newer servers add
    }
  }

  // -- what the user does --------------------------------------------------------------------

  function join(room) {
    if (room && room !== state.room) send({ type: "join", room });
  }

  function command(line) {
    const [head, ...rest] = line.slice(1).split(" ");
    const arg = rest.join(" ").trim();
    switch (head.toLowerCase()) {
      case "join": case "j":
        if (arg) join(arg); else problem("usage: /join ROOM");
        return;
      case "nick":
        if (arg) send({ type: "nick", name: arg }); else problem("usage: /nick NAME");
        return;
      case "msg": case "m": {
        const space = arg.indexOf(" ");
        if (space < 1) { problem("usage: /msg NAME TEXT"); return; }
        const to = arg.slice(0, space);
        const text = arg.slice(space + 1);
        if (send({ type: "message", to, text })) {
          addLine("private", text, { from: "[private] " + state.name + " → " + to, mine: true });
        }
        return;
      }
      case "who":
        send(arg ? { type: "who", room: arg } : { type: "who" });
        return;
      case "rooms":
        send({ type: "rooms" });
        return;
      case "history": {
        state.historyShown = 0;
        const limit = arg ? Number(arg) : 20;
        if (!Number.isInteger(limit) || limit < 1) { problem("usage: /history [N]"); return; }
        send({ type: "history", room: state.room, limit });
        return;
      }
      case "help":
        notice(HELP);
        return;
      case "quit":
        leave(arg);
        return;
      default:
        problem("unknown command /" + head + " (try /help)");
    }
  }

  function say(line) {
    if (!line.trim()) return;
    if (line.startsWith("/") && !line.startsWith("//")) { command(line); return; }
    const text = line.startsWith("//") ? line.slice(1) : line;
    // ref: the server acknowledges with the message's id (servers without acks ignore it).
    state.refs += 1;
    const frame = { type: "message", text, ref: "m" + state.refs };
    if (new TextEncoder().encode(JSON.stringify(frame)).length > state.maxBytes) {
      problem("message too long (the server takes " + state.maxBytes + " bytes at most)");
      return;
    }
    if (send(frame)) addLine("message", text, { from: state.name, mine: true });
  }

  function leave(reason) {
    clearTimeout(state.timer);
    clearInterval(state.roomsTimer);
    const ws = state.ws;
    state.ws = null;
    if (ws && ws.readyState === WebSocket.OPEN) {
      ws.send(JSON.stringify(reason ? { type: "quit", reason } : { type: "quit" }));
      ws.close(1000);
    } else if (ws) {
      ws.close();
    }
    state.joinedOnce = state.welcomed = false;
    state.session = null;
    remember();
    state.attempts = 0;
    showChat(false);
    $("retry").hidden = true;
    $("go").disabled = false;
    setStatus("not connected");
    $("name").value = state.name;
    $("name").focus();
  }

  // The session survives a reload of the tab (sessionStorage: this tab only, never the token),
  // so reloading the page resumes instead of finding one's own name taken.
  function remember() {
    try {
      if (state.session && state.joinedOnce) {
        sessionStorage.setItem("chatcast-session", JSON.stringify({
          session: state.session, name: state.name, room: state.room, lastId: state.lastId,
        }));
      } else {
        sessionStorage.removeItem("chatcast-session");
      }
    } catch (err) { /* storage refused: a reload starts afresh */ }
  }

  function remembered() {
    try {
      const saved = JSON.parse(sessionStorage.getItem("chatcast-session") || "null");
      if (saved && typeof saved.session === "string" && typeof saved.name === "string") return saved;
    } catch (err) { /* none */ }
    return null;
  }

  function submit() {
    state.name = $("name").value.trim();
    state.room = $("room").value.trim();
    state.token = $("token").value;
    state.attempts = 0;
    const saved = remembered();
    if (saved && saved.name === state.name) {
      state.session = saved.session;
      state.lastId = typeof saved.lastId === "number" ? saved.lastId : 0;
    }
    $("join-error").textContent = "";
    $("go").disabled = true;
    $("log").replaceChildren();
    $("who").replaceChildren();
    try { localStorage.setItem("chatcast-name", state.name); } catch (err) { /* private mode */ }
    connect();
  }

  function start() {
    $("noscript").hidden = true;
    window.addEventListener("pagehide", remember);
    $("join").addEventListener("submit", (event) => {
      event.preventDefault();
      submit();
    });
    $("say").addEventListener("submit", (event) => {
      event.preventDefault();
      const input = $("text");
      say(input.value);
      input.value = "";
    });
    $("goto").addEventListener("submit", (event) => {
      event.preventDefault();
      const room = $("goto-room").value.trim();
      $("goto-room").value = "";
      join(room);
      $("text").focus();
    });
    $("retry").addEventListener("click", () => { state.attempts = 0; connect(); });
    $("leave").addEventListener("click", () => leave(""));
    window.addEventListener("online", () => { if (state.timer) connect(); });
    try { $("name").value = localStorage.getItem("chatcast-name") || ""; } catch (err) { /* none */ }
    const saved = remembered();
    if (saved) {
      $("name").value = saved.name;
      $("room").value = saved.room || "";
    }
    fetch("info.json", { cache: "no-store" }).then((r) => r.json()).then((info) => {
      if (info.token) $("token-row").hidden = false;
      if (typeof info.room === "string") $("room").placeholder = info.room;
      if (typeof info.max_message_bytes === "number") state.maxBytes = info.max_message_bytes;
      if (saved && !info.token && !state.ws) submit();  // a reload: carry on where we were
    }).catch(() => { /* the form still works; the server says what it needs */ });
    $("name").focus();
  }

  start();
})();
