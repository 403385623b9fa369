// One RTCPeerConnection with one remote peer, negotiated with the "perfect
// negotiation" pattern (the example of that name in the WebRTC 1.0 specification),
// so either side may (re)negotiate at any time without glare.
//
// Who is polite: the peer that was already in the room.  The newcomer (the one
// that got the other's id in `authenticated.data.peers`) is impolite and starts
// the negotiation; the peer already there (that got `joined`) is polite: it
// waits for the newcomer's offer and, should both offer at once (say the
// polite side tired of waiting), it rolls its own offer back and answers.  Both sides derive
// their role from the server's total order of joins, so they always agree.
//
// Coming back after a network outage: ICE restarts do not work between every
// pair of browsers (one offered by Chromium to Firefox may leave both
// "connected" with no media flowing, or fail to apply), so this page never
// restarts ICE.  Instead a health check (every second) watches the
// connection state and, from getStats(), whether the video the other side
// says it sends arrives; when the call has been unwell for a while, either
// side rebuilds it: a fresh RTCPeerConnection, negotiated from scratch, and
// a "reset" message (data: {epoch}) that makes the other side rebuild too.
// Every description and candidate carries the `epoch` (how many resets this
// call has had) of the connection it belongs to; those of an older one are
// dropped.  Both sides may reset at once: each adopts the highest epoch it
// has seen, so they end on the same one.  A rebuilt connection has a new
// DTLS session, so its verification code (verify.js) is worked out afresh.

import { VerifiedChannel } from "./verify.js";

const KINDS = ["audio", "video"];
// If the newcomer's offer has not come by then, the polite side offers itself
// (a newcomer that does not follow this page's protocol, a lost message...).
const OFFER_WAIT_MS = 4000;
// The health check: how often, how long a connection that worked may be
// unwell (not connected, or no video arriving) before it is rebuilt, how long
// a new one may take to work, and how soon after a rebuild another may come.
const HEALTH_CHECK_MS = 1000;
const UNWELL_MS = 5000;
const SETUP_MS = 10000;
const RESET_BACKOFF_MS = 3000;

export class Call {
  /**
   * `send(event, data)` sends a signaling message to this peer;
   * `media` is the local media ({stream, tracks: {audio, video}, sending:
   * {audio, video}}); `onChange()` is called whenever the connection state
   * or the remote stream changes (the remote stream is a new one after a
   * reset).  `remoteMedia` is what the other side last said it sends
   * ({audio, video}, from its "media" message), or null.  `certificate` is
   * this page's own RTCCertificate: every connection of the call uses it, and
   * the verification code (verify.js) is derived from it and the other side's.
   */
  constructor({ peerId, polite, iceServers, certificate, media, send, onChange }) {
    this.peerId = peerId;
    this.polite = polite;
    this._certificate = certificate;
    this.closed = false;
    this.epoch = 0;
    this.remoteMedia = null;
    this._send = send;
    this._media = media;
    this._onChange = onChange;
    this._inbox = Promise.resolve();
    this._offerTimer = null;
    this._resetAt = -Infinity;
    this._checking = false;
    this._connect({ iceServers });
    this._healthTimer = setInterval(() => this._checkHealth(), HEALTH_CHECK_MS);
  }

  /** A fresh RTCPeerConnection for this call, negotiated from scratch. */
  _connect(configuration) {
    this.remoteStream = new MediaStream();
    const certificate = this._certificate;
    const certificates = certificate ? [certificate] : undefined;
    this.pc = new RTCPeerConnection({ ...configuration, certificates });
    // Its channel is made with the media (attachMedia), so the first offer
    // or answer carries it.
    this.verification = new VerifiedChannel(this.pc, certificate, () => this._onChange());
    this._makingOffer = false;
    this._ignoreOffer = false;
    this._settingRemoteAnswerPending = false;
    this._attached = false;
    this._createdAt = performance.now();
    this._wellAt = null; // when it last was connected with the expected media
    this._videoReceived = -1;

    const pc = this.pc;
    pc.onnegotiationneeded = () => this._negotiate(pc);
    pc.onicecandidate = ({ candidate }) => {
      if (candidate) this._send("candidate", { ...candidate.toJSON(), epoch: this.epoch });
    };
    const remoteStream = this.remoteStream;
    pc.ontrack = ({ track }) => {
      if (!remoteStream.getTracks().includes(track)) remoteStream.addTrack(track);
      track.addEventListener("ended", () => {
        remoteStream.removeTrack(track);
        this._onChange();
      });
      this._onChange();
    };
    pc.onconnectionstatechange = () => this._connectionChanged(pc);

    clearTimeout(this._offerTimer);
    if (this.polite) {
      this._offerTimer = setTimeout(() => this.attachMedia(), OFFER_WAIT_MS);
    } else {
      this.attachMedia();
    }
  }

