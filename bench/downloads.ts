/* Model-download benchmark (issue 6): a large file from a local server through the gateway's download service
 * vs curl on the same file, the gateway's RSS growth while it downloads, and the latency of availability polls
 * (50 models, 20 clients at 1 Hz) once probes are cached. Every party runs in its own process. */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { spawnBenchGateway } from './gateway';

const KEY = 'bench-static-key-0123456789abcdef';

/** A tiny file server, run as its own process: GET/HEAD /big.safetensors streams the big file; any other
 * `.safetensors` path answers HEAD with a small size (for the polling part). */
const FILE_SERVER = `
const http = require('node:http'); const fs = require('node:fs');
const file = process.argv[1]; const size = fs.statSync(file).size;
const server = http.createServer((req, res) => {
  if (req.url === '/big.safetensors') {
    res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': size });
    if (req.method === 'HEAD') return res.end();
    return fs.createReadStream(file, { highWaterMark: 1 << 20 }).pipe(res);
  }
  res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': 1234 });
  res.end(req.method === 'HEAD' ? undefined : Buffer.alloc(1234));
});
server.listen(0, '127.0.0.1', () => process.stdout.write(String(server.address().port) + '\\n'));
`;

/** Fetches the big file with plain node http into a file, in its own process (the baseline when curl is absent). */
const NODE_GET = `
const http = require('node:http'); const fs = require('node:fs');
http.get(process.argv[1], (res) => res.pipe(fs.createWriteStream(process.argv[2])).on('finish', () => process.exit(0)));
`;

function firstLine(proc: ChildProcess): Promise<string> {
  return new Promise((resolve, reject) => {
    let buf = '';
    proc.stdout!.on('data', (d) => {
      buf += d;
      const i = buf.indexOf('\n');
      if (i >= 0) resolve(buf.slice(0, i).trim());
    });
    proc.on('exit', (c) => reject(new Error(`process exited ${c} before it was ready`)));
  });
}

function rssOf(pid: number): number {
  try {
    return Number(/VmRSS:\s+(\d+)/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))![1]) * 1024;
  } catch {
    return 0;
  }
}

/** The gateway entry point: compiled JS when benchmarking dist/, else the TypeScript through the test loader. */
function gatewayCommand(): string[] {
  const compiled = path.join(__dirname, '..', 'gateway', 'main.js');
  if (fs.existsSync(compiled) && __filename.endsWith('.js')) return [compiled];
  const root = path.join(__dirname, '..');
  return ['-r', path.join(root, 'tests', 'helpers', 'tsRequire.js'), path.join(root, 'gateway', 'main.ts')];
}

async function post(url: string, body: unknown): Promise<{ status: number; body: any }> {
  const res = await fetch(url, {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'x-api-key': KEY },
    body: JSON.stringify(body),
  });
  const text = await res.text();
  return { status: res.status, body: text ? JSON.parse(text) : null };
}

function timeBaseline(url: string, out: string): number {
  spawnSync('sync'); // start from clean page cache writeback, like the gateway run
  const t0 = process.hrtime.bigint();
  const curl = spawnSync('curl', ['-sS', '-o', out, url]);
  if (curl.error) spawnSync(process.execPath, ['-e', NODE_GET, url, out]);
  const secs = Number(process.hrtime.bigint() - t0) / 1e9;
  fs.rmSync(out, { force: true });
  return secs;
}

const percentile = (xs: number[], p: number) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length ? s[Math.min(s.length - 1, Math.ceil((p / 100) * s.length) - 1)] : 0;
};

