// Types of rtcsignal-calls.js: calls with every peer of a room, on
// rtcsignal.js (docs/client-js.md).

import type { Signaling } from "./rtcsignal.js";

export interface Timings {
  /** ms the polite side waits for the newcomer's offer before offering itself; 4000 */
  offerWait: number;
  /** ms between health checks; 1000 */
  healthCheck: number;
  /** ms a call that worked may be unwell before it is rebuilt; 5000 */
  unwell: number;
  /** ms a new connection may take to work before it is rebuilt; 10000 */
  setup: number;
  /** ms at least between two rebuilds; 3000 */
  resetBackoff: number;
}

export declare const TIMINGS: Readonly<Timings>;

/** A DTLS certificate (ECDSA P-256) for all of a page's calls. */
export declare function createCertificate(): Promise<RTCCertificate>;

export type VerificationState = "pending" | "verified" | "failed";

/** The verification code exchange of one connection (SPEC 5.8). */
export interface Verification {
  readonly state: VerificationState;
  /** "NNNN-NNNN-NNNN" once verified. */
  readonly code: string | null;
  /** Why it failed. */
  readonly reason: string | null;
  /** Everything about the exchange, for tests and debugging. */
  describe(): {
    state: VerificationState;
    code: string | null;
    reason: string | null;
    committer: boolean | null;
    localFingerprint: string | null;
    remoteFingerprint: string | null;
    committerNonce: string | null;
    responderNonce: string | null;
  };
}

export interface MediaState {
  audio: boolean;
  video: boolean;
}

/** The call with one remote peer. */
export declare class Call {
  private constructor();
  readonly peerId: string;
  /** Whether this side yields in a glare (it was in the room first). */
  readonly polite: boolean;
  readonly closed: boolean;
  /** How many times the call was rebuilt. */
  readonly epoch: number;
  /** The current connection (a new one after a rebuild). */
  readonly pc: RTCPeerConnection;
  /** The remote peer's media (a new stream after a rebuild). */
  readonly remoteStream: MediaStream;
  /** What the other side last said it sends, or null. */
  readonly remoteMedia: MediaState | null;
  readonly verification: Verification;
  /** "new", "connecting", "connected", "disconnected", "failed" or "closed". */
  readonly state: RTCPeerConnectionState;
  /** Rebuild the connection, and have the other side do the same. */
  reset(why?: string): void;
}

export type ChangeReason = "connection" | "track" | "verification" | "rebuilt" | "media" | "closed";

export interface CallsEvents {
  /** A call began (a peer is there, or came). */
  added: { call: Call };
  /** A call ended (the peer left, or the client closed or changed its peer id). */
  removed: { call: Call };
  /** Something to render changed: connection state, remote stream, verification, media. */
  changed: { call: Call; why: ChangeReason };
  /** The verification code of a call's current connection changed state. */
  verification: { call: Call; state: VerificationState; code: string | null; reason: string | null };
  /** The other side said whether its microphone and camera are on. */
  media: { call: Call; audio: boolean; video: boolean };
}

export interface CallsOptions {
  /** The local media to send (its first audio and video tracks). */
  stream?: MediaStream | null;
  /** From createCertificate(): without one, verification codes fail. */
  certificate?: RTCCertificate | null;
  timings?: Partial<Timings>;
}

export declare class Calls {
  /** Create it before `client.connect()`. */
  constructor(client: Signaling, options?: CallsOptions);
  /** The calls by remote peer id (a copy). */
  readonly calls: Map<string, Call>;
  /** What this side says it sends. */
  readonly mediaState: MediaState;
  get(peerId: string): Call | undefined;
  on<K extends keyof CallsEvents>(event: K, listener: (payload: CallsEvents[K]) => void): () => void;
  /** The local media for calls made from now on; announces what is sent. */
  setLocalStream(stream: MediaStream | null): void;
  /** Send `track` (null: nothing) as `kind` in every call, without renegotiating. */
  replaceTrack(kind: "audio" | "video", track: MediaStreamTrack | null): Promise<void>;
  /** Tell every peer whether the microphone and camera are on ("media"). */
  setMediaState(state: MediaState): void;
  /** End every call (they come back with the next open). */
  closeAll(): void;
  /** Stop following the client and end every call. */
  close(): void;
}
