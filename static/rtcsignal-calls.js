// rtcsignal-calls: video calls with every peer of a room, on rtcsignal.js.
//
// One RTCPeerConnection per remote peer (a full mesh), negotiated with the
// "perfect negotiation" pattern (the example of that name in the WebRTC 1.0
// specification), so either side may (re)negotiate at any time without glare;
// rebuilt from scratch after an outage; each with the verification code of
// SPEC 5.8 (verify.js).  It speaks the room page's conventions
// (docs/room-page.md), so it calls and is called by the room page.
//
//   import { Signaling } from "./rtcsignal.js";
//   import { Calls, createCertificate } from "./rtcsignal-calls.js";
//   const client = new Signaling(url);
//   const calls = new Calls(client, { stream, certificate: await createCertificate() });
//   calls.on("added", ({ call }) => show(call.peerId, call.remoteStream));
//   client.connect();
//
// Who is polite: the peer that was already in the room.  The newcomer (the
// one that got the other's id in `authenticated.data.peers`) is impolite and
// starts the negotiation; the peer already there (that got `joined`) is
// polite: it waits for the newcomer's offer and, should both offer at once
// (say the polite side tired of waiting), it rolls its own offer back and
// answers.  Both sides derive their role from the server's total order of
// joins, so they always agree.
//
// Coming back after a network outage: ICE restarts do not work between every
// pair of browsers (one offered by Chromium to Firefox may leave both
// "connected" with no media flowing, or fail to apply), so calls never
// restart ICE.  Instead a health check (every second) watches the
// connection state and, from getStats(), whether the video the other side
// says it sends arrives; when the call has been unwell for a while, either
// side rebuilds it: a fresh RTCPeerConnection, negotiated from scratch, and
// a "reset" message (data: {epoch}) that makes the other side rebuild too.
// Every description and candidate carries the `epoch` (how many resets this
// call has had) of the connection it belongs to; those of an older one are
// dropped.  Both sides may reset at once: each adopts the highest epoch it
// has seen, so they end on the same one.  A rebuilt connection has a new
// DTLS session, so its verification code is worked out afresh.

import { VerifiedChannel } from "./verify.js";

const KINDS = /** @type {const} */ (["audio", "video"]);
const SIGNALS = new Set(["offer", "answer", "description", "candidate", "reset"]);

/** The timings of a call, in ms; each can be changed in `new Calls(client, {timings})`. */
export const TIMINGS = Object.freeze({
  // If the newcomer's offer has not come by then, the polite side offers
  // itself (a newcomer that does not follow these conventions, a lost message).
  offerWait: 4000,
  // The health check: how often, how long a connection that worked may be
  // unwell (not connected, or no video arriving) before it is rebuilt, how
  // long a new one may take to work, and how soon after a rebuild another may come.
  healthCheck: 1000,
  unwell: 5000,
  setup: 10000,
  resetBackoff: 3000,
});

/**
 * A DTLS certificate for all of a page's calls (ECDSA P-256).  Given to
 * `Calls`, it lets every call work out its verification code; without one
 * the codes are "failed".
 * @returns {Promise<RTCCertificate>}
 */
export function createCertificate() {
  return RTCPeerConnection.generateCertificate(/** @type {any} */ ({ name: "ECDSA", namedCurve: "P-256" }));
}

