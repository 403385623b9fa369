// rtcsignal: the signaling client of twisted-signal, for browsers and Node.
//
// One ES module, no dependencies, no build step.  It speaks the server's
// wire protocol (docs/protocol.md): join a room (with a token), follow its
// peers and ICE servers, send and receive messages, resume the same peer
// after a lost connection (messages sent meanwhile are queued and replayed),
// reconnect with backoff and jitter, never retry a refusal, refresh TURN
// credentials before they expire, and trust server events only from the
// server.  docs/client-js.md is the guide; rtcsignal.d.ts the types.
//
//   import { Signaling, socketUrl } from "./rtcsignal.js";
//   const client = new Signaling(socketUrl(location.href, "standup"), { token });
//   client.on("message:chat", ({ from, data }) => console.log(from, data.text));
//   client.on("open", () => client.send("chat", { text: "hi" }));
//   client.connect();

export const VERSION = "0.1.0";

/** The events only the server may send (SPEC 1.2, 1.3). */
export const SERVER_EVENTS = Object.freeze(["authenticated", "joined", "left", "error", "ice_servers"]);

/** The exact `error` descriptions of the server (SPEC 1.3, 5.3). */
export const ERRORS = Object.freeze({
  INVALID_JSON: "Invalid JSON",
  INVALID_MESSAGE: "Invalid message",
  NO_SUCH_PEER: "No such peer",
  COULD_NOT_JOIN: "Could not join room",
  ROOM_CLOSED: "Room closed",
  RATE_LIMITED: "Rate limited",
});

/** Room names, as the server accepts them in `/socket/<room>/` (SPEC 1.4). */
export const ROOM_NAME = /^[A-Za-z0-9_.~-]{1,64}$/;

// HTTP statuses of a refused upgrade that another attempt will not change
// (bad request, bad or expired token, no such room, Origin not allowed).
const REFUSAL_STATUSES = new Set([400, 401, 403, 404]);
const CLOSE_NORMAL = 1000;
const CLOSE_POLICY = 1008; // kicked by an admin, or rate-limited for good
const DEFAULT_PING_MS = 20000;
const OPEN = 1; // WebSocket.OPEN, the same for every implementation

/**
 * Reconnection delays, with the Python client's constants
 * (twisted_signal.client.Backoff): `initial * factor ** attempt` ms, at most
 * `maximum`, of which the last `jitter` fraction is random, so the clients
 * of a restarted server do not all come back at the same instant.  Any
 * object with a `delay(attempt)` method (ms, or null to give up) can take
 * its place as the `reconnect` option.
 */
export class Backoff {
  /** @param {{initial?: number, maximum?: number, factor?: number, jitter?: number, random?: () => number}} [options] */
  constructor({ initial = 500, maximum = 10000, factor = 2, jitter = 0.5, random = Math.random } = {}) {
    if (!(initial > 0 && initial <= maximum)) throw new RangeError("Backoff needs 0 < initial <= maximum");
    if (!(factor >= 1)) throw new RangeError("Backoff factor must be at least 1");
    if (!(jitter >= 0 && jitter <= 1)) throw new RangeError("Backoff jitter must be between 0 and 1");
    this.initial = initial;
    this.maximum = maximum;
    this.factor = factor;
    this.jitter = jitter;
    this.random = random;
  }

  /**
   * The delay in ms before reconnection attempt number `attempt` (0 first).
   * @param {number} attempt
   * @returns {number}
   */
  delay(attempt) {
    const ceiling = Math.min(this.maximum, this.initial * this.factor ** Math.min(attempt, 64));
    return ceiling * (1 - this.jitter) + ceiling * this.jitter * this.random();
  }
}

/**
 * The socket URL for a room page at `pageUrl`: the page's own directory +
 * "socket/<room>/", ws: or wss: to match http: or https:, carrying the
 * page's `token` query parameter (a JWT) when there is one.
 * @param {string | URL} pageUrl
 * @param {string} room
 * @returns {URL}
 */
export function socketUrl(pageUrl, room) {
  const page = new URL(pageUrl);
  const url = new URL(`socket/${encodeURIComponent(room)}/`, page);
  url.protocol = page.protocol === "https:" ? "wss:" : "ws:";
  url.search = "";
  url.hash = "";
  const token = page.searchParams.get("token");
  if (token) url.searchParams.set("token", token);
  return url;
}

/**
 * The room a room page at `pageUrl` is for: its last path segment, decoded.
 * @param {string | URL} pageUrl
 * @returns {string}
 */
