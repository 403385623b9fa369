// Verification codes for a peer connection (SPEC 5.8; the derivation is in
// docs/verification.md, and twisted_signal/verification.py is the same code
// in Python, with the test vectors both must reproduce).
//
// Both ends derive a short code from the two DTLS certificates actually used
// on the connection and from a nonce of each side, exchanged
// commit-then-reveal over a negotiated data channel: the side whose own
// fingerprint is lower in byte order commits to its nonce first, the other
// answers with its nonce once the commitment came, then the committer
// reveals.  Whoever terminates DTLS in between shows each end a different
// pair of fingerprints, so the codes differ (or the exchange fails).
//
// `Verification` is the exchange as a state machine, without I/O;
// `VerifiedChannel` wires it to a peer connection.

export const VERSION = 1;
export const CHANNEL_LABEL = "rtcsignal-verify";
export const CHANNEL_ID = 0;
/** Milliseconds after the channel opened by which the exchange must be done. */
export const DEADLINE_MS = 15_000;

const COMMIT_LABEL = new TextEncoder().encode("rtcsignal-verify/1 commit");
const CODE_LABEL = new TextEncoder().encode("rtcsignal-verify/1 code");
const NONCE_BYTES = 32;
const FINGERPRINT_BYTES = 32;
const FIELDS = { commit: "hash", nonce: "nonce", reveal: "nonce" };

// --- Bytes ------------------------------------------------------------------

export function toHex(bytes) {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** The bytes of lowercase or uppercase hex, or null if it is not hex. */
export function fromHex(text) {
  if (typeof text !== "string" || text.length % 2 !== 0 || !/^[0-9a-fA-F]*$/.test(text)) {
    return null;
  }
  const bytes = new Uint8Array(text.length / 2);
  for (let i = 0; i < bytes.length; i++) {
    bytes[i] = Number.parseInt(text.slice(2 * i, 2 * i + 2), 16);
  }
  return bytes;
}

function concat(...parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.length;
  }
  return out;
}

/** Byte order: negative, zero or positive, like a comparator. */
export function compareBytes(a, b) {
  for (let i = 0; i < Math.min(a.length, b.length); i++) {
    if (a[i] !== b[i]) return a[i] - b[i];
  }
  return a.length - b.length;
}

