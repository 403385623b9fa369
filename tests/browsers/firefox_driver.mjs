// Drives a stock Firefox (Debian's firefox-esr) over WebDriver BiDi with
// puppeteer-core, for the Python tests (tests/support/firefox.py).  It never
// downloads a browser.
//
//   node firefox_driver.mjs EXECUTABLE
//
// JSON lines on stdin, one request each, answered on stdout in order:
//   {"id": 1, "op": "open", "init": [js, ...]}  -> {"id": 1, "result": PAGE}
//       a new page in a browser context (profile) of its own; each `init`
//       script runs in it before any page script, on every navigation
//   {"id": 2, "op": "goto", "page": PAGE, "url": URL}
//   {"id": 3, "op": "evaluate", "page": PAGE, "js": JS, "arg": ANY}
//       JS is an expression; when it is a function it is called with `arg`
//       (awaited); the answer's "result" is the JSON value it gave
//   {"id": 4, "op": "close", "page": PAGE}
//   {"id": 5, "op": "quit"}
// A failure is answered {"id": N, "error": "message"}.  Unrequested lines
// report what the pages said:
//   {"event": "console", "page": PAGE, "type": "error", "text": "..."}
//   {"event": "pageerror", "page": PAGE, "text": "..."}
// The first line, once Firefox is up, is {"event": "ready", "version": "..."}.

import { createInterface } from "node:readline";
import puppeteer from "puppeteer-core";

// A fake camera and microphone that need no permission prompt, WebRTC on
// loopback, and nothing that reaches out to the network by itself.
const PREFS = {
  "permissions.default.camera": 1,
  "permissions.default.microphone": 1,
  "media.navigator.permission.disabled": true,
  "media.navigator.streams.fake": true,
  "media.peerconnection.ice.loopback": true,
  "media.peerconnection.ice.obfuscate_host_addresses": false,
  "media.autoplay.default": 0,
  "media.autoplay.blocking_policy": 0,
  "app.update.auto": false,
  "app.update.enabled": false,
  "app.normandy.enabled": false,
  "browser.discovery.enabled": false,
  "browser.ping-centre.telemetry": false,
  "datareporting.usage.uploadEnabled": false,
  "toolkit.telemetry.enabled": false,
  "toolkit.telemetry.unified": false,
  "toolkit.telemetry.server": "",
  "network.captive-portal-service.enabled": false,
  "network.connectivity-service.enabled": false,
  "network.dns.disablePrefetch": true,
  "network.prefetch-next": false,
  "network.predictor.enabled": false,
  "network.trr.mode": 5,
  "browser.safebrowsing.provider.mozilla.updateURL": "",
  "browser.region.network.url": "",
  "browser.region.update.enabled": false,
  "services.settings.server": "",
  "extensions.systemAddon.update.enabled": false,
  "extensions.blocklist.enabled": false,
  "messaging-system.rsexperimentloader.enabled": false,
  "media.gmp-gmpopenh264.autoupdate": false,
  "media.gmp-gmpopenh264.enabled": false,
};

const executablePath = process.argv[2] ?? "/usr/bin/firefox-esr";
const out = (message) => process.stdout.write(`${JSON.stringify(message)}\n`);

const browser = await puppeteer.launch({
  browser: "firefox",
  protocol: "webDriverBiDi",
  executablePath,
  headless: true,
  acceptInsecureCerts: true,
  extraPrefsFirefox: PREFS,
  args: ["--no-remote"],
  timeout: 60_000,
  protocolTimeout: 60_000,
});

const pages = new Map();
let nextPage = 1;

async function open({ init = [] }) {
  const context = await browser.createBrowserContext();
  // A window of its own: Firefox paints no video in a background tab.
  const page = await context.newPage({ type: "window" });
  const id = nextPage++;
  pages.set(id, { page, context });
  page.on("console", (m) => out({ event: "console", page: id, type: m.type(), text: m.text() }));
  page.on("pageerror", (e) => out({ event: "pageerror", page: id, text: String(e?.message ?? e) }));
  for (const script of init) await page.evaluateOnNewDocument(script);
  return id;
}

function pageOf(id) {
  const entry = pages.get(id);
  if (!entry) throw new Error(`no page ${id}`);
  return entry;
}

async function evaluate({ page, js, arg }) {
  const source =
    `(async () => { const f = (${js}); ` +
    `return typeof f === "function" ? await f(${JSON.stringify(arg ?? null)}) : await f; })()`;
  const result = await pageOf(page).page.evaluate(source);
  return result === undefined ? null : result;
}

async function close({ page }) {
  const { context } = pageOf(page);
  pages.delete(page);
  await context.close();
  return null;
}

const ops = {
  open,
  goto: async ({ page, url }) => {
    await pageOf(page).page.goto(url, { waitUntil: "load", timeout: 30_000 });
    return null;
  },
  evaluate,
  close,
  quit: async () => {
    await browser.close();
    return null;
  },
};

out({ event: "ready", version: await browser.version() });

// One request at a time, in order.
const lines = createInterface({ input: process.stdin });
for await (const line of lines) {
  if (!line.trim()) continue;
  let request;
  try {
    request = JSON.parse(line);
    const op = ops[request.op];
    if (!op) throw new Error(`unknown op ${request.op}`);
    out({ id: request.id, result: await op(request) });
  } catch (err) {
    out({ id: request?.id ?? null, error: String(err?.message ?? err) });
  }
  if (request?.op === "quit") break;
}
await browser.close().catch(() => {});
process.exit(0);
