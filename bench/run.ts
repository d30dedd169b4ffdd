/*
 * npm run bench: the gateway against nginx (one worker, a plain keep-alive reverse proxy) and against ComfyUI
 * directly (the recording fake, in its own process), in one run. Every measurement is taken in rounds with the
 * order rotated (direct, nginx, gateway…), and medians are reported: the machine may be shared and noisy.
 * Installs nothing: nginx is used when present (`apt-get install nginx`), wrk when present, else autocannon.
 * The parts: bench/httpParts.ts (small GET, 2 MB /view), bench/liveParts.ts (WebSocket, login storm, idle).
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { smallPart, viewPart } from './httpParts';
import { idlePart, stormPart, wsPart } from './liveParts';
import { loadTool } from './load';
import { findNginx, rssOf, startBare, startFake, startGateway, startNginx, stop } from './procs';
import { closeAgent, must, round, type BenchCtx } from './util';

const KEY = 'bench-static-key-0123456789abcdef';
const SECONDS = Number(process.env.BENCH_SECONDS ?? 5);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3);
/** BENCH_ONLY=small,view,ws,idle,storm runs a subset (for profiling one path). */
const ONLY = new Set((process.env.BENCH_ONLY ?? 'small,view,ws,idle,storm,extra').split(','));
const NGINX_PORTS = Array.from({ length: 20 }, (_, i) => 18160 + i);
const PASSWORD = 'bench-password-1';

/** The other benchmarks (each its own module, also runnable alone), run after the proxy parts. */
async function extras(results: Record<string, unknown>): Promise<void> {
  for (const [name, file] of [
    ['isolation', './isolation'],
    ['downloads', './downloads'],
    ['store', './store'],
    ['queue', './queue'],
  ] as const) {
    try {
      const mod = require(file) as Record<string, () => Promise<Record<string, unknown>>>;
      const fn = mod[`bench${name[0].toUpperCase()}${name.slice(1)}`];
      if (fn) results[name] = await fn();
    } catch (e) {
      results[name] = { error: (e as Error).message };
    }
  }
}

function printTable(rows: string[][]): void {
  const head = [
    'measure',
    'direct',
    'nginx (1 worker)',
    'gateway',
    'gateway / direct',
    'gateway / nginx',
    'target',
    'bare node:http pipe (gateway / bare)',
  ];
  process.stdout.write(`| ${head.join(' | ')} |\n|${head.map(() => '---').join('|')}|\n`);
  for (const r of rows) process.stdout.write(`| ${[...r, ...Array(head.length - r.length).fill('')].join(' | ')} |\n`);
}

async function main(): Promise<void> {
  const results: Record<string, unknown> = {
    date: new Date().toISOString().slice(0, 10),
    machine: `${os.cpus().length} × ${os.cpus()[0]?.model ?? 'cpu'}, ${Math.round(os.totalmem() / 2 ** 30)} GiB, node ${process.version}`,
    load_tool: loadTool,
    seconds_per_run: SECONDS,
    rounds: ROUNDS,
  };
  const rows: string[][] = [];
  const fake = await startFake();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cgw-bench-'));
  // The gateway as shipped (config.json `{}`: isolation on, access log at info to its file) plus a static key.
  const gw = await startGateway({ dir, config: {}, args: ['--upstream', fake.url, '--api-key', KEY] });
  const nginxBin = findNginx();
  const nginxDir = fs.mkdtempSync(path.join(os.tmpdir(), 'cgw-bench-nginx-'));
  const nginx = nginxBin ? await startNginx(nginxBin, fake.url, nginxDir, NGINX_PORTS) : null;
  const bare = await startBare(fake.url);
  if (!nginx) results.nginx = 'not installed (apt-get install nginx): gateway/nginx ratios are missing';
  const admin = { 'X-API-Key': KEY };
  try {
    await must(`${gw.url}/gateway/api/users`, 'POST', admin, { username: 'alice', password: PASSWORD, role: 'user' });
    const jwt = (await must(`${gw.url}/login`, 'POST', {}, { username: 'alice', password: PASSWORD })).token as string;
    const session = { Authorization: `Bearer ${jwt}` };
    const token = (await must(`${gw.url}/gateway/api/tokens`, 'POST', session, { name: 'bench' })).token as string;
    const personal = { Authorization: `Bearer ${token}` };
    await new Promise((r) => setTimeout(r, 500));
    results.gateway_idle_rss_MiB = round(rssOf(gw.proc.pid!) / 2 ** 20, 1);
    const ctx: BenchCtx = {
      gw,
      fake,
      nginx,
      bare,
      admin,
      session,
      personal,
      password: PASSWORD,
      seconds: SECONDS,
      rounds: ROUNDS,
      results,
      rows,
    };
    for (const [name, part] of [
      ['small', smallPart],
      ['view', viewPart],
      ['ws', wsPart],
      ['storm', stormPart],
      ['idle', idlePart],
    ] as const)
      if (ONLY.has(name)) await part(ctx);
  } finally {
    await stop(gw.proc);
    await stop(bare.proc);
    if (nginx) await stop(nginx.proc, 'SIGQUIT');
    fake.proc.send({ cmd: 'exit' });
    closeAgent();
    fs.rmSync(dir, { recursive: true, force: true });
    fs.rmSync(nginxDir, { recursive: true, force: true });
  }
  if (ONLY.has('extra')) await extras(results);
  process.stdout.write(JSON.stringify(results, null, 2) + '\n\n');
  printTable(rows);
  process.exit(0);
}

main().catch((e) => {
  process.stderr.write(`${(e as Error).stack}\n`);
  process.exit(1);
});
