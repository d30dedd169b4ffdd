/*
 * Shared-store benchmark (issue 13): a small authenticated GET through one gateway whose records are in
 * PostgreSQL (with Redis for the counters) vs the same gateway on the embedded file store. Both run in rounds with
 * the order rotated; the result is the ratio of their request rates (target: the shared store ≤ 10% slower, which
 * the in-memory caches kept fresh by LISTEN/NOTIFY are for). Needs PostgreSQL and Redis (the machines' own, or
 * BENCH_PG_URL / BENCH_REDIS_URL); it creates and drops a database of its own.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import { spawnSync } from 'node:child_process';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { load, median, type LoadResult } from './load';
import { startFake, startGateway, stop, type BenchGateway } from './procs';
import { runAsScript } from './util';

const KEY = 'bench-store-key-0123456789abcdef';
const PASSWORD = 'bench-password-1';
const SECONDS = Number(process.env.BENCH_SECONDS ?? 5);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3);
const PG_URL = process.env.BENCH_PG_URL ?? 'postgres://postgres@127.0.0.1:5432/test';
const REDIS_URL = process.env.BENCH_REDIS_URL ?? 'redis://127.0.0.1:6379';

const TICK_MS = 1000 / (Number(spawnSync('getconf', ['CLK_TCK']).stdout?.toString().trim()) || 100);

/** CPU time (user + system, ms) a process has used so far, from /proc: the gateway's own cost, whatever else runs. */
function cpuMs(pid: number): number {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(f[11]) + Number(f[12])) * TICK_MS;
}

/** One load run and the gateway CPU it cost per request (µs): on a shared machine the rate swings, this much less. */
async function measured(gw: BenchGateway, run: () => Promise<LoadResult>): Promise<LoadResult & { cpu_us: number }> {
  const before = cpuMs(gw.proc.pid!);
  const r = await run();
  const requests = r.rps * SECONDS;
  return { ...r, cpu_us: requests > 0 ? ((cpuMs(gw.proc.pid!) - before) * 1000) / requests : NaN };
}

function post(url: string, headers: Record<string, string>, body: object): Promise<any> {
  return new Promise((resolve, reject) => {
    const data = JSON.stringify(body);
    const req = http.request(url, { method: 'POST', headers: { ...headers, 'content-type': 'application/json' } }, (res) => {
      let text = '';
      res.on('data', (c) => (text += c));
      res.on('end', () => (res.statusCode! < 300 ? resolve(JSON.parse(text)) : reject(new Error(`${url}: ${res.statusCode} ${text}`))));
    });
    req.on('error', reject);
    req.end(data);
  });
}

/** A gateway with alice signed in: her session and a personal token. */
async function prepared(gw: BenchGateway): Promise<{ jwt: Record<string, string>; token: Record<string, string> }> {
  await post(`${gw.url}/gateway/api/users`, { 'X-API-Key': KEY }, { username: 'alice', password: PASSWORD, role: 'user' });
  const jwt = (await post(`${gw.url}/login`, {}, { username: 'alice', password: PASSWORD })).token as string;
  const token = (await post(`${gw.url}/gateway/api/tokens`, { Authorization: `Bearer ${jwt}` }, { name: 'bench' })).token as string;
  return { jwt: { Authorization: `Bearer ${jwt}` }, token: { Authorization: `Bearer ${token}` } };
}

