// The room page: joins /socket/<room>/ and calls every other peer of the room
// (a full mesh: one RTCPeerConnection per remote peer).  It is built on the
// public API of the client library alone: rtcsignal.js (the signaling
// client: join, resume, reconnect, ICE refresh) and rtcsignal-calls.js (the
// calls, their renegotiation, rebuilds and verification codes); this file
// is the page: local media, controls and rendering.  docs/client-js.md.
//
// document.body.dataset.state is "connecting", "joined", "error" or "closed";
// window.rtcsignal is a read-only handle for debugging and tests.

import { Calls, createCertificate } from "./rtcsignal-calls.js";
import { ERRORS, ROOM_NAME, Signaling, roomFromPage, socketUrl } from "./rtcsignal.js";

/** @type {(id: string) => any} the page's own elements, as in room.html */
const $ = (id) => document.getElementById(id);

const ui = {
  title: $("room-title"),
  status: $("status"),
  stage: $("stage"),
  alone: $("alone"),
  localTile: $("local-tile"),
  localVideo: $("local"),
  notice: $("notice"),
  noticeTitle: $("notice-title"),
  noticeText: $("notice-text"),
  noticeActions: $("notice-actions"),
  rejoin: $("rejoin"),
  mic: $("mic"),
  camera: $("camera"),
  sound: $("sound"),
  copyLink: $("copy-link"),
  leave: $("leave"),
};

const room = roomFromPage(window.location.href);

// The local media: what we can send (`sending`, fixed once getUserMedia has
// answered) and the tracks we send now (a null video track: camera off).
const media = {
  stream: null,
  tracks: { audio: null, video: null },
  sending: { audio: false, video: false },
  micMuted: false,
  cameraBusy: false,
};

let finished = false; // refused, closed or left: no reconnecting

// The socket URL carries the page's token; the client adds the resume token.
const client = new Signaling(() => socketUrl(window.location.href, room));
/** @type {Calls | null} made once the certificate and the camera are ready */
let calls = null;

client.on("state", ({ state }) => {
  if (state === "open") {
    setState("joined");
    hideNotice();
    render();
  }
});
client.on("reconnecting", ({ delay, failures }) => {
  if (finished) return;
  setState("connecting");
  const seconds = Math.ceil(delay / 1000);
  setStatus(
    client.peerId === null
      ? `Cannot reach the server; retrying in ${seconds} s…`
      : `Lost the connection to the server; retrying in ${seconds} s…`,
  );
  // A browser cannot tell a refused upgrade (a wrong token) from a server
  // that is down: both close the socket before it opens.
  if (failures >= 3) {
    showNotice(
      "Cannot connect",
      "The server does not answer, or does not let this page in (if the link " +
        "carries a token, it may be wrong or expired). Still trying…",
    );
  }
});
client.on("joined", render);
client.on("left", render);
client.on("error", onServerError);
client.on("closed", onClosed);

/** @type {any} */ (window).rtcsignal = Object.freeze({
  get room() {
    return room;
  },
  get peerId() {
    return client.peerId;
  },
  /** A copy: peer id -> RTCPeerConnection. */
  get peers() {
    return new Map([...(calls?.calls ?? [])].map(([id, call]) => [id, call.pc]));
  },
  get state() {
    return document.body.dataset.state;
  },
  /** The ICE servers in use (a copy). */
  get iceServers() {
    return structuredClone(client.iceServers ?? []);
  },
  get resumeToken() {
    return client.resumeToken;
  },
  /**
   * A test hook: peer id -> the verification code exchange with that peer
   * ({state, code, reason, committer, localFingerprint, remoteFingerprint,
   * committerNonce, responderNonce}; nonces in hex).
   */
  get verification() {
    return new Map([...(calls?.calls ?? [])].map(([id, call]) => [id, call.verification.describe()]));
  },
});

// --- Signaling -------------------------------------------------------------

function onServerError({ description, details }) {
  const detail = typeof details === "string" ? details : JSON.stringify(details ?? null);
  if (description === ERRORS.COULD_NOT_JOIN || description === ERRORS.NO_SUCH_PEER) {
    // The first ends the client ("closed" comes next); the second is a peer
    // that left while a message to it was on its way: harmless.
    return;
  }
  if (description === ERRORS.ROOM_CLOSED) {
    if (details === "shutdown") {
      // The server is restarting: the socket closes next, and we come back.
      setState("connecting");
      setStatus("The server is restarting; reconnecting…");
    }
    return;
  }
  console.warn("room: server error", description, details);
  showNotice(`Server error: ${description}`, detail === "null" ? "" : detail, {
    info: true,
    hideAfterMs: 8000,
  });
}