export function roomFromPage(pageUrl) {
  const path = new URL(pageUrl).pathname;
  const segment = path.slice(path.lastIndexOf("/") + 1);
  try {
    return decodeURIComponent(segment);
  } catch {
    return segment;
  }
}

/**
 * The expiry (unix seconds) of the earliest TURN credentials among
 * `iceServers` ("<expiry>:<peer id>" usernames, SPEC 5.2), or null.
 * @param {ReadonlyArray<{username?: string}>} iceServers
 * @returns {number | null}
 */
export function iceServersExpiry(iceServers) {
  const expiries = iceServers
    .map((server) => Number.parseInt(String(server?.username ?? "").split(":")[0], 10))
    .filter((expiry) => Number.isFinite(expiry) && expiry > 0);
  return expiries.length === 0 ? null : Math.min(...expiries);
}

/**
 * Whether `message` is a server event that really comes from the server
 * (SPEC 1.2): `from` null, or for `joined` equal to `data.peer_id`.  Other
 * events are always true (they are peers' messages).
 * @param {{event: string, data?: any, from?: string | null, to?: any}} message
 * @returns {boolean}
 */
export function fromServer(message) {
  if (!SERVER_EVENTS.includes(message.event)) return true;
  if (message.event === "joined") {
    const data = message.data;
    return typeof message.from === "string" && data !== null && typeof data === "object" && data.peer_id === message.from;
  }
  return message.from === null || message.from === undefined;
}

/**
 * One peer's signaling connection to one room, that comes back by itself.
 * Create it, add listeners with `on`, then `connect()`.  See
 * docs/client-js.md for every event and its payload.
 */
export class Signaling {
  /** @type {"idle" | "connecting" | "open" | "reconnecting" | "closed"} */
  state = "idle";
  /** This peer's id (set by the first `open`; kept across a resume). @type {string | null} */
  peerId = null;
  /** The other peers of the room, in the order they came. @type {string[]} */
  peers = [];
  /** RTCIceServer dictionaries for `new RTCPeerConnection({iceServers})`. @type {any[]} */
  iceServers = [];
  /** The resume token of the current connection (SPEC 5.4). @type {string | null} */
  resumeToken = null;
  /** The `data` of the last `authenticated`. @type {Record<string, any> | null} */
  authenticated = null;
  /** Why the client closed, once `state` is "closed". @type {any} */
  closeReason = null;

  #url;
  #options;
  #WebSocket;
  #reconnect;
  #listeners = new Map();
  #ws = null;
  #joined = false;
  #attempts = 0; // reconnection attempts since the last open
  #failures = 0; // attempts in a row that never opened a socket
  #retryTimer = null;
  #pingTimer = null;
  #pongTimer = null;
  #iceTimer = null;
  #outbox = [];
  #refusal = null; // details of a "Could not join room"
  #final = null; // the room was closed for good
  #online = () => this.retryNow();
  #readyPromise;
  #settleReady = { resolve: (_) => {}, reject: (_) => {} };

