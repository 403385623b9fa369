// static/rtcsignal.js against a real `twistd -n rtcsignal`, in Node with ws.

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import WebSocket from "ws";
import { Backoff, ERRORS, Signaling } from "../../static/rtcsignal.js";
import { Server, next, record, recordingWebSocket, sleep, token } from "./support/server.mjs";

const FAST = () => new Backoff({ initial: 200, maximum: 400 });
const clients = [];

function client(url, options = {}) {
  const made = new Signaling(url, { WebSocket, logger: null, reconnect: FAST(), ...options });
  clients.push(made);
  return made;
}

after(() => {
  for (const c of clients) c.close();
});

describe("one room on a server", () => {
  const server = new Server([
    "--turn-secret",
    "s3cret",
    "--turn-uri",
    "turn:127.0.0.1:3478",
    "--turn-ttl",
    "2",
  ]);
  before(() => server.start());
  after(() => server.kill());

  test("every event: open, joined, messages by name and catch-all, errors, left, closed", async () => {
    const alice = client(server.socket("events"));
    const aliceSeen = record(alice, ["state", "open", "joined", "left", "peers", "error", "message", "message:chat"]);
    alice.connect();
    const aliceOpen = await alice.ready;
    assert.deepEqual(aliceOpen.peers, []);
    assert.equal(aliceOpen.resumed, false);
    assert.match(alice.peerId, /^[0-9a-f-]{36}$/);
    assert.equal(alice.iceServers.length, 1);
    assert.match(alice.iceServers[0].username, /^\d+:/);
    assert.ok(alice.resumeToken);

    const bob = client(server.socket("events"));
    const bobJoined = next(alice, "joined");
    bob.connect();
    const bobOpen = await bob.ready;
    assert.deepEqual(bobOpen.peers, [alice.peerId]);
    assert.deepEqual(await bobJoined, { peerId: bob.peerId });
    assert.deepEqual(alice.peers, [bob.peerId]);

    // To everyone else, to one id, to a list; a message to ourselves echoes.
    const chats = [];
    alice.on("message:chat", (m) => chats.push(m));
    const third = next(alice, "message:chat", (m) => m.data.text === "to a list");
    assert.equal(bob.send("chat", { text: "to all" }), true);
    bob.send("chat", { text: "to one" }, alice.peerId);
    bob.send("chat", { text: "to a list" }, [alice.peerId]);
    const own = next(bob, "message:note");
    bob.send("note", 1, [bob.peerId]);
    assert.deepEqual(await own, { event: "note", data: 1, from: bob.peerId, to: [bob.peerId] });
    await third;
    assert.deepEqual(
      chats.map((m) => [m.data.text, m.from, m.to]),
      [
        ["to all", bob.peerId, "all"],
        ["to one", bob.peerId, [alice.peerId]],
        ["to a list", bob.peerId, [alice.peerId]],
      ],
    );

    // An unknown addressee: the server's error, with its description.
    const unknown = "00000000-0000-4000-8000-000000000000";
    const error = next(bob, "error");
    bob.send("chat", null, [unknown]);
    assert.deepEqual(await error, { description: ERRORS.NO_SUCH_PEER, details: [unknown] });
    assert.throws(() => bob.send("joined", {}), TypeError);
    assert.throws(() => bob.send("", {}), TypeError);

    // Bob leaves cleanly: Alice gets `left` at once.
    const left = next(alice, "left");
    bob.close();
    assert.deepEqual(await left, { peerId: bob.peerId });
    assert.equal(bob.state, "closed");
    assert.deepEqual(bob.closeReason, { kind: "left", code: 1000, reason: "closed by the client" });
    assert.deepEqual(alice.peers, []);

    const names = aliceSeen.map(([event]) => event);
    assert.deepEqual(names.slice(0, 4), ["state", "state", "open", "peers"]);
    assert.deepEqual(
      aliceSeen.filter(([e]) => e === "state").map(([, p]) => p.state),
      ["connecting", "open"],
    );
    assert.equal(names.filter((e) => e === "message").length, 3);
    assert.equal(names.filter((e) => e === "message:chat").length, 3);
    assert.deepEqual(
      aliceSeen.filter(([e]) => e === "peers").map(([, p]) => p.peers),
      [[], [bob.peerId], []],
    );
    assert.equal(names.filter((e) => e === "error").length, 0);
  });

  test("resume after a dropped socket: same id, sends queued meanwhile replayed, nothing lost", async () => {
    const recorder = recordingWebSocket();
    // Any object with delay(attempt) is a reconnection policy.
    const alice = client(server.socket("resume"), { WebSocket: recorder.WebSocket, reconnect: { delay: () => 1000 } });
    const bob = client(server.socket("resume"));
    alice.connect();
    await alice.ready;
    bob.connect();
    await bob.ready;
    const bobSaw = record(bob, ["joined", "left", "message:chat"]);
    const bobGotBoth = next(bob, "message:chat", (m) => m.data.n === 2);
    const aliceId = alice.peerId;
    const firstToken = alice.resumeToken;

    // The socket dies without a close frame (a network drop).
    const reconnecting = next(alice, "reconnecting");
    recorder.sockets[0].terminate();
    const { joined } = await reconnecting;
    assert.equal(joined, true);
    // (What is sent to Alice before the server noticed is lost with the old
    // socket: that is the network's doing, not the client's.)
    await server.waitForLog(`peer ${aliceId} held for`);
    assert.equal(alice.state, "reconnecting");
    // Meanwhile Alice sends (queued), and Bob sends to her (the server queues).
    assert.equal(alice.send("chat", { n: 1 }, [bob.peerId]), false);
    assert.equal(alice.send("chat", { n: 2 }), false);
    assert.equal(alice.queued, 2);
    bob.send("chat", { n: 3 }, [aliceId]);

    const resumed = next(alice, "resumed");
    const fromBob = next(alice, "message:chat");
    const payload = await resumed;
    assert.equal(payload.peerId, aliceId);
    assert.equal(alice.peerId, aliceId);
    assert.notEqual(alice.resumeToken, firstToken);
    assert.equal(new URL(recorder.sockets[1].url).searchParams.get("resume"), firstToken);
    assert.deepEqual((await fromBob).data, { n: 3 });
    await bobGotBoth;
    assert.deepEqual(
      bobSaw.map(([event, m]) => [event, m.data?.n]),
      [
        ["message:chat", 1],
        ["message:chat", 2],
      ],
    );
    assert.equal(alice.queued, 0);
  });

  test("ICE servers refreshed before the TURN credentials expire", async () => {
    const alice = client(server.socket("ice"), { iceRefresh: { ratio: 0.5, minDelay: 200 } });
    alice.connect();
    const { iceServers } = await alice.ready;
    const first = iceServers[0].username;
    const fresh = await next(alice, "ice_servers", ({ iceServers: s }) => s[0].username !== first, 5000);
    const [expiry, peerId] = fresh.iceServers[0].username.split(":");
    assert.equal(peerId, alice.peerId);
    assert.ok(Number(expiry) > Number(first.split(":")[0]));
    assert.deepEqual(alice.iceServers, fresh.iceServers);
  });
});

