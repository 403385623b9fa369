// The benchmark's load generator: one Node process (ws) that drives one
// server through one scenario and prints one JSON line of results.
//
//   node bench/loadgen.mjs '{"protocol": "signal", "port": 8080, "scenario": "throughput", ...}'
//
// protocol "signal" is twisted-signal's wire protocol (the naive relay in
// bench/baseline_server.py speaks it too); "peerjs" is peerjs-server's
// (/peerjs?key=peerjs&id=..&token=.., OPEN, {type, dst, payload}).  Each
// scenario does the equivalent work on either.  Peers of "signal" servers
// meet in rooms named bench-<n>.
//
// For "joins" it prints {"ready": ...} once every peer is connected, then
// waits for a line on stdin before it closes them (so that the caller can
// read the server's memory with the connections idle).

import { randomUUID } from "node:crypto";
import { createInterface } from "node:readline";
import WebSocket from "ws";

const opts = JSON.parse(process.argv[2]);
const HOST = opts.host ?? "127.0.0.1";
const now = () => performance.now(); // ms, fractional

// With "ports" (several servers, e.g. the nodes of a cluster), room
// bench-<n> and all its peers go to ports[n % ports.length].
function port(room) {
  if (!opts.ports) return opts.port;
  return opts.ports[Number(room.split("-").pop()) % opts.ports.length];
}

function url(room, id) {
  if (opts.protocol === "peerjs") {
    // opts.path: where the server mounts peerjs (peerjs-server: "/").
    const path = opts.path ?? "/";
    return `ws://${HOST}:${opts.port}${path}peerjs?key=peerjs&id=${id}&token=${randomUUID()}`;
  }
  return `ws://${HOST}:${port(room)}/socket/${room}/`;
}

// One connected peer: resolves once the server has admitted it.
function connect(room) {
  return new Promise((resolve, reject) => {
    const started = now();
    const wanted = randomUUID();
    const ws = new WebSocket(url(room, wanted), { perMessageDeflate: false });
    const peer = { ws, id: null, others: [], onData: null, joinMs: 0 };
    ws.on("error", reject);
    ws.on("message", (raw) => {
      if (peer.onData !== null && peer.id !== null) {
        peer.onData(raw);
        return;
      }
      const m = JSON.parse(raw);
      if (opts.protocol === "peerjs") {
        if (m.type === "OPEN") {
          peer.id = wanted;
          peer.joinMs = now() - started;
          resolve(peer);
        }
      } else if (m.event === "authenticated") {
        peer.id = m.data.peer_id;
        peer.others.push(...m.data.peers);
        peer.joinMs = now() - started;
        resolve(peer);
      } else if (m.event === "joined") {
        peer.others.push(m.data.peer_id);
      } else if (m.event === "error") {
        reject(new Error(JSON.stringify(m.data)));
      }
    });
  });
}

// Groups of `size` peers, each group in its own room.
async function groups(count, size) {
  const all = [];
  for (let g = 0; g < count; g++) {
    const room = `bench-${g}`;
    const members = [];
    for (let i = 0; i < size; i++) members.push(await connect(room));
    all.push(members);
  }
  await sleep(200); // let the joined messages arrive
  return all;
}

// Tells the caller when the measured interval starts and stops (it reads
// the server's CPU time then).
const mark = (what) => console.log(JSON.stringify({ mark: what }));

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const padding = (n) => "a".repeat(Math.max(0, n));

// A message of about opts.size bytes from `from` to `to` (peer ids), or to
// every other peer ("all": peerjs has no broadcast, so one per addressee).
function frames(to, seq, broadcast) {
  const payload = { candidate: "", sdpMid: "0", sdpMLineIndex: 0, seq, t: now() };
  if (opts.protocol === "peerjs") {
    return to.map((dst) => {
      const f = { type: "CANDIDATE", dst, payload };
      payload.candidate = padding(opts.size - JSON.stringify(f).length);
      return JSON.stringify(f);
    });
  }
  const f = { event: "candidate", to: broadcast ? "all" : to, data: payload };
  payload.candidate = padding(opts.size - JSON.stringify(f).length);
  return [JSON.stringify(f)];
}

function sentAt(raw) {
  const m = JSON.parse(raw);
  return (opts.protocol === "peerjs" ? m.payload : m.data).t;
}

async function closeAll(peers) {
  await Promise.all(
    peers.map(
      (p) =>
        new Promise((resolve) => {
          p.ws.once("close", resolve);
          p.ws.close(1000);
          setTimeout(resolve, 2000);
        }),
    ),
  );
}