  /**
   * @param {string | URL | (() => string | URL)} url the room's socket URL
   *   (`ws(s)://host/socket/<room>/`), or a function asked at every attempt.
   * @param {Record<string, any>} [options] see rtcsignal.d.ts: token,
   *   WebSocket, reconnect, outboxLimit, pingInterval, pingTimeout,
   *   iceRefresh, logger.
   */
  constructor(url, options = {}) {
    this.#url = url;
    this.#options = options;
    const WS = options.WebSocket ?? globalThis.WebSocket;
    if (typeof WS !== "function") {
      throw new TypeError("no WebSocket class: pass one as the WebSocket option (in Node: ws)");
    }
    this.#WebSocket = WS;
    this.#reconnect = options.reconnect === false ? null : (options.reconnect ?? new Backoff());
    this.#readyPromise = new Promise((resolve, reject) => {
      this.#settleReady = { resolve, reject };
    });
    this.#readyPromise.catch(() => {}); // nobody has to wait for it
  }

  /** Resolves with the first `open`'s payload; rejects if the client closes first. */
  get ready() {
    return this.#readyPromise;
  }

  /** Whether messages are sent now (else they are queued). */
  get connected() {
    return this.state === "open" && this.#ws !== null && this.#ws.readyState === OPEN;
  }

  /** How many messages wait for the connection to come back. */
  get queued() {
    return this.#outbox.length;
  }

  /**
   * Listen to `event`; returns a function that stops listening.
   * @param {string} event
   * @param {(payload: any) => void} listener
   * @returns {() => void}
   */
  on(event, listener) {
    let set = this.#listeners.get(event);
    if (!set) this.#listeners.set(event, (set = new Set()));
    set.add(listener);
    return () => this.off(event, listener);
  }

  /**
   * @param {string} event
   * @param {(payload: any) => void} listener
   */
  off(event, listener) {
    this.#listeners.get(event)?.delete(listener);
  }

  /**
   * Listen to the next `event` only.
   * @param {string} event
   * @param {(payload: any) => void} listener
   * @returns {() => void}
   */
  once(event, listener) {
    const off = this.on(event, (payload) => {
      off();
      listener(payload);
    });
    return off;
  }

  /** Open the connection (once; later calls do nothing). */
  connect() {
    if (this.state !== "idle") return this;
    globalThis.addEventListener?.("online", this.#online);
    this.#setState("connecting");
    this.#open();
    return this;
  }

  /**
   * Send `event` with `data` to `to`: "all" (every other peer), a peer id,
   * or a list of ids.  Returns true when sent now, false when queued until
   * the connection is back (at most `outboxLimit`, 256, the oldest dropped).
   * @param {string} event
   * @param {any} [data]
   * @param {"all" | string | readonly string[]} [to]
   * @returns {boolean}
   */
  send(event, data = null, to = "all") {
    if (typeof event !== "string" || event.length < 1 || event.length > 64) {
      throw new TypeError("event must be a string of 1 to 64 characters");
    }
    if (SERVER_EVENTS.includes(event)) {
      throw new TypeError(`"${event}" is the server's event; use refreshIceServers() for ICE servers`);
    }
    if (this.state === "closed") throw new Error("the client is closed");
    const addressees = to === "all" ? "all" : typeof to === "string" ? [to] : [...to];
    return this.#sendOrQueue({ event, data, to: addressees });
  }

  /** Ask the server for fresh ICE servers (TURN credentials) now (SPEC 5.2). */
  refreshIceServers() {
    if (this.connected && this.peerId) this.#ws.send(JSON.stringify({ event: "ice_servers", to: [this.peerId] }));
  }

  /** Reconnect now if a reconnection is waiting (the browser's `online` does it). */
  retryNow() {
    if (this.#retryTimer === null || this.state === "closed") return;
    clearTimeout(this.#retryTimer);
    this.#retryTimer = null;
    this.#open();
  }

  /**
   * Leave for good: the socket is closed with `code` (1000, or 3000-4999 in
   * a browser), so the server lets the others know at once.
   * @param {number} [code]
   * @param {string} [reason]
   */
  close(code = CLOSE_NORMAL, reason = "") {
    if (this.state === "closed") return;
    const ws = this.#ws;
    this.#finish({ kind: "left", code, reason: reason || "closed by the client" });
    if (ws && ws.readyState <= OPEN) ws.close(code, reason);
  }

  // --- Events -------------------------------------------------------------

  #emit(event, payload) {
    for (const listener of [...(this.#listeners.get(event) ?? [])]) {
      try {
        listener(payload);
      } catch (err) {
        this.#log("error", `rtcsignal: a "${event}" listener failed`, err);
      }
    }
  }

  #log(level, ...args) {
    const logger = this.#options.logger === undefined ? console : this.#options.logger;
    logger?.[level]?.(...args);
  }

  #setState(state, detail = {}) {
    const previous = this.state;
    if (previous === state) return;
    this.state = state;
    this.#emit("state", { state, previous, ...detail });
  }

  // --- The socket -----------------------------------------------------------

  #socketUrl() {
    const base = typeof this.#url === "function" ? this.#url() : this.#url;
    const url = new URL(String(base));
    const token = typeof this.#options.token === "function" ? this.#options.token() : this.#options.token;
    if (token) url.searchParams.set("token", token);
    if (this.peerId && this.resumeToken) url.searchParams.set("resume", this.resumeToken);
    else url.searchParams.delete("resume");
    return url.href;
  }

  #open() {
    this.#retryTimer = null;
    this.#joined = false;
    this.#refusal = null;
    let ws;
    try {
      ws = new this.#WebSocket(this.#socketUrl());
    } catch (err) {
      this.#log("error", "rtcsignal: cannot open the socket", err);
      this.#finish({ kind: "error", code: null, reason: String(err?.message ?? err) });
      return;
    }
    this.#ws = ws;
    let opened = false;
    let status = null;
    ws.onopen = () => {
      opened = true;
      this.#failures = 0;
      this.#startKeepalive(DEFAULT_PING_MS, DEFAULT_PING_MS);
    };
    ws.onmessage = (event) => {
      if (ws === this.#ws) this.#receive(event.data);
    };
    ws.onerror = (event) => {
      // Node's ws says why an upgrade was refused; a browser never does.
      const match = /Unexpected server response: (\d+)/.exec(String(event?.message ?? event?.error?.message ?? ""));
      if (match) status = Number(match[1]);
    };
    ws.onclose = (event) => {
      if (ws !== this.#ws) return;
      this.#lost(opened, event?.code ?? null, event?.reason ?? "", status);
    };
  }

  #detach() {
    const ws = this.#ws;
    this.#ws = null;
    this.#stopKeepalive();
    if (ws) ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
    return ws;
  }

  #lost(opened, code, reason, status) {
    const joined = this.#joined;
    this.#detach();
    this.#joined = false;
    if (this.state === "closed") return;
    if (!opened) this.#failures += 1;
    // Refusals: what another attempt will not change.
    if (status !== null && REFUSAL_STATUSES.has(status)) {
      return this.#finish({ kind: "refused", code, reason: `upgrade refused with HTTP ${status}`, status });
    }
    if (this.#refusal !== null) {
      return this.#finish({ kind: "join_refused", code, reason: "could not join the room", details: this.#refusal });
    }
    if (this.#final !== null) {
      return this.#finish({ kind: "room_closed", code, reason: "room closed", details: this.#final });
    }
    if (code === CLOSE_POLICY) {
      return this.#finish({ kind: "kicked", code, reason: reason || "closed by the server" });
    }
    const delay = this.#reconnect?.delay(this.#attempts);
    if (delay === null || delay === undefined || !Number.isFinite(delay)) {
      return this.#finish({ kind: "lost", code, reason: reason || "connection lost", status: status ?? undefined });
    }
    this.#attempts += 1;
    this.#retryTimer = setTimeout(() => this.#open(), delay);
    const detail = { attempt: this.#attempts, delay, failures: this.#failures, code, reason, status, joined };
    this.#setState("reconnecting", detail);
    this.#emit("reconnecting", detail);
  }

  #finish(reason) {
    if (this.state === "closed") return;
    clearTimeout(this.#retryTimer);
    this.#retryTimer = null;
    clearTimeout(this.#iceTimer);
    globalThis.removeEventListener?.("online", this.#online);
    this.#detach();
    this.closeReason = reason;
    this.#outbox.length = 0;
    this.#setState("closed", { reason });
    this.#emit("closed", reason);
    this.#settleReady.reject(Object.assign(new Error(`rtcsignal: closed (${reason.kind}): ${reason.reason}`), { reason }));
  }

  // --- Messages ---------------------------------------------------------------

  #receive(frame) {
    this.#alive();
    if (frame === "pong") return;
    let message;
    try {
      message = JSON.parse(typeof frame === "string" ? frame : String(frame));
    } catch {
      this.#log("warn", "rtcsignal: not JSON", frame);
      return;
    }
    if (message === null || typeof message !== "object" || typeof message.event !== "string") return;
    const { event, data = null, from = null, to = null } = message;
    message = { event, data, from, to };
    if (!fromServer(message)) {
      // A peer's message dressed up as the server's: never acted upon.
      this.#log("warn", `rtcsignal: ignored a "${event}" that did not come from the server`);
      return;
    }
    switch (event) {
      case "authenticated":
        return this.#onAuthenticated(data);
      case "joined":
      case "left":
        return this.#onPeer(event, data);
      case "ice_servers":
        if (Array.isArray(data)) this.#setIceServers(data);
        return;
      case "error":
        return this.#onError(data);
      default:
        this.#emit(`message:${event}`, message);
        this.#emit("message", message);
    }
  }

  #onAuthenticated(data) {
    if (data === null || typeof data !== "object" || typeof data.peer_id !== "string") return;
    const previousPeerId = this.peerId;
    const resumed = previousPeerId !== null && data.peer_id === previousPeerId;
    this.#joined = true;
    this.#attempts = 0;
    this.#failures = 0;
    this.peerId = data.peer_id;
    this.resumeToken = typeof data.resume_token === "string" && data.resume_token ? data.resume_token : null;
    this.authenticated = { ...data };
    this.peers = Array.isArray(data.peers) ? data.peers.filter((p) => typeof p === "string" && p !== data.peer_id) : [];
    const interval = Number(this.#options.pingInterval ?? (Number(data.ping_interval) * 1000 || DEFAULT_PING_MS));
    const timeout = Number(this.#options.pingTimeout ?? (Number(data.ping_timeout) * 1000 || DEFAULT_PING_MS));
    this.#startKeepalive(interval, timeout);
    // What waited for the connection: replayed when this is still the same
    // peer (or the first join); a new identity drops it (it was meant for
    // the peers of the old one).
    const pending = this.#outbox.splice(0);
    const replay = previousPeerId === null || resumed;
    this.#setIceServers(Array.isArray(data.ice_servers) ? data.ice_servers : [], { quiet: true });
    const payload = {
      peerId: this.peerId,
      peers: [...this.peers],
      iceServers: this.iceServers,
      resumed,
      previousPeerId: resumed ? null : previousPeerId,
      dropped: replay ? 0 : pending.length,
    };
    this.#setState("open", { resumed });
    if (replay) for (const message of pending) this.#sendOrQueue(message);
    this.#emit("open", payload);
    if (resumed) this.#emit("resumed", payload);
    this.#emit("peers", { peers: [...this.peers] });
    this.#emit("ice_servers", { iceServers: this.iceServers });
    this.#settleReady.resolve(payload);
  }

  #onPeer(event, data) {
    const peerId = data?.peer_id;
    if (typeof peerId !== "string" || peerId === this.peerId) return;
    const known = this.peers.includes(peerId);
    if (event === "joined" && !known) this.peers.push(peerId);
    else if (event === "left" && known) this.peers.splice(this.peers.indexOf(peerId), 1);
    else if (event === "left") return;
    this.#emit(event, { peerId });
    this.#emit("peers", { peers: [...this.peers] });
  }

  #onError(data) {
    const description = typeof data?.description === "string" ? data.description : String(data?.description);
    const details = data?.details ?? null;
    if (description === ERRORS.COULD_NOT_JOIN) this.#refusal = details ?? "refused";
    else if (description === ERRORS.ROOM_CLOSED && details !== "shutdown") this.#final = details ?? "normal";
    this.#emit("error", { description, details });
  }

  #sendOrQueue(message) {
    if (this.connected) {
      this.#ws.send(JSON.stringify(message));
      return true;
    }
    this.#outbox.push(message);
    const limit = this.#options.outboxLimit ?? 256;
    while (this.#outbox.length > limit) this.#outbox.shift();
    return false;
  }

  // --- ICE servers ------------------------------------------------------------

  #setIceServers(iceServers, { quiet = false } = {}) {
    this.iceServers = iceServers;
    clearTimeout(this.#iceTimer);
    this.#iceTimer = null;
    // TURN credentials expire ("<expiry>:<peer id>" usernames): ask for
    // fresh ones once `ratio` of their life left has passed.
    const expiry = iceServersExpiry(iceServers);
    if (expiry !== null && this.#options.iceRefresh !== false) {
      const { ratio = 0.8, minDelay = 5000 } = this.#options.iceRefresh ?? {};
      const delay = Math.max(minDelay, (expiry * 1000 - Date.now()) * ratio);
      this.#iceTimer = setTimeout(() => this.refreshIceServers(), Math.min(delay, 2 ** 31 - 1));
    }
    if (!quiet) this.#emit("ice_servers", { iceServers });
  }

  // --- Keepalive ----------------------------------------------------------------

  // The server pings us at the WebSocket level, which browsers and ws answer
  // by themselves; this is the other direction: a "ping" text frame every
  // interval, and a socket silent for the timeout after one counts as lost.
  #startKeepalive(intervalMs, timeoutMs) {
    this.#stopKeepalive();
    if (!(intervalMs > 0)) return;
    const interval = Math.max(100, intervalMs);
    const timeout = Math.max(100, timeoutMs > 0 ? timeoutMs : DEFAULT_PING_MS);
    this.#pingTimer = setInterval(() => {
      const ws = this.#ws;
      if (!ws || ws.readyState !== OPEN) return;
      ws.send("ping");
      if (this.#pongTimer === null) {
        this.#pongTimer = setTimeout(() => {
          this.#log("warn", "rtcsignal: no answer to ping; reconnecting");
          const lost = this.#ws;
          this.#lost(true, null, "no answer to ping", null);
          lost?.close();
        }, timeout);
      }
    }, interval);
  }

  #alive() {
    clearTimeout(this.#pongTimer);
    this.#pongTimer = null;
  }

  #stopKeepalive() {
    clearInterval(this.#pingTimer);
    this.#pingTimer = null;
    this.#alive();
  }
}

/**
 * Create a client and connect it: `connect(url, options)` is
 * `new Signaling(url, options).connect()`.  Add listeners in the same
 * task (before any event can come), or use `new Signaling` and `connect()`.
 * @param {string | URL | (() => string | URL)} url
 * @param {Record<string, any>} [options]
 * @returns {Signaling}
 */
export function connect(url, options) {
  return new Signaling(url, options).connect();
}
