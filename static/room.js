// The room page: joins /socket/<room>/ and calls every other peer of the room
// (a full mesh: one RTCPeerConnection per remote peer).
//
// Wire protocol (docs/protocol.md): JSON {event, data, to}; the server stamps
// `from`.  Between peers this page sends "offer" / "answer" (data: {type,
// sdp}), "candidate" (data: RTCIceCandidateInit) and "media" (data: {audio,
// video}: whether the sender's microphone and camera are on) and "reset"
// (data: {epoch}: the sender rebuilt its connection to us after an outage;
// see call.js); it also understands "description" carrying either kind of
// session description.
//
// document.body.dataset.state is "connecting", "joined", "error" or "closed";
// window.rtcsignal is a read-only handle for debugging and tests.

import { Call } from "./call.js";
import { ROOM_NAME } from "./names.js";
import { Signaling, roomFromPage, socketUrl } from "./signaling.js";

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

const session = {
  peerId: null,
  resumeToken: null,
  iceServers: [],
  finished: false, // refused, closed or left: no reconnecting
  outbox: [], // messages to peers while the socket is down (sent if we resume)
  certificate: null, // this page's DTLS certificate, for every call (verify.js)
};

/** @type {Map<string, Call>} */
const calls = new Map();

const signaling = new Signaling(
  () => {
    const url = socketUrl(window.location.href, room);
    if (session.resumeToken) url.searchParams.set("resume", session.resumeToken);
    return url.href;
  },
  {
    message: onMessage,
    open: () => setStatus("Connected; joining the room…"),
    disconnected: (delay, failures) => {
      if (session.finished) return;
      setState("connecting");
      const seconds = Math.ceil(delay / 1000);
      setStatus(
        session.peerId === null
          ? `Cannot reach the server; retrying in ${seconds} s…`
          : `Lost the connection to the server; retrying in ${seconds} s…`,
      );
      if (failures >= 3) {
        showNotice(
          "Cannot connect",
          "The server does not answer, or does not let this page in (if the link " +
            "carries a token, it may be wrong or expired). Still trying…",
        );
      }
    },
  },
);

window.rtcsignal = Object.freeze({
  get room() {
    return room;
  },
  get peerId() {
    return session.peerId;
  },
  /** A copy: peer id -> RTCPeerConnection. */
  get peers() {
    return new Map([...calls].map(([id, call]) => [id, call.pc]));
  },
  get state() {
    return document.body.dataset.state;
  },
  /** The ICE servers in use (a copy). */
  get iceServers() {
    return structuredClone(session.iceServers ?? []);
  },
  get resumeToken() {
    return session.resumeToken;
  },
  /**
   * A test hook: peer id -> the verification code exchange with that peer
   * ({state, code, reason, committer, localFingerprint, remoteFingerprint,
   * committerNonce, responderNonce}; nonces in hex).
   */
  get verification() {
    return new Map([...calls].map(([id, call]) => [id, call.verification.describe()]));
  },
});

// --- Signaling -------------------------------------------------------------

// The server's own events (docs/protocol.md): acted on only when the server
// sent them (`from` null; `joined`: from the newcomer itself).  A relay that
// lets a peer's message through under one of these names must not end our
// call, change our peer id or pick our TURN server: such a message is ignored.
const SERVER_EVENTS = new Set(["authenticated", "joined", "left", "error", "ice_servers"]);

function fromServer({ event, data, from }) {
  if (!SERVER_EVENTS.has(event) || from === null || from === undefined) return true;
  return event === "joined" && data?.peer_id === from;
}

function onMessage(message) {
  const { event, data, from } = message;
  if (!fromServer(message)) {
    console.warn(`room: ignored "${event}" from peer ${from}: only the server sends it`);
    return;
  }
  switch (event) {
    case "authenticated":
      return onAuthenticated(data ?? {});
    case "joined":
      if (data?.peer_id && data.peer_id !== session.peerId) {
        ensureCall(data.peer_id, { polite: true });
        sendMediaState([data.peer_id]);
        render();
      }
      return;
    case "left":
      if (data?.peer_id) closeCall(data.peer_id);
      return;
    case "error":
      return onServerError(data ?? {});
    case "ice_servers":
      if (Array.isArray(data)) updateIceServers(data);
      return;
    case "offer":
    case "answer":
    case "description":
    case "candidate":
    case "reset":
      return onPeerSignal(event, data, from);
    case "media":
      return onPeerMedia(from, data);
    default:
      console.debug("room: unhandled event", event, message);
  }
}

