// Types of rtcsignal.js, the signaling client of twisted-signal
// (docs/client-js.md).  Hand-written; `make lint` compiles a TypeScript
// example against them and checks the modules' JSDoc.

export declare const VERSION: string;

/** The events only the server may send (SPEC 1.2, 1.3). */
export declare const SERVER_EVENTS: readonly ["authenticated", "joined", "left", "error", "ice_servers"];

/** The exact `error` descriptions of the server. */
export declare const ERRORS: Readonly<{
  INVALID_JSON: "Invalid JSON";
  INVALID_MESSAGE: "Invalid message";
  NO_SUCH_PEER: "No such peer";
  COULD_NOT_JOIN: "Could not join room";
  ROOM_CLOSED: "Room closed";
  RATE_LIMITED: "Rate limited";
}>;

export type ErrorDescription = (typeof ERRORS)[keyof typeof ERRORS];

/** Room names, as the server accepts them in `/socket/<room>/` (SPEC 1.4). */
export declare const ROOM_NAME: RegExp;

/** Where a message goes: every other peer, one peer id, or several. */
export type Addressees = "all" | string | readonly string[];

/** A message from another peer (or, with `from` null, from the server's operator). */
export interface PeerMessage<T = unknown> {
  event: string;
  data: T;
  /** The sender's peer id, stamped by the server; null for the server's own. */
  from: string | null;
  /** The addressees as the sender gave them. */
  to: "all" | string[] | null;
}

/** An RTCIceServer dictionary, as the server hands them out. */
export interface IceServer {
  urls: string | string[];
  username?: string;
  credential?: string;
}

/** Anything that decides the delay before each reconnection attempt. */
export interface ReconnectPolicy {
  /** The delay in ms before attempt `attempt` (0 for the first); null or undefined: give up. */
  delay(attempt: number): number | null | undefined;
}

export interface BackoffOptions {
  /** ms; default 500 */
  initial?: number;
  /** ms; default 10000 */
  maximum?: number;
  /** default 2 */
  factor?: number;
  /** the random fraction of each delay, 0 to 1; default 0.5 */
  jitter?: number;
  /** a float in [0, 1); default Math.random */
  random?: () => number;
}

/** Capped exponential backoff with jitter: the Python client's constants. */
export declare class Backoff implements ReconnectPolicy {
  constructor(options?: BackoffOptions);
  readonly initial: number;
  readonly maximum: number;
  readonly factor: number;
  readonly jitter: number;
  readonly random: () => number;
  delay(attempt: number): number;
}

/** The WebSocket class to use: the browser's, or Node's `ws`. */
export interface WebSocketClass {
  new (url: string, protocols?: string | string[]): WebSocketLike;
}

/** What the client needs of a WebSocket. */
export interface WebSocketLike {
  readonly readyState: number;
  readonly url?: string;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((event: any) => void) | null;
  onmessage: ((event: { data: any }) => void) | null;
  onclose: ((event: { code: number; reason: string }) => void) | null;
  onerror: ((event: any) => void) | null;
}

export interface Logger {
  debug?(...args: unknown[]): void;
  info?(...args: unknown[]): void;
  warn?(...args: unknown[]): void;
  error?(...args: unknown[]): void;
}

export interface SignalingOptions {
  /** A JWT (SPEC 5.1), sent as the `token` query parameter; a function is asked at every attempt. */
  token?: string | null | (() => string | null | undefined);
  /** Default: globalThis.WebSocket (browsers, Node 22+); in Node 20, `ws`'s. */
  WebSocket?: WebSocketClass;
  /** Reconnection policy; default `new Backoff()`; false: never reconnect. */
  reconnect?: ReconnectPolicy | false;
  /** Messages kept while the connection is down; default 256 (the oldest are dropped). */
  outboxLimit?: number;
  /** ms between "ping" frames; default the server's `ping_interval` (20 s). */
  pingInterval?: number;
  /** ms a ping may stay unanswered before the connection counts as lost; default the server's (20 s). */
  pingTimeout?: number;
  /**
   * When to ask for fresh TURN credentials: once `ratio` (0.8) of their
   * remaining life has passed, at least `minDelay` ms (5000) after getting
   * them; false: never.
   */
  iceRefresh?: { ratio?: number; minDelay?: number } | false;
  /** Where the client's own log lines go; default console; null: nowhere. */
  logger?: Logger | null;
}

export type State = "idle" | "connecting" | "open" | "reconnecting" | "closed";

export type CloseKind =
  /** close() was called */
  | "left"
  /** the upgrade was refused with 400, 401, 403 or 404 (seen in Node; a browser cannot tell) */
  | "refused"
  /** "Could not join room": `details` is the reason, e.g. "room_is_full" */
  | "join_refused"
  /** "Room closed" / "normal": the room was stopped */
  | "room_closed"
  /** closed with 1008 by the server: kicked by an admin, or rate-limited for good */
  | "kicked"
  /** the reconnection policy gave up */
  | "lost"
  /** the socket could not even be created (a bad URL) */
  | "error";