// Closed loop: every peer keeps `window` messages in flight to its partner
// (or, broadcasting, window x recipients deliveries), for `seconds`.
async function closedLoop(size, broadcast) {
  const rooms = await groups(opts.groups, size);
  const peers = rooms.flat();
  let counting = false;
  let sending = true;
  let delivered = 0;
  let seq = 0;
  for (const room of rooms) {
    for (const p of room) {
      const others = room.filter((q) => q !== p).map((q) => q.id);
      p.fanout = others.length;
      p.inflight = 0;
      p.send = () => {
        for (const f of frames(broadcast ? others : [others[0]], seq++, broadcast)) p.ws.send(f);
        p.inflight += broadcast ? p.fanout : 1;
      };
    }
    for (const p of room) {
      // Which sender a delivery came from: in a pair the other one; in a
      // broadcast room any, so credit the senders round-robin by count.
      const senders = room.filter((q) => q !== p);
      let next = 0;
      p.onData = () => {
        const s = senders.length === 1 ? senders[0] : senders[next++ % senders.length];
        if (counting) delivered++;
        s.inflight--;
        while (sending && s.inflight <= (opts.window - 1) * s.fanout) s.send();
      };
    }
  }
  for (const p of peers) for (let i = 0; i < opts.window; i++) p.send();
  await sleep(opts.warmup * 1000);
  const cpu = process.cpuUsage();
  mark("start");
  const started = now();
  counting = true;
  await sleep(opts.seconds * 1000);
  counting = false;
  mark("stop");
  const wall = (now() - started) / 1000;
  const used = process.cpuUsage(cpu);
  sending = false;
  await closeAll(peers);
  return {
    deliveries_per_s: delivered / wall,
    delivered,
    loadgen_cpu: (used.user + used.system) / 1e6 / wall,
    peers: peers.length,
  };
}

// Open loop: `rate` messages per second spread over every pair, whatever
// the answers; one-way latency from send to delivery.
async function openLoop() {
  const rooms = await groups(opts.groups, 2);
  const senders = [];
  for (const [a, b] of rooms) {
    senders.push([a, b.id], [b, a.id]);
  }
  const latencies = [];
  let measuring = false;
  for (const p of rooms.flat()) {
    p.onData = (raw) => {
      if (measuring) latencies.push(now() - sentAt(raw));
    };
  }
  let next = 0;
  let seq = 0;
  let owed = 0;
  let last = now();
  const tick = setInterval(() => {
    const t = now();
    owed += ((t - last) / 1000) * opts.rate;
    last = t;
    for (; owed >= 1; owed--) {
      const [p, to] = senders[next++ % senders.length];
      p.ws.send(frames([to], seq++, false)[0]);
    }
  }, 1);
  await sleep(opts.warmup * 1000);
  const cpu = process.cpuUsage();
  const started = now();
  const sentBefore = seq;
  measuring = true;
  await sleep(opts.seconds * 1000);
  measuring = false;
  const wall = (now() - started) / 1000;
  const used = process.cpuUsage(cpu);
  const sent = seq - sentBefore;
  clearInterval(tick);
  await sleep(200);
  await closeAll(rooms.flat());
  latencies.sort((x, y) => x - y);
  const q = (f) => latencies[Math.min(latencies.length - 1, Math.floor(f * latencies.length))];
  return {
    rate: opts.rate,
    achieved_per_s: sent / wall,
    received: latencies.length,
    p50_ms: q(0.5),
    p99_ms: q(0.99),
    p999_ms: q(0.999),
    loadgen_cpu: (used.user + used.system) / 1e6 / wall,
  };
}

// Joins: `peers` connections, `concurrency` at a time, each counted until
// the server admits it (authenticated / OPEN); rooms of two.
async function joins() {
  const peers = [];
  let room = 0;
  const cpu = process.cpuUsage();
  mark("start");
  const started = now();
  let launched = 0;
  async function worker() {
    while (launched < opts.peers) {
      launched++;
      peers.push(await connect(`join-${room++ >> 1}`));
    }
  }
  await Promise.all(Array.from({ length: opts.concurrency }, worker));
  mark("stop");
  const wall = (now() - started) / 1000;
  const used = process.cpuUsage(cpu);
  const result = {
    joins_per_s: peers.length / wall,
    peers: peers.length,
    loadgen_cpu: (used.user + used.system) / 1e6 / wall,
  };
  console.log(JSON.stringify({ ready: true }));
  const lines = createInterface({ input: process.stdin });
  await new Promise((resolve) => lines.once("line", resolve));
  lines.close();
  await closeAll(peers);
  return result;
}

const scenarios = {
  throughput: () => closedLoop(2, false),
  fanout: () => closedLoop(opts.room_size, true),
  latency: openLoop,
  joins,
};

try {
  const result = await scenarios[opts.scenario]();
  const total = process.cpuUsage();
  result.loadgen_cpu_seconds = (total.user + total.system) / 1e6;
  console.log(JSON.stringify(result));
  process.exit(0);
} catch (e) {
  console.error(String(e && e.stack ? e.stack : e));
  process.exit(1);
}