function onAuthenticated(data) {
  const resumed = data.peer_id === session.peerId;
  session.peerId = data.peer_id;
  session.resumeToken = data.resume_token ?? null;
  signaling.setKeepalive(data.ping_interval, data.ping_timeout);
  const peers = Array.isArray(data.peers) ? data.peers : [];
  if (Array.isArray(data.ice_servers)) updateIceServers(data.ice_servers);
  if (resumed) {
    // Same peer id: our calls are still valid; catch up with who left.
    for (const id of calls.keys()) if (!peers.includes(id)) closeCall(id);
    const pending = session.outbox.splice(0);
    for (const message of pending) signaling.send(message);
    // Whoever we do not know yet joined while we were away: to them we are
    // the peer already there (they got us in their `authenticated`), so they
    // make the offer (queued for us, it comes next) and we are polite.  Were
    // we impolite too, both sides would ignore each other's offer for good.
    for (const id of peers) ensureCall(id, { polite: true });
  } else {
    // A new identity (first join, or the server forgot us): start afresh.
    session.outbox.length = 0;
    for (const id of [...calls.keys()]) closeCall(id);
    // We are the newcomer for everyone already here: we make the offers.
    for (const id of peers) ensureCall(id, { polite: false });
  }
  setState("joined");
  hideNotice();
  sendMediaState("all");
  render();
}

function onServerError({ description, details }) {
  const detail = typeof details === "string" ? details : JSON.stringify(details ?? null);
  if (description === "Could not join room") {
    const reasons = {
      room_is_full: "This room is full. Try again later, or pick another room.",
      room_closed: "This room has just been closed.",
      no_such_room: "This room does not exist.",
    };
    finish("error", "Could not join room", reasons[details] ?? `The server said: ${detail}.`);
  } else if (description === "Room closed") {
    if (details === "shutdown") {
      // The server is restarting: the socket closes next, and we come back.
      setState("connecting");
      setStatus("The server is restarting; reconnecting…");
    } else {
      finish("closed", "Room closed", "The room was closed by the server.");
    }
  } else if (description === "No such peer") {
    // A peer left while a message to it was on its way: harmless.
    console.debug("room: no such peer", details);
  } else {
    console.warn("room: server error", description, details);
    showNotice(`Server error: ${description}`, detail === "null" ? "" : detail, {
      info: true,
      hideAfterMs: 8000,
    });
  }
}

function onPeerSignal(event, data, from) {
  if (!from || from === session.peerId) return;
  let call = calls.get(from);
  if (!call) {
    // Someone we were not told about offers: answer as the polite side.
    if (event !== "offer" && !(event === "description" && data?.type === "offer")) return;
    call = ensureCall(from, { polite: true });
    render();
  }
  call.receive(event === "candidate" || event === "reset" ? event : "description", data);
}

const OUTBOX_LIMIT = 256;

function sendTo(peerId, event, data) {
  const message = { event, data, to: [peerId] };
  if (signaling.send(message)) return;
  session.outbox.push(message);
  if (session.outbox.length > OUTBOX_LIMIT) session.outbox.shift();
}

// TURN credentials from the server expire ("<expiry>:<peer id>" usernames):
// ask for fresh ones when 80% of their life has passed.
let iceRefreshTimer = null;

function scheduleIceRefresh(iceServers) {
  clearTimeout(iceRefreshTimer);
  const expiries = iceServers
    .map((server) => Number.parseInt(String(server.username ?? "").split(":")[0], 10))
    .filter((expiry) => Number.isFinite(expiry) && expiry > 0);
  if (expiries.length === 0) return;
  const left = Math.min(...expiries) * 1000 - Date.now();
  const delay = Math.max(5000, left * 0.8);
  iceRefreshTimer = setTimeout(() => {
    if (session.peerId) signaling.send({ event: "ice_servers", to: [session.peerId] });
  }, Math.min(delay, 2 ** 31 - 1));
}