export interface CloseReason {
  kind: CloseKind;
  /** The WebSocket close code, when there was one. */
  code: number | null;
  reason: string;
  /** The HTTP status of a refused upgrade. */
  status?: number;
  /** The server's details (join refusal reason, "normal"). */
  details?: unknown;
}

export interface OpenEvent {
  peerId: string;
  /** The other peers of the room. */
  peers: string[];
  iceServers: IceServer[];
  /** Same peer id as before the connection was lost (SPEC 5.4). */
  resumed: boolean;
  /** A new peer id after a lost connection (the resume window passed): the old one. */
  previousPeerId: string | null;
  /** Queued messages dropped because the peer id changed. */
  dropped: number;
}

export interface ReconnectingEvent {
  /** Attempts since the last open (1 for the first). */
  attempt: number;
  /** ms until this attempt. */
  delay: number;
  /** Attempts in a row whose socket never opened (a browser's only hint of a refusal). */
  failures: number;
  code: number | null;
  reason: string;
  /** The HTTP status of a refused upgrade that is retried (503, 500), in Node. */
  status: number | null;
  /** Whether the lost connection had joined the room. */
  joined: boolean;
}

export interface StateEvent {
  state: State;
  previous: State;
  [detail: string]: unknown;
}

export interface ServerError {
  description: ErrorDescription | string;
  details: unknown;
}

/** The client's events and their payloads; `message:<event>` for each peer message by name. */
export interface SignalingEvents {
  state: StateEvent;
  open: OpenEvent;
  resumed: OpenEvent;
  reconnecting: ReconnectingEvent;
  closed: CloseReason;
  joined: { peerId: string };
  left: { peerId: string };
  peers: { peers: string[] };
  ice_servers: { iceServers: IceServer[] };
  error: ServerError;
  message: PeerMessage<any>;
}

export type MessageEventName = `message:${string}`;

/** The socket URL for a room page: `<page directory>/socket/<room>/`, ws(s):, with the page's token. */
export declare function socketUrl(pageUrl: string | URL, room: string): URL;
/** The room of a room page: its last path segment, decoded. */
export declare function roomFromPage(pageUrl: string | URL): string;
/** The expiry (unix seconds) of the earliest TURN credentials, or null. */
export declare function iceServersExpiry(iceServers: ReadonlyArray<{ username?: string }>): number | null;
/** Whether a message claiming a server event comes from the server (SPEC 1.2). */
export declare function fromServer(message: { event: string; data?: unknown; from?: string | null }): boolean;

export declare class Signaling {
  constructor(url: string | URL | (() => string | URL), options?: SignalingOptions);
  readonly state: State;
  readonly peerId: string | null;
  readonly peers: readonly string[];
  readonly iceServers: IceServer[];
  readonly resumeToken: string | null;
  /** The `data` of the last `authenticated` (ping_interval, ... included). */
  readonly authenticated: Readonly<Record<string, unknown>> | null;
  readonly closeReason: CloseReason | null;
  /** Resolves with the first open; rejects (with `.reason`) if the client closes first. */
  readonly ready: Promise<OpenEvent>;
  /** Whether `send` sends now (else it queues). */
  readonly connected: boolean;
  /** Messages waiting for the connection. */
  readonly queued: number;

  on<K extends keyof SignalingEvents>(event: K, listener: (payload: SignalingEvents[K]) => void): () => void;
  on<T = any>(event: MessageEventName, listener: (message: PeerMessage<T>) => void): () => void;
  off<K extends keyof SignalingEvents>(event: K, listener: (payload: SignalingEvents[K]) => void): void;
  off(event: MessageEventName, listener: (message: PeerMessage<any>) => void): void;
  once<K extends keyof SignalingEvents>(event: K, listener: (payload: SignalingEvents[K]) => void): () => void;
  once<T = any>(event: MessageEventName, listener: (message: PeerMessage<T>) => void): () => void;

  /** Open the connection (once). */
  connect(): this;
  /** Sent now: true; queued until the connection is back: false.  Throws for a server event name. */
  send(event: string, data?: unknown, to?: Addressees): boolean;
  /** Ask the server for fresh ICE servers now. */
  refreshIceServers(): void;
  /** Reconnect now if a reconnection is waiting. */
  retryNow(): void;
  /** Leave for good (1000: the others get `left` at once). */
  close(code?: number, reason?: string): void;
}

/** `new Signaling(url, options).connect()`. */
export declare function connect(url: string | URL | (() => string | URL), options?: SignalingOptions): Signaling;