/** The call with one remote peer: its current RTCPeerConnection and what it shows. */
export class Call {
  /**
   * Made by `Calls`; not to be constructed by applications.
   * @param {{peerId: string, polite: boolean, iceServers: RTCIceServer[], certificate: RTCCertificate | null,
   *   media: LocalMedia, timings: typeof TIMINGS, send: (event: string, data: any) => void, onChange: (why: string) => void}} options
   */
  constructor({ peerId, polite, iceServers, certificate, media, timings, send, onChange }) {
    /** The remote peer's id. */
    this.peerId = peerId;
    /** Whether this side yields in a glare (it was in the room first). */
    this.polite = polite;
    /** Whether the call has ended. */
    this.closed = false;
    /** How many times the call was rebuilt. */
    this.epoch = 0;
    /** What the other side last said it sends ({audio, video}), or null. @type {{audio: boolean, video: boolean} | null} */
    this.remoteMedia = null;
    /** The remote peer's media (a new stream after a rebuild). @type {MediaStream} */
    this.remoteStream = new MediaStream();
    /** @type {RTCPeerConnection} */
    this.pc = /** @type {any} */ (null);
    /** The verification code exchange: {state, code, reason, describe()}. @type {VerifiedChannel} */
    this.verification = /** @type {any} */ (null);
    this._certificate = certificate;
    this._send = send;
    this._media = media;
    this._timings = timings;
    this._onChange = onChange;
    this._inbox = Promise.resolve();
    /** @type {any} */
    this._offerTimer = null;
    this._resetAt = -Infinity;
    this._checking = false;
    this._connect({ iceServers });
    this._healthTimer = setInterval(() => this._checkHealth(), timings.healthCheck);
  }

  /** "new", "connecting", "connected", "disconnected", "failed" or "closed". */
  get state() {
    return this.closed ? "closed" : this.pc.connectionState;
  }

  /**
   * Rebuild the call from scratch and have the other side do the same;
   * `why` goes to the console.
   * @param {string} [why]
   */
  reset(why = "asked to") {
    if (this.closed) return;
    this.epoch += 1;
    console.info(`call ${this.peerId}: ${why}; rebuilding the connection (epoch ${this.epoch})`);
    this._send("reset", { epoch: this.epoch });
    this._rebuild();
  }

  /** End the call (the remote peer left, or the room is gone). */
  close() {
    if (this.closed) return;
    this.closed = true;
    clearTimeout(this._offerTimer);
    clearInterval(this._healthTimer);
    this._disconnect();
    this._onChange("closed");
  }

  // --- Inside -----------------------------------------------------------------

  /** @param {RTCConfiguration} configuration */
  _connect(configuration) {
    this.remoteStream = new MediaStream();
    const certificate = this._certificate;
    const certificates = certificate ? [certificate] : undefined;
    const pc = (this.pc = new RTCPeerConnection({ ...configuration, certificates }));
    // Its channel is made with the media (_attachMedia), so the first offer
    // or answer carries it.
    this.verification = new VerifiedChannel(pc, certificate, () => this._onChange("verification"));
    this._makingOffer = false;
    this._ignoreOffer = false;
    this._settingRemoteAnswerPending = false;
    this._attached = false;
    this._createdAt = performance.now();
    /** @type {number | null} when it last was connected with the expected media */
    this._wellAt = null;
    this._videoReceived = -1;

    pc.onnegotiationneeded = () => this._negotiate(pc);
    pc.onicecandidate = ({ candidate }) => {
      if (candidate) this._send("candidate", { ...candidate.toJSON(), epoch: this.epoch });
    };
    const remoteStream = this.remoteStream;
    pc.ontrack = ({ track }) => {
      if (!remoteStream.getTracks().includes(track)) remoteStream.addTrack(track);
      track.addEventListener("ended", () => {
        remoteStream.removeTrack(track);
        this._onChange("track");
      });
      this._onChange("track");
    };
    pc.onconnectionstatechange = () => {
      if (pc !== this.pc) return;
      if (pc.connectionState === "failed") {
        // Shown as failed before the call is rebuilt on a new connection
        // (which may be at once), whatever the verification was doing.
        this.verification.fail("the connection failed");
        this._resetSoon("the connection failed");
      }
      this._onChange("connection");
    };

    clearTimeout(this._offerTimer);
    if (this.polite) {
      this._offerTimer = setTimeout(() => this._attachMedia(), this._timings.offerWait);
    } else {
      this._attachMedia();
    }
  }

