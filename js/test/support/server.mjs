// Helpers for the Node tests of static/rtcsignal.js: a real
// `twistd -n rtcsignal` on a free loopback port, a recording WebSocket
// class, HS256 tokens, and waiting for a client's events.

import { spawn } from "node:child_process";
import { createHmac } from "node:crypto";
import { mkdtempSync, openSync, readFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import WebSocket from "ws";

const HERE = dirname(fileURLToPath(import.meta.url));
export const REPO = resolve(HERE, "..", "..", "..");
// pytest passes the twistd of its own virtualenv; by hand, the worktree's.
const TWISTD = process.env.RTCSIGNAL_TWISTD ?? join(REPO, ".venv", "bin", "twistd");
const START_TIMEOUT_MS = 20000;

export async function freePort() {
  const server = createServer();
  await new Promise((ok) => server.listen(0, "127.0.0.1", ok));
  const { port } = server.address();
  await new Promise((ok) => server.close(ok));
  return port;
}

/** One `twistd --pidfile= -n rtcsignal` with `args`; `start()` waits for /healthz. */
export class Server {
  constructor(args = [], port = null) {
    this.args = args;
    this.port = port;
    this.folder = mkdtempSync(join(tmpdir(), "rtcsignal-js-"));
    this.process = null;
    this.runs = 0;
  }

  get http() {
    return `http://127.0.0.1:${this.port}`;
  }

  socket(room) {
    return `ws://127.0.0.1:${this.port}/socket/${room}/`;
  }

  async start() {
    this.port ??= await freePort();
    const run = this.runs++;
    const out = openSync(join(this.folder, `out-${run}`), "w");
    const argv = ["--pidfile=", "-n", "rtcsignal", "--endpoint", `tcp:${this.port}:interface=127.0.0.1`, ...this.args];
    const env = { ...process.env };
    delete env.PYTHONPATH;
    this.process = spawn(TWISTD, argv, { cwd: this.folder, env, stdio: ["ignore", out, out] });
    const exited = new Promise((ok) => this.process.once("exit", ok));
    const deadline = Date.now() + START_TIMEOUT_MS;
    while (Date.now() < deadline) {
      if (this.process.exitCode !== null) throw new Error(`twistd exited:\n${this.log()}`);
      try {
        const answer = await fetch(`${this.http}/healthz`);
        if (answer.status === 200) return this;
      } catch {
        // not listening yet
      }
      await Promise.race([sleep(50), exited]);
    }
    throw new Error(`twistd did not become healthy:\n${this.log()}`);
  }

  log() {
    let text = "";
    for (let run = 0; run < this.runs; run++) {
      try {
        text += readFileSync(join(this.folder, `out-${run}`), "utf8");
      } catch {
        // not written yet
      }
    }
    return text;
  }

  /** Wait until the server has logged `text`. */
  async waitForLog(text, ms = 10000) {
    const deadline = Date.now() + ms;
    while (!this.log().includes(text)) {
      if (Date.now() > deadline) throw new Error(`not in the log within ${ms} ms: ${text}\n${this.log()}`);
      await sleep(20);
    }
  }

  /** SIGKILL: the server is gone at once, without closing anything. */
  async kill() {
    const child = this.process;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise((ok) => child.once("exit", ok));
    child.kill("SIGKILL");
    await exited;
  }

  async admin(method, path, token) {
    return fetch(`${this.http}/admin${path}`, { method, headers: { authorization: `Bearer ${token}` } });
  }
}

export function sleep(ms) {
  return new Promise((ok) => setTimeout(ok, ms));
}

/** A `ws` WebSocket class that keeps every socket it made (and can set headers). */
export function recordingWebSocket(options = {}) {
  const sockets = [];
  class Recording extends WebSocket {
    constructor(url, protocols) {
      super(url, protocols, options);
      sockets.push(this);
    }
  }
  return { WebSocket: Recording, sockets };
}

export function token(secret, claims) {
  const part = (value) => Buffer.from(JSON.stringify(value)).toString("base64url");
  const unsigned = `${part({ alg: "HS256", typ: "JWT" })}.${part(claims)}`;
  return `${unsigned}.${createHmac("sha256", secret).update(unsigned).digest("base64url")}`;
}

/**
 * Every payload of `events` that `client` emits, in order, as [event, payload].
 */
export function record(client, events) {
  const seen = [];
  for (const event of events) client.on(event, (payload) => seen.push([event, payload]));
  return seen;
}

/** The next `event` of `client` (for which `test(payload)` holds), within `ms`. */
export function next(client, event, test = () => true, ms = 10000) {
  return new Promise((ok, fail) => {
    const timer = setTimeout(() => {
      off();
      fail(new Error(`no "${event}" within ${ms} ms`));
    }, ms);
    const off = client.on(event, (payload) => {
      if (!test(payload)) return;
      clearTimeout(timer);
      off();
      ok(payload);
    });
  });
}