const JOIN_REFUSALS = {
  room_is_full: "This room is full. Try again later, or pick another room.",
  room_closed: "This room has just been closed.",
  no_such_room: "This room does not exist.",
};

/** @param {import("./rtcsignal.js").CloseReason} reason */
function onClosed({ kind, details, status }) {
  if (finished) return;
  if (kind === "join_refused") {
    const detail = typeof details === "string" ? details : JSON.stringify(details ?? null);
    finish("error", "Could not join room", JOIN_REFUSALS[details] ?? `The server said: ${detail}.`);
  } else if (kind === "room_closed") {
    finish("closed", "Room closed", "The room was closed by the server.");
  } else if (kind === "kicked") {
    finish("closed", "Disconnected", "The server disconnected this page.");
  } else if (kind === "refused") {
    finish("error", "Cannot connect", `The server refused this page (HTTP ${status}).`);
  } else {
    finish("closed", "Disconnected", "The connection to the server ended.");
  }
}

// --- Calls -----------------------------------------------------------------

function startCalls(certificate) {
  calls = new Calls(client, { stream: media.stream, certificate });
  calls.setMediaState(mediaState());
  calls.on("added", ({ call }) => {
    renderTile(call);
    render();
  });
  calls.on("changed", ({ call }) => renderTile(call));
  calls.on("media", ({ call, audio, video }) => {
    const tile = tileOf(call.peerId);
    if (!tile) return;
    tile.dataset.audio = audio ? "on" : "off";
    tile.dataset.video = video ? "on" : "off";
  });
  calls.on("removed", ({ call }) => {
    tileOf(call.peerId)?.remove();
    render();
  });
}

// --- Local media -----------------------------------------------------------

// A mesh sends one stream per remote peer, so a modest resolution.
const VIDEO = { width: { ideal: 640 }, height: { ideal: 360 }, frameRate: { ideal: 24 } };

async function startLocalMedia() {
  if (!navigator.mediaDevices?.getUserMedia) {
    showNotice(
      "No camera access",
      "This browser (or an insecure http: page) gives no camera or microphone: you join " +
        "receive-only.",
      { info: true },
    );
    return;
  }
  let stream = null;
  let failure = null;
  for (const constraints of [{ audio: true, video: VIDEO }, { audio: true }, { video: VIDEO }]) {
    try {
      stream = await navigator.mediaDevices.getUserMedia(constraints);
      break;
    } catch (err) {
      failure ??= err;
      // The user said no: do not ask again for less.
      if (err.name === "NotAllowedError" || err.name === "SecurityError") break;
    }
  }
  if (!stream) {
    showNotice(
      "No camera or microphone",
      `${describeMediaError(failure)} You join receive-only: you see and hear the others.`,
      { info: true },
    );
    return;
  }
  media.stream = stream;
  for (const kind of ["audio", "video"]) {
    const track = stream.getTracks().find((t) => t.kind === kind) ?? null;
    media.tracks[kind] = track;
    media.sending[kind] = track !== null;
  }
  ui.localVideo.srcObject = stream;
  if (!media.sending.audio || !media.sending.video) {
    const missing = media.sending.audio ? "camera" : "microphone";
    showNotice(`No ${missing}`, `${describeMediaError(failure)} The others will not get your ${missing}.`, {
      info: true,
    });
  }
}

function describeMediaError(err) {
  switch (err?.name) {
    case "NotAllowedError":
      return "Access to the camera and microphone was refused.";
    case "NotFoundError":
      return "No camera or microphone was found.";
    case "NotReadableError":
      return "The camera or microphone is in use by another program.";
    case "SecurityError":
      return "The camera is only available on secure (https:) pages.";
    default:
      return err ? `The camera could not start (${err.name}).` : "";
  }
}

function setMicMuted(muted) {
  media.micMuted = muted;
  if (media.tracks.audio) media.tracks.audio.enabled = !muted;
  calls?.setMediaState(mediaState());
  render();
}