/** Runs the comparison; returns what bench/run.ts prints under "store". */
export async function benchStore(): Promise<Record<string, unknown>> {
  const db = `gw_bench_${crypto.randomBytes(4).toString('hex')}`;
  const admin = new pg.Client({ connectionString: PG_URL });
  await admin.connect();
  await admin.query(`CREATE DATABASE ${db}`);
  const dbUrl = Object.assign(new URL(PG_URL), { pathname: `/${db}` }).toString();
  const fake = await startFake();
  const dirs = [fs.mkdtempSync(path.join(os.tmpdir(), 'cgw-bench-file-')), fs.mkdtempSync(path.join(os.tmpdir(), 'cgw-bench-pg-'))];
  process.env.COMFYUI_GATEWAY_HF_TOKEN_KEY ??= crypto.randomBytes(32).toString('hex');
  const args = ['--upstream', fake.url, '--api-key', KEY];
  const gws: BenchGateway[] = [];
  try {
    gws.push(await startGateway({ dir: dirs[0], config: {}, args }));
    gws.push(
      await startGateway({
        dir: dirs[1],
        config: { store: { kind: 'postgres', url: dbUrl }, redis: { url: REDIS_URL, key_prefix: `${db}:` } },
        args,
      }),
    );
    const [file, shared] = [await prepared(gws[0]), await prepared(gws[1])];
    for (const gw of gws) await load(`${gw.url}/prompt`, { connections: 10, seconds: 1, headers: { 'X-API-Key': KEY } }); // warm-up
    // Transactions the shared gateway ran in its database while loaded: a PostgreSQL round trip per request would
    // show as ~1 per request; only the background beats (queue lease, feed heartbeat) should be there.
    const xacts = async () =>
      Number((await admin.query('SELECT xact_commit + xact_rollback AS n FROM pg_stat_database WHERE datname = $1', [db])).rows[0]?.n ?? 0);
    const pgLoad = { xacts: 0, requests: 0 };
    const runs: Record<string, (LoadResult & { cpu_us: number })[]> = {};
    const on = (gw: BenchGateway, headers: Record<string, string>) => () =>
      measured(gw, () => load(`${gw.url}/prompt`, { connections: 50, seconds: SECONDS, headers }));
    const targets: [string, () => Promise<LoadResult & { cpu_us: number }>][] = [
      ['file_jwt', on(gws[0], file.jwt)],
      ['postgres_jwt', on(gws[1], shared.jwt)],
      ['file_token', on(gws[0], file.token)],
      ['postgres_token', on(gws[1], shared.token)],
    ];
    for (let i = 0; i < ROUNDS; i++)
      for (let k = 0; k < targets.length; k++) {
        const [name, run] = targets[(k + i) % targets.length];
        const x0 = name.startsWith('postgres') ? await xacts() : 0;
        const r = await run();
        (runs[name] ??= []).push(r);
        if (name.startsWith('postgres')) {
          pgLoad.xacts += (await xacts()) - x0;
          pgLoad.requests += r.rps * SECONDS;
        }
      }
    const rps = (n: string) => median(runs[n].map((r) => r.rps));
    const p99 = (n: string) => median(runs[n].map((r) => r.p99_ms));
    const cpu = (n: string) => +median(runs[n].map((r) => r.cpu_us)).toFixed(1);
    // Round by round: the two runs of a round are nearest in time, so they share most of the machine's mood.
    const paired = (a: string, b: string) => +median(runs[a].map((r, i) => r.cpu_us / runs[b][i].cpu_us)).toFixed(3);
    const ratio = (a: number, b: number) => +(a / b).toFixed(3);
    return {
      target: 'postgres / file request rate ≥ 0.90 (≤ 10% slower); cpu_ratio (gateway CPU per request) ≤ 1.10',
      rounds: ROUNDS,
      // PostgreSQL's statistics lag up to a second behind, so this is approximate (background beats ≈ 2 a second)
      postgres_xacts_per_request: +(pgLoad.xacts / Math.max(1, pgLoad.requests)).toFixed(4),
      session_jwt: {
        file_rps: Math.round(rps('file_jwt')),
        postgres_rps: Math.round(rps('postgres_jwt')),
        ratio: ratio(rps('postgres_jwt'), rps('file_jwt')),
        p99_ms: { file: p99('file_jwt'), postgres: p99('postgres_jwt') },
        cpu_us_per_request: { file: cpu('file_jwt'), postgres: cpu('postgres_jwt') },
        cpu_ratio: ratio(cpu('postgres_jwt'), cpu('file_jwt')),
        cpu_ratio_by_round: paired('postgres_jwt', 'file_jwt'),
      },
      personal_token: {
        file_rps: Math.round(rps('file_token')),
        postgres_rps: Math.round(rps('postgres_token')),
        ratio: ratio(rps('postgres_token'), rps('file_token')),
        p99_ms: { file: p99('file_token'), postgres: p99('postgres_token') },
        cpu_us_per_request: { file: cpu('file_token'), postgres: cpu('postgres_token') },
        cpu_ratio: ratio(cpu('postgres_token'), cpu('file_token')),
        cpu_ratio_by_round: paired('postgres_token', 'file_token'),
      },
    };
  } finally {
    for (const gw of gws) await stop(gw.proc);
    fake.proc.send({ cmd: 'exit' });
    for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
    await admin.query(`DROP DATABASE IF EXISTS ${db} WITH (FORCE)`).catch(() => undefined);
    await admin.end();
  }
}

if (require.main === module) {
  runAsScript(benchStore);
}
