// Write build-info.json into the build: a hash of every file the build is made from (sources, configs,
// package.json and package-lock.json). tests/dashboard/test_build.py recomputes it with the same rules,
// so CI fails when someone changes the dashboard and forgets `npm ci && npm run build`.
// Rules: the files below, sorted by their path relative to dashboard/ (POSIX), each contributing
// "<path>\0<sha256 hex of its bytes>\n" to one SHA-256.
import { createHash } from "node:crypto";
import { readFileSync, readdirSync, statSync, writeFileSync } from "node:fs";
import { join, relative, sep } from "node:path";
import { fileURLToPath } from "node:url";

const root = fileURLToPath(new URL("..", import.meta.url));
const roots = ["index.html", "package.json", "package-lock.json", "svelte.config.js", "tsconfig.json", "vite.config.ts", "scripts", "src"];

function walk(path, out) {
  if (statSync(path).isDirectory()) {
    for (const name of readdirSync(path)) walk(join(path, name), out);
  } else {
    out.push(relative(root, path).split(sep).join("/"));
  }
}

const files = [];
for (const r of roots) walk(join(root, r), files);
files.sort();
const total = createHash("sha256");
for (const f of files) {
  const digest = createHash("sha256").update(readFileSync(join(root, f))).digest("hex");
  total.update(`${f}\0${digest}\n`);
}
const out = join(root, "../server/fluxrun_server/static/dashboard/build-info.json");
writeFileSync(out, JSON.stringify({ source_sha256: total.digest("hex"), files }, null, 1) + "\n");
console.log(`stamped ${files.length} source files into ${relative(root, out)}`);