  /** Let the RTCPeerConnection go (it has been replaced, or the call ends). */
  _disconnect() {
    const pc = this.pc;
    pc.onnegotiationneeded = pc.onicecandidate = pc.ontrack = pc.onconnectionstatechange = null;
    this.verification.close();
    pc.close();
    for (const track of this.remoteStream.getTracks()) track.stop();
  }

  _rebuild() {
    const configuration = this.pc.getConfiguration();
    // A connection given up before it was verified shows as failed (if only
    // for a moment) whatever made it go: failed, stalled, or rebuilt by the
    // other side.
    this.verification.fail("the connection was rebuilt before it was verified");
    this._disconnect();
    this._resetAt = performance.now();
    this._connect({ iceServers: configuration.iceServers ?? [] });
    this._onChange("rebuilt");
  }

  /**
   * Make sure there is one audio and one video transceiver carrying the
   * local tracks (or receiving only, for what the local side cannot send).
   * The impolite side does it at once, which makes it offer; the polite side
   * does it when the offer has come, so its answer carries its media.
   */
  _attachMedia() {
    if (this.closed) return;
    clearTimeout(this._offerTimer);
    this._attached = true;
    this.verification.createChannel();
    for (const kind of KINDS) {
      const direction = this._media.sending[kind] ? "sendrecv" : "recvonly";
      const track = this._media.tracks[kind];
      const transceiver = this._transceiver(kind);
      if (transceiver) {
        if (transceiver.direction !== direction) transceiver.direction = direction;
        if (transceiver.sender.track !== track) {
          transceiver.sender.replaceTrack(track).catch((err) => console.warn(err));
        }
      } else {
        this.pc.addTransceiver(track ?? kind, {
          direction,
          streams: this._media.stream ? [this._media.stream] : [],
        });
      }
    }
  }

  /**
   * Send `track` (or nothing, for null) as this call's `kind`, without renegotiating.
   * @param {"audio" | "video"} kind
   * @param {MediaStreamTrack | null} track
   */
  async _replaceTrack(kind, track) {
    const transceiver = this._transceiver(kind);
    if (transceiver && !this.closed) await transceiver.sender.replaceTrack(track);
  }

  /**
   * A signaling message from this peer, handled after the ones before it.
   * @param {string} event
   * @param {any} data
   */
  _receive(event, data) {
    this._inbox = this._inbox
      .then(() => this._handle(event, data))
      .catch((err) => console.warn(`call ${this.peerId}: ${event}`, err));
    return this._inbox;
  }

  /** @param {string} kind */
  _transceiver(kind) {
    return this.pc
      .getTransceivers()
      .find(
        // (`stopped`: browsers from before currentDirection "stopped" existed.)
        (t) => t.receiver.track.kind === kind && !(/** @type {any} */ (t).stopped) && t.currentDirection !== "stopped",
      );
  }

  /** @param {RTCPeerConnection} pc */
  async _negotiate(pc) {
    if (this.closed || pc !== this.pc) return;
    try {
      this._makingOffer = true;
      await pc.setLocalDescription();
      if (pc === this.pc) this._sendDescription();
    } catch (err) {
      if (pc === this.pc) console.warn(`call ${this.peerId}: could not offer`, err);
    } finally {
      if (pc === this.pc) this._makingOffer = false;
    }
  }

