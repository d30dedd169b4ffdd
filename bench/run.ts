/* npm run bench: the gateway against direct ComfyUI (a fake one), side by side, reported as ratios. */
import { fork, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import autocannon from 'autocannon';
import WebSocket from 'ws';
import { spawnBenchGateway } from './gateway';

const KEY = 'bench-static-key-0123456789abcdef';
const DURATION = Number(process.env.BENCH_SECONDS ?? 5);

interface Fake {
  proc: ChildProcess;
  url: string;
  send(m: object, reply: string): Promise<void>;
}

async function startFake(): Promise<Fake> {
  const proc = fork(path.join(__dirname, 'fakeProcess.js'), { stdio: ['ignore', 'ignore', 'inherit', 'ipc'] });
  const ready = await new Promise<{ url: string }>((resolve) => proc.once('message', (m) => resolve(m as { url: string })));
  return {
    proc,
    url: ready.url,
    send: (m, reply) =>
      new Promise((resolve) => {
        const on = (r: { cmd: string }) => {
          if (r.cmd === reply) {
            proc.off('message', on);
            resolve();
          }
        };
        proc.on('message', on);
        proc.send(m);
      }),
  };
}

async function startGateway(upstream: string): Promise<{ proc: ChildProcess; url: string; dir: string }> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cgw-bench-'));
  const { proc, url } = await spawnBenchGateway({ dir, config: {}, args: ['--upstream', upstream, '--api-key', KEY] });
  return { proc, url, dir };
}

async function cannon(url: string, opts: { connections: number; headers?: Record<string, string> }) {
  const r = await autocannon({ url, connections: opts.connections, duration: DURATION, headers: opts.headers, pipelining: 1 });
  return { rps: r.requests.average, p99: r.latency.p99, mbps: r.throughput.average / 1e6, errors: r.errors + r.non2xx };
}

async function wsRate(url: string, fake: Fake, headers: Record<string, string>, count = 50_000): Promise<number> {
  // Same client options both ways (the gateway does not negotiate permessage-deflate with clients).
  const ws = new WebSocket(url, { headers, perMessageDeflate: false });
  await new Promise((r, j) => {
    ws.once('open', r);
    ws.once('error', j);
  });
  await new Promise((r) => setTimeout(r, 200));
  let got = 0;
  const t0 = process.hrtime.bigint();
  const done = new Promise<void>((resolve) =>
    ws.on('message', () => {
      if (++got >= count) resolve();
    }),
  );
  await fake.send({ cmd: 'blast', count }, 'blasted');
  await Promise.race([done, new Promise((r) => setTimeout(r, 30_000))]);
  const secs = Number(process.hrtime.bigint() - t0) / 1e9;
  ws.close();
  return got / secs;
}

function wrk(url: string, headers: Record<string, string>): number | null {
  const which = spawnSync('which', ['wrk']);
  if (which.status !== 0) return null;
  const args = ['-t2', '-c50', `-d${DURATION}s`, ...Object.entries(headers).flatMap(([k, v]) => ['-H', `${k}: ${v}`]), url];
  const out = spawnSync('wrk', args, { encoding: 'utf8' }).stdout;
  const m = /Requests\/sec:\s+([\d.]+)/.exec(out);
  return m ? Number(m[1]) : null;
}

async function main(): Promise<void> {
  const fake = await startFake();
  const gw = await startGateway(fake.url);
  const auth = { 'X-API-Key': KEY };
  const results: Record<string, unknown> = { machine: `${os.cpus().length} × ${os.cpus()[0]?.model ?? 'cpu'}, ${Math.round(os.totalmem() / 2 ** 30)} GiB, node ${process.version}` };
  try {
    // warm-up
    await cannon(`${fake.url}/prompt`, { connections: 10 });
    await cannon(`${gw.url}/prompt`, { connections: 10, headers: auth });

    const direct = await cannon(`${fake.url}/prompt`, { connections: 50 });
    const through = await cannon(`${gw.url}/prompt`, { connections: 50, headers: auth });
    results.small_get = { direct_rps: Math.round(direct.rps), gateway_rps: Math.round(through.rps), ratio: +(through.rps / direct.rps).toFixed(2), direct_p99_ms: direct.p99, gateway_p99_ms: through.p99, errors: direct.errors + through.errors, target: '≥ 0.4' };

    const wd = wrk(`${fake.url}/prompt`, {});
    const wg = wrk(`${gw.url}/prompt`, auth);
    if (wd && wg) results.small_get_wrk = { direct_rps: Math.round(wd), gateway_rps: Math.round(wg), ratio: +(wg / wd).toFixed(2) };

    await fake.send({ cmd: 'file', name: 'bench-2mb.bin', bytes: 2 * 1024 * 1024 }, 'filed');
    const viewPath = '/view?filename=bench-2mb.bin&type=output';
    const vd = await cannon(`${fake.url}${viewPath}`, { connections: 8 });
    const vg = await cannon(`${gw.url}${viewPath}`, { connections: 8, headers: auth });
    results.view_2mb = { direct_MBps: Math.round(vd.mbps), gateway_MBps: Math.round(vg.mbps), ratio: +(vg.mbps / vd.mbps).toFixed(2), target: '≥ 0.3' };

    const wsd = await wsRate(`${fake.url.replace('http', 'ws')}/ws?clientId=bench-direct`, fake, {});
    const wsg = await wsRate(`${gw.url.replace('http', 'ws')}/ws?clientId=bench-gateway`, fake, auth);
    results.websocket = { direct_msgs_per_s: Math.round(wsd), gateway_msgs_per_s: Math.round(wsg), ratio: +(wsg / wsd).toFixed(2), target: '≥ 0.65' };
  } finally {
    gw.proc.kill('SIGTERM');
    fake.proc.send({ cmd: 'exit' });
    fs.rmSync(gw.dir, { recursive: true, force: true });
  }
  for (const [name, file] of [['isolation', './isolation'], ['downloads', './downloads']] as const) {
    try {
      // eslint-disable-next-line @typescript-eslint/no-require-imports
      const mod = require(file) as Record<string, () => Promise<Record<string, unknown>>>;
      const fn = mod[`bench${name[0].toUpperCase()}${name.slice(1)}`];
      if (fn) results[name] = await fn();
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'MODULE_NOT_FOUND') results[name] = { error: (e as Error).message };
    }
  }
  process.stdout.write(JSON.stringify(results, null, 2) + '\n');
  process.exit(0);
}

void main();
