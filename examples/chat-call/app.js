// A chat and a video call with everyone in a room, on the public API of
// rtcsignal.js and rtcsignal-calls.js only (docs/client-js.md).
// Open /?room=NAME in two browsers.

import { Calls, createCertificate } from "./rtcsignal-calls.js";
import { Signaling, socketUrl } from "./rtcsignal.js";

const $ = (/** @type {string} */ id) => /** @type {HTMLElement} */ (document.getElementById(id));
const room = new URLSearchParams(location.search).get("room") ?? "demo";

// The camera and microphone, if the browser gives them (else receive-only).
/** @type {MediaStream | null} */
const stream = await navigator.mediaDevices?.getUserMedia({ audio: true, video: true }).catch(() => null);
/** @type {HTMLVideoElement} */ ($("me")).srcObject = stream;

// Signaling: <this page's folder>/socket/<room>/, with the page's ?token= if any.
const client = new Signaling(socketUrl(location.href, room));
const calls = new Calls(client, { stream, certificate: await createCertificate() });

client.on("state", ({ state }) => {
  document.body.dataset.state = state;
  $("status").textContent = state === "open" ? `in ${room} as ${client.peerId?.slice(0, 4)}` : state;
});
client.on("closed", ({ kind, reason }) => ($("status").textContent = `closed (${kind}): ${reason}`));
client.on("message:chat", ({ from, data }) => say(from ?? "server", String(data?.text)));
client.on("joined", ({ peerId }) => say(peerId, "joined"));
client.on("left", ({ peerId }) => say(peerId, "left"));

// One tile per call: the remote video and its verification code.
calls.on("added", ({ call }) => {
  const figure = document.createElement("figure");
  figure.dataset.peer = call.peerId;
  const video = document.createElement("video");
  video.dataset.peerId = call.peerId;
  video.autoplay = video.playsInline = true;
  const caption = document.createElement("figcaption");
  figure.append(video, caption);
  $("videos").append(figure);
});
calls.on("changed", ({ call }) => {
  const figure = document.querySelector(`figure[data-peer="${CSS.escape(call.peerId)}"]`);
  if (!figure) return;
  const video = /** @type {HTMLVideoElement} */ (figure.querySelector("video"));
  if (video.srcObject !== call.remoteStream) video.srcObject = call.remoteStream;
  const caption = /** @type {HTMLElement} */ (figure.querySelector("figcaption"));
  const { state, code } = call.verification;
  caption.dataset.verification = state;
  caption.textContent = `${call.peerId.slice(0, 4)}: ${call.state}, ${code ?? state}`;
});
calls.on("removed", ({ call }) => document.querySelector(`figure[data-peer="${CSS.escape(call.peerId)}"]`)?.remove());

// The chat.
$("chat").addEventListener("submit", (event) => {
  event.preventDefault();
  const input = /** @type {HTMLInputElement} */ ($("text"));
  if (!input.value) return;
  client.send("chat", { text: input.value });
  say("me", input.value);
  input.value = "";
});

/** @param {string} who @param {string} text */
function say(who, text) {
  const line = document.createElement("li");
  line.textContent = `${who === "me" ? "me" : who.slice(0, 4)}: ${text}`;
  line.dataset.from = who;
  $("log").append(line);
}

window.addEventListener("pagehide", () => client.close(1000, "page closed"));
client.connect();
