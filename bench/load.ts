/* HTTP load for the benchmark: wrk when installed (a C client uses little of the shared CPU), else autocannon. */
import { spawn, spawnSync } from 'node:child_process';
import autocannon from 'autocannon';

/** One load run's result. */
export interface LoadResult {
  rps: number;
  p99_ms: number;
  MBps: number;
  errors: number;
  /** the proxy process's CPU time and minor page faults per request (bench/util.ts withCost) */
  cpu_ms_per_req?: number;
  minflt_per_req?: number;
}

const hasWrk = spawnSync('which', ['wrk']).status === 0;

/** Which load generator runs (reported next to the numbers). */
export const loadTool = hasWrk ? 'wrk' : 'autocannon';

function unit(v: string, u: string, table: Record<string, number>): number {
  return Number(v) * (table[u] ?? 1);
}

function runWrk(url: string, o: { connections: number; seconds: number; headers: Record<string, string> }): Promise<LoadResult> {
  const threads = Math.min(2, o.connections);
  const args = [
    `-t${threads}`,
    `-c${o.connections}`,
    `-d${o.seconds}s`,
    '--latency',
    ...Object.entries(o.headers).flatMap(([k, v]) => ['-H', `${k}: ${v}`]),
    url,
  ];
  return new Promise((resolve, reject) => {
    const p = spawn('wrk', args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    p.stdout.on('data', (d) => (out += d));
    p.on('error', reject);
    p.on('exit', () => {
      const rps = /Requests\/sec:\s+([\d.]+)/.exec(out);
      if (!rps) return reject(new Error(`wrk: ${out}`));
      const p99 = /\s99%\s+([\d.]+)(us|ms|s)\b/.exec(out);
      const tr = /Transfer\/sec:\s+([\d.]+)(B|KB|MB|GB)/.exec(out);
      const non2xx = /Non-2xx or 3xx responses:\s+(\d+)/.exec(out);
      const sock = /Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/.exec(out);
      resolve({
        rps: Number(rps[1]),
        p99_ms: p99 ? unit(p99[1], p99[2], { us: 1e-3, ms: 1, s: 1000 }) : NaN,
        MBps: tr ? unit(tr[1], tr[2], { B: 1 / 2 ** 20, KB: 1 / 1024, MB: 1, GB: 1024 }) : NaN,
        errors: (non2xx ? Number(non2xx[1]) : 0) + (sock ? Number(sock[1]) + Number(sock[2]) + Number(sock[3]) : 0),
      });
    });
  });
}

async function runAutocannon(
  url: string,
  o: { connections: number; seconds: number; headers: Record<string, string> },
): Promise<LoadResult> {
  const r = await autocannon({ url, connections: o.connections, duration: o.seconds, headers: o.headers, pipelining: 1 });
  return { rps: r.requests.average, p99_ms: r.latency.p99, MBps: r.throughput.average / 2 ** 20, errors: r.errors + r.non2xx };
}

/** Loads `url` with keep-alive connections for `seconds`; MBps is MiB/s of response bytes. */
export function load(url: string, o: { connections: number; seconds: number; headers?: Record<string, string> }): Promise<LoadResult> {
  const opts = { ...o, headers: o.headers ?? {} };
  return hasWrk ? runWrk(url, opts) : runAutocannon(url, opts);
}

/** The median of some numbers. */
export function median(xs: number[]): number {
  const s = xs.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (!s.length) return NaN;
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}