  /** Let the RTCPeerConnection go (it has been replaced, or the call ends). */
  _disconnect() {
    const pc = this.pc;
    pc.onnegotiationneeded = pc.onicecandidate = pc.ontrack = null;
    pc.onconnectionstatechange = null;
    this.verification.close();
    pc.close();
    for (const track of this.remoteStream.getTracks()) track.stop();
  }

  /**
   * Rebuild the call from scratch and have the other side do the same
   * (see the top of this file); `why` goes to the console.
   */
  reset(why) {
    if (this.closed) return;
    this.epoch += 1;
    console.info(`call ${this.peerId}: ${why}; rebuilding the connection (epoch ${this.epoch})`);
    this._send("reset", { epoch: this.epoch });
    this._rebuild();
  }

  _rebuild() {
    const configuration = this.pc.getConfiguration();
    this._disconnect();
    this._resetAt = performance.now();
    this._connect({ iceServers: configuration.iceServers ?? [] });
    this._onChange();
  }

  get state() {
    return this.closed ? "closed" : this.pc.connectionState;
  }

  /**
   * Make sure there is one audio and one video transceiver carrying the
   * local tracks (or receiving only, for what the local side cannot send).
   * The impolite side does it at once, which makes it offer; the polite side
   * does it when the offer has come, so its answer carries its media.
   */
  attachMedia() {
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

  /** Send `track` (or nothing, for null) as this call's `kind`, without renegotiating. */
  async replaceTrack(kind, track) {
    const transceiver = this._transceiver(kind);
    if (transceiver && !this.closed) await transceiver.sender.replaceTrack(track);
  }

  /** A signaling message from this peer. */
  receive(event, data) {
    // One message at a time, in the order they came.
    this._inbox = this._inbox
      .then(() => this._handle(event, data))
      .catch((err) => console.warn(`call ${this.peerId}: ${event}`, err));
    return this._inbox;
  }

  close() {
    if (this.closed) return;
    this.closed = true;
    clearTimeout(this._offerTimer);
    clearInterval(this._healthTimer);
    this._disconnect();
    this._onChange();
  }

  _transceiver(kind) {
    return this.pc
      .getTransceivers()
      .find((t) => t.receiver.track.kind === kind && !t.stopped && t.currentDirection !== "stopped");
  }

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
        await pc.addIceCandidate(data ? candidate : null);
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
      if (!this._attached) this.attachMedia();
      await pc.setLocalDescription();
      if (pc === this.pc) this._sendDescription();
    }
  }

  _sendDescription() {
    const { type, sdp } = this.pc.localDescription;
    this._send(type, { type, sdp, epoch: this.epoch });
  }

  _connectionChanged(pc) {
    if (pc !== this.pc) return;
    if (pc.connectionState === "failed") this._resetSoon("the connection failed");
    this._onChange();
  }

  /** Reset now, or at the next health check once the backoff has passed. */
  _resetSoon(why) {
    if (performance.now() - this._resetAt >= RESET_BACKOFF_MS) this.reset(why);
  }

  /**
   * Whether the other side sends us video: it says so, and our video
   * transceiver receives.
   */
  _expectsVideo() {
    if (this.remoteMedia?.video !== true) return false;
    const direction = this._transceiver("video")?.currentDirection;
    return direction === "sendrecv" || direction === "recvonly";
  }

  /**
   * Every second: is the connection up, with the other side's video
   * arriving (its received bytes growing)?  A call unwell for UNWELL_MS
   * after it worked, or not well SETUP_MS after it was built, is rebuilt.
   */
  async _checkHealth() {
    if (this.closed || this._checking) return;
    const pc = this.pc;
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
      } else if (
        this._wellAt === null ? now - this._createdAt > SETUP_MS : now - this._wellAt > UNWELL_MS
      ) {
        this._resetSoon(
          this._wellAt === null
            ? `no working connection after ${SETUP_MS / 1000} s`
            : `${pc.connectionState}, ${this._expectsVideo() ? "no video for" : "for"} ${UNWELL_MS / 1000} s`,
        );
      }
    } catch (err) {
      console.warn(`call ${this.peerId}: health check`, err);
    } finally {
      this._checking = false;
    }
  }
}
