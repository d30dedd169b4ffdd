#!/usr/bin/env node
/* Builds dist/ only when it is missing or older than the sources, so `npm start` and the CLI never recompile a
 * built tree. Runs as `prepare` (so `npm ci` builds once) and before `npm start`. On a production install
 * (`npm ci --omit=dev`) TypeScript is absent: a built tree is used as it is; a missing one is a clear error. */
const fs = require('node:fs');
const path = require('node:path');
const { spawnSync } = require('node:child_process');

const root = path.resolve(__dirname, '..');
// tsc rewrites every output, so the entry point's age is the build's age (noEmitOnError keeps a failed build stale).
const stamp = path.join(root, 'dist', 'gateway', 'bin.js');
const force = process.argv.includes('--force');

/** Newest modification time among the inputs of the build. */
function newestSource() {
  let newest = 0;
  // A packaged tree (the Docker image, an npm pack) ships dist/ without sources: nothing is newer then.
  const walk = (dir) => {
    if (!fs.existsSync(dir)) return;
    for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
      const p = path.join(dir, e.name);
      if (e.isDirectory()) walk(p);
      else if (e.name.endsWith('.ts')) newest = Math.max(newest, fs.statSync(p).mtimeMs);
    }
  };
  walk(path.join(root, 'gateway'));
  for (const f of ['tsconfig.json', 'tsconfig.build.json']) {
    const p = path.join(root, f);
    if (fs.existsSync(p)) newest = Math.max(newest, fs.statSync(p).mtimeMs);
  }
  return newest;
}

function builtAt() {
  try {
    return fs.statSync(stamp).mtimeMs;
  } catch {
    return -1;
  }
}

const built = builtAt();
if (!force && built >= 0 && built >= newestSource()) process.exit(0);

let tsc;
try {
  tsc = require.resolve('typescript/bin/tsc', { paths: [root] });
} catch {
  if (built >= 0) {
    process.stderr.write('comfyui-gateway: sources are newer than dist/ but TypeScript is not installed; using the existing build\n');
    process.exit(0);
  }
  process.stderr.write(
    'comfyui-gateway: dist/ is missing and TypeScript is not installed: run `npm ci` (with dev dependencies) once to build\n',
  );
  process.exit(1);
}
process.stderr.write('comfyui-gateway: building dist/ ...\n');
const r = spawnSync(process.execPath, [tsc, '-p', path.join(root, 'tsconfig.build.json')], { cwd: root, stdio: 'inherit' });
if (r.status !== 0) process.exit(r.status ?? 1);