async function setCameraOn(on) {
  media.cameraBusy = true;
  render();
  try {
    if (!on && media.tracks.video) {
      media.tracks.video.stop();
      media.stream.removeTrack(media.tracks.video);
      media.tracks.video = null;
      await calls?.replaceTrack("video", null);
    } else if (on && !media.tracks.video) {
      const stream = await navigator.mediaDevices.getUserMedia({ video: VIDEO });
      const track = stream.getVideoTracks()[0];
      media.tracks.video = track;
      media.stream.addTrack(track);
      await calls?.replaceTrack("video", track);
      ui.localVideo.srcObject = media.stream;
    }
  } catch (err) {
    showNotice("Camera", describeMediaError(err), { info: true });
  } finally {
    media.cameraBusy = false;
    calls?.setMediaState(mediaState());
    render();
  }
}

function mediaState() {
  return {
    audio: media.sending.audio && !media.micMuted,
    video: media.sending.video && media.tracks.video !== null,
  };
}

// --- Rendering -------------------------------------------------------------

const CONNECTION_LABELS = {
  new: "waiting",
  connecting: "connecting…",
  connected: "connected",
  disconnected: "reconnecting…",
  failed: "failed, retrying…",
  closed: "closed",
};

/** @returns {HTMLElement | null} */
function tileOf(peerId) {
  return ui.stage.querySelector(`figure[data-peer-tile="${CSS.escape(peerId)}"]`);
}

function renderTile(call) {
  const peerId = call.peerId;
  if (call.closed) return;
  let tile = tileOf(peerId);
  if (!tile) {
    tile = createTile(peerId);
    ui.stage.append(tile);
  }
  const video = tile.querySelector("video");
  if (video.srcObject !== call.remoteStream) {
    video.srcObject = call.remoteStream;
  }
  if (call.remoteStream.getTracks().length > 0 && video.paused) play(video);
  const state = call.state;
  tile.dataset.connection = state;
  tile.querySelector(".connection").textContent = CONNECTION_LABELS[state] ?? state;
  renderVerification(tile.querySelector("[data-verification]"), call.verification);
}

const VERIFICATION_LABELS = { pending: "verifying…", failed: "not verified" };

// The code both pages show when nobody is in between (SPEC 5.8).
function renderVerification(element, { state, code }) {
  element.dataset.verification = state;
  if (state === "verified") element.dataset.verificationCode = code;
  else delete element.dataset.verificationCode;
  const text = state === "verified" ? code : VERIFICATION_LABELS[state];
  if (element.textContent !== text) element.textContent = text;
}

function createTile(peerId) {
  const name = guestName(peerId);
  const tile = document.createElement("figure");
  tile.className = "tile remote";
  tile.dataset.peerTile = peerId;
  tile.dataset.audio = "on";
  tile.dataset.video = "on";
  const video = document.createElement("video");
  video.dataset.peerId = peerId;
  video.autoplay = true;
  video.playsInline = true;
  video.setAttribute("aria-label", `Video of ${name}`);
  const placeholder = document.createElement("div");
  placeholder.className = "placeholder";
  placeholder.setAttribute("aria-hidden", "true");
  placeholder.textContent = name;
  const caption = document.createElement("figcaption");
  caption.innerHTML =
    '<span class="name"></span> <span class="connection"></span>' +
    '<span class="badges"><span class="badge muted-badge">muted</span>' +
    '<span class="badge camera-badge">camera off</span></span>';
  caption.querySelector(".name").textContent = name;
  const verification = document.createElement("span");
  verification.className = "verification";
  verification.dataset.verification = "pending";
  verification.title =
    `Compare this code with ${name}'s screen: the same code on both means nobody ` +
    "is listening in between. “not verified” means it could not be checked.";
  tile.append(video, placeholder, caption, verification);
  return tile;
}

function guestName(peerId) {
  return `Guest ${peerId.slice(0, 4)}`;
}

// Browsers may refuse to play sound before the user has clicked on the page:
// then the video plays muted and a button turns the sound on.
function play(video) {
  video.play().catch((err) => {
    if (err.name !== "NotAllowedError") return;
    video.muted = true;
    video.play().catch(() => {});
    ui.sound.hidden = false;
  });
}

function render() {
  const others = calls?.calls.size ?? 0;
  const joined = document.body.dataset.state === "joined";
  ui.alone.hidden = !(joined && others === 0);
  if (joined) {
    setStatus(
      others === 0
        ? "You are the only one here."
        : `In the call with ${others} ${others === 1 ? "other person" : "other people"}.`,
    );
  }
  const state = mediaState();
  ui.localTile.dataset.audio = state.audio ? "on" : "off";
  ui.localTile.dataset.video = state.video ? "on" : "off";
  ui.mic.setAttribute("aria-pressed", String(media.micMuted));
  ui.mic.querySelector(".text").textContent = media.micMuted ? "Unmute" : "Mute";
  ui.mic.disabled = !media.sending.audio || finished;
  const cameraOff = media.sending.video && media.tracks.video === null;
  ui.camera.setAttribute("aria-pressed", String(cameraOff));
  ui.camera.querySelector(".text").textContent = cameraOff ? "Camera on" : "Camera off";
  ui.camera.disabled = !media.sending.video || finished || media.cameraBusy;
  ui.leave.disabled = finished;
}