function equalBytes(a, b) {
  // Both are hashes of the same length here; compare every byte anyway.
  if (a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= a[i] ^ b[i];
  return diff === 0;
}

async function sha256(bytes) {
  return new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
}

// --- The derivation -----------------------------------------------------------

/** The SHA-256 fingerprint (32 bytes) of a DER certificate (an ArrayBuffer). */
export function fingerprintFromDer(der) {
  return sha256(new Uint8Array(der));
}

/** The bytes of an SDP-style fingerprint "AB:CD:..."; throws unless it is 32 bytes. */
export function fingerprintFromSdp(value) {
  const parts = String(value).trim().split(":");
  const bytes = parts.every((p) => p.length === 2) ? fromHex(parts.join("")) : null;
  if (bytes === null || bytes.length !== FINGERPRINT_BYTES) {
    throw new Error(`not a SHA-256 fingerprint: ${value}`);
  }
  return bytes;
}

/** The SDP form of a fingerprint: upper-case hex pairs joined by colons. */
export function fingerprintToSdp(bytes) {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0").toUpperCase()).join(":");
}

/** What the committer sends first: SHA-256 of a label and its nonce. */
export function commitment(nonce) {
  return sha256(concat(COMMIT_LABEL, nonce));
}

/** Matrix's decimal SAS: the first 39 bits of `digest` as "NNNN-NNNN-NNNN". */
export function codeDigits(digest) {
  const [b0, b1, b2, b3, b4] = digest;
  const numbers = [
    ((b0 << 5) | (b1 >> 3)) + 1000,
    (((b1 & 0x07) << 10) | (b2 << 2) | (b3 >> 6)) + 1000,
    (((b3 & 0x3f) << 7) | (b4 >> 1)) + 1000,
  ];
  return numbers.map((n) => String(n).padStart(4, "0")).join("-");
}

/**
 * The code both ends show: SHA-256 over a label, the two fingerprints in
 * byte order, the committer's nonce and the responder's; then `codeDigits`.
 */
export async function deriveCode(fingerprintA, fingerprintB, committerNonce, responderNonce) {
  const [low, high] = [fingerprintA, fingerprintB].sort(compareBytes);
  return codeDigits(await sha256(concat(CODE_LABEL, low, high, committerNonce, responderNonce)));
}

// --- The exchange ---------------------------------------------------------------

function encode(type, field, bytes) {
  return JSON.stringify({ v: VERSION, type, [field]: toHex(bytes) });
}

/** [type, 32 bytes] of a well-formed message, [null, null] for anything else. */
function decode(text) {
  let message;
  try {
    message = typeof text === "string" ? JSON.parse(text) : null;
  } catch {
    return [null, null];
  }
  if (message === null || typeof message !== "object" || Array.isArray(message)) {
    return [null, null];
  }
  if (message.v !== VERSION || !Object.hasOwn(FIELDS, message.type)) return [null, null];
  const value = message[FIELDS[message.type]];
  const bytes =
    typeof value === "string" && value.length === 2 * NONCE_BYTES ? fromHex(value) : null;
  return bytes === null ? [null, null] : [message.type, bytes];
}

/**
 * The exchange over one verification channel.  `localFingerprint` is the
 * fingerprint of this side's own certificate, `remoteFingerprint` that of the
 * certificate the DTLS transport got from the other side (both Uint8Array,
 * from the local WebRTC stack, never from signaling).  Each method resolves
 * to the text messages to send, in order; calls are handled one at a time,
 * in the order they were made.
 */
export class Verification {
  constructor(localFingerprint, remoteFingerprint, nonce = null) {
    this.localFingerprint = localFingerprint;
    this.remoteFingerprint = remoteFingerprint;
    this.nonce = nonce ?? crypto.getRandomValues(new Uint8Array(NONCE_BYTES));
    /** "pending", "verified" or "failed". */
    this.state = "pending";
    this.code = null;
    /** Why the exchange failed, for the console and tests. */
    this.reason = null;
    this.remoteNonce = null;
    this._remoteCommitment = null;
    this._started = false;
    this._queue = Promise.resolve();
    const lengths = [localFingerprint.length, remoteFingerprint.length];
    if (lengths.some((n) => n !== FINGERPRINT_BYTES)) {
      this._fail("a fingerprint is not 32 bytes");
    } else if (compareBytes(localFingerprint, remoteFingerprint) === 0) {
      this._fail("both ends show the same certificate");
    } else if (this.nonce.length !== NONCE_BYTES) {
      this._fail("the nonce is not 32 bytes");
    }
  }

  /** Whether this side commits first (its own fingerprint is lower). */
  get committer() {
    return compareBytes(this.localFingerprint, this.remoteFingerprint) < 0;
  }

  get committerNonce() {
    return this.committer ? this.nonce : this.remoteNonce;
  }

  get responderNonce() {
    return this.committer ? this.remoteNonce : this.nonce;
  }

  /** The channel opened: the committer sends its commitment. */
  start() {
    return this._serially(async () => {
      if (this.state !== "pending" || this._started) return [];
      this._started = true;
      return this.committer ? [encode("commit", "hash", await commitment(this.nonce))] : [];
    });
  }

  /** A message arrived on the channel. */
  receive(text) {
    return this._serially(() => this._receive(text));
  }

  /** The deadline passed: an exchange not done by now has failed. */
  expire() {
    return this._serially(async () => {
      if (this.state === "pending") this._fail("the exchange did not finish in time");
      return [];
    });
  }

  async _receive(text) {
    if (this.state !== "pending") return [];
    const [type, value] = decode(text);
    if (this.committer) {
      if (type === "nonce" && this._started && this.remoteNonce === null) {
        this.remoteNonce = value;
        await this._verified(this.nonce, value);
        return [encode("reveal", "nonce", this.nonce)];
      }
    } else if (type === "commit" && this._remoteCommitment === null) {
      this._remoteCommitment = value;
      return [encode("nonce", "nonce", this.nonce)];
    } else if (type === "reveal" && this._remoteCommitment !== null) {
      if (!equalBytes(await commitment(value), this._remoteCommitment)) {
        this._fail("the revealed nonce does not match its commitment");
        return [];
      }
      this.remoteNonce = value;
      await this._verified(value, this.nonce);
      return [];
    }
    this._fail(`unexpected ${type ?? "message"}`);
    return [];
  }

  _serially(step) {
    const result = this._queue.then(step);
    this._queue = result.catch(() => {});
    return result;
  }

  async _verified(committerNonce, responderNonce) {
    const code = await deriveCode(
      this.localFingerprint,
      this.remoteFingerprint,
      committerNonce,
      responderNonce,
    );
    if (this.state !== "pending") return;
    this.code = code;
    this.state = "verified";
  }

  _fail(reason) {
    this.state = "failed";
    this.code = null;
    this.reason = reason;
  }
}

// --- On a peer connection ---------------------------------------------------------

/** The DTLS transports of `pc` (its data channels' and its media's), each once. */
function dtlsTransports(pc) {
  const transports = [pc.sctp?.transport];
  for (const t of pc.getTransceivers()) transports.push(t.sender.transport, t.receiver.transport);
  return [...new Set(transports.filter(Boolean))];
}

/**
 * The fingerprints of the certificates that the connected DTLS transports of
 * `pc` got from the other side: one, unless something is wrong.  (A
 * transport that has been bundled away is closed, and not counted.)
 */
async function remoteFingerprints(pc) {
  const found = new Map();
  for (const transport of dtlsTransports(pc)) {
    const [der] = transport.state === "connected" ? transport.getRemoteCertificates() : [];
    if (!der) continue;
    const fingerprint = await fingerprintFromDer(der);
    found.set(toHex(fingerprint), fingerprint);
  }
  return [...found.values()];
}

const DIFFERENT_CERTIFICATES = "the connection's transports show different certificates";

/**
 * The fingerprint of the other side's certificate, or null.  A channel may
 * open a moment before its transport shows the certificate (Chromium tells
 * the page of both separately): wait for it, until `giveUp()`.
 */
async function remoteFingerprint(pc, giveUp) {
  while (!giveUp() && pc.connectionState !== "closed" && pc.connectionState !== "failed") {
    const fingerprints = await remoteFingerprints(pc);
    if (fingerprints.length > 1) throw new Error(DIFFERENT_CERTIFICATES);
    if (fingerprints.length === 1) return fingerprints[0];
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  return null;
}

/**
 * The verification channel of one peer connection: created with it (by
 * `createChannel`, so that it is in the first offer), it runs one
 * `Verification` once it opens and calls `onChange()` when the state
 * changes.  `certificate` is the RTCCertificate given to the connection in
 * `certificates`.  DTLS up and yet no channel within DEADLINE_MS (a peer
 * that does not verify) is failed too.
 */
export class VerifiedChannel {
  constructor(pc, certificate, onChange) {
    this.state = "pending";
    this.code = null;
    this.reason = null;
    this.verification = null;
    this._pc = pc;
    this._certificate = certificate;
    this._onChange = onChange;
    this._timer = null;
    this._closed = false;
    this._steps = Promise.resolve();
    this._channel = null;
    pc.addEventListener("connectionstatechange", this._watchTransport);
  }

  /**
   * Create the channel, before the connection's first offer or answer (an
   * answerer that made it earlier would ask for a negotiation of its own,
   * and rolling that offer back, in a glare, closes the channel).
   */
  createChannel() {
    if (this._channel !== null || this._closed) return;
    const channel = (this._channel = this._pc.createDataChannel(CHANNEL_LABEL, {
      negotiated: true,
      id: CHANNEL_ID,
    }));
    channel.onopen = () => this._opened();
    channel.onmessage = ({ data }) => this._step(() => this.verification?.receive(data));
    channel.onclose = () => this._step(() => this._failIfPending("the channel closed"));
  }

  /** The test hook's view of this exchange (hex nonces, SDP-style fingerprints). */
  describe() {
    const v = this.verification;
    const hex = (bytes) => (bytes ? toHex(bytes) : null);
    return {
      state: this.state,
      code: this.code,
      reason: this.reason,
      committer: v ? v.committer : null,
      localFingerprint: v ? fingerprintToSdp(v.localFingerprint) : null,
      remoteFingerprint: v ? fingerprintToSdp(v.remoteFingerprint) : null,
      committerNonce: v ? hex(v.committerNonce) : null,
      responderNonce: v ? hex(v.responderNonce) : null,
    };
  }

  /**
   * The connection failed: a code not worked out yet is failed now, and
   * `onChange()` says so at once, before the connection is replaced (a
   * rebuilt call gets a channel of its own).
   */
  fail(reason) {
    if (this.state !== "pending" || this._closed) return;
    this._failIfPending(reason);
    this._onChange();
  }

  close() {
    this._closed = true;
    clearTimeout(this._timer);
    this._pc.removeEventListener("connectionstatechange", this._watchTransport);
    const channel = this._channel;
    if (channel === null) return;
    channel.onopen = channel.onmessage = channel.onclose = null;
    channel.close();
  }

  _watchTransport = () => {
    const transports = dtlsTransports(this._pc);
    if (this._pc.connectionState === "connected") {
      this._startDeadline();
      this._step(() => this._recheck());
    }
    // A DTLS transport that failed (a certificate that does not match the
    // signaled fingerprint, say) never comes back on this connection.
    if (transports.some((t) => t.state === "failed")) {
      this._step(() => this._failIfPending("DTLS failed"));
    }
  };

  /** Every transport now up must show the certificate the code is made of. */
  async _recheck() {
    const remote = this.verification?.remoteFingerprint;
    if (!remote || this.state === "failed") return [];
    const fingerprints = await remoteFingerprints(this._pc);
    if (fingerprints.some((f) => compareBytes(f, remote) !== 0)) {
      this.verification.expire();
      [this.state, this.code, this.reason] = ["failed", null, DIFFERENT_CERTIFICATES];
      console.info(`verification failed: ${this.reason}`);
      if (!this._closed) this._onChange();
    }
    return [];
  }

  /**
   * Fail unless done within DEADLINE_MS: from when the connection is up (for
   * the channel to open), then again from when the channel opened.
   */
  _startDeadline({ restart = false } = {}) {
    if ((this._timer !== null && !restart) || this._closed) return;
    clearTimeout(this._timer);
    this._timer = setTimeout(() => {
      this._step(async () => {
        if (this.verification !== null) await this.verification.expire();
        else this._failIfPending("the verification channel did not open");
      });
    }, DEADLINE_MS);
  }

  _opened() {
    this._startDeadline({ restart: true });
    this._step(async () => {
      const fingerprints = this._certificate?.getFingerprints() ?? [];
      const local = fingerprints.find((f) => f.algorithm.toLowerCase() === "sha-256");
      const until = Date.now() + DEADLINE_MS;
      const remote = await remoteFingerprint(this._pc, () => this._closed || Date.now() > until);
      if (!local || !remote) {
        this._failIfPending("the certificates are not known");
        return [];
      }
      this.verification = new Verification(fingerprintFromSdp(local.value), remote);
      return this.verification.start();
    });
  }

  /** Run `step` after the ones before it; send what it returns, then render. */
  _step(step) {
    this._steps = this._steps
      .then(step)
      .then((messages) => {
        if (this._closed) return;
        for (const text of /** @type {string[]} */ (messages ?? [])) {
          if (this._channel?.readyState === "open") this._channel.send(text);
        }
        this._update();
      })
      .catch((err) => {
        if (this._closed) return;
        console.warn("verification:", err);
        this._failIfPending(String(err?.message ?? err));
        this._update();
      });
  }

  _failIfPending(reason) {
    if (this.verification?.state === "pending") this.verification.expire();
    if (this.state === "pending") {
      this.state = "failed";
      this.reason = reason;
    }
    this._update();
    return [];
  }

  _update() {
    const v = this.verification;
    let { state, code, reason } = this;
    if (v && state === "pending") [state, code, reason] = [v.state, v.code, v.reason];
    if (state === this.state && code === this.code && reason === this.reason) return;
    [this.state, this.code, this.reason] = [state, code, reason];
    if (this.state === "failed") console.info(`verification failed: ${this.reason}`);
    if (!this._closed) this._onChange();
  }
}
