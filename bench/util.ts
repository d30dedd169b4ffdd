/* Shared pieces of `npm run bench` (bench/run.ts and its parts): HTTP calls, rounds, ratios, process counters. */
import fs from 'node:fs';
import http from 'node:http';
import { median, type LoadResult } from './load';
import type { BenchGateway, Fake } from './procs';

/** What every part of the bench gets: the processes under test, the credentials, and where results go. */
export interface BenchCtx {
  gw: BenchGateway;
  fake: Fake;
  nginx: { proc: { pid?: number }; url: string } | null;
  bare: { proc: { pid?: number }; url: string };
  admin: Record<string, string>;
  session: Record<string, string>;
  personal: Record<string, string>;
  password: string;
  seconds: number;
  rounds: number;
  results: Record<string, unknown>;
  rows: string[][];
}

const agent = new http.Agent({ keepAlive: true, maxSockets: 8 });

/** One HTTP call, its body parsed as JSON when it is JSON, timed. */
export function call(
  url: string,
  method: string,
  headers: Record<string, string>,
  body?: object,
  via = agent,
): Promise<{ status: number; json: any; ms: number }> {
  const t0 = process.hrtime.bigint();
  return new Promise((resolve, reject) => {
    const data = body ? JSON.stringify(body) : undefined;
    const req = http.request(
      url,
      { method, agent: via, headers: { ...headers, ...(data ? { 'content-type': 'application/json' } : {}) } },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString();
          let json: any = null;
          try {
            json = JSON.parse(text);
          } catch {
            json = text;
          }
          resolve({ status: res.statusCode ?? 0, json, ms: Number(process.hrtime.bigint() - t0) / 1e6 });
        });
      },
    );
    req.on('error', reject);
    req.end(data);
  });
}

/** A call that must succeed; its JSON answer. */
export async function must(url: string, method: string, headers: Record<string, string>, body?: object) {
  const r = await call(url, method, headers, body);
  if (r.status >= 300) throw new Error(`${method} ${url}: ${r.status} ${JSON.stringify(r.json)}`);
  return r.json;
}

/** Ends the shared keep-alive agent (at the end of the run). */
export const closeAgent = () => agent.destroy();

export const rotate = <T>(xs: T[], i: number) => xs.map((_, k) => xs[(k + i) % xs.length]);

/** `x` rounded to `d` decimals; null when not a number. */
export function round(x: number, d = 0): number | null {
  return Number.isFinite(x) ? +x.toFixed(d) : null;
}

/** Runs each named target once per round, order rotated, and keeps every result. */
export async function rounds<T>(n: number, targets: Record<string, () => Promise<T>>): Promise<Record<string, T[]>> {
  const out: Record<string, T[]> = {};
  const names = Object.keys(targets);
  for (let i = 0; i < n; i++) for (const k of rotate(names, i)) (out[k] ??= []).push(await targets[k]());
  return out;
}

/** The median over rounds of a/b taken within each round (the two ran back to back, under the same noise). */
export function roundRatio(a: number[] | undefined, b: number[] | undefined): number | null {
  if (!a || !b || a.length !== b.length) return null;
  return round(median(a.map((x, i) => x / b[i])), 2);
}

/** a/b rounded, null without b. */
export const ratio = (a: number, b: number | undefined) => (b ? round(a / b, 2) : null);

/** CPU time (user + system, ms) and minor page faults of a process so far (Linux /proc); zeros when unknown. */
export function procCounters(pid: number | undefined): { cpu_ms: number; minflt: number } {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    const tick = 10; // USER_HZ is 100 on Linux
    return { cpu_ms: (Number(f[11]) + Number(f[12])) * tick, minflt: Number(f[7]) };
  } catch {
    return { cpu_ms: 0, minflt: 0 };
  }
}

/** nginx's worker (the master only forks it): the process whose CPU is the proxy's. */
export function nginxWorker(masterPid: number | undefined): number | undefined {
  try {
    const kids = fs.readFileSync(`/proc/${masterPid}/task/${masterPid}/children`, 'utf8').trim().split(/\s+/);
    return Number(kids[0]) || masterPid;
  } catch {
    return masterPid;
  }
}

/**
 * A load run with the CPU time and minor page faults the proxy process `pid` spent per request. CPU per request
 * is what the other load on a shared machine disturbs least (wall-clock rates move with it by ±30 %).
 */
export async function withCost(pid: number | undefined, seconds: number, run: () => Promise<LoadResult>): Promise<LoadResult> {
  const a = procCounters(pid);
  const r = await run();
  const b = procCounters(pid);
  const n = r.rps * seconds;
  return { ...r, cpu_ms_per_req: n ? (b.cpu_ms - a.cpu_ms) / n : NaN, minflt_per_req: n ? (b.minflt - a.minflt) / n : NaN };
}

/** Medians over rounds of one target's results. */
export function summary(rs: LoadResult[]) {
  return {
    rps: median(rs.map((r) => r.rps)),
    p99_ms: median(rs.map((r) => r.p99_ms)),
    MBps: median(rs.map((r) => r.MBps)),
    cpu_ms_per_req: round(median(rs.map((r) => r.cpu_ms_per_req ?? NaN)), 3),
    minflt_per_req: round(median(rs.map((r) => r.minflt_per_req ?? NaN)), 1),
    errors: rs.reduce((a, r) => a + r.errors, 0),
    all_rps: rs.map((r) => Math.round(r.rps)),
  };
}

/** Runs a bench part as a script of its own: prints its result as JSON and exits (non-zero on failure). */
export function runAsScript(part: () => Promise<unknown>): void {
  part().then(
    (r) => {
      process.stdout.write(JSON.stringify(r, null, 2) + '\n');
      process.exit(0);
    },
    (e) => {
      process.stderr.write(`${(e as Error).stack}\n`);
      process.exit(1);
    },
  );
}