function setState(state) {
  document.body.dataset.state = state;
}

function setStatus(text) {
  if (ui.status.textContent !== text) ui.status.textContent = text;
}

let noticeTimer = null;

function showNotice(title, text, { info = false, actions = false, hideAfterMs = 0 } = {}) {
  clearTimeout(noticeTimer);
  ui.noticeTitle.textContent = title;
  ui.noticeText.textContent = text;
  ui.notice.classList.toggle("info", info);
  ui.noticeActions.hidden = !actions;
  ui.notice.hidden = false;
  if (hideAfterMs > 0) {
    noticeTimer = setTimeout(() => {
      ui.notice.hidden = true;
    }, hideAfterMs);
  }
}

function hideNotice() {
  if (ui.notice.classList.contains("info")) return; // keep media notices
  ui.notice.hidden = true;
}

/** Stop for good: refused, room closed, or left. */
function finish(state, title, text) {
  finished = true;
  client.close();
  calls?.close();
  for (const tile of ui.stage.querySelectorAll("figure[data-peer-tile]")) tile.remove();
  for (const track of media.stream?.getTracks() ?? []) track.stop();
  media.tracks.audio = media.tracks.video = null;
  ui.localVideo.srcObject = null;
  ui.stage.hidden = true;
  setState(state);
  setStatus(`${title}.`);
  showNotice(title, text, { actions: true });
  render();
}

// --- Controls --------------------------------------------------------------

ui.mic.addEventListener("click", () => setMicMuted(!media.micMuted));
ui.camera.addEventListener("click", () => setCameraOn(media.tracks.video === null));
ui.sound.addEventListener("click", () => {
  for (const video of ui.stage.querySelectorAll("video[data-peer-id]")) {
    video.muted = false;
    play(video);
  }
  ui.sound.hidden = true;
});
ui.copyLink.addEventListener("click", copyLink);
ui.leave.addEventListener("click", () => {
  finish("closed", "You left the room", "Your camera and microphone are off.");
  ui.rejoin.focus();
});
// Leaving the page (closing the tab, following a link): say goodbye, so the
// server lets the others know at once instead of holding us for a resume.
// Scripts may close a WebSocket only with 1000 or 3000-4999 (the browser's
// own "going away", 1001, is not allowed to them): 1000 is the clean leave.
window.addEventListener("pagehide", () => {
  finished = true;
  client.close(1000, "page closed");
});
// Back from the back-forward cache, the socket and the calls are gone: start anew.
window.addEventListener("pageshow", (event) => {
  if (event.persisted) window.location.reload();
});

async function copyLink() {
  // The room's address without the query: a token in it is personal.
  const link = new URL(window.location.pathname, window.location.origin).href;
  const label = ui.copyLink.querySelector(".text");
  try {
    await navigator.clipboard.writeText(link);
    label.textContent = "Link copied";
    setStatus(`Copied ${link}`);
  } catch {
    window.prompt("Copy this link:", link);
  }
  setTimeout(() => {
    label.textContent = "Copy link";
  }, 2000);
}

// --- Start -----------------------------------------------------------------

// One certificate for all of this page's calls, so that the page knows its
// own fingerprint (verify.js).  Without one, each call gets the browser's
// own and shows "not verified".
async function makeCertificate() {
  try {
    return await createCertificate();
  } catch (err) {
    console.warn("room: cannot make a DTLS certificate", err);
    return null;
  }
}

async function main() {
  ui.title.textContent = room;
  document.title = `${room} · video room`;
  ui.rejoin.href = window.location.href;
  setState("connecting");
  if (!ROOM_NAME.test(room)) {
    finish("error", "Not a room", "Room names are 1 to 64 letters, digits, or _ . ~ -.");
    return;
  }
  setStatus("Starting your camera and microphone…");
  const [, certificate] = await Promise.all([startLocalMedia(), makeCertificate()]);
  if (finished) return;
  startCalls(certificate);
  render();
  setStatus("Connecting to the server…");
  client.connect();
}

main();