describe("refusals are not retried", () => {
  const SECRET = "jwt-secret";
  const ADMIN = "admin-token";
  const server = new Server([
    "--jwt-secret",
    SECRET,
    "--no-auto-rooms",
    "--room",
    "full:1",
    "--room",
    "kick",
    "--room",
    "closing",
    "--allowed-origin",
    "https://ok.example",
    "--admin-token",
    ADMIN,
  ]);
  const good = token(SECRET, { room: "*", sub: "t", exp: Math.floor(Date.now() / 1000) + 600 });
  before(() => server.start());
  after(() => server.kill());

  async function closedFor(url, options = {}, extra = {}) {
    const recorder = recordingWebSocket(extra);
    const c = client(url, { WebSocket: recorder.WebSocket, ...options });
    const seen = record(c, ["reconnecting", "open"]);
    c.connect();
    const reason = await next(c, "closed");
    await sleep(500); // a retry would have started by now
    assert.deepEqual(seen, []);
    assert.equal(recorder.sockets.length, 1);
    await assert.rejects(c.ready);
    return reason;
  }

  test("HTTP 400, 401, 403, 404 of the upgrade", async () => {
    const expired = token(SECRET, { room: "*", exp: 1000 });
    const cases = [
      [server.socket("bad name"), { token: good }, {}, 400],
      [server.socket("kick"), {}, {}, 401],
      [server.socket("kick"), { token: expired }, {}, 401],
      [server.socket("kick"), { token: good }, { origin: "https://evil.example" }, 403],
      [server.socket("nowhere"), { token: good }, {}, 404],
    ];
    for (const [url, options, extra, status] of cases) {
      const reason = await closedFor(url, options, extra);
      assert.equal(reason.kind, "refused");
      assert.equal(reason.status, status);
    }
  });

  test("room full", async () => {
    const first = client(server.socket("full"), { token: good });
    first.connect();
    await first.ready;
    const errors = [];
    const reason = await closedFor(server.socket("full"), { token: good }, {});
    assert.deepEqual([reason.kind, reason.details], ["join_refused", "room_is_full"]);
    assert.deepEqual(errors, []);
  });

  test("kicked, and room closed", async () => {
    const kicked = client(server.socket("kick"), { token: good });
    const retries = record(kicked, ["reconnecting"]);
    kicked.connect();
    await kicked.ready;
    const closed = next(kicked, "closed");
    const answer = await server.admin("DELETE", `/rooms/kick/peers/${kicked.peerId}`, ADMIN);
    assert.equal(answer.status, 204, await answer.text());
    assert.equal((await closed).kind, "kicked");
    assert.equal((await closed).code, 1008);

    const member = client(server.socket("closing"), { token: good });
    member.on("reconnecting", (p) => retries.push(["reconnecting", p]));
    member.connect();
    await member.ready;
    const error = next(member, "error");
    const roomClosed = next(member, "closed");
    await server.admin("DELETE", "/rooms/closing", ADMIN);
    assert.deepEqual(await error, { description: ERRORS.ROOM_CLOSED, details: "normal" });
    assert.deepEqual([(await roomClosed).kind, (await roomClosed).details], ["room_closed", "normal"]);
    await sleep(500);
    assert.deepEqual(retries, []);
  });
});

test("reconnect after a server restart: a new peer id, queued sends dropped", async () => {
  const server = await new Server().start();
  try {
    const alice = client(server.socket("restart"));
    alice.connect();
    await alice.ready;
    const oldId = alice.peerId;
    const reconnecting = next(alice, "reconnecting");
    await server.kill();
    await reconnecting;
    alice.send("chat", "for the old room");
    const reopened = next(alice, "open", () => true, 30000);
    await server.start();
    const open = await reopened;
    assert.equal(open.resumed, false);
    assert.equal(open.previousPeerId, oldId);
    assert.notEqual(alice.peerId, oldId);
    assert.equal(open.dropped, 1);
    assert.equal(alice.state, "open");
  } finally {
    await server.kill();
  }
});