function updateIceServers(iceServers) {
  session.iceServers = iceServers;
  scheduleIceRefresh(iceServers);
  for (const call of calls.values()) {
    try {
      call.pc.setConfiguration({ ...call.pc.getConfiguration(), iceServers });
    } catch (err) {
      console.warn("room: cannot update ICE servers", err);
    }
  }
}

// --- Calls -----------------------------------------------------------------

function ensureCall(peerId, { polite }) {
  let call = calls.get(peerId);
  if (call) return call;
  call = new Call({
    peerId,
    polite,
    iceServers: session.iceServers,
    certificate: session.certificate,
    media,
    send: (event, data) => sendTo(peerId, event, data),
    onChange: () => renderTile(peerId),
  });
  calls.set(peerId, call);
  renderTile(peerId);
  return call;
}

function closeCall(peerId) {
  const call = calls.get(peerId);
  if (!call) return;
  calls.delete(peerId);
  call.close();
  tileOf(peerId)?.remove();
  render();
}

function closeAllCalls() {
  for (const id of [...calls.keys()]) closeCall(id);
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
  sendMediaState("all");
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
      await Promise.all([...calls.values()].map((c) => c.replaceTrack("video", null)));
    } else if (on && !media.tracks.video) {
      const stream = await navigator.mediaDevices.getUserMedia({ video: VIDEO });
      const track = stream.getVideoTracks()[0];
      media.tracks.video = track;
      media.stream.addTrack(track);
      await Promise.all([...calls.values()].map((c) => c.replaceTrack("video", track)));
      ui.localVideo.srcObject = media.stream;
    }
  } catch (err) {
    showNotice("Camera", describeMediaError(err), { info: true });
  } finally {
    media.cameraBusy = false;
    sendMediaState("all");
    render();
  }
}

function mediaState() {
  return {
    audio: media.sending.audio && !media.micMuted,
    video: media.sending.video && media.tracks.video !== null,
  };
}

function sendMediaState(to) {
  if (session.peerId === null) return;
  signaling.send({ event: "media", data: mediaState(), to });
}

function onPeerMedia(peerId, data) {
  const call = calls.get(peerId);
  if (call && data) call.remoteMedia = { audio: data.audio !== false, video: data.video !== false };
  const tile = tileOf(peerId);
  if (!tile || !data) return;
  tile.dataset.audio = data.audio === false ? "off" : "on";
  tile.dataset.video = data.video === false ? "off" : "on";
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

function tileOf(peerId) {
  return ui.stage.querySelector(`figure[data-peer-tile="${CSS.escape(peerId)}"]`);
}

function renderTile(peerId) {
  const call = calls.get(peerId);
  if (!call) return;
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
  const others = calls.size;
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
  ui.mic.disabled = !media.sending.audio || session.finished;
  const cameraOff = media.sending.video && media.tracks.video === null;
  ui.camera.setAttribute("aria-pressed", String(cameraOff));
  ui.camera.querySelector(".text").textContent = cameraOff ? "Camera on" : "Camera off";
  ui.camera.disabled = !media.sending.video || session.finished || media.cameraBusy;
  ui.leave.disabled = session.finished;
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
  session.finished = true;
  signaling.finish();
  closeAllCalls();
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
  signaling.stop(1000);
  finish("closed", "You left the room", "Your camera and microphone are off.");
  ui.rejoin.focus();
});
// Leaving the page (closing the tab, following a link): say goodbye, so the
// server lets the others know at once instead of holding us for a resume.
// Scripts may close a WebSocket only with 1000 or 3000-4999 (the browser's
// own "going away", 1001, is not allowed to them): 1000 is the clean leave.
window.addEventListener("pagehide", () => signaling.stop(1000, "page closed"));
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

// One certificate for all of this page's calls, made here so that the page
// knows its own fingerprint (verify.js).  Without one, each call gets the
// browser's own and shows "not verified".
async function makeCertificate() {
  try {
    session.certificate = await RTCPeerConnection.generateCertificate({
      name: "ECDSA",
      namedCurve: "P-256",
    });
  } catch (err) {
    console.warn("room: cannot make a DTLS certificate", err);
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
  await Promise.all([startLocalMedia(), makeCertificate()]);
  render();
  setStatus("Connecting to the server…");
  signaling.start();
}

main();