/** Runs the benchmark; sizes from BENCH_DOWNLOAD_MB (default 1024) and BENCH_POLL_SECONDS (default 10). */
export async function benchDownloads(): Promise<Record<string, number>> {
  const mb = Number(process.env.BENCH_DOWNLOAD_MB ?? 1024);
  const pollSeconds = Number(process.env.BENCH_POLL_SECONDS ?? 10);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cgw-bench-dl-'));
  const procs: ChildProcess[] = [];
  try {
    // The source file: a random 1 MB block repeated (incompressible enough, quick to make).
    const src = path.join(dir, 'source.bin');
    const block = crypto.randomBytes(1 << 20);
    const fd = fs.openSync(src, 'w');
    for (let i = 0; i < mb; i++) fs.writeSync(fd, block);
    fs.closeSync(fd);

    const server = spawn(process.execPath, ['-e', FILE_SERVER, src], { stdio: ['ignore', 'pipe', 'inherit'] });
    procs.push(server);
    const port = Number(await firstLine(server));
    const bigUrl = `http://127.0.0.1:${port}/big.safetensors`;

    const modelsDir = path.join(dir, 'models');
    fs.mkdirSync(path.join(modelsDir, 'checkpoints'), { recursive: true });
    const started = await spawnBenchGateway({
      dir,
      command: gatewayCommand(),
      config: {
        api_key: KEY,
        upstream: 'http://127.0.0.1:9',
        comfyui: { models_dir: modelsDir },
        model_downloads: { allowed_hosts: [`127.0.0.1:${port}`] },
      },
    });
    const gw = started.proc;
    procs.push(gw);
    const gwUrl = started.url;

    const id = 'checkpoints/big.safetensors';
    const finalPath = path.join(modelsDir, 'checkpoints', 'big.safetensors');
    const rss0 = rssOf(gw.pid!);
    let peak = rss0;
    let ok = true;
    const sampler = setInterval(() => (peak = Math.max(peak, rssOf(gw.pid!))), 20);
    async function timeGateway(): Promise<number> {
      spawnSync('sync');
      const t0 = process.hrtime.bigint();
      const started = await post(`${gwUrl}/api/download-models`, { models: { [id]: bigUrl } });
      if (started.status !== 202) throw new Error(`download-models answered ${started.status}: ${JSON.stringify(started.body)}`);
      // Watch the file system rather than poll the API, so the measurement is not paced by a poll interval.
      while (!fs.existsSync(finalPath)) await new Promise((r) => setTimeout(r, 5));
      const secs = Number(process.hrtime.bigint() - t0) / 1e9;
      ok &&= fs.statSync(finalPath).size === mb << 20;
      fs.rmSync(finalPath, { force: true });
      return secs;
    }
    // Alternate the two (the first curl run also warms the page cache for the source); each side's best run counts.
    const curlOut = path.join(dir, 'curl.out');
    const base = Math.min(timeBaseline(bigUrl, curlOut), timeBaseline(bigUrl, curlOut));
    const g1 = await timeGateway();
    const base2 = timeBaseline(bigUrl, curlOut);
    const g2 = await timeGateway();
    const viaGateway = Math.min(g1, g2);
    const curlBest = Math.min(base, base2);
    clearInterval(sampler);
    peak = Math.max(peak, rssOf(gw.pid!));
    fs.rmSync(src, { force: true });

    // Polling: 50 models (half present), 20 clients at 1 Hz; the first two seconds warm the probe caches.
    const models: Record<string, string> = {};
    for (let i = 0; i < 50; i++) {
      const name = `m${i}.safetensors`;
      if (i % 2 === 0) fs.writeFileSync(path.join(modelsDir, 'checkpoints', name), 'x');
      models[`checkpoints/${name}`] = `http://127.0.0.1:${port}/${name}`;
    }
    const lat: number[] = [];
    const deadline = Date.now() + pollSeconds * 1000;
    const warmUntil = Date.now() + 2000;
    await Promise.all(
      Array.from({ length: 20 }, async (_x, c) => {
        await new Promise((r) => setTimeout(r, (c * 1000) / 20));
        while (Date.now() < deadline) {
          const t = process.hrtime.bigint();
          const r = await post(`${gwUrl}/api/models-availability-status`, { models });
          const ms = Number(process.hrtime.bigint() - t) / 1e6;
          if (r.status !== 200) throw new Error(`poll answered ${r.status}`);
          if (Date.now() > warmUntil) lat.push(ms);
          await new Promise((res) => setTimeout(res, Math.max(0, 1000 - ms)));
        }
      }),
    );

    return {
      download_mb: mb,
      download_ok: ok ? 1 : 0,
      curl_mb_per_s: mb / curlBest,
      gateway_mb_per_s: mb / viaGateway,
      download_throughput_vs_curl: curlBest / viaGateway,
      download_rss_growth_mb: (peak - rss0) / 2 ** 20,
      poll_requests: lat.length,
      poll_p50_ms: percentile(lat, 50),
      poll_p99_ms: percentile(lat, 99),
    };
  } finally {
    for (const p of procs) p.kill('SIGKILL');
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

if (require.main === module) {
  benchDownloads().then(
    (r) => console.log(JSON.stringify(r, null, 2)),
    (e) => {
      console.error(e);
      process.exit(1);
    },
  );
}
