// The size of the browser client library's modules as shipped (no build
// step) and minified by esbuild then gzipped (only measured here; the
// modules are served as they are): `node js/size.mjs`, for docs/client-js.md.

import { readFileSync } from "node:fs";
import { gzipSync } from "node:zlib";
import { buildSync } from "esbuild";

const STATIC = new URL("../static/", import.meta.url);
const kb = (bytes) => `${(bytes / 1024).toFixed(1)} KiB`;
const modules = [
  ["rtcsignal.js", false],
  ["rtcsignal-calls.js", false],
  ["verify.js", false],
  ["rtcsignal-calls.js", true],
];
console.log("| module | source | minified | minified + gzip |");
console.log("|---|---|---|---|");
for (const [name, bundle] of modules) {
  const path = new URL(name, STATIC).pathname;
  const source = readFileSync(path);
  const { outputFiles } = buildSync({ entryPoints: [path], bundle, minify: true, format: "esm", write: false });
  const minified = outputFiles[0].contents;
  const label = bundle ? `${name} with verify.js (what a calls page loads besides rtcsignal.js)` : name;
  console.log(`| ${label} | ${bundle ? "" : kb(source.length)} | ${kb(minified.length)} | ${kb(gzipSync(minified, { level: 9 }).length)} |`);
}
