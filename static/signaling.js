// The WebSocket to the signaling server: JSON messages in and out, a
// keepalive, and reconnection with exponential backoff.

/**
 * The socket URL for a room page at `pageUrl`: the page's own directory +
 * "socket/<room>/", ws: or wss: to match http: or https:, carrying the page's
 * `token` query parameter (a JWT) when there is one.
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

/** The room a room page at `pageUrl` is for: its last path segment, decoded. */
export function roomFromPage(pageUrl) {
  const path = new URL(pageUrl).pathname;
  const segment = path.slice(path.lastIndexOf("/") + 1);
  try {
    return decodeURIComponent(segment);
  } catch {
    return segment;
  }
}

const FIRST_DELAY_MS = 500;
const MAX_DELAY_MS = 10000;
// Until the server says (authenticated.data.ping_interval / ping_timeout).
const KEEPALIVE_MS = 20000;
const KEEPALIVE_TIMEOUT_MS = 10000;

/**
 * One signaling connection that comes back by itself.
 *
 * Handlers: `message(msg)` for each JSON message, `open()`, and
 * `disconnected(retryInMs, failures)` when the socket is lost and a new
 * attempt is scheduled (`failures`: attempts in a row that did not open).  `url()` is asked for the URL at every attempt, so it can add a
 * resume token.  `stop()` ends it for good.
 */
export class Signaling {
  #url;
  #handlers;
  #ws = null;
  #attempt = 0;
  #failures = 0;
  #retryTimer = null;
  #keepaliveTimer = null;
  #pongTimer = null;
  #stopped = false;
  #keepaliveMs = KEEPALIVE_MS;
  #keepaliveTimeoutMs = KEEPALIVE_TIMEOUT_MS;

  constructor(url, handlers) {
    this.#url = url;
    this.#handlers = handlers;
    window.addEventListener("online", () => this.#retryNow());
  }

  get connected() {
    return this.#ws !== null && this.#ws.readyState === WebSocket.OPEN;
  }

  start() {
    this.#stopped = false;
    this.#connect();
  }

  /** Send a JSON message; false if the socket is not open (it is dropped). */
  send(message) {
    if (!this.connected) return false;
    this.#ws.send(JSON.stringify(message));
    return true;
  }

  /**
   * Close for good with `code` (1000 or 3000-4999, the codes a script may
   * use; 1000: the server lets the others know at once) and `reason`.
   */
  stop(code = 1000, reason = "") {
    this.#stopped = true;
    clearTimeout(this.#retryTimer);
    this.#stopKeepalive();
    const ws = this.#ws;
    this.#ws = null;
    if (ws) {
      ws.onclose = ws.onerror = ws.onmessage = ws.onopen = null;
      if (ws.readyState === WebSocket.CONNECTING || ws.readyState === WebSocket.OPEN) {
        ws.close(code, reason);
      }
    }
  }

  /**
   * Tune the keepalive to the server's: a "ping" frame as often as it pings
   * us, and a socket silent for its ping timeout after one counts as lost.
   */
  setKeepalive(intervalSeconds, timeoutSeconds) {
    const interval = Number(intervalSeconds) * 1000;
    const timeout = Number(timeoutSeconds) * 1000;
    if (interval > 0) this.#keepaliveMs = Math.max(1000, interval);
    if (timeout > 0) this.#keepaliveTimeoutMs = Math.max(1000, timeout);
    if (this.#keepaliveTimer !== null) this.#startKeepalive();
  }

  /** Stop reconnecting after the current connection closes. */
  finish() {
    this.#stopped = true;
    clearTimeout(this.#retryTimer);
  }

  #connect() {
    this.#retryTimer = null;
    let ws;
    try {
      ws = new WebSocket(this.#url());
    } catch (err) {
      console.error("signaling: cannot open the socket", err);
      this.#lost(false);
      return;
    }
    this.#ws = ws;
    let opened = false;
    ws.onopen = () => {
      opened = true;
      this.#attempt = 0;
      this.#failures = 0;
      this.#startKeepalive();
      this.#handlers.open?.();
    };
    ws.onmessage = (event) => this.#receive(event.data);
    ws.onclose = (event) => {
      if (ws !== this.#ws) return;
      console.info(`signaling: socket closed (${event.code})`);
      this.#lost(opened);
    };
  }

  #receive(frame) {
    this.#alive();
    if (frame === "pong") return;
    let message;
    try {
      message = JSON.parse(frame);
    } catch {
      console.warn("signaling: not JSON", frame);
      return;
    }
    if (message && typeof message.event === "string") this.#handlers.message(message);
  }

  #lost(opened) {
    this.#stopKeepalive();
    const ws = this.#ws;
    this.#ws = null;
    // A refused upgrade (401, 403, 404...) looks the same as a server that is
    // down: the socket closes without ever opening.
    if (!opened) this.#failures += 1;
    if (ws) ws.onclose = ws.onerror = ws.onmessage = ws.onopen = null;
    if (this.#stopped) return;
    // Exponential backoff with jitter, so a restarted server is not hit by
    // every client at the same instant.
    const ceiling = Math.min(MAX_DELAY_MS, FIRST_DELAY_MS * 2 ** this.#attempt);
    const delay = Math.round(ceiling / 2 + (Math.random() * ceiling) / 2);
    this.#attempt += 1;
    this.#retryTimer = setTimeout(() => this.#connect(), delay);
    this.#handlers.disconnected?.(delay, this.#failures);
  }

  #retryNow() {
    if (this.#stopped || this.#retryTimer === null) return;
    clearTimeout(this.#retryTimer);
    this.#connect();
  }

  // The server pings us at the WebSocket level, which the browser answers by
  // itself; this is the other direction: a "ping" text frame every interval
  // (20 s until the server says), and a socket that stays silent for the
  // timeout after one is treated as lost.
  #startKeepalive() {
    this.#stopKeepalive();
    this.#keepaliveTimer = setInterval(() => {
      if (!this.connected) return;
      this.#ws.send("ping");
      if (this.#pongTimer === null) {
        this.#pongTimer = setTimeout(() => {
          console.warn("signaling: no answer to ping; reconnecting");
          const ws = this.#ws;
          this.#lost(true);
          ws?.close();
        }, this.#keepaliveTimeoutMs);
      }
    }, this.#keepaliveMs);
  }

  #alive() {
    clearTimeout(this.#pongTimer);
    this.#pongTimer = null;
  }

  #stopKeepalive() {
    clearInterval(this.#keepaliveTimer);
    this.#keepaliveTimer = null;
    this.#alive();
  }
}
