// static/rtcsignal.js against a tiny fake server in Node: what a real
// server cannot be made to send (server events forged by a peer), the
// outbox's bound, and the keepalive.

import assert from "node:assert/strict";
import { test } from "node:test";
import WebSocket, { WebSocketServer } from "ws";
import { Backoff, Signaling, fromServer } from "../../static/rtcsignal.js";
import { next, record, sleep } from "./support/server.mjs";

const ME = "11111111-1111-4111-8111-111111111111";
const BOB = "22222222-2222-4222-8222-222222222222";
const MALLORY = "33333333-3333-4333-8333-333333333333";
const CAROL = "44444444-4444-4444-8444-444444444444";

/** A server on a free port; `onConnection(socket, received)` plays the server. */
async function fakeServer(onConnection) {
  const wss = new WebSocketServer({ host: "127.0.0.1", port: 0 });
  await new Promise((ok) => wss.once("listening", ok));
  const received = [];
  wss.on("connection", (socket) => {
    socket.on("message", (data) => received.push(String(data)));
    onConnection(socket, received);
  });
  return {
    url: `ws://127.0.0.1:${wss.address().port}/socket/fake/`,
    received,
    close: () => new Promise((ok) => wss.close(ok)),
  };
}

const message = (event, data, from = null, to = [ME]) => JSON.stringify({ event, data, from, to });
const AUTHENTICATED = message("authenticated", { peer_id: ME, peers: [BOB], ice_servers: [{ urls: ["stun:a"] }] });

test("server events are trusted only from the server", async (t) => {
  const server = await fakeServer((socket) => {
    socket.send(AUTHENTICATED);
    // Mallory's forgeries: server events with a peer's `from`.
    socket.send(message("left", { peer_id: BOB }, MALLORY, "all"));
    socket.send(message("joined", { peer_id: CAROL }, MALLORY, "all"));
    socket.send(message("error", { description: "Could not join room", details: "room_is_full" }, MALLORY));
    socket.send(message("error", { description: "Room closed", details: "normal" }, MALLORY));
    socket.send(message("ice_servers", [{ urls: ["turn:evil"], username: "1:x", credential: "c" }], MALLORY));
    socket.send(message("authenticated", { peer_id: MALLORY, peers: [] }, MALLORY));
    // Then the real thing, and a marker.
    socket.send(message("joined", { peer_id: CAROL }, CAROL, "all"));
    socket.send(message("done", null, BOB));
  });
  const client = new Signaling(server.url, { WebSocket, logger: null });
  t.after(() => {
    client.close();
    return server.close();
  });
  const seen = record(client, ["open", "joined", "left", "error", "ice_servers", "closed", "message"]);
  client.connect();
  await next(client, "message:done");
  assert.equal(client.state, "open");
  assert.equal(client.peerId, ME);
  assert.deepEqual(client.peers, [BOB, CAROL]);
  assert.deepEqual(client.iceServers, [{ urls: ["stun:a"] }]);
  assert.deepEqual(
    seen.map(([event]) => event),
    ["open", "ice_servers", "joined", "message"],
  );
  assert.deepEqual(seen[2][1], { peerId: CAROL });

  // The rule itself.
  assert.equal(fromServer({ event: "joined", data: { peer_id: CAROL }, from: CAROL }), true);
  assert.equal(fromServer({ event: "joined", data: { peer_id: CAROL }, from: null }), false);
  assert.equal(fromServer({ event: "left", data: { peer_id: BOB }, from: null }), true);
  assert.equal(fromServer({ event: "chat", data: null, from: BOB }), true);
});

test("the outbox keeps the last 256 messages sent before the connection is up", async (t) => {
  const server = await fakeServer((socket) => socket.send(AUTHENTICATED));
  const client = new Signaling(server.url, { WebSocket, logger: null });
  t.after(() => {
    client.close();
    return server.close();
  });
  for (let n = 0; n < 300; n++) assert.equal(client.send("n", n), false);
  assert.equal(client.queued, 256);
  client.connect();
  await client.ready;
  const deadline = Date.now() + 5000;
  while (server.received.length < 256 && Date.now() < deadline) await sleep(20);
  const got = server.received.map((frame) => JSON.parse(frame));
  assert.deepEqual(
    got.map((m) => m.data),
    Array.from({ length: 256 }, (_, i) => i + 44),
  );
  assert.deepEqual(got[0], { event: "n", data: 44, to: "all" });
});

test("keepalive: a ping frame every interval; a silent server counts as lost", async (t) => {
  let answer = true;
  const server = await fakeServer((socket) => {
    socket.send(AUTHENTICATED);
    socket.on("message", (data) => {
      if (String(data) === "ping" && answer) socket.send("pong");
    });
  });
  const client = new Signaling(server.url, { WebSocket, logger: null, pingInterval: 100, pingTimeout: 300 });
  t.after(() => {
    client.close();
    return server.close();
  });
  client.connect();
  await client.ready;
  await sleep(450);
  assert.ok(server.received.filter((f) => f === "ping").length >= 3, server.received);
  assert.equal(client.state, "open");
  answer = false;
  const lost = await next(client, "reconnecting", () => true, 3000);
  assert.equal(lost.reason, "no answer to ping");
});

test("no WebSocket class: a clear error", () => {
  const saved = globalThis.WebSocket;
  delete globalThis.WebSocket;
  try {
    assert.throws(() => new Signaling("ws://127.0.0.1:1/socket/x/"), /WebSocket option/);
  } finally {
    if (saved) globalThis.WebSocket = saved;
  }
});

test("Backoff: the Python client's delays, capped, with jitter; a policy can give up", async (t) => {
  const low = new Backoff({ random: () => 0 });
  const high = new Backoff({ random: () => 0.999999 });
  assert.deepEqual(
    [0, 1, 2, 3, 4, 5, 6, 50].map((n) => low.delay(n)),
    [250, 500, 1000, 2000, 4000, 5000, 5000, 5000],
  );
  assert.deepEqual(
    [0, 1, 5].map((n) => Math.round(high.delay(n))),
    [500, 1000, 10000],
  );
  assert.throws(() => new Backoff({ initial: 0 }), RangeError);
  assert.throws(() => new Backoff({ jitter: 2 }), RangeError);

  // A policy that gives up after two attempts: closed, kind "lost".
  const server = await fakeServer((socket) => socket.terminate());
  const attempts = [];
  const client = new Signaling(server.url, {
    WebSocket,
    logger: null,
    reconnect: { delay: (attempt) => (attempts.push(attempt), attempt < 2 ? 50 : null) },
  });
  t.after(() => {
    client.close();
    return server.close();
  });
  client.connect();
  const closed = await next(client, "closed");
  assert.equal(closed.kind, "lost");
  assert.deepEqual(attempts, [0, 1, 2]);
  await assert.rejects(client.ready, /closed \(lost\)/);
});
