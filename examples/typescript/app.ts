// The chat-and-call example in TypeScript: what `make lint` compiles
// (strict) against the library's declarations, so the types stay usable.
// Compile it with any bundler or `tsc`; the imports are the npm package's
// ("twisted-signal-client" and "twisted-signal-client/calls").

import {
  Backoff,
  type CloseReason,
  type OpenEvent,
  type PeerMessage,
  Signaling,
  socketUrl,
} from "twisted-signal-client";
import { type Call, Calls, createCertificate } from "twisted-signal-client/calls";

interface Chat {
  text: string;
}

export async function start(room: string, log: (line: string) => void): Promise<Signaling> {
  const stream = await navigator.mediaDevices.getUserMedia({ audio: true, video: true });
  const client = new Signaling(socketUrl(location.href, room), {
    token: () => new URLSearchParams(location.search).get("token"),
    reconnect: new Backoff({ initial: 1000, maximum: 30000 }),
  });
  const calls = new Calls(client, { stream, certificate: await createCertificate() });

  client.on("open", ({ peerId, peers, resumed }: OpenEvent) => {
    log(`${resumed ? "back" : "in"} as ${peerId} with ${peers.length} others`);
  });
  client.on("reconnecting", ({ delay, failures }) => log(`retrying in ${delay} ms (${failures})`));
  client.on("closed", (reason: CloseReason) => log(`closed: ${reason.kind} ${reason.reason}`));
  client.on("error", ({ description, details }) => log(`${description}: ${JSON.stringify(details)}`));
  client.on("message:chat", ({ from, data }: PeerMessage<Chat>) => log(`${from}: ${data.text}`));

  const videos = new Map<string, HTMLVideoElement>();
  calls.on("added", ({ call }) => {
    const video = document.createElement("video");
    video.autoplay = true;
    videos.set(call.peerId, video);
    document.body.append(video);
  });
  calls.on("changed", ({ call }: { call: Call }) => {
    const video = videos.get(call.peerId);
    if (video && video.srcObject !== call.remoteStream) video.srcObject = call.remoteStream;
  });
  calls.on("verification", ({ call, state, code }) => {
    if (state === "verified") log(`${call.peerId}: compare ${code ?? ""}`);
  });
  calls.on("removed", ({ call }) => {
    videos.get(call.peerId)?.remove();
    videos.delete(call.peerId);
  });

  client.connect();
  await client.ready;
  const sent: boolean = client.send("chat", { text: "hello" } satisfies Chat);
  log(sent ? "said hello" : "hello queued");
  return client;
}