  /**
   * @param {string} event
   * @param {any} data
   */
  async _handle(event, data) {
    if (this.closed) return;
    // What belongs to a connection we already replaced is dropped; a newer
    // one means the other side rebuilt the call (its "reset" comes first,
    // but a peer may skip it).  Messages without an epoch are for the
    // current connection.
    const epoch = Number.isInteger(data?.epoch) ? data.epoch : this.epoch;
    if (epoch < this.epoch) return;
    if (epoch > this.epoch) {
      console.info(`call ${this.peerId}: the other side rebuilt the connection (epoch ${epoch})`);
      this.epoch = epoch;
      this._rebuild();
    }
    if (event === "reset") return;
    const pc = this.pc;
    if (event === "candidate") {
      const { epoch: _, ...candidate } = data ?? {};
      try {
        await pc.addIceCandidate(data ? candidate : /** @type {any} */ (null));
      } catch (err) {
        // Candidates of an offer we ignored fail to apply; that is expected.
        if (!this._ignoreOffer && pc === this.pc) throw err;
      }
      return;
    }
    // "offer", "answer", or "description" carrying either.
    const description = data;
    if (!description || (description.type !== "offer" && description.type !== "answer")) {
      console.warn(`call ${this.peerId}: not a session description`, data);
      return;
    }
    const readyForOffer =
      !this._makingOffer && (pc.signalingState === "stable" || this._settingRemoteAnswerPending);
    const offerCollision = description.type === "offer" && !readyForOffer;
    this._ignoreOffer = !this.polite && offerCollision;
    if (this._ignoreOffer) return;
    this._settingRemoteAnswerPending = description.type === "answer";
    // A polite peer in collision rolls its own offer back implicitly here.
    await pc.setRemoteDescription({ type: description.type, sdp: description.sdp });
    if (pc !== this.pc) return;
    this._settingRemoteAnswerPending = false;
    if (description.type === "offer") {
      if (!this._attached) this._attachMedia();
      await pc.setLocalDescription();
      if (pc === this.pc) this._sendDescription();
    }
  }

  _sendDescription() {
    const description = this.pc.localDescription;
    if (!description) return;
    const { type, sdp } = description;
    this._send(type, { type, sdp, epoch: this.epoch });
  }

  /** Reset now, or at the next health check once the backoff has passed. @param {string} why */
  _resetSoon(why) {
    if (performance.now() - this._resetAt >= this._timings.resetBackoff) this.reset(why);
  }

  /** Whether the other side sends us video: it says so, and our video transceiver receives. */
  _expectsVideo() {
    if (this.remoteMedia?.video !== true) return false;
    const direction = this._transceiver("video")?.currentDirection;
    return direction === "sendrecv" || direction === "recvonly";
  }

  /**
   * Every second: is the connection up, with the other side's video
   * arriving (its received bytes growing)?  A call unwell for `unwell` ms
   * after it worked, or not well `setup` ms after it was built, is rebuilt.
   */
  async _checkHealth() {
    if (this.closed || this._checking) return;
    const pc = this.pc;
    const { setup, unwell } = this._timings;
    this._checking = true;
    try {
      let well = pc.connectionState === "connected";
      if (well && this._expectsVideo()) {
        const stats = await pc.getStats();
        if (pc !== this.pc || this.closed) return;
        let received = 0;
        stats.forEach((report) => {
          if (report.type === "inbound-rtp" && report.kind === "video") {
            received += report.bytesReceived ?? 0;
          }
        });
        well = received > this._videoReceived && this._videoReceived >= 0;
        this._videoReceived = received;
      }
      const now = performance.now();
      if (well) {
        this._wellAt = now;
      } else if (this._wellAt === null ? now - this._createdAt > setup : now - this._wellAt > unwell) {
        this._resetSoon(
          this._wellAt === null
            ? `no working connection after ${setup / 1000} s`
            : `${pc.connectionState}, ${this._expectsVideo() ? "no video for" : "for"} ${unwell / 1000} s`,
        );
      }
    } catch (err) {
      console.warn(`call ${this.peerId}: health check`, err);
    } finally {
      this._checking = false;
    }
  }
}

/**
 * @typedef {{stream: MediaStream | null, tracks: {audio: MediaStreamTrack | null, video: MediaStreamTrack | null},
 *   sending: {audio: boolean, video: boolean}}} LocalMedia
 */

/**
 * Calls with every other peer of the room `client` (a `Signaling`) is in:
 * created as peers come (or are there), closed as they leave, kept across
 * a resume, and started afresh under a new peer id.  Create it before
 * `client.connect()`.
 */
