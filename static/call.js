// One RTCPeerConnection with one remote peer, negotiated with the "perfect
// negotiation" pattern (the example of that name in the WebRTC 1.0 specification),
// so either side may (re)negotiate at any time without glare.
//
// Who is polite: the peer that was already in the room.  The newcomer (the one
// that got the other's id in `authenticated.data.peers`) is impolite and starts
// the negotiation; the peer already there (that got `joined`) is polite: it
// waits for the newcomer's offer and, should both offer at once (say both
// restart ICE), it rolls its own offer back and answers.  Both sides derive
// their role from the server's total order of joins, so they always agree.

import { VerifiedChannel } from "./verify.js";

const KINDS = ["audio", "video"];
// If the newcomer's offer has not come by then, the polite side offers itself
// (a newcomer that does not follow this page's protocol, a lost message...).
const OFFER_WAIT_MS = 4000;
const DISCONNECTED_GRACE_MS = 4000;

export class Call {
  /**
   * `send(event, data)` sends a signaling message to this peer;
   * `media` is the local media ({stream, tracks: {audio, video}, sending:
   * {audio, video}}); `onChange()` is called whenever the connection state
   * or the remote stream changes.  `certificate` is this page's own
   * RTCCertificate: the connection uses it, and the verification code
   * (verify.js) is derived from it and the other side's.
   */
  constructor({ peerId, polite, iceServers, certificate, media, send, onChange }) {
    this.peerId = peerId;
    this.polite = polite;
    this.remoteStream = new MediaStream();
    const certificates = certificate ? [certificate] : undefined;
    this.pc = new RTCPeerConnection({ iceServers, certificates });
    // Its channel is made with the media (attachMedia), so the first offer
    // or answer carries it.
    this.verification = new VerifiedChannel(this.pc, certificate, () => this._onChange());
    this.closed = false;
    this._send = send;
    this._media = media;
    this._onChange = onChange;
    this._makingOffer = false;
    this._ignoreOffer = false;
    this._settingRemoteAnswerPending = false;
    this._attached = false;
    this._inbox = Promise.resolve();
    this._offerTimer = null;
    this._disconnectedTimer = null;

    const pc = this.pc;
    pc.onnegotiationneeded = () => this._negotiate();
    pc.onicecandidate = ({ candidate }) => {
      if (candidate) this._send("candidate", candidate.toJSON());
    };
    pc.ontrack = ({ track }) => {
      if (!this.remoteStream.getTracks().includes(track)) this.remoteStream.addTrack(track);
      track.addEventListener("ended", () => {
        this.remoteStream.removeTrack(track);
        this._onChange();
      });
      this._onChange();
    };
    pc.onconnectionstatechange = () => this._connectionChanged();

    if (polite) {
      this._offerTimer = setTimeout(() => this.attachMedia(), OFFER_WAIT_MS);
    } else {
      this.attachMedia();
    }
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

  restartIce() {
    if (!this.closed) this.pc.restartIce();
  }

  close() {
    if (this.closed) return;
    this.closed = true;
    clearTimeout(this._offerTimer);
    clearTimeout(this._disconnectedTimer);
    this.pc.onnegotiationneeded = this.pc.onicecandidate = this.pc.ontrack = null;
    this.pc.onconnectionstatechange = null;
    this.verification.close();
    this.pc.close();
    for (const track of this.remoteStream.getTracks()) track.stop();
    this._onChange();
  }

  _transceiver(kind) {
    return this.pc
      .getTransceivers()
      .find((t) => t.receiver.track.kind === kind && !t.stopped && t.currentDirection !== "stopped");
  }

  async _negotiate() {
    if (this.closed) return;
    try {
      this._makingOffer = true;
      await this.pc.setLocalDescription();
      this._sendDescription();
    } catch (err) {
      console.warn(`call ${this.peerId}: could not offer`, err);
    } finally {
      this._makingOffer = false;
    }
  }

  async _handle(event, data) {
    if (this.closed) return;
    if (event === "candidate") {
      try {
        await this.pc.addIceCandidate(data ?? null);
      } catch (err) {
        // Candidates of an offer we ignored fail to apply; that is expected.
        if (!this._ignoreOffer) throw err;
      }
      return;
    }
    // "offer", "answer", or "description" carrying either.
    const description = data;
    if (!description || (description.type !== "offer" && description.type !== "answer")) {
      console.warn(`call ${this.peerId}: not a session description`, data);
      return;
    }
    const pc = this.pc;
    const readyForOffer =
      !this._makingOffer && (pc.signalingState === "stable" || this._settingRemoteAnswerPending);
    const offerCollision = description.type === "offer" && !readyForOffer;
    this._ignoreOffer = !this.polite && offerCollision;
    if (this._ignoreOffer) return;
    this._settingRemoteAnswerPending = description.type === "answer";
    // A polite peer in collision rolls its own offer back implicitly here.
    await pc.setRemoteDescription(description);
    this._settingRemoteAnswerPending = false;
    if (description.type === "offer") {
      if (!this._attached) this.attachMedia();
      await pc.setLocalDescription();
      this._sendDescription();
    }
  }

  _sendDescription() {
    const { type, sdp } = this.pc.localDescription;
    this._send(type, { type, sdp });
  }

  _connectionChanged() {
    const state = this.pc.connectionState;
    clearTimeout(this._disconnectedTimer);
    if (state === "failed") {
      console.info(`call ${this.peerId}: connection failed; restarting ICE`);
      this.pc.restartIce();
    } else if (state === "disconnected") {
      // Often transient; restart ICE if it lasts.
      this._disconnectedTimer = setTimeout(() => {
        if (this.pc.connectionState === "disconnected") this.pc.restartIce();
      }, DISCONNECTED_GRACE_MS);
    }
    this._onChange();
  }
}