export class Calls {
  /** @type {Map<string, Call>} */
  #calls = new Map();
  /** @type {Map<string, Set<(payload: any) => void>>} */
  #listeners = new Map();
  /** @type {LocalMedia} */
  #media = { stream: null, tracks: { audio: null, video: null }, sending: { audio: false, video: false } };
  /** @type {{audio: boolean, video: boolean}} */
  #mediaState = { audio: false, video: false };
  #client;
  #certificate;
  #timings;
  #unsubscribe;

  /**
   * @param {import("./rtcsignal.js").Signaling} client
   * @param {{stream?: MediaStream | null, certificate?: RTCCertificate | null, timings?: Partial<typeof TIMINGS>}} [options]
   */
  constructor(client, { stream = null, certificate = null, timings = {} } = {}) {
    this.#client = client;
    this.#certificate = certificate;
    this.#timings = { ...TIMINGS, ...timings };
    this.setLocalStream(stream);
    const subscriptions = [
      client.on("open", (payload) => this.#onOpen(payload)),
      client.on("joined", ({ peerId }) => {
        this.#ensure(peerId, true);
        this.#sendMediaState([peerId]);
      }),
      client.on("left", ({ peerId }) => this.#end(peerId)),
      client.on("ice_servers", ({ iceServers }) => this.#updateIceServers(iceServers)),
      client.on("message", (message) => this.#onMessage(message)),
      client.on("closed", () => this.closeAll()),
    ];
    this.#unsubscribe = () => subscriptions.forEach((off) => off());
  }

  /** The calls, by remote peer id (a copy). */
  get calls() {
    return new Map(this.#calls);
  }

  /** @param {string} peerId */
  get(peerId) {
    return this.#calls.get(peerId);
  }

  /** What this side says it sends ({audio, video}), as last set by `setMediaState`. */
  get mediaState() {
    return { ...this.#mediaState };
  }

  /**
   * Listen to `event` ("added", "removed", "changed", "verification",
   * "media"); returns a function that stops listening.
   * @param {string} event
   * @param {(payload: any) => void} listener
   * @returns {() => void}
   */
  on(event, listener) {
    let set = this.#listeners.get(event);
    if (!set) this.#listeners.set(event, (set = new Set()));
    set.add(listener);
    return () => set.delete(listener);
  }

  /**
   * The local media the calls made from now on send: the stream's first
   * audio and video tracks (a kind it lacks is received only).  Call it
   * before the client connects; later, change tracks with `replaceTrack`.
   * Also announces what is sent (`setMediaState`).
   * @param {MediaStream | null} stream
   */
  setLocalStream(stream) {
    this.#media.stream = stream;
    for (const kind of KINDS) {
      const track = stream?.getTracks().find((t) => t.kind === kind) ?? null;
      this.#media.tracks[kind] = track;
      this.#media.sending[kind] = track !== null;
    }
    this.setMediaState({ audio: this.#media.sending.audio, video: this.#media.sending.video });
  }

  /**
   * Send `track` as `kind` in every call, now and later (null: send nothing,
   * say a camera turned off), without renegotiating.
   * @param {"audio" | "video"} kind
   * @param {MediaStreamTrack | null} track
   */
  async replaceTrack(kind, track) {
    this.#media.tracks[kind] = track;
    await Promise.all([...this.#calls.values()].map((call) => call._replaceTrack(kind, track)));
  }

  /**
   * Tell every peer (and those who come later) whether the microphone and
   * camera are on: the "media" message of docs/room-page.md.
   * @param {{audio: boolean, video: boolean}} state
   */
  setMediaState({ audio, video }) {
    this.#mediaState = { audio: Boolean(audio), video: Boolean(video) };
    this.#sendMediaState("all");
  }

  /** End every call (the calls come back with the next `open`). */
  closeAll() {
    for (const peerId of [...this.#calls.keys()]) this.#end(peerId);
  }

  /** Stop following the client and end every call. */
  close() {
    this.#unsubscribe();
    this.closeAll();
  }

  // --- Inside -----------------------------------------------------------------

  /**
   * @param {string} event
   * @param {any} payload
   */
  #emit(event, payload) {
    for (const listener of [...(this.#listeners.get(event) ?? [])]) {
      try {
        listener(payload);
      } catch (err) {
        console.error(`rtcsignal-calls: a "${event}" listener failed`, err);
      }
    }
  }

  /** @param {{peers: string[], resumed: boolean}} payload */
  #onOpen({ peers, resumed }) {
    if (resumed) {
      // Same peer id: our calls are still valid; catch up with who left.
      for (const id of [...this.#calls.keys()]) if (!peers.includes(id)) this.#end(id);
      // Whoever we do not know yet joined while we were away: to them we are
      // the peer already there (they got us in their `authenticated`), so
      // they make the offer (queued for us, it comes next) and we are polite.
      // Were we impolite too, both sides would ignore each other's offer.
      for (const id of peers) this.#ensure(id, true);
    } else {
      // A new identity (first join, or the server forgot us): start afresh;
      // we are the newcomer for everyone already here: we make the offers.
      this.closeAll();
      for (const id of peers) this.#ensure(id, false);
    }
    this.#sendMediaState("all");
  }

  /** @param {{event: string, data: any, from: string | null}} message */
  #onMessage({ event, data, from }) {
    if (!from || from === this.#client.peerId) return;
    if (event === "media") {
      const call = this.#calls.get(from);
      if (!call || data === null || typeof data !== "object") return;
      call.remoteMedia = { audio: data.audio !== false, video: data.video !== false };
      this.#emit("media", { call, ...call.remoteMedia });
      this.#emit("changed", { call, why: "media" });
      return;
    }
    if (!SIGNALS.has(event)) return;
    let call = this.#calls.get(from);
    if (!call) {
      // Someone we were not told about offers: answer as the polite side.
      if (event !== "offer" && !(event === "description" && data?.type === "offer")) return;
      call = this.#ensure(from, true);
    }
    call._receive(event === "candidate" || event === "reset" ? event : "description", data);
  }

  /**
   * @param {string} peerId
   * @param {boolean} polite
   */
  #ensure(peerId, polite) {
    let call = this.#calls.get(peerId);
    if (call) return call;
    let lastVerification = "pending";
    /** @type {Call | null} */
    let created = null;
    created = new Call({
      peerId,
      polite,
      iceServers: this.#client.iceServers,
      certificate: this.#certificate,
      media: this.#media,
      timings: this.#timings,
      send: (event, data) => {
        if (this.#client.state !== "closed") this.#client.send(event, data, [peerId]);
      },
      onChange: (why) => {
        if (created === null || this.#calls.get(peerId) !== created) return;
        this.#emit("changed", { call: created, why });
        const { state, code, reason } = created.verification;
        if (why === "verification" || why === "rebuilt") {
          const key = `${state}:${code}:${created.epoch}`;
          if (key !== lastVerification) {
            lastVerification = key;
            this.#emit("verification", { call: created, state, code, reason });
          }
        }
      },
    });
    this.#calls.set(peerId, created);
    this.#emit("added", { call: created });
    return /** @type {Call} */ (created);
  }

  /** @param {string} peerId */
  #end(peerId) {
    const call = this.#calls.get(peerId);
    if (!call) return;
    this.#calls.delete(peerId);
    call.close();
    this.#emit("removed", { call });
  }

  /** @param {RTCIceServer[]} iceServers */
  #updateIceServers(iceServers) {
    for (const call of this.#calls.values()) {
      try {
        call.pc.setConfiguration({ ...call.pc.getConfiguration(), iceServers });
      } catch (err) {
        console.warn("rtcsignal-calls: cannot update ICE servers", err);
      }
    }
  }

  /** @param {"all" | string[]} to */
  #sendMediaState(to) {
    if (this.#client.state !== "open") return;
    this.#client.send("media", this.#mediaState, to);
  }
}
